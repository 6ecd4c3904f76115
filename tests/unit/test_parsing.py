"""Parsing of model replies: code fences, final answers, output truncation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlm_sandbox.rlm.parsing import FinalAnswer, find_code_blocks, find_final, truncate_output

# --------------------------------------------------------------------------- code blocks


def test_repl_blocks_in_order_and_other_languages_ignored() -> None:
    text = (
        "Let me look.\n```repl\nx = 1\nprint(x)\n```\n"
        "Shell, not for us:\n```bash\nrm -rf /\n```\n"
        "Output shown:\n```\n1\n```\n"
        "```python\ny = 2\n```\n```py\nz = 3\n```\n```python3\nw = 4\n```\n"
    )
    assert find_code_blocks(text) == ["x = 1\nprint(x)\n", "y = 2\n", "z = 3\n", "w = 4\n"]


def test_crlf_and_trailing_spaces_on_fences() -> None:
    text = "Hi\r\n```repl   \r\nfor i in range(2):\r\n    print(i)\r\n```   \r\nbye\r\n"
    assert find_code_blocks(text) == ["for i in range(2):\n    print(i)\n"]


def test_unclosed_block_at_the_end_takes_the_rest() -> None:
    text = "```repl\na = 1\n```\nnow more:\n```repl\nb = 2\nc = 3"
    assert find_code_blocks(text) == ["a = 1\n", "b = 2\nc = 3"]


def test_indented_fence_is_dedented_by_its_own_indent() -> None:
    text = "1. First step:\n   ```repl\n   if True:\n       x = 1\n   ```\n"
    blocks = find_code_blocks(text)
    assert blocks == ["if True:\n    x = 1\n"]
    compile(blocks[0], "<cell>", "exec")


def test_info_string_is_case_insensitive_and_may_have_attributes() -> None:
    assert find_code_blocks("```REPL title=x\nq = 1\n```") == ["q = 1\n"]


def test_longer_fence_contains_shorter_fences() -> None:
    text = '````repl\ns = """\n```\n"""\n````\n'
    assert find_code_blocks(text) == ['s = """\n```\n"""\n']


def test_tilde_fences() -> None:
    assert find_code_blocks("~~~repl\nt = 1\n~~~\n") == ["t = 1\n"]


def test_inline_triple_backticks_are_not_a_block() -> None:
    assert find_code_blocks("use ```x``` here\n```repl\nk = 1\n```") == ["k = 1\n"]


def test_no_blocks() -> None:
    assert find_code_blocks("just prose, FINAL(3)") == []
    assert find_code_blocks("") == []


def test_empty_block() -> None:
    assert find_code_blocks("```repl\n```\n") == [""]


# --------------------------------------------------------------------------- final answers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("FINAL(42)", FinalAnswer("value", "42")),
        ("The answer is in.\nFINAL( 42 )\n", FinalAnswer("value", "42")),
        ("So the result: **FINAL(Paris)**.", FinalAnswer("value", "Paris")),
        ("`FINAL(Paris)`", FinalAnswer("value", "Paris")),
        ('FINAL("quoted answer")', FinalAnswer("value", "quoted answer")),
        ("FINAL('single')", FinalAnswer("value", "single")),
        ('FINAL("""triple""")', FinalAnswer("value", "triple")),
        ('FINAL("a" and "b")', FinalAnswer("value", '"a" and "b"')),
        ("FINAL(f(x) = (1 + 2))", FinalAnswer("value", "f(x) = (1 + 2)")),
        ('FINAL("smile :)")', FinalAnswer("value", "smile :)")),
        ("FINAL(line one\nline (two)\nline three)", FinalAnswer("value", "line one\nline (two)\nline three")),
        ("it's done: FINAL(it's 7)", FinalAnswer("value", "it's 7")),
        ("FINAL_VAR(answer)", FinalAnswer("var", "answer")),
        ('FINAL_VAR("answer")', FinalAnswer("var", "answer")),
        ("FINAL_VAR('answer')", FinalAnswer("var", "answer")),
        ("FINAL_VAR(`answer`)", FinalAnswer("var", "answer")),
        ("**FINAL_VAR(result_2)**", FinalAnswer("var", "result_2")),
        ("FINAL (spaced)", FinalAnswer("value", "spaced")),
    ],
)
def test_find_final(text: str, expected: FinalAnswer) -> None:
    assert find_final(text) == expected


def test_final_var_is_not_final() -> None:
    found = find_final("FINAL_VAR(x)")
    assert found is not None and found.kind == "var"


def test_first_occurrence_wins() -> None:
    assert find_final("FINAL_VAR(a) and later FINAL(b)") == FinalAnswer("var", "a")
    assert find_final("FINAL(b)\nthen FINAL_VAR(a)") == FinalAnswer("value", "b")


def test_final_inside_code_blocks_is_ignored() -> None:
    text = "```repl\nFINAL(1)\nFINAL_VAR('x')\n```\nNot done yet."
    assert find_final(text) is None
    text2 = "```repl\nFINAL(1)\n```\nNow: FINAL(2)"
    assert find_final(text2) == FinalAnswer("value", "2")


def test_final_inside_an_unclosed_code_block_is_ignored() -> None:
    assert find_final("```repl\nx = 1\nFINAL(x)") is None


def test_unbalanced_final_in_prose_does_not_swallow_a_code_block() -> None:
    text = "FINAL(oops\n```repl\nx = (1)\n```\n"
    assert find_final(text) == FinalAnswer("value", "oops")


def test_similar_names_are_not_final() -> None:
    assert find_final("MY_FINAL(3) and FINALLY(4) and final(5)") is None


def test_empty_final_is_skipped() -> None:
    assert find_final("I will call FINAL() when done.") is None
    assert find_final("FINAL() ... FINAL(9)") == FinalAnswer("value", "9")


def test_invalid_var_name_is_reported_raw() -> None:
    found = find_final("FINAL_VAR(my answer)")
    assert found == FinalAnswer("var", "my answer")
    assert not found.valid_name
    assert not FinalAnswer("var", "class").valid_name
    assert FinalAnswer("var", "answer").valid_name
    assert FinalAnswer("value", "any text").valid_name


def test_no_final() -> None:
    assert find_final("") is None
    assert find_final("Let me keep looking.") is None


def test_crlf_final() -> None:
    assert find_final("Done.\r\nFINAL_VAR(answer)\r\n") == FinalAnswer("var", "answer")


@given(st.text(alphabet=st.characters(blacklist_characters="()`~\"'\r", blacklist_categories=("Cs",))))
def test_final_roundtrips_any_paren_free_text(value: str) -> None:
    found = find_final(f"Result: FINAL({value})")
    if value.strip():
        assert found == FinalAnswer("value", value.strip())
    else:
        assert found is None


@given(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True))
def test_final_var_roundtrips_identifiers(name: str) -> None:
    assert find_final(f"FINAL_VAR({name})") == FinalAnswer("var", name)


@given(st.text())
def test_parsers_never_crash(text: str) -> None:
    find_code_blocks(text)
    find_final(text)


# --------------------------------------------------------------------------- truncation


def test_truncate_short_text_unchanged() -> None:
    assert truncate_output("hello", 5) == "hello"
    assert truncate_output("", 0) == ""


def test_truncate_keeps_head_and_tail_and_says_how_much() -> None:
    text = "H" * 1000 + "M" * 8000 + "T" * 1000
    out = truncate_output(text, 2000)
    assert out.startswith("H" * 1000)
    assert out.endswith("T" * 400)
    assert "8000 characters truncated" in out
    assert len(out) < 2100


@given(st.text(max_size=3000), st.integers(min_value=0, max_value=2000))
def test_truncate_properties(text: str, limit: int) -> None:
    out = truncate_output(text, limit)
    if len(text) <= limit:
        assert out == text
        return
    cut = len(text) - limit
    marker = f"\n... [{cut} characters truncated] ...\n"
    assert marker in out
    head, _, tail = out.partition(marker)
    assert text.startswith(head)
    assert text.endswith(tail)
    assert len(head) + len(tail) == limit


# --------------------------------------------------------------------------- hostile replies
# A model's reply is untrusted text the host parses holding the GIL: every parser must be
# linear. Each input below made a regex backtrack quadratically (or worse) before; the
# bound in seconds is generous on purpose and separates linear from minutes.

_OLD_OPEN = r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n]*?)[ \t]*$"


@given(st.text(alphabet=" \t`~xy", max_size=30))
def test_the_fence_reader_means_what_the_old_regex_meant(line: str) -> None:
    import re

    from rlm_sandbox.rlm.parsing import _open_fence

    m = re.match(_OLD_OPEN, line)
    expected = (m.group("indent"), m.group("fence"), m.group("info").strip()) if m else None
    assert _open_fence(line) == expected


@pytest.mark.parametrize(
    "text",
    [
        "```x" + " " * 400_000 + "y",
        "```\n" + (" " * 100_000 + "x\n") * 20,
        "```" * 200_000,
        "```\n" * 200_000,
        "FINAL(" * 200_000,
        "FINAL_VAR(``)" * 100_000,
        'FINAL("' * 200_000,
        "FINAL" + " " * 400_000 + "x",
        "\n".join("`" * (3 + i % 50) for i in range(100_000)),
    ],
)
def test_hostile_replies_parse_in_linear_time(text: str) -> None:
    import time

    t0 = time.monotonic()
    find_code_blocks(text)
    find_final(text)
    truncate_output(text, 1000)
    assert time.monotonic() - t0 < 20
