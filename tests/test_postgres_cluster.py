"""The throwaway PostgreSQL cluster of the tests (tests/postgres_cluster.py) and its fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from . import postgres_cluster
from .postgres_cluster import PgUnavailable, ensure_bindir

pytestmark = pytest.mark.timeout(60)


def test_connects_and_answers(pg_cluster, pg_url):
    assert pg_url.startswith(f"postgresql://postgres@127.0.0.1:{pg_cluster.port}/test_")
    with psycopg.connect(pg_url) as conn:
        (version,) = conn.execute("select version()").fetchone()
    assert version.startswith("PostgreSQL ")


def _tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "select tablename from pg_tables where schemaname = 'public' order by 1"
        ).fetchall()
    return [name for (name,) in rows]


@pytest.mark.parametrize("which", ["first", "second"])
def test_each_test_gets_its_own_empty_database(pg_cluster, pg_url, which):
    # both create the same table: a database shared, or left over, would already have it
    assert _tables(pg_url) == []
    with psycopg.connect(pg_url) as conn:
        conn.execute("create table mine (which text)")
        conn.execute("insert into mine values (%s)", (which,))
    assert _tables(pg_url) == ["mine"]
    assert pg_url.rsplit("/", 1)[1] in _databases(pg_cluster)


def _databases(cluster) -> set[str]:
    with psycopg.connect(cluster.url()) as conn:
        return {name for (name,) in conn.execute("select datname from pg_database").fetchall()}


def test_databases_are_separate_and_dropped(pg_cluster):
    one = pg_cluster.create_database("plait_one")
    two = pg_cluster.create_database("plait_two")
    try:
        assert one != two
        with psycopg.connect(one) as conn:
            conn.execute("create table only_in_one (n int)")
        assert _tables(one) == ["only_in_one"]
        assert _tables(two) == []
        held = psycopg.connect(two)  # a connection left open does not stop the drop
    finally:
        pg_cluster.drop_database("plait_one")
        pg_cluster.drop_database("plait_two")
    held.close()
    assert not {"plait_one", "plait_two"} & _databases(pg_cluster)


def test_committed_row_survives_a_kill(pg_cluster, pg_url):
    with psycopg.connect(pg_url) as conn:
        conn.execute("create table kept (n int)")
        conn.execute("insert into kept values (1), (2)")
    # an open transaction at the crash: its row must not be there after recovery
    loser = psycopg.connect(pg_url)
    loser.execute("insert into kept values (3)")
    postmaster = pg_cluster.pid

    pg_cluster.kill()
    assert not pg_cluster.running
    assert pg_cluster.processes() == []
    with pytest.raises(psycopg.OperationalError):
        loser.execute("select 1")
    loser.close()

    pg_cluster.start()
    assert pg_cluster.pid not in (None, postmaster)
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("select n from kept order by n").fetchall()
    assert rows == [(1,), (2,)]


def test_restart_keeps_the_port_and_the_data(pg_cluster, pg_url):
    with psycopg.connect(pg_url) as conn:
        conn.execute("create table kept as select 42 as n")
    port = pg_cluster.port
    pg_cluster.restart()
    assert pg_cluster.port == port
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("select n from kept").fetchone() == (42,)


def test_a_cluster_whose_owner_dies_is_shut_down_and_removed(tmp_path):
    # a pytest worker killed outright runs no teardown: the supervisor stops the server itself
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from postgres_cluster import PgCluster;"
        "c = PgCluster(name='orphan'); c.start();"
        "print(c.base, c.pid, flush=True);"
        "import time; time.sleep(120)"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script, str(Path(postgres_cluster.__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = owner.stdout.readline()
        assert line, "the owner did not start its cluster (its stderr is in the captured output)"
        base, pid = line.split()
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close()
    deadline = time.monotonic() + 30
    while Path(base).exists() or postgres_cluster._alive(int(pid)):
        assert time.monotonic() < deadline, f"{base} or the postmaster {pid} outlived its owner"
        time.sleep(0.05)
    assert postgres_cluster._cluster_processes(Path(base) / "data") == []


def test_missing_server_says_why_it_is_skipped(monkeypatch):
    monkeypatch.setattr(postgres_cluster, "find_bindir", lambda: None)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PgUnavailable, match=r"no initdb on PATH .* run `make postgres`"):
        ensure_bindir()
