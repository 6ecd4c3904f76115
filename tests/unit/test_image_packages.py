"""``image_packages`` without an engine: Debian name rules, the tags derived images get, the
setting from every source, and ``image ls``/``image rm`` deciding what to show and remove."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rlm_sandbox.cli import main as cli_module
from rlm_sandbox.errors import ConfigError
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.sandbox import image as image_mod
from rlm_sandbox.sandbox.built_images import BuiltImage, describe, plan_removal
from rlm_sandbox.sandbox.config import OFFLINE_BASE, SandboxConfig
from rlm_sandbox.sandbox.image import configured_tag, image_tag, packages_tag, sandbox_tag
from rlm_sandbox.sandbox.packages import MAX_PACKAGES, check_package_names
from rlm_sandbox.settings import FILE_NAME, load_settings

# ---- names


@pytest.mark.parametrize(
    "name",
    [
        "python3-pandas",
        "jq",
        "ripgrep",
        "g++",
        "libstdc++6",
        "0ad",
        "python3.11",
        "r-cran-data.table",
        "7zip",
    ],
)
def test_debian_package_names_are_accepted(name: str) -> None:
    assert check_package_names([name]) == (name,)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Pandas", "lower case"),
        ("a", "at least two"),
        ("-o", "start with a letter or a digit"),
        (".hidden", "start with a letter or a digit"),
        ("python3-pandas=1.5.3", "without a version"),
        ("jq:amd64", "without an architecture"),
        ("jq/bookworm-backports", "without a release"),
        ("jq;rm -rf /", "only a-z"),
        ("jq rg", "only a-z"),
        ("$(id)", "only a-z"),
        ("python3-*", "only a-z"),
        ("", "at least two"),
        ("pändas", "only a-z"),
        ("jq\n", "only a-z"),
    ],
)
def test_anything_else_is_a_config_error_naming_it(name: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_package_names([name])
    assert repr(name) in info.value.message and why in info.value.message
    assert "packages.debian.org" in info.value.hint


def test_the_list_is_capped_and_names_are_bounded() -> None:
    ok = [f"pkg{i}" for i in range(MAX_PACKAGES)]
    assert len(check_package_names(ok + ok)) == MAX_PACKAGES  # duplicates do not count
    with pytest.raises(ConfigError, match=f"at most {MAX_PACKAGES}"):
        check_package_names([*ok, "one-more"])
    with pytest.raises(ConfigError, match="longer than"):
        check_package_names(["a" * 101])
    with pytest.raises(ConfigError, match="not one string"):
        check_package_names("python3-pandas")
    with pytest.raises(ConfigError, match="not a string"):
        check_package_names([3])  # type: ignore[list-item]


def test_the_config_checks_sorts_and_refuses_combinations_it_cannot_build() -> None:
    cfg = SandboxConfig(image_packages=["ripgrep", "jq", "python3-pandas", "jq"])
    assert cfg.image_packages == ["jq", "python3-pandas", "ripgrep"]
    assert SandboxConfig(image_packages="jq, ripgrep").image_packages == ["jq", "ripgrep"]
    assert RLMConfig(sandbox=SandboxConfig(image_packages=["jq"])).sandbox.image_packages == ["jq"]
    with pytest.raises(ConfigError, match="not a Debian package name"):
        SandboxConfig(image_packages=["python3-pandas>=1"])
    with pytest.raises(ConfigError, match="not a Debian package name"):
        cfg.image_packages = ["Bad"]  # assignment is validated too
    with pytest.raises(ConfigError, match="image='mine:1' is set"):
        SandboxConfig(image="mine:1", image_packages=["jq"])
    with pytest.raises(ConfigError, match="needs the docker backend"):
        SandboxConfig(backend="local", image_packages=["jq"])


# ---- tags


def test_the_tag_does_not_depend_on_order_or_duplicates() -> None:
    a = sandbox_tag(OFFLINE_BASE, ["python3-pandas", "jq", "ripgrep"])
    b = sandbox_tag(OFFLINE_BASE, ["ripgrep", "jq", "python3-pandas", "jq"])
    assert a == b and a.startswith("rlm-sandbox:")
    assert packages_tag(["b1", "a1"], OFFLINE_BASE) == packages_tag(["a1", "b1"], OFFLINE_BASE)
    assert packages_tag(["a1"], OFFLINE_BASE).startswith("rlm-sandbox-packages:")
    assert configured_tag(SandboxConfig(image_packages=["ripgrep", "jq", "python3-pandas"])) == a


def test_the_tag_changes_with_the_packages_the_base_the_kernel_and_the_recipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pkgs = ["python3-tabulate"]
    tag = sandbox_tag(OFFLINE_BASE, pkgs)
    default = sandbox_tag(OFFLINE_BASE)
    assert default == image_tag(OFFLINE_BASE) == configured_tag(SandboxConfig())  # unchanged default
    assert tag != default
    assert sandbox_tag(OFFLINE_BASE, [*pkgs, "jq"]) != tag
    assert sandbox_tag("python:3.12-slim", pkgs) != tag
    layer = packages_tag(pkgs, OFFLINE_BASE)

    files = image_mod.kernel_files()
    monkeypatch.setattr(image_mod, "kernel_files", lambda: files | {"repl.py": files["repl.py"] + b"\n# x"})
    assert sandbox_tag(OFFLINE_BASE, pkgs) != tag  # a new kernel: a new sandbox image...
    assert packages_tag(pkgs, OFFLINE_BASE) == layer  # ...on the same package layer
    monkeypatch.undo()

    recipe = image_mod.packages_dockerfile()
    monkeypatch.setattr(image_mod, "packages_dockerfile", lambda: recipe + b"\n# another recipe")
    assert packages_tag(pkgs, OFFLINE_BASE) != layer
    assert sandbox_tag(OFFLINE_BASE, pkgs) != tag
    assert configured_tag(SandboxConfig(image="mine:1")) == "mine:1"


def test_the_package_recipe_keeps_the_hardening_promises() -> None:
    """The Dockerfile's text: what the integration test then checks in a real image."""
    recipe = image_mod.packages_dockerfile().decode()
    assert "--no-install-recommends" in recipe
    assert "chmod ug-s" in recipe and 'test -z "$(find / -xdev ! -type l -perm /6000)"' in recipe
    assert "USER" not in recipe and "ENTRYPOINT" not in recipe  # those come from sandbox.Dockerfile


