"""Circuit breakers on a real ``plait serve`` over WebSocket: a tool's and an MCP server's.

Nothing is mocked. The tool is the built-in ``chaos.fail``; the MCP server is
``mcp-server-time`` from PyPI, started by the host, whose process the test finds among the
host's children and kills. Waits poll a condition against a deadline; nothing sleeps to
synchronise.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from .host_process import HostProcess

pytestmark = pytest.mark.anyio

WAIT = 10.0
"""Bound on one wait for a condition."""

FLAKY = """\
name: flaky
inputs: {type: object, properties: {key: {type: string}, times: {type: integer}}}
steps:
  - id: call
    tool: chaos.fail
    with: {key: "${inputs.key}", times: "${inputs.times}", value: done}
outputs: {value: "${steps.call.output}"}
"""

PATIENT = """\
name: patient
inputs: {type: object, properties: {key: {type: string}, times: {type: integer}}}
steps:
  - id: call
    tool: chaos.fail
    with: {key: "${inputs.key}", times: "${inputs.times}", value: done}
    retry: {attempts: 3, backoff: fixed, base: 0.05}
outputs: {value: "${steps.call.output}"}
"""

NOW = """\
name: now
steps:
  - {id: call, tool: time.get_current_time, with: {timezone: Europe/Paris}}
outputs: {value: "${steps.call.output}"}
"""

NOW_PATIENT = """\
name: now_patient
steps:
  - id: call
    tool: time.get_current_time
    with: {timezone: Europe/Paris}
    retry: {attempts: 4, backoff: fixed, base: 0.1}
