"""``plait runs list|show|events|cancel|resume`` on a data dir, and against a running host.

Offline, the commands open the store themselves; when a host holds the data dir they find it
through ``host.json`` and its token, and talk to it over WebSocket.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

import plait
from plait import cli
from plait.config import HostConfig

WORKFLOW = {
    "name": "hold",
    "inputs": {"type": "object", "properties": {"x": {"type": "integer"}}},
    "steps": [
        {"id": "a", "transform": "${inputs.x + 1}"},
        {"id": "pause", "delay": 0.6, "needs": ["a"]},
        {"id": "b", "transform": "${steps.a.output * 10}", "needs": ["pause"]},
    ],
    "outputs": {"b": "${steps.b.output}"},
}
GATE = {
    "name": "gate",
    "steps": [{"id": "w", "wait": "go"}],
    "outputs": {"got": "${steps.w.output}"},
}


def config(data_dir: Path) -> HostConfig:
    return HostConfig.model_validate(
        {"host": {"data_dir": str(data_dir)}, "plugins": {"entry_points": False}}
    )


def make_data_dir(data_dir: Path) -> dict[str, str]:
    """A store with a finished run, a run stopped mid-delay, and a paused run."""

    async def build() -> dict[str, str]:
        async with plait.Host(config(data_dir)) as host:
            host.register(WORKFLOW)
            host.register(GATE)
            done = await host.start_run("hold", {"x": 1})
            await host.wait(done)
            stopped = await host.start_run("hold", {"x": 2})
            paused = await host.start_run("gate")
            await anyio.sleep(0.2)
            await host.engine.pause(paused)
            await host.engine.committed()
        return {"done": done, "stopped": stopped, "paused": paused}

    return anyio.run(build)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no stray plait.toml
    data_dir = tmp_path / "data"
    return data_dir, make_data_dir(data_dir)


def test_list_shows_every_run_newest_first_and_pages(store, capsys):
    data_dir, ids = store
    code, out, _ = run_cli(capsys, "runs", "list", "--data-dir", str(data_dir), "--json")
    assert code == 0
    runs = json.loads(out)["runs"]
    assert [r["id"] for r in runs] == [ids["paused"], ids["stopped"], ids["done"]]
    assert [r["status"] for r in runs] == ["paused", "running", "succeeded"]
    code, out, _ = run_cli(
        capsys, "runs", "list", "--data-dir", str(data_dir), "--json", "--limit", "2"
    )
    page = json.loads(out)
    assert len(page["runs"]) == 2 and page["nextCursor"]
    code, out, _ = run_cli(
        capsys,
        "runs",
        "list",
        "--data-dir",
        str(data_dir),
        "--json",
        "--cursor",
        page["nextCursor"],
    )
    assert [r["id"] for r in json.loads(out)["runs"]] == [ids["done"]]
    code, out, _ = run_cli(
        capsys, "runs", "list", "--data-dir", str(data_dir), "--status", "succeeded"
    )
    assert code == 0 and ids["done"][:8] in out and ids["paused"][:8] not in out


def test_show_a_stopped_run_tells_its_steps_from_its_events(store, capsys):
    data_dir, ids = store
    code, out, _ = run_cli(
        capsys, "runs", "show", ids["stopped"], "--data-dir", str(data_dir), "--json"
    )
    assert code == 0
    run = json.loads(out)["run"]
    assert run["status"] == "running"
    assert run["steps"]["a"]["status"] == "succeeded" and run["steps"]["a"]["output"] == 3
    assert run["steps"]["pause"]["status"] == "running"  # in flight when the host stopped
    code, out, _ = run_cli(capsys, "runs", "show", ids["done"], "--data-dir", str(data_dir))
    assert code == 0 and "succeeded" in out and '"b": 20' in out


def test_events_from_a_sequence_number(store, capsys):
    data_dir, ids = store
    code, out, _ = run_cli(
        capsys, "runs", "events", ids["done"], "--data-dir", str(data_dir), "--since", "2", "--json"
    )
    events = json.loads(out)["events"]
    assert code == 0 and events[0]["seq"] == 3
    assert [e["seq"] for e in events] == list(range(3, 3 + len(events)))
    assert events[-1]["type"] == "run.succeeded"
    code, out, _ = run_cli(capsys, "runs", "events", ids["done"], "--data-dir", str(data_dir))
    assert "run.created" in out and "step.succeeded" in out


def test_resume_continues_a_stopped_run_here_to_its_end(store, capsys):
    data_dir, ids = store
    code, out, _ = run_cli(
        capsys, "runs", "resume", ids["stopped"], "--data-dir", str(data_dir), "--json"
    )
    assert code == 0
    run = json.loads(out)["run"]
    assert run["status"] == "succeeded" and run["outputs"] == {"b": 30}
    code, out, _ = run_cli(
        capsys, "runs", "events", ids["stopped"], "--data-dir", str(data_dir), "--json"
    )
    kinds = [e["type"] for e in json.loads(out)["events"]]
    assert kinds.count("run.recovered") == 1 and kinds.count("step.succeeded") == 3


def test_cancel_ends_a_run_without_running_more_of_it(store, capsys):
    data_dir, ids = store
    code, out, _ = run_cli(
        capsys, "runs", "cancel", ids["stopped"], "--data-dir", str(data_dir), "--json"
    )
    assert code == 0
    run = json.loads(out)["run"]
    assert run["status"] == "cancelled"
    assert "b" not in run["steps"] or run["steps"]["b"]["status"] != "succeeded"
    code, out, _ = run_cli(
        capsys, "runs", "events", ids["stopped"], "--data-dir", str(data_dir), "--json"
    )
    started = [e["step"] for e in json.loads(out)["events"] if e["type"] == "step.started"]
    assert started == ["a", "pause"]  # nothing started after the host stopped


def test_errors_name_the_run_and_exit_1(store, capsys):
    data_dir, ids = store
    code, _, err = run_cli(capsys, "runs", "show", "nope", "--data-dir", str(data_dir))
    assert code == 1 and "nope" in err and "not found" in err
    code, _, err = run_cli(capsys, "runs", "resume", ids["done"], "--data-dir", str(data_dir))
    assert code == 1 and "succeeded" in err and "resume" in err
    code, _, err = run_cli(capsys, "runs", "cancel", ids["done"], "--data-dir", str(data_dir))
    assert code == 1 and "cancel" in err


# -- against a running host -------------------------------------------------------------------


LISTENING = re.compile(r"listening on (ws://\S+)")


def test_commands_talk_to_the_host_that_holds_the_data_dir(store, tmp_path):
    data_dir, ids = store
    env = dict(os.environ)
    env.pop("PLAIT_TOKEN", None)
    plait_cmd = [sys.executable, "-m", "plait.cli"]
    errlog = tmp_path / "host.stderr"
    with errlog.open("wb") as fh:
        host = subprocess.Popen(
            [*plait_cmd, "serve", "--port", "0", "--data-dir", str(data_dir)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=fh,
        )
    try:
        deadline = time.monotonic() + 20
        while not LISTENING.search(errlog.read_text()):
            assert host.poll() is None and time.monotonic() < deadline, errlog.read_text()
            time.sleep(0.05)

        def runs(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*plait_cmd, "runs", *args, "--data-dir", str(data_dir)],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )

        # The host resumed the stopped run; the paused run stays paused until resumed.
        deadline = time.monotonic() + 10
        while True:
            shown = json.loads(runs("show", ids["stopped"], "--json").stdout)["run"]
            if shown["status"] == "succeeded" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert shown["outputs"] == {"b": 30}
        listed = runs("list", "--json")
        assert listed.returncode == 0, listed.stderr
        statuses = {r["id"]: r["status"] for r in json.loads(listed.stdout)["runs"]}
        assert statuses[ids["paused"]] == "paused"
        resumed = runs("resume", ids["paused"], "--json")
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["run"]["status"] == "waiting"
        cancelled = runs("cancel", ids["paused"], "--json")
        assert cancelled.returncode == 0, cancelled.stderr
        assert json.loads(cancelled.stdout)["run"]["status"] == "cancelled"
        again = runs("cancel", ids["paused"])
        assert again.returncode == 1 and "cancelled" in again.stderr
    finally:
        host.send_signal(signal.SIGINT)
        host.wait(timeout=10)
