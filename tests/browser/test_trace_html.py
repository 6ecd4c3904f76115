"""The trace's HTML page in a real headless Chromium: it renders, its tree folds and unfolds
under real mouse clicks, its timeline opens nodes, untrusted text stays text, and the console
stays free of errors (script errors, CSP violations, blocked loads) throughout."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlm_sandbox.trace.html import render_html
from rlm_sandbox.trace.tree import build, load

from ..conftest import unavailable
from ..trace_runs import traced_run
from .cdp import Chromium, Page, find_chromium

EVIL = '</script><script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    binary = find_chromium()
    if binary is None:
        unavailable("chromium is not installed; run scripts/ensure-test-tools.sh")
    with Chromium(binary) as tab:
        yield tab


def visible(page: Page, selector: str) -> bool:
    return page.js(f"document.querySelector({json.dumps(selector)}).checkVisibility()")


def node_sel(node: str, part: str = "") -> str:
    return f'details.node[data-node="{node}"]{part}'


@pytest.mark.docker
def test_real_run_page_renders_folds_and_has_no_console_errors(
    page: Page, scripted, gen_log, run_id: str, tmp_path: Path
) -> None:
    stats = gen_log(1_000_000)
    trace = tmp_path / "run.jsonl"
    result = traced_run(scripted(), stats.path, trace, run_id, depth=3)
    assert result.ok, result
    run = load(trace)
    html = tmp_path / "run.html"
    html.write_text(render_html(run), encoding="utf-8")
    page.open(html.as_uri())

    assert page.js("document.body.dataset.ready") == "1"  # the inline script ran under the CSP
    assert page.js("document.querySelectorAll('details.node').length") == 21
    assert page.js("document.querySelectorAll('svg .bar').length") == 21
    assert str(stats.disk_errors) in page.js("document.querySelector('header').innerText")

    child = run.nodes["root"].children[0]
    grandchild = child.children[0]
    # The root is open and the cell that spawned its children too: the children's headers show,
    # but what is inside a child (its cells, its own children) is folded away.
    assert visible(page, node_sel(child.id, " > summary"))
    assert not visible(page, node_sel(child.id, " > .body details.cell > summary"))
    assert not visible(page, node_sel(grandchild.id, " > summary"))
    page.click(node_sel(child.id, " > summary"))
    assert page.js(f"document.querySelector({json.dumps(node_sel(child.id))}).open") is True
    assert visible(page, node_sel(child.id, " > .body details.cell > summary"))
    assert visible(page, node_sel(grandchild.id, " > summary"))  # its spawning cell is open
    assert not visible(page, node_sel(grandchild.id, " > .body pre.code"))

    # Folding the root hides the whole tree under it; a timeline bar unfolds the path again.
    page.click(node_sel("root", " > summary"))
    assert not visible(page, node_sel(child.id, " > summary"))
    dom_id = page.js(f"document.querySelector({json.dumps(node_sel(grandchild.id))}).id")
    bar = f'svg .bar[data-target="{dom_id}"] rect.span'
    page.click(bar)
    assert page.js(f"document.querySelector({json.dumps(node_sel(grandchild.id))}).open") is True
    assert visible(page, node_sel(grandchild.id, " > .body details.cell > summary"))
    assert not visible(page, node_sel(grandchild.id, " > .body pre.code"))  # cells stay folded
    page.click(node_sel(grandchild.id, " > .body details.cell > summary"))
    assert visible(page, node_sel(grandchild.id, " > .body pre.code"))
    assert visible(page, node_sel("root", " > summary")) and page.js(
        f"document.querySelector({json.dumps(node_sel('root'))}).open"
    )

    page.click("#collapse-all")
    assert page.js("[...document.querySelectorAll('#tree details')].every(d => !d.open)")
    page.click("#expand-all")
    assert page.js("[...document.querySelectorAll('#tree details')].every(d => d.open)")
    answer = run.nodes[grandchild.id].answer
    assert answer and answer in page.js(
        f"document.querySelector({json.dumps(node_sel(grandchild.id))}).innerText"
    )
    assert page.console_errors() == []


def test_untrusted_trace_text_stays_text(page: Page, tmp_path: Path) -> None:
    events = [
        {"event": "run_start", "run": "r", "t": 0.0, "model": EVIL, "task": EVIL, "depth": 2},
        {"event": "node_begin", "run": "r", "t": 0.1, "node": "root", "parent": None, "depth": 0},
        {
            "event": "cell_start",
            "run": "r",
            "t": 0.2,
            "node": "root",
            "depth": 0,
            "step": 1,
            "index": 0,
            "code": EVIL,
        },
        {"event": "node_begin", "run": "r", "t": 0.3, "node": EVIL, "parent": "root", "depth": 1},
        {
            "event": "node_end",
            "run": "r",
            "t": 0.4,
            "node": EVIL,
            "depth": 1,
            "status": EVIL,
            "steps": 1,
            "answer": EVIL,
        },
        {
            "event": "cell",
            "run": "r",
            "t": 0.5,
            "node": "root",
            "depth": 0,
            "step": 1,
            "index": 0,
            "code": EVIL,
            "output": EVIL,
            "error": EVIL,
            "duration_s": 0.3,
            "wall_s": 0.3,
            "timed_out": False,
        },
        {
            "event": "node_end",
            "run": "r",
            "t": 0.6,
            "node": "root",
            "depth": 0,
            "status": "done",
            "steps": 1,
            "answer": EVIL,
            "error": None,
            "wall_s": 0.5,
        },
        {
            "event": "run_end",
            "run": "r",
            "t": 0.7,
            "answer": EVIL,
            "status": "ok",
            "error": EVIL,
            "wall_s": 0.7,
        },
    ]
    html = tmp_path / "evil.html"
    html.write_text(render_html(build(events)), encoding="utf-8")
    page.open(html.as_uri())
    page.click("#expand-all")
    assert page.js("document.body.dataset.ready") == "1"
    assert page.js("typeof window.__pwned") == "undefined"
    assert page.js("document.querySelectorAll('img').length") == 0
    assert page.js("document.querySelectorAll('script').length") == 1
    assert page.js("document.querySelectorAll('details.node').length") == 2
    shown = page.js("document.body.innerText")
    assert shown.count(EVIL) >= 6  # model, task, code, output, error, answers: shown verbatim
    assert page.js("document.querySelector('details.node[data-node=\"root\"] pre.code').textContent") == EVIL
    assert page.console_errors() == []
