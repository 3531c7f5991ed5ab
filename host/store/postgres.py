"""The PostgreSQL run store: the SQLite store's rows and guarantees, shared by several hosts.

It is the SQLite store with another database under it: the same sink turns each event into
the same rows, a writer thread commits whatever has queued in one transaction (group commit;
``executemany`` sends a batch in one round trip, pipelined), and the teller publishes events
only after their commit. The writer is a thread with a connection of its own, not a task on
the event loop, for the SQLite store's reason: a busy loop must never keep the database idle.
Reads use a psycopg connection pool from worker threads.

What several hosts add (see ``plait.host.cluster`` for the loop that drives it):

- **Ownership.** Every run row names its ``owner`` (a host id, new at each start) and an
  ``epoch``. A run is created owned by the host that creates it; a host whose lease (its row in
  ``hosts``, renewed by heartbeat) has expired loses its runs to :meth:`claim`, which takes
  them with ``FOR UPDATE SKIP LOCKED`` (several hosts claiming at once never take the same run)
  and raises their epoch.
- **Fencing.** Each commit first locks the rows of the runs it writes for (``FOR SHARE``) and
  checks that this host still owns them at the epoch it knows; the rows of a run it lost are
  dropped, its events are never told, and the run is reported in :attr:`fenced` so the host
  stops it. A host that was frozen past its lease therefore writes nothing for the runs it
  lost, and a committed step is never recorded twice.
- **Fan-out.** Each commit notifies ``plait_events`` with the runs it wrote and their last
  sequence number, so other hosts can follow runs they do not own (``runs/subscribe``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from plait.config import ClusterSettings, StoreSettings
from plait.errors import StoreError
from plait.state.run_store import (
    BOTTLENECK_RUNS,
    PERCENTILES,
    UNFINISHED,
    AgentUsage,
    EventRouter,
    Percentiles,
    RunStats,
    RunTiming,
    StepStats,
    StepTiming,
    WorkflowStats,
)
from plait.state.runs import Event, Run
from plait.store import sqlite as base
from plait.store.postgres_schema import connect_waiting, migrate, shown
from plait.store.sqlite import SqliteStore

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

    from plait.telemetry import Metrics

__all__ = ["EVENTS_CHANNEL", "PostgresStore"]

log = logging.getLogger("plait.store.postgres")

T = TypeVar("T")

EVENTS_CHANNEL: Final = "plait_events"
"""Notified after each commit: ``run_id:last_seq`` of each run written, space-separated."""
COMMANDS_CHANNEL: Final = "plait_commands"
"""Notified when a command for a run is queued for the host that owns it."""
NOTIFY_BYTES: Final = 7000
"""A notification's payload stays under PostgreSQL's 8000-byte limit."""
NOW: Final = "extract(epoch FROM clock_timestamp())"
"""The database's clock: leases are compared on one clock, whatever the hosts' say."""
_UNFINISHED_SQL: Final = ", ".join(f"'{status}'" for status in UNFINISHED)

# The SQLite store's statements, as PostgreSQL says them (same parameters, same order).
_PG: Final[dict[str, str]] = {
    base._DEFINITION: "INSERT INTO definitions (digest, name, definition) VALUES (%s, %s, %s) "
    "ON CONFLICT DO NOTHING",
    base._VERSION: "INSERT INTO workflow_versions (name, version, digest, created_at) "
    "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
    base._WORKFLOW: "INSERT INTO workflows (name, current, deleted) VALUES (%s, %s, %s) "
    "ON CONFLICT (name) DO UPDATE SET current = excluded.current, deleted = excluded.deleted",
    base._BREAKPOINTS: "INSERT INTO workflow_breakpoints (name, breakpoints) VALUES (%s, %s) "
    "ON CONFLICT (name) DO UPDATE SET breakpoints = excluded.breakpoints",
    base._RUN: "INSERT INTO runs (id, workflow, version, digest, status, parent_id, parent_step, "
    "idempotency_key, inputs, total_steps, created_at, owner) "
    "VALUES (%s, %s, %s, %s, 'pending', %s, %s, %s, %s, %s, %s, %s)",
    base._KEY: "INSERT INTO idempotency (key, run_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
    base._RUN_STATUS: "UPDATE runs SET status = %s, started_at = %s, finished_at = %s, "
    "outputs = %s, error = %s WHERE id = %s",
    base._EVENT: "INSERT INTO events (run_id, seq, type, step, data, ts) "
    "VALUES (%s, %s, %s, %s, %s, %s)",
    base._STEP: "INSERT INTO steps (run_id, path, status, output, error, attempts, started_at, "
    "finished_at, workflow, base, run_created, duration, waited, cached) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (run_id, path) DO UPDATE SET status = excluded.status, "
    "output = excluded.output, error = excluded.error, attempts = excluded.attempts, "
    "started_at = excluded.started_at, finished_at = excluded.finished_at, "
    "workflow = excluded.workflow, base = excluded.base, run_created = excluded.run_created, "
    "duration = excluded.duration, waited = excluded.waited, cached = excluded.cached",
    base._AGENT_USAGE: "INSERT INTO agent_usage (run_id, seq, workflow, run_created, agent, "
    "turns, usage) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
    base._MESSAGE: "INSERT INTO conversations (run_id, name, idx, message) "
    "VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (run_id, name, idx) DO UPDATE SET message = excluded.message",
    base._STEP_CONFIG: "INSERT INTO step_configs (run_id, path, attempt, config) "
    "VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (run_id, path, attempt) DO UPDATE SET config = excluded.config",
    base._SCHEDULE: "INSERT INTO schedules (name, spec, state) VALUES (%s, %s, %s) "
    "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, state = excluded.state",
    base._SCHEDULE_GONE: "DELETE FROM schedules WHERE name = %s AND spec = ''",
    base._DEAD_LETTER: "INSERT INTO dlq (run_id, workflow, step, error_type, entry, failed_at, "
    "state) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run_id) DO UPDATE SET "
    "workflow = excluded.workflow, step = excluded.step, error_type = excluded.error_type, "
    "entry = excluded.entry, failed_at = excluded.failed_at, state = excluded.state",
    base._PRUNE_DEAD_LETTERS: "DELETE FROM dlq WHERE failed_at < %s",
    base._WEBHOOK_STATE: "UPDATE webhooks SET state = %s WHERE id = %s",
    base._WEBHOOK: "INSERT INTO webhooks (id, spec, state) VALUES (%s, %s, %s) "
    "ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, state = excluded.state",
    base._OUTBOX: "INSERT INTO webhook_outbox (webhook, message, next_at, created_at) "
    "VALUES (%s, %s, %s, %s)",
    base._OUTBOX_RETRY: "UPDATE webhook_outbox SET attempts = %s, next_at = %s WHERE id = %s",
    base._OUTBOX_DONE: "DELETE FROM webhook_outbox WHERE id = %s",
    base._OUTBOX_REQUEUE: "UPDATE webhook_outbox SET attempts = 0, next_at = %s WHERE webhook = %s",
    base._DELIVERY: "INSERT INTO webhook_deliveries (webhook, message_id, attempt, status, "
    "error, ts) VALUES (%s, %s, %s, %s, %s, %s)",
    base._DELIVERY_PRUNE: "DELETE FROM webhook_deliveries WHERE webhook = %s AND id <= (SELECT "
    "id FROM webhook_deliveries WHERE webhook = %s ORDER BY id DESC LIMIT 1 OFFSET %s)",
    base._WEBHOOK_GONE: "DELETE FROM webhooks WHERE id = %s",
    base._OUTBOX_GONE: "DELETE FROM webhook_outbox WHERE webhook = %s",
    base._DELIVERIES_GONE: "DELETE FROM webhook_deliveries WHERE webhook = %s",
}
assert set(_PG) == set(base._ORDER), "every statement of the SQLite store has its translation"

_RUN_COLUMN: Final[dict[str, int]] = {
    base._EVENT: 0,
    base._STEP: 0,
    base._RUN_STATUS: 5,
    base._AGENT_USAGE: 0,
    base._MESSAGE: 0,
    base._STEP_CONFIG: 0,
    base._DEAD_LETTER: 0,
}
"""Where the run id is in the rows written for a run (what fencing filters)."""


@cache
def _translated(sql: str) -> str:
    """A read of the SQLite store's, with PostgreSQL's placeholders."""
    return sql.replace("?", "%s")


class _Reader:
    """A pooled connection that takes the SQLite store's reads as they are written."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Iterable[Any] = ()) -> psycopg.Cursor[Any]:
        return self.conn.execute(_translated(sql), tuple(params))


