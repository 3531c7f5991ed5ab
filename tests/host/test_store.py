"""The durable run store: strict opening, group commit, restarts, paging, locking, contention.

Everything runs against real SQLite files under ``tmp_path``; other sqlite3 connections stand in
for a second reader or a competing writer.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time

import anyio
import pytest

import plait
from plait.config import HostConfig, StoreSettings
from plait.state.runs import Run
from plait.store.datadir import DataDirLock
from plait.store.schema import SCHEMA_VERSION, open_database
from plait.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio

PAGE = 4096

ECHO = {
    "name": "w",
    "steps": [
        {"id": "a", "transform": "${inputs.x + 1}"},
        {"id": "b", "tool": "probe.echo", "with": {"value": "${steps.a.output}"}},
    ],
    "inputs": {"type": "object", "properties": {"x": {"type": "integer"}}},
    "outputs": {"b": "${steps.b.output}"},
}

FAILING = {
    "name": "bad",
    "steps": [{"id": "f", "tool": "probe.fail", "with": {"key": "${inputs.k}", "times": 5}}],
    "inputs": {"type": "object", "properties": {"k": {"type": "string"}}},
}

PARENT = {
    "name": "parent",
    "steps": [{"id": "c", "workflow": "w", "inputs": {"x": "${inputs.x}"}}],
    "inputs": {"type": "object", "properties": {"x": {"type": "integer"}}},
    "outputs": {"child": "${steps.c.output}"},
}

SLOW = {
    "name": "slow",
    "steps": [{"id": "s", "tool": "probe.work", "with": {"seconds": 0.5, "label": "s"}}],
}


def config(data_dir, **store):
    data = {"host": {"data_dir": str(data_dir)}, "plugins": {"entry_points": False}}
    if store:
        data["store"] = store
    return HostConfig.model_validate(data)


def query(path, sql, params=()):
    """Read through a connection of our own, as another process would (a SQLite file, or a
    PostgreSQL URL: ``?`` placeholders either way)."""
    if str(path).startswith("postgresql://"):
        import psycopg

        with psycopg.connect(str(path)) as pg:
            return [tuple(row) for row in pg.execute(sql.replace("?", "%s"), params).fetchall()]
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
def durable(request):
    """Each durable store in turn: the ``[store]`` settings that select it (SQLite: none)."""
    if request.param == "sqlite":
        return {}
    return {"url": request.getfixturevalue("pg_url")}


def where_kept(host):
    """What :func:`query` reads the host's store through."""
    store = host.store
    return store.url if hasattr(store, "url") else store.path


def parse_cursor(cursor):
    stamp, _, run_id = cursor.partition("|")
    return float(stamp), run_id


async def make_store_with_runs(data_dir, pm, runs=12):
    """A real plait store holding a few finished runs; returns their ids."""
    async with plait.Host(config(data_dir), pm=pm) as host:
        host.register(ECHO)
        ids = [await host.start_run("w", {"x": i}) for i in range(runs)]
        for run_id in ids:
            assert (await host.wait(run_id)).status == "succeeded"
    return ids


# -- opening: settings, damage, foreign and newer files ---------------------------------------


