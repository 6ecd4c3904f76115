"""CI jobs over real logs, as a user runs them: many inputs (directories, compressed files,
standard input), the cap on what an input may become, citations checked on the host,
``--format github``, and the model-response cache shared by processes. Real containers,
the scripted model on loopback (its server counts every request it receives)."""

from __future__ import annotations

import gzip
import lzma
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import zstandard

from rlm_sandbox.rlm.api import RLM
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.testing import ScriptedModelServer, generate_log

from ..conftest import ROOT
from ..helpers import JSON_KEYS, cli, json_out, with_cell_line

pytestmark = pytest.mark.docker
COUNT = 'How many lines contain "ERROR disk"?'
KEY_ENV = {"OPENAI_API_KEY": ScriptedModelServer.api_key}


@pytest.fixture
def tenant(sandbox_image: str):
    """A tenant label for the CLI's containers; none of them may be left after the test."""
    label = f"test-ci-{uuid.uuid4().hex[:8]}"
    yield label
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=rlm-sandbox.tenant={label}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    if left:
        subprocess.run(["docker", "rm", "-f", *left], capture_output=True)
    assert not left, f"containers left behind: {left}"


def base(server: ScriptedModelServer, tenant: str) -> list[str]:
    return ["run", "--model", server.model_name, "--api-base", server.url, "--tenant", tenant]


def logs_dir(root: Path) -> tuple[Path, int]:
    """plain, .gz (nested), .xz and .zst logs with known counts, and a hidden file."""
    (root / "nested").mkdir(parents=True)
    total = 0
    texts = {}
    for seed, name in enumerate(("a.log", "nested/b.log.gz", "c.log.xz", "d.log.zst"), start=21):
        stats = generate_log(None, 60_000, seed=seed)
        texts[name] = (stats.text or "").encode()
        total += stats.disk_errors
    (root / "a.log").write_bytes(texts["a.log"])
    (root / "nested" / "b.log.gz").write_bytes(gzip.compress(texts["nested/b.log.gz"]))
    (root / "c.log.xz").write_bytes(lzma.compress(texts["c.log.xz"]))
    (root / "d.log.zst").write_bytes(zstandard.ZstdCompressor().compress(texts["d.log.zst"]))
    (root / ".cache").write_text("ERROR disk in a hidden file: never counted\n")
    return root, total


def test_a_directory_of_compressed_logs_counted_with_checked_citations(
    scripted, tenant: str, tmp_path: Path
) -> None:
    root, truth = logs_dir(tmp_path / "logs")
    server = scripted(with_cell_line('cite("a.log", 1, "this is not in line 1")'))
    proc = cli(*base(server, tenant), "--task", COUNT, "-i", str(root), "--json", env=KEY_ENV)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = json_out(proc)
    assert list(out) == JSON_KEYS
    assert out["status"] == "ok" and out["answer"] == str(truth)
    verified = [c for c in out["citations"] if c["verified"]]
    refused = [c for c in out["citations"] if not c["verified"]]
    assert {c["file"] for c in verified} == {"a.log", "nested/b.log.gz", "c.log.xz", "d.log.zst"}
    assert all("ERROR disk" in c["text"] and c["reason"] is None for c in verified)
    assert refused == [
        {
            "file": "a.log",
            "line": 1,
            "quote": "this is not in line 1",
            "text": (root / "a.log").read_text().splitlines()[0],
            "verified": False,
            "reason": "the quote is not in line 1 of a.log",
        }
    ]
    assert any("hidden" in w and ".cache" in w for w in out["warnings"])
    # the lines are the input's: checked against the files on disk, decompressed again
    for c in verified:
        path = root / c["file"]
        raw = path.read_bytes()
        opener = {".gz": gzip.decompress, ".xz": lzma.decompress}.get(path.suffix)
        if path.suffix == ".zst":
            opener = zstandard.ZstdDecompressor().decompressobj().decompress
        text = (opener(raw) if opener else raw).decode()
        assert text.splitlines()[c["line"] - 1] == c["text"]
    # the Python API takes the same directory and gives the same answer and citations
    api = RLM(
        model=server.model_name,
        config=RLMConfig(api_base=server.url, tenant=tenant),
        api_key=server.api_key,
    ).run(context=root, task=COUNT)
    assert api.answer == out["answer"]
    assert [c.to_json() for c in api.citations] == out["citations"]


