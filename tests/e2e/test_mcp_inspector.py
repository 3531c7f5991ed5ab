"""The MCP Inspector's CLI (``@modelcontextprotocol/inspector``, npm) against a real ``plait
serve --stdio``: an MCP client plait's authors did not write lists the tools and calls a
workflow. ``make test`` installs it under ``.venv/node`` when npm is there; without it these
tests skip and say why.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .mcp_helpers import host_env, stdio_command, write_workflows

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
INSPECTOR = REPO / ".venv" / "node" / "node_modules" / ".bin" / "mcp-inspector"


def inspect(tmp: Path, *args: str, exit_code: int = 0) -> dict[str, Any]:
    """What the Inspector's CLI prints for one call (it exits 5 for an ``isError`` result)."""
    if not INSPECTOR.exists():
        pytest.skip(
            f"the MCP Inspector CLI is not installed at {INSPECTOR} (make inspector; needs npm)"
        )
    done = subprocess.run(
        [str(INSPECTOR), "--cli", *stdio_command(tmp), *args],
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
