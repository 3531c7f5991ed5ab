"""``runs/stats`` (issue: analytics): the figures both stores compute, the SQLite store's
migration to schema 4, the critical path, the bottleneck report and its advice, and the
method's refusals, in process through the real dispatcher.

The stores are fed through their write API (``attach`` and events recorded on real runs) with
timestamps the test chooses, so every percentile is known exactly; the host tests run real
workflows of ``delay`` steps on a SQLite data dir of the test's.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

import pytest

from plait.config import StoreSettings
from plait.engine.analytics import Graph, critical_path
from plait.rpc.errors import RpcError
from plait.state.run_store import (
    Percentiles,
    RunTiming,
    StepTiming,
    nearest_rank,
    percentiles_of,
)
from plait.state.runs import Run, StepState
from plait.store.memory import MemoryStore
from plait.store.postgres import PostgresStore
from plait.store.schema import DB_FILE, MIGRATIONS, SCHEMA_VERSION, open_database
from plait.store.sqlite import SqliteStore
from plait.testing import Client, memory_config, started_host

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

BASE = 1_700_000_000.0
"""Run ``i`` (1..100) of the fed workflow is created at ``BASE + i``."""


def feed(store: Any, runs: int = 100) -> None:
    """Runs of ``k`` with known timings, through the store's own write API.

    Run ``i`` takes ``i`` seconds; its step ``s`` takes ``i / 10`` s, retried when ``i % 4 == 0``,
    from the cache when ``i % 5 == 0``, waited 0.5 s for a slot, failed with its run when
    ``i % 10 == 0``; its loop ran ``each[0].t`` and ``each[1].t`` (1 s each); ``r`` was reused
    by a rerun (it did not run there); an agent step reported its usage.
    """
    for i in range(1, runs + 1):
        run = Run(id=f"run-{i:04d}", workflow="k", version=1, inputs={}, created_at=BASE + i)
        store.attach(run)
        run.record("run.created")
        run.started_at = BASE + i + 0.5
        run.status = "running"
        run.record("run.started")
        failed = i % 10 == 0
        run.record("step.started", "s")
        if i % 5 == 0:
            run.record("step.cached", "s", {"tool": "t", "key": "x"})
        run.steps["s"] = StepState(
            status="failed" if failed else "succeeded",
            attempts=2 if i % 4 == 0 else 1,
            started_at=BASE + i + 1,
            finished_at=BASE + i + 1 + i / 10,
            waited=0.5,
        )
        run.record("step.failed" if failed else "step.succeeded", "s")
        for n in range(2):
            path = f"each[{n}].t"
            run.steps[path] = StepState(
                "succeeded", attempts=1, started_at=BASE, finished_at=BASE + 1
            )
            run.record("step.succeeded", path)
        run.steps["r"] = StepState("succeeded", attempts=1, started_at=BASE, finished_at=BASE + 9)
        run.steps["r"].reused_from = "older"
        run.record("step.reused", "r")
        run.record(
            "agent.usage",
            "s",
            {"agent": "writer", "turns": 2, "usage": {"input_tokens": 10, "output_tokens": 3}},
        )
        run.status = "failed" if failed else "succeeded"
        run.finished_at = run.started_at + i
        run.record("run.failed" if failed else "run.succeeded")
        store.release(run)


async def stores(tmp_path, pg_url=None):
    """A memory store and a durable store (SQLite, or PostgreSQL at ``pg_url``), both fed; the
    durable one is open (close it)."""
    memory = MemoryStore()
    feed(memory)
    durable = SqliteStore(tmp_path) if pg_url is None else PostgresStore(pg_url)
    await durable.__aenter__()
    feed(durable)
    await durable.sync()
    return memory, durable


@pytest.fixture(params=["sqlite", "postgres"])
def durable_url(request):
    """Each durable store in turn: ``None`` for SQLite, a fresh database's URL for PostgreSQL."""
    return None if request.param == "sqlite" else request.getfixturevalue("pg_url")


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
async def test_a_store_counts_runs_steps_and_agents_with_known_timings(tmp_path, kind, request):
    pg_url = request.getfixturevalue("pg_url") if kind == "postgres" else None
    memory, sqlite = await stores(tmp_path, pg_url)
    try:
        store = memory if kind == "memory" else sqlite
        stats = await store.stats()
        (k,) = stats.workflows
        assert (k.workflow, k.runs, k.succeeded, k.failed, k.cancelled) == ("k", 100, 90, 10, 0)
        assert k.success_rate == 0.9
        assert k.duration == Percentiles(50.0, 95.0, 99.0)  # run i took i seconds
        steps = {s.step: s for s in stats.steps}
        assert sorted(steps) == ["each.t", "s"]  # r was reused, not run: not counted
        s = steps["s"]
        assert (s.executions, s.failed, s.retried, s.cached) == (100, 10, 25, 20)
        assert s.waited == pytest.approx(50.0)
        assert s.busy == pytest.approx(sum(i / 10 for i in range(1, 101)))
        assert s.duration.p50 == pytest.approx(5.0) and s.duration.p95 == pytest.approx(9.5)
        assert s.duration.p99 == pytest.approx(9.9)
        t = steps["each.t"]
        assert (t.executions, t.failed, t.duration.p99) == (200, 0, 1.0)
        (writer,) = stats.agents
        assert (writer.agent, writer.steps, writer.turns) == ("writer", 100, 200)
        assert writer.usage == {"input_tokens": 1000, "output_tokens": 300}

        recent = await store.stats(workflow="k", since=BASE + 51)  # runs 51..100
        (k,) = recent.workflows
        assert (k.runs, k.failed) == (50, 5)
        assert k.duration == Percentiles(75.0, 98.0, 100.0)
        assert recent.agents[0].steps == 50
        empty = await store.stats(workflow="other")
        assert empty.workflows == [] and empty.steps == [] and empty.agents == []
    finally:
        await sqlite.__aexit__(None, None, None)


