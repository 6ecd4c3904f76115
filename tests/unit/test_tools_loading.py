"""``--tools module:attr`` imports that module from the current directory and nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rlm_sandbox.rlm.tools import load_tools

MARK = "Path(__file__).with_suffix('.ran').write_text('ran')\n"


@pytest.fixture
def project(tmp_path: Path):
    (tmp_path / "colorsys.py").write_text("from pathlib import Path\n" + MARK)
    (tmp_path / "wave.py").write_text("from pathlib import Path\n" + MARK)
    (tmp_path / "cwdtools_a.py").write_text(
        "import colorsys\n\ndef hue(r: float) -> float:\n    return colorsys.rgb_to_hsv(r, 0, 0)[0]\n\n"
        "TOOLS = {'hue': hue}\n"
    )
    pkg = tmp_path / "cwdtools_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .impl import TOOLS\n")
    (pkg / "impl.py").write_text("def one() -> int:\n    return 1\n\nTOOLS = [one]\n")
    for name in ("colorsys", "wave"):
        sys.modules.pop(name, None)
    yield tmp_path
    for name in ("cwdtools_a", "cwdtools_pkg", "cwdtools_pkg.impl"):
        sys.modules.pop(name, None)


def test_only_the_named_module_comes_from_the_directory(project: Path) -> None:
    before = list(sys.path)
    tools = load_tools("cwdtools_a:TOOLS", directory=str(project))
    assert sys.path == before
    assert tools["hue"](1.0) == 0.0
    import colorsys
    import wave

    assert not (project / "colorsys.ran").exists() and not (project / "wave.ran").exists()
    assert Path(colorsys.__file__).parent != project and Path(wave.__file__).parent != project


def test_a_package_in_the_directory_keeps_its_submodules(project: Path) -> None:
    assert set(load_tools("cwdtools_pkg:TOOLS", directory=str(project))) == {"one"}
    assert set(load_tools("cwdtools_pkg.impl:TOOLS", directory=str(project))) == {"one"}


def test_an_installed_module_still_loads(project: Path) -> None:
    assert set(load_tools("json:dumps", directory=str(project))) == {"dumps"}
