"""The controller through the in-memory seam: a whole run with no Docker engine at all."""

from __future__ import annotations

import pytest

from rlm_sandbox import RLM, RLMConfig
from rlm_sandbox.sandbox.fake import FakeBackend
from rlm_sandbox.testing import ScriptedClient, generate_log, rlm_policy, sequence_policy


@pytest.fixture(autouse=True)
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prove these tests need no engine: any Docker client would fail at once."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent")


def run(policy=rlm_policy, context="", task="t", backend=None, **config):
    backend = backend or FakeBackend()
    client = ScriptedClient(policy)
    rlm = RLM(root_lm=client, backend=backend, config=RLMConfig(**config))
    return rlm.run(context=context, task=task), backend, client


def test_a_count_over_a_generated_log_is_exact() -> None:
    stats = generate_log(None, 200_000, seed=3)
    result, backend, client = run(context=stats.text, task='How many lines contain "ERROR disk"?')
    assert result.status == "ok", result.error
    assert result.answer == str(stats.disk_errors)
    assert backend.alive() == []
    assert client.calls == result.lm_calls > 1


def test_depth_two_gives_every_child_its_own_kernel() -> None:
    stats = generate_log(None, 100_000, seed=4)
    task = 'How many lines contain "ERROR disk"?'
    result, backend, _ = run(context=stats.text, task=task, depth=2, pool_size=0)
    assert result.status == "ok", result.error
    assert result.answer == str(stats.disk_errors)
    assert result.max_depth_reached == 2
    assert len(backend.started) == result.containers > 1
    assert backend.alive() == []


def test_the_warm_pool_is_emptied_when_the_run_ends() -> None:
    stats = generate_log(None, 50_000, seed=5)
    result, backend, _ = run(
        context=stats.text, task='How many lines contain "ERROR disk"?', depth=2, pool_size=3
    )
    assert result.status == "ok", result.error
    assert len(backend.started) >= result.containers
    assert backend.alive() == []


def test_final_var_reads_the_kernels_namespace() -> None:
    policy = sequence_policy("```repl\nanswer = len(context) * 2\n```", "FINAL_VAR(answer)")
    result, backend, _ = run(policy, context="abcd")
    assert (result.status, result.answer, result.steps) == ("ok", "8", 2)
    assert backend.started[0].cells[0].startswith("answer = ")


def test_a_refused_start_is_a_sandbox_error_and_nothing_is_left() -> None:
    result, backend, client = run(context="x", backend=FakeBackend(fail_starts=1))
    assert result.status == "sandbox_error"
    assert "refuse" in (result.error or "")
    # The root's first model call was already out while its container started (issue 16):
    # the run waited for it and counted it; nothing followed it.
    assert client.calls == 1 and result.lm_calls == 1 and backend.alive() == []


def test_fake_kernels_compile_cells_under_the_guard_and_run_them_outside_it() -> None:
    """The guard serialises parsing between fake kernels; a cell must run outside it, or a
    parent cell waiting on a child's cell would hold it forever."""
    from rlm_sandbox.kernel.repl import HostLink, Repl

    seen: list[str] = []

    class Guard:
        def __enter__(self) -> None:
            seen.append("enter")

        def __exit__(self, *exc: object) -> None:
            seen.append("exit")

    repl = Repl(HostLink(lambda *a: None), echo=seen.append, compile_guard=Guard())
    repl.ns["mark"] = lambda: seen.append("cell runs")
    outcome = repl.run("mark()\n1 + 1", 2)
    assert outcome.status == "ok"
    assert seen == ["enter", "exit", "cell runs", "2"]
