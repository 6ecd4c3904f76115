"""The host's frame reader and message validation under random, truncated and lying input."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlm_sandbox.errors import ProtocolViolation
from rlm_sandbox.kernel import protocol as P
from rlm_sandbox.sandbox.demux import Demuxer
from rlm_sandbox.sandbox.frames import FrameDecoder, FrameLimits, RawFrame
from rlm_sandbox.sandbox.messages import ExecReply, LlmRequest, Ready, validate

LIMITS = FrameLimits(max_header=4096, max_payload=1 << 16)


def frame(header: dict, payload: bytes = b"") -> bytes:
    return P.encode_frame(header, payload)


def exec_reply(ident: int = 2, out: bytes = b"hi\n") -> bytes:
    header = {
        "t": "exec_reply",
        "id": ident,
        "status": "ok",
        "ename": None,
        "evalue": None,
        "traceback": None,
        "duration_s": 0.1,
        "sizes": [len(out), 0, 0],
        "totals": [len(out), 0],
        "has_final": False,
    }
    return frame(header, out)


def test_round_trip_in_any_split() -> None:
    data = exec_reply() + frame(
        {"t": "ready", "id": 1, "version": 1, "pid": 7, "uid": 10001, "python": "3.11"}
    )
    for cut in range(len(data) + 1):
        dec = FrameDecoder(LIMITS)
        frames = dec.feed(data[:cut]) + dec.feed(data[cut:])
        assert [f.header["t"] for f in frames] == ["exec_reply", "ready"]
        assert frames[0].payload == b"hi\n"
        dec.finish()


def test_byte_by_byte() -> None:
    data = exec_reply(out=b"x" * 1000)
    dec = FrameDecoder(LIMITS)
    frames = [f for i in range(len(data)) for f in dec.feed(data[i : i + 1])]
    assert len(frames) == 1 and frames[0].payload == b"x" * 1000


def test_bad_magic_is_rejected_at_once() -> None:
    with pytest.raises(ProtocolViolation, match="magic"):
        FrameDecoder(LIMITS).feed(b"XX")


def test_gigantic_header_length_is_rejected_before_buffering() -> None:
    dec = FrameDecoder(LIMITS)
    with pytest.raises(ProtocolViolation, match="header length"):
        dec.feed(struct.pack(">2sI", b"RL", 2**31))


def test_gigantic_payload_claim_is_rejected_before_buffering() -> None:
    body = json.dumps({"t": "exec_reply", "id": 2, "len": 2**40}).encode()
    dec = FrameDecoder(LIMITS)
    with pytest.raises(ProtocolViolation, match="payload"):
        dec.feed(struct.pack(">2sI", b"RL", len(body)) + body)
    assert dec.buffered < 100


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1,2]",
        b'{"id":1,"len":0}',
        b'{"t":"x","id":-1,"len":0}',
        b'{"t":"x","id":1,"len":"3"}',
        b"\xff\xfe",
    ],
)
def test_malformed_headers(body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        FrameDecoder(LIMITS).feed(struct.pack(">2sI", b"RL", len(body)) + body)


def test_truncated_frame_at_end_of_stream_is_a_violation() -> None:
    dec = FrameDecoder(LIMITS)
    dec.feed(exec_reply(out=b"abcdef")[:-2])
    with pytest.raises(ProtocolViolation, match="expected 6 payload bytes, got 4"):
        dec.finish()


def test_validation_accepts_well_formed_messages() -> None:
    dec = FrameDecoder(LIMITS)
    (raw,) = dec.feed(exec_reply())
    assert isinstance(validate(raw), ExecReply)
    (raw,) = dec.feed(frame({"t": "llm_request", "id": 3, "cell": 2, "sizes": [2, 3]}, b"abcde"))
    assert isinstance(validate(raw), LlmRequest)
    (raw,) = dec.feed(frame({"t": "ready", "id": 1, "version": 1, "pid": 1, "uid": 1, "python": "3"}))
    assert isinstance(validate(raw), Ready)


@pytest.mark.parametrize(
    "header,payload",
    [
        ({"t": "shell_request", "id": 3}, b""),  # unknown type
        ({"t": "llm_request", "id": 4, "cell": 2, "sizes": [1]}, b"a"),  # even id: not the kernel's
        ({"t": "llm_request", "id": 3, "cell": 2, "sizes": [5]}, b"abc"),  # sizes lie
        ({"t": "llm_request", "id": 3, "cell": 2, "sizes": []}, b""),  # empty batch
        ({"t": "ready", "id": 1, "version": 1, "pid": 1, "uid": 1, "python": "3", "extra": 1}, b""),
        ({"t": "ready", "id": 1, "version": "1", "pid": 1, "uid": 1, "python": "3"}, b""),  # wrong type
        ({"t": "context_reply", "id": 2, "status": "ok"}, b"payload"),  # unexpected payload
    ],
)
def test_validation_rejects_lies(header: dict, payload: bytes) -> None:
    (raw,) = FrameDecoder(LIMITS).feed(frame(header, payload))
    with pytest.raises(ProtocolViolation):
        validate(raw)


def test_demux_reassembles_docker_pieces() -> None:
    payload = exec_reply(out=b"y" * 5000)
    pieces = b""
    for i in range(0, len(payload), 777):
        part = payload[i : i + 777]
        pieces += struct.pack(">BxxxI", 1, len(part)) + part
    pieces += struct.pack(">BxxxI", 2, 4) + b"oops"
    for step in (1, 3, 8, 100, len(pieces)):
        demux, dec, err = Demuxer(), FrameDecoder(LIMITS), b""
        frames: list[RawFrame] = []
        for i in range(0, len(pieces), step):
            for stream, data in demux.feed(pieces[i : i + step]):
                if stream == 1:
                    frames += dec.feed(data)
                else:
                    err += data
        assert len(frames) == 1 and frames[0].payload == b"y" * 5000 and err == b"oops"


def test_demux_rejects_unknown_stream() -> None:
    with pytest.raises(ProtocolViolation):
        Demuxer().feed(struct.pack(">BxxxI", 9, 1) + b"x")


# ---- fuzzing: nothing a kernel sends may crash the reader, only typed errors


def _feed_all(chunks: list[bytes]) -> None:
    dec = FrameDecoder(LIMITS)
    for chunk in chunks:
        for raw in dec.feed(chunk):
            validate(raw)
    dec.finish()


# The unit suite samples; scripts/fuzz.py is the long run (10,000 cases and more).


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_fuzz_random_bytes(chunks: list[bytes]) -> None:
    try:
        _feed_all(chunks)
    except ProtocolViolation:
        pass


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
types_ = st.sampled_from(["ready", "exec_reply", "context_reply", "llm_request", "bogus", ""])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    t=types_,
    ident=st.integers(-5, 2**64),
    fields=st.dictionaries(
        st.sampled_from(["sizes", "status", "cell", "version", "pid", "totals", "has_final", "ename", "x"]),
        json_values,
        max_size=6,
    ),
    payload=st.binary(max_size=300),
    lie=st.integers(-10, 10),
    cut=st.integers(0, 400),
)
def test_fuzz_lying_frames(t: str, ident: int, fields: dict, payload: bytes, lie: int, cut: int) -> None:
    header = {"t": t, "id": ident, **fields}
    body = json.dumps(header).encode()
    data = struct.pack(">2sI", b"RL", len(body)) + body + payload
    # Patch the payload length the header claims into a lie: too long, too short.
    claimed = max(0, len(payload) + lie)
    header["len"] = claimed
    body = json.dumps(header).encode()
    data = struct.pack(">2sI", b"RL", len(body)) + body + payload
    try:
        _feed_all([data[:cut], data[cut:]])
    except ProtocolViolation:
        pass