class PostgresStore(SqliteStore):
    """Runs in a PostgreSQL database that several hosts may share (see the module's text)."""

    def __init__(
        self,
        url: str,
        settings: StoreSettings | None = None,
        cluster: ClusterSettings | None = None,
        *,
        pace: Callable[[], Any] | None = None,
        webhooks: EventRouter | None = None,
        metrics: Metrics | None = None,
        data_dir: str | Path | None = None,
        member: bool = True,
    ) -> None:
        """``data_dir``: where this host's id is kept (``host-id``), so that a host restarted
        on its data dir after a crash is the same host and resumes its runs at once (one
        process per data dir: the data dir's lock). Without one, each start is a new host.
        ``member``: this process takes part among the hosts (a lease, runs handed over when
        it stops); a command that only reads or sends commands (``plait runs`` without a
        host) is not one: no other host sees it or sends it work."""
        super().__init__(".", settings, pace=pace, webhooks=webhooks, metrics=metrics)
        self.url = url
        self.shown = shown(url)
        self.cluster = cluster or ClusterSettings()
        self.data_dir = None if data_dir is None else Path(data_dir)
        self.member = member
        self.host_id = uuid.uuid4().hex
        """This host's id in the ``hosts`` table and the runs it owns."""
        self.name = self.cluster.name or f"{socket.gethostname()}:{os.getpid()}"
        self.epochs: dict[str, int] = {}
        """Runs this host took over, by id: the epoch it owns them at (a run it created is
        at epoch 1)."""
        self.fenced: set[str] = set()
        """Runs whose rows a commit refused (another host owns them now); the host stops them.
        Written by the writer's thread, read by the cluster loop."""
        self._fence_lock = threading.Lock()
        self._pool: ConnectionPool | None = None
        self._pg: psycopg.Connection | None = None

    # -- opening and closing -------------------------------------------------------------------

    def _open(self) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        if self.data_dir is not None and self.member:
            self.host_id = _host_id(self.data_dir)
        conn = connect_waiting(self.url, self.settings.connect_timeout)
        try:
            migrate(conn, self.url)
            with conn.transaction():
                if not self.member:
                    conn.execute("SELECT 1")  # the connection works; nothing else to say
                else:
                    self._join(conn)
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(self.shown, f"cannot be prepared: {exc}") from None
        except BaseException:
            conn.close()
            raise
        self._pg = conn  # the writer's own connection
        self._pool = ConnectionPool(
            self.url,
            min_size=1,
            max_size=8,
            kwargs={"autocommit": True},
            check=ConnectionPool.check_connection,
            open=True,
            name="plait-readers",
        )
        self._after_crash = bool(self.epochs)  # its own runs, left by a crash of this host

    def _join(self, conn: psycopg.Connection) -> None:
        """Take this host's place among the hosts (in the opening transaction)."""
        conn.execute(
            f"INSERT INTO hosts (id, name, started_at, heartbeat_at) VALUES "
            f"(%s, %s, {NOW}, {NOW}) ON CONFLICT (id) DO UPDATE SET "
            "name = excluded.name, started_at = excluded.started_at, "
            "heartbeat_at = excluded.heartbeat_at, draining = false",
            (self.host_id, self.name),
        )
        # Runs this host owned when it stopped without handing them over (a crash): still its
        # own, at the epochs they have.
        for run_id, epoch in conn.execute(
            f"SELECT id, epoch FROM runs WHERE owner = %s AND status IN ({_UNFINISHED_SQL})",
            (self.host_id,),
        ).fetchall():
            self.epochs[run_id] = epoch

    def _close(self) -> None:
        """Hand this host's unfinished runs over (no lease to wait out) and leave."""
        if self.member:
            self._leave()
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._pg is not None:
            self._pg.close()
        self._pg = None

    def _leave(self) -> None:
        try:
            with self._connection() as conn, conn.transaction():
                conn.execute(
                    "UPDATE runs SET owner = NULL WHERE owner = %s "
                    f"AND status IN ({_UNFINISHED_SQL})",
                    (self.host_id,),
                )
                conn.execute("DELETE FROM hosts WHERE id = %s", (self.host_id,))
                conn.execute("SELECT pg_notify(%s, %s)", (COMMANDS_CHANNEL, "released"))
        except Exception as exc:  # the database is gone: the lease runs out instead
            log.warning("store %s: could not hand this host's runs over (%s)", self.shown, exc)

    def _log_lost(self) -> str | None:
        return None  # SQLite's write-ahead log file: nothing of the kind here

    def describe(self) -> dict[str, Any]:
        return {
            "durable": True,
            "url": self.shown,
            "host": self.host_id,
            "name": self.name,
            "pending": self.pending,
            "commits": self.commits,
            "lastError": self.last_error,
            "unavailable": self.unavailable,
        }

    # -- writing -------------------------------------------------------------------------------

    @property
    def _integrity_errors(self) -> tuple[type[Exception], ...]:  # type: ignore[override]
        import psycopg

        return (psycopg.IntegrityError,)

    @property
    def _write_errors(self) -> tuple[type[Exception], ...]:  # type: ignore[override]
        import psycopg

        return (psycopg.Error,)

    def _writer(self) -> psycopg.Connection:
        """The writer's connection, made again after it broke (the server restarted, the
        network dropped): the failed commit is retried on the new one."""
        import psycopg

        conn = self._pg
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
                log.warning("store %s: connection lost; connecting again", self.shown)
            self._pg = conn = psycopg.connect(self.url, connect_timeout=10)
        return conn

    def _apply(self, rows: dict[str, list[tuple[Any, ...]]], one_by_one: bool) -> None:
        import psycopg

        conn = self._writer()
        began = time.perf_counter()
        written = 0
        try:
            with conn.transaction(), conn.cursor() as cur:
                lost = self._fence(cur, rows)
                for sql in base._ORDER:
                    batch = rows[sql]
                    if lost and sql in _RUN_COLUMN:
                        column = _RUN_COLUMN[sql]
                        batch = [row for row in batch if row[column] not in lost]
                    if not batch:
                        continue
                    if sql == base._RUN:
                        batch = [(*row, self.host_id) for row in batch]
                    elif sql == base._RUN_STATUS:  # the latest status of each run
                        batch = list({row[-1]: row for row in batch}.values())
                    written += len(batch)
                    statement = _PG[sql]
                    if one_by_one:
                        for row in batch:
                            try:
                                with conn.transaction():
                                    cur.execute(statement, row)
                            except psycopg.IntegrityError as exc:
                                base.log_dropped_row(exc, sql, row)
                    else:
                        cur.executemany(statement, batch)
                self._notify(cur, rows, lost)
        except psycopg.OperationalError:
            conn.close()  # made again at the next try
            raise
        if self._metrics is not None:
            self._metrics.commit_seconds.observe(time.perf_counter() - began)
            self._metrics.committed_changes.inc(written)

    def _fence(self, cur: psycopg.Cursor[Any], rows: dict[str, list[tuple[Any, ...]]]) -> set[str]:
        """Lock the rows of the runs this batch writes for, and return those this host no
        longer owns at the epoch it knows (their rows are not written)."""
        created = {row[0] for row in rows[base._RUN]}
        touched: set[str] = set()
        for sql, column in _RUN_COLUMN.items():
            for row in rows[sql]:
                touched.add(row[column])
        touched -= created
        if not touched:
            return set()
        cur.execute(
            "SELECT id, owner, epoch FROM runs WHERE id = ANY(%s) FOR SHARE", (list(touched),)
        )
        epochs = self.epochs
        lost = {
            run_id
            for run_id, owner, epoch in cur.fetchall()
            if owner != self.host_id or epoch != epochs.get(run_id, 1)
        }
        if lost:
            new = lost - self.fenced
            with self._fence_lock:
                self.fenced |= lost
            if new:
                log.error(
                    "store: %d run(s) are owned by another host now; their changes from this "
                    "host are refused: %s",
                    len(new),
                    ", ".join(sorted(new)[:10]),
                )
        return lost

    def _notify(
        self, cur: psycopg.Cursor[Any], rows: dict[str, list[tuple[Any, ...]]], lost: set[str]
    ) -> None:
        """Tell other hosts which runs this commit wrote events for, up to which seq."""
        last: dict[str, int] = {}
        for row in rows[base._EVENT]:
            if row[0] not in lost and row[1] > last.get(row[0], 0):
                last[row[0]] = row[1]
        if not last:
            return
        payload: list[str] = []
        size = 0
        for run_id, seq in last.items():
            item = f"{run_id}:{seq}"
            if size + len(item) + 1 > NOTIFY_BYTES:
                cur.execute("SELECT pg_notify(%s, %s)", (EVENTS_CHANNEL, " ".join(payload)))
                payload, size = [], 0
            payload.append(item)
            size += len(item) + 1
        cur.execute("SELECT pg_notify(%s, %s)", (EVENTS_CHANNEL, " ".join(payload)))

    def _told_of(self, told: list[tuple[Run, Event]]) -> list[tuple[Run, Event]]:
        fenced = self.fenced
        if not fenced:
            return told
        return [(run, event) for run, event in told if run.id not in fenced]

    # -- reading -------------------------------------------------------------------------------

    def _connection(self) -> Any:
        """A pooled connection (a context manager), autocommitting."""
        if self._pool is None:
            raise RuntimeError("the store is closed")
        return self._pool.connection()

    async def _read(self, fn: Callable[[Any], T]) -> T:
        result: T = await self._in_thread(lambda conn: fn(_Reader(conn)))
        return result

    async def unfinished_runs(self) -> list[dict[str, Any]]:
        """Top-level unfinished runs this host owns, oldest first."""
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT {base._RUN_COLUMNS} FROM runs WHERE status IN ({_UNFINISHED_SQL}) "
                "AND parent_id IS NULL AND owner = ? ORDER BY created_at, id",
                (self.host_id,),
            ).fetchall()
        )
        return [base._decode_run(r) for r in rows]

    async def stats(self, *, workflow: str | None = None, since: float | None = None) -> RunStats:
        return await self._read(lambda c: _read_stats(c, workflow, since))

    async def run_timings(
        self, workflow: str, *, since: float | None = None, limit: int = BOTTLENECK_RUNS
    ) -> list[RunTiming]:
        return await self._read(lambda c: _read_timings(c, workflow, since, limit))

    # -- several hosts ---------------------------------------------------------------------------

    def _in_thread(self, fn: Callable[[psycopg.Connection], T]) -> Any:
        import anyio.to_thread

        def work() -> T:
            with self._connection() as conn:
                return fn(conn)

        return anyio.to_thread.run_sync(work)

    async def heartbeat(self, live: int) -> None:
        """Renew this host's lease (and say how many runs it has in memory)."""

        def beat(conn: psycopg.Connection) -> None:
            done = conn.execute(
                f"UPDATE hosts SET heartbeat_at = {NOW}, live = %s WHERE id = %s",
                (live, self.host_id),
            )
            if done.rowcount == 0:  # removed while this host was away: join again
                conn.execute(
                    f"INSERT INTO hosts (id, name, started_at, heartbeat_at, live) "
                    f"VALUES (%s, %s, {NOW}, {NOW}, %s)",
                    (self.host_id, self.name, live),
                )

        await self._in_thread(beat)

    async def claim(self, most: int = 1000) -> list[tuple[str, bool]]:
        """Take over this host's fair share (the orphans divided by the live hosts, at most
        ``most``) of the unfinished top-level runs whose owner's lease expired or that no host
        owns, with their child runs; returns ``(id, crashed)`` of the top-level runs (crashed:
        its owner died, rather than handed it over). Runs other hosts are claiming at the same
        time are skipped, never waited for."""
        lease = self.cluster.lease_seconds
        orphaned = (
            f"status IN ({_UNFINISHED_SQL}) AND parent_id IS NULL AND (owner IS NULL OR owner "
            f"NOT IN (SELECT id FROM hosts WHERE heartbeat_at >= {NOW} - %s))"
        )

        def take(conn: psycopg.Connection) -> tuple[list[tuple[str, bool]], list[tuple[str, int]]]:
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '2s'")
                counted = conn.execute(
                    f"SELECT (SELECT count(*) FROM runs WHERE {orphaned}), (SELECT count(*) "
                    f"FROM hosts WHERE heartbeat_at >= {NOW} - %s AND NOT draining)",
                    (lease, lease),
                ).fetchone()
                if counted is None or not counted[0]:
                    return [], []
                share = min(most, fair_share(counted[0], counted[1]))
                found = conn.execute(
                    f"SELECT id, owner IS NOT NULL FROM runs WHERE {orphaned} "
                    "ORDER BY created_at, id LIMIT %s FOR UPDATE SKIP LOCKED",
                    (lease, share),
                ).fetchall()
                if not found:
                    return [], []
                tops = [row[0] for row in found]
                taken = conn.execute(
                    "WITH RECURSIVE tree AS (SELECT id FROM runs WHERE id = ANY(%s) "
                    "UNION SELECT r.id FROM runs r JOIN tree t ON r.parent_id = t.id) "
                    "UPDATE runs SET owner = %s, epoch = epoch + 1 "
                    "WHERE id IN (SELECT id FROM tree) RETURNING id, epoch",
                    (tops, self.host_id),
                ).fetchall()
            return [(row[0], bool(row[1])) for row in found], [(row[0], row[1]) for row in taken]

        tops, taken = await self._in_thread(take)
        for run_id, epoch in taken:
            self.epochs[run_id] = epoch
            with self._fence_lock:
                self.fenced.discard(run_id)
        return list(tops)

    def resuming(self, crashed: bool) -> None:
        """Say whether the runs about to be resumed were left by a crash (their steps in
        flight count against ``max_crash_restarts``) or handed over by a host that stopped."""
        self._after_crash = crashed

    async def set_draining(self) -> None:
        """Mark this host draining: the others take over without counting it."""
        await self._in_thread(
            lambda conn: conn.execute(
                "UPDATE hosts SET draining = true WHERE id = %s", (self.host_id,)
            )
        )

    async def lost(self, run_ids: Iterable[str]) -> set[str]:
        """Of ``run_ids``, those this host no longer owns at the epoch it knows."""
        ids = list(run_ids)
        if not ids:
            return set()

        def read(conn: psycopg.Connection) -> set[str]:
            rows = conn.execute(
                "SELECT id, owner, epoch FROM runs WHERE id = ANY(%s)", (ids,)
            ).fetchall()
            return {
                run_id
                for run_id, owner, epoch in rows
                if owner != self.host_id or epoch != self.epochs.get(run_id, 1)
            }

        found: set[str] = await self._in_thread(read)
        return found

    async def live_hosts(self) -> set[str]:
        """The ids of the hosts whose lease holds now."""
        rows = await self._in_thread(
            lambda conn: conn.execute(
                f"SELECT id FROM hosts WHERE heartbeat_at >= {NOW} - %s",
                (self.cluster.lease_seconds,),
            ).fetchall()
        )
        return {row[0] for row in rows}

    async def owner_of(self, run_id: str) -> str | None:
        """The host that owns a run now (``None``: none, or no such run)."""
        row = await self._in_thread(
            lambda conn: conn.execute("SELECT owner FROM runs WHERE id = %s", (run_id,)).fetchone()
        )
        return None if row is None else row[0]

    async def send_command(
        self, run_id: str | None, command: str, args: dict[str, Any], *, host: str | None = None
    ) -> int:
        """Queue ``command`` for the host ``host``, or for whichever host owns ``run_id``
        (kept before it returns, and done by the next owner if the present one dies first);
        returns its id."""

        def send(conn: psycopg.Connection) -> int:
            with conn.transaction():
                row = conn.execute(
                    f"INSERT INTO commands (run_id, host, command, args, created_at) "
                    f"VALUES (%s, %s, %s, %s, {NOW}) RETURNING id",
                    (run_id, host, command, json.dumps(args)),
                ).fetchone()
                conn.execute("SELECT pg_notify(%s, %s)", (COMMANDS_CHANNEL, host or run_id))
            assert row is not None
            return int(row[0])

        sent: int = await self._in_thread(send)
        return sent

    async def command_result(self, command_id: int) -> dict[str, Any] | None:
        """What the owner answered a command (removing it), or ``None`` while it is not done."""

        def read(conn: psycopg.Connection) -> str | None:
            row = conn.execute(
                "DELETE FROM commands WHERE id = %s AND done RETURNING result", (command_id,)
            ).fetchone()
            return None if row is None else str(row[0])

        found = await self._in_thread(read)
        return None if found is None else dict(json.loads(found))

    async def take_commands(self) -> list[tuple[int, str | None, str, dict[str, Any]]]:
        """Commands not yet done for this host or the runs it owns, oldest first: ``(id, run
        id, command, args)``; each is answered with :meth:`answer_command`."""

        def take(conn: psycopg.Connection) -> list[tuple[int, str | None, str, str]]:
            return conn.execute(
                "SELECT c.id, c.run_id, c.command, c.args FROM commands c WHERE NOT c.done "
                "AND (c.host = %s OR (c.host IS NULL AND c.run_id IN "
                "(SELECT id FROM runs WHERE owner = %s))) ORDER BY c.id",
                (self.host_id, self.host_id),
            ).fetchall()

        rows = await self._in_thread(take)
        return [(cid, run_id, command, json.loads(args)) for cid, run_id, command, args in rows]

    async def answer_command(self, command_id: int, result: dict[str, Any]) -> None:
        """Record what a command came to, for its sender."""
        await self._in_thread(
            lambda conn: conn.execute(
                "UPDATE commands SET done = true, result = %s WHERE id = %s",
                (json.dumps(result), command_id),
            )
        )

    async def hosts(self) -> list[dict[str, Any]]:
        """The hosts sharing this database: id, name, seconds since their heartbeat, runs."""
        rows = await self._in_thread(
            lambda conn: conn.execute(
                f"SELECT id, name, {NOW} - heartbeat_at, live, draining FROM hosts ORDER BY name"
            ).fetchall()
        )
        return [
            {"id": hid, "name": name, "silent": round(silent, 3), "live": live, "draining": d}
            for hid, name, silent, live, d in rows
        ]

    def listen_url(self) -> str:
        """Where a listening connection goes (the store's own database)."""
        return self.url


