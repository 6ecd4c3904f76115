"""A project's rlm-sandbox.toml may only tighten the user's own settings unless the user trusts it.

Issue 13, finding 3: a cloned repository's file chose the trace path (and overwrote
~/.bashrc), the Docker engine, the model server, the runtime, and raised every cap. These
tests pin the rule key by key; tests/adversarial/test_untrusted_project.py drives it through
the real CLI and real runs.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import pytest

from rlm_sandbox.errors import ConfigError
from rlm_sandbox.project_trust import (
    PROJECT_RULES,
    RESERVED_RULES,
    TENANT_RULES,
    Kind,
    forget_trust,
    read_project_file,
    record_trust,
    size_bytes,
    trust_store,
)
from rlm_sandbox.rlm.tenants import TenantLimits
from rlm_sandbox.settings import FILE_NAME, Settings, load_settings
from rlm_sandbox.trace.writer import Tracer


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(project file, user file): a project as cwd, a private user config dir, no RLM_SANDBOX_*."""
    for key in list(os.environ):
        if key.startswith("RLM_SANDBOX_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    project = tmp_path / "proj"
    (project / ".git").mkdir(parents=True)
    monkeypatch.chdir(project)
    user = tmp_path / "xdg" / "rlm-sandbox" / FILE_NAME
    user.parent.mkdir(parents=True)
    return project / FILE_NAME, user


def ignored(loaded) -> dict[str, str]:
    return {item.setting: item.reason for item in loaded.ignored}


# ---- every setting has a class


def test_every_setting_has_a_class() -> None:
    """A new setting must be classified before a project file can set it: this fails first."""
    missing = set(Settings.model_fields) - set(PROJECT_RULES)
    assert not missing, f"add these settings to PROJECT_RULES in rlm_sandbox/project_trust.py: {missing}"
    assert not set(PROJECT_RULES) - set(Settings.model_fields), "a rule for a setting that does not exist"
    assert set(TenantLimits.model_fields) == set(TENANT_RULES)
    assert not set(RESERVED_RULES) & set(PROJECT_RULES), "a reserved key became a setting: move its rule"
    for name in ("api_base", "docker_url", "engines", "trace", "tenant"):
        assert PROJECT_RULES[name].kind is Kind.USER, name
    assert RESERVED_RULES["tools"].kind is Kind.USER and PROJECT_RULES["lm_cache"].kind is Kind.USER
    for name, rule in PROJECT_RULES.items():
        if rule.kind is Kind.LIMIT and name != "tenants":
            default = Settings.model_fields[name].default
            assert default is None or rule.measure(default) < math.inf, name


def test_sizes_compare_as_docker_reads_them() -> None:
    assert size_bytes("512m") < size_bytes("1g") < size_bytes("1025m") < size_bytes("2G")
    assert size_bytes("1048576") == size_bytes("1m") == size_bytes("1024k")


# ---- tightening is allowed, loosening is not


@pytest.mark.parametrize(
    ("key", "user", "lower", "higher"),
    [
        ("max_cost", "0.5", "0.25", "1000.0"),
        ("max_tokens", "1000", "10", "100000000"),
        ("max_lm_calls", "50", "10", "100000"),
        ("max_steps", "10", "3", "1000"),
        ("depth", "2", "1", "16"),
        ("timeout", "60.0", "30", "86400"),
        ("max_containers", "4", "2", "4096"),
        ("max_concurrency", "4", "1", "1024"),
        ("pool_size", "2", "0", "256"),
        ("cell_timeout", "5.0", "1", "86400"),
        ("memory", '"256m"', '"128m"', '"8g"'),
        ("cpus", "1.0", "0.5", "64"),
    ],
)
def test_a_project_may_lower_a_limit_but_never_raise_it(
    dirs: tuple[Path, Path], key: str, user: str, lower: str, higher: str
) -> None:
    project, user_file = dirs
    user_file.write_text(f"{key} = {user}\n")
    project.write_text(f"{key} = {lower}\n")
    loaded = load_settings()
    assert loaded.origin(key).startswith("project file") and not loaded.ignored
    project.write_text(f"{key} = {higher}\n")
    loaded = load_settings()
    assert str(getattr(loaded.settings, key)) == user.strip('"'), "the user's own value stays"
    assert loaded.origin(key) == f"user file {user_file}"
    assert "may only lower" in ignored(loaded)[key] and user.strip('"') in ignored(loaded)[key]
    line = loaded.ignored[0].line()
    assert line.startswith(f"ignored {key} = ") and str(project) in line


def test_built_in_defaults_bound_a_project_too(dirs: tuple[Path, Path]) -> None:
    """No user file at all: the built-in defaults are the user's settings."""
    project, _ = dirs
    project.write_text('max_lm_calls = 100000\nmemory = "64g"\ntimeout = 999999\ncell_timeout = 600\n')
    loaded = load_settings()
    s = loaded.settings
    assert (s.max_lm_calls, s.memory, s.timeout, s.cell_timeout) == (500, "1g", 1800.0, 60.0)
    assert set(ignored(loaded)) == {"max_lm_calls", "memory", "timeout", "cell_timeout"}
    project.write_text("max_cost = 2.0\nmax_tokens = 5000\n")  # unset means no limit: any is lower
    s = load_settings().settings
    assert (s.max_cost, s.max_tokens) == (2.0, 5000)


def test_a_project_never_lifts_a_limit_by_unsetting_it(dirs: tuple[Path, Path]) -> None:
    project, user_file = dirs
    user_file.write_text("max_cost = 1.0\n")
    project.write_text("max_cost = 1.0\nmax_steps = 12\n")  # equal: a no-op, not reported
    loaded = load_settings()
    assert loaded.settings.max_cost == 1.0 and loaded.ignored == []


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("api_base", '"http://collector.example/v1"'),
        ("docker_url", '"tcp://203.0.113.9:2375"'),
        ("engines", '["tcp://203.0.113.9:2375,max=64"]'),
        ("trace", '"/home/u/.bashrc"'),
        ("tenant", '"someone-else"'),
    ],
)
def test_where_data_and_keys_go_is_never_a_projects_choice(
    dirs: tuple[Path, Path], key: str, value: str
) -> None:
    project, _ = dirs
    project.write_text(f"{key} = {value}\n")
    loaded = load_settings()
    assert getattr(loaded.settings, key) == Settings.model_fields[key].get_default(call_default_factory=True)
    assert "only your own settings choose it" in ignored(loaded)[key]
    # Trusted, the same file applies as written.
    assert loaded.origin(key) == "default"
    trusted = load_settings(trust_project=True)
    assert trusted.origin(key).startswith("project file") and trusted.ignored == []
    assert trusted.trust is not None and trusted.trust.by == "flag"


