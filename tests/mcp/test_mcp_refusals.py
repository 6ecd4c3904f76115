"""``rlm-sandbox mcp`` through the SDK's stdio client: the tool's schema, and every argument
it refuses, as a tool error the agent can read. No run starts, so no engine is needed: a
refusal is decided before any container or model call (the model server sees no request)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import pytest

from ..helpers import cli
from .client import server_params, session


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """An allowed directory with a file, a secret file next to it, and links from inside
    the allowed directory out of it (to the file, and to its parent)."""
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "a.log").write_text("ERROR disk sda\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("the secret\n")
    (allowed / "link-out").symlink_to(secret)
    (allowed / "sub" / "dir-out").symlink_to(tmp_path)
    os.mkfifo(allowed / "pipe")
    return {"allowed": allowed, "secret": secret, "home": tmp_path / "home"}


def call_all(params: Any, calls: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """The tools listed and the result of each call, on one server."""

    async def main() -> tuple[list[Any], list[Any]]:
        async with session(params) as s:
            tools = (await s.list_tools()).tools
            return tools, [await s.call_tool("rlm_query", args) for args in calls]

    return anyio.run(main)


def text_of(result: Any) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


def test_list_tools_shows_rlm_query_with_its_schema(scripted, files) -> None:
    model = scripted()
    params = server_params(model, files["home"], "--allow-dir", str(files["allowed"]), "--depth", "2")
    tools, _ = call_all(params, [])
    assert [t.name for t in tools] == ["rlm_query"]
    tool = tools[0]
    props = tool.input_schema["properties"]
    assert set(props) == {"task", "path", "text", "depth"} and tool.input_schema["required"] == ["task"]
    assert props["depth"]["maximum"] == 2 and props["depth"]["minimum"] == 1
    assert str(files["allowed"].resolve()) in props["path"]["description"]
    assert str(files["allowed"].resolve()) in (tool.description or "")
    out = tool.output_schema
    assert out is not None and {"answer", "status", "cost_usd"} <= set(out["required"])
    assert tool.annotations is not None and tool.annotations.read_only_hint is True
    assert model.requests.count == 0


def test_paths_out_of_the_allowed_dirs_are_refused_with_a_readable_error(scripted, files) -> None:
    allowed, secret = files["allowed"], files["secret"]
    model = scripted()
    params = server_params(model, files["home"], "--allow-dir", str(allowed), "--depth", "2")
    task = "What is the secret?"
    cases = [
        ({"path": f"{allowed}/../secret.txt"}, "'..' component"),
        ({"path": f"{allowed}/sub/../a.log"}, "'..' component"),  # refused even when it stays inside
        ({"path": str(allowed / "link-out")}, "outside the allowed directories"),
        ({"path": str(allowed / "sub" / "dir-out" / "secret.txt")}, "outside the allowed directories"),
        ({"path": str(secret)}, "outside the allowed directories"),
        ({"path": "/etc/passwd"}, "outside the allowed directories"),
        ({"path": "secret.txt"}, "outside the allowed directories"),  # relative: from the server's cwd
        ({"path": str(allowed / "missing.log")}, "no such file"),
        ({"path": str(allowed / "pipe")}, "not a regular file or a directory"),
        ({"path": str(allowed / "a.log"), "text": "x"}, "exactly one of `path`"),
        ({}, "exactly one of `path`"),
        ({"text": "abc", "depth": 3}, "at most depth 2"),
        ({"text": "abc", "depth": 0}, "at most depth 2"),
        ({"text": ""}, "`text` is empty"),
    ]
    _, results = call_all(params, [{"task": task, **args} for args, _ in cases])
    for (args, expected), result in zip(cases, results, strict=True):
        message = text_of(result)
        assert result.is_error, (args, message)
        assert expected in message, (args, message)
        assert "the secret" not in message
    outside = text_of(results[2])
    assert str(allowed.resolve()) in outside  # the refusal says where files may be read
    assert model.requests.count == 0  # refused before any model call


def test_without_allow_dir_every_path_is_refused(scripted, files) -> None:
    model = scripted()
    params = server_params(model, files["home"])
    tools, results = call_all(params, [{"task": "t", "path": str(files["allowed"] / "a.log")}])
    assert results[0].is_error
    message = text_of(results[0])
    assert "without --allow-dir" in message and "`text`" in message
    assert "none" in tools[0].input_schema["properties"]["path"]["description"]


@pytest.mark.parametrize(("project_depth", "served"), [(2, 2), (5, 3)])
def test_settings_are_runs_user_file_and_project_file_with_its_trust_rules(
    scripted, files, project_depth: int, served: int
) -> None:
    """depth = 3 in the user's rlm-sandbox.toml; the project's (untrusted) may lower it,
    never raise it: the depth the tool offers and enforces says which applied."""
    model = scripted()
    home = files["home"]
    (home / "cwd").mkdir(parents=True)
    (home / "config" / "rlm-sandbox").mkdir(parents=True)
    (home / "config" / "rlm-sandbox" / "rlm-sandbox.toml").write_text("depth = 3\n")
    (home / "cwd" / "rlm-sandbox.toml").write_text(f"depth = {project_depth}\n")
    params = server_params(model, home)
    tools, results = call_all(params, [{"task": "t", "text": "abc", "depth": served + 1}])
    assert tools[0].input_schema["properties"]["depth"]["maximum"] == served
    assert results[0].is_error and f"at most depth {served}" in text_of(results[0])


def test_a_server_that_cannot_start_says_why_on_stderr_and_nothing_on_stdout(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "RLM_SANDBOX_MODEL": ""}
    missing = cli("mcp", "--model", "openai/x", "--allow-dir", str(tmp_path / "nope"), env=env)
    no_model = cli("mcp", "--allow-dir", str(tmp_path), env=env)
    for proc, said in ((missing, "no such directory"), (no_model, "no model")):
        assert proc.returncode == 2 and proc.stdout == b"", proc.stderr.decode()
        assert proc.stderr.decode().startswith("error: ") and said in proc.stderr.decode()
