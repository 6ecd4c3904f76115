"""Fuzz the host's frame reader, the Docker demultiplexer and message validation.

Runs hypothesis over random, truncated, oversized, deeply nested and lying frames and
reports the outcomes. Anything but ``ProtocolViolation`` (or a clean parse) is a failure,
and so is a case slower than the per-case bound (a hang). Exit status 1 on any failure.

Usage: uv run python scripts/fuzz.py [--cases 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections
import json
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from rlm_sandbox.errors import ProtocolViolation
from rlm_sandbox.sandbox.demux import Demuxer
from rlm_sandbox.sandbox.frames import FrameDecoder, FrameLimits
from rlm_sandbox.sandbox.messages import validate

LIMITS = FrameLimits(max_header=8192, max_payload=1 << 16)
CASE_BOUND_S = 2.0
outcomes: collections.Counter[str] = collections.Counter()
failures: list[str] = []
slowest = 0.0

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=40,
)
types_ = st.sampled_from(
    ["ready", "exec_reply", "context_reply", "llm_request", "llm_reply", "bogus", "", "READY"]
)
fields = st.dictionaries(
    st.sampled_from(
        [
            "sizes",
            "status",
            "cell",
            "version",
            "pid",
            "uid",
            "python",
            "totals",
            "has_final",
            "ename",
            "evalue",
            "traceback",
            "duration_s",
            "type",
            "length",
            "error",
            "x",
        ]
    ),
    json_values,
    max_size=8,
)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def frame_bytes(header: dict, payload: bytes, lie: int) -> bytes:
    header = dict(header)
    header["len"] = max(0, len(payload) + lie)
    body = json.dumps(header, allow_nan=True).encode()
    return struct.pack(">2sI", b"RL", len(body)) + body + payload


def docker_wrap(data: bytes, piece: int, stream: int) -> bytes:
    out = b""
    for i in range(0, len(data), max(1, piece)):
        part = data[i : i + piece]
        out += struct.pack(">BxxxI", stream, len(part)) + part
    return out


def feed(data: bytes, cut: int, through_docker: bool, piece: int, stream: int) -> None:
    global slowest
    t0 = time.perf_counter()
    try:
        dec = FrameDecoder(LIMITS)
        pieces = [data[:cut], data[cut:]]
        if through_docker:
            demux = Demuxer()
            wrapped = docker_wrap(data, piece, stream)
            pieces = []
            for chunk in (wrapped[:cut], wrapped[cut:]):
                pieces += [p for s, p in demux.feed(chunk) if s == 1]
        for chunk in pieces:
            for raw in dec.feed(chunk):
                validate(raw)
        dec.finish()
        outcomes["accepted"] += 1
    except ProtocolViolation as exc:
        key = str(exc).split(":")[0][:60]
        outcomes[f"ProtocolViolation: {key}"] += 1
    except Exception as exc:  # a crash of the reader: the thing this script hunts
        failures.append(f"{type(exc).__name__}: {exc!r}"[:300])
        outcomes[f"CRASH {type(exc).__name__}"] += 1
    took = time.perf_counter() - t0
    slowest = max(slowest, took)
    if took > CASE_BOUND_S:
        failures.append(f"case took {took:.2f} s (bound {CASE_BOUND_S} s)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    per = max(1, -(-args.cases // 3))
    cfg = settings(max_examples=per, deadline=None, database=None, suppress_health_check=list(HealthCheck))

    @seed(args.seed)
    @cfg
    @given(
        t=types_,
        ident=st.integers(-5, 2**70),
        f=fields,
        payload=st.binary(max_size=400),
        lie=st.integers(-20, 20),
        cut=st.integers(0, 800),
        docker=st.booleans(),
        piece=st.integers(1, 64),
        stream=st.sampled_from([1, 1, 1, 2, 0, 7]),
    )
    def lying_frames(t, ident, f, payload, lie, cut, docker, piece, stream) -> None:  # type: ignore[no-untyped-def]
        feed(frame_bytes({"t": t, "id": ident, **f}, payload, lie), cut, docker, piece, stream)

    @seed(args.seed + 1)
    @cfg
    @given(
        data=st.binary(max_size=600), cut=st.integers(0, 600), docker=st.booleans(), piece=st.integers(1, 64)
    )
    def random_bytes(data, cut, docker, piece) -> None:  # type: ignore[no-untyped-def]
        feed(data, cut, docker, piece, 1)

    @seed(args.seed + 2)
    @cfg
    @given(
        depth=st.integers(1, 5000),
        big=st.integers(0, 2**64),
        header_len=st.integers(0, 2**32 - 1),
        kind=st.sampled_from(["nested", "huge-int", "huge-header", "non-utf8", "oversize-payload"]),
    )
    def extremes(depth, big, header_len, kind) -> None:  # type: ignore[no-untyped-def]
        if kind == "nested":
            body = ('{"t":"ready","id":1,"len":0,"x":' + nested(depth) + "}").encode()
            data = struct.pack(">2sI", b"RL", len(body)) + body
        elif kind == "huge-int":
            body = json.dumps({"t": "llm_request", "id": big, "len": 0, "cell": big, "sizes": [big]}).encode()
            data = struct.pack(">2sI", b"RL", len(body)) + body
        elif kind == "huge-header":
            data = struct.pack(">2sI", b"RL", header_len) + b"{" * 100
        elif kind == "non-utf8":
            body = b'{"t":"ready","id":1,"len":0,"python":"\xff\xfe"}'
            data = struct.pack(">2sI", b"RL", len(body)) + body
        else:
            body = json.dumps(
                {"t": "exec_reply", "id": 2, "len": LIMITS.max_payload + 1 + big % 1000}
            ).encode()
            data = struct.pack(">2sI", b"RL", len(body)) + body + b"x" * 100
        feed(data, len(data) // 2, False, 8, 1)

    t0 = time.perf_counter()
    for fn in (lying_frames, random_bytes, extremes):
        fn()
    total = sum(outcomes.values())
    print(f"fuzzed {total} cases in {time.perf_counter() - t0:.1f} s; slowest case {slowest * 1000:.1f} ms")
    for key, n in outcomes.most_common(25):
        print(f"{n:>7}  {key}")
    if failures:
        print(f"{len(failures)} FAILURES (first 10):")
        for f in failures[:10]:
            print("  ", f)
        return 1
    print("no crash, no hang: only ProtocolViolation or clean frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