def test_a_password_in_an_ignored_url_is_masked(dirs: tuple[Path, Path]) -> None:
    project, _ = dirs
    project.write_text('api_base = "https://u:hunter2@llm.example/v1"\n')
    line = load_settings().ignored[0].line()
    assert "hunter2" not in line and "u:***@llm.example" in line


def test_a_flag_or_variable_above_the_project_is_not_reported(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    project, _ = dirs
    project.write_text('api_base = "http://collector.example/v1"\nmax_cost = 100.0\n')
    monkeypatch.setenv("RLM_SANDBOX_API_BASE", "http://127.0.0.1:9/v1")
    loaded = load_settings({"max_cost": 2.0})
    assert loaded.settings.api_base == "http://127.0.0.1:9/v1" and loaded.settings.max_cost == 2.0
    assert loaded.ignored == []  # shadowed: the project's value could not apply anyway


def test_runtime_may_only_move_to_gvisor(dirs: tuple[Path, Path]) -> None:
    project, user_file = dirs
    user_file.write_text('runtime = "runsc"\n')
    project.write_text('runtime = "runc"\n')
    loaded = load_settings()
    assert loaded.settings.runtime == "runsc" and "gVisor" in ignored(loaded)["runtime"]
    project.write_text('runtime = "kata-debug"\n')
    assert load_settings().settings.runtime == "runsc"
    user_file.write_text("")
    project.write_text('runtime = "runsc"\n')  # the engine's default -> gVisor: stronger
    loaded = load_settings()
    assert loaded.settings.runtime == "runsc" and loaded.ignored == []
    project.write_text('runtime = "runc"\n')  # the engine's default may be gVisor already
    assert load_settings().settings.runtime is None


def test_a_project_picks_models_only_of_the_users_provider(dirs: tuple[Path, Path]) -> None:
    project, user_file = dirs
    project.write_text('model = "openai/gpt-4o"\n')
    loaded = load_settings()
    assert loaded.settings.model is None, "no model of the user's: the project may not pick a provider"
    assert "you named no model" in ignored(loaded)["model"]
    user_file.write_text('model = "openai/gpt-4o-mini"\n')
    project.write_text(
        'sub_model = "openai/gpt-4o"\n'
        'model = "anthropic/claude-3-opus"\n'
        '[depth_models]\n1 = "openai/gpt-4o-mini"\n2 = "bedrock/some-model"\n'
    )
    loaded = load_settings()
    s = loaded.settings
    assert (s.model, s.sub_model, s.depth_models) == (
        "openai/gpt-4o-mini",
        "openai/gpt-4o",
        {1: "openai/gpt-4o-mini"},
    )
    assert set(ignored(loaded)) == {"model", "depth_models.2"}
    assert "(openai)" in ignored(loaded)["model"]
    # A flag-given model counts as the user's choice of provider.
    project.write_text('sub_model = "openai/gpt-4o"\n')
    user_file.write_text("")
    assert load_settings({"model": "openai/gpt-4o-mini"}).settings.sub_model == "openai/gpt-4o"
    project.write_text('sub_model = "gpt-4o"\n')  # no provider named: LiteLLM would guess one
    assert load_settings({"model": "openai/gpt-4o-mini"}).settings.sub_model is None


def test_tenant_limits_are_judged_one_by_one(dirs: tuple[Path, Path]) -> None:
    project, user_file = dirs
    user_file.write_text("[tenants.team-a]\nmax_cost = 5.0\nmax_containers = 4\n")
    project.write_text(
        "[tenants.team-a]\nmax_cost = 50.0\nmax_containers = 2\n[tenants.team-b]\nmax_containers = 8\n"
    )
    loaded = load_settings()
    t = loaded.settings.tenants
    assert (t["team-a"].max_cost, t["team-a"].max_containers, t["team-b"].max_containers) == (5.0, 2, 8)
    assert set(ignored(loaded)) == {"tenants.team-a.max_cost"}


def test_recursion_is_the_projects_to_choose(dirs: tuple[Path, Path]) -> None:
    project, _ = dirs
    project.write_text('recursion = "explicit"\n')
    loaded = load_settings()
    assert loaded.settings.recursion == "explicit" and loaded.ignored == []


def test_settings_used_directly_apply_the_rule(dirs: tuple[Path, Path]) -> None:
    """``gc`` reads Settings() for its engines: a project file must not name them."""
    project, _ = dirs
    project.write_text('engines = ["tcp://203.0.113.9:2375"]\ndocker_url = "tcp://203.0.113.9:2375"\n')
    s = Settings()
    assert s.engines == [] and s.docker_url is None


def test_the_user_file_is_the_users_even_from_its_own_directory(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, user_file = dirs
    user_file.write_text('api_base = "http://127.0.0.1:9/v1"\n')
    monkeypatch.chdir(user_file.parent)
    loaded = load_settings()
    assert loaded.settings.api_base == "http://127.0.0.1:9/v1" and loaded.trust is None
    assert [kind for kind, _ in loaded.files] == ["user"]


# ---- trust records


def test_a_trust_record_holds_for_this_content_only(dirs: tuple[Path, Path]) -> None:
    project, _ = dirs
    project.write_text('api_base = "http://127.0.0.1:9/v1"\nmax_cost = 3.0\n')
    assert load_settings().settings.api_base is None
    store = record_trust(read_project_file(project))
    assert stat.S_IMODE(store.stat().st_mode) == 0o600 and store == trust_store()
    loaded = load_settings()
    assert loaded.settings.api_base == "http://127.0.0.1:9/v1" and loaded.ignored == []
    assert loaded.trust is not None and loaded.trust.by == "record"
    project.write_text('api_base = "http://collector.example/v1"\nmax_cost = 3.0\n')  # changed
    loaded = load_settings()
    assert loaded.settings.api_base is None and loaded.trust is not None
    assert not loaded.trust.trusted and loaded.trust.changed and "changed since" in loaded.trust.describe()
    record_trust(read_project_file(project))
    assert load_settings().settings.api_base == "http://collector.example/v1"
    assert forget_trust(project) and not forget_trust(project)
    assert load_settings().settings.api_base is None


def test_a_broken_trust_store_trusts_nothing(dirs: tuple[Path, Path]) -> None:
    project, _ = dirs
    project.write_text('trace = "t.jsonl"\n')
    trust_store().write_text("{not json")
    assert load_settings().settings.trace is None
    record_trust(read_project_file(project))  # rewritten whole
    assert json.loads(trust_store().read_text())["version"] == 1
    assert load_settings().settings.trace == "t.jsonl"


def test_an_oversized_project_file_is_refused(dirs: tuple[Path, Path]) -> None:
    project, _ = dirs
    project.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match="larger than 1 MB"):
        load_settings()


# ---- the trace writer


def test_a_trace_never_replaces_a_file(tmp_path: Path) -> None:
    victim = tmp_path / "bashrc"
    victim.write_text("alias ls='ls --color'\n")
    with pytest.raises(ConfigError) as info:
        Tracer("run-x", victim)
    assert "already exists" in info.value.message and "rm " in info.value.hint
    assert victim.read_text() == "alias ls='ls --color'\n"
    link = tmp_path / "link.jsonl"
    link.symlink_to(tmp_path / "not-yet")  # a dangling link: O_EXCL refuses it too
    with pytest.raises(ConfigError, match="already exists"):
        Tracer("run-x", link)
    assert not (tmp_path / "not-yet").exists()
    fresh = tmp_path / "sub" / "t.jsonl"
    tracer = Tracer("run-x", fresh)
    tracer.emit("run_start")
    tracer.close()
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert json.loads(fresh.read_text())["event"] == "run_start"
