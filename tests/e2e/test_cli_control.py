"""``plait runs pause|signal`` against a running host and on a data dir with no host
(issue 11, item 5), through the real command."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .host_process import PLAIT, HostProcess

pytestmark = pytest.mark.anyio

WORKFLOWS = {
    "gate": """\
name: gate
steps:
  - {id: hold, wait: go}
outputs:
  got: "${steps.hold.output}"
""",
}


def plait_runs(host: HostProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *PLAIT,
            "runs",
            *args,
            "--config",
            str(host.tmp / "plait.toml"),
            "--data-dir",
            str(host.data_dir),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=host.environment(),
    )


async def test_signal_and_pause_reach_a_running_host(tmp_path: Path):
    host = HostProcess(tmp_path, workflows=WORKFLOWS)
    host.start()
    try:
        first = (await host.call("runs/start", {"workflow": "gate"}))["runId"]
        done = plait_runs(host, "signal", first, "go", "--data", '{"n": 1}')
        assert done.returncode == 0, done.stderr
        run = await host.wait_run(first)
        assert run["status"] == "succeeded" and run["outputs"] == {"got": {"n": 1}}

        second = (await host.call("runs/start", {"workflow": "gate"}))["runId"]
        paused = plait_runs(host, "pause", second)
        assert paused.returncode == 0, paused.stderr
        assert json.loads(paused.stdout)["run"]["status"] == "paused"
        bad = plait_runs(host, "signal", second, "go", "--data", "{not json")
        assert bad.returncode == 2 and "--data is not JSON" in bad.stderr
        assert "Traceback" not in bad.stderr
    finally:
        host.stop()


async def test_signal_and_pause_on_a_data_dir_are_kept_for_the_next_start(tmp_path: Path):
    host = HostProcess(tmp_path, workflows=WORKFLOWS)
    host.start()
    first = (await host.call("runs/start", {"workflow": "gate"}))["runId"]
    second = (await host.call("runs/start", {"workflow": "gate"}))["runId"]
    host.stop()  # both runs wait, stopped with the host
    signalled = plait_runs(host, "signal", first, "go", "--data", "7")
    assert signalled.returncode == 0, signalled.stderr
    # Kept, not taken here: the command does not run the run's wait step in its own process.
    assert json.loads(signalled.stdout)["run"]["status"] == "waiting", signalled.stdout
    paused = plait_runs(host, "pause", second)
    assert paused.returncode == 0, paused.stderr
    assert json.loads(paused.stdout)["run"]["status"] == "paused"
    host.start()
    try:
        run = await host.wait_run(first)
        assert run["status"] == "succeeded" and run["outputs"] == {"got": 7}
        kept = await host.call("runs/get", {"runId": second, "steps": False})
        assert kept["run"]["status"] == "paused"
    finally:
        host.stop()
