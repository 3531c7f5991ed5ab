"""Schedules: cron and interval fires on a clock the tests drive, overlap and catch-up policies,
pause/resume/trigger, workflow-declared schedules, durability and validation.

The scheduler (``plait.engine.schedules.Schedules``) runs on the real engine with a memory or
SQLite store; only its clock is the test's (:class:`FakeClock`). A "restart" leaves the
scheduler (and, with SQLite, the engine and store) and enters a new one over the same store
with the clock moved on, as a host that was down meanwhile would find it.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest
from ruamel.yaml import YAML

import plait
from plait.definition.loader import load
from plait.definition.models import ScheduleDef
from plait.engine.engine import Engine
from plait.engine.schedules import Cadence, Schedules, fire_key, iso_time
from plait.errors import DefinitionError
from plait.host.compose import build_engine, build_schedules
from plait.rpc.errors import InvalidParams, RpcError
from plait.state.run_store import RunStore
from plait.store.memory import MemoryStore
from plait.store.postgres import PostgresStore
from plait.store.sqlite import SqliteStore
from plait.testing import Client, memory_config, started_host

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0
"""2023-11-14T22:13:20Z: a multiple of 20 and 40 seconds (intervals here divide it)."""

QUICK = {
    "name": "quick",
    "inputs": {
        "type": "object",
        "properties": {"n": {"type": "integer"}, "tag": {"type": "string", "default": "x"}},
        "required": ["n"],
    },
    "steps": [{"id": "double", "transform": "${inputs.n * 2}"}],
    "outputs": {"y": "${steps.double.output}"},
}
GATE = {
    "name": "gate",
    "steps": [{"id": "hold", "wait": "go"}],
}


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self, t: float = T0) -> None:
        self.t = t
        self.waiters: list[tuple[float, anyio.Event]] = []

    def now(self) -> float:
        return self.t

    async def sleep_until(self, when: float) -> None:
        if when <= self.t:
            await anyio.sleep(0)
            return
        event = anyio.Event()
        entry = (when, event)
        self.waiters.append(entry)
        try:
            await event.wait()
        finally:
            self.waiters.remove(entry)

    def set(self, t: float) -> None:
        self.t = t
        for when, event in list(self.waiters):
            if when <= t:
                event.set()


class World:
    """An engine with QUICK and GATE registered, a store, and schedules on a fake clock."""

    def __init__(self, store: RunStore, clock: FakeClock) -> None:
        self.store = store
        self.clock = clock
        self.engine: Engine
        self.schedules: Schedules

    async def at(self, t: float) -> None:
        """Let time pass until ``t``: the clock stops at every wake-up the scheduler asked
        for on the way, as the wall clock would, and everything due is handled."""
        await self.schedules.settled()
        while True:
            due = [when for when, _ in self.clock.waiters if when <= t]
            if not due:
                break
            self.clock.set(min(due))
            await self.schedules.settled()
        self.clock.set(t)
        await self.schedules.settled()

    async def put(self, name: str, workflow: str = "quick", **spec: Any) -> dict[str, Any]:
        spec.setdefault("inputs", {"n": 1} if workflow == "quick" else {})
        view = await self.schedules.put(
            ScheduleDef(name=name, **spec), workflow=workflow, version=spec.pop("version", None)
        )
        await self.schedules.settled()
        return view

    async def runs(self, workflow: str | None = None) -> list[plait.Run]:
        """Every run kept, oldest first, with its idempotency key."""
        page = await self.engine.list_runs(workflow=workflow, limit=500)
        return [await self.engine.load_run(r["id"]) for r in reversed(page.runs)]

    async def keys(self, workflow: str | None = None) -> list[str]:
        return [r.idempotency_key or "" for r in await self.runs(workflow)]

    async def signal_all(self) -> None:
        """End every running GATE run."""
        for run in list(self.engine.runs.values()):
            if run.workflow == "gate" and not run.done:
                await self.engine.signal(run.id, "go")
        for run in list(self.engine.runs.values()):
            await run.wait()
        await self.schedules.settled()


@asynccontextmanager
async def world(
    tmp_path: Path | None = None,
    *,
    store: RunStore | None = None,
    clock: FakeClock | None = None,
    pg_url: str | None = None,
) -> AsyncIterator[World]:
    """Engine, store and schedules; with ``tmp_path``, a SQLite store in it (or, with
    ``pg_url``, a PostgreSQL store whose host id is kept there)."""
    async with AsyncExitStack() as stack:
        if store is None and tmp_path is not None:
            (tmp_path / "data").mkdir(exist_ok=True)
            durable = (
                SqliteStore(tmp_path / "data")
                if pg_url is None
                else PostgresStore(pg_url, data_dir=tmp_path / "data")
            )
            store = await stack.enter_async_context(durable)
        w = World(store or MemoryStore(), clock or FakeClock())
        config = memory_config()
        w.engine = build_engine(config, config.plugin_manager(), store=w.store)
        await stack.enter_async_context(w.engine)
        for wf in (QUICK, GATE):
            w.engine.register(wf)
        await w.engine.recover()
        w.schedules = build_schedules(w.engine, clock=w.clock)
        await w.schedules.__aenter__()
        try:
            await w.schedules.settled()
            yield w
        finally:  # the one running now (a test may have restarted it)
            await w.schedules.__aexit__(None, None, None)


def nominal(schedules: dict[str, Any]) -> list[str]:
    return [r["scheduledAt"] for r in reversed(schedules["lastRuns"])]


# -- when fires happen ------------------------------------------------------------------------


def cadence(**spec: Any) -> Cadence:
    return Cadence(ScheduleDef(name="c", **spec), "c")


def local_fires(c: Cadence, start: datetime, count: int) -> list[str]:
    t, out = start.timestamp(), []
    for _ in range(count):
        found = c.after(t)
        assert found is not None
        t = found
        out.append(datetime.fromtimestamp(t, c.zone).isoformat())
    return out


def test_a_daily_cron_time_that_dst_skips_fires_at_the_first_time_that_exists() -> None:
    c = cadence(cron="30 2 * * *", timezone="Europe/Berlin")
    start = datetime(2024, 3, 30, 12, tzinfo=ZoneInfo("Europe/Berlin"))
    assert local_fires(c, start, 3) == [
        "2024-03-31T03:00:00+02:00",  # 02:30 does not exist that night
        "2024-04-01T02:30:00+02:00",
        "2024-04-02T02:30:00+02:00",
    ]


def test_a_daily_cron_time_that_dst_repeats_fires_once() -> None:
    c = cadence(cron="30 2 * * *", timezone="Europe/Berlin")
    start = datetime(2024, 10, 26, 12, tzinfo=ZoneInfo("Europe/Berlin"))
    assert local_fires(c, start, 3) == [
        "2024-10-27T02:30:00+02:00",  # and not again at 02:30+01:00
        "2024-10-28T02:30:00+01:00",
        "2024-10-29T02:30:00+01:00",
    ]
    # walking back gives the same times: catch-up after a restart sees the same fires
    last = datetime(2024, 10, 29, 2, 30, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    before = c.before(last)
    assert (
        before is not None
        and c.before(before) == datetime.fromisoformat("2024-10-27T02:30:00+02:00").timestamp()
    )


def test_an_hourly_cron_fires_every_hour_that_passes_across_dst() -> None:
    c = cadence(cron="0 * * * *", timezone="Europe/Berlin")
    start = datetime(2024, 10, 27, 0, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    assert local_fires(c, start, 4) == [
        "2024-10-27T01:00:00+02:00",
        "2024-10-27T02:00:00+02:00",
        "2024-10-27T02:00:00+01:00",
        "2024-10-27T03:00:00+01:00",
    ]


def test_six_cron_fields_put_seconds_first_and_time_zones_shift_fires() -> None:
    c = cadence(cron="15 0 9 * * *", timezone="America/New_York")
    first = c.after(datetime(2024, 7, 1, 12, tzinfo=ZoneInfo("UTC")).timestamp())
    assert first is not None and iso_time(first) == "2024-07-01T13:00:15Z"  # 09:00:15 EDT
    utc = cadence(cron="0 9 * * *")
    assert iso_time(utc.after(T0) or 0) == "2023-11-15T09:00:00Z"


def test_intervals_are_multiples_of_their_seconds_since_the_epoch() -> None:
    c = cadence(every=40)
    assert c.after(T0) == T0 + 40 and c.after(T0 - 0.5) == T0
    assert c.at_or_before(T0) == T0 and c.before(T0) == T0 - 40
    assert iso_time(cadence(every=1.5).after(10.0) or 0) == "1970-01-01T00:00:10.500Z"


def test_jitter_delays_each_fire_by_the_same_amount_on_every_host() -> None:
    a, b = cadence(every=60, jitter=30), cadence(every=60, jitter=30)
    delays = [a.jitter(T0 + 60 * i) for i in range(20)]
    assert delays == [b.jitter(T0 + 60 * i) for i in range(20)]
    assert all(0 <= d < 30 for d in delays) and len(set(delays)) == 20
    assert cadence(every=60).jitter(T0) == 0


# -- fires and runs ---------------------------------------------------------------------------


async def test_an_interval_schedule_starts_one_run_per_fire_keyed_by_its_time() -> None:
    async with world() as w:
        view = await w.put("tick", every=20, inputs={"n": 3})
        assert view["next"][0]["scheduledAt"] == iso_time(T0 + 20)
        await w.at(T0 + 19.9)
        assert await w.runs() == []
        await w.at(T0 + 20)
        await w.at(T0 + 40.5)
        runs = await w.runs()
        assert [r.idempotency_key for r in runs] == [
            fire_key("tick", T0 + 20),
            fire_key("tick", T0 + 40),
        ]
        assert fire_key("tick", T0 + 20) == "schedule:tick:2023-11-14T22:13:40Z"
        assert all(r.inputs == {"n": 3, "tag": "x"} for r in runs)
        view = await w.schedules.view("tick")
        assert nominal(view) == [iso_time(T0 + 20), iso_time(T0 + 40)]
        assert [r["status"] for r in view["lastRuns"]] == ["succeeded", "succeeded"]
        assert view["next"][0]["scheduledAt"] == iso_time(T0 + 60)


async def test_a_cron_schedule_fires_in_its_time_zone() -> None:
    start = datetime(2024, 3, 30, 12, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    async with world(clock=FakeClock(start)) as w:
        view = await w.put("nightly", cron="30 2 * * *", timezone="Europe/Berlin")
        assert [n["scheduledAt"] for n in view["next"][:2]] == [
            "2024-03-31T01:00:00Z",  # 03:00 CEST: 02:30 does not exist that night
            "2024-04-01T00:30:00Z",
        ]
        await w.at(start + 86400 * 2)
        assert await w.keys() == [
            "schedule:nightly:2024-03-31T01:00:00Z",
            "schedule:nightly:2024-04-01T00:30:00Z",
        ]


async def test_jitter_holds_a_fire_back_and_keeps_its_scheduled_time_as_key() -> None:
    async with world() as w:
        await w.put("spread", every=40, jitter=30)
        delay = Cadence(ScheduleDef(name="spread", every=40, jitter=30), "spread").jitter(T0 + 40)
        assert delay > 0.5
        await w.at(T0 + 40 + delay - 0.25)
        assert await w.runs() == []
        await w.at(T0 + 40 + delay)
        assert await w.keys() == [fire_key("spread", T0 + 40)]
        view = await w.schedules.view("spread")
        assert view["next"][0]["scheduledAt"] == iso_time(T0 + 80)


# -- overlap ----------------------------------------------------------------------------------


async def test_overlap_skip_starts_nothing_while_the_previous_run_goes_on() -> None:
    async with world() as w:
        await w.put("s", "gate", every=20)
        await w.at(T0 + 20)
        await w.at(T0 + 40)
        await w.at(T0 + 60)
        assert await w.keys() == [fire_key("s", T0 + 20)]
        notes = (await w.schedules.view("s"))["notes"]
        assert [(n["outcome"], n["scheduledAt"]) for n in notes] == [
            ("skipped", iso_time(T0 + 60)),
            ("skipped", iso_time(T0 + 40)),
        ]
        await w.signal_all()
        await w.at(T0 + 80)
        assert len(await w.keys()) == 2


async def test_overlap_buffer_one_keeps_one_fire_and_starts_it_when_the_run_ends() -> None:
    async with world() as w:
        await w.put("b", "gate", every=20, overlap="buffer_one")
        await w.at(T0 + 20)
        await w.at(T0 + 40)  # buffered
        await w.at(T0 + 60)  # dropped: one is buffered already
        assert await w.keys() == [fire_key("b", T0 + 20)]
        view = await w.schedules.view("b")
        assert view["buffered"] == iso_time(T0 + 40)
        await w.signal_all()  # the first ends: the buffered fire starts at once
        await w.schedules.settled()
        assert await w.keys() == [fire_key("b", T0 + 20), fire_key("b", T0 + 40)]
        assert (await w.schedules.view("b"))["buffered"] is None


async def test_overlap_allow_starts_every_fire() -> None:
    async with world() as w:
        await w.put("a", "gate", every=20, overlap="allow")
        for i in (1, 2, 3):
            await w.at(T0 + 20 * i)
        assert await w.keys() == [fire_key("a", T0 + 20 * i) for i in (1, 2, 3)]
        assert len((await w.schedules.view("a"))["running"]) == 3


async def test_overlap_cancel_previous_cancels_the_running_run_and_starts() -> None:
    async with world() as w:
        await w.put("c", "gate", every=20, overlap="cancel_previous")
        await w.at(T0 + 20)
        await w.at(T0 + 40)
        first, second = await w.runs()
        await first.wait() if first.id in w.engine.runs else None
        assert (await w.engine.load_run(first.id)).status == "cancelled"
        assert second.status in ("running", "waiting")
        view = await w.schedules.view("c")
        assert view["running"] == [second.id]
        assert [r["status"] for r in view["lastRuns"]][1] == "cancelled"


# -- catch-up ---------------------------------------------------------------------------------


async def restart(w: World, t: float) -> None:
    """Stop the scheduler, move the clock to ``t`` (the host was down), start a new one."""
    await w.schedules.__aexit__(None, None, None)
    w.clock.set(t)
    w.schedules = build_schedules(w.engine, clock=w.clock)
    await w.schedules.__aenter__()
    await w.schedules.settled()


@pytest.mark.parametrize(
    ("catchup", "extra", "started"),
    [
        ("none", {}, []),
        ("latest", {}, [5]),
        ("all", {}, [1, 2, 3, 4, 5]),
        ("all", {"max_catchup": 2}, [4, 5]),
        ("all", {"catchup_window": 50}, [3, 4, 5]),
        ("latest", {"catchup_window": 5}, []),
    ],
)
async def test_catch_up_after_the_host_was_down(
    catchup: str, extra: dict[str, Any], started: list[int]
) -> None:
    async with world() as w:
        await w.put("k", every=20, overlap="allow", catchup=catchup, **extra)
        await restart(w, T0 + 110)  # down through the fires at +20 ... +100
        assert await w.keys() == [fire_key("k", T0 + 20 * i) for i in started]
        view = await w.schedules.view("k")
        assert view["next"][0]["scheduledAt"] == iso_time(T0 + 120)
        if len(started) < 5:
            missed = [n for n in view["notes"] if n["outcome"] == "missed"]
            assert missed and missed[0]["since"] == iso_time(T0 + 20)
        await w.at(T0 + 120)  # and on it goes, on time
        assert (await w.keys())[-1] == fire_key("k", T0 + 120)


@pytest.mark.parametrize("catchup", ["none", "latest"])
async def test_a_stalled_host_starts_fires_under_a_minute_late_and_misses_older_ones(
    catchup: str,
) -> None:
    async with world() as w:
        await w.put("k", every=20, catchup=catchup, overlap="allow")
        w.clock.set(T0 + 130)  # the event loop was held for two minutes
        await w.schedules.settled()
        assert await w.keys() == [fire_key("k", T0 + t) for t in (80, 100, 120)]
        (missed,) = (await w.schedules.view("k"))["notes"]
        assert missed["outcome"] == "missed" and missed["scheduledAt"] == iso_time(T0 + 60)


async def test_a_restart_right_after_a_fire_does_not_start_it_twice() -> None:
    async with world() as w:
        await w.put("k", every=20, catchup="all", overlap="allow")
        (before,) = await w.store.schedules()
        await w.at(T0 + 20)
        assert await w.keys() == [fire_key("k", T0 + 20)]
        # the host died after the run was kept but before the schedule's state was
        w.store.put_schedule("k", before["spec"], before["state"])
        await restart(w, T0 + 30)
        assert await w.keys() == [fire_key("k", T0 + 20)]
        view = await w.schedules.view("k")
        assert nominal(view) == [iso_time(T0 + 20)]
        await w.at(T0 + 40)
        assert await w.keys() == [fire_key("k", T0 + 20), fire_key("k", T0 + 40)]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_schedules_and_their_state_outlive_a_restart_of_a_durable_host(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("pg_url") if kind == "postgres" else None
    clock = FakeClock()
    async with world(tmp_path, clock=clock, pg_url=url) as w:
        await w.put("kept", every=20, catchup="all", overlap="buffer_one")
        await w.put("idle", cron="0 4 * * *", timezone="Asia/Tokyo")
        await w.schedules.pause("idle")
        await w.at(T0 + 20)
        run_id = (await w.runs())[0].id
    clock.set(T0 + 45)  # down at +40
    async with world(tmp_path, clock=clock, pg_url=url) as w:
        assert w.schedules.names() == ["idle", "kept"]
        idle = await w.schedules.view("idle")
        assert idle["paused"] and idle["next"] == [] and idle["timezone"] == "Asia/Tokyo"
        kept = await w.schedules.view("kept")
        assert kept["lastRuns"][-1] == {
            "scheduledAt": iso_time(T0 + 20),
            "runId": run_id,
            "status": "succeeded",
        }
        assert await w.keys() == [fire_key("kept", T0 + 20), fire_key("kept", T0 + 40)]


# -- pause, resume, trigger, delete ----------------------------------------------------------


async def test_a_paused_schedule_fires_nothing_and_resumes_without_catching_up() -> None:
    async with world() as w:
        await w.put("p", every=20, catchup="all")
        view = await w.schedules.pause("p")
        assert view["paused"] and view["nextAt"] is None
        await w.at(T0 + 100)
        assert await w.runs() == []
        view = await w.schedules.resume("p")
        assert not view["paused"] and view["next"][0]["scheduledAt"] == iso_time(T0 + 120)
        await w.at(T0 + 120)
        assert await w.keys() == [fire_key("p", T0 + 120)]


async def test_trigger_starts_a_run_now_with_its_own_key_even_while_paused() -> None:
    async with world() as w:
        await w.put("t", every=3600)
        await w.schedules.pause("t")
        w.clock.set(T0 + 12.25)
        fired = await w.schedules.trigger("t")
        assert fired["outcome"] == "started" and fired["scheduledAt"] == iso_time(T0 + 12.25)
        (run,) = await w.runs()
        assert run.id == fired["runId"]
        assert run.idempotency_key == "schedule:t:trigger:2023-11-14T22:13:32.250Z"
        view = await w.schedules.view("t")
        assert view["lastRuns"][0]["trigger"] is True


async def test_trigger_follows_the_overlap_policy_unless_told_otherwise() -> None:
    async with world() as w:
        await w.put("g", "gate", every=3600)
        assert (await w.schedules.trigger("g"))["outcome"] == "started"
        w.clock.set(T0 + 1)
        assert (await w.schedules.trigger("g"))["outcome"] == "skipped"
        w.clock.set(T0 + 2)
        assert (await w.schedules.trigger("g", overlap="allow"))["outcome"] == "started"
        assert len(await w.runs()) == 2


async def test_delete_removes_a_schedule_and_its_runs_go_on() -> None:
    async with world() as w:
        await w.put("d", "gate", every=20)
        await w.at(T0 + 20)
        await w.schedules.delete("d")
        assert w.schedules.names() == [] and await w.store.schedules() == []
        await w.at(T0 + 60)
        (run,) = await w.runs()
        assert run.status in ("running", "waiting")


# -- workflow files ---------------------------------------------------------------------------


DECLARED = """\
name: report
inputs: {type: object, properties: {day: {type: string}}, required: [day]}
steps: [{id: say, transform: "${inputs.day}"}]
schedules:
  - {name: daily, cron: "0 6 * * *", timezone: Europe/Paris, inputs: {day: today}}
  - {name: often, every: 20, inputs: {day: now}, overlap: allow}
