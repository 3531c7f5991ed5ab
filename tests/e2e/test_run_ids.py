"""A run id's first characters name the run wherever a run id is taken.

Through a real ``plait serve`` subprocess (every JSON-RPC method taking ``runId``), through the
``plait runs`` command against that host and on a data dir no host holds, and in process. The
runs are made with ids of the test's choosing in real SQLite data dirs, so that prefixes are
shared on purpose: ``abcd1…`` and ``abcd2…`` (``abcd`` is ambiguous, ``abcd1`` is not) and
seven ``eeee…`` runs (an error names five of them, and says there are more).
"""

from __future__ import annotations

import json
import secrets
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect

import plait
from plait.config import HostConfig
from plait.store.sqlite import RUN_IDS_STARTING

from .host_process import HostProcess
from .test_cli_errors import one_error_line
from .test_cli_errors import plait as plait_command

pytestmark = pytest.mark.anyio

GATE = {
    "name": "gate",
    "steps": [{"id": "hold", "wait": "go"}],
    "outputs": {"got": "${steps.hold.output}"},
}
QUICK = {"name": "quick", "steps": [{"id": "a", "transform": "${1 + 1}"}]}
WORKFLOWS = {wf["name"]: json.dumps(wf) for wf in (GATE, QUICK)}
"""The same workflows as files of the host's ``--workflows`` folder (JSON is YAML)."""
UNKNOWN = "0123456789ab"
"""A prefix no run of these tests has (their ids never start with ``0123``)."""


def run_id(prefix: str) -> str:
    """A run id (32 hex digits) that starts with ``prefix``."""
    while True:
        made = prefix + secrets.token_hex(16)[len(prefix) :]
        if not made.startswith("0123"):
            return made


def make_ids() -> dict[str, str]:
    ids = {"abcd1": run_id("abcd1"), "abcd2": run_id("abcd2")}
    ids |= {f"eeee{i}": run_id(f"eeee{i}") for i in range(7)}
    ids |= {name: run_id(name) for name in ("beef", "cafe", "d00d", "face")}
    return ids


GATED = ("beef", "cafe", "d00d", "face")
"""The runs left waiting for the signal ``go``; the others succeeded."""


def build_data_dir(data_dir: Path, ids: dict[str, str]) -> None:
    """A SQLite data dir holding a run of each id: the gated ones waiting, the rest done."""

    async def build() -> None:
        config = HostConfig.model_validate(
            {"host": {"data_dir": str(data_dir)}, "plugins": {"entry_points": False}}
        )
        async with plait.Host(config) as host:
            engine = host.engine
            assert engine is not None
            host.register(GATE)
            host.register(QUICK)
            runs = [
                await engine.start(
                    engine.catalog.get("gate" if name in GATED else "quick"), {}, run_id=rid
                )
                for name, rid in ids.items()
            ]
            with anyio.fail_after(10):
                for run in runs:
                    while run.status not in ("waiting", "succeeded"):
                        await anyio.sleep(0.01)
                    await run.committed()

    anyio.run(build)


@pytest.fixture(scope="module")
def ids() -> dict[str, str]:
    return make_ids()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, ids: dict[str, str]) -> Path:
    """The data dir as built, copied by each user (a host and the offline commands)."""
    data_dir = tmp_path_factory.mktemp("pristine") / "data"
    build_data_dir(data_dir, ids)
    return data_dir


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, pristine: Path) -> Iterator[HostProcess]:
    tmp = tmp_path_factory.mktemp("served")
    shutil.copytree(pristine, tmp / "data")
    process = HostProcess(tmp, workflows=WORKFLOWS)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def offline(tmp_path: Path, pristine: Path) -> Path:
    """A copy of the data dir that no host holds."""
    shutil.copytree(pristine, tmp_path / "data")
    (tmp_path / "plait.toml").write_text("[plugins]\nentry_points = false\n", encoding="utf-8")
    return tmp_path / "data"


async def error_of(host: HostProcess, method: str, params: dict[str, Any]) -> dict[str, Any]:
    reply = await host.request(method, params)
    assert "error" in reply and "result" not in reply, reply
    return dict(reply["error"])


# -- JSON-RPC, through a real host ------------------------------------------------------------


