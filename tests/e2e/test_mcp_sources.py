"""MCP servers as tool sources (``[mcp_servers.<name>]``), against real servers from PyPI.

Nothing is mocked: ``mcp-server-time`` and ``mcp-server-git`` run as subprocesses the host
starts, the git server reads a repository made with ``git`` in ``tmp_path``, a server process
is killed to make the host reconnect, and the WebSocket checks use a real host's server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from contextlib import asynccontextmanager

import anyio
import pytest
from mcp import Client, StdioServerParameters

import plait
from plait.config import HostConfig
from plait.plugins import create_plugin_manager

from .conftest import websocket_of

pytestmark = pytest.mark.anyio

WAIT = 10.0
"""Bound on one wait for a run or a client call."""
LIMIT = 30.0
"""Bound on a whole host's life in a test: its start (servers are fresh Python processes),
its runs and its stop."""

TIME_ARGS = ["-m", "mcp_server_time", "--local-timezone", "UTC"]
TIME = {"command": sys.executable, "args": TIME_ARGS}
GIT = {"command": "mcp-server-git"}
"""A bare name, as in the README: found beside the host's Python (its virtualenv)."""


def config(tmp_path, servers, **extra):
    return HostConfig.model_validate(
        {
            "host": {"data_dir": str(tmp_path / "data"), "port": 0},
            "plugins": {"entry_points": False},
            "mcp_servers": servers,
            **extra,
        }
    )


def one_step(name, tool, args, **step):
    return {
        "name": name,
        "steps": [{"id": "call", "tool": tool, "with": args, **step}],
        "outputs": {"value": "${steps.call.output}"},
    }


async def run(host, definition, inputs=None):
    host.register(definition)
    with anyio.fail_after(WAIT):
        return await host.wait(await host.start_run(definition["name"], inputs or {}))


@asynccontextmanager
async def started(tmp_path, pm, servers):
    """A host with these MCP servers, entered (it connects to them at start).

    The caller bounds the whole of it with ``fail_after``: the host's MCP task group is opened
    inside ``__aenter__``, so a scope around the entry alone could not be left before it.
    """
    async with plait.Host(config(tmp_path, servers), pm=pm) as host:
        yield host


async def listed_directly(args):
    """The time server's own tool list, through the SDK client with no host between."""
    params = StdioServerParameters(command=sys.executable, args=args)
    with anyio.fail_after(WAIT):
        async with Client(params, mode="legacy", read_timeout_seconds=WAIT) as client:
            return {t.name: t.input_schema for t in (await client.list_tools()).tools}


# -- mcp-server-time -------------------------------------------------------------------------


async def test_time_server_tools_are_registered_and_called_by_steps(tmp_path, pm):
    own = {}

    async def list_directly():
        own.update(await listed_directly(TIME_ARGS))

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(list_directly)
            async with started(tmp_path, pm, {"time": TIME}) as host:
                tools = host.engine.registries.tools
                assert host.mcp.info()["time"]["status"] == "connected"
                assert set(host.mcp.info()["time"]["tools"]) == {
                    "time.get_current_time",
                    "time.convert_time",
                }
                assert tools.owner("time.get_current_time") == "mcp:time"
                ok = await run(
                    host, one_step("now", "time.get_current_time", {"timezone": "Europe/Paris"})
                )
                bad = await run(
                    host, one_step("bad", "time.get_current_time", {"timezone": "Nowhere/Atlantis"})
                )
                after = await run(
                    host, one_step("again", "time.get_current_time", {"timezone": "UTC"})
                )
                info = host.mcp.info()["time"]
                schemas = {
                    n: tools["time." + n].input_schema for n in ("get_current_time", "convert_time")
                }
    # Registered with the server's own input schemas.
    assert set(own) == {"get_current_time", "convert_time"}
    assert schemas == own
    assert own["get_current_time"]["required"] == ["timezone"]
    # The structured result is the step's output.
    assert ok.status == "succeeded", ok.error
    value = ok.outputs["value"]
    assert value["timezone"] == "Europe/Paris"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+0[12]:00", value["datetime"])
    # A tool error fails the step, naming the server and carrying its message...
    assert bad.status == "failed"
    message = bad.error["message"]
    assert "MCP server 'time' reported:" in message, message
    assert "Nowhere/Atlantis" in message and "Invalid timezone" in message, message
    assert bad.steps["call"].error["type"] == "tool"
    # ... and is not a broken connection: the same connection serves the next call.
    assert after.status == "succeeded" and after.outputs["value"]["timezone"] == "UTC"
    assert info["connects"] == 1 and info["status"] == "connected"