"""


async def test_schedules_of_a_workflow_follow_its_registered_version() -> None:
    async with world() as w:
        w.engine.register(DECLARED)
        w.schedules.sync_workflow("report")
        assert w.schedules.names() == ["report/daily", "report/often"]
        view = await w.schedules.view("report/often")
        assert view["origin"] == "workflow" and view["workflow"] == "report"
        await w.at(T0 + 20)
        assert await w.keys("report") == [fire_key("report/often", T0 + 20)]
        # the API does not change or remove what a workflow declares
        with pytest.raises(plait.PlaitError, match="declared by workflow 'report'"):
            await w.schedules.delete("report/often")
        # a new version without one of them: it goes, the other stays as it was
        w.engine.register(DECLARED.split("  - {name: often")[0])
        w.schedules.sync_workflow("report")
        assert w.schedules.names() == ["report/daily"]
        await w.at(T0 + 40)
        assert len(await w.keys("report")) == 1


def test_a_workflow_file_with_bad_schedules_names_every_field_and_line() -> None:
    text = """\
name: bad
inputs: {type: object, properties: {n: {type: integer}}, required: [n]}
steps: [{id: a, transform: 1}]
schedules:
  - {name: c, cron: "61 * * * *", timezone: Mars/Olympus, inputs: {n: 1}}
  - {name: p, every: 10, overlap: sometimes, catchup: maybe, inputs: {n: 1}}
  - {name: t, cron: "* * *", inputs: {n: 1}}
