"""``plait runs`` where no host is: outside the project, and after the host died.

The real command runs in a temporary working directory. Outside a project (no ``.plait/``, or a
``--config``/``--data-dir`` naming a data dir that does not exist) every ``plait runs`` command
fails with one line naming the absolute data dir it looked at and what to do, and creates
nothing. After a host is killed (SIGKILL) with a run waiting for a signal and one in a long
delay, ``plait runs show`` and ``plait runs list`` read the data dir and say that those runs'
host is not running, keeping the stored status; once a host holds the data dir again, the same
commands show the status as it is.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from .host_process import HostProcess
from .test_cli_errors import one_error_line
from .test_cli_errors import plait as plait_command

pytestmark = pytest.mark.anyio

WORKFLOWS = {
    "gate": "name: gate\nsteps:\n  - {id: hold, wait: go}\n",
    "slow": "name: slow\nsteps:\n  - {id: nap, delay: 600}\n",
    "quick": 'name: quick\nsteps:\n  - {id: a, transform: "${1 + 1}"}\n',
}
COMMANDS = [
    ["list"],
    ["list", "--json"],
    ["show", "abcd1234"],
    ["events", "abcd1234"],
    ["cancel", "abcd1234"],
    ["pause", "abcd1234"],
    ["resume", "abcd1234"],
    ["signal", "abcd1234", "go"],
]


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr + done.stdout, done.stderr


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- outside the project ------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_outside_the_project_every_runs_command_names_the_data_dir_and_makes_none(
    tmp_path: Path, command: list[str]
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = plait_command("runs", *command, cwd=elsewhere)
    looked_at = elsewhere.resolve() / ".plait"
    needles = ("no plait.toml", "--data-dir", "--config", "--url")
    line = one_error_line(done, f"no plait data dir at {looked_at} ", *needles)
    assert "project" in line
    assert done.returncode == 2 and done.stdout == ""
    assert files_under(elsewhere) == []  # nothing made: no .plait, no plait.db


def test_a_config_or_data_dir_naming_a_missing_data_dir_says_which(tmp_path: Path):
    project = tmp_path / "project"
    project.mkdir()
    config = project / "plait.toml"
    config.write_text('[host]\ndata_dir = "state"\n[plugins]\nentry_points = false\n')
    other = tmp_path / "other"
    other.mkdir()
    # From another directory: the relative data_dir of the config is taken from there.
    done = plait_command("runs", "list", "--config", str(config), cwd=other)
    one_error_line(done, f"no plait data dir at {other.resolve() / 'state'} ", str(config))
    # A plait.toml of the directory, without data_dir: the default, said so.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "plait.toml").write_text("[plugins]\nentry_points = false\n")
    done = plait_command("runs", "show", "abcd1234", cwd=bare)
    one_error_line(done, f"{bare.resolve() / '.plait'} ", "plait.toml sets no data_dir")
    # --data-dir wins over the config, and is named as the source.
    missing = tmp_path / "gone" / "data"
    done = plait_command("runs", "list", "--config", str(config), "--data-dir", str(missing))
    one_error_line(done, f"no plait data dir at {missing} (from --data-dir)")
    assert not (tmp_path / "gone").exists() and not (other / "state").exists()
    assert files_under(project) == ["plait.toml"]


# -- after the host died --------------------------------------------------------------------------


async def until_status(host: HostProcess, run_id: str, status: str) -> dict[str, Any]:
    """The run once ``runs/get`` shows ``status`` (within 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        run = (await host.call("runs/get", {"runId": run_id}))["run"]
        if run["status"] == status:
            return dict(run)
        assert time.monotonic() < deadline, run
        await anyio.sleep(0.02)


def runs_here(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``plait runs ...`` in the project's directory: its plait.toml and .plait/ found there."""
    done = plait_command("runs", *args, cwd=project)
    no_traceback(done)
    return done


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A project whose host was killed (SIGKILL) with a run waiting for a signal, one in a
    long delay, one paused and one finished; the runs' ids by workflow."""
    project = tmp_path_factory.mktemp("project")
    host = HostProcess(project, workflows=WORKFLOWS, data_dir=project / ".plait")

    async def make_runs() -> dict[str, str]:
        ids = {
            name: (await host.call("runs/start", {"workflow": workflow}))["runId"]
            for name, workflow in (("gate", "gate"), ("slow", "slow"), ("quick", "quick"))
        }
        ids["held"] = (await host.call("runs/start", {"workflow": "gate"}))["runId"]
        await until_status(host, ids["held"], "waiting")
        await host.call("runs/pause", {"runId": ids["held"]})
        await until_status(host, ids["gate"], "waiting")
        await until_status(host, ids["slow"], "running")
        assert (await host.wait_run(ids["quick"]))["status"] == "succeeded"
        return ids

    host.start()
    try:
        ids = anyio.run(make_runs)
    finally:
        host.kill()  # SIGKILL: the host dies with its runs in flight
    assert host.process is not None and host.process.returncode == -9
    return project, ids


def test_show_of_a_run_whose_host_died_says_so(crashed: tuple[Path, dict[str, str]]):
    project, ids = crashed
    gate, slow = ids["gate"], ids["slow"]
    shown = runs_here(project, "show", gate[:8])  # by prefix, offline
    assert shown.returncode == 0, shown.stderr
    out = words(shown.stdout)
    assert f"run {gate} gate v1 waiting (host stopped)" in out, out
    assert "its host is not running (it stopped or crashed)" in out, out
    assert "start the host (`plait serve`) to continue it" in out, out
    assert f"; `plait runs signal {gate} EVENT` signals it meanwhile" in out, out
    shown = runs_here(project, "show", slow[:8])
    out = words(shown.stdout)
    assert shown.returncode == 0 and "running (host stopped)" in out, out
    assert f"or `plait runs resume {slow}` to finish it here" in out, out
    as_json = runs_here(project, "show", gate[:8], "--json")
    run = json.loads(as_json.stdout)["run"]
    assert as_json.returncode == 0 and run["status"] == "waiting" and run["host"] == "stopped"


def test_list_of_runs_whose_host_died_marks_them(crashed: tuple[Path, dict[str, str]]):
    project, ids = crashed
    gate, slow, quick, held = ids["gate"], ids["slow"], ids["quick"], ids["held"]
    listed = runs_here(project, "list")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[1]: line for line in listed.stdout.splitlines() if line.startswith("│")}
    assert "waiting (host stopped)" in rows[gate] and "running (host stopped)" in rows[slow]
    # finished, or paused on purpose: as they are
    assert "succeeded" in rows[quick] and "paused" in rows[held]
    assert "host stopped" not in rows[quick] + rows[held]
    assert "no host is running these runs" in words(listed.stdout), listed.stdout
    listed = runs_here(project, "list", "--json")
    runs = {r["id"]: r for r in json.loads(listed.stdout)["runs"]}
    order = (gate, slow, quick, held)
    assert [runs[i]["status"] for i in order] == ["waiting", "running", "succeeded", "paused"]
    assert [runs[i].get("host") for i in order] == ["stopped", "stopped", None, None]


async def test_runs_of_a_live_host_show_their_status_as_it_is(
    crashed: tuple[Path, dict[str, str]], tmp_path: Path
):
    project, ids = crashed
    shutil.copytree(project / ".plait", tmp_path / ".plait")
    host = HostProcess(tmp_path, workflows=WORKFLOWS, data_dir=tmp_path / ".plait")
    host.start()  # it resumes the runs the killed host left
    try:
        await until_status(host, ids["gate"], "waiting")
        shown = runs_here(tmp_path, "show", ids["gate"][:8], "--json")
        run = json.loads(shown.stdout)["run"]
        assert shown.returncode == 0 and run["status"] == "waiting" and "host" not in run
        shown = runs_here(tmp_path, "show", ids["gate"][:8])
        assert "waiting" in shown.stdout and "host stopped" not in shown.stdout
        assert "not running" not in shown.stdout
        listed = runs_here(tmp_path, "list")
        assert listed.returncode == 0 and "host stopped" not in listed.stdout, listed.stdout
    finally:
        host.stop()


async def test_reading_runs_after_a_crash_leaves_the_crash_for_the_next_host(
    crashed: tuple[Path, dict[str, str]], tmp_path: Path
):
    """A ``plait runs`` read between a crash and the next start must not erase the evidence of
    the crash: the next host still resumes carefully and counts the crash against the steps
    that were in flight."""
    project, ids = crashed
    shutil.copytree(project / ".plait", tmp_path / ".plait")
    assert runs_here(tmp_path, "show", ids["slow"][:8]).returncode == 0
    assert runs_here(tmp_path, "list").returncode == 0
    host = HostProcess(tmp_path, workflows=WORKFLOWS, data_dir=tmp_path / ".plait")
    host.start()
    try:
        await until_status(host, ids["slow"], "running")
        events = (await host.call("runs/events", {"runId": ids["slow"]}))["events"]
        recovered = [e["data"] for e in events if e["type"] == "run.recovered"]
        assert recovered and recovered[-1]["crash"] is True, recovered
    finally:
        host.stop()