async def test_time_server_over_websocket_info_and_mcp_tools(tmp_path, pm):
    with anyio.fail_after(LIMIT):
        async with started(tmp_path, pm, {"time": TIME}) as host, websocket_of(host) as s:
            async with s.client() as c:
                info = await c.call("host/info")
                await c.call(
                    "initialize",
                    {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {},
                        "clientInfo": {"name": "e2e", "version": "1"},
                    },
                )
                listed = {t["name"]: t for t in (await c.call("tools/list"))["tools"]}
                called = await c.call(
                    "tools/call",
                    {"name": "time.get_current_time", "arguments": {"timezone": "Asia/Tokyo"}},
                    timeout=WAIT,
                )
                failed = await c.call(
                    "tools/call",
                    {"name": "time.get_current_time", "arguments": {"timezone": "Bad/Zone"}},
                    timeout=WAIT,
                )
    server = info["mcpServers"]["time"]
    assert server["status"] == "connected"
    assert server["error"] is None
    assert set(server["tools"]) == {"time.get_current_time", "time.convert_time"}
    assert {"time.get_current_time", "time.convert_time", "math.sum"} <= set(listed)
    schema = listed["time.get_current_time"]["inputSchema"]
    assert schema["required"] == ["timezone"]
    assert schema["properties"]["timezone"]["type"] == "string"
    assert called["isError"] is False
    assert called["structuredContent"]["timezone"] == "Asia/Tokyo"
    assert called["structuredContent"]["datetime"].endswith("+09:00")
    assert failed["isError"] is True
    assert "MCP server 'time' reported:" in failed["content"][0]["text"]


# -- mcp-server-git --------------------------------------------------------------------------


def make_repo(path):
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Ada",
        "GIT_AUTHOR_EMAIL": "ada@example.com",
        "GIT_COMMITTER_NAME": "Ada",
        "GIT_COMMITTER_EMAIL": "ada@example.com",
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(path.parent),
    }
    path.mkdir()
    for argv in (["init", "-q"], ["add", "hello.txt"], ["commit", "-q", "-m", "first commit"]):
        if argv[0] == "add":
            (path / "hello.txt").write_text("hello\n", encoding="utf-8")
        subprocess.run(
            ["git", *argv], cwd=path, env=env, check=True, capture_output=True, timeout=WAIT
        )


async def test_git_server_reads_a_real_repository(tmp_path, pm):
    repo = tmp_path / "repo"
    make_repo(repo)
    with anyio.fail_after(LIMIT):
        async with started(tmp_path, pm, {"git": GIT}) as host:
            names = host.mcp.info()["git"]["tools"]
            log = await run(
                host,
                one_step("log", "git.git_log", {"repo_path": "${inputs.repo}"}),
                {"repo": str(repo)},
            )
            status = await run(host, one_step("status", "git.git_status", {"repo_path": str(repo)}))
    assert {"git.git_log", "git.git_status", "git.git_diff"} <= set(names)
    assert log.status == "succeeded", log.error
    text = log.outputs["value"]
    assert isinstance(text, str) and "first commit" in text and "Ada" in text
    assert status.status == "succeeded", status.error
    assert "nothing to commit" in status.outputs["value"]


# -- reconnecting ----------------------------------------------------------------------------


