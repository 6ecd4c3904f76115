"""Attacks through the input and through citations: a gzip bomb, citations forged past the
kernel's bounds, citations of host files that are not the input. Each is a real run (the
``attack`` harness: scripted model on loopback, real containers, planted secrets searched
for afterwards, no container left)."""

from __future__ import annotations

import gzip
import resource
from pathlib import Path

from rlm_sandbox.kernel import protocol as P

from .conftest import ROWS


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_gzip_bomb_input(attack, tmp_path: Path) -> None:
    """1 GiB of zeros in about 1 MB of gzip, against a 64 MiB cap: the load stops at the cap
    (the container never holds more), the host holds one chunk at a time, no model call."""
    bomb = tmp_path / "bomb.log.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        zeros = b"\0" * (1 << 20)
        for _ in range(1024):
            f.write(zeros)
    assert bomb.stat().st_size < 2 << 20
    rss_before = _peak_rss_mb()
    out = attack("print('never runs')", context=bomb, rlm={"max_input_bytes": 64 << 20})
    grew = _peak_rss_mb() - rss_before
    ROWS[-1]["host_peak_rss_growth_mb"] = round(grew, 1)
    assert out.result.status == "budget_exhausted" and out.result.budget == "max_input_bytes"
    assert str(bomb) in (out.result.error or "") and "64 MiB" in (out.result.error or "")
    assert out.cells == [] and out.bodies == []  # no cell ran, no model was asked
    assert out.seconds < 30  # generous: the load stops after 64 MiB, a second or two here
    assert grew < 200  # the host never held the decompressed input (chunks of 4 MiB)


def test_citations_forged_past_the_kernels_bounds(attack) -> None:
    """The cell reaches past cite() to the kernel's own list and floods it: the host refuses
    the reply as a protocol violation and kills the sandbox."""
    code = (
        "repl = cite.__self__\n"
        f"repl.citations.extend([[None, 1, 'q'] for _ in range({P.MAX_CITATIONS * 4})])\n"
        "print('flooded')"
    )
    out = attack(code)
    assert out.result.status == "sandbox_error"
    assert "citations" in (out.result.error or "") and out.result.citations == []


def test_citations_of_host_files_are_never_read(attack, tmp_path: Path) -> None:
    """A citation names a host file that is not an input (and a line past the end): it is
    refused with a reason, and the host reads nothing but the input to check it."""
    log = tmp_path / "in.log"
    log.write_text("ERROR disk full\nok\n")
    code = (
        "cite('/etc/passwd', 1, 'root')\n"
        "cite('../../etc/hostname', 1, 'a')\n"
        "cite(None, 3, 'ok')\n"
        "cite(None, 1, 'ERROR disk')"
    )
    out = attack(code, context=log)
    assert out.result.status == "ok"
    by_file = {(c.file, c.line): c for c in out.result.citations}
    assert not by_file[("/etc/passwd", 1)].verified and by_file[("/etc/passwd", 1)].text is None
    assert "no input named '/etc/passwd'" in (by_file[("/etc/passwd", 1)].reason or "")
    assert not by_file[("../../etc/hostname", 1)].verified
    assert by_file[(str(log), 3)].reason == f"line 3 is past the end of {log} (2 lines)"
    assert by_file[(str(log), 1)].verified and by_file[(str(log), 1)].text == "ERROR disk full"