def test_plain_output_prints_citations_under_the_answer(scripted, tenant: str, tmp_path: Path) -> None:
    root, truth = logs_dir(tmp_path / "logs")
    server = scripted(with_cell_line('cite("c.log.xz", 999999, "ERROR disk")'))
    proc = cli(*base(server, tenant), "--task", COUNT, "-i", str(root), env=KEY_ENV)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    lines = proc.stdout.decode().splitlines()
    assert lines[0] == str(truth)
    assert lines[1].startswith("a.log:") and all(":" in line and "ERROR disk" in line for line in lines[1:])
    assert len(lines) == 5  # one verified citation per file
    err = proc.stderr.decode()
    assert "citation refused c.log.xz:999999: line 999999 is past the end of c.log.xz" in err


def test_a_gzip_bomb_is_stopped_by_the_cap_with_no_container_left(
    scripted, tenant: str, tmp_path: Path
) -> None:
    bomb = tmp_path / "bomb.log.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        for _ in range(256):  # 256 MiB of zeros: about 250 KB on disk
            f.write(b"\0" * (1 << 20))
    server = scripted()
    proc = cli(
        *base(server, tenant),
        "--task",
        COUNT,
        "-i",
        str(bomb),
        "--max-input-bytes",
        "16m",
        "--json",
        env=KEY_ENV,
        timeout=120,
    )
    out = json_out(proc)
    assert proc.returncode == 3 and out["status"] == "budget_exhausted", out
    assert str(bomb) in out["error"] and "16 MiB" in out["error"] and "--max-input-bytes" in out["error"]
    assert out["answer"] is None and out["citations"] == []
    assert server.requests.count == 0  # stopped while loading, before the first model call
    # (the tenant fixture checks that no container was left)


