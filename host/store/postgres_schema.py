"""Opening the PostgreSQL run store: the server reached (waiting for it), the schema migrated.

The tables are the SQLite store's (same rows, same meaning), plus what several hosts need:
``hosts`` (each host's lease, renewed by its heartbeat), the owner and epoch of each run, and
``commands`` (control of a run sent to the host that owns it). Text keys use the ``C``
collation so that ids sort as code points, as in SQLite, whatever the database's locale.

The schema version is the ``schema_version`` row of ``plait_meta``; :data:`MIGRATIONS` holds
one script per version. Migrating takes a transaction-wide advisory lock, so hosts starting
together migrate once; a database of a newer plait is refused.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final

from plait.errors import StoreError

if TYPE_CHECKING:
    import psycopg

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "connect_waiting", "migrate", "shown"]

log = logging.getLogger("plait.store.postgres")

MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: everything the SQLite store keeps (its schema 4), and the cluster's tables.
    """
    CREATE TABLE definitions (
        digest TEXT COLLATE "C" PRIMARY KEY,
        name TEXT NOT NULL,
        definition TEXT NOT NULL
    );
    CREATE TABLE workflow_versions (
        name TEXT COLLATE "C" NOT NULL,
        version BIGINT NOT NULL,
        digest TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE workflows (
        name TEXT COLLATE "C" PRIMARY KEY,
        current BIGINT NOT NULL,
        deleted BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE runs (
        id TEXT COLLATE "C" PRIMARY KEY,
        workflow TEXT COLLATE "C" NOT NULL,
        version BIGINT NOT NULL,
        digest TEXT,
        status TEXT NOT NULL,
        parent_id TEXT COLLATE "C",
        parent_step TEXT,
        idempotency_key TEXT,
        inputs TEXT NOT NULL,
        outputs TEXT,
        error TEXT,
        total_steps BIGINT NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        owner TEXT,
        epoch BIGINT NOT NULL DEFAULT 1
    );
    CREATE INDEX runs_by_created ON runs (created_at, id);
    CREATE INDEX runs_by_workflow ON runs (workflow, created_at);
    CREATE INDEX runs_by_status ON runs (status, created_at);
    CREATE INDEX runs_by_parent ON runs (parent_id, parent_step);
    CREATE INDEX runs_by_duration ON runs
        (workflow, (finished_at - started_at), created_at, status);
    CREATE INDEX runs_owned ON runs (owner, created_at)
        WHERE status IN ('pending', 'running', 'paused', 'waiting');
    CREATE TABLE idempotency (
        key TEXT COLLATE "C" PRIMARY KEY,
        run_id TEXT NOT NULL
    );
    CREATE TABLE steps (
        run_id TEXT COLLATE "C" NOT NULL,
        path TEXT COLLATE "C" NOT NULL,
        status TEXT NOT NULL,
        output TEXT,
        error TEXT,
        attempts BIGINT NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        workflow TEXT COLLATE "C",
        base TEXT COLLATE "C",
        run_created DOUBLE PRECISION,
        duration DOUBLE PRECISION,
        waited DOUBLE PRECISION NOT NULL DEFAULT 0,
        cached BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, path)
    );
    CREATE INDEX steps_stats ON steps
        (workflow, base, duration, run_created, status, attempts, cached, waited);
    CREATE TABLE events (
        run_id TEXT COLLATE "C" NOT NULL,
        seq BIGINT NOT NULL,
        type TEXT NOT NULL,
        step TEXT,
        data TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (run_id, seq)
    );
    CREATE TABLE conversations (
        run_id TEXT COLLATE "C" NOT NULL,
        name TEXT COLLATE "C" NOT NULL,
        idx BIGINT NOT NULL,
        message TEXT NOT NULL,
        PRIMARY KEY (run_id, name, idx)
    );
    CREATE TABLE workflow_breakpoints (
        name TEXT COLLATE "C" PRIMARY KEY,
        breakpoints TEXT NOT NULL
    );
    CREATE TABLE step_configs (
        run_id TEXT COLLATE "C" NOT NULL,
        path TEXT COLLATE "C" NOT NULL,
        attempt BIGINT NOT NULL,
        config TEXT NOT NULL,
        PRIMARY KEY (run_id, path, attempt)
    );
    CREATE TABLE schedules (
        name TEXT COLLATE "C" PRIMARY KEY,
        spec TEXT NOT NULL,
        state TEXT NOT NULL
    );
    CREATE TABLE webhooks (
        id TEXT COLLATE "C" PRIMARY KEY,
        spec TEXT NOT NULL,
        state TEXT NOT NULL
    );
    CREATE TABLE webhook_outbox (
        id BIGSERIAL PRIMARY KEY,
        webhook TEXT COLLATE "C" NOT NULL,
        message TEXT NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        next_at DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX webhook_outbox_next ON webhook_outbox (next_at);
    CREATE TABLE webhook_deliveries (
        id BIGSERIAL PRIMARY KEY,
        webhook TEXT COLLATE "C" NOT NULL,
        message_id TEXT NOT NULL,
        attempt BIGINT NOT NULL,
        status BIGINT,
        error TEXT,
        ts DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX webhook_deliveries_by ON webhook_deliveries (webhook, id);
    CREATE TABLE dlq (
        run_id TEXT COLLATE "C" PRIMARY KEY,
        workflow TEXT COLLATE "C" NOT NULL,
        step TEXT,
        error_type TEXT,
        entry TEXT NOT NULL,
        failed_at DOUBLE PRECISION NOT NULL,
        state TEXT NOT NULL DEFAULT 'open'
    );
    CREATE INDEX dlq_by_workflow ON dlq (workflow, failed_at);
    CREATE INDEX dlq_by_time ON dlq (failed_at);
    CREATE TABLE agent_usage (
        run_id TEXT COLLATE "C" NOT NULL,
        seq BIGINT NOT NULL,
        workflow TEXT COLLATE "C" NOT NULL,
        run_created DOUBLE PRECISION NOT NULL,
        agent TEXT COLLATE "C" NOT NULL,
        turns BIGINT NOT NULL,
        usage TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    );
    CREATE INDEX agent_usage_by_workflow ON agent_usage (workflow, run_created);
    CREATE INDEX agent_usage_by_time ON agent_usage (run_created);
    CREATE TABLE hosts (
        id TEXT COLLATE "C" PRIMARY KEY,
        name TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        heartbeat_at DOUBLE PRECISION NOT NULL,
        draining BOOLEAN NOT NULL DEFAULT false,
        live BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE commands (
        id BIGSERIAL PRIMARY KEY,
        run_id TEXT COLLATE "C",
        host TEXT COLLATE "C",
        command TEXT NOT NULL,
        args TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        done BOOLEAN NOT NULL DEFAULT false,
        result TEXT
    );
    CREATE INDEX commands_by_run ON commands (run_id);
    """,
)
"""One script per schema version; index 0 creates version 1."""

SCHEMA_VERSION: Final = len(MIGRATIONS)
MIGRATION_LOCK: Final = 0x706C6169  # "plai": the advisory lock hosts migrate under


def shown(url: str) -> str:
    """``url`` without its password, for messages and the log."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(url)
    except Exception:  # a malformed URL: say only what kind it is
        return "postgresql://…"
    host = parts.get("host") or "localhost"
    port = parts.get("port") or "5432"
    user = f"{parts['user']}@" if parts.get("user") else ""
    return f"postgresql://{user}{host}:{port}/{parts.get('dbname', '')}"


def connect_waiting(url: str, timeout: float) -> psycopg.Connection:
    """A connection to ``url``, waiting up to ``timeout`` seconds for the server (with backoff,
    logging what it waits for at each try).

    Raises:
        StoreError: the server could not be reached in time, or refused the connection for a
            reason waiting does not cure (bad password, no such database).
    """
    import psycopg

    deadline = time.monotonic() + timeout
    delay = 0.25
    while True:
        try:
            return psycopg.connect(url, connect_timeout=max(1, min(10, int(timeout))))
        except psycopg.OperationalError as exc:
            reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            reason = reason[:300] or type(exc).__name__
            if _hopeless(str(exc)):
                raise StoreError(shown(url), f"cannot connect: {reason}") from None
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreError(
                    shown(url), f"not reachable after {timeout:g}s ({reason}); is it running?"
                ) from None
            log.warning(
                "waiting for the PostgreSQL store at %s (%s); next try in %.1fs",
                shown(url),
                reason,
                min(delay, left),
            )
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)


def _hopeless(message: str) -> bool:
    """Whether a connection error will not go away by waiting."""
    return any(
        words in message
        for words in ("password authentication failed", "does not exist", "no pg_hba.conf entry")
    )


def migrate(conn: psycopg.Connection, url: str) -> int:
    """Bring the schema up to date (under the migration lock); returns the version found.

    Raises:
        StoreError: the database holds tables but is not a plait store, or was written by a
            newer plait.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        found = _version(conn, url)
        if found > SCHEMA_VERSION:
            raise StoreError(
                shown(url),
                f"was written by a newer plait (schema {found}; this one knows up to "
                f"{SCHEMA_VERSION}); upgrade plait",
            )
        if found == 0:
            conn.execute("CREATE TABLE plait_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute("INSERT INTO plait_meta VALUES ('schema_version', '0')")
        for number in range(found + 1, SCHEMA_VERSION + 1):
            conn.execute(MIGRATIONS[number - 1])
            conn.execute(
                "UPDATE plait_meta SET value = %s WHERE key = 'schema_version'", (str(number),)
            )
            log.info("store %s: migrated to schema %d", shown(url), number)
    return found


def _version(conn: psycopg.Connection, url: str) -> int:
    """The schema version kept, 0 for an empty database."""
    row = conn.execute("SELECT to_regclass('plait_meta') IS NOT NULL").fetchone()
    if row is not None and row[0]:
        kept = conn.execute("SELECT value FROM plait_meta WHERE key = 'schema_version'").fetchone()
        return int(kept[0]) if kept is not None else 0
    tables = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
    ).fetchone()
    if tables is not None and tables[0]:
        raise StoreError(
            shown(url),
            "the database holds tables but is not a plait store: give plait a database of its own",
        )
    return 0
