"""The model-response cache: keys, entries read as untrusted, atomic writes, the bound, and a
whole run answered from it (through the in-memory seam)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from rlm_sandbox import RLM, RLMConfig
from rlm_sandbox.rlm import lm_cache as LC
from rlm_sandbox.rlm.digest import request_digest
from rlm_sandbox.rlm.lm_cache import LMCache, cache_key, write_atomically
from rlm_sandbox.sandbox.fake import FakeBackend
from rlm_sandbox.testing import ScriptedClient, generate_log

COUNT = 'How many lines contain "ERROR disk"?'


@pytest.fixture(autouse=True)
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent")


def entries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.json"))


def test_a_response_is_found_by_model_and_request(tmp_path: Path) -> None:
    cache = LMCache(tmp_path, 1 << 20)
    assert cache.get("m", "d1") is None
    assert cache.put("m", "d1", "the answer", 10, 3, "m-2024")
    hit = cache.get("m", "d1")
    assert hit is not None and (hit.text, hit.prompt_tokens, hit.completion_tokens, hit.served_model) == (
        "the answer",
        10,
        3,
        "m-2024",
    )
    assert cache.get("other-model", "d1") is None and cache.get("m", "d2") is None
    assert (tmp_path / "v1").stat().st_mode & 0o777 == 0o700
    (path,) = entries(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert set(json.loads(path.read_text())) == {
        "format",
        "model",
        "request_sha256",
        "served_model",
        "prompt_tokens",
        "completion_tokens",
        "text",
        "stored_at",
    }


def test_entries_are_untrusted_on_read(tmp_path: Path) -> None:
    cache = LMCache(tmp_path, 1 << 20)
    cache.put("m", "d", "real", 1, 1)
    (path,) = entries(tmp_path)
    good = json.loads(path.read_text())
    for bad in (
        b"not json",
        json.dumps({**good, "request_sha256": "another"}).encode(),  # planted under this key
        json.dumps({**good, "model": "x"}).encode(),
        json.dumps({**good, "text": 5}).encode(),
        json.dumps({**good, "prompt_tokens": -1}).encode(),
        json.dumps({**good, "format": 99}).encode(),
        b"[1, 2]",
    ):
        path.write_bytes(bad)
        assert cache.get("m", "d") is None
    path.write_bytes(b" " * (LC.MAX_ENTRY_BYTES + 1))
    assert cache.get("m", "d") is None


def test_writes_are_atomic_and_leave_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "x.json"
    write_atomically(target, b"first")

    def broken_fsync(fd: int) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        write_atomically(target, b"second")
    assert target.read_bytes() == b"first"  # the old entry whole, never half of the new one
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_the_oldest_entries_go_first_and_a_hit_refreshes(tmp_path: Path) -> None:
    cache = LMCache(tmp_path, 1 << 16)
    text = "x" * 9000  # about 9 KB an entry: 7 fit in 64 KB
    for i in range(6):
        cache.put("m", f"d{i}", text, 1, 1)
    paths = {i: cache._path(cache_key("m", f"d{i}")) for i in range(6)}
    now = time.time()
    for i, path in paths.items():
        os.utime(path, (now - 1000 + i, now - 1000 + i))  # d0 oldest ... d5 newest
    assert cache.get("m", "d0") is not None  # used now: the newest
    for i in range(6, 10):  # each new entry pushes one old one out
        cache.put("m", f"d{i}", text, 1, 1)
    assert cache.size() <= 1 << 16
    assert cache.get("m", "d0") is not None  # the oldest written, but refreshed by its hit: kept
    assert [i for i in range(1, 6) if cache.get("m", f"d{i}") is None] == [1, 2, 3, 4]
    assert all(cache.get("m", f"d{i}") is not None for i in range(5, 10))


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    cache = LMCache(tmp_path, 1 << 16)
    cache.put("m", "d", "x", 1, 1)
    shard = cache._path(cache_key("m", "d")).parent
    stale, fresh = shard / f"{LC.TMP_PREFIX}dead", shard / f"{LC.TMP_PREFIX}writing"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    old = time.time() - 2 * LC.STALE_TMP_S
    os.utime(stale, (old, old))
    cache.trim()
    assert not stale.exists() and fresh.exists()


def test_an_entry_larger_than_the_bound_is_not_kept(tmp_path: Path) -> None:
    cache = LMCache(tmp_path, 1 << 16)
    assert not cache.put("m", "d", "x" * (1 << 17), 1, 1)
    assert entries(tmp_path) == []


def test_many_threads_share_one_cache(tmp_path: Path) -> None:
    cache = LMCache(tmp_path, 1 << 20)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                key = f"d{i % 10}"
                cache.put("m", key, f"answer {key}", 1, 1)
                hit = cache.get("m", key)
                assert hit is not None and hit.text == f"answer {key}"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(entries(tmp_path)) == 10
    assert not [p for p in tmp_path.rglob(f"{LC.TMP_PREFIX}*")]


def test_a_repeated_run_makes_no_model_request(tmp_path: Path) -> None:
    stats = generate_log(None, 200_000, seed=7)
    config = RLMConfig(lm_cache=str(tmp_path / "cache"), depth=2, pool_size=0)
    first_client = ScriptedClient()
    first = RLM(root_lm=first_client, backend=FakeBackend(), config=config).run(
        context=stats.text, task=COUNT
    )
    assert first.status == "ok" and first.answer == str(stats.disk_errors)
    assert first.lm_calls == first_client.calls > 1 and first.lm_cache_hits == 0
    again_client = ScriptedClient()
    again = RLM(root_lm=again_client, backend=FakeBackend(), config=config).run(
        context=stats.text, task=COUNT
    )
    assert again_client.calls == 0  # not one request reached the model
    assert again.status == "ok" and again.answer == first.answer
    assert [c.to_json() for c in again.citations] == [c.to_json() for c in first.citations]
    assert again.citations
    assert (again.lm_calls, again.cost_usd, again.tokens) == (0, 0.0, {"prompt": 0, "completion": 0})
    assert again.lm_cache_hits == first.lm_calls
    assert again.to_json()["lm_cache_hits"] == first.lm_calls


def test_cache_hits_bypass_the_budget_and_are_traced(tmp_path: Path) -> None:
    stats = generate_log(None, 20_000, seed=8)
    cache = str(tmp_path / "cache")
    RLM(root_lm=ScriptedClient(), backend=FakeBackend(), config=RLMConfig(lm_cache=cache)).run(
        context=stats.text, task=COUNT
    )
    trace = tmp_path / "t.jsonl"
    again = RLM(
        root_lm=ScriptedClient(),
        backend=FakeBackend(),
        config=RLMConfig(lm_cache=cache, max_lm_calls=1, trace=str(trace)),
    ).run(context=stats.text, task=COUNT)
    assert again.status == "ok" and again.lm_calls == 0  # a limit of 1 call held no hit back
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    hits = [e for e in events if e["event"] == "lm_cache_hit"]
    assert len(hits) == again.lm_cache_hits > 1 and not [e for e in events if e["event"] == "lm_call"]
    assert all(e["request_sha256"] and e["response"] for e in hits)
    from rlm_sandbox.trace.tree import build

    assert build(events).cache_hits == len(hits)


def test_the_cache_never_holds_a_key(tmp_path: Path) -> None:
    """An entry is the response and its usage: nothing of the client's configuration."""
    client = ScriptedClient()
    client.api_key = "sk-planted-secret-key"  # type: ignore[attr-defined]
    cache = tmp_path / "cache"
    RLM(root_lm=client, backend=FakeBackend(), config=RLMConfig(lm_cache=str(cache))).run(
        context="ERROR disk\n", task=COUNT, run_id="r"
    )
    blobs = b"".join(p.read_bytes() for p in cache.rglob("*") if p.is_file())
    assert blobs and b"sk-planted" not in blobs and b"Authorization" not in blobs


def test_request_digests_ignore_the_budget_line() -> None:
    a = [{"role": "system", "content": "x\nBudgets: 3 steps; 10 s left\ny"}, {"role": "user", "content": "q"}]
    b = [{"role": "system", "content": "x\nBudgets: 3 steps; 9 s left\ny"}, {"role": "user", "content": "q"}]
    assert request_digest(a) == request_digest(b)
