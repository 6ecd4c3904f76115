"""Who the service serves and what a request may ask, without an engine: tenants and tokens
from the operator's settings only, the token digest, the bearer check, tighter-only limits."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from rlm_sandbox.errors import ConfigError
from rlm_sandbox.rlm.config import RLMConfig
from rlm_sandbox.rlm.tenants import TenantLimits
from rlm_sandbox.serve.auth import authenticate, token_sha256
from rlm_sandbox.serve.config import DEFAULT_MAX_QUEUED, DEFAULT_MAX_RUNS, serve_config
from rlm_sandbox.serve.errors import ApiError
from rlm_sandbox.serve.limits import RunLimits
from rlm_sandbox.settings import FILE_NAME, load_settings

A, B, EVIL = "token-of-a", "token-of-b", "token-from-a-project-file"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(project dir as cwd, the user's config dir); no RLM_SANDBOX_* leaks in."""
    for key in list(os.environ):
        if key.startswith("RLM_SANDBOX_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    project = tmp_path / "proj"
    (project / ".git").mkdir(parents=True)
    monkeypatch.chdir(project)
    user = tmp_path / "xdg" / "rlm-sandbox"
    user.mkdir(parents=True)
    return project, user


def test_token_sha256_must_be_a_hex_digest() -> None:
    assert TenantLimits(token_sha256=digest(A).upper()).token_sha256 == digest(A)
    for bad in ("abc", digest(A)[:-1] + "z", A):
        with pytest.raises(ValidationError, match="sha256sum"):
            TenantLimits(token_sha256=bad)
    assert token_sha256(A) == digest(A)


def test_tenants_come_from_the_users_file_never_a_project_file_even_trusted(dirs: tuple[Path, Path]) -> None:
    project, user = dirs
    (user / FILE_NAME).write_text(
        f'model = "openai/gpt-4o-mini"\n[tenants.a]\ntoken_sha256 = "{digest(A)}"\nmax_runs = 2\n'
        "[tenants.limits-only]\nmax_cost = 1.0\n"
    )
    (project / FILE_NAME).write_text(
        f'[tenants.evil]\ntoken_sha256 = "{digest(EVIL)}"\n[tenants.a]\ntoken_sha256 = "{digest(EVIL)}"\n'
    )
    for trusted in (False, True):
        loaded = load_settings(trust_project=trusted)
        config = serve_config(loaded, host="127.0.0.1", port=0)
        assert list(config.tenants) == ["a"]  # limits-only has no token; evil is the project's
        a = config.tenants["a"]
        assert a.digest == bytes.fromhex(digest(A)) and a.max_runs == 2 and a.max_queued == DEFAULT_MAX_QUEUED
        assert authenticate(f"Bearer {EVIL}", config.tenants.values()) is None
        assert authenticate(f"Bearer {A}", config.tenants.values()) is a
    untrusted = load_settings()
    assert {i.setting for i in untrusted.ignored} >= {"tenants.a.token_sha256", "tenants.evil.token_sha256"}


def test_config_file_replaces_the_users_file_and_env_adds_tenants(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _project, user = dirs
    (user / FILE_NAME).write_text(f'[tenants.a]\ntoken_sha256 = "{digest(A)}"\n')
    given = tmp_path / "serve.toml"
    given.write_text(
        f'model = "openai/gpt-4o-mini"\nserve_grace_s = 7\n[tenants.b]\ntoken_sha256 = "{digest(B)}"\n'
    )
    monkeypatch.setenv(
        "RLM_SANDBOX_TENANTS", f'{{"c": {{"token_sha256": "{digest("c")}", "max_queued": 0}}}}'
    )
    config = serve_config(load_settings(config_file=given), host="0.0.0.0", port=9)
    assert sorted(config.tenants) == ["b", "c"]  # not a: --config FILE is read instead of the user's
    assert config.tenants["c"].max_queued == 0
    monkeypatch.delenv("RLM_SANDBOX_TENANTS")
    config = serve_config(load_settings(config_file=given), host="0.0.0.0", port=9)
    assert sorted(config.tenants) == ["b"] and config.grace_s == 7
    assert config.tenants["b"].max_runs == DEFAULT_MAX_RUNS
    assert config.tenants["b"].limits.token_sha256 is None  # runs never carry it
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(config_file=tmp_path / "missing.toml")


def test_a_service_that_could_serve_nobody_does_not_start(dirs: tuple[Path, Path]) -> None:
    _project, user = dirs
    with pytest.raises(ConfigError, match="needs a model"):
        serve_config(load_settings(), host="127.0.0.1", port=0)
    (user / FILE_NAME).write_text('model = "openai/gpt-4o-mini"\n[tenants.a]\nmax_cost = 1.0\n')
    with pytest.raises(ConfigError, match="token_sha256") as no_token:
        serve_config(load_settings(), host="127.0.0.1", port=0)
    assert "sha256sum" in (no_token.value.hint or "")
    (user / FILE_NAME).write_text(
        f'model = "openai/gpt-4o-mini"\n[tenants.a]\ntoken_sha256 = "{digest(A)}"\n'
        f'[tenants.b]\ntoken_sha256 = "{digest(A)}"\n'
    )
    with pytest.raises(ConfigError, match="same token_sha256"):
        serve_config(load_settings(), host="127.0.0.1", port=0)


def test_the_tenants_input_cap_is_the_lower_of_its_own_and_the_services(dirs: tuple[Path, Path]) -> None:
    _project, user = dirs
    (user / FILE_NAME).write_text(
        f'model = "openai/gpt-4o-mini"\nmax_input_bytes = "100m"\n'
        f'[tenants.a]\ntoken_sha256 = "{digest(A)}"\nmax_input_bytes = "1g"\n'
        f'[tenants.b]\ntoken_sha256 = "{digest(B)}"\nmax_input_bytes = "1m"\n'
    )
    config = serve_config(load_settings(), host="127.0.0.1", port=0)
    assert config.tenants["a"].max_input_bytes == 100 << 20
    assert config.tenants["b"].max_input_bytes == 1 << 20
    run = config.run_config(config.tenants["b"], depth=1)
    assert run.tenant == "b" and list(run.tenants) == ["b"] and run.input_cap()[0] == 1 << 20


def test_authenticate_wants_a_bearer_token_of_a_tenant(dirs: tuple[Path, Path]) -> None:
    _project, user = dirs
    (user / FILE_NAME).write_text(f'model = "m/x"\n[tenants.a]\ntoken_sha256 = "{digest(A)}"\n')
    tenants = serve_config(load_settings(), host="127.0.0.1", port=0).tenants.values()
    assert authenticate(f"bearer   {A}  ", tenants) is not None
    for header in (None, "", A, f"Basic {A}", "Bearer ", f"Bearer {A}x", "Bearer " + "x" * 10_000):
        assert authenticate(header, tenants) is None


def test_request_limits_may_only_tighten() -> None:
    base = RLMConfig(depth=2, max_steps=10, max_cost=None, timeout=600)
    assert RunLimits(depth=1, max_steps=10, max_cost=99.0).tighter(base) == {
        "depth": 1,
        "max_steps": 10,
        "max_cost": 99.0,
    }
    for looser in ({"depth": 3}, {"max_steps": 11}, {"timeout": 601}):
        with pytest.raises(ApiError) as refused:
            RunLimits(**looser).tighter(base)
        assert refused.value.status == 422 and refused.value.detail[0]["loc"] == [next(iter(looser))]


def test_a_token_pasted_where_its_digest_goes_is_refused_without_echoing_it(dirs: tuple[Path, Path]) -> None:
    _project, user = dirs
    token = "rlm-" + "ab" * 32  # the README's shape: never a valid digest, so never silently taken as one
    (user / FILE_NAME).write_text(f'model = "m/x"\n[tenants.a]\ntoken_sha256 = "{token}"\n')
    with pytest.raises(ConfigError, match=r"tenants\.a\.token_sha256") as refused:
        load_settings()
    assert token not in refused.value.message and "ab" * 32 not in refused.value.message
