"""The host's log (docs/logging.md), read from the stderr of a real ``plait serve``.

Real clients connect, are refused (no token, a wrong one, a foreign origin, one too many),
start runs and make a plugin's tool and step type raise; the test reads what the host wrote:
a line per connection and refusal naming the peer and never the token, a line per run start
and end, the full traceback of each plugin failure under the correlation id the client reads
in the step's error, JSON that parses line by line, ``--log-level warning`` leaving the run
lines out, ``--stdio`` keeping stdout for the protocol, and a bad ``[log]`` being one line.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from .host_process import PLAIT, HostProcess
from .mcp_helpers import raw_stdio_host

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

PLUGIN = """\
import plait
from plait.plugins import StepConfig, StepContext, StepType


def fine() -> str:
    return "fine"


def explode(what: str) -> str:
    raise ValueError(f"kaboom: {what}")


class BoomConfig(StepConfig):
    boom: str


class Boom(StepType[BoomConfig]):
    key = "boom"
    Config = BoomConfig

    async def run(self, ctx: StepContext, config: BoomConfig) -> str:
        raise LookupError(config.boom)


@plait.hookimpl
def register_tools(register):
    register(fine, "logged.fine", blocking=False)
    register(explode, "logged.explode", blocking=False)


@plait.hookimpl
def register_step_types(register):
    register(Boom)
"""

WORKFLOWS = {
    "calm": "name: calm\nsteps:\n  - {id: a, tool: logged.fine}\n",
    "faulty": """\
name: faulty
steps:
  - {id: explode, tool: logged.explode, with: {what: tool}, on_error: continue}
  - {id: boom, boom: "from a step type", on_error: continue}
""",
}

BANNER = ("plait ", "token: ", "(token file: ", "web view: ")
"""The lines ``plait serve`` prints at start (the URL, the token, the web link): not log lines."""
PRINTED = (*BANNER, "plait: ")
"""The command's own plain-text messages, in either format (``plait: SIGINT: stopping``)."""


def log_lines(host: HostProcess) -> list[str]:
    """The host's stderr without the start banner (which shows the token on purpose)."""
    return [
        line for line in host.stderr().splitlines() if line.strip() and not line.startswith(BANNER)
    ]


def json_records(host: HostProcess) -> list[dict[str, Any]]:
    """Every log line as JSON: one that does not parse fails the test."""
    records = []
    for line in log_lines(host):
        if line.startswith(PRINTED):
            continue
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert {"ts", "level", "logger", "message"} <= record.keys(), record
        records.append(record)
    return records


async def refused(host: HostProcess, url: str, headers: dict[str, str]) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers=headers, proxy=None):
            pass
    return info.value.response.status_code


def make_host(tmp_path: Path, config: str = "") -> HostProcess:
    return HostProcess(tmp_path, plugin=PLUGIN, workflows=WORKFLOWS, config=config)


async def test_connections_and_refusals_are_logged_with_the_peer_and_never_the_token(
    tmp_path: Path,
):
    host = make_host(tmp_path, "[limits]\nmax_connections = 2\n")
    host.start()
    try:
        assert await host.call("ping") == {}
        wrong = "wrong-token-0123456789abcdef"
        assert await refused(host, host.url, {"Authorization": f"Bearer {wrong}"}) == 401
        assert await refused(host, f"{host.url}?token={wrong}", {}) == 401
        assert await refused(host, host.url, {}) == 401
        foreign = {"Authorization": f"Bearer {host.token}", "Origin": "http://evil.example"}
        assert await refused(host, host.url, foreign) == 403
        mine = {"Authorization": f"Bearer {host.token}"}
        async with connect(host.url, additional_headers=mine, proxy=None):
            async with connect(f"{host.url}?token={host.token}", proxy=None):
                assert await refused(host, host.url, mine) == 503
    finally:
        host.stop()
    lines = log_lines(host)
    text = "\n".join(lines)
    assert host.token not in text and wrong not in text, text
    opened = [line for line in lines if "connection opened from 127.0.0.1:" in line]
    closed = [line for line in lines if "connection closed from 127.0.0.1:" in line]
    assert len(opened) == 3 and len(closed) == 3, text
    assert all(" INFO plait.ws: " in line for line in opened + closed), text
    refusals = [line for line in lines if "refused a connection from 127.0.0.1:" in line]
    reasons = [line.split(": ", 2)[2] for line in refusals]
    assert reasons == [
        "bad token (HTTP 401)",
        "bad token (HTTP 401)",
        "no token (HTTP 401)",
        "bad origin 'http://evil.example' (HTTP 403)",
        "too many connections (2 open, limit 2) (HTTP 503)",
    ], text
    assert all(" WARNING plait.ws: " in line for line in refusals), text


