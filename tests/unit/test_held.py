"""The host's byte accounting (``held.py``) and the back-pressure it gives the channel's reader.

No engine: the accounts are driven directly, and the channel is fed frames from a fake
stream, as a kernel would write them. Waits use generous timeouts; nothing asserts speed.
"""

from __future__ import annotations

import queue
import threading
import time

import pytest

from rlm_sandbox.errors import HostMemoryExceeded, SandboxClosed
from rlm_sandbox.kernel import protocol as P
from rlm_sandbox.sandbox.channel import KernelChannel
from rlm_sandbox.sandbox.frames import FrameDecoder, FrameLimits
from rlm_sandbox.sandbox.held import (
    PROMPT_OVERHEAD,
    PROMPT_WEIGHT,
    RunHeld,
    SandboxHeld,
    largest_request,
    request_cost,
    return_freed_memory,
)
from rlm_sandbox.sandbox.messages import ExecReply
from rlm_sandbox.sandbox.requests import RequestHandler, SubRequest

MB = 1 << 20


def eventually(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached within the (generous) timeout")
        time.sleep(0.01)


def reserve_in_thread(account: SandboxHeld, n: int, scope=None, **kw) -> tuple[threading.Thread, list]:
    out: list = []

    def go() -> None:
        try:
            out.append(account.reserve(n, scope, **kw))
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, out


# ---- the accounts


def test_reserve_and_release_balance_both_bounds() -> None:
    run = RunHeld(100 * MB)
    a = SandboxHeld(60 * MB)
    hold = a.reserve(40 * MB, run.scope(0))
    assert hold is not None and a.held == run.held == 40 * MB
    hold.release()
    hold.release()  # a second release changes nothing
    assert a.held == run.held == 0 and a.peak == run.peak == 40 * MB
    assert a.reserve(0, run.scope(0)) is None  # nothing to hold


def test_a_full_sandbox_waits_until_a_release() -> None:
    a = SandboxHeld(10 * MB)
    first = a.reserve(8 * MB)
    waits: list[bool] = []
    t, out = reserve_in_thread(a, 4 * MB, on_wait=waits.append)
    eventually(lambda: a.waiting)
    assert not out and waits == [True]
    first.release()
    t.join(10)
    assert out and out[0].size == 4 * MB and waits == [True, False] and a.waits == 1


def test_sandboxes_of_one_run_share_its_bound() -> None:
    run = RunHeld(20 * MB)
    a, b = SandboxHeld(20 * MB), SandboxHeld(20 * MB)
    held = a.reserve(15 * MB, run.scope(0))
    t, out = reserve_in_thread(b, 10 * MB, run.scope(0))
    eventually(lambda: b.waiting)  # b's own bound has room; the run's has not
    held.release()
    t.join(10)
    assert out[0].size == 10 * MB and run.held == 10 * MB and a.held == 0


def test_what_can_never_fit_is_refused_naming_the_setting() -> None:
    with pytest.raises(HostMemoryExceeded, match="max_held_bytes") as exc:
        SandboxHeld(10 * MB).reserve(11 * MB)
    assert exc.value.setting == "max_held_bytes" and exc.value.needed == 11 * MB
    run = RunHeld(30 * MB, levels=3, max_frame_payload=64 * MB)  # step 10 MiB
    with pytest.raises(HostMemoryExceeded, match="max_run_held_bytes") as exc:
        SandboxHeld(64 * MB).reserve(11 * MB, run.scope(1))
    assert exc.value.setting == "max_run_held_bytes" and exc.value.limit == 10 * MB


def test_the_ladder_keeps_room_for_deeper_levels() -> None:
    run = RunHeld(30 * MB, levels=3, max_frame_payload=64 * MB)
    assert run.step == 10 * MB
    assert [run.cap(d) for d in range(3)] == [10 * MB, 20 * MB, 30 * MB]
    assert [run.largest(d) for d in range(3)] == [10 * MB, 10 * MB, 10 * MB]
    root, mid, leaf = SandboxHeld(64 * MB), SandboxHeld(64 * MB), SandboxHeld(64 * MB)
    # The root's queued prompts fill what it may use; it can take no more...
    held = [root.reserve(5 * MB, run.scope(0)), root.reserve(5 * MB, run.scope(0))]
    t, out = reserve_in_thread(root, 1 * MB, run.scope(0))
    eventually(lambda: root.waiting)
    # ...yet a child and a grandchild still get a whole step each without waiting.
    deeper = [mid.reserve(10 * MB, run.scope(1)), leaf.reserve(10 * MB, run.scope(2))]
    assert None not in deeper and run.held == 30 * MB and not out
    # The root's next request waits for the whole run to come under its cap, deeper bytes
    # included: its own release is not enough while its children hold theirs.
    held[0].release()
    time.sleep(0.3)
    assert t.is_alive() and not out
    for hold in deeper:
        hold.release()  # type: ignore[union-attr]
    t.join(10)
    assert out[0].size == 1 * MB


def test_default_bounds_let_a_250_mb_prompt_through_at_every_depth() -> None:
    cost = request_cost(250 * MB, 1)
    assert cost == PROMPT_WEIGHT * 250 * MB + PROMPT_OVERHEAD
    for levels in (1, 2, 3, 8, 16):
        run = RunHeld(levels=levels)
        assert run.limit == max(1 << 30, levels * largest_request(256 * MB))
        assert all(run.largest(d) >= cost for d in range(levels)), levels
    assert RunHeld(levels=2).limit < 1100 * MB  # and the bound stays about 1 GiB at depth 2


def test_no_progress_past_the_deadline_is_an_error() -> None:
    a = SandboxHeld(10 * MB, stall_s=0.3)
    a.reserve(10 * MB)
    with pytest.raises(HostMemoryExceeded, match="held_stall_timeout") as exc:
        a.reserve(1 * MB)
    assert exc.value.setting == "held_stall_timeout"


def test_releases_elsewhere_in_the_run_count_as_progress() -> None:
    run = RunHeld(10 * MB)
    stuck, busy = SandboxHeld(10 * MB, stall_s=0.5), SandboxHeld(10 * MB)
    busy.reserve(9 * MB, run.scope(0))
    t, out = reserve_in_thread(stuck, 5 * MB, run.scope(0))
    for _ in range(8):  # 1.6 s of small releases: never 0.5 s without one
        busy.reserve(512 << 10, run.scope(0)).release()  # type: ignore[union-attr]
        time.sleep(0.2)
    assert t.is_alive() and not out
    stuck.close()
    t.join(10)
    assert isinstance(out[0], SandboxClosed)


def test_stop_and_close_end_a_wait() -> None:
    a = SandboxHeld(10 * MB)
    a.reserve(10 * MB)
    stop = threading.Event()
    t, out = reserve_in_thread(a, 1 * MB, stop=stop.is_set)
    eventually(lambda: a.waiting)
    stop.set()
    t.join(10)
    assert isinstance(out[0], SandboxClosed)


def test_close_releases_unclaimed_holds_and_leaves_claimed_ones_to_their_worker() -> None:
    run = RunHeld(100 * MB)
    a = SandboxHeld(100 * MB)
    queued = a.reserve(10 * MB, run.scope(0))
    working = a.reserve(20 * MB, run.scope(0)).claim()  # type: ignore[union-attr]
    a.close()
    assert queued.size == 0 and run.held == 20 * MB  # a model call still holds its prompt
    working.release()
    assert run.held == 0 and a.held == 0
    with pytest.raises(SandboxClosed):
        a.reserve(1, run.scope(0))


def test_split_hands_each_prompt_its_share() -> None:
    run = RunHeld(100 * MB)
    a = SandboxHeld(100 * MB)
    hold = a.reserve(request_cost(30, 3), run.scope(0))
    parts = hold.split([request_cost(10, 1)] * 2)  # one part short: its share is released
    assert hold.size == 0 and [p.size for p in parts] == [request_cost(10, 1)] * 2
    assert run.held == a.held == 2 * request_cost(10, 1)
    for part in parts:
        part.release()
    assert run.held == a.held == 0


def test_freed_buffers_go_back_to_the_system() -> None:
    """Counted bytes must be real bytes: a large buffer, once freed, leaves the process
    (glibc would otherwise keep it in an arena after raising its mmap threshold)."""

    def rss_kb() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    assert return_freed_memory()
    for _ in range(3):  # without it, the second 16 MB buffer stays resident once freed
        before = rss_kb()
        buf = bytearray(16 * MB)
        buf[:] = b"x" * (16 * MB)
        assert rss_kb() - before > 12 * 1024
        del buf
        assert rss_kb() - before < 4 * 1024


# ---- the decoder asks before it buffers


def test_the_decoder_admits_a_header_before_buffering_its_payload() -> None:
    seen: list[tuple[dict, int, bool]] = []
    dec: FrameDecoder

    def admit(header: dict) -> str:
        seen.append((header, dec.buffered, dec.mid_frame))
        return "ticket"

    dec = FrameDecoder(FrameLimits(max_payload=1 << 20), admit=admit)
    data = P.encode_frame({"t": "llm_request", "id": 3, "cell": 2, "sizes": [5000]}, b"z" * 5000)
    (frame,) = dec.feed(data)
    header, buffered, mid = seen[0]
    assert header["len"] == 5000 and buffered == 0 and not mid  # nothing of the payload yet
    assert frame.ticket == "ticket" and frame.payload == b"z" * 5000


def test_a_refused_header_buffers_nothing() -> None:
    def admit(header: dict) -> None:
        raise HostMemoryExceeded("no room", setting="max_held_bytes")

    dec = FrameDecoder(admit=admit)
    head = P.encode_header({"t": "llm_request", "id": 3, "cell": 2, "sizes": [1 << 20]}, 1 << 20)
    with pytest.raises(HostMemoryExceeded):
        dec.feed(head + b"z" * 1000)
    assert dec.buffered == 0


# ---- the channel: back-pressure end to end, without an engine


class FakeStream:
    """The kernel's side of a stream: the test writes frames, the channel reads them."""

    multiplexed = False

    def __init__(self) -> None:
        self.incoming: queue.Queue[bytes] = queue.Queue()
        self.sent: list[bytes] = []
        self.lock = threading.Lock()

    def recv(self, n: int = 1 << 18) -> bytes:
        return self.incoming.get()

    def send_all(self, data: bytes | memoryview, timeout_s: float) -> None:
        with self.lock:
            self.sent.append(bytes(data))

    def close(self) -> None:
        self.incoming.put(b"")

    def replies(self) -> int:
        with self.lock:
            return sum(1 for s in self.sent if b'"llm_reply"' in s)


def channel_with(handler, *, max_held: int, scope=None, concurrency: int = 2):
    stream = FakeStream()
    fatal: list[BaseException] = []
    if scope is not None:
        handler = RequestHandler(handler, held=scope)
    ch = KernelChannel(
        stream,  # type: ignore[arg-type]
        limits=FrameLimits(),
        io_timeout=5,
        llm_handler=handler,
        llm_concurrency=concurrency,
        max_pending_llm=1024,
        on_fatal=fatal.append,
        max_held=max_held,
        held_stall_s=30,
    )
    stream.incoming.put(
        P.encode_frame({"t": "ready", "id": 1, "version": 1, "pid": 7, "uid": 1, "python": "3"})
    )
    assert ch.wait_ready(10) is not None
    ch.expect(2, ExecReply)  # a cell is running: its requests are live
    ch.current_cell = 2
    return ch, stream, fatal


def request(ident: int, prompt: bytes) -> bytes:
    return P.encode_frame({"t": "llm_request", "id": ident, "cell": 2, "sizes": [len(prompt)]}, prompt)


def test_the_reader_stops_at_the_bound_and_resumes_as_answers_free_room() -> None:
    gate = threading.Event()

    def slow_model(prompt: str) -> str:
        gate.wait(20)
        return str(len(prompt))

    per = request_cost(1 * MB, 1)
    ch, stream, fatal = channel_with(slow_model, max_held=5 * per)
    for i in range(20):
        stream.incoming.put(request(2 * i + 3, b"p" * MB))
    eventually(lambda: ch.held.waiting)
    # Five requests are held (two with the model, three queued); the reader reads no further.
    assert ch.held.held == 5 * per and stream.incoming.qsize() >= 14
    assert ch.clock.outstanding >= 1  # waiting for room is host time, not the cell's
    gate.set()
    eventually(lambda: stream.replies() == 20)
    eventually(lambda: ch.held.held == 0)
    assert ch.held.peak <= 5 * per and not fatal and ch.error is None
    ch.close()


def test_a_request_over_the_bound_kills_the_channel_with_a_typed_error() -> None:
    ch, stream, fatal = channel_with(lambda p: "x", max_held=4 * MB)
    stream.incoming.put(request(3, b"p" * (3 * MB)))  # counted twice: 6 MiB > 4 MiB
    eventually(lambda: ch.error is not None)
    assert isinstance(ch.error, HostMemoryExceeded) and fatal == [ch.error]
    assert "max_held_bytes" in str(ch.error)
    ch.close()


def test_a_prompt_taken_by_a_child_is_released_when_the_child_has_it() -> None:
    """A handler that keeps the prompt longer (a child node) takes it from the request and
    releases its hold once the text is where it belongs; the worker's own release after the
    answer then changes nothing."""
    run = RunHeld(64 * MB)
    loaded, finish = threading.Event(), threading.Event()
    kept: list[str] = []

    def child_like(req: SubRequest) -> str:
        kept.append(req.take_text())
        assert req.text == ""  # the request no longer pins it
        req.held.release()  # what Sandbox.load_context(..., held=) does once loaded
        loaded.set()
        finish.wait(20)
        return "child answer"

    ch, stream, fatal = channel_with(child_like, max_held=64 * MB, scope=run.scope(0))
    stream.incoming.put(request(3, b"c" * MB))
    assert loaded.wait(20)
    assert run.held == 0 and ch.held.held == 0  # the child runs on; the host holds nothing of it
    assert len(kept[0]) == MB
    finish.set()
    eventually(lambda: stream.replies() == 1)
    assert run.held == 0 and not fatal
    ch.close()


# ---- the controller: the run's shared bound, and a prompt released once a child has it


@pytest.fixture
def runs_held(monkeypatch: pytest.MonkeyPatch) -> list[RunHeld]:
    """Every run-level account created during the test (the Run makes one)."""
    made: list[RunHeld] = []
    original = RunHeld.__init__

    def record(self: RunHeld, *args, **kw) -> None:
        original(self, *args, **kw)
        made.append(self)

    monkeypatch.setattr(RunHeld, "__init__", record)
    return made


def test_a_parents_prompt_is_released_once_its_child_has_loaded_it(seam, runs_held) -> None:
    """The root sends a 4 MB prompt; it becomes a child's context. Once the child's first cell
    has run (so its context is loaded), the run holds nothing of it, although the root's
    request is still waiting for the child's answer."""
    from ..helpers import cells_then_final, root_then_policy

    size = 4 * MB
    seen: dict[str, int] = {}
    child_cells = cells_then_final("n = len(context)", final="FINAL_VAR(n)")

    def child(request: dict) -> str:
        if sum(m.get("role") == "assistant" for m in request["messages"]) == 1:
            seen["held_after_load"] = runs_held[0].held  # the child's first cell has run
        return child_cells(request)

    root = cells_then_final(f"r = llm_query('c' * {size})", final="FINAL_VAR(r)")
    h = seam(root_then_policy(root, child), depth=2, pool_size=0)
    result = h.run("abc")
    assert (result.status, result.answer) == ("ok", str(size)), result
    run = runs_held[0]
    assert run.levels == 2 and run.peak >= request_cost(size, 1)  # the prompt was counted...
    assert seen["held_after_load"] == 0  # ...and released once the child had it
    assert run.held == 0


def test_every_sandbox_of_a_run_counts_against_the_runs_bound(seam, runs_held) -> None:
    """Two children at once, each asked for a 3 MB leaf call: both count in the one bound."""
    from ..helpers import cells_then_final, root_then_policy

    gate = threading.Event()
    peaks: list[int] = []

    def leaf_or_child(request: dict) -> str:
        if request["messages"][0]["role"] == "system":  # a child node
            return cells_then_final(f"a = llm_query('l' * {3 * MB})", final="FINAL(ok)")(request)
        peaks.append(runs_held[0].held)
        if len(peaks) == 2:
            gate.set()
        gate.wait(10)  # both leaf calls are in flight at once
        return "leaf"

    root = cells_then_final("r = llm_query_batched(['a', 'b'])", final="FINAL(done)")
    h = seam(root_then_policy(root, leaf_or_child), depth=2, pool_size=0)
    assert h.run("abc").status == "ok"
    assert max(peaks) >= 2 * request_cost(3 * MB, 1)
    assert runs_held[0].held == 0
