"""The README's MCP registration works as written: its ``mcpServers`` block starts a server
that the SDK's client can use, and its ``claude mcp add`` line starts the same command."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client.stdio import StdioServerParameters

from ..conftest import ROOT, tenant_containers
from .client import session

README = ROOT / "README.md"


def mcp_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## MCP server")
    return text[start : text.index("\n## ", start + 1)]


def block(lang: str) -> str:
    found = re.findall(rf"```{lang}\n(.*?)```", mcp_section(), flags=re.S)
    assert len(found) == 1, f"expected one {lang} block in the README's MCP section"
    return found[0]


def readme_server() -> dict[str, Any]:
    return json.loads(block("json"))["mcpServers"]["rlm-sandbox"]


def test_the_claude_mcp_add_line_starts_the_same_command_as_the_json_block() -> None:
    words = shlex.split(block("bash").replace("\\\n", " "))
    assert words[:3] == ["claude", "mcp", "add"] and "rlm-sandbox" in words
    assert words[words.index("--env") + 1] == "OPENAI_API_KEY=$OPENAI_API_KEY"
    command = words[words.index("--") + 1 :]
    server = readme_server()
    expected = [server["command"], *server["args"]]
    expected[expected.index("--allow-dir") + 1] = "$PWD"
    assert command == expected


@pytest.mark.docker
def test_the_mcp_servers_block_works_as_written(
    scripted, gen_log, sandbox_image: str, tmp_path: Path
) -> None:
    """The block's command and arguments, with its placeholders filled in (this checkout, a
    directory of logs, a key) and the model pointed at the scripted server."""
    server = readme_server()
    stats = gen_log(200_000)
    logs = tmp_path / "logs"
    logs.mkdir()
    shutil.copy(stats.path, logs / "app.log")
    uv = shutil.which(server["command"])
    assert uv, f"{server['command']} is not on PATH"
    model = scripted()
    tenant = f"mcp-readme-{tmp_path.name[-12:]}"
    args = [
        {"/path/to/rlm-sandbox": str(ROOT), "/path/to/your/logs": str(logs)}.get(a, a) for a in server["args"]
    ]
    # The same flag again wins: the scripted model instead of the README's, on loopback.
    args += ["--model", model.model_name, "--api-base", model.url, "--tenant", tenant, "--no-trace"]
    env = {k: (model.api_key if k == "OPENAI_API_KEY" else v) for k, v in server["env"].items()}
    (tmp_path / "config").mkdir()
    env |= {"XDG_CONFIG_HOME": str(tmp_path / "config"), "UV_OFFLINE": "1"}
    params = StdioServerParameters(command=uv, args=args, env=env, cwd=str(tmp_path))

    async def main() -> Any:
        async with session(params) as s:
            assert [t.name for t in (await s.list_tools()).tools] == ["rlm_query"]
            task = 'How many lines contain "ERROR disk"?'
            return await s.call_tool("rlm_query", {"task": task, "path": str(logs / "app.log")})

    result = anyio.run(main)
    assert not result.is_error, result.content
    assert result.structured_content["answer"] == str(stats.disk_errors)
    assert tenant_containers(tenant) == []