def gone(pid):
    """Whether process ``pid`` has exited (reaped, or a zombie its parent has not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


async def test_a_killed_server_is_reconnected_and_a_retrying_step_succeeds(tmp_path, pm):
    pid_file = tmp_path / "server.pid"
    code = (
        f"import os,sys,runpy; open({str(pid_file)!r},'w').write(str(os.getpid())); "
        "sys.argv=['mcp_server_time','--local-timezone','UTC']; "
        "runpy.run_module('mcp_server_time', run_name='__main__')"
    )
    wrapper = {"command": sys.executable, "args": ["-c", code], "timeout": 5}
    with anyio.fail_after(LIMIT):
        async with started(tmp_path, pm, {"time": wrapper}) as host:
            first_pid = int(pid_file.read_text())
            assert host.mcp.info()["time"]["connects"] == 1
            os.kill(first_pid, signal.SIGKILL)
            with anyio.fail_after(WAIT):
                while not gone(first_pid):
                    await anyio.sleep(0.05)
            result = await run(
                host,
                one_step(
                    "after",
                    "time.get_current_time",
                    {"timezone": "Europe/Paris"},
                    retry={"attempts": 8, "backoff": "fixed", "base": 0.5},
                ),
            )
            info = host.mcp.info()["time"]
            events = await host.engine.events(result.id, 0, 200)
    assert result.status == "succeeded", result.error
    assert result.outputs["value"]["timezone"] == "Europe/Paris"
    assert info["status"] == "connected" and info["connects"] >= 2
    second_pid = int(pid_file.read_text())
    assert second_pid != first_pid
    retries = [e.data["error"]["message"] for e in events if e.type == "step.retrying"]
    assert retries, "the first call should have failed on the dead server"
    assert all("MCP server 'time'" in m for m in retries), retries


async def test_a_server_that_cannot_start_does_not_stop_the_host(tmp_path, pm):
    missing = str(tmp_path / "no-such-server")
    begun = time.monotonic()
    with anyio.fail_after(LIMIT):
        async with started(
            tmp_path, pm, {"ghost": {"command": missing, "connect_timeout": 2}}
        ) as host:
            elapsed = time.monotonic() - begun
            info = host.mcp.info()["ghost"]
            result = await run(host, one_step("haunt", "ghost.boo", {}))
            still = await run(host, one_step("sum", "math.sum", {"values": [1, 2]}))
    assert elapsed < 4
    assert info["status"] == "reconnecting"
    assert info["tools"] == [] and info["connects"] == 0
    assert info["error"] and "no-such-server" in info["error"], info
    assert result.status == "failed"
    assert result.steps["call"].error["type"] == "tool_not_found"
    assert "tool 'ghost.boo': no such tool" in result.error["message"], result.error
    assert still.status == "succeeded" and still.outputs == {"value": 3.0}


# -- the server's process: environment and working directory ------------------------------


def reporter(out):
    """A ``-c`` program that writes what its process sees to ``out`` and exits (no server)."""
    return (
        "import json,os; json.dump({'cwd': os.getcwd(), 'mark': os.environ.get("
        f"'PLAIT_E2E_MARK'), 'extra': os.environ.get('PLAIT_E2E_EXTRA')}}, open({str(out)!r}, "
        "'w'))"
    )


async def seen_by_server(tmp_path, pm, table):
    out = tmp_path / "seen.json"
    with anyio.fail_after(LIMIT):
        async with started(tmp_path, pm, {"probe": {**table, "connect_timeout": 5}}) as host:
            info = host.mcp.info()["probe"]
    assert info["status"] == "reconnecting"  # it exited: it is no MCP server
    return json.loads(out.read_text())


async def test_env_is_added_to_a_minimal_environment_and_cwd_is_used(tmp_path, pm, monkeypatch):
    monkeypatch.setenv("PLAIT_E2E_MARK", "a host secret")
    work = tmp_path / "work"
    work.mkdir()
    seen = await seen_by_server(
        tmp_path,
        pm,
        {
            "command": sys.executable,
            "args": ["-c", reporter(tmp_path / "seen.json")],
            "env": {"PLAIT_E2E_EXTRA": "extra"},
            "cwd": str(work),
        },
    )
    # The host's own variables stay with the host; the server gets what its table gives.
    assert seen == {"cwd": str(work), "mark": None, "extra": "extra"}


async def test_a_server_without_env_gets_only_the_minimal_environment(tmp_path, pm, monkeypatch):
    monkeypatch.setenv("PLAIT_E2E_MARK", "a host secret")
    seen = await seen_by_server(
        tmp_path, pm, {"command": sys.executable, "args": ["-c", reporter(tmp_path / "seen.json")]}
    )
    assert seen["mark"] is None
    assert seen["cwd"] == os.getcwd()


async def test_pings_keep_a_healthy_connection(tmp_path, pm):
    with anyio.fail_after(LIMIT):
        async with started(tmp_path, pm, {"time": {**TIME, "ping_interval": 0.2}}) as host:
            await anyio.sleep(1.0)  # about five pings
            info = host.mcp.info()["time"]
            result = await run(host, one_step("now", "time.get_current_time", {"timezone": "UTC"}))
    assert result.status == "succeeded", result.error
    assert (info["status"], info["connects"], info["error"]) == ("connected", 1, None)


# -- configuration errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"command": "x", "url": "http://127.0.0.1:1/mcp"}, "mcp_servers.bad: give exactly one of"),
        ({"args": ["x"]}, "mcp_servers.bad: give exactly one of"),
        ({"command": "x", "comand": "y"}, "mcp_servers.bad.comand: unknown key"),
        ({"command": "x", "timeout": 0}, "mcp_servers.bad.timeout:"),
    ],
)
async def test_an_invalid_server_table_stops_host_start(tmp_path, pm, table, problem):
    host = plait.Host(config(tmp_path, {"bad": table}), pm=pm)
    with anyio.fail_after(WAIT), pytest.raises(plait.ConfigError) as caught:
        async with host:
            pass
    assert problem in str(caught.value)
    # Nothing was left held: the same data dir starts cleanly afterwards.
    with anyio.fail_after(LIMIT):
        async with started(tmp_path, pm, {"off": {"command": "x", "enabled": False}}) as again:
            assert again.mcp.info() == {}  # a disabled server is not started at all


async def test_a_server_never_takes_over_a_plugin_tool_of_the_same_name(tmp_path, probe, caplog):
    """A server named like a plugin's tool prefix leaves the plugin's tool in place, also when
    the host stops and takes the server's tools away."""

    def get_current_time(timezone: str = "UTC") -> str:
        return "from the plugin"

    @plait.hookimpl
    def register_tools(register):
        register(get_current_time, "time.get_current_time")

    plugin = types.SimpleNamespace(__name__="clash", register_tools=register_tools)
    pm = create_plugin_manager(entry_points=False, extra=[probe.plugin(), plugin])
    with anyio.fail_after(LIMIT):
        async with started(tmp_path, pm, {"time": TIME}) as host:
            tools = host.engine.registries.tools
            assert tools.owner("time.get_current_time") == "clash"
            assert tools.get("time.convert_time") is not None  # the server's other tool
            run_ = await run(host, one_step("clash", "time.get_current_time", {"timezone": "UTC"}))
            assert run_.outputs == {"value": "from the plugin"}
        assert tools.owner("time.get_current_time") == "clash"
    assert "already registered by clash" in caplog.text
