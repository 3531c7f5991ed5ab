"""Clean, bounded stops of a real ``plait serve``, and a data dir only one host can use.

Every host here is a real ``python -m plait.cli serve`` subprocess stopped with real signals:

* SIGTERM (what service managers send) stops the host as SIGINT does: exit code 0,
  ``host.json`` removed, a run in flight left as a crash leaves it and resumed by the next
  start;
* a stop ends within :data:`BOUND` seconds with idle clients connected (WebSocket clients that
  never send, one that never even answers the close, an idle MCP client on stdio), and when
  the store cannot commit (another process holds the database's write lock): then one line on
  stderr says what was not written, and a second signal ends the process at once;
* a stop that hangs all the same (a plugin's ``host_stopping`` hook that blocks) is ended at
  the bound, with exit code 1 and one line on stderr;
* deleting ``host.lock`` under a running host does not let a second host in.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import anyio
import pytest
from websockets.asyncio.client import connect

from plait.store.datadir import DataDirLock

from .conftest import raw_websocket
from .host_process import HostProcess as Serve

pytestmark = pytest.mark.anyio

BOUND = 10.0
"""Seconds within which a stop must end (``plait.cli.commands.STOP_SECONDS``)."""

STEPS = """\
name: steps
steps:
  - {id: a, tool: time.sleep, with: {seconds: 0.2}}
  - {id: b, tool: time.sleep, with: {seconds: 1.5}, needs: [a]}
  - {id: c, tool: time.sleep, with: {seconds: 0.2}, needs: [b]}
outputs:
  slept: "${steps.a.output > 0 and steps.b.output > 0 and steps.c.output > 0}"
"""

TICK = """\
name: tick
steps:
  - id: each
    loop: "${range(900) | list}"
    steps:
      - {id: w, tool: time.sleep, with: {seconds: 0.005}}
    output: "${steps.w.output}"
outputs:
  n: "${steps.each.output | length}"