async def test_every_store_answers_the_same_figures(tmp_path, durable_url):
    memory, sqlite = await stores(tmp_path, durable_url)
    try:
        for since in (None, BASE + 33.5):
            a, b = await memory.stats(since=since), await sqlite.stats(since=since)
            assert a.workflows == b.workflows
            assert a.agents == b.agents
            assert [(s.step, s.executions, s.failed, s.retried, s.cached) for s in a.steps] == [
                (s.step, s.executions, s.failed, s.retried, s.cached) for s in b.steps
            ]
            for x, y in zip(a.steps, b.steps, strict=True):
                assert x.duration.p50 == pytest.approx(y.duration.p50)
                assert x.duration.p99 == pytest.approx(y.duration.p99)
                assert x.busy == pytest.approx(y.busy) and x.waited == pytest.approx(y.waited)
        a, b = await memory.run_timings("k", limit=5), await sqlite.run_timings("k", limit=5)
        assert (
            [r.id for r in a]
            == [r.id for r in b]
            == [
                "run-0099",
                "run-0098",
                "run-0097",
                "run-0096",
                "run-0095",
            ]
        )  # the newest succeeded ones (100 failed)
        assert sorted(s.step for s in b[0].steps) == ["r", "s"]  # top-level steps only
        assert {s.step: s for s in a[0].steps}["s"] == {s.step: s for s in b[0].steps}["s"]
    finally:
        await sqlite.__aexit__(None, None, None)


def test_percentiles_are_nearest_rank():
    assert [nearest_rank(100, p) for p in (50, 95, 99)] == [50, 95, 99]
    assert [nearest_rank(1, p) for p in (50, 95, 99)] == [1, 1, 1]
    assert [nearest_rank(3, p) for p in (50, 95, 99)] == [2, 3, 3]
    assert percentiles_of([3.0, 1.0, 2.0]) == Percentiles(2.0, 3.0, 3.0)
    assert percentiles_of([]) == Percentiles(None, None, None)


async def test_a_store_of_schema_3_is_migrated_and_its_kept_rows_counted(tmp_path):
    """Migration 4 fills the new step columns and agent_usage from the rows and events kept."""
    path = tmp_path / DB_FILE
    conn = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:3], start=1):
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.execute(
        "INSERT INTO runs (id, workflow, version, status, inputs, created_at, started_at, "
        "finished_at) VALUES ('r1', 'old', 1, 'succeeded', '{}', 10, 11, 15)"
    )
    steps = [
        ("a", 11.0, 12.0),
        ("loop[0].t", 12.0, 12.5),
        ("loop[1].t", 12.0, 13.5),
        ("kept", 1.0, 2.0),
    ]
    for step, started, finished in steps:
        conn.execute(
            "INSERT INTO steps (run_id, path, status, attempts, started_at, finished_at) "
            "VALUES ('r1', ?, 'succeeded', 1, ?, ?)",
            (step, started, finished),
        )
    events = [
        ("step.cached", "a", {"tool": "t", "key": "k"}),
        ("step.succeeded", "a", {"waited": 0.25}),
        ("step.reused", "kept", {"from": "r0"}),
        ("agent.usage", "a", {"agent": "bot", "turns": 3, "usage": {"tokens": 7}}),
    ]
    for seq, (kind, step, data) in enumerate(events, start=1):
        conn.execute(
            "INSERT INTO events (run_id, seq, type, step, data, ts) VALUES ('r1', ?, ?, ?, ?, 0)",
            (seq, kind, step, json.dumps(data)),
        )
    conn.close()

    open_database(path, StoreSettings()).close()  # migrates to the current version
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    async with SqliteStore(tmp_path) as store:
        stats = await store.stats(workflow="old")
    (old,) = stats.workflows
    assert (old.runs, old.succeeded, old.duration.p50) == (1, 1, 4.0)
    by_step = {s.step: s for s in stats.steps}
    assert sorted(by_step) == ["a", "loop.t"]  # "kept" was reused: not run there
    assert (by_step["a"].cached, by_step["a"].waited, by_step["a"].duration.p50) == (1, 0.25, 1.0)
    assert (by_step["loop.t"].executions, by_step["loop.t"].duration.p99) == (2, 1.5)
    assert [(a.agent, a.steps, a.turns, a.usage) for a in stats.agents] == [
        ("bot", 1, 3, {"tokens": 7})
    ]


