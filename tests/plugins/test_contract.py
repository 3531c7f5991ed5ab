"""The plugin contract kept honest (issue 10): wrappers refused at load, observers told only
what the store has kept, with a snapshot they cannot change."""

from __future__ import annotations

import dataclasses
import sqlite3
import types

import pytest

import plait
from plait.plugins import create_plugin_manager

pytestmark = pytest.mark.anyio


def _plugin(name: str, **hooks: object) -> types.SimpleNamespace:
    return types.SimpleNamespace(__name__=name, **hooks)


@pytest.mark.parametrize("option", ["wrapper", "hookwrapper"])
def test_a_wrapper_implementation_is_refused_at_load_naming_the_plugin(option):
    @plait.hookimpl(**{option: True})
    def register_tools(register):
        yield

    pm = create_plugin_manager(
        entry_points=False, extra=[_plugin("wrapping", register_tools=register_tools)]
    )
    [failure] = [f for f in pm.failures if f.plugin == "wrapping"]
    assert failure.stage == "register"
    assert "register_tools" in failure.error and "wrapper" in failure.error
    assert "wrapping" not in {name for name, _ in pm.list_name_plugin()}
    assert pm.registries.tools.get("math.sum") is not None  # the rest loaded as usual


def test_a_wrapper_of_an_observer_hook_is_refused_too():
    @plait.hookimpl(wrapper=True)
    def run_finished(run, outcome):
        yield

    pm = create_plugin_manager(
        entry_points=False, extra=[_plugin("late", run_finished=run_finished)]
    )
    assert [f.plugin for f in pm.failures] == ["late"]
    assert not pm.has_impls("run_finished")


def test_a_plain_implementation_next_to_the_refused_one_is_unaffected():
    calls = []

    @plait.hookimpl
    def run_started(run):
        calls.append(run.id)

    pm = create_plugin_manager(entry_points=False, extra=[_plugin("fine", run_started=run_started)])
    run = plait.run_sync({"name": "w", "steps": [{"id": "a", "transform": 1}]}, pm=pm)
    assert calls == [run.id]


def _status_on_disk(db: str, run_id: str) -> str | None:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
    return None if row is None else row[0]


def _event_on_disk(db: str, run_id: str, kind: str, step: str | None = None) -> bool:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT 1 FROM events WHERE run_id = ? AND type = ? AND step IS ?",
            (run_id, kind, step),
        ).fetchone()
    return row is not None


async def test_observers_hear_only_what_the_store_has_committed(tmp_path):
    """Each observer call finds the change it reports already in the SQLite file."""
    db = str(tmp_path / "data" / "plait.db")
    seen = []

    @plait.hookimpl
    def run_started(run):
        seen.append(("run_started", run.status, _event_on_disk(db, run.id, "run.started")))

    @plait.hookimpl
    def step_finished(run, step, outcome):
        kept = _event_on_disk(db, run.id, f"step.{outcome}", step)
        seen.append(("step_finished", outcome, kept))

    @plait.hookimpl
    def run_finished(run, outcome):
        seen.append(("run_finished", outcome, _status_on_disk(db, run.id)))

    observer = _plugin(
        "observer", run_started=run_started, step_finished=step_finished, run_finished=run_finished
    )
    host = plait.Host(data_dir=tmp_path / "data", plugins=[observer])
    async with host:
        host.register(
            {"name": "w", "steps": [{"id": "a", "transform": 1}, {"id": "b", "transform": 2}]}
        )
        run = await host.wait(await host.start_run("w"))
    assert run.status == "succeeded"
    assert seen[0] == ("run_started", "running", True)
    assert seen.count(("step_finished", "succeeded", True)) == 2
    assert seen[-1] == ("run_finished", "succeeded", "succeeded")


async def test_an_observer_gets_a_snapshot_it_cannot_change():
    got = []

    @plait.hookimpl
    def run_finished(run, outcome):
        got.append(run)
        with pytest.raises(dataclasses.FrozenInstanceError):
            run.status = "failed"
        with pytest.raises(TypeError):
            run.outputs["x"] = "changed"  # a read-only mapping
        with pytest.raises(TypeError):
            run.inputs["n"] = 0

    pm = create_plugin_manager(
        entry_points=False, extra=[_plugin("meddler", run_finished=run_finished)]
    )
    run = await plait.run(
        {
            "name": "w",
            "inputs": {"type": "object", "properties": {"n": {"type": "integer"}}},
            "steps": [{"id": "a", "transform": "${inputs.n}"}],
            "outputs": {"x": "${steps.a.output}"},
        },
        {"n": 5},
        pm=pm,
    )
    [snapshot] = got
    assert isinstance(snapshot, plait.RunInfo)
    assert (snapshot.id, snapshot.status, dict(snapshot.outputs)) == (run.id, "succeeded", {"x": 5})
    assert run.outputs == {"x": 5} and run.inputs == {"n": 5}  # the run itself is untouched
