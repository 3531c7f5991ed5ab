"""A real schedule on a real ``plait serve``, across a SIGKILL at the moment of firing.

A workflow file declares two schedules firing every second: one catches up every missed fire
(``catchup: all``), the other none (``catchup: none``). The host is killed with SIGKILL right
after a fire's run was created (seen through ``runs/list``), before the scheduler could have
kept that it fired, and started again on the same data dir. From the store afterwards:

* no two runs share an idempotency key: each fire time started at most one run, the fire cut
  by the kill included (the restarted host fires it again and gets the same run back);
* the ``all`` schedule has a run for every second from its first fire to its last, the
  seconds the host was down included;
* the ``none`` schedule has no run for a second the host was down.

The host stays down through two fire times (a wait, the one in these tests besides the fires'
own seconds), so that there are missed fires to catch up or not.
"""

from __future__ import annotations

import json
import math
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import anyio
import pytest

from tests.e2e.host_process import PLAIT, HostProcess

pytestmark = pytest.mark.anyio

WORKFLOW = """\
name: tick
steps: [{id: t, transform: 1}]
schedules:
  - {name: all, every: 1, overlap: allow, catchup: all, max_catchup: 100, catchup_window: 600}
  - {name: none, every: 1, overlap: allow}
"""


def cli(host: HostProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """``plait schedules ARGS`` against the host using the data dir."""
    config = ["--data-dir", str(host.data_dir), "--config", str(host.tmp / "plait.toml")]
    return subprocess.run(
        [*PLAIT, "schedules", *args, *config],
        capture_output=True,
        text=True,
        timeout=60,
        env=host.environment(),
    )


async def run_count(host: HostProcess) -> int:
    page = await host.call("runs/list", {"workflow": "tick", "limit": 500})
    return len(page["runs"])


async def until_runs(host: HostProcess, more_than: int, timeout: float = 15) -> int:
    """Poll ``runs/list`` until the host kept more than ``more_than`` runs; their count."""
    with anyio.fail_after(timeout):
        while (count := await run_count(host)) <= more_than:
            await anyio.sleep(0.02)
    return count


def fire_times(data_dir: Path) -> dict[str, list[float]]:
    """Each schedule's fire times, from the kept runs' idempotency keys (with repeats)."""
    conn = sqlite3.connect(data_dir / "plait.db")
    try:
        keys = [
            k
            for (k,) in conn.execute(
                "SELECT idempotency_key FROM runs WHERE workflow = ?", ("tick",)
            )
        ]
    finally:
        conn.close()
    out: dict[str, list[float]] = {"tick/all": [], "tick/none": []}
    for key in keys:
        _, name, stamp = key.split(":", 2)
        out[name].append(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    return out


async def test_a_schedule_fires_once_per_second_across_a_kill_at_the_moment_of_firing(
    tmp_path: Path,
) -> None:
    host = HostProcess(tmp_path, workflows={"tick": WORKFLOW})
    host.start()
    try:
        seen = await until_runs(host, 2)  # it fires
        await until_runs(host, seen)  # a fire's run was just created: kill now
        host.signal(signal.SIGKILL)
        killed = time.time()
        host.wait_exit()
        # down through two fire times (part of the scenario: catch-up has fires to catch up)
        await anyio.sleep(math.ceil(killed) + 2.2 - time.time())
        restarted = time.time()
        host.start()
        listed = await host.call("schedules/list")
        assert [s["name"] for s in listed["schedules"]] == ["tick/all", "tick/none"]
        # the fires after the restart: a few seconds of them
        with anyio.fail_after(20):
            while max(fire_times(host.data_dir)["tick/none"], default=0) < restarted + 2:
                await anyio.sleep(0.05)
        shown = await host.call("schedules/get", {"name": "tick/none"})
        assert any(n["outcome"] == "missed" for n in shown["schedule"]["notes"]), shown
        # the command line finds the host through the data dir
        paused = await anyio.to_thread.run_sync(cli, host, "pause", "tick/none")
        assert paused.returncode == 0, paused.stderr
        shown = await anyio.to_thread.run_sync(cli, host, "show", "tick/all", "--json")
        shown = json.loads(shown.stdout)["schedule"]
        assert shown["lastRuns"] and {r["status"] for r in shown["lastRuns"]} <= {
            "pending",
            "running",
            "succeeded",
        }
        listed = await anyio.to_thread.run_sync(cli, host, "list", "--json")
        listed = json.loads(listed.stdout)["schedules"]
        assert [s["paused"] for s in listed] == [False, True]
    finally:
        host.stop()
    fires = fire_times(host.data_dir)
    for name, times in fires.items():
        repeated = [t for t, n in Counter(times).items() if n > 1]
        assert repeated == [], f"{name}: fires started twice: {repeated}"
    every = sorted(fires["tick/all"])
    assert every == [every[0] + i for i in range(len(every))], "catch-up all left a gap"
    assert every[0] < killed - 1 and every[-1] >= restarted + 2
    down = [t for t in fires["tick/none"] if killed + 1 <= t < restarted]
    assert down == [], "catch-up none started fires of the time the host was down"
