"""The MCP Inspector's CLI (``@modelcontextprotocol/inspector``, npm) against a real ``plait
serve --stdio`` and, over Streamable HTTP, a real ``plait serve`` at ``/mcp``: an MCP client
plait's authors did not write lists the tools and calls a workflow. ``make test`` installs it
under ``.venv/node`` when npm is there; without it these tests skip and say why.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .host_process import HostProcess
from .mcp_helpers import GREET_YAML, host_env, stdio_command, write_workflows

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
INSPECTOR = REPO / ".venv" / "node" / "node_modules" / ".bin" / "mcp-inspector"


def inspect(
    tmp: Path, *args: str, exit_code: int = 0, target: list[str] | None = None
) -> dict[str, Any]:
    """What the Inspector's CLI prints for one call (it exits 5 for an ``isError`` result);
    ``target``: the server (default: ``plait serve --stdio`` on ``tmp``)."""
    if not INSPECTOR.exists():
        pytest.skip(
            f"the MCP Inspector CLI is not installed at {INSPECTOR} (make inspector; needs npm)"
        )
    done = subprocess.run(
        [str(INSPECTOR), "--cli", *(target or stdio_command(tmp)), *args],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp,
        env=host_env(),
    )
    assert done.returncode == exit_code, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    write_workflows(tmp_path / "wf")
    return tmp_path


def test_the_inspector_lists_tools_and_workflows(tmp):
    listed = inspect(tmp, "--method", "tools/list")
    tools = {tool["name"]: tool for tool in listed["tools"]}
    assert {"math.sum", "workflow.greet", "workflow.slow"} <= set(tools)
    assert tools["workflow.greet"]["outputSchema"]["type"] == "object"


def test_the_inspector_calls_a_workflow_and_gets_its_outputs(tmp):
    result = inspect(
        tmp, "--method", "tools/call", "--tool-name", "workflow.greet", "--tool-arg", "name=ada"
    )
    assert result["isError"] is False, result
    assert result["structuredContent"] == json.loads(result["content"][0]["text"])


def test_the_inspector_sees_a_bad_argument_as_an_error_result(tmp):
    result = inspect(
        tmp,
        "--method",
        "tools/call",
        "--tool-name",
        "workflow.greet",
        "--tool-arg",
        "nam=ada",
        exit_code=5,
    )
    assert result["isError"] is True
    assert "did you mean 'name'" in result["content"][0]["text"]


@pytest.fixture
def served(tmp_path: Path):
    host = HostProcess(tmp_path, workflows={"greet": GREET_YAML})
    host.start()
    try:
        yield host
    finally:
        host.stop()


def over_http(host: HostProcess, token: str | None = None) -> list[str]:
    return [
        f"http://127.0.0.1:{host.port}/mcp",
        "--transport",
        "http",
        "--header",
        f"Authorization: Bearer {token or host.token}",
    ]


def test_the_inspector_lists_and_calls_over_streamable_http(served):
    listed = inspect(served.tmp, "--method", "tools/list", target=over_http(served))
    assert "workflow.greet" in {tool["name"] for tool in listed["tools"]}
    result = inspect(
        served.tmp,
        "--method",
        "tools/call",
        "--tool-name",
        "workflow.greet",
        "--tool-arg",
        "name=ada",
        target=over_http(served),
    )
    assert result["isError"] is False, result
    assert result["structuredContent"] == {"greeting": "hello, ada"}


def test_the_inspector_without_the_token_is_refused_over_http(served):
    if not INSPECTOR.exists():
        pytest.skip(f"the MCP Inspector CLI is not installed at {INSPECTOR}")
    done = subprocess.run(
        [str(INSPECTOR), "--cli", *over_http(served, "wrong"), "--method", "tools/list"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=served.tmp,
        env=host_env(),
    )
    assert done.returncode != 0
    # the 401's WWW-Authenticate: Bearer makes the Inspector ask for credentials
    assert "auth_required" in done.stdout + done.stderr