HOST_ID_FILE: Final = "host-id"
"""In the data dir: the id this host has among the hosts sharing the database."""


def _host_id(data_dir: Path) -> str:
    """The host id kept in ``data_dir`` (made the first time)."""
    path = data_dir / HOST_ID_FILE
    try:
        kept = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        kept = ""
    if len(kept) == 32 and all(c in "0123456789abcdef" for c in kept):
        return kept
    made = uuid.uuid4().hex
    path.write_text(made + "\n", encoding="ascii")
    return made


def fair_share(orphans: int, hosts: int) -> int:
    """How many of ``orphans`` runs one of ``hosts`` live hosts takes at a time (at least
    one: a host alone, or the only one not draining, takes them all)."""
    return max(1, math.ceil(orphans / max(1, hosts)))


def _window(workflow: str | None, since: float | None, column: str) -> tuple[str, list[Any]]:
    """The SQLite store's filter of a stats query, with PostgreSQL's placeholders."""
    where, params = base._window(workflow, since, column)
    return _translated(where), params


_DISC: Final = ", ".join(
    f"percentile_disc({p / 100}) WITHIN GROUP (ORDER BY {{value}})" for p in PERCENTILES
)
"""Nearest-rank percentiles: ``percentile_disc`` picks the first value whose cumulative share
reaches the fraction, the same value :func:`plait.state.run_store.nearest_rank` picks."""


