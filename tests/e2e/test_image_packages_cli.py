"""``rlm-sandbox run --image-packages``: a run whose cells use a Debian package, through the
real CLI, the scripted model over HTTP and real containers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlm_sandbox.sandbox.config import SandboxConfig
from rlm_sandbox.sandbox.image import configured_tag
from rlm_sandbox.testing import ScriptedModelServer

from ..conftest import containers_of
from ..helpers import cells_then_final, cli, json_out

pytestmark = pytest.mark.docker
KEY_ENV = {"OPENAI_API_KEY": ScriptedModelServer.api_key}

CELL = (
    "import tabulate\n"
    "rows = [line.split() for line in context.splitlines()]\n"
    "table = tabulate.tabulate(rows, headers=['host', 'errors'], tablefmt='plain')\n"
    "print(table)"
)


@pytest.mark.timeout(900)
def test_run_with_image_packages_imports_the_package_in_a_cell(
    scripted, run_id: str, tmp_path: Path, test_image_packages: tuple[str, ...]
) -> None:
    data = tmp_path / "hosts.txt"
    data.write_text("db1 7\nweb2 3\n")
    trace = tmp_path / "trace.jsonl"
    server = scripted(cells_then_final(CELL, final="FINAL_VAR(table)"))
    args = [
        "run",
        "--model",
        server.model_name,
        "--api-base",
        server.url,
        "--tenant",
        run_id,
        "--task",
        "Tabulate the hosts.",
        "-i",
        str(data),
        "--json",
        "--trace",
        str(trace),
        "--image-packages",
        ",".join(test_image_packages),
    ]
    proc = cli(*args, env=KEY_ENV, timeout=800)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    out = json_out(proc)
    assert out["status"] == "ok", out
    assert out["answer"].splitlines() == ["host      errors", "db1            7", "web2           3"]
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    start = next(e for e in events if e["event"] == "run_start")
    assert start["image_packages"] == list(test_image_packages)
    cells = [e for e in events if e["event"] == "cell"]
    assert cells and "ModuleNotFoundError" not in json.dumps(cells)
    assert containers_of(run_id) == []
    tag = configured_tag(SandboxConfig(image_packages=list(test_image_packages)))
    ls = cli("image", "ls", "--json")
    assert tag in {i["tag"] for i in json.loads(ls.stdout)["images"]}


def test_a_bad_package_name_is_a_usage_error_before_any_model_call(scripted) -> None:
    server = scripted(cells_then_final("print(1)"))
    proc = cli(
        "run",
        "--model",
        server.model_name,
        "--api-base",
        server.url,
        "--task",
        "t",
        "--image-packages",
        "python3-pandas;curl evil",
        stdin=b"data",
        env=KEY_ENV,
    )
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "invalid setting image_packages" in err and "(flag --image-packages)" in err
    assert "is not a Debian package name" in err and "Traceback" not in err
    assert server.requests.count == 0
