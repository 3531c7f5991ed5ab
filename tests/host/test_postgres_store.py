"""The PostgreSQL store against a real throwaway PostgreSQL server (``pg_url``): the same
rows and guarantees as the SQLite store, migrations, a newer schema refused, an unreachable
server waited for, a lost connection reconnected, and the ownership and fencing several hosts
rely on.
"""

from __future__ import annotations

import logging

import anyio
import psycopg
import pytest

import plait
from plait.config import HostConfig, StoreSettings
from plait.errors import StoreError
from plait.state.runs import Run
from plait.store.postgres import PostgresStore
from plait.store.postgres_schema import SCHEMA_VERSION

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

ECHO = {
    "name": "w",
    "steps": [
        {"id": "a", "transform": "${inputs.x + 1}"},
        {"id": "b", "tool": "probe.echo", "with": {"value": "${steps.a.output}"}},
    ],
    "inputs": {"type": "object", "properties": {"x": {"type": "integer"}}},
    "outputs": {"b": "${steps.b.output}"},
}


def config(tmp_path, url, **cluster):
    return HostConfig.model_validate(
        {
            "host": {"data_dir": str(tmp_path / "data")},
            "store": {"url": url, "connect_timeout": 5},
            "cluster": cluster,
            "plugins": {"entry_points": False},
        }
    )


def rows(url, sql, params=()):
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


async def test_runs_are_kept_in_postgresql_and_read_back_after_a_restart(tmp_path, pm, pg_url):
    async with plait.Host(config(tmp_path, pg_url), pm=pm) as host:
        host.register(ECHO)
        run_id = await host.start_run("w", {"x": 1}, idempotency_key="once")
        run = await host.wait(run_id)
        assert run.status == "succeeded" and run.outputs == {"b": 2}
    assert rows(pg_url, "SELECT status FROM runs WHERE id = %s", (run.id,)) == [("succeeded",)]
    kinds = [
        kind
        for (kind,) in rows(
            pg_url, "SELECT type FROM events WHERE run_id = %s ORDER BY seq", (run.id,)
        )
    ]
    assert kinds[0] == "run.created" and kinds[-1] == "run.succeeded"
    async with plait.Host(config(tmp_path, pg_url), pm=pm) as host:
        again = await host.get_run(run.id)
        assert again.status == "succeeded" and again.outputs == {"b": 2}
        page = await host.list_runs(workflow="w")
        assert [r["id"] for r in page.runs] == [run.id]
        same = await host.start_run("w", {"x": 1}, idempotency_key="once")
        assert same == run.id
        events = await host.events(run.id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        stats = await host.run_stats(workflow="w")
        assert stats["workflows"][0]["runs"] == 1


async def test_a_new_database_is_migrated_and_one_of_a_newer_plait_refused(tmp_path, pm, pg_url):
    async with PostgresStore(pg_url, StoreSettings(connect_timeout=5)):
        pass
    assert rows(pg_url, "SELECT value FROM plait_meta") == [(str(SCHEMA_VERSION),)]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE plait_meta SET value = '99'")
    with pytest.raises(StoreError, match="newer plait"):
        async with PostgresStore(pg_url, StoreSettings(connect_timeout=5)):
            pass


async def test_a_database_of_an_older_schema_is_migrated_and_keeps_its_runs(
    tmp_path, pm, pg_url, monkeypatch
):
    async with plait.Host(config(tmp_path, pg_url), pm=pm) as host:
        host.register(ECHO)
        run = await host.wait(await host.start_run("w", {"x": 1}))
    # the next plait's schema: one more migration than this database has seen
    from plait.store import postgres_schema

    later = (*postgres_schema.MIGRATIONS, "ALTER TABLE runs ADD COLUMN note TEXT")
    monkeypatch.setattr(postgres_schema, "MIGRATIONS", later)
    monkeypatch.setattr(postgres_schema, "SCHEMA_VERSION", len(later))
    async with plait.Host(config(tmp_path, pg_url), pm=pm) as host:
        kept = await host.get_run(run.id)
        assert kept.status == "succeeded" and kept.outputs == {"b": 2}
    assert rows(pg_url, "SELECT value FROM plait_meta") == [(str(len(later)),)]
    assert rows(pg_url, "SELECT note FROM runs") == [(None,)]


async def test_a_foreign_database_is_refused(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int)")
    with pytest.raises(StoreError, match="not a plait store"):
        async with PostgresStore(pg_url, StoreSettings(connect_timeout=5)):
            pass
    assert rows(pg_url, "SELECT count(*) FROM accounts") == [(0,)]


async def test_an_unreachable_server_is_waited_for_then_named(caplog):
    caplog.set_level(logging.WARNING)
    url = "postgresql://postgres@127.0.0.1:9/nowhere"
    with pytest.raises(StoreError, match="not reachable after 1s") as caught:
        async with PostgresStore(url, StoreSettings(connect_timeout=1)):
            pass
    assert "127.0.0.1:9" in str(caught.value)
    assert (
        "waiting for the PostgreSQL store at postgresql://postgres@127.0.0.1:9/nowhere"
        in caplog.text
    )


async def test_a_run_another_host_took_is_fenced(pg_url):
    async with PostgresStore(pg_url, StoreSettings(connect_timeout=5)) as store:
        run = Run("r1", "w", 1, {})
        store.attach(run)
        run.record("run.created", None, {})
        await store.sync()
        assert rows(pg_url, "SELECT owner, epoch FROM runs") == [(store.host_id, 1)]
        with psycopg.connect(pg_url, autocommit=True) as conn:  # another host took it over
            conn.execute("UPDATE runs SET owner = 'other', epoch = 2")
        run.record("run.started", None, {})
        await store.sync()
        assert store.fenced == {"r1"}
        assert [s for (s,) in rows(pg_url, "SELECT seq FROM events ORDER BY seq")] == [1]


SLOW = {
    "name": "slow",
    "steps": [
        {"id": "a", "tool": "probe.work", "with": {"seconds": 0.3, "label": "a"}},
        {"id": "b", "tool": "probe.work", "with": {"seconds": 0.3, "label": "b"}, "needs": ["a"]},
        {"id": "c", "tool": "probe.work", "with": {"seconds": 0.3, "label": "c"}, "needs": ["b"]},
    ],
    "outputs": {"c": "${steps.c.output}"},
}


async def test_a_lost_connection_mid_run_is_made_again_and_nothing_is_lost(
    tmp_path, pm, pg_url, pg_cluster, caplog
):
    caplog.set_level(logging.WARNING)
    async with plait.Host(config(tmp_path, pg_url), pm=pm) as host:
        host.register(SLOW)
        ids = [await host.start_run("slow", {}) for _ in range(10)]
        await anyio.sleep(0.4)
        await anyio.to_thread.run_sync(pg_cluster.restart)  # every connection is cut
        with anyio.fail_after(30):
            finished = [await host.wait(run_id) for run_id in ids]
    assert {run.status for run in finished} == {"succeeded"}
    assert "connection lost; connecting again" in caplog.text
    for run_id in ids:
        seqs = [
            s
            for (s,) in rows(
                pg_url, "SELECT seq FROM events WHERE run_id = %s ORDER BY seq", (run_id,)
            )
        ]
        assert seqs == list(range(1, len(seqs) + 1))
        assert rows(pg_url, "SELECT status FROM runs WHERE id = %s", (run_id,)) == [("succeeded",)]
