"""The first cell a scripted RLM node writes: split ``context``, fan out with
``llm_query_batched``, combine into ``answer``; on a count of a quoted phrase it also cites
the lines that hold it (``cite``), in the run's own terms. A piece sent to a helper says
where it starts (``SOURCE: {"file": ..., "line": ...}`` between the task and the text), so a
child RLM cites the run's file and line, not its prompt's. It is real Python run in the sandbox, kept as
a template so that root and leaf agree on what a count or a search task is."""

from __future__ import annotations

COUNT_TASK_RE = r"how many|\bcount|number of"
"""A task is a COUNT task when it matches this (case-insensitive); else it is a SEARCH task.
The same pattern is embedded into the generated code, so root and leaf always agree."""


NOT_FOUND = "NOT FOUND"

_STEP1_TEMPLATE = """\
import json
import re

task = {task!r}
data = context
source_file, source_line = None, 1  # where `data` starts in the run's input (for cite)
nested = False
# A child RLM's context is its parent's request: "TASK: ...\\n\\nTEXT:\\n...". Unwrap it.
if isinstance(data, str) and data.startswith("TASK: ") and "\\n\\nTEXT:\\n" in data:
    head, data = data.split("\\n\\nTEXT:\\n", 1)
    task = head[len("TASK: "):]
    nested = True
    if "\\n\\nSOURCE: " in task:
        task, where = task.split("\\n\\nSOURCE: ", 1)
        try:
            where = json.loads(where)
            source_file, source_line = where.get("file"), int(where.get("line", 1))
        except (ValueError, TypeError, AttributeError):
            pass


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


original, grepped = data, False
if {grep_first!r} and isinstance(data, str) and len(data) > 100_000:
    before = len(data)
    data, grepped = grep_lines(data, task), True
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
    if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
        # Several input files: each is split on its own, so no piece mixes two files.
        return [piece for text in data.values() for piece in split_pieces(text, n, small, max_piece)]
    if isinstance(data, (list, tuple)):
        items = [x if isinstance(x, str) else repr(x) for x in data]
        if not items:
            return [""]
        k = max(1, min(n, len(items)))
        size = -(-len(items) // k)
        return ["\\n".join(items[i:i + size]) for i in range(0, len(items), size)]
    return [str(data)]


def split_with_sources(data):
    # The pieces, each with where it starts in the run's input: (file, line), so that a child
    # can cite in the run's own terms. Pieces are contiguous: lines are counted as they go by.
    if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
        texts = list(data.items())
    elif isinstance(data, str) and not grepped:
        texts = [(source_file, data)]
    else:
        return [(piece, None) for piece in split_pieces(data)]
    out = []
    for name, text in texts:
        line = source_line if name == source_file and not isinstance(data, dict) else 1
        for piece in split_pieces(text):
            out.append((piece, (name, line)))
            line += piece.count("\\n")
    return out


def cite_lines(data, phrase, most=10):
    # Cite the lines that hold the phrase: the first of each file (of the root's text, the
    # first three), at most `most`, in the run's own terms (file, line).
    texts = list(data.items()) if isinstance(data, dict) else [(source_file, data)]
    cited = 0
    for name, text in texts:
        if not isinstance(text, str):
            continue
        pos = 0
        for _ in range(1 if isinstance(data, dict) or nested else 3):
            pos = text.find(phrase, pos)
            if pos < 0 or cited >= most:
                break
            first = source_line if not isinstance(data, dict) else 1
            cite(name, first + text.count("\\n", 0, pos), phrase)
            cited += 1
            pos = text.find("\\n", pos)
            if pos < 0:
                break


split = split_with_sources(data)
pieces = [piece for piece, _ in split]
prompts = [
    "TASK: " + task
    + ("\\n\\nSOURCE: " + json.dumps({{"file": where[0], "line": where[1]}}) if where else "")
    + "\\n\\nTEXT:\\n" + piece
    for piece, where in split
]
answers = llm_query_batched(prompts)
if re.search({count_re!r}, task, re.IGNORECASE):
    total = 0
    for a in answers:
        m = re.search(r"-?\\d+", str(a))
        if m:
            total += int(m.group())
    answer = str(total)
    quoted = re.search(r'"([^"\\n]+)"', task)
    # (an engine without cite(), such as the official rlms the benchmark compares with: skip)
    if quoted and isinstance(original, (str, dict)) and "cite" in globals():
        cite_lines(original, quoted.group(1))
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