"""
    with pytest.raises(DefinitionError) as caught:
        load(text, text_only=True)
    where = {(i.path, i.line) for i in caught.value.issues}
    assert where == {
        ("schedules[0].cron", 5),
        ("schedules[0].timezone", 5),
        ("schedules[1].overlap", 6),
        ("schedules[1].catchup", 6),
        ("schedules[2].cron", 7),
    }
    text = """\
name: bad
inputs: {type: object, properties: {n: {type: integer}}, required: [n]}
steps: [{id: a, transform: 1}]
schedules:
  - {name: x, every: 10, inputs: {n: "one"}}
  - {name: x, every: 10}
"""
    with pytest.raises(DefinitionError) as caught:
        load(text, text_only=True)
    said = {i.path: i.message for i in caught.value.issues}
    assert set(said) == {"schedules[0].inputs", "schedules[1].name", "schedules[1].inputs"}
    assert "'one' is not of type 'integer'" in said["schedules[0].inputs"]
    assert "duplicate schedule name 'x'" in said["schedules[1].name"]
    assert "'n' is a required property" in said["schedules[1].inputs"]


# -- the API ----------------------------------------------------------------------------------


async def test_the_schedules_methods_over_json_rpc() -> None:
    async with started_host(workflows=[QUICK]) as host, Client(host) as client:
        put = await client.call(
            "schedules/put", name="hourly", workflow="quick", cron="0 * * * *", inputs={"n": 2}
        )
        assert put["schedule"]["name"] == "hourly" and put["schedule"]["cron"] == "0 * * * *"
        listed = await client.call("schedules/list")
        assert [s["name"] for s in listed["schedules"]] == ["hourly"]
        assert (await client.call("schedules/pause", name="hourly"))["schedule"]["paused"]
        fired = await client.call("schedules/trigger", name="hourly")
        done = await client.call("runs/wait", runId=fired["runId"])
        assert done["run"]["outputs"] == {"y": 4}
        got = await client.call("schedules/get", name="hourly", next=3)
        assert got["schedule"]["lastRuns"][0]["status"] == "succeeded"
        assert got["schedule"]["next"] == []  # paused
        resumed = await client.call("schedules/resume", name="hourly")
        assert len(resumed["schedule"]["next"]) == 5
        assert await client.call("schedules/delete", name="hourly") == {}
        assert (await client.call("schedules/list"))["schedules"] == []


@pytest.mark.parametrize(
    ("params", "field", "said"),
    [
        ({"cron": "0 25 * * *"}, "cron", "not a valid cron expression"),
        ({"cron": "0 * * *"}, "cron", "has 4"),
        ({"cron": "0 * * * *", "timezone": "Europe/Atlantis"}, "timezone", "unknown time zone"),
        ({"every": 60, "workflow": "nope"}, "workflow", "nope"),
        ({"every": 60, "version": 7}, "version", "version 7"),
        ({"every": 60, "inputs": {"n": "two"}}, "inputs", "'two' is not of type 'integer'"),
        ({"every": 60, "inputs": {}}, "inputs", "'n' is a required property"),
        ({"every": 60, "overlap": "queue"}, "overlap", "'buffer_one'"),
        ({"every": 60, "catchup": "some"}, "catchup", "'latest'"),
        ({"every": 60, "catchup_window": 0}, "catchup_window", "greater than 0"),
        ({"every": 60, "cron": "* * * * *"}, "params", "exactly one of cron"),
        ({}, "params", "exactly one of cron"),
    ],
)
async def test_an_invalid_schedule_is_refused_naming_the_field_and_changes_nothing(
    params: dict[str, Any], field: str, said: str
) -> None:
    async with started_host(workflows=[QUICK]) as host, Client(host) as client:
        await client.call("schedules/put", name="keep", workflow="quick", every=30, inputs={"n": 1})
        before = await client.call("schedules/get", name="keep")
        request = {"name": "keep", "workflow": "quick", "inputs": {"n": 1}} | params
        with pytest.raises(InvalidParams) as caught:
            await client.call("schedules/put", **request)
        assert caught.value.code == -32602
        problems = caught.value.data["problems"]
        assert [p["field"] for p in problems] == [field], problems
        assert said in problems[0]["message"]
        assert await client.call("schedules/get", name="keep") == before


async def test_unknown_schedules_are_refused_naming_the_name() -> None:
    async with started_host(workflows=[QUICK]) as host, Client(host) as client:
        for method in ("get", "pause", "resume", "trigger", "delete"):
            with pytest.raises(RpcError) as caught:
                await client.call(f"schedules/{method}", name="ghost")
            assert caught.value.code == -32602
            assert caught.value.data["problems"][0]["field"] == "name"


async def test_a_workflow_put_over_the_api_registers_its_schedules() -> None:
    async with started_host() as host, Client(host) as client:
        await client.call("workflows/put", source=DECLARED)
        listed = await client.call("schedules/list")
        assert [s["name"] for s in listed["schedules"]] == ["report/daily", "report/often"]
        await client.call("workflows/delete", name="report")
        assert (await client.call("schedules/list"))["schedules"] == []


# -- many schedules ---------------------------------------------------------------------------


async def test_a_thousand_idle_schedules_cost_the_scheduler_no_wakeups() -> None:
    async with world() as w:
        for i in range(1000):
            # 22:13 UTC is 23:13 in Berlin: none of these fires in the next hours
            await w.put(f"s{i}", cron=f"{i % 60} {i % 12} * * *", timezone="Europe/Berlin")
        await w.put("soon", every=600)  # at T0 + 400
        woke = w.schedules.wakeups
        for minute in range(1, 7):  # nothing due for six minutes: one wake-up a minute
            await w.at(T0 + 60 * minute)
        assert w.schedules.wakeups - woke <= 6
        assert await w.runs() == []
        await w.at(T0 + 400)
        assert await w.keys() == [fire_key("soon", T0 + 400)]


# -- the README -------------------------------------------------------------------------------


def _readme_blocks(heading: str) -> list[tuple[str, str]]:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w*)\n(.*?)```", section, re.S)


async def test_the_readme_schedules_examples_work_as_written() -> None:
    blocks = _readme_blocks("Schedules")
    (workflow,) = [text for lang, text in blocks if lang == "yaml"]
    definition = YAML(typ="safe", pure=True).load(workflow)
    async with started_host(workflows=[definition]) as host, Client(host) as client:
        listed = await client.call("schedules/list")
        declared = [s["name"] for s in listed["schedules"]]
        assert declared == [f"{definition['name']}/{s['name']}" for s in definition["schedules"]]
        calls = [text for lang, text in blocks if lang == "sh"]
        assert calls, "the README shows the API"
        for line in calls[0].splitlines():
            if not line.startswith("plait call "):
                continue
            method, _, rest = line.removeprefix("plait call ").partition(" ")
            quoted = re.match(r"'([^']*)'", rest)
            assert quoted is not None, line
            await client.call(method, **json.loads(quoted.group(1)))
