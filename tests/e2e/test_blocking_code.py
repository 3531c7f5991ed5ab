"""Code that blocks the event loop is found, not suffered; hung blocking tools are timed out
and never hold the host's stop (issue 12, item 2; docs/reliability.md §55, §58).

Everything runs in a real ``plait serve`` with the test's plugin loaded by ``[plugins] modules``.
"""

from __future__ import annotations

import signal
import statistics
import time
from pathlib import Path

import anyio
import pytest

from .host_process import HostProcess

# Timing-sensitive (pings under 500 ms) or CPU-heavy: `make test` runs these after the rest,
# on their own, so nothing else loads the machine while they measure.
pytestmark = [pytest.mark.anyio, pytest.mark.timing]

PLUGIN = """\
import time

import plait


def spin(seconds: float) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "spun"


def hang() -> str:
    time.sleep(3600)
    return "never"


@plait.hookimpl
def register_tools(register):
    register(spin, "busy.spin_inline", blocking=False)
    register(spin, "busy.spin_thread", blocking=True)
    register(hang, "busy.hang", blocking=True)
"""

WORKFLOWS = {
    "inline": """\
name: inline
steps:
  - {id: hog, tool: busy.spin_inline, with: {seconds: 1.5}, timeout: 30}
""",
    "threaded": """\
name: threaded
steps:
  - {id: hog, tool: busy.spin_thread, with: {seconds: 1.5}, timeout: 30}
""",
    "hung": """\
name: hung
steps:
  - {id: stuck, tool: busy.hang, timeout: 1}
""",
    "hung_default": """\
name: hung_default
steps:
  - {id: stuck, tool: busy.hang}
""",
}


@pytest.fixture
def host(tmp_path: Path):
    process = HostProcess(
        tmp_path,
        plugin=PLUGIN,
        workflows=WORKFLOWS,
        config="[limits]\ndefault_step_timeout = 1.5\nstall_seconds = 0.3\n",
    )
    process.start()
    yield process
    process.stop()


async def _pings_during(host: HostProcess, workflow: str) -> tuple[dict, list[float]]:
    """Start a run, ping from another connection until it ends; (run, ping times)."""
    started = await host.call("runs/start", {"workflow": workflow})
    times: list[float] = []
    done = anyio.Event()
    run: dict = {}

    async def wait() -> None:
        run.update(await host.wait_run(started["runId"]))
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        while not done.is_set():
            began = time.monotonic()
            assert await host.call("ping") == {}
            times.append(time.monotonic() - began)
            await anyio.sleep(0.05)
    return run, times


async def test_a_step_blocking_the_loop_is_named_with_its_plugin(host):
    run, times = await _pings_during(host, "inline")
    assert run["status"] == "succeeded"
    info = await host.call("host/info")
    stall = info["loop"]["worstRecentStall"]
    assert stall is not None and stall["seconds"] >= 1.0, info["loop"]
    assert stall["tool"] == "busy.spin_inline" and stall["plugin"] == "testplugin"
    assert stall["step"] == "hog" and stall["run"] == run["id"]
    assert "testplugin.py" in stall["code"]
    log = host.stderr()
    assert "event loop was blocked for" in log and "'busy.spin_inline'" in log
    assert await host.call("ping") == {}  # serving again


async def test_the_same_work_in_a_worker_thread_leaves_other_connections_served(host):
    run, times = await _pings_during(host, "threaded")
    assert run["status"] == "succeeded"
    # Pings go on while the thread works (inline, the same work holds them all for 1.5 s);
    # bounds with room for a machine loaded by other tests running alongside.
    assert len(times) >= 5 and statistics.median(times) < 0.1 and max(times) < 1.0, times
    assert (await host.call("host/info"))["loop"]["stalls"] <= 1


async def test_a_hung_blocking_tool_is_timed_out_and_does_not_hold_the_stop(host):
    for workflow in ("hung", "hung_default"):  # its own timeout, then [limits]'s default
        began = time.monotonic()
        started = await host.call("runs/start", {"workflow": workflow})
        run = await host.wait_run(started["runId"])
        assert run["status"] == "failed"
        assert run["steps"]["stuck"]["error"]["type"] == "timeout", run["steps"]["stuck"]
        assert time.monotonic() - began < 10
    info = await host.call("host/info")
    assert info["abandonedThreads"] == 2
    began = time.monotonic()
    host.process.send_signal(signal.SIGINT)
    assert host.wait_exit(15) == 0
    assert time.monotonic() - began < 10
