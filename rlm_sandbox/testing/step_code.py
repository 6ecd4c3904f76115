"""The first cell a scripted RLM node writes: split ``context``, fan out with
``llm_query_batched``, combine into ``answer``. It is real Python run in the sandbox, kept as
a template so that root and leaf agree on what a count or a search task is."""

from __future__ import annotations

COUNT_TASK_RE = r"how many|\bcount|number of"
"""A task is a COUNT task when it matches this (case-insensitive); else it is a SEARCH task.
The same pattern is embedded into the generated code, so root and leaf always agree."""


NOT_FOUND = "NOT FOUND"

_STEP1_TEMPLATE = """\
import re

task = {task!r}
data = context
# A child RLM's context is its parent's request: "TASK: ...\\n\\nTEXT:\\n...". Unwrap it.
if isinstance(data, str) and data.startswith("TASK: ") and "\\n\\nTEXT:\\n" in data:
    head, data = data.split("\\n\\nTEXT:\\n", 1)
    task = head[len("TASK: "):]


def grep_lines(text, task):
    # Keep only the lines that can matter: those with the quoted phrase, or with every
    # keyword of the task. Exact, cheap code first; the sub-models see far less text.
    m = re.search(r'"([^"\\n]+)"', task)
    if m:
        keys, hay = [m.group(1)], text
    else:
        stop = {{"what", "which", "where", "find", "there", "that", "this", "with", "does", "from", "have"}}
        keys = [w.lower() for w in re.findall(r"[A-Za-z]{{4,}}", task) if w.lower() not in stop] or [""]
        hay = text.lower()
        if len(hay) != len(text):
            return text
    out, pos = [], 0
    while True:
        pos = hay.find(keys[0], pos)
        if pos < 0:
            return "\\n".join(out)
        start = hay.rfind("\\n", 0, pos) + 1
        end = hay.find("\\n", pos)
        end = len(hay) if end < 0 else end
        if all(k in hay[start:end] for k in keys[1:]):
            out.append(text[start:end])
        pos = end + 1


if {grep_first!r} and isinstance(data, str) and len(data) > 100_000:
    before = len(data)
    data = grep_lines(data, task)
    print(f"grep kept {{len(data)}} of {{before}} chars")


def split_pieces(data, n=4, small=2000, max_piece={max_piece!r}):
    # Cut next to newlines found by find(): no per-line list, so 100 MB stays cheap.
    # At least n pieces, more when a piece would exceed what a sub-model can read.
    if isinstance(data, str):
        if len(data) < small:
            return [data]
        n = max(n, -(-len(data) // max_piece))
        cuts = [0]
        for i in range(1, n):
            pos = data.find("\\n", max(cuts[-1], len(data) * i // n))
            if pos < 0:
                break
            if pos + 1 > cuts[-1] and pos + 1 < len(data):
                cuts.append(pos + 1)
        cuts.append(len(data))
        return [data[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
    if isinstance(data, (list, tuple)):
        items = [x if isinstance(x, str) else repr(x) for x in data]
        if not items:
            return [""]
        k = max(1, min(n, len(items)))
        size = -(-len(items) // k)
        return ["\\n".join(items[i:i + size]) for i in range(0, len(items), size)]
    return [str(data)]


pieces = split_pieces(data)
prompts = ["TASK: " + task + "\\n\\nTEXT:\\n" + piece for piece in pieces]
answers = llm_query_batched(prompts)
if re.search({count_re!r}, task, re.IGNORECASE):
    total = 0
    for a in answers:
        m = re.search(r"-?\\d+", str(a))
        if m:
            total += int(m.group())
    answer = str(total)
else:
    answer = {not_found!r}
    for a in answers:
        a = str(a).strip()
        if a and a.upper() != {not_found!r}:
            answer = a
            break
print(f"{{len(pieces)}} pieces of {{sum(len(p) for p in pieces)}} chars; answers: {{str(answers)[:300]}}")
print("answer:", answer)
"""


MAX_PIECE = 2_000_000
"""Characters per sub-call at most: about what a long-context sub-model reads at once."""


def build_step1_code(task: str, *, grep_first: bool = False, max_piece: int = MAX_PIECE) -> str:
    """The first cell of a scripted RLM node: split ``context``, fan out, combine into ``answer``.

    Everything that depends on ``context`` is decided at run time inside the sandbox (the
    policy never sees the context), which is also how a real root model has to work. With
    ``grep_first`` the node first keeps only the lines that mention the task's phrase or
    keywords (what capable models do on needle and counting tasks), then fans out.
    """
    return _STEP1_TEMPLATE.format(
        task=task, count_re=COUNT_TASK_RE, not_found=NOT_FOUND, grep_first=grep_first, max_piece=max_piece
    )
