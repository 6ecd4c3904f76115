"""The asyncio API and cancellation, through the in-memory seam (no engine)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from rlm_sandbox import RLM, AsyncRLM, Cancellation, RLMConfig
from rlm_sandbox.blocking import WORK_THREADS
from rlm_sandbox.sandbox.fake import FakeBackend
from rlm_sandbox.testing import AsyncScriptedClient, ScriptedClient, generate_log, rlm_policy, sequence_policy

COUNT = 'How many lines contain "ERROR disk"?'


@pytest.fixture(autouse=True)
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent")


def test_many_runs_in_one_loop_answer_like_the_sync_api() -> None:
    stats = generate_log(None, 60_000, seed=11)
    backend = FakeBackend()
    arlm = AsyncRLM(
        root_lm=ScriptedClient(rlm_policy), backend=backend, config=RLMConfig(depth=2, pool_size=0)
    )

    async def main() -> list[Any]:
        return await asyncio.gather(*[arlm.run(stats.text, task=COUNT) for _ in range(6)])

    results = asyncio.run(main())
    assert [r.answer for r in results] == [str(stats.disk_errors)] * 6
    assert all(r.status == "ok" and r.max_depth_reached == 2 for r in results)
    assert backend.alive() == []


def test_an_async_listener_gets_every_event_of_its_run_in_order() -> None:
    got: list[dict[str, Any]] = []
    sync_got: list[dict[str, Any]] = []

    async def listen(event: dict[str, Any]) -> None:
        await asyncio.sleep(0)  # a listener that yields must still see the events in order
        got.append(event)

    arlm = AsyncRLM(
        root_lm=ScriptedClient(sequence_policy("```repl\nx = 1\n```", "FINAL(done)")), backend=FakeBackend()
    )
    arlm.listeners.append(listen)
    result = asyncio.run(arlm.run("abc", task="t", listeners=[sync_got.append]))
    assert result.answer == "done"
    kinds = [e["event"] for e in got]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    assert [e["t"] for e in got] == sorted(e["t"] for e in got)
    assert [e["event"] for e in sync_got if e["event"] not in ("load_progress",)] == [
        k for k in kinds if k != "load_progress"
    ]


def test_cancelling_the_awaiting_task_stops_the_run_and_removes_its_kernels() -> None:
    stats = generate_log(None, 60_000, seed=12)
    backend = FakeBackend()
    ended: list[dict[str, Any]] = []
    arlm = AsyncRLM(root_lm=ScriptedClient(rlm_policy, latency_s=30), backend=backend)

    async def main() -> float:
        task = asyncio.create_task(arlm.run(stats.text, task=COUNT, listeners=[ended.append]))
        await asyncio.sleep(0.5)  # the root's first call is out (it takes 30 s)
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - t0

    took = asyncio.run(main())
    assert took < 5  # generous: the run stops at once, its kernels are removed within a second here
    end = next(e for e in ended if e["event"] == "run_end")
    assert end["status"] == "cancelled"
    assert backend.alive() == []


def test_a_cancellation_from_another_thread_ends_a_sync_run_as_cancelled() -> None:
    backend = FakeBackend()
    rlm = RLM(root_lm=ScriptedClient(rlm_policy, latency_s=30), backend=backend)
    cancel = Cancellation()
    threading.Timer(0.5, cancel.cancel).start()
    result = rlm.run("ERROR disk\n" * 10, task=COUNT, cancel=cancel)
    assert (result.status, result.exit_code) == ("cancelled", 130)
    assert backend.alive() == []


def test_a_cancellation_before_the_run_starts_takes_effect_at_once() -> None:
    client = ScriptedClient(rlm_policy)
    cancel = Cancellation()
    cancel.cancel("not wanted any more")
    result = RLM(root_lm=client, backend=FakeBackend()).run("abc", task="t", cancel=cancel)
    assert result.status == "cancelled" and "not wanted any more" in (result.error or "")


def test_an_async_session_keeps_its_namespace_across_questions() -> None:
    policy = sequence_policy("```repl\nfound = len(context)\n```", "FINAL_VAR(found)", "FINAL_VAR(found)")
    backend = FakeBackend()
    arlm = AsyncRLM(root_lm=ScriptedClient(policy), backend=backend)

    async def main() -> tuple[str | None, str | None]:
        async with arlm.session(context="abcdef") as s:
            first = await s.ask("How long?")
            second = await s.ask("Again?")
            return first.answer, second.answer

    assert asyncio.run(main()) == ("6", "6")
    assert backend.alive() == []


# ---- one loop, no thread per run


def test_many_runs_share_one_loop_and_no_thread_waits_on_a_model_call() -> None:
    """20 runs at once, every model call 0.3 s: each call is awaited on the loop that runs
    them (the client's policy sees only that thread), and the process does not grow a
    thread per run."""
    stats = generate_log(None, 20_000, seed=13)
    seen: set[str] = set()

    def policy(request: dict[str, Any]) -> Any:
        seen.add(threading.current_thread().name)
        return rlm_policy(request)

    backend = FakeBackend()
    arlm = AsyncRLM(
        root_lm=AsyncScriptedClient(policy, latency_s=0.3),
        backend=backend,
        config=RLMConfig(depth=1, pool_size=0, max_containers=64),
    )
    peak = 0

    async def main() -> list[Any]:
        nonlocal peak
        here = threading.current_thread().name
        runs = asyncio.gather(*[arlm.run(stats.text, task=COUNT) for _ in range(20)])
        while not runs.done():
            peak = max(peak, threading.active_count())
            await asyncio.sleep(0.01)
        seen.discard(here)
        return await runs

    before = threading.active_count()
    results = asyncio.run(main())
    assert [r.answer for r in results] == [str(stats.disk_errors)] * 20
    assert seen == set()  # every model call ran on the caller's loop thread
    # What threads there are belong to sandboxes (the fake's kernel, the reader, the reply
    # sender) and to the bounded pool for what blocks: none per model call, none per run.
    assert peak - before <= 3 * 20 + WORK_THREADS
    assert backend.alive() == []


def test_a_synchronous_client_runs_in_the_bounded_call_pool() -> None:
    seen: set[str] = set()

    def policy(request: dict[str, Any]) -> Any:
        seen.add(threading.current_thread().name)
        return rlm_policy(request)

    arlm = AsyncRLM(root_lm=ScriptedClient(policy), backend=FakeBackend())
    result = asyncio.run(arlm.run("ERROR disk\n" * 3, task=COUNT))
    assert result.answer == "3"
    assert seen and all(name.startswith("rlm-call") for name in seen)


def test_a_session_cancelled_mid_question_ends_cancelled_and_removes_its_kernel() -> None:
    backend = FakeBackend()
    ended: list[dict[str, Any]] = []
    arlm = AsyncRLM(root_lm=AsyncScriptedClient(rlm_policy, latency_s=30), backend=backend)
    arlm.listeners.append(ended.append)

    async def main() -> None:
        session = arlm.session(context="ERROR disk\n")
        await session.open()
        task = asyncio.create_task(session.ask(COUNT))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await session.close()

    asyncio.run(main())
    end = next(e for e in ended if e["event"] == "run_end")
    assert end["status"] == "cancelled"
    assert backend.alive() == []


def test_a_run_closes_the_connections_of_the_clients_it_made() -> None:
    """A process that embeds us keeps no connection of a finished run: the HTTP clients a
    run made are closed when it ends (the model server's per-connection threads end too)."""
    from rlm_sandbox.testing import ScriptedModelServer

    def serving(server: ScriptedModelServer) -> int:
        return sum(1 for t in threading.enumerate() if "process_request" in t.name)

    with ScriptedModelServer(rlm_policy) as server:
        rlm = RLM(
            model=server.model_name,
            api_key=server.api_key,
            backend=FakeBackend(),
            config=RLMConfig(api_base=server.url, pool_size=0),
        )
        for _ in range(20):
            assert rlm.run("ERROR disk\n" * 2, task=COUNT).answer == "2"
        deadline = time.monotonic() + 5
        while serving(server) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert serving(server) <= 1