"""


@pytest.fixture
def serve(tmp_path: Path):
    host = Serve(tmp_path, workflows={"steps": STEPS, "tick": TICK})
    yield host
    host.stop()


async def step_events(serve: Serve, run_id: str) -> list[tuple[str, str | None]]:
    events = (await serve.call("runs/events", {"runId": run_id}))["events"]
    return [(e["type"], e.get("step")) for e in events]


async def wait_for_step(serve: Serve, run_id: str, kind: str, step: str) -> None:
    with anyio.fail_after(10):
        while (kind, step) not in await step_events(serve, run_id):
            await anyio.sleep(0.05)


def assert_clean_stop(serve: Serve, sent: float, *, within: float = BOUND) -> float:
    """The host exited with 0 within ``within`` seconds of ``sent``, and said nothing alarming."""
    try:
        code = serve.wait_exit(timeout=within + 5)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the host did not stop:\n{serve.stderr()[-3000:]}") from None
    took = time.monotonic() - sent
    stderr = serve.stderr()
    assert code == 0, stderr[-3000:]
    assert took < within, (took, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    assert not (serve.data_dir / "host.json").exists()
    assert not DataDirLock.held(serve.data_dir)
    return took


async def test_sigterm_stops_like_sigint_and_the_run_in_flight_resumes(serve):
    serve.start()
    assert (serve.data_dir / "host.json").exists()
    run_id = (await serve.call("runs/start", {"workflow": "steps"}))["runId"]
    await wait_for_step(serve, run_id, "step.started", "b")

    assert_clean_stop(serve, serve.signal(signal.SIGTERM))
    assert "SIGTERM: stopping" in serve.stderr()
    assert (serve.data_dir / "token").exists()  # as on SIGINT: the next start writes a new one

    serve.start()
    run = await serve.wait_run(run_id)
    assert run["status"] == "succeeded", run
    assert run["outputs"] == {"slept": True}
    kinds = await step_events(serve, run_id)
    assert ("run.recovered", None) in kinds  # resumed by the start, as after a crash
    assert kinds.count(("step.succeeded", "a")) == 1  # committed before the stop: not rerun
    serve.stop()


async def test_sigint_with_idle_websocket_clients_stops_within_the_bound(serve):
    serve.start()
    headers = {"Authorization": f"Bearer {serve.token}"}
    async with connect(serve.url, additional_headers=headers, proxy=None) as idle:
        # One that never sends, and one that never reads, nor answers the close.
        deaf, _ = await raw_websocket(serve.port, serve.token)
        async with deaf:
            took = await anyio.to_thread.run_sync(
                lambda: assert_clean_stop(serve, serve.signal(signal.SIGINT))
            )
            with anyio.fail_after(5):
                with pytest.raises(Exception):  # noqa: B017 - closed, whichever way
                    await idle.recv()
    assert took < 5, took


async def test_sigint_with_an_idle_stdio_client_stops_within_the_bound(serve):
    process = serve.popen("--stdio", stdin=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
    process.stdin.flush()
    assert json.loads(process.stdout.readline()) == {"jsonrpc": "2.0", "id": 1, "result": {}}
    # The client stays connected and idle: stdin stays open, nothing more is sent.
    took = assert_clean_stop(serve, serve.signal(signal.SIGINT))
    assert took < 5, took
    process.stdin.close()
    process.stdout.close()


async def test_sigterm_on_stdio_stops_cleanly(serve):
    process = serve.popen("--stdio", stdin=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
    process.stdin.flush()
    assert json.loads(process.stdout.readline())["result"] == {}
    took = assert_clean_stop(serve, serve.signal(signal.SIGTERM))
    assert took < 5, took
    process.stdin.close()
    process.stdout.close()


def hold_write_lock(data_dir: Path) -> sqlite3.Connection:
    """Take the database's write lock from this process: the host's commits then fail."""
    conn = sqlite3.connect(data_dir / "plait.db", isolation_level=None, timeout=30)
    conn.execute("BEGIN IMMEDIATE")
    return conn


async def test_sigint_while_commits_fail_stops_within_the_bound_and_says_what_was_lost(serve):
    serve.start()
    run_id = (await serve.call("runs/start", {"workflow": "tick"}))["runId"]
    await wait_for_step(serve, run_id, "step.succeeded", "each[3].w")
    locker = hold_write_lock(serve.data_dir)
    try:
        await anyio.sleep(1.0)  # steps go on; their events wait for the disk
        assert_clean_stop(serve, serve.signal(signal.SIGINT))
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    stderr = serve.stderr()
    lost = [line for line in stderr.splitlines() if "not written to" in line]
    assert len(lost) == 1, stderr[-3000:]
    assert str(serve.data_dir / "plait.db") in lost[0]
    assert "change(s) still not written" in lost[0]

    serve.start()  # what was written is resumed
    run = await serve.wait_run(run_id, timeout=60)
    assert run["status"] == "succeeded", run
    assert run["outputs"] == {"n": 900}


async def test_a_second_signal_during_a_stuck_stop_exits_at_once(serve):
    serve.start()
    run_id = (await serve.call("runs/start", {"workflow": "tick"}))["runId"]
    await wait_for_step(serve, run_id, "step.succeeded", "each[3].w")
    locker = hold_write_lock(serve.data_dir)
    try:
        await anyio.sleep(1.0)
        serve.signal(signal.SIGINT)
        await anyio.sleep(0.5)  # the store now waits for its commits
        sent = serve.signal(signal.SIGINT)
        code = serve.wait_exit(timeout=BOUND)
        took = time.monotonic() - sent
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    stderr = serve.stderr()
    assert code == 1, stderr[-3000:]
    assert took < 1.5, took
    forced = [line for line in stderr.splitlines() if "exiting now" in line]
    assert len(forced) == 1, stderr[-3000:]
    assert forced[0].startswith("plait: SIGINT again while stopping; exiting now: ")
    assert "not written to" in forced[0] and str(serve.data_dir / "plait.db") in forced[0]
    assert not (serve.data_dir / "host.json").exists()
    assert not DataDirLock.held(serve.data_dir)  # the kernel dropped the locks

    serve.start()
    run = await serve.wait_run(run_id, timeout=60)
    assert run["status"] == "succeeded", run


async def test_deleting_host_lock_does_not_let_a_second_host_in(serve, tmp_path):
    serve.start()
    first = serve.process
    assert first is not None
    (serve.data_dir / "host.lock").unlink()
    assert DataDirLock.held(serve.data_dir)  # `plait runs` still sees the host

    errfile = tmp_path / "second.stderr"
    with errfile.open("wb") as err:
        second = subprocess.run(
            serve.command("--port", "0"),
            env=serve.environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            timeout=30,
        )
    stderr = errfile.read_text(encoding="utf-8", errors="replace")
    assert second.returncode == 1, stderr
    assert "error: run store" in stderr and str(serve.data_dir) in stderr, stderr
    assert "another plait host" in stderr and f"(pid {first.pid})" in stderr, stderr
    assert "listening on" not in stderr

    # The first host was not disturbed, and still holds the dir.
    assert first.poll() is None
    run_id = (await serve.call("runs/start", {"workflow": "steps"}))["runId"]
    assert (await serve.wait_run(run_id))["status"] == "succeeded"
    assert DataDirLock.held(serve.data_dir)
    assert_clean_stop(serve, serve.signal(signal.SIGINT))


STUCK_PLUGIN = '''\
"""A plugin whose host_stopping hook never returns in time (it blocks the event loop)."""

import time

import plait


@plait.hookimpl
def host_stopping(host):
    time.sleep(60)
'''


async def test_a_stop_that_hangs_is_ended_at_the_bound(tmp_path):
    serve = Serve(tmp_path, plugin=STUCK_PLUGIN, workflows={"steps": STEPS})
    serve.start()
    try:
        sent = serve.signal(signal.SIGTERM)
        code = serve.wait_exit(timeout=BOUND + 10)
        took = time.monotonic() - sent
    finally:
        serve.kill()
    stderr = serve.stderr()
    assert code == 1, stderr[-3000:]
    assert BOUND - 0.5 < took < BOUND + 3, took
    forced = [line for line in stderr.splitlines() if "exiting now" in line]
    assert len(forced) == 1, stderr[-3000:]
    assert forced[0].startswith(f"plait: not stopped within {BOUND:g}s; exiting now"), forced
    assert not (serve.data_dir / "host.json").exists()
    assert not DataDirLock.held(serve.data_dir)