outputs: {value: "${steps.call.output}"}
"""


@pytest.fixture
def process(tmp_path: Path) -> Iterator[Callable[..., HostProcess]]:
    made: list[HostProcess] = []

    def start(config: str, workflows: dict[str, str]) -> HostProcess:
        host = HostProcess(tmp_path, workflows=workflows, config=config)
        made.append(host)
        host.start()
        return host

    yield start
    for host in made:
        host.stop()


async def until(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; fail after
    ``timeout`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if hasattr(value, "__await__"):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await anyio.sleep(0.05)


async def run(host: HostProcess, workflow: str, inputs: dict[str, Any] | None = None) -> tuple:
    """Start ``workflow``, wait for it; the finished run and its events."""
    started = await host.call("runs/start", {"workflow": workflow, "inputs": inputs or {}})
    finished = await host.wait_run(started["runId"], timeout=WAIT)
    events = (await host.call("runs/events", {"runId": started["runId"]}))["events"]
    return finished, events


def of_type(events: list[dict[str, Any]], *types: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] in types]


async def breakers(host: HostProcess) -> dict[str, Any]:
    return dict((await host.call("host/info"))["breakers"])


# -- a tool's breaker --------------------------------------------------------------------------


async def test_a_tool_breaker_opens_fails_fast_and_a_retry_waits_for_it(process):
    host = process(
        '[tools."chaos.fail"]\nbreaker = {failures = 2, reset_after = 2}\n',
        {"flaky": FLAKY, "patient": PATIENT},
    )
    closed = {"state": "closed", "failures": 0, "retry_at": None}
    assert await breakers(host) == {"tool:chaos.fail": closed}

    # Two failures in a row open it; the run whose call opened it records it.
    first, first_events = await run(host, "flaky", {"key": "a", "times": 100})
    second, second_events = await run(host, "flaky", {"key": "a", "times": 100})
    assert first["steps"]["call"]["error"]["type"] == "tool"
    assert second["steps"]["call"]["error"]["type"] == "tool"
    assert of_type(first_events, "breaker.opened") == []
    [opened] = of_type(second_events, "breaker.opened")
    assert opened["step"] == "call"
    assert opened["data"]["breaker"] == "tool:chaos.fail"
    assert opened["data"]["state"] == "open" and opened["data"]["failures"] == 2
    retry_at = opened["data"]["retry_at"]
    assert retry_at == pytest.approx(time.time() + 2, abs=1.0)
    info = (await breakers(host))["tool:chaos.fail"]
    assert info == {"state": "open", "failures": 2, "retry_at": retry_at}

    # While open, a call fails at once with circuit_open, naming the breaker.
    began = time.monotonic()
    refused, _ = await run(host, "flaky", {"key": "a", "times": 100})
    assert time.monotonic() - began < 1.0
    error = refused["steps"]["call"]["error"]
    assert refused["status"] == "failed"
    assert error["type"] == "circuit_open", error
    assert error["breaker"] == "tool:chaos.fail" and error["retry_at"] == retry_at
    assert "circuit breaker 'tool:chaos.fail' is open" in error["message"]

    # A step with retries: its first attempt is refused, the retry waits until the breaker
    # lets a probe through (not just the policy's 0.05 s), and the probe succeeds.
    assert time.time() < retry_at - 0.3, "too slow: the breaker's open period is over"
    patient, events = await run(host, "patient", {"key": "b", "times": 0})
    assert patient["status"] == "succeeded", patient["error"]
    assert patient["outputs"] == {"value": "done"}
    assert patient["steps"]["call"]["attempts"] == 2
    [retrying] = of_type(events, "step.retrying")
    assert retrying["data"]["error"]["type"] == "circuit_open"
    assert retrying["data"]["delay"] > 0.05
    assert retrying["ts"] + retrying["data"]["delay"] == pytest.approx(retry_at, abs=0.05)
    started = of_type(events, "step.started")
    assert started[1]["ts"] >= retry_at - 0.01
    changes = of_type(events, "breaker.opened", "breaker.half_open", "breaker.closed")
    assert [(e["type"], e["data"]["state"]) for e in changes] == [
        ("breaker.half_open", "half_open"),
        ("breaker.closed", "closed"),
    ]
    assert await breakers(host) == {"tool:chaos.fail": closed}


# -- an MCP server's breaker ---------------------------------------------------------------


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="ascii")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def time_server_of(host: HostProcess) -> int | None:
    """The pid of the host's ``mcp_server_time`` child, if it has one running."""
    assert host.process is not None
    for pid in children(host.process.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mcp_server_time" in argv and not gone(pid):
            return pid
    return None


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (reaped, or a zombie its parent has not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def test_an_mcp_server_breaker_opens_when_its_server_is_killed_and_closes_when_back(
    process,
):
    config = (
        "[mcp_servers.time]\n"
        f"command = {sys.executable!r}\n"
        'args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]\n'
        "timeout = 5\n"
        "breaker = {failures = 1, reset_after = 2}\n"
    )
    host = process(config, {"now": NOW, "now_patient": NOW_PATIENT})

    async def server() -> dict[str, Any]:
        return dict((await host.call("host/info"))["mcpServers"]["time"])

    await until(lambda: _connected(server), "the time server to connect")
    ok, _ = await run(host, "now")
    assert ok["status"] == "succeeded", ok["error"]
    assert ok["outputs"]["value"]["timezone"] == "Europe/Paris"
    assert (await breakers(host))["mcp:time"]["state"] == "closed"

    first = await until(lambda: time_server_of(host), "the time server among the host's children")
    os.kill(first, signal.SIGKILL)
    await until(lambda: gone(first), "the killed server to exit")

    # The call that finds the server gone fails, and opens the server's breaker.
    failed, events = await run(host, "now")
    error = failed["steps"]["call"]["error"]
    assert error["type"] == "tool" and "MCP server 'time'" in error["message"], error
    [opened] = of_type(events, "breaker.opened")
    assert opened["data"]["breaker"] == "mcp:time" and opened["data"]["failures"] == 1
    # While open, a call fails at once without reaching for the server.
    refused, _ = await run(host, "now")
    error = refused["steps"]["call"]["error"]
    assert error["type"] == "circuit_open" and error["breaker"] == "mcp:time", error
    info = (await breakers(host))["mcp:time"]
    assert info["state"] == "open" and info["retry_at"] == opened["data"]["retry_at"]

    # The host starts the server again; once the breaker lets a probe through, it closes.
    await until(lambda: _connected(server, connects=2), "the time server to come back")
    second = time_server_of(host)
    assert second is not None and second != first
    back, events = await run(host, "now_patient")
    assert back["status"] == "succeeded", back["error"]
    changes = of_type(events, "breaker.opened", "breaker.half_open", "breaker.closed")
    assert [(e["type"], e["data"]["breaker"]) for e in changes] == [
        ("breaker.half_open", "mcp:time"),
        ("breaker.closed", "mcp:time"),
    ]
    assert (await breakers(host))["mcp:time"] == {
        "state": "closed",
        "failures": 0,
        "retry_at": None,
    }


async def _connected(server: Callable[[], Any], connects: int = 1) -> bool:
    info = await server()
    return info["status"] == "connected" and info["connects"] >= connects