def _read_stats(c: _Reader, workflow: str | None, since: float | None) -> RunStats:
    """``runs/stats`` in PostgreSQL: one aggregate query per table, percentiles included."""
    where, params = _window(workflow, since, "created_at")
    workflows = [
        WorkflowStats(name, runs, ok, bad, off, Percentiles(p50, p95, p99))
        for name, runs, ok, bad, off, p50, p95, p99 in c.conn.execute(
            "SELECT workflow, count(*), count(*) FILTER (WHERE status = 'succeeded'), "
            "count(*) FILTER (WHERE status = 'failed'), "
            "count(*) FILTER (WHERE status = 'cancelled'), "
            + _DISC.format(value="finished_at - started_at")
            + f" FROM runs WHERE true{where} GROUP BY workflow ORDER BY workflow",
            params,
        ).fetchall()
    ]
    where, params = _window(workflow, since, "run_created")
    steps = [
        StepStats(name, step, count, bad, retried, cached, waited, busy, Percentiles(*ps))
        for name, step, count, bad, retried, cached, waited, busy, *ps in c.conn.execute(
            "SELECT workflow, base, count(*), count(*) FILTER (WHERE status = 'failed'), "
            "count(*) FILTER (WHERE attempts > 1), coalesce(sum(cached), 0), "
            "coalesce(sum(waited), 0.0), coalesce(sum(duration), 0.0), "
            + _DISC.format(value="duration")
            + " FROM steps WHERE base IS NOT NULL AND workflow IS NOT NULL "
            f"AND status IN ('succeeded', 'failed'){where} "
            "GROUP BY workflow, base ORDER BY workflow, base",
            params,
        ).fetchall()
    ]
    where, params = _window(workflow, since, "run_created")
    agents: dict[str, AgentUsage] = {
        agent: AgentUsage(agent, count, turns, {})
        for agent, count, turns in c.conn.execute(
            f"SELECT agent, count(*), coalesce(sum(turns), 0) FROM agent_usage WHERE true{where} "
            "GROUP BY agent ORDER BY agent",
            params,
        ).fetchall()
    }
    for agent, key, total in c.conn.execute(
        "SELECT a.agent, u.key, sum(u.value::text::numeric)::bigint FROM agent_usage AS a, "
        "jsonb_each(a.usage::jsonb) AS u WHERE jsonb_typeof(u.value) = 'number' "
        f"AND u.value::text ~ '^-?[0-9]+$'{where} GROUP BY a.agent, u.key "
        "ORDER BY a.agent, u.key",
        params,
    ).fetchall():
        agents[agent].usage[key] = total
    return RunStats(workflows, steps, list(agents.values()))


def _read_timings(c: _Reader, workflow: str, since: float | None, limit: int) -> list[RunTiming]:
    where, params = _window(None, since, "created_at")
    runs = c.conn.execute(
        "SELECT id, digest, started_at, finished_at FROM runs "
        f"WHERE workflow = %s AND status = 'succeeded'{where} ORDER BY created_at DESC LIMIT %s",
        [workflow, *params, limit],
    ).fetchall()
    if not runs:
        return []
    by_run: dict[str, list[StepTiming]] = {run_id: [] for run_id, *_ in runs}
    for run_id, path, status, started, finished, waited, attempts, cached in c.conn.execute(
        "SELECT run_id, path, status, started_at, finished_at, waited, attempts, cached "
        "FROM steps WHERE run_id = ANY(%s) AND strpos(path, '.') = 0 AND strpos(path, '[') = 0",
        (list(by_run),),
    ).fetchall():
        by_run[run_id].append(
            StepTiming(path, status, started, finished, waited or 0.0, attempts, bool(cached))
        )
    return [
        RunTiming(run_id, digest, started, finished, by_run[run_id])
        for run_id, digest, started, finished in runs
        if started is not None and finished is not None
    ]