async def test_every_method_taking_a_run_id_takes_a_prefix_and_answers_the_whole_id(
    host: HostProcess, ids: dict[str, str]
):
    beef, cafe = ids["beef"], ids["cafe"]
    got = await host.call("runs/get", {"runId": beef[:8]})
    assert got["run"]["id"] == beef and got["run"]["status"] == "waiting"
    assert (await host.call("runs/get", {"runId": ids["abcd1"][:5]}))["run"]["id"] == ids["abcd1"]
    assert (await host.call("runs/get", {"runId": beef}))["run"]["id"] == beef  # whole ids too
    events = (await host.call("runs/events", {"runId": beef[:4]}))["events"]
    assert events and {e["runId"] for e in events} == {beef}

    async with connect(
        host.url, additional_headers={"Authorization": f"Bearer {host.token}"}, proxy=None
    ) as ws:
        await ws.send(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "runs/subscribe",
                    "params": {"runId": beef[:6], "since": 0},
                }
            )
        )
        with anyio.fail_after(10):
            reply = json.loads(await ws.recv())
            assert "subscription" in reply["result"], reply
            first = json.loads(await ws.recv())  # the backlog: run.created first
        assert first["method"] == "runs/event"
        assert first["params"]["runId"] == beef and first["params"]["seq"] == 1

    assert await host.call("runs/signal", {"runId": beef[:8], "event": "go", "data": 7}) == {}
    waited = await host.call("runs/wait", {"runId": beef[:8], "timeout": 10}, timeout=15)
    assert waited["run"]["id"] == beef and waited["run"]["status"] == "succeeded"
    assert waited["run"]["outputs"] == {"got": 7}

    paused = (await host.call("runs/pause", {"runId": cafe[:8]}))["run"]
    assert paused["id"] == cafe and paused["status"] == "paused"
    resumed = (await host.call("runs/resume", {"runId": cafe[:8]}))["run"]
    assert resumed["id"] == cafe and resumed["status"] == "waiting"
    cancelled = (await host.call("runs/cancel", {"runId": cafe[:8]}))["run"]
    assert cancelled["id"] == cafe and cancelled["status"] == "cancelled"
    refused = await error_of(host, "runs/cancel", {"runId": cafe[:8]})
    assert refused["code"] == -32004 and cafe in refused["message"]  # the whole id, named


METHODS: list[tuple[str, dict[str, Any]]] = [
    ("runs/get", {}),
    ("runs/events", {}),
    ("runs/wait", {"timeout": 1}),
    ("runs/cancel", {}),
    ("runs/pause", {}),
    ("runs/resume", {}),
    ("runs/signal", {"event": "go"}),
    ("runs/subscribe", {}),
]


@pytest.mark.parametrize("method, extra", METHODS, ids=[m for m, _ in METHODS])
async def test_an_ambiguous_prefix_names_the_runs_and_asks_for_more(
    host: HostProcess, ids: dict[str, str], method: str, extra: dict[str, Any]
):
    error = await error_of(host, method, {"runId": "abcd", **extra})
    assert error["code"] == -32002, error
    message = error["message"]
    assert "ambiguous" in message and "more of the id's characters" in message, message
    assert ids["abcd1"] in message and ids["abcd2"] in message, message

    error = await error_of(host, method, {"runId": "eeee", **extra})
    named = [
        rid for name, rid in ids.items() if name.startswith("eeee") and rid in error["message"]
    ]
    assert len(named) == 5 and "more than 5 runs" in error["message"], error


@pytest.mark.parametrize("method, extra", METHODS, ids=[m for m, _ in METHODS])
async def test_an_unknown_or_too_short_prefix_is_not_found(
    host: HostProcess, ids: dict[str, str], method: str, extra: dict[str, Any]
):
    error = await error_of(host, method, {"runId": UNKNOWN, **extra})
    assert error["code"] == -32002 and UNKNOWN in error["message"], error
    assert "not found" in error["message"]
    # Three characters are never taken as a prefix, even of one run only.
    error = await error_of(host, method, {"runId": ids["face"][:3], **extra})
    assert error["code"] == -32002 and "not found" in error["message"], error


# -- plait runs, against the host ---------------------------------------------------------------


def runs_command(*args: str, data_dir: Path, cwd: Path) -> Any:
    return plait_command(
        "runs", *args, "--config", str(cwd / "plait.toml"), "--data-dir", str(data_dir), cwd=cwd
    )


def test_plait_runs_takes_a_prefix_through_the_host(host: HostProcess, ids: dict[str, str]):
    face = ids["face"]
    shown = runs_command("show", face[:8], "--json", data_dir=host.data_dir, cwd=host.tmp)
    assert shown.returncode == 0, shown.stderr
    run = json.loads(shown.stdout)["run"]
    assert run["id"] == face and run["status"] == "waiting" and "host" not in run
    listed = runs_command("events", face[:8], "--json", data_dir=host.data_dir, cwd=host.tmp)
    assert listed.returncode == 0, listed.stderr
    assert {e["runId"] for e in json.loads(listed.stdout)["events"]} == {face}

    ambiguous = runs_command("show", "abcd", data_dir=host.data_dir, cwd=host.tmp)
    one_error_line(
        ambiguous, "ambiguous", ids["abcd1"], ids["abcd2"], "more of the id's characters"
    )
    assert ambiguous.returncode == 1
    unknown = runs_command("cancel", UNKNOWN, data_dir=host.data_dir, cwd=host.tmp)
    one_error_line(unknown, UNKNOWN, "not found")


