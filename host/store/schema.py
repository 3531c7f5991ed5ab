"""Opening the run store's SQLite file: settings checked, damage detected, schema migrated.

A store is only useful if it is what it claims to be, so opening one is strict (docs/reliability.md
§48 and §54): WAL, the chosen ``synchronous`` level and the busy timeout are set and then read back;
a file that SQLite cannot read, that fails ``quick_check`` or that is not a plait store stops the
host with an error naming the file, and the file is never replaced or "repaired".

The schema version is SQLite's ``user_version``; :data:`MIGRATIONS` holds one script per
version, applied in order, each in its own transaction.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

from plait.config import StoreSettings
from plait.errors import StoreCorrupt, StoreError
from plait.state.runs import without_indexes

__all__ = ["DB_FILE", "MIGRATIONS", "SCHEMA_VERSION", "connect", "open_database"]

DB_FILE: Final = "plait.db"
"""The store's file name inside the data dir."""

MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: workflows and their versions, runs, idempotency keys, step states, events and
    # conversations. Definitions are content-addressed so that a run's snapshot is one digest.
    """
    CREATE TABLE definitions (
        digest TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        definition TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE workflow_versions (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        digest TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (name, version)
    ) WITHOUT ROWID;
    CREATE TABLE workflows (
        name TEXT PRIMARY KEY,
        current INTEGER NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        workflow TEXT NOT NULL,
        version INTEGER NOT NULL,
        digest TEXT,
        status TEXT NOT NULL,
        parent_id TEXT,
        parent_step TEXT,
        idempotency_key TEXT,
        inputs TEXT NOT NULL,
        outputs TEXT,
        error TEXT,
        total_steps INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL
    );
    CREATE INDEX runs_by_created ON runs (created_at, id);
    CREATE INDEX runs_by_workflow ON runs (workflow, created_at);
    CREATE INDEX runs_by_status ON runs (status, created_at);
    CREATE INDEX runs_by_parent ON runs (parent_id, parent_step);
    CREATE TABLE idempotency (
        key TEXT PRIMARY KEY,
        run_id TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE steps (
        run_id TEXT NOT NULL,
        path TEXT NOT NULL,
        status TEXT NOT NULL,
        output TEXT,
        error TEXT,
        attempts INTEGER NOT NULL,
        started_at REAL,
        finished_at REAL,
        PRIMARY KEY (run_id, path)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        step TEXT,
        data TEXT NOT NULL,
        ts REAL NOT NULL,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE conversations (
        run_id TEXT NOT NULL,
        name TEXT NOT NULL,
        idx INTEGER NOT NULL,
        message TEXT NOT NULL,
        PRIMARY KEY (run_id, name, idx)
    ) WITHOUT ROWID;
    """,
    # 2: the debugger's: each workflow's breakpoints, and the whole rendered configuration of a
    # step attempt when its step.started event holds a cut one.
    """
    CREATE TABLE workflow_breakpoints (
        name TEXT PRIMARY KEY,
        breakpoints TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE step_configs (
        run_id TEXT NOT NULL,
        path TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        config TEXT NOT NULL,
        PRIMARY KEY (run_id, path, attempt)
    ) WITHOUT ROWID;
    """,
    # 3: runs that start themselves and failures that are contained: schedules (their spec and
    # their state, as JSON, which the scheduler owns), webhook subscriptions, the webhook outbox
    # (written in the transaction of the event it delivers) and its delivery log, and the
    # dead-letter queue (one row per run that failed for good).
    """
    CREATE TABLE schedules (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        state TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE webhooks (
        id TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        state TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE webhook_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        webhook TEXT NOT NULL,
        message TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX webhook_outbox_next ON webhook_outbox (next_at);
    CREATE TABLE webhook_deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        webhook TEXT NOT NULL,
        message_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        status INTEGER,
        error TEXT,
        ts REAL NOT NULL
    );
    CREATE INDEX webhook_deliveries_by ON webhook_deliveries (webhook, id);
    CREATE TABLE dlq (
        run_id TEXT PRIMARY KEY,
        workflow TEXT NOT NULL,
        step TEXT,
        error_type TEXT,
        entry TEXT NOT NULL,
        failed_at REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'open'
    ) WITHOUT ROWID;
    CREATE INDEX dlq_by_workflow ON dlq (workflow, failed_at);
    CREATE INDEX dlq_by_time ON dlq (failed_at);
    """,
    # 4: analytics (runs/stats). Runs are indexed by workflow and duration, and each step row
    # carries what the figures group and filter by, so they are read from one covering index
    # without a join: its run's workflow and creation time, its path without loop indexes
    # (``base``; NULL for a step a rerun reused, which did not run there), its duration, the
    # seconds it waited for a concurrency slot and whether its last attempt took a tool result
    # from the cache. ``agent_usage`` holds the ``agent.usage`` events (the events table has no
    # index by type). Rows kept before this version are filled in from their runs and events,
    # once, here.
    """
    ALTER TABLE steps ADD COLUMN workflow TEXT;
    ALTER TABLE steps ADD COLUMN base TEXT;
    ALTER TABLE steps ADD COLUMN run_created REAL;
    ALTER TABLE steps ADD COLUMN duration REAL;
    ALTER TABLE steps ADD COLUMN waited REAL NOT NULL DEFAULT 0;
    ALTER TABLE steps ADD COLUMN cached INTEGER NOT NULL DEFAULT 0;
    UPDATE steps SET workflow = runs.workflow, run_created = runs.created_at,
        base = plait_without_indexes(steps.path),
        duration = steps.finished_at - steps.started_at
        FROM runs WHERE runs.id = steps.run_id;
    UPDATE steps SET cached = 1
        FROM (SELECT DISTINCT run_id, step FROM events WHERE type = 'step.cached') AS c
        WHERE c.run_id = steps.run_id AND c.step = steps.path;
    UPDATE steps SET base = NULL
        FROM (SELECT DISTINCT run_id, step FROM events WHERE type = 'step.reused') AS r
        WHERE r.run_id = steps.run_id AND r.step = steps.path;
    UPDATE steps SET waited = w.waited
        FROM (
            SELECT run_id, step, max(json_extract(data, '$.waited')) AS waited FROM events
            WHERE type IN ('step.succeeded', 'step.failed')
            AND json_extract(data, '$.waited') IS NOT NULL GROUP BY run_id, step
        ) AS w
        WHERE w.run_id = steps.run_id AND w.step = steps.path;
    CREATE INDEX steps_stats ON steps
        (workflow, base, duration, run_created, status, attempts, cached, waited);
    CREATE INDEX runs_by_duration ON runs
        (workflow, finished_at - started_at, created_at, status);
    CREATE TABLE agent_usage (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        workflow TEXT NOT NULL,
        run_created REAL NOT NULL,
        agent TEXT NOT NULL,
        turns INTEGER NOT NULL,
        usage TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID;
    INSERT INTO agent_usage (run_id, seq, workflow, run_created, agent, turns, usage)
        SELECT e.run_id, e.seq, r.workflow, r.created_at,
            coalesce(json_extract(e.data, '$.agent'), ''),
            coalesce(json_extract(e.data, '$.turns'), 0),
            coalesce(json_extract(e.data, '$.usage'), '{}')
        FROM events e JOIN runs r ON r.id = e.run_id WHERE e.type = 'agent.usage';
    CREATE INDEX agent_usage_by_workflow ON agent_usage (workflow, run_created);
    CREATE INDEX agent_usage_by_time ON agent_usage (run_created);
    """,
)
"""One script per schema version; index 0 creates version 1."""

