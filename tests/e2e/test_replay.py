"""``rlm-sandbox replay``: a recorded run played again with no model, in fresh containers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rlm_sandbox.replay import DIVERGED_REPLY, ReplayPolicy, load_recording
from rlm_sandbox.rlm.api import RLM
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.trace.writer import read_trace

from ..conftest import containers_of
from ..helpers import cli, json_out

pytestmark = pytest.mark.docker
COUNT = 'How many lines contain "ERROR disk"?'


@pytest.fixture
def recorded(scripted, gen_log, run_id: str, tmp_path: Path):
    """A depth-2 count run with the scripted model: (log stats, trace path, request bodies)."""
    stats = gen_log(400_000, seed=5)
    server = scripted()
    trace = tmp_path / "recorded.jsonl"
    cfg = RLMConfig(api_base=server.url, depth=2, lm_retries=3, trace=str(trace))
    result = RLM(model=server.model_name, config=cfg, api_key=server.api_key).run(
        context=stats.path, task=COUNT, run_id=run_id
    )
    assert result.status == "ok" and result.answer == str(stats.disk_errors), result
    assert result.nodes == 5
    return stats, trace, server.requests.bodies


def _containers(events: list[dict]) -> list[str]:
    return [e["container"] for e in events if e["event"] == "node_start"]


def test_replay_of_an_unchanged_run_is_identical_in_fresh_containers(recorded, tmp_path: Path) -> None:
    stats, trace, _ = recorded
    new_trace = tmp_path / "replayed.jsonl"
    proc = cli("replay", str(trace), "-i", str(stats.path), "--json", "--trace", str(new_trace))
    report = json_out(proc)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert report["identical"] is True and report["divergences"] == [] and report["first_divergence"] is None
    counts = report["counts"]
    assert counts["unknown_requests"] == 0 and counts["requests"] == counts["recorded_calls"] == 26
    assert counts["matched_exact"] == 26
    assert counts["nodes_replayed"] == counts["nodes_recorded"] == 5 and counts["cells_differing"] == 0
    assert report["answer_replayed"] == report["answer_recorded"] == str(stats.disk_errors)
    assert report["trace"] == str(new_trace)
    old, new = read_trace(trace), read_trace(new_trace)
    # Fresh containers: five new ones, none of the recorded run's, none left behind.
    assert len(set(_containers(new))) == 5 and not set(_containers(new)) & set(_containers(old))
    assert new[0]["run"] != old[0]["run"] and containers_of(new[0]["run"]) == []
    assert {e["model"] for e in new if e["event"] == "lm_call"} == {"openai/replay"}


def test_policy_answers_recorded_requests_even_with_another_budget_line(recorded) -> None:
    _, trace, bodies = recorded
    recording = load_recording(trace)
    policy = ReplayPolicy(recording)
    root_first = next(b for b in bodies if "depth 0 of" in b["messages"][0]["content"])
    reply = policy(root_first)
    assert reply.body["choices"][0]["message"]["content"] == recording.calls[0].response
    # The seconds left when a node started depend on timing: a second less is the same request.
    system = root_first["messages"][0]["content"]
    later = re.sub(
        r"(\d+) s of wall time left", lambda m: f"{int(m.group(1)) - 1} s of wall time left", system
    )
    assert later != system
    shifted = {**root_first, "messages": [{"role": "system", "content": later}, *root_first["messages"][1:]]}
    reply = policy(shifted)
    assert reply.body["choices"][0]["message"]["content"] == recording.calls[0].response
    strange = {"messages": [{"role": "user", "content": "a question nobody asked"}]}
    assert policy(strange).body["choices"][0]["message"]["content"] == DIVERGED_REPLY
    # The engine's digest leaves the volatile budget line out: the shifted request is exact.
    assert [s.how for s in policy.served] == ["exact", "exact", "unknown"]
    assert policy.served[1].call == recording.calls[0].index and policy.served[2].call is None


def test_replay_with_a_changed_input_names_the_first_divergent_node(recorded, tmp_path: Path) -> None:
    stats, trace, _ = recorded
    # Same size and same start (so the root's first request is the same), one line changed
    # deep inside: one child's piece differs, so its sub-call is a request never recorded.
    text = stats.path.read_text()
    at = text.find("ERROR disk", len(text) * 5 // 8)
    changed = tmp_path / "changed.log"
    changed.write_text(text[:at] + "ERROR dusk" + text[at + len("ERROR disk") :])
    proc = cli("replay", str(trace), "-i", str(changed), "--json", "--trace", str(tmp_path / "r.jsonl"))
    report = json_out(proc)
    assert proc.returncode == 1, proc.stderr.decode()[-2000:]
    assert report["identical"] is False and report["counts"]["unknown_requests"] >= 1
    first = report["first_divergence"]
    children = {e["node"] for e in read_trace(trace) if e["event"] == "node_start" and e["depth"] == 1}
    assert first["kind"] == "request_unknown" and first["depth"] == 1 and first["step"] == 1
    assert first["node"] in children and first["replay_node"]
    assert "TASK: " + COUNT in first["replayed"]
    kinds = [d["kind"] for d in report["divergences"]]
    assert "cell_output" in kinds and kinds[-1] == "run_answer"
    cell = next(d for d in report["divergences"] if d["kind"] == "cell_output")
    assert cell["recorded"] != cell["replayed"] and DIVERGED_REPLY[6:-1] in cell["replayed"]
    assert report["answer_recorded"] == str(stats.disk_errors) != report["answer_replayed"]
    # The same verdict for a person: the first divergent node and step, both excerpts.
    text_proc = cli("replay", str(trace), "-i", str(changed))
    out = text_proc.stdout.decode()
    assert text_proc.returncode == 1 and "diverged" in out
    assert re.search(
        r"first divergence: request_unknown at node n\d+, replayed as n\d+, depth 1, step 1", out
    ), out


def test_unusable_traces_are_usage_errors(tmp_path: Path) -> None:
    log = tmp_path / "in.log"
    log.write_text("x\n")
    proc = cli("replay", str(tmp_path / "missing.jsonl"), "-i", str(log))
    assert proc.returncode == 2 and "trace not found" in proc.stderr.decode()
    old = tmp_path / "old.jsonl"
    events = [
        {"event": "run_start", "run": "r", "t": 0, "task": "t", "depth": 1, "max_steps": 3, "limits": {}},
        {"event": "lm_call", "run": "r", "t": 1, "node": "root", "depth": 0, "purpose": "step"},
        {"event": "run_end", "run": "r", "t": 2, "status": "ok", "answer": "a"},
    ]
    old.write_text("".join(json.dumps(e) + "\n" for e in events))
    proc = cli("replay", str(old), "-i", str(log), "--json")
    err = proc.stderr.decode()
    assert proc.returncode == 2 and proc.stdout == b""
    assert "older version of rlm-sandbox" in err and "no request digests" in err and "hint:" in err
    junk = tmp_path / "junk.jsonl"
    junk.write_text("not json\n")
    proc = cli("replay", str(junk), "-i", str(log))
    assert proc.returncode == 2 and "is not a trace" in proc.stderr.decode()