@pytest.mark.parametrize(("synchronous", "level"), [(None, 2), ("FULL", 2), ("NORMAL", 1)])
async def test_settings_are_applied_and_verified_at_start(tmp_path, synchronous, level):
    settings = None if synchronous is None else StoreSettings(synchronous=synchronous)
    async with SqliteStore(tmp_path, settings) as store:
        assert store.path == tmp_path / "plait.db"
        assert store.path.is_file()
        # journal_mode and user_version live in the file: any connection sees them.
        assert query(store.path, "PRAGMA journal_mode") == [("wal",)]
        assert query(store.path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        # synchronous and busy_timeout belong to the connection the store writes with.
        conn = store._conn
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == level
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # open_database on the existing file applies the same settings to the connection it returns.
    conn = open_database(tmp_path / "plait.db", settings or StoreSettings())
    try:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == level
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


async def test_busy_timeout_below_five_seconds_is_refused():
    with pytest.raises(ValueError, match="busy_timeout"):
        StoreSettings(busy_timeout=1.0)
    assert StoreSettings().busy_timeout >= 5.0


def assert_refused_untouched(data_dir, exc_info, before):
    db = data_dir / "plait.db"
    assert str(db) in str(exc_info.value)
    assert exc_info.value.path == str(db)
    assert db.read_bytes() == before, "a corrupt store was modified"
    assert not DataDirLock.held(data_dir), "the data dir stayed locked after a failed start"


async def assert_fresh_start_works(data_dir, pm):
    """With the bad file moved aside, a host starts on the same dir (the lock was let go)."""
    aside = data_dir.parent / "aside"
    aside.mkdir()
    for name in ("plait.db", "plait.db-wal", "plait.db-shm"):
        if (data_dir / name).exists():
            shutil.move(data_dir / name, aside / name)
    async with plait.Host(config(data_dir), pm=pm) as host:
        host.register(ECHO)
        run = await host.wait(await host.start_run("w", {"x": 1}))
        assert run.outputs == {"b": 2}


async def test_garbage_file_refuses_to_start_and_is_left_alone(tmp_path, pm):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db = data_dir / "plait.db"
    db.write_bytes(random.Random(1).randbytes(3 * PAGE))
    before = db.read_bytes()
    with pytest.raises(plait.StoreCorrupt) as exc_info:
        async with plait.Host(config(data_dir), pm=pm):
            pytest.fail("the host started on a garbage store")
    assert_refused_untouched(data_dir, exc_info, before)
    await assert_fresh_start_works(data_dir, pm)


async def test_damaged_plait_store_refuses_to_start_and_is_left_alone(tmp_path, pm):
    data_dir = tmp_path / "data"
    await make_store_with_runs(data_dir, pm, runs=40)
    db = data_dir / "plait.db"
    # A clean close folds the WAL into plait.db (see the close test below), so the damage
    # hits the data.
    wal = data_dir / "plait.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    pages = db.stat().st_size // PAGE
    assert pages >= 8, f"the store has only {pages} pages; nothing to damage in the middle"
    assert query(db, "PRAGMA quick_check") == [("ok",)]
    garbage = random.Random(2)
    with open(db, "r+b") as fh:  # garbage over a few pages in the middle; the header survives
        for page in range(pages // 2 - 1, pages // 2 + 2):
            fh.seek(page * PAGE)
            fh.write(garbage.randbytes(PAGE))
    before = db.read_bytes()
    with pytest.raises(plait.StoreCorrupt) as exc_info:
        async with plait.Host(config(data_dir), pm=pm):
            pytest.fail("the host started on a damaged store")
    assert_refused_untouched(data_dir, exc_info, before)
    await assert_fresh_start_works(data_dir, pm)


async def test_foreign_sqlite_database_refuses_to_start_and_is_left_alone(tmp_path, pm):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db = data_dir / "plait.db"
    other = sqlite3.connect(db)
    other.execute("CREATE TABLE foo (id INTEGER PRIMARY KEY, name TEXT)")
    other.executemany("INSERT INTO foo (name) VALUES (?)", [(f"n{i}",) for i in range(50)])
    other.commit()
    other.close()
    before = db.read_bytes()
    with pytest.raises(plait.StoreCorrupt, match="not a plait store") as exc_info:
        async with plait.Host(config(data_dir), pm=pm):
            pytest.fail("the host started on another application's database")
    assert query(db, "SELECT count(*) FROM foo") == [(50,)]
    assert query(db, "SELECT name FROM sqlite_master WHERE type = 'table'") == [("foo",)]
    assert_refused_untouched(data_dir, exc_info, before)


async def test_foreign_sqlite_database_is_refused_and_its_data_kept(tmp_path, pm):
    """Whatever happens to the header, the refusal itself and the other app's rows hold."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db = data_dir / "plait.db"
    other = sqlite3.connect(db)
    other.execute("CREATE TABLE foo (id INTEGER PRIMARY KEY, name TEXT)")
    other.executemany("INSERT INTO foo (name) VALUES (?)", [(f"n{i}",) for i in range(50)])
    other.commit()
    other.close()
    with pytest.raises(plait.StoreCorrupt, match="not a plait store") as exc_info:
        async with plait.Host(config(data_dir), pm=pm):
            pytest.fail("the host started on another application's database")
    assert str(db) in str(exc_info.value)
    assert query(db, "SELECT count(*) FROM foo") == [(50,)]
    assert query(db, "SELECT name FROM sqlite_master") == [("foo",)]
    assert query(db, "PRAGMA user_version") == [(0,)]
    assert not DataDirLock.held(data_dir)
    await assert_fresh_start_works(data_dir, pm)


async def test_store_from_a_newer_plait_is_refused(tmp_path, pm):
    data_dir = tmp_path / "data"
    await make_store_with_runs(data_dir, pm, runs=2)
    db = data_dir / "plait.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = db.read_bytes()
    with pytest.raises(plait.StoreError, match="newer plait") as exc_info:
        async with plait.Host(config(data_dir), pm=pm):
            pytest.fail("the host started on a store from the future")
    assert not isinstance(exc_info.value, plait.StoreCorrupt)
    assert str(db) in str(exc_info.value)
    assert db.read_bytes() == before
    assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]
    assert not DataDirLock.held(data_dir)


# -- writing: group commit, publish after commit ----------------------------------------------


async def test_events_are_committed_in_groups_and_published_only_after_commit(tmp_path):
    async with SqliteStore(tmp_path) as store:
        run = Run(id="r1", workflow="w", version=1, inputs={})
        run.sink = store.record
        heard = []
        run.listen(heard.append)
        commits = store.commits
        for i in range(500):
            run.record("probe.tick", None, {"i": i, "text": f"event {i}"})
        # Recorded; the writer's thread may be committing already, but nobody is told
        # before the event loop gets a turn.
        assert run.seq == 500
        assert run.published == 0
        assert heard == []
        await store.sync()
        assert store.pending == 0
        assert [e.seq for e in heard] == list(range(1, 501))
        assert [e.data["i"] for e in heard] == list(range(500))
        assert run.published == 500
        # A commit takes whatever is queued when it starts: a few, not one per event.
        assert store.commits - commits <= 10, f"{store.commits - commits} commits for 500 events"
        assert query(store.path, "SELECT count(*) FROM events WHERE run_id = 'r1'") == [(500,)]
        stored = await store.events(run.id)
        assert [e.seq for e in stored] == list(range(1, 501))
        assert [(e.type, e.step, e.data) for e in stored] == [
            (e.type, e.step, e.data) for e in run.events
        ]
        assert [e.data for e in await store.events(run.id, since=495)] == [
            {"i": i, "text": f"event {i}"} for i in range(495, 500)
        ]
        assert len(await store.events(run.id, since=10, limit=5)) == 5


async def test_the_writer_commits_while_the_event_loop_is_busy(tmp_path):
    """The writer's thread takes and commits batches without waiting for a turn of the event
    loop (a busy loop can take a second per turn); only telling waits for the loop."""
    async with SqliteStore(tmp_path) as store:
        run = Run(id="busy", workflow="w", version=1, inputs={})
        run.sink = store.record
        for i in range(200):
            run.record("probe.tick", None, {"i": i})
        deadline = time.monotonic() + 10
        on_disk = 0
        while on_disk < 200 and time.monotonic() < deadline:  # never yields to the loop
            time.sleep(0.01)
            on_disk = query(store.path, "SELECT count(*) FROM events")[0][0]
        assert on_disk == 200
        assert run.published == 0  # told on the loop's next turn, not before
        await store.sync()
        assert run.published == 200


async def test_large_batches_keep_every_row_and_each_runs_latest_status(tmp_path):
    """Rows go in many to a statement; a run whose changes share a batch ends up with the
    last of them."""
    runs = [
        Run(id=f"r{i:04d}", workflow="w", version=1, inputs={"i": i}, total_steps=1)
        for i in range(1500)
    ]
    async with SqliteStore(tmp_path) as store:
        for run in runs:
            run.sink = store.record
            run.record("run.created", None, {"inputs": run.inputs})
            run.set_status("running")
            run.set_step("a", "running", {"attempt": 1}, attempts=1)
            run.set_step("a", "succeeded", {"output": run.inputs["i"]}, output=run.inputs["i"])
            run.outputs = {"v": run.inputs["i"]}
            run.set_status("succeeded")
        await store.sync()
        assert query(store.path, "SELECT count(*) FROM events") == [(1500 * 5,)]
        assert query(store.path, "SELECT status, count(*) FROM runs GROUP BY status") == [
            ("succeeded", 1500)
        ]
        assert query(store.path, "SELECT count(*) FROM steps WHERE status = 'succeeded'") == [
            (1500,)
        ]
        back = await store.load_run("r0777")
        assert back is not None
        assert (back.status, back.outputs, back.steps["a"].output) == ("succeeded", {"v": 777}, 777)
        assert [e.type for e in await store.events("r1499")] == [
            "run.created",
            "run.started",
            "step.started",
            "step.succeeded",
            "run.succeeded",
        ]


async def test_a_row_that_breaks_a_constraint_is_dropped_and_the_rest_kept(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="plait.store.sqlite")
    async with SqliteStore(tmp_path) as store:
        run = Run(id="dup", workflow="w", version=1, inputs={})
        run.sink = store.record
        run.record("probe.tick", None, {"i": 0})
        await store.sync()
        run.seq = 0  # a bug: the next event takes seq 1 again
        run.record("probe.tick", None, {"i": "again"})
        run.record("probe.tick", None, {"i": 2})
        await store.sync()
        assert store.pending == 0
        assert [e.data for e in await store.events("dup")] == [{"i": 0}, {"i": 2}]
        assert "broke a constraint" in caplog.text
        assert store.last_error is None


async def test_connections_get_a_turn_every_chunk_of_events_however_commits_split(tmp_path):
    """Small commits in a row are a burst too: the pace is kept across commits."""
    from plait.store.sqlite import PUBLISH_CHUNK

    async with SqliteStore(tmp_path) as store:
        paced = []

        async def pace() -> None:
            paced.append(run.published)

        store.pace = pace
        run = Run(id="paced", workflow="w", version=1, inputs={})
        run.sink = store.record
        for _ in range(10):
            for i in range(10):
                run.record("probe.tick", None, {"i": i})
            await store.sync()  # a commit of ten events, told at once
        assert paced == [PUBLISH_CHUNK * k for k in range(1, 100 // PUBLISH_CHUNK + 1)]


def test_a_store_left_open_does_not_keep_the_interpreter_from_exiting(tmp_path):
    """Its writer and kicker are threads; they notice the program ended and stop."""
    program = (
        "import anyio, sys\n"
        "from plait.store.sqlite import SqliteStore\n"
        "from plait.state.runs import Run\n"
        "async def main():\n"
        f"    store = SqliteStore({str(tmp_path)!r})\n"
        "    await store.__aenter__()  # never closed\n"
        "    run = Run(id='x', workflow='w', version=1, inputs={})\n"
        "    run.sink = store.record\n"
        "    run.record('probe.tick', None, {})\n"
        "    await store.sync()\n"
        "anyio.run(main)\n"
        "print('ended')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ended"
    assert query(tmp_path / "plait.db", "SELECT count(*) FROM events") == [(1,)]


async def test_a_listener_that_sees_an_event_finds_it_on_disk(tmp_path):
    async with SqliteStore(tmp_path) as store:
        run = Run(id="r2", workflow="w", version=1, inputs={})
        run.sink = store.record
        on_disk = []
        run.listen(
            lambda e: on_disk.append(
                query(
                    store.path,
                    "SELECT count(*) FROM events WHERE run_id = 'r2' AND seq = ?",
                    (e.seq,),
                )[0][0]
            )
        )
        for i in range(40):
            run.record("probe.tick", None, {"i": i})
        await store.sync()
        assert on_disk == [1] * 40


async def test_closing_keeps_every_event_and_reopening_reads_them(tmp_path):
    async with SqliteStore(tmp_path) as store:
        run = Run(id="r3", workflow="w", version=1, inputs={})
        run.sink = store.record
        for i in range(100):
            run.record("probe.tick", None, {"i": i})
        # No sync: leaving the store commits what is queued.
    assert run.published == 100
    async with SqliteStore(tmp_path) as store:
        assert [e.data["i"] for e in await store.events("r3")] == list(range(100))


async def test_closing_the_store_folds_the_wal_into_the_database_file(tmp_path):
    async with SqliteStore(tmp_path) as store:
        run = Run(id="r4", workflow="w", version=1, inputs={})
        run.sink = store.record
        for i in range(200):
            run.record("probe.tick", None, {"i": i})
        await store.sync()
    wal = tmp_path / "plait.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0, (
        f"a closed store left {wal.stat().st_size} bytes in its WAL"
    )
    # plait.db on its own (a copy without the -wal file) holds every event.
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(tmp_path / "plait.db", copy / "plait.db")
    assert query(copy / "plait.db", "SELECT count(*) FROM events") == [(200,)]


async def test_start_run_replies_only_once_the_run_is_on_disk(tmp_path, pm, durable):
    async with plait.Host(config(tmp_path / "data", **durable), pm=pm) as host:
        host.register(SLOW)
        db = where_kept(host)
        run_id = await host.start_run("slow", {})
        # No await in between: the reply itself waited for the commit.
        rows = query(db, "SELECT workflow, status FROM runs WHERE id = ?", (run_id,))
        created = query(db, "SELECT type FROM events WHERE run_id = ? AND seq = 1", (run_id,))
        assert rows and rows[0][0] == "slow"
        assert rows[0][1] in ("pending", "running")
        assert created == [("run.created",)]
        run = await host.wait(run_id)
        assert run.status == "succeeded"
        assert query(db, "SELECT status FROM runs WHERE id = ?", (run_id,)) == [("succeeded",)]


# -- reading back: restarts, paging, idempotency ----------------------------------------------


async def test_finished_runs_survive_a_restart(tmp_path, pm, durable):
    data_dir = tmp_path / "data"
    before = {}
    async with plait.Host(config(data_dir, **durable), pm=pm) as host:
        host.register(ECHO)
        ids = [await host.start_run("w", {"x": i}) for i in range(5)]
        for run_id in ids:
            run = await host.wait(run_id)
            assert run.status == "succeeded"
            events = await host.engine.events(run_id)
            before[run_id] = (
                run.outputs,
                {p: s.to_dict() for p, s in run.steps.items()},
                [(e.seq, e.type, e.step, e.data) for e in events],
            )
        assert not set(ids) & set(host.engine.runs), "finished runs stayed in memory"
    assert not DataDirLock.held(data_dir)
    async with plait.Host(config(data_dir, **durable), pm=pm) as host:
        assert host.recovered == []
        for i, run_id in enumerate(ids):
            outputs, steps, types = before[run_id]
            run = await host.get_run(run_id)
            assert run.status == "succeeded"
            assert run.finished
            assert run.inputs == {"x": i}
            assert run.outputs == outputs == {"b": i + 1}
            assert {p: s.to_dict() for p, s in run.steps.items()} == steps
            assert run.steps["a"].output == i + 1
            events = await host.engine.events(run_id)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert [(e.seq, e.type, e.step, e.data) for e in events] == types
            assert events[0].type == "run.created"
            assert events[-1].type == "run.succeeded"
            assert (await host.wait(run_id)).status == "succeeded"


async def test_list_runs_pages_and_filters(tmp_path, pm, durable):
    async with plait.Host(config(tmp_path / "data", **durable), pm=pm) as host:
        host.register(ECHO)
        host.register(FAILING)
        host.register(PARENT)
        ids = []
        for i in range(25):
            if i % 5 == 0:
                ids.append(await host.start_run("bad", {"k": f"k{i}"}))
            elif i % 7 == 0:
                ids.append(await host.start_run("parent", {"x": i}))
            else:
                ids.append(await host.start_run("w", {"x": i}))
        runs = {run_id: await host.wait(run_id) for run_id in ids}
        failed = {r for r, run in runs.items() if run.status == "failed"}
        assert len(failed) == 5 and all(runs[r].workflow == "bad" for r in failed)
        assert {r for r, run in runs.items() if run.workflow == "parent"} and all(
            run.status == "succeeded" for run in runs.values() if run.workflow != "bad"
        )
        children = query(where_kept(host), "SELECT id FROM runs WHERE parent_id IS NOT NULL")
        assert children, "the parent runs should have left child runs in the store"

        expected = [
            r
            for r, _ in sorted(
                ((r, (run.created_at, r)) for r, run in runs.items()),
                key=lambda item: item[1],
                reverse=True,
            )
        ]
        seen, cursor, pages = [], None, 0
        while True:
            page = await host.engine.list_runs(limit=7, cursor=cursor)
            pages += 1
            assert len(page.runs) <= 7
            seen += [r["id"] for r in page.runs]
            if page.next_cursor is None:
                break
            assert len(page.runs) == 7
            cursor = parse_cursor(page.next_cursor)
            assert cursor[1] == page.runs[-1]["id"]
            assert cursor[0] == page.runs[-1]["created_at"]
        assert pages == 4
        assert seen == expected, "pages are not newest first, or a run is missing or repeated"
        assert len(set(seen)) == 25
        assert not {c for (c,) in children} & set(seen)

        page = await host.engine.list_runs(limit=100)
        assert page.next_cursor is None
        assert [r["id"] for r in page.runs] == expected
        summary = page.runs[0]
        assert summary["workflow"] == runs[summary["id"]].workflow
        assert summary["status"] == runs[summary["id"]].status

        async def everything(**filters):
            out, cursor = [], None
            while True:
                page = await host.engine.list_runs(limit=3, cursor=cursor, **filters)
                out += page.runs
                if page.next_cursor is None:
                    return out
                cursor = parse_cursor(page.next_cursor)

        by_workflow = await everything(workflow="w")
        assert [r["id"] for r in by_workflow] == [r for r in expected if runs[r].workflow == "w"]
        assert {r["workflow"] for r in by_workflow} == {"w"}
        by_status = await everything(status="failed")
        assert {r["id"] for r in by_status} == failed
        assert [r["id"] for r in by_status] == [r for r in expected if r in failed]
        both = await everything(workflow="bad", status="succeeded")
        assert both == []

        ordered = expected[::-1]  # oldest first
        low, high = runs[ordered[5]].created_at, runs[ordered[15]].created_at
        window = await everything(created_after=low, created_before=high)
        assert [r["id"] for r in window] == ordered[5:15][::-1]
        assert [r["id"] for r in await everything(created_after=high)] == ordered[15:][::-1]
        assert [r["id"] for r in await everything(created_before=low)] == ordered[:5][::-1]

        counts = await host.store.counts()
        assert counts == {"failed": 5, "succeeded": 20}


async def test_idempotency_key_is_kept_across_a_restart(tmp_path, pm, probe, durable):
    data_dir = tmp_path / "data"
    async with plait.Host(config(data_dir, **durable), pm=pm) as host:
        host.register(ECHO)
        first = await host.start_run("w", {"x": 1}, idempotency_key="k1")
        assert (await host.wait(first)).outputs == {"b": 2}
        assert await host.start_run("w", {"x": 1}, idempotency_key="k1") == first
    echoes = probe.count("echo")
    db = durable.get("url") or data_dir / "plait.db"
    assert query(db, "SELECT key, run_id FROM idempotency") == [("k1", first)]
    async with plait.Host(config(data_dir, **durable), pm=pm) as host:
        assert await host.store.run_for_key("k1") == first
        again = await host.start_run("w", {"x": 1}, idempotency_key="k1")
        assert again == first
        assert (await host.wait(again)).outputs == {"b": 2}
        other = await host.start_run("w", {"x": 1}, idempotency_key="k2")
        assert other != first
        await host.wait(other)
    assert probe.count("echo") == echoes + 1, "the repeated start ran the workflow again"
    assert query(db, "SELECT count(*) FROM runs WHERE idempotency_key = 'k1'") == [(1,)]
    assert query(db, "SELECT count(*) FROM runs") == [(2,)]


# -- the data dir: one host at a time, memory-only modes ---------------------------------------


async def test_second_host_on_the_same_data_dir_is_refused(tmp_path, pm):
    data_dir = tmp_path / "data"
    async with plait.Host(config(data_dir), pm=pm) as first:
        first.register(ECHO)
        run_id = await first.start_run("w", {"x": 41})
        assert (await first.wait(run_id)).outputs == {"b": 42}
        assert DataDirLock.held(data_dir)
        with pytest.raises(plait.DataDirLocked) as exc_info:
            async with plait.Host(config(data_dir), pm=pm):
                pytest.fail("two hosts on one data dir")
        assert str(data_dir) in str(exc_info.value)
        assert f"(pid {os.getpid()})" in str(exc_info.value)  # read from the lock file
        # The refused host did not disturb the one using the dir.
        assert DataDirLock.held(data_dir)
        second = await first.start_run("w", {"x": 1})
        assert (await first.wait(second)).status == "succeeded"
    assert not DataDirLock.held(data_dir)
    async with plait.Host(config(data_dir), pm=pm) as host:
        assert (await host.get_run(run_id)).outputs == {"b": 42}
        assert (await host.get_run(second)).status == "succeeded"


async def test_memory_data_dir_writes_no_database(tmp_path, pm, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with plait.Host(config(":memory:"), pm=pm) as host:
        assert not host.store.durable
        assert host.data_dir is None
        host.register(ECHO)
        run = await host.wait(await host.start_run("w", {"x": 2}))
        assert run.status == "succeeded"
        assert run.outputs == {"b": 3}
        assert [e.seq for e in await host.engine.events(run.id)] == list(
            range(1, len(run.events) + 1)
        )
    assert list(tmp_path.rglob("*")) == []


async def test_non_durable_store_writes_no_database(tmp_path, pm):
    data_dir = tmp_path / "data"
    async with plait.Host(config(data_dir, durable=False), pm=pm) as host:
        assert not host.store.durable
        host.register(ECHO)
        run = await host.wait(await host.start_run("w", {"x": 2}))
        assert run.outputs == {"b": 3}
        page = await host.engine.list_runs()
        assert [r["id"] for r in page.runs] == [run.id]
    assert data_dir.is_dir()
    assert not list(tmp_path.rglob("plait.db*"))


# -- contention -------------------------------------------------------------------------------


async def test_runs_wait_out_another_writer_and_lose_nothing(tmp_path, pm, caplog):
    caplog.set_level(logging.WARNING, logger="plait.store.sqlite")
    async with plait.Host(config(tmp_path / "data"), pm=pm) as host:
        host.register(ECHO)
        await host.engine.committed()
        db = host.store.path
        blocker = sqlite3.connect(db, isolation_level=None, timeout=5)
        ids = []
        try:
            blocker.execute("BEGIN IMMEDIATE")
            blocker.execute("CREATE TABLE IF NOT EXISTS blocker_probe (x)")
            held_at = time.monotonic()
            started = []

            async def start(i):
                ids.append(await host.start_run("w", {"x": i}))
                started.append(time.monotonic())

            async with anyio.create_task_group() as tg:
                for i in range(5):
                    tg.start_soon(start, i)
                await anyio.sleep(1.0)
                assert started == [], "a start was acknowledged while its commit was blocked"
                blocker.execute("ROLLBACK")
                released_at = time.monotonic()
        finally:
            blocker.close()
        assert released_at - held_at >= 1.0
        assert len(ids) == 5 and all(t >= released_at for t in started)
        outputs = sorted([(await host.wait(run_id)).outputs["b"] for run_id in ids])
        assert outputs == [1, 2, 3, 4, 5]
        await host.engine.committed()
        for run_id in ids:
            events = await host.engine.events(run_id)
            assert events[-1].type == "run.succeeded"
            stored = query(
                db, "SELECT seq, type FROM events WHERE run_id = ? ORDER BY seq", (run_id,)
            )
            assert stored == [(e.seq, e.type) for e in events]
            assert query(db, "SELECT status FROM runs WHERE id = ?", (run_id,)) == [("succeeded",)]
        assert host.store.last_error is None
    failures = [r for r in caplog.records if "commit failed" in r.getMessage()]
    assert failures == [], "the writer failed instead of waiting for the lock"