async def test_json_lines_carry_runs_connections_and_the_tracebacks_clients_can_find(
    tmp_path: Path,
):
    host = make_host(tmp_path, '[log]\nformat = "json"\n')
    host.start()
    try:
        calm = await host.call("runs/start", {"workflow": "calm"})
        assert (await host.wait_run(calm["runId"]))["status"] == "succeeded"
        faulty = await host.call("runs/start", {"workflow": "faulty"})
        run = await host.wait_run(faulty["runId"])
    finally:
        host.stop()
    records = json_records(host)

    runs = [r for r in records if r["logger"] == "plait.runs"]
    started = {r["run_id"]: r for r in runs if r["event"] == "run.started"}
    ended = {r["run_id"]: r for r in runs if r.get("status") == "succeeded"}
    assert started[calm["runId"]]["workflow"] == "calm", runs
    assert started[calm["runId"]]["message"].startswith(f"run {calm['runId']} started"), runs
    end = ended[calm["runId"]]
    assert end["level"] == "INFO" and end["workflow"] == "calm", end
    assert isinstance(end["duration"], float) and end["duration"] >= 0, end
    assert started[faulty["runId"]]["workflow"] == "faulty", runs

    peers = [r["peer"] for r in records if r["message"].startswith("connection opened")]
    assert peers and all(p.startswith("127.0.0.1:") for p in peers), records

    failures = {r["correlation_id"]: r for r in records if r["logger"] == "plait.failures"}
    for step, exc, code in (
        ("explode", "ValueError: kaboom: tool", "raise ValueError"),
        ("boom", "LookupError: from a step type", "raise LookupError"),
    ):
        error = run["steps"][step]["error"]
        correlation = error["correlationId"]  # what the client reads ...
        record = failures[correlation]  # ... finds the traceback in the log
        assert record["level"] == "ERROR", record
        assert record["run_id"] == run["id"] and record["step"] == step, record
        assert record["plugin"] == "testplugin", record
        assert record["traceback"].startswith("Traceback (most recent call last)"), record
        assert exc in record["traceback"] and code in record["traceback"], record
        assert "testplugin.py" in record["traceback"], record
        assert correlation in record["message"], record
    assert "Traceback" not in json.dumps(run)  # the client gets the id, not the traceback


async def test_log_level_warning_leaves_out_run_and_connection_lines_but_not_tracebacks(
    tmp_path: Path,
):
    host = make_host(tmp_path, '[log]\nlevel = "debug"\n')  # the flag wins over the file
    host.popen("--port", "0", "--log-level", "warning")
    host.wait_listening()
    try:
        faulty = await host.call("runs/start", {"workflow": "faulty"})
        run = await host.wait_run(faulty["runId"])
    finally:
        host.stop()
    text = "\n".join(log_lines(host))
    assert " started (workflow" not in text and "connection opened" not in text, text
    assert " INFO " not in text and " DEBUG " not in text, text
    correlation = run["steps"]["explode"]["error"]["correlationId"]
    assert f"[correlation {correlation}]" in text and "ValueError: kaboom" in text, text


async def test_stdio_logs_on_stderr_and_leaves_stdout_to_the_protocol(tmp_path: Path):
    host = make_host(tmp_path)
    async with raw_stdio_host(
        tmp_path, command=host.command("--stdio"), env=host.environment()
    ) as raw:
        await raw.initialize()
        reply = await raw.request("runs/start", {"workflow": "faulty"})
        run_id = reply["result"]["runId"]
        done = await raw.request("runs/wait", {"runId": run_id, "timeout": 30}, timeout=35)
        assert done["result"]["run"]["status"] == "succeeded", done
        raw.assert_clean_stdout()
        stderr = raw.stderr_path.read_text(encoding="utf-8")
    assert f"run {run_id} started (workflow faulty" in stderr, stderr
    assert f"run {run_id} succeeded in " in stderr, stderr
    assert "ValueError: kaboom" in stderr and "Traceback" in stderr, stderr


@pytest.mark.parametrize(
    ("config", "env"),
    [('[log]\nlevel = "loud"\n', {}), ("", {"PLAIT_LOG_LEVEL": "loud"})],
    ids=["file", "environment"],
)
def test_a_bad_log_level_is_one_line(tmp_path: Path, config: str, env: dict[str, str]):
    (tmp_path / "plait.toml").write_text(f"[plugins]\nentry_points = false\n{config}")
    done = subprocess.run(
        [*PLAIT, "serve", "--port", "0", "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.strip()]
    assert line.startswith("error: invalid config") and "log.level" in line, line
    assert "'info'" in line and "'warning'" in line, line