# ---- the setting from every source


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in list(os.environ):
        if key.startswith("RLM_SANDBOX_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "proj"
    (root / ".git").mkdir(parents=True)
    monkeypatch.chdir(root)
    return root


def test_the_setting_from_flags_env_and_files(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().settings.image_packages == []
    loaded = load_settings({"image_packages": ["python3-numpy,jq", "ripgrep"]})
    assert loaded.settings.rlm_config().sandbox.image_packages == ["jq", "python3-numpy", "ripgrep"]
    monkeypatch.setenv("RLM_SANDBOX_IMAGE_PACKAGES", "jq python3-tabulate")
    assert load_settings().settings.image_packages == ["jq", "python3-tabulate"]
    monkeypatch.setenv("RLM_SANDBOX_IMAGE_PACKAGES", '["ripgrep", "jq"]')
    assert load_settings().settings.image_packages == ["jq", "ripgrep"]
    monkeypatch.delenv("RLM_SANDBOX_IMAGE_PACKAGES")
    (project / FILE_NAME).write_text('image_packages = ["python3-pandas"]\n')
    # A project file may not choose what is installed in the sandbox: ignored unless trusted.
    assert load_settings().settings.image_packages == []
    loaded = load_settings(trust_project=True)
    assert loaded.settings.image_packages == ["python3-pandas"]
    assert loaded.origin("image_packages").startswith("project file")


@pytest.mark.parametrize(
    ("source", "origin"),
    [
        ("flag", "flag --image-packages"),
        ("env", "env RLM_SANDBOX_IMAGE_PACKAGES"),
        ("project", "project file"),
    ],
)
def test_a_bad_name_names_its_source(
    project: Path, monkeypatch: pytest.MonkeyPatch, source: str, origin: str
) -> None:
    flags: dict[str, Any] = {}
    if source == "flag":
        flags = {"image_packages": ["jq", "python3-pandas==2"]}
    elif source == "env":
        monkeypatch.setenv("RLM_SANDBOX_IMAGE_PACKAGES", "jq,python3-pandas==2")
    else:
        (project / FILE_NAME).write_text('image_packages = ["jq", "python3-pandas==2"]\n')
    with pytest.raises(ConfigError) as info:
        load_settings(flags, flag_names={"image_packages": "--image-packages"})
    assert "image_packages" in info.value.message and origin in info.value.message
    assert "'python3-pandas==2' is not a Debian package name" in info.value.message


def test_run_refuses_a_bad_name_before_anything_starts(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_engine(*_a: Any, **_k: Any) -> None:
        raise AssertionError("the engine must not be asked")

    monkeypatch.setattr("rlm_sandbox.sandbox.docker_backend.docker_client", no_engine)
    r = CliRunner().invoke(
        cli_module.main, ["run", "--model", "openai/x", "--task", "t", "--image-packages", "Pandas"]
    )
    assert r.exit_code == 2, r.output
    assert "flag --image-packages" in r.output and "names are lower case" in r.output


# ---- image ls / image rm


def _row(tag: str, labels: dict[str, str] | None, *, id_: str | None = None, created: int = 100) -> dict:
    return {
        "Id": id_ or f"sha256:{abs(hash(tag)):x}",
        "RepoTags": [tag],
        "Labels": labels,
        "Size": 150_000_000,
        "Created": created,
    }


def _sandbox_labels(pkgs: tuple[str, ...] = (), base: str = OFFLINE_BASE) -> dict[str, str]:
    on = packages_tag(pkgs, base) if pkgs else base
    return {
        "rlm-sandbox.image": "1",
        "rlm-sandbox.from": on,
        "rlm-sandbox.base": base,
        "rlm-sandbox.packages": " ".join(pkgs),
    }


def _layer_labels(pkgs: tuple[str, ...]) -> dict[str, str]:
    return {
        "rlm-sandbox.image": "packages",
        "rlm-sandbox.from": OFFLINE_BASE,
        "rlm-sandbox.base": OFFLINE_BASE,
        "rlm-sandbox.packages": " ".join(pkgs),
    }


TAB = ("python3-tabulate",)
JQ = ("jq",)


def engine_rows() -> list[dict]:
    """A current default image, a stale one from an older kernel (unlabelled, as before the
    labels existed), two derived images and their layers, one layer of an older recipe, and an
    image that is not ours."""
    return [
        _row(sandbox_tag(OFFLINE_BASE), _sandbox_labels(), id_="sha256:default"),
        _row("rlm-sandbox:0000000000000000", {"rlm-sandbox.image": "1"}, id_="sha256:old"),
        _row(sandbox_tag(OFFLINE_BASE, TAB), _sandbox_labels(TAB), id_="sha256:tab"),
        _row(packages_tag(TAB, OFFLINE_BASE), _layer_labels(TAB), id_="sha256:tablayer"),
        _row(sandbox_tag(OFFLINE_BASE, JQ), _sandbox_labels(JQ), id_="sha256:jq"),
        _row(packages_tag(JQ, OFFLINE_BASE), _layer_labels(JQ), id_="sha256:jqlayer"),
        _row("rlm-sandbox-packages:1111111111111111", _layer_labels(("ripgrep",)), id_="sha256:rgold"),
        _row("python:3.12-slim", None, id_="sha256:foreign"),
        _row("someone/else:1", {"maintainer": "x"}, id_="sha256:foreign2"),
    ]


def images(containers: list[dict] | None = None, config: SandboxConfig | None = None) -> list[BuiltImage]:
    return describe(engine_rows(), containers or [], config or SandboxConfig())


def by_tag(found: list[BuiltImage]) -> dict[str, BuiltImage]:
    return {i.tag: i for i in found}


def test_ls_describes_only_our_images() -> None:
    found = by_tag(images([{"ImageID": "sha256:jq"}, {"ImageID": "sha256:jq"}]))
    assert "python:3.12-slim" not in found and "someone/else:1" not in found
    assert len(found) == 7
    default = found[sandbox_tag(OFFLINE_BASE)]
    assert default.default and not default.stale and default.kind == "sandbox" and default.packages == ()
    assert found["rlm-sandbox:0000000000000000"].stale  # an older kernel, read as the default recipe
    tab = found[sandbox_tag(OFFLINE_BASE, TAB)]
    assert tab.packages == TAB and not tab.default and not tab.stale
    assert tab.built_on == packages_tag(TAB, OFFLINE_BASE)
    assert found[packages_tag(TAB, OFFLINE_BASE)].kind == "packages"
    assert found["rlm-sandbox-packages:1111111111111111"].stale  # an older package recipe
    assert found[sandbox_tag(OFFLINE_BASE, JQ)].in_use == 2
    as_tab = by_tag(images(config=SandboxConfig(image_packages=list(TAB))))
    assert as_tab[sandbox_tag(OFFLINE_BASE, TAB)].default and not as_tab[sandbox_tag(OFFLINE_BASE)].default
    row = tab.to_json()
    assert row["packages"] == ["python3-tabulate"] and row["size_bytes"] == 150_000_000
    assert row["created"].startswith("1970-01-01T00:01:40")


def test_rm_needs_exactly_one_kind_of_request() -> None:
    found = images()
    for kwargs in ({}, {"everything": True, "stale": True}):
        with pytest.raises(ConfigError, match="exactly one"):
            plan_removal(found, **kwargs)
    with pytest.raises(ConfigError, match="exactly one"):
        plan_removal(found, ["rlm-sandbox:0000000000000000"], stale=True)
    with pytest.raises(
        ConfigError, match=re.escape("not an image rlm-sandbox built: python:3.12-slim, nope")
    ):
        plan_removal(found, ["rlm-sandbox:0000000000000000", "python:3.12-slim", "nope"])


def test_rm_a_derived_image_takes_its_layer_but_not_a_shared_or_used_one() -> None:
    tab, layer = sandbox_tag(OFFLINE_BASE, TAB), packages_tag(TAB, OFFLINE_BASE)
    plan = plan_removal(images(), [tab.partition(":")[2]])  # the hash alone is enough
    assert [i.tag for i in plan.remove] == [tab, layer] and plan.kept == []

    asked_layer = plan_removal(images(), [layer])  # its image stays: the layer must too
    assert asked_layer.remove == []
    assert [(i.tag, why) for i, why in asked_layer.kept] == [(layer, f"{tab} is built on it")]

    jq, jq_layer = sandbox_tag(OFFLINE_BASE, JQ), packages_tag(JQ, OFFLINE_BASE)
    used = plan_removal(images([{"ImageID": "sha256:jq"}]), [jq])
    assert used.remove == []
    kept = dict((i.tag, why) for i, why in used.kept)
    assert kept[jq] == "in use by 1 container(s)" and jq_layer not in kept  # not asked, not orphaned


def test_rm_stale_keeps_what_is_current_and_all_keeps_what_is_used() -> None:
    stale = plan_removal(images(), stale=True)
    assert sorted(i.tag for i in stale.remove) == [
        "rlm-sandbox-packages:1111111111111111",
        "rlm-sandbox:0000000000000000",
    ]
    everything = plan_removal(
        images([{"ImageID": "sha256:default"}, {"ImageID": "sha256:tab"}]), everything=True
    )
    removed = {i.tag for i in everything.remove}
    kept = {i.tag: why for i, why in everything.kept}
    assert sandbox_tag(OFFLINE_BASE) in kept and sandbox_tag(OFFLINE_BASE, TAB) in kept
    assert kept[packages_tag(TAB, OFFLINE_BASE)] == f"{sandbox_tag(OFFLINE_BASE, TAB)} is built on it"
    assert {sandbox_tag(OFFLINE_BASE, JQ), packages_tag(JQ, OFFLINE_BASE)} <= removed
    kinds = [i.kind for i in everything.remove]
    assert kinds == sorted(kinds, key=lambda k: k != "sandbox")  # images before the layers under them


class FakeAPI:
    """The two listings and the one removal ``image ls``/``rm`` ask an engine for."""

    def __init__(self, containers: list[dict] | None = None) -> None:
        self.removed: list[str] = []
        self._containers = containers or []

    def images(self, filters: dict[str, str] | None = None) -> list[dict]:
        assert filters == {"label": "rlm-sandbox.image"}
        return [r for r in engine_rows() if r["Labels"] and "rlm-sandbox.image" in r["Labels"]]

    def containers(self, all: bool = False) -> list[dict]:
        assert all
        return self._containers

    def remove_image(self, tag: str) -> None:
        self.removed.append(tag)


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch, project: Path) -> FakeAPI:
    api = FakeAPI([{"ImageID": "sha256:jq"}])

    class Client:
        pass

    client = Client()
    client.api = api  # type: ignore[attr-defined]
    monkeypatch.setattr("rlm_sandbox.sandbox.docker_backend.docker_client", lambda *_a, **_k: client)
    return api


def invoke(*args: str):
    return CliRunner().invoke(cli_module.main, ["image", *args])


def test_image_help_tells_the_truth() -> None:
    r = invoke("--help")
    assert r.exit_code == 0 and "Build, list and remove" in r.output
    assert {"build", "ls", "rm"} <= set(r.output.split())


def test_cli_ls(fake_engine: FakeAPI) -> None:
    r = invoke("ls", "--json", "--image-packages", "python3-tabulate")
    assert r.exit_code == 0, r.output
    rows = {i["tag"]: i for i in json.loads(r.stdout)["images"]}
    assert rows[sandbox_tag(OFFLINE_BASE, TAB)]["default"] is True
    assert rows[sandbox_tag(OFFLINE_BASE, JQ)]["in_use"] == 1
    text = invoke("ls")
    assert text.exit_code == 0
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["TAG", "KIND", "PACKAGES", "SIZE", "CREATED"]
    first = lines[1].split()
    assert first[0] == sandbox_tag(OFFLINE_BASE) and first[-1] == "default"
    assert any("python3-tabulate" in line and "packages" in line for line in lines)
    assert invoke("ls", "--image-packages", "No!").exit_code == 2


@pytest.mark.parametrize(
    "args", [(), ("--all", "--stale"), ("rlm-sandbox:0000000000000000", "--all"), ("x", "--stale")]
)
def test_cli_rm_refuses_a_bad_request_before_asking_the_engine(
    monkeypatch: pytest.MonkeyPatch, project: Path, args: tuple[str, ...]
) -> None:
    def no_engine(*_a: Any, **_k: Any) -> None:
        raise AssertionError("the engine must not be asked")

    monkeypatch.setattr("rlm_sandbox.sandbox.docker_backend.docker_client", no_engine)
    r = invoke("rm", *args)
    assert r.exit_code == 2, r.output
    assert "exactly one of them" in r.stderr and "Traceback" not in r.stderr


def test_cli_rm(fake_engine: FakeAPI) -> None:
    unknown = invoke("rm", "python:3.12-slim")
    assert unknown.exit_code == 2 and "not an image rlm-sandbox built" in unknown.stderr
    assert fake_engine.removed == []

    dry = invoke("rm", "--stale", "--dry-run")
    assert dry.exit_code == 0 and "would remove 2 image(s)" in dry.stdout and fake_engine.removed == []

    tab = sandbox_tag(OFFLINE_BASE, TAB)
    done = invoke("rm", tab)
    assert done.exit_code == 0, done.output
    assert fake_engine.removed == [tab, packages_tag(TAB, OFFLINE_BASE)]
    assert "removed 2 image(s)" in done.stdout

    jq = sandbox_tag(OFFLINE_BASE, JQ)
    used = invoke("rm", jq)  # a container uses it: kept, said, exit 1
    assert used.exit_code == 1 and f"kept {jq}: in use by 1 container(s)" in used.stderr
    assert jq not in fake_engine.removed

    sweep = invoke("rm", "--all")  # a sweep keeps what is in use and still succeeds
    assert sweep.exit_code == 0 and f"kept {jq}" in sweep.stderr


def test_a_build_without_the_live_view_says_what_it_does_every_10_s(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from rlm_sandbox.trace import view

    clock = [1000.0]
    monkeypatch.setattr(view.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    tv = view.TraceView(Console(file=out, width=200), quiet=True)
    for step in range(30):  # 30 apt lines over 29 s
        tv.on_event({"event": "image_progress", "message": f"building the package layer: line {step}"})
        clock[0] += 1.0
    assert out.getvalue().splitlines() == [
        "image building the package layer: line 0",
        "image building the package layer: line 10",
        "image building the package layer: line 20",
    ]


def test_a_failed_package_build_says_what_apt_said_not_the_whole_shell_line() -> None:
    log = [
        "Step 4/8 : RUN set -eu; " + "x" * 400 + "\n",
        "Reading package lists...Building dependency tree...E: Unable to locate package python3-nope\n",
        "E: Unable to locate package python3-nope\n",
    ]
    error = "The command '/bin/sh -c set -eu;\n apt-get install $PACKAGES' returned a non-zero code: 100"
    text = image_mod._build_failure(error, log)
    first = text.splitlines()[0]
    assert first == "E: Unable to locate package python3-nope (the RUN step returned a non-zero code: 100)"
    assert "apt-get install $PACKAGES" not in text and "x" * 200 not in text