def timing(step: str, started: float, finished: float, waited: float = 0.0) -> StepTiming:
    return StepTiming(step, "succeeded", started, finished, waited, 1, False)


def test_the_critical_path_walks_back_through_the_dependency_that_finished_latest():
    run = RunTiming(
        "r",
        "d",
        0.0,
        10.0,
        [
            timing("start", 0.0, 1.0),
            timing("fast", 1.0, 2.0),
            timing("slow", 1.0, 8.0),
            timing("side", 0.0, 9.0),  # finished late, but nothing that ends the run needs it
            timing("end", 8.0, 10.0),
            StepTiming("skipped", "skipped", None, None, 0.0, 0, False),
        ],
    )
    graph = Graph(
        needs={"start": [], "fast": ["start"], "slow": ["start"], "end": ["fast", "slow"]},
        needs_any={},
        cached=frozenset(),
    )
    assert [s.step for s in critical_path(run, graph)] == ["start", "slow", "end"]
    # needs_any: the step waited only for the first of them to finish
    either = Graph(
        needs={"start": [], "fast": ["start"], "slow": ["start"], "end": []},
        needs_any={"end": ["fast", "slow"]},
        cached=frozenset(),
    )
    assert [s.step for s in critical_path(run, either)] == ["start", "fast", "end"]
    # without a graph: the step that finished latest before each one started
    assert [s.step for s in critical_path(run, None)] == ["start", "slow", "end"]


# -- on a host ---------------------------------------------------------------------------------

BRANCHES = {
    "name": "branches",
    "steps": [
        {"id": "start", "delay": 0.02},
        {"id": "slow", "needs": ["start"], "delay": 0.4},
        {"id": "quick", "needs": ["start"], "delay": 0.02},
        {"id": "end", "transform": "${steps.slow.output}${steps.quick.output}"},
    ],
}
LIMITED = {
    "name": "limited",
    "concurrency": 1,  # the three branches take turns: the last waits twice as long as it runs
    "steps": [
        {"id": "start", "delay": 0.02},
        # tool steps do work, so they take the run's one slot in turn (a delay would not)
        {"id": "b1", "needs": ["start"], "tool": "time.sleep", "with": {"seconds": 0.1}},
        {"id": "b2", "needs": ["start"], "tool": "time.sleep", "with": {"seconds": 0.1}},
        {"id": "b3", "needs": ["start"], "tool": "time.sleep", "with": {"seconds": 0.1}},
        {"id": "end", "needs": ["b1", "b2", "b3"], "transform": 1},
    ],
}
CACHED = {
    "name": "cached",
    "steps": [
        {"id": "sum", "tool": "math.sum", "with": {"values": [1, 2]}, "cache": {"ttl": 600}},
        {"id": "flaky", "tool": "chaos.fail", "with": {"key": "${run.id}", "times": 1}},
        {"id": "write", "agent": "writer", "prompt": "write it"},
        {"id": "each", "loop": [1, 2, 3], "steps": [{"id": "t", "transform": "${item}"}]},
    ],
    "defaults": {"retry": {"attempts": 2, "base": 0.01}},
}


def durable(tmp_path):
    return memory_config(
        host={"data_dir": str(tmp_path / "data")},
        agents={"writer": {"provider": "scripted", "script": [{"say": "twelve chars"}]}},
    )


async def run_times(client: Client, workflow: str, n: int) -> None:
    for _ in range(n):
        run_id = (await client.call("runs/start", workflow=workflow))["runId"]
        done = await client.call("runs/wait", runId=run_id, timeout=60)
        assert done["run"]["status"] == "succeeded", done


