"""Settings: flag > env > project file > user file > default, tenant tables, errors naming their source."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from rlm_sandbox.cli.execute import build_config
from rlm_sandbox.errors import ConfigError
from rlm_sandbox.settings import (
    FILE_NAME,
    Settings,
    load_settings,
    project_config_file,
    user_config_file,
)


@dataclass
class Files:
    project: Path
    user: Path

    def write(self, which: str, text: str) -> Path:
        path: Path = getattr(self, which)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Files:
    """A project directory as cwd and a private user config dir; no RLM_SANDBOX_* leaks in."""
    for key in list(os.environ):
        if key.startswith("RLM_SANDBOX_"):
            monkeypatch.delenv(key)
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    project = tmp_path / "proj"
    (project / ".git").mkdir(parents=True)
    monkeypatch.chdir(project)
    return Files(project / FILE_NAME, xdg / "rlm-sandbox" / FILE_NAME)


def test_defaults_come_from_the_run_config(files: Files) -> None:
    loaded = load_settings()
    s = loaded.settings
    assert (s.depth, s.max_steps, s.max_lm_calls, s.memory, s.tenant) == (1, 12, 500, "1g", "default")
    assert s.model is None and s.tenants == {}
    assert {origin for _name, _value, origin in loaded.rows()} == {"default"}
    assert loaded.files == []


@pytest.mark.parametrize(
    ("sources", "depth", "origin"),
    [
        ({"flag", "env", "project", "user"}, 5, "flag --depth"),
        ({"env", "project", "user"}, 4, "env RLM_SANDBOX_DEPTH"),
        ({"project", "user"}, 3, "project file"),
        ({"user"}, 2, "user file"),
        (set(), 1, "default"),
    ],
)
def test_precedence(
    files: Files, monkeypatch: pytest.MonkeyPatch, sources: set[str], depth: int, origin: str
) -> None:
    if "user" in sources:
        files.write("user", "depth = 2\n")
    if "project" in sources:
        files.write("project", "depth = 3\n")
    if "env" in sources:
        monkeypatch.setenv("RLM_SANDBOX_DEPTH", "4")
    flags = {"depth": 5} if "flag" in sources else {}
    # A trusted project file ranks as written; an untrusted one may only lower the depth
    # (tests/unit/test_project_trust.py).
    loaded = load_settings(flags, flag_names={"depth": "--depth"}, trust_project=True)
    assert loaded.settings.depth == depth
    assert loaded.origin("depth").startswith(origin)
    if origin.endswith("file"):
        assert str(getattr(files, origin.split()[0])) in loaded.origin("depth")


def test_each_source_sets_different_settings_at_once(files: Files, monkeypatch: pytest.MonkeyPatch) -> None:
    files.write("user", 'model = "openai/gpt-4o-mini"\nmax_cost = 2.5\nmemory = "2g"\n')
    files.write("project", 'sub_model = "openai/gpt-4o"\nmemory = "512m"\n')
    monkeypatch.setenv("RLM_SANDBOX_MAX_COST", "0.75")
    monkeypatch.setenv("RLM_SANDBOX_RUNTIME", "runsc")
    loaded = load_settings({"max_steps": 3})
    s = loaded.settings
    assert (s.model, s.sub_model, s.max_cost, s.memory, s.runtime, s.max_steps) == (
        "openai/gpt-4o-mini",
        "openai/gpt-4o",
        0.75,
        "512m",
        "runsc",
        3,
    )
    assert loaded.origin("model") == f"user file {files.user}"
    assert loaded.origin("memory") == f"project file {files.project}"
    assert loaded.origin("max_cost") == "env RLM_SANDBOX_MAX_COST"
    assert loaded.origin("max_steps") == "flag --max-steps"
    config = s.rlm_config()
    assert (config.max_cost, config.sandbox.memory, config.sandbox.runtime) == (0.75, "512m", "runsc")


def test_empty_env_var_is_ignored(files: Files, monkeypatch: pytest.MonkeyPatch) -> None:
    files.write("project", "max_cost = 1.0\n")
    monkeypatch.setenv("RLM_SANDBOX_MAX_COST", "")
    monkeypatch.setenv("RLM_SANDBOX_NO_LIVE", "1")  # an engine variable, not a setting: not an error
    assert load_settings().settings.max_cost == 1.0


def test_tenant_tables_merge_across_files_and_reach_the_run(files: Files) -> None:
    files.write("user", "[tenants.team-a]\nmax_cost = 5.0\n[tenants.team-b]\nmax_containers = 4\n")
    files.write("project", 'tenant = "team-a"\n[tenants.team-a]\nmax_containers = 2\n')
    loaded = load_settings(trust_project=True)  # an untrusted project may not pick the tenant
    t = loaded.settings.tenants
    assert (t["team-a"].max_containers, t["team-a"].max_cost, t["team-b"].max_containers) == (2, 5.0, 4)
    assert loaded.origin("tenants", "team-a", "max_containers") == f"project file {files.project}"
    assert loaded.origin("tenants", "team-a", "max_cost") == f"user file {files.user}"
    rows = {name: (value, origin) for name, value, origin in loaded.rows()}
    assert rows["tenants.team-b.max_containers"] == (4, f"user file {files.user}")
    assert rows["tenants.team-b.max_cost"] == (None, "default")
    # What `--tenant team-a` builds: the run's config carries the tenant's limits.
    o = {"settings": loaded, **loaded.settings.model_dump(exclude={"tenants", "trace"}), "trace_path": None}
    config = build_config(o)
    assert config.tenant == "team-a" and config.tenants["team-a"].max_containers == 2
    assert config.effective_pool_size() == 0  # pooled containers would escape the tenant's cap


def test_tenant_from_flag_overrides_the_file(files: Files) -> None:
    files.write("project", 'tenant = "team-a"\n[tenants.team-b]\nmax_cost = 1.0\n')
    loaded = load_settings({"tenant": "team-b"})
    config = loaded.settings.rlm_config()
    assert config.tenant == "team-b" and config.tenants[config.tenant].max_cost == 1.0
    assert config.sandbox.tenant == "team-b"


def _error(**kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in info.value.message, message
    return info.value


def test_invalid_env_value_names_the_variable(files: Files, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLM_SANDBOX_DEPTH", "0")
    err = _error()
    assert "depth" in err.message and "env RLM_SANDBOX_DEPTH" in err.message
    assert "greater than or equal to 1" in err.message
    monkeypatch.setenv("RLM_SANDBOX_DEPTH", "three")
    assert "valid integer" in _error().message


def test_invalid_file_value_names_the_file(files: Files) -> None:
    path = files.write("project", 'memory = "lots"\n')
    err = _error()
    assert err.message.startswith("invalid setting memory = 'lots'") and str(path) in err.message
    assert "is not a size like 512m" in err.message


def test_invalid_flag_value_names_the_flag(files: Files) -> None:
    err = _error(flags={"max_containers": 0}, flag_names={"max_containers": "--max-containers"})
    assert "flag --max-containers" in err.message


def test_invalid_tenant_limit_names_the_full_key(files: Files) -> None:
    path = files.write("user", "[tenants.team-a]\nmax_cost = -1\n")
    err = _error()
    assert "tenants.team-a.max_cost" in err.message and f"user file {path}" in err.message


def test_bad_tenant_name_is_refused_before_any_container(
    files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RLM_SANDBOX_TENANT", "a tenant with spaces")
    assert "env RLM_SANDBOX_TENANT" in _error().message


def test_unknown_key_suggests_the_right_name(files: Files) -> None:
    files.write("project", "dpeth = 3\n")
    err = _error()
    assert err.message == f"unknown setting 'dpeth' in project file {files.project}"
    assert err.hint == "did you mean 'depth'?"
    files.write("project", "max-cost = 3\n")
    assert _error().hint == "did you mean 'max_cost'?"


def test_broken_toml_names_the_file(files: Files) -> None:
    files.write("user", "depth = \n")
    err = _error()
    assert f"user file {files.user} is not valid TOML" in err.message


def test_project_file_is_found_from_a_subdirectory_but_not_above_the_project(
    files: Files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / FILE_NAME).write_text("depth = 9\n")  # above the project root: never read
    sub = files.project.parent / "src" / "deep"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert project_config_file() is None
    files.write("project", "max_steps = 3\n")
    assert project_config_file() == files.project
    assert load_settings().settings.max_steps == 3


def test_outside_a_project_only_the_current_directory_counts(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text("depth = 9\n")
    lone = tmp_path / "lone"
    lone.mkdir()
    assert project_config_file(lone) is None
    assert project_config_file(tmp_path) == tmp_path / FILE_NAME


def test_user_file_follows_xdg(tmp_path: Path) -> None:
    assert user_config_file({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "rlm-sandbox" / FILE_NAME
    assert user_config_file({}) == Path.home() / ".config" / "rlm-sandbox" / FILE_NAME


def test_a_password_in_a_url_is_never_shown(files: Files) -> None:
    files.write("project", 'api_base = "https://user:hunter2@llm.example.com:8443/v1"\n')
    loaded = load_settings(trust_project=True)
    assert loaded.settings.api_base == "https://user:hunter2@llm.example.com:8443/v1"  # used as given
    shown = {name: value for name, value, _origin in loaded.rows()}["api_base"]
    assert shown == "https://user:***@llm.example.com:8443/v1"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://evil]/v1", "http://evil]/v1"),
        ("http://e[vil/v1", "http://e[vil/v1"),
        ("https://user:hunter2@host]:8443/v1", "https://user:***@host]:8443/v1"),
        ("https://user:hunter2@host:port/v1", "https://user:***@host:port/v1"),
    ],
)
def test_a_url_urlsplit_refuses_is_shown_masked_not_a_crash(
    files: Files, monkeypatch: pytest.MonkeyPatch, url: str, shown: str
) -> None:
    """A stray bracket or a port that is not a number made showing the settings (config
    show, doctor) fail with an unexpected ValueError, from a project file or a variable."""
    monkeypatch.setenv("RLM_SANDBOX_API_BASE", url)
    assert {name: value for name, value, _origin in load_settings().rows()}["api_base"] == shown
    monkeypatch.delenv("RLM_SANDBOX_API_BASE")
    files.write("project", f'api_base = "{url}"\n')
    loaded = load_settings(trust_project=True)
    assert {name: value for name, value, _origin in loaded.rows()}["api_base"] == shown


def test_settings_bounds_are_the_run_configs(files: Files) -> None:
    from rlm_sandbox.rlm.config import RLMConfig

    for name in ("depth", "max_steps", "max_containers", "max_cost"):
        assert Settings.model_fields[name].metadata == RLMConfig.model_fields[name].metadata


def test_tenants_from_env_are_json(files: Files, monkeypatch: pytest.MonkeyPatch) -> None:
    files.write("project", "[tenants.team-a]\nmax_cost = 9.0\n")
    monkeypatch.setenv("RLM_SANDBOX_TENANTS", '{"team-a": {"max_containers": 3}}')
    loaded = load_settings()
    assert loaded.settings.tenants["team-a"].max_containers == 3
    assert loaded.origin("tenants", "team-a", "max_containers") == "env RLM_SANDBOX_TENANTS"
    monkeypatch.setenv("RLM_SANDBOX_TENANTS", "team-a=3")
    err = _error()
    assert err.message == "invalid setting tenants (env RLM_SANDBOX_TENANTS): not valid JSON"
    assert "RLM_SANDBOX_TENANTS='{" in err.hint