SCHEMA_VERSION: Final = len(MIGRATIONS)
"""The schema version this plait writes."""

_MOVE_ASIDE = (
    "it was left as it is: move it aside (or restore a backup) to start with an empty store"
)


def connect(
    path: Path, settings: StoreSettings, *, readonly: bool = False, wal: bool = True
) -> sqlite3.Connection:
    """A connection with the store's settings applied and checked (no schema work).

    ``wal=False`` leaves the journal mode alone, because switching to WAL rewrites the file's
    header: :func:`open_database` switches only once it knows the file is a plait store.

    Autocommit mode: writers issue ``BEGIN IMMEDIATE`` themselves, so a transaction takes the
    write lock at its start instead of failing half-way.

    Raises:
        StoreCorrupt: the file cannot be read as a database.
        StoreError: a setting did not take (a file system without WAL support, say).
    """
    try:
        if readonly:
            conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
        else:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(str(path), f"cannot open: {exc}") from None
    try:
        _configure(conn, path, settings, wal=wal and not readonly)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreCorrupt(
            str(path), f"cannot be read as a SQLite database ({exc}); {_MOVE_ASIDE}"
        ) from None
    except StoreError:
        conn.close()
        raise
    return conn


def _configure(conn: sqlite3.Connection, path: Path, settings: StoreSettings, *, wal: bool) -> None:
    busy_ms = int(settings.busy_timeout * 1000)
    conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    if wal:
        _use_wal(conn, path)
    conn.execute(f"PRAGMA synchronous = {settings.synchronous}")
    wanted = {"FULL": 2, "NORMAL": 1}[settings.synchronous]
    got = conn.execute("PRAGMA synchronous").fetchone()[0]
    if got != wanted:
        raise StoreError(str(path), f"synchronous is {got}, expected {settings.synchronous}")
    if conn.execute("PRAGMA busy_timeout").fetchone()[0] < busy_ms:
        raise StoreError(str(path), "busy_timeout did not take")


def _use_wal(conn: sqlite3.Connection, path: Path) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(
            str(path),
            f"could not switch to WAL journaling (got {mode!r}); "
            "put the data dir on a local file system",
        )


def open_database(path: Path, settings: StoreSettings) -> sqlite3.Connection:
    """Open (or create) the store for writing: check it, then bring its schema up to date.

    Raises:
        StoreCorrupt: damaged, or not a plait store; the file is left untouched.
        StoreError: created by a newer plait, or the settings could not be applied.
    """
    existed = path.exists() and path.stat().st_size > 0
    conn = connect(path, settings, wal=False)
    try:
        if existed:
            _check(conn, path, settings)  # before anything writes to the file
        _use_wal(conn, path)
        _migrate(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreCorrupt(str(path), f"is damaged ({exc}); {_MOVE_ASIDE}") from None
    except StoreError:
        conn.close()
        raise
    return conn


def _check(conn: sqlite3.Connection, path: Path, settings: StoreSettings) -> None:
    if settings.check_on_start:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise StoreCorrupt(
                str(path), f"failed its integrity check ({'; '.join(problems)}); {_MOVE_ASIDE}"
            )
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables:
            raise StoreCorrupt(
                str(path), f"is a SQLite database but not a plait store; {_MOVE_ASIDE}"
            )
    elif version > SCHEMA_VERSION:
        raise StoreError(
            str(path),
            f"was written by a newer plait (schema {version}; this "
            f"one knows up to {SCHEMA_VERSION}); upgrade plait",
        )


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    # Migration 4 fills the path-without-indexes of the step rows kept before it.
    conn.create_function("plait_without_indexes", 1, without_indexes, deterministic=True)
    for number in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[number - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