def test_glob_and_mixed_input_forms(scripted, tenant: str, tmp_path: Path) -> None:
    root, _ = logs_dir(tmp_path / "logs")
    single = generate_log(tmp_path / "single.log", 40_000, seed=31)
    piped = generate_log(None, 40_000, seed=32)
    a_log = (root / "a.log").read_text().count("ERROR disk")
    truth = single.disk_errors + a_log + piped.disk_errors
    server = scripted()
    proc = cli(
        *base(server, tenant),
        "--task",
        COUNT,
        "-i",
        str(single.path),
        "-i",
        str(root),
        "--glob",
        "*.log",  # of the directory only a.log; a file given directly is taken as given
        "-i",
        "-",
        "--json",
        stdin=gzip.compress((piped.text or "").encode()),  # compressed stdin, found by its magic
        env=KEY_ENV,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = json_out(proc)
    assert out["answer"] == str(truth)
    files = {c["file"] for c in out["citations"] if c["verified"]}
    assert files == {str(single.path), "a.log", "<stdin>"}


def test_github_format_annotations_and_step_summary(scripted, tenant: str, tmp_path: Path) -> None:
    root, truth = logs_dir(tmp_path / "logs")
    summary = tmp_path / "summary.md"
    summary.write_text("## an earlier step\n")
    server = scripted(with_cell_line('cite("a.log", 2, "not, in: that %line")'))
    env = KEY_ENV | {"GITHUB_STEP_SUMMARY": str(summary), "GITHUB_WORKSPACE": str(tmp_path)}
    proc = cli(*base(server, tenant), "--task", COUNT, "-i", str(root), "--format", "github", env=env)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    lines = proc.stdout.decode().splitlines()
    token = lines[0].removeprefix("::stop-commands::")
    assert len(token) == 32 and lines[1] == str(truth)
    resume = lines.index(f"::{token}::")
    notices = [line for line in lines[resume + 1 :] if line.startswith("::notice ")]
    warnings = [line for line in lines[resume + 1 :] if line.startswith("::warning ")]
    assert {n.split(",", 1)[0] for n in notices} == {
        f"::notice file=logs/{name}" for name in ("a.log", "nested/b.log.gz", "c.log.xz", "d.log.zst")
    }
    assert all(",line=" in n and "::" in n[2:] and "ERROR disk" in n for n in notices)
    refused = next(w for w in warnings if "citation refused" in w)
    assert refused.startswith("::warning file=logs/a.log,line=2,title=rlm-sandbox%3A citation refused::")
    assert "not, in: that %25line" in refused  # the message escaped as GitHub's toolkit does
    text = summary.read_text()
    assert text.startswith("## an earlier step\n### rlm-sandbox")
    assert f"```text\n{truth}\n```" in text and "| status | LM calls |" in text
    assert "**Citations** (4 verified, 1 refused)" in text


def test_a_repeated_run_with_the_cache_makes_no_model_request(scripted, tenant: str, tmp_path: Path) -> None:
    root, truth = logs_dir(tmp_path / "logs")
    server = scripted()
    cache = tmp_path / "lm-cache"
    args = [*base(server, tenant), "--task", COUNT, "-i", str(root), "--lm-cache", str(cache), "--json"]
    first = json_out(cli(*args, env=KEY_ENV))
    assert first["status"] == "ok" and first["answer"] == str(truth)
    made = server.requests.count
    assert made == first["lm_calls"] > 1 and first["lm_cache_hits"] == 0
    again = json_out(cli(*args, env=KEY_ENV))
    assert server.requests.count == made  # not one request reached the model server
    assert again["answer"] == first["answer"] and again["citations"] == first["citations"]
    assert (again["lm_calls"], again["cost_usd"], again["lm_cache_hits"]) == (0, 0.0, made)
    entries = list(cache.rglob("*.json"))
    assert len(entries) == made
    blob = b"".join(p.read_bytes() for p in entries)
    assert ScriptedModelServer.api_key.encode() not in blob and server.url.encode() not in blob


def test_two_processes_share_one_cache_at_once(scripted, tenant: str, tmp_path: Path) -> None:
    root, truth = logs_dir(tmp_path / "logs")
    server = scripted(latency_s=0.2)  # slow enough that the two runs overlap
    cache = tmp_path / "lm-cache"
    args = [*base(server, tenant), "--task", COUNT, "-i", str(root), "--lm-cache", str(cache), "--json"]
    import os

    env = {**os.environ, **KEY_ENV}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "rlm_sandbox.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        for _ in range(2)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-3000:]
        results.append(json_out(subprocess.CompletedProcess(p.args, p.returncode, out, err)))
    assert [r["answer"] for r in results] == [str(truth)] * 2
    assert results[0]["citations"] == results[1]["citations"]
    made = server.requests.count
    assert made <= sum(r["lm_calls"] for r in results)
    assert not list(cache.rglob(".tmp-*"))  # every write finished whole
    third = json_out(cli(*args, env=KEY_ENV))
    assert server.requests.count == made and third["lm_calls"] == 0
    assert third["answer"] == str(truth) and third["citations"] == results[0]["citations"]


def test_github_format_never_lets_the_model_or_the_logs_issue_commands(
    scripted, tenant: str, tmp_path: Path
) -> None:
    """A log line and an answer that try to issue workflow commands: they are printed while
    commands are off, and what follows the resume token is only the run's own annotations."""
    log = tmp_path / "evil.log"
    log.write_text("ok\n::error file=x.py,line=1::forged %0A ::add-mask::sk ERROR disk\nok\n")
    answer_cell = (
        'cite(None, 2, "ERROR disk")\nFINAL("1\\n::error::forged by the model\\n::stop-commands::x")'
    )
    from ..helpers import cells_then_final

    server = scripted(cells_then_final(answer_cell, final="FINAL(unused)"))
    env = KEY_ENV | {"GITHUB_STEP_SUMMARY": str(tmp_path / "s.md")}
    proc = cli(*base(server, tenant), "--task", "t", "-i", str(log), "--format", "github", env=env)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    lines = proc.stdout.decode().splitlines()
    token = lines[0].removeprefix("::stop-commands::")
    resume = lines.index(f"::{token}::")
    assert "::error::forged by the model" in lines[1:resume]  # shown, but with commands off
    after = lines[resume + 1 :]
    assert after and all(line.startswith(("::notice ", "::warning ", "::error ")) for line in after)
    (notice,) = after
    assert notice.startswith(f"::notice file={log},line=2,title=rlm-sandbox%3A cited::")
    assert notice.endswith("::error file=x.py,line=1::forged %250A ::add-mask::sk ERROR disk")
    summary = (tmp_path / "s.md").read_text()
    assert "````" not in summary.split("**Answer**")[0]  # the task block is plain
    assert "```text\n1\n::error::forged by the model\n::stop-commands::x\n```" in summary