@pytest.mark.parametrize("store", ["sqlite", "memory"])
async def test_the_bottleneck_report_finds_the_slow_branch_and_the_held_step(tmp_path, store):
    config = durable(tmp_path) if store == "sqlite" else memory_config()
    async with started_host(config=config, workflows=[BRANCHES, LIMITED]) as host:
        async with Client(host, timeout=60) as client:
            await run_times(client, "branches", 3)
            await run_times(client, "limited", 3)

            report = await client.call("runs/stats", workflow="branches")
            (wf,) = report["workflows"]
            assert (wf["runs"], wf["successRate"]) == (3, 1.0)
            assert 0.4 <= wf["duration"]["p50"] < 2.0
            steps = {s["step"]: s for s in report["steps"]}
            assert 0.4 <= steps["slow"]["duration"]["p95"] < 2.0
            assert steps["quick"]["duration"]["p50"] < steps["slow"]["duration"]["p50"]
            neck = report["bottleneck"]
            assert (neck["workflow"], neck["runs"], neck["limit"]) == ("branches", 3, 1000)
            on_path = {p["step"]: p for p in neck["steps"]}
            assert sorted(on_path) == ["end", "slow", "start"]  # quick never held the run up
            assert on_path["slow"]["onPath"] == 1.0 and on_path["slow"]["share"] > 0.5
            assert neck["steps"][0]["step"] == "slow"
            assert any(line.startswith("slow is on the critical path") for line in neck["advice"])

            neck = (await client.call("runs/stats", workflow="limited"))["bottleneck"]
            # which branch goes last is the scheduler's choice: the one that did is on the path
            (held,) = [p for p in neck["steps"] if p["step"].startswith("b")]
            assert sorted(p["step"] for p in neck["steps"]) == sorted(
                ["start", held["step"], "end"]
            )
            assert held["waited"] > held["seconds"] - held["waited"]  # waited more than it ran
            assert any(
                line.startswith(f"{held['step']} waits for a concurrency slot longer than it runs")
                and "raise the limit" in line
                for line in neck["advice"]
            ), neck["advice"]
            steps = {s["step"]: s for s in (await client.call("runs/stats"))["steps"]}
            waited = sum(steps[b]["waited"] for b in ("b1", "b2", "b3"))
            assert waited >= 3 * 0.28  # per run: one branch waited 0.1 s, one 0.2 s
            assert steps["start"]["waited"] == 0.0  # it had the slot to itself

            assert "bottleneck" not in await client.call("runs/stats")
            assert "bottleneck" not in await client.call(
                "runs/stats", workflow="limited", bottleneck=False
            )
            later = await client.call("runs/stats", since=time.time() + 60)
            assert later["workflows"] == [] and later["since"] == pytest.approx(
                time.time() + 60, abs=5
            )


async def test_cache_hits_retries_loops_and_agent_tokens_are_counted(tmp_path):
    async with started_host(config=durable(tmp_path), workflows=[CACHED]) as host:
        async with Client(host, timeout=60) as client:
            await run_times(client, "cached", 3)
            stats = await client.call("runs/stats", workflow="cached")
    steps = {s["step"]: s for s in stats["steps"]}
    assert (steps["sum"]["cached"], steps["sum"]["executions"]) == (2, 3)  # the first filled it
    assert steps["sum"]["cacheHitRate"] == pytest.approx(2 / 3)
    assert (steps["flaky"]["retried"], steps["flaky"]["retryRate"]) == (3, 1.0)
    assert steps["flaky"]["failureRate"] == 0.0  # each succeeded on its second attempt
    assert steps["each.t"]["executions"] == 9
    (writer,) = stats["agents"]
    assert (writer["agent"], writer["steps"], writer["turns"]) == ("writer", 3, 3)
    assert writer["usage"]["completion_tokens"] == 3 * (len("twelve chars") // 4)
    assert set(writer["usage"]) == {"prompt_tokens", "completion_tokens"}
    advice = stats["bottleneck"]["advice"]
    assert any(line.startswith("flaky") and "retried in 100%" in line for line in advice), advice


async def test_an_unknown_workflow_and_bad_params_are_invalid_params(tmp_path):
    async with started_host(config=durable(tmp_path), workflows=[BRANCHES]) as host:
        async with Client(host) as client:
            with pytest.raises(RpcError) as caught:
                await client.call("runs/stats", workflow="branchez")
            assert caught.value.code == -32602
            assert "unknown workflow 'branchez'" in caught.value.message
            assert "did you mean 'branches'" in caught.value.message
            assert caught.value.data == {"workflow": "branchez", "closeMatches": ["branches"]}
            with pytest.raises(RpcError) as caught:
                await client.call("runs/stats", bottleneck=True)
            assert caught.value.code == -32602 and "give workflow" in str(caught.value.data)
            with pytest.raises(RpcError) as caught:
                await client.call("runs/stats", since=-1)
            assert caught.value.code == -32602
            with pytest.raises(RpcError) as caught:
                await client.call("runs/stats", since="1h")
            assert caught.value.code == -32602
            # registered but never run: figures of nothing, not an error
            fresh = await client.call("runs/stats", workflow="branches")
            assert fresh["workflows"] == [] and fresh["bottleneck"]["runs"] == 0