# -- plait runs, on a data dir no host holds -----------------------------------------------------


def test_plait_runs_reads_a_data_dir_by_prefix(offline: Path, ids: dict[str, str]):
    cwd, face = offline.parent, ids["face"]
    shown = runs_command("show", face[:8], "--json", data_dir=offline, cwd=cwd)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["run"]["id"] == face
    human = runs_command("show", face[:8], data_dir=offline, cwd=cwd)
    assert human.returncode == 0 and f"run {face}" in human.stdout, human.stderr
    events = runs_command("events", face[:5], "--json", data_dir=offline, cwd=cwd)
    assert {e["runId"] for e in json.loads(events.stdout)["events"]} == {face}


def test_plait_runs_controls_a_run_of_a_data_dir_by_prefix(offline: Path, ids: dict[str, str]):
    cwd, face, d00d, quick = offline.parent, ids["face"], ids["d00d"], ids["abcd1"]
    signalled = runs_command("signal", face[:8], "go", "--json", data_dir=offline, cwd=cwd)
    assert signalled.returncode == 0, signalled.stderr
    assert json.loads(signalled.stdout)["run"]["id"] == face
    paused = runs_command("pause", d00d[:8], "--json", data_dir=offline, cwd=cwd)
    assert paused.returncode == 0, paused.stderr
    run = json.loads(paused.stdout)["run"]
    assert run["id"] == d00d and run["status"] == "paused"
    cancelled = runs_command("cancel", d00d[:8], "--json", data_dir=offline, cwd=cwd)
    assert cancelled.returncode == 0, cancelled.stderr
    run = json.loads(cancelled.stdout)["run"]
    assert run["id"] == d00d and run["status"] == "cancelled"
    refused = runs_command("resume", quick[:5], data_dir=offline, cwd=cwd)
    one_error_line(refused, f"cannot resume run {quick}", "succeeded")  # the whole id, named


def test_plait_runs_on_a_data_dir_refuses_an_ambiguous_or_unknown_prefix(
    offline: Path, ids: dict[str, str]
):
    cwd = offline.parent
    ambiguous = runs_command("events", "eeee", data_dir=offline, cwd=cwd)
    line = one_error_line(ambiguous, "ambiguous", "more than 5 runs", "more of the id's characters")
    assert ambiguous.returncode == 1
    assert sum(rid in line for name, rid in ids.items() if name.startswith("eeee")) == 5
    for command in (["cancel", UNKNOWN], ["resume", "abc"]):
        done = runs_command(*command, data_dir=offline, cwd=cwd)
        one_error_line(done, "not found", command[1])
        assert done.returncode == 1


# -- in process: one indexed lookup, and none for a whole id -------------------------------------


def test_the_prefix_lookup_is_a_range_of_the_primary_key(offline: Path):
    with sqlite3.connect(offline / "plait.db") as db:
        plan = " ".join(
            str(row[-1])
            for row in db.execute(f"EXPLAIN QUERY PLAN {RUN_IDS_STARTING}", ("abcd", "abce", 6))
        )
    assert "USING COVERING INDEX sqlite_autoindex_runs_1 (id>? AND id<?)" in plan, plan
    assert "SCAN" not in plan, plan


@pytest.mark.parametrize("durable", [True, False], ids=["sqlite", "memory"])
async def test_a_whole_id_never_asks_the_store_for_prefixes(
    tmp_path: Path, ids: dict[str, str], pristine: Path, durable: bool
):
    data_dir = tmp_path / "data"
    shutil.copytree(pristine, data_dir)
    config = HostConfig.model_validate(
        {
            "host": {"data_dir": str(data_dir) if durable else ":memory:"},
            "plugins": {"entry_points": False},
        }
    )
    async with plait.Host(config, recover_runs=False) as host:
        engine = host.engine
        assert engine is not None
        if not durable:  # the memory store: runs of this process
            host.register(QUICK)
            for name in ("abcd1", "abcd2"):
                await engine.wait(
                    (await engine.start(engine.catalog.get("quick"), {}, run_id=ids[name])).id
                )
        store = engine.store
        asked: list[str] = []
        lookup = store.run_ids_starting

        async def counted(prefix: str, limit: int) -> list[str]:
            asked.append(prefix)
            return await lookup(prefix, limit)

        store.run_ids_starting = counted  # type: ignore[method-assign]
        whole = ids["abcd1"]
        assert (await engine.load_run(whole)).id == whole
        assert [e.run_id for e in await engine.events(whole)][:1] == [whole]
        assert (await engine.kept_run(whole)).id == whole
        assert asked == []
        assert (await engine.load_run(whole[:6])).id == whole
        assert asked == [whole[:6]]
        with pytest.raises(plait.RunNotFound, match="ambiguous"):
            await engine.load_run("abcd")
