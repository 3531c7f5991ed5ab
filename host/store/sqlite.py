"""The durable run store: every event of every run in SQLite, committed in groups.

Events are the source of truth. :meth:`SqliteStore.record` is the sink every :class:`Run`
records into: it encodes the event at once (a snapshot, on the event loop) and turns it into
rows: the event itself, plus the derived ``runs``, ``steps``, ``conversations`` and
``idempotency`` rows that make queries cheap. A single writer, in a thread of its own, takes
whatever has queued up and commits it in one ``BEGIN IMMEDIATE`` transaction, again and again;
after each commit a kicker thread wakes the teller, a task on the event loop that only then
publishes the events to the runs' followers, in commit order. Many changes arriving together
therefore share one commit (group commit), the disk never waits for a turn of the event loop,
and nothing is told to anyone before it is on disk.

Rows are applied kind by kind in a fixed order (a run's row is inserted before it is updated,
whatever the batch holds), keeping the order within each kind.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from functools import cache, partial
from itertools import chain
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread

from plait.config import StoreSettings
from plait.state.run_store import (
    BOTTLENECK_RUNS,
    DELIVERY_LOG_KEPT,
    PERCENTILES,
    RUN_FIELDS,
    UNFINISHED,
    AgentUsage,
    EventRouter,
    OutboxMessage,
    Percentiles,
    RunPage,
    RunStats,
    RunTiming,
    StepStats,
    StepTiming,
    WebhookAttempt,
    WorkflowStats,
    nearest_rank,
    page_cursor,
    run_from_row,
)
from plait.state.runs import (
    STEP_SETTLED,
    SUMMARY_FIELDS,
    TERMINAL_EVENTS,
    Event,
    Run,
    StepState,
    without_indexes,
)
from plait.store.schema import DB_FILE, connect, open_database
from plait.values import dumps

if TYPE_CHECKING:
    from plait.telemetry import Metrics

__all__ = ["SqliteStore"]

log = logging.getLogger("plait.store.sqlite")

T = TypeVar("T")

OPEN_MARK_SUFFIX = ".open"
"""Beside the database, ``plait.db.open`` exists while a host has the store open; found at
start, it means the previous host did not close the store (see ``after_crash``)."""


# The kinds of rows, in the order a commit applies them.
_DEFINITION = "INSERT OR IGNORE INTO definitions (digest, name, definition) VALUES (?, ?, ?)"
_VERSION = (
    "INSERT OR IGNORE INTO workflow_versions (name, version, digest, created_at) "
    "VALUES (?, ?, ?, ?)"
)
_BREAKPOINTS = (
    "INSERT INTO workflow_breakpoints (name, breakpoints) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET breakpoints = excluded.breakpoints"
)
_DEAD_LETTER = (
    "INSERT OR REPLACE INTO dlq (run_id, workflow, step, error_type, entry, failed_at, state) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_PRUNE_DEAD_LETTERS = "DELETE FROM dlq WHERE failed_at < ?"
_STEP_CONFIG = (
    "INSERT OR REPLACE INTO step_configs (run_id, path, attempt, config) VALUES (?, ?, ?, ?)"
)
_WORKFLOW = (
    "INSERT INTO workflows (name, current, deleted) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET current = excluded.current, "
    "deleted = excluded.deleted"
)
_RUN = (
    "INSERT INTO runs (id, workflow, version, digest, status, parent_id, parent_step, "
    "idempotency_key, inputs, total_steps, created_at) "
    "VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)"
)
_KEY = "INSERT OR IGNORE INTO idempotency (key, run_id) VALUES (?, ?)"
_RUN_STATUS = (
    "UPDATE runs SET status = ?, started_at = ?, finished_at = ?, outputs = ?, "
    "error = ? WHERE id = ?"
)
_EVENT = "INSERT INTO events (run_id, seq, type, step, data, ts) VALUES (?, ?, ?, ?, ?, ?)"
_STEP = (
    "INSERT OR REPLACE INTO steps (run_id, path, status, output, error, attempts, "
    "started_at, finished_at, workflow, base, run_created, duration, waited, cached) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_AGENT_USAGE = (
    "INSERT OR IGNORE INTO agent_usage (run_id, seq, workflow, run_created, agent, turns, usage) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_MESSAGE = "INSERT OR REPLACE INTO conversations (run_id, name, idx, message) VALUES (?, ?, ?, ?)"
_SCHEDULE = (
    "INSERT INTO schedules (name, spec, state) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, state = excluded.state"
)
"""A schedule's spec and state; a removal is an empty spec, purged by ``_SCHEDULE_GONE`` in the
same commit (one kind of row for both keeps a put and a removal of one name in their order)."""
_SCHEDULE_GONE = "DELETE FROM schedules WHERE name = ? AND spec = ''"
# Webhooks: a subscription's state is applied before a put of it (a put starts it afresh), an
# outbox message's retry before a put's requeue, and removals last (see plait.services.webhooks).
_WEBHOOK_STATE = "UPDATE webhooks SET state = ? WHERE id = ?"
_WEBHOOK = (
    "INSERT INTO webhooks (id, spec, state) VALUES (?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, state = excluded.state"
)
_OUTBOX = "INSERT INTO webhook_outbox (webhook, message, next_at, created_at) VALUES (?, ?, ?, ?)"
_OUTBOX_RETRY = "UPDATE webhook_outbox SET attempts = ?, next_at = ? WHERE id = ?"
_OUTBOX_DONE = "DELETE FROM webhook_outbox WHERE id = ?"
_OUTBOX_REQUEUE = "UPDATE webhook_outbox SET attempts = 0, next_at = ? WHERE webhook = ?"
_DELIVERY = (
    "INSERT INTO webhook_deliveries (webhook, message_id, attempt, status, error, ts) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_DELIVERY_PRUNE = (
    "DELETE FROM webhook_deliveries WHERE webhook = ? AND id <= (SELECT id FROM "
    "webhook_deliveries WHERE webhook = ? ORDER BY id DESC LIMIT 1 OFFSET ?)"
)
_WEBHOOK_GONE = "DELETE FROM webhooks WHERE id = ?"
_OUTBOX_GONE = "DELETE FROM webhook_outbox WHERE webhook = ?"
_DELIVERIES_GONE = "DELETE FROM webhook_deliveries WHERE webhook = ?"
_ORDER: Final = (
    _DEFINITION,
    _VERSION,
    _WORKFLOW,
    _BREAKPOINTS,
    _RUN,
    _KEY,
    _RUN_STATUS,
    _EVENT,
    _STEP,
    _AGENT_USAGE,
    _MESSAGE,
    _STEP_CONFIG,
    _SCHEDULE,
    _SCHEDULE_GONE,
    _DEAD_LETTER,
    _PRUNE_DEAD_LETTERS,
    _WEBHOOK_STATE,
    _WEBHOOK,
    _OUTBOX,
    _OUTBOX_RETRY,
    _OUTBOX_DONE,
    _OUTBOX_REQUEUE,
    _DELIVERY,
    _DELIVERY_PRUNE,
    _WEBHOOK_GONE,
    _OUTBOX_GONE,
    _DELIVERIES_GONE,
)

_RUN_STATUS_FROM = (
    "UPDATE runs SET status = v.column1, started_at = v.column2, "
    "finished_at = v.column3, outputs = v.column4, error = v.column5 FROM (VALUES "
)


def _multi_row(sql: str) -> tuple[str, str, str]:
    head, _, group = sql.partition("VALUES ")
    return head + "VALUES ", group, ""


# Statements written many rows at a time: (before the rows, one row, after the rows).
_MULTI_ROW: Final = {
    _EVENT: _multi_row(_EVENT),
    _STEP: _multi_row(_STEP),
    _RUN: _multi_row(_RUN),
    _OUTBOX: _multi_row(_OUTBOX),
    _RUN_STATUS: (_RUN_STATUS_FROM, "(?, ?, ?, ?, ?, ?)", ") AS v WHERE runs.id = v.column6"),
}
ROWS_PER_STATEMENT: Final = (1024, 128, 16, 4, 1)
"""The row counts statements are made for: a batch goes in as the fewest of these. Few shapes,
so the prepared statements SQLite keeps (one per shape) stay few; at most 14,336 parameters
(a step row has 14; SQLite allows 32,766 since 3.32)."""


@cache  # at most len(_MULTI_ROW) * len(ROWS_PER_STATEMENT) texts
def _rows_sql(sql: str, count: int) -> str:
    """``sql`` for ``count`` rows at once."""
    before, row, after = _MULTI_ROW[sql]
    return before + ", ".join([row] * count) + after


_STATUS_OF_EVENT: Final = {
    "run.started": "running",
    "run.resumed": "running",
    "run.paused": "paused",
    "run.waiting": "waiting",
    "run.succeeded": "succeeded",
    "run.failed": "failed",
    "run.cancelled": "cancelled",
}
_SETTLE_EVENTS: Final = frozenset(
    {*(f"step.{status}" for status in STEP_SETTLED), "step.reused", "debug.output"}
)
"""Events after which a step's row says something new: it ended, was reused by a rerun, or the
debugger replaced its output."""
PUBLISH_CHUNK: Final = 32
"""Events published between two turns of the event loop."""
THREAD_CHECK: Final = 1.0
"""Seconds between two checks, by an idle writer or kicker thread, that the program goes on."""
_RUN_COLUMNS: Final = ", ".join(RUN_FIELDS)
RUN_IDS_STARTING: Final = "SELECT id FROM runs WHERE id >= ? AND id < ? ORDER BY id LIMIT ?"
_RAN: Final = "status IN ('succeeded', 'failed')"
"""Step rows of steps that ran and settled (not skipped, cancelled or reused): what the step
figures of ``runs/stats`` count."""
"""Run ids in a range of the primary key (``runs.id``'s index): the ids with a prefix."""


def _json(value: Any, *what: object) -> str:
    """``value`` as JSON text (:func:`plait.values.dumps`); what is not JSON (checked before it
    gets here) is logged and stored as an error marker, never failing the writer. ``what``
    names the value in the log, joined only if it is needed (this runs for every event)."""
    try:
        return dumps(value)
    except (TypeError, ValueError, RecursionError) as exc:
        log.error("%s is not JSON (%s); stored as an error marker", " ".join(map(str, what)), exc)
        return dumps({"unserializable": str(exc)})


def _write_rows(conn: sqlite3.Connection, sql: str, batch: list[tuple[Any, ...]]) -> None:
    """Write ``batch`` with as few statements as the parameter limit allows.

    Not ``executemany``: the sqlite3 module lets go of the GIL around every row it steps, and
    while the event loop is busy each hand-back waits out the interpreter's switch interval
    (5 ms), so a commit of a thousand rows row by row could take seconds.
    """
    if sql == _RUN_STATUS:  # one row per run, its latest status (an UPDATE ... FROM picks
        batch = list({row[-1]: row for row in batch}.values())  # any of several matches)
    start, left = 0, len(batch)
    for per in ROWS_PER_STATEMENT:
        statement = None
        while left >= per:
            statement = statement or _rows_sql(sql, per)
            conn.execute(statement, list(chain.from_iterable(batch[start : start + per])))
            start += per
            left -= per


def log_dropped_row(exc: Exception, sql: str, row: tuple[Any, ...]) -> None:
    """Say which row a one-by-one commit left out, and why (a constraint it breaks)."""
    log.error(
        "store: dropped a row that breaks a constraint (%s): %s %r", exc, sql.split("(")[0], row[:3]
    )


def _interpreter_ending() -> bool:
    """Whether the main thread has finished: a store that was never closed (its event loop
    gone) must not keep the interpreter from exiting by waiting in its threads."""
    return not threading.main_thread().is_alive()


@dataclass(slots=True)
class _Taken:
    """A batch the writer took: rows by statement, events to tell, the queue count it ends."""

    rows: dict[str, list[tuple[Any, ...]]]
    told: list[tuple[Run, Event]]
    target: int


class SqliteStore:
    """Runs, events, conversations and workflow versions in ``<data_dir>/plait.db``.

    Use as an async context manager: entering opens and checks the file and starts the writer;
    leaving commits what is queued and closes.
    """

    def __init__(
        self,
        data_dir: str | Path,
        settings: StoreSettings | None = None,
        *,
        pace: Callable[[], Awaitable[None]] | None = None,
        webhooks: EventRouter | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.path = Path(data_dir) / DB_FILE
        self._router = webhooks
        self._metrics = metrics
        """Times each commit and counts what it wrote (from the writer's thread)."""
        """Names the webhook subscriptions of each event: their outbox rows are queued with it."""
        self.settings = settings or StoreSettings()
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._lock = threading.Lock()
        """Guards the queue below: the event loop adds to it, the writer's thread takes it."""
        self._writer_idle = False
        """The writer found nothing to take and waits for ``_more`` (under ``_lock``)."""
        self._more = threading.Event()
        """Set for an idle writer when something is queued, or when the store closes."""
        self._stopping = False
        self._rows: dict[str, list[tuple[Any, ...]]] = {sql: [] for sql in _ORDER}
        self._told: list[tuple[Run, Event]] = []
        self._queued = 0
        """Rows queued since the store opened."""
        self._committed = 0
        """Of those, how many are committed."""
        self._told_rows = 0
        """Of those, how many are committed and their events told."""
        self._committed_batches: deque[tuple[list[tuple[Run, Event]], int]] = deque()
        """(events, queue count) of each commit, for the teller; appended by the writer."""
        self._commit_done = threading.Event()
        """Set by the writer after each commit, for the kicker."""
        self._kicked = anyio.Event()
        """Set on the event loop by the kicker: there are commits to tell."""
        self._progress = anyio.Event()
        self._frozen = False
        self._tg: anyio.abc.TaskGroup | None = None
        self.commits = 0
        """Transactions committed (a measure of how well commits are grouped)."""
        self.last_error: str | None = None
        """The last write error, while writes are being retried."""
        self._after_crash = False
        self._keep_mark = False
        self._trouble = anyio.Event()
        """Set while the store cannot write (see :meth:`troubled`)."""
        self._broken: str | None = None
        """Why the store may not write at all any more (its write-ahead log is gone)."""
        self._wal_inode: int | None = None
        self._cached: dict[str, set[str]] = {}
        """Run id → its steps whose attempt in progress took a tool result from the cache."""
        self.pace = pace
        """Awaited between chunks of published events: the host waits here for connections
        that are still reading to catch up (see ``Host.pace``)."""

    # -- lifecycle ---------------------------------------------------------------------------

    _integrity_errors: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)
    """What a row that can never go in raises (the batch is then applied row by row)."""
    _write_errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    """What a failed commit raises (it is retried with backoff)."""

    def _open(self) -> None:
        """Open the database (in a worker thread): the writer's and the reader's connections."""
        self._conn = open_database(self.path, self.settings)
        self._after_crash = self._mark_open()
        self._reader = connect(self.path, self.settings, readonly=True)

    def _close(self) -> None:
        """Close the connections (the writer has stopped)."""
        # The reader first: the last connection to close checkpoints the WAL into the
        # database file, and only the writer can.
        for conn in (self._reader, self._conn):
            if conn is not None:
                conn.close()
        self._conn = self._reader = None
        # All kept: the next start is not one after a crash, unless this one was and only
        # read, leaving the crash's runs to the next start (keep_crash_mark).
        if self.pending == 0 and not (self._keep_mark and self._after_crash):
            self._open_mark.unlink(missing_ok=True)

    def _told_of(self, told: list[tuple[Run, Event]]) -> list[tuple[Run, Event]]:
        """Of a committed batch's events, those to tell (all of them: see the PostgreSQL
        store, which leaves out the runs another host took over)."""
        return told

    async def __aenter__(self) -> SqliteStore:
        await anyio.to_thread.run_sync(self._open)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            self._tg.start_soon(self._teller)
            self._tg.start_soon(
                partial(anyio.to_thread.run_sync, self._kicker, limiter=anyio.CapacityLimiter(1))
            )
            writing = anyio.Event()
            self._tg.start_soon(
                partial(
                    anyio.to_thread.run_sync, self._write, writing, limiter=anyio.CapacityLimiter(1)
                )
            )
            await writing.wait()  # from here on, commits need no turn of the event loop
        except BaseException:
            self._stop_threads()
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            self._tg = None
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            # What is queued gets a bounded time to be committed: a disk that keeps failing
            # must not hold the host's stop forever (the writer says what it then loses).
            close_seconds = 2.0
            with anyio.move_on_after(close_seconds, shield=True) as closing:
                await self.sync()
            if closing.cancelled_caught and self.pending:
                log.error(
                    "store: closing: %d change(s) still not written to %s after %gs (%s); "
                    "giving up",
                    self.pending,
                    self.path,
                    close_seconds,
                    self.last_error or "a commit is still under way",
                )
        finally:
            assert self._tg is not None
            self._stop_threads()
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            self._tg = None
            await anyio.to_thread.run_sync(self._close)

    def _stop_threads(self) -> None:
        """End the writer's and the kicker's threads (they cannot be cancelled)."""
        with self._lock:
            self._stopping = True
        self._more.set()
        self._commit_done.set()

    @property
    def durable(self) -> bool:
        """Always: runs outlive the process."""
        return True

    @property
    def unavailable(self) -> str | None:
        """Why the store cannot write now (the last commit's error, or a lost log), or
        ``None`` while it writes."""
        return self._broken or self.last_error

    def _log_lost(self) -> str | None:
        """Whether the write-ahead log was deleted (or replaced) under the open database:
        SQLite would go on writing to the unlinked file, and every commit would vanish at
        the next start."""
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            inode = os.stat(wal).st_ino
        except FileNotFoundError:
            inode = None
        if self._wal_inode is None:  # not seen yet: SQLite makes it at the first write
            self._wal_inode = inode
            return None
        if inode == self._wal_inode:
            return None
        return (
            f"its write-ahead log {wal.name} was deleted or replaced while the host ran; "
            "stop the host: what was committed since is in the lost file"
        )

    async def troubled(self) -> None:
        """Return once the store cannot write (at once while it cannot)."""
        await self._trouble.wait()

    @property
    def after_crash(self) -> bool:
        """Whether the previous host left the store open: it crashed, was killed, or could
        not write what it had queued."""
        return self._after_crash

    def keep_crash_mark(self) -> None:
        """Leave the mark of a crash found at open for the next start (a reading command)."""
        self._keep_mark = True

    @property
    def _open_mark(self) -> Path:
        return self.path.with_name(self.path.name + OPEN_MARK_SUFFIX)

    def _mark_open(self) -> bool:
        """Leave a mark that the store is open (removed by a clean close); return whether the
        previous host had left one."""
        mark = self._open_mark
        found = mark.exists()
        fd = os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return found

    def attach(self, run: Run) -> None:
        """Take a run in: its events are committed here before anyone is told of them."""
        run.sink = self.record

    def release(self, run: Run) -> None:
        """Nothing to do: a finished run is answered for from the file."""

    def describe(self) -> dict[str, Any]:
        """The file, what waits for it, and how the writer fares (``host/info``)."""
        return {
            "durable": True,
            "path": str(self.path),
            "pending": self.pending,
            "commits": self.commits,
            "lastError": self.last_error,
            "unavailable": self.unavailable,
            "synchronous": self.settings.synchronous,
        }

    def freeze(self) -> None:
        """Accept no more changes: the host is stopping, and runs in flight must be found as
        they were, to be resumed by the next start, not as the shutdown left them."""
        self._frozen = True

    # -- writing -----------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Rows queued but not yet committed."""
        return self._queued - self._committed

    @property
    def backlogged(self) -> bool:
        """Whether more than ``max_pending`` changes wait for the disk: new steps, inline
        ones included, wait in :meth:`drained` before they start."""
        return self._queued - self._committed > self.settings.max_pending

    def _queue(
        self, rows: list[tuple[str, tuple[Any, ...]]], told: tuple[Run, Event] | None = None
    ) -> None:
        with self._lock:
            queue = self._rows
            for sql, row in rows:
                queue[sql].append(row)
            self._queued += len(rows)
            if told is not None:
                self._told.append(told)
            wake, self._writer_idle = self._writer_idle, False
        if wake:  # only an idle writer needs telling: a busy one looks again by itself
            self._more.set()

    def record(self, run: Run, event: Event) -> None:
        """The runs' sink: queue ``event`` and the rows it changes; publish after commit."""
        if self._frozen:
            return
        rid = run.id
        kind = event.type
        rows: list[tuple[str, tuple[Any, ...]]] = [
            (
                _EVENT,
                (
                    rid,
                    event.seq,
                    kind,
                    event.step,
                    _json(event.data, "event", kind, "of run", rid),
                    event.ts,
                ),
            )
        ]
        if kind in _SETTLE_EVENTS and event.step is not None:
            path = event.step
            state = run.steps[path]
            started, finished = state.started_at, state.finished_at
            cached = self._cached.get(rid)
            rows.append(
                (
                    _STEP,
                    (
                        rid,
                        path,
                        state.status,
                        None if state.output is None else _json(state.output, "output"),
                        None if state.error is None else _json(state.error, "error"),
                        state.attempts,
                        started,
                        finished,
                        run.workflow,
                        None if state.reused_from is not None else without_indexes(path),
                        run.created_at,
                        None if started is None or finished is None else finished - started,
                        state.waited,
                        int(cached is not None and path in cached),
                    ),
                )
            )
        elif kind == "step.started" or kind == "step.cached":
            # Whether a step's last attempt took a tool result from the cache: its settle
            # event's row says so (a new attempt starts without).
            if kind == "step.cached":
                self._cached.setdefault(rid, set()).add(event.step or "")
            elif rid in self._cached:
                self._cached[rid].discard(event.step or "")
        elif kind == "agent.usage":
            data = event.data
            rows.append(
                (
                    _AGENT_USAGE,
                    (
                        rid,
                        event.seq,
                        run.workflow,
                        run.created_at,
                        str(data.get("agent", "")),
                        data.get("turns") if isinstance(data.get("turns"), int) else 0,
                        _json(data.get("usage") or {}, "usage"),
                    ),
                )
            )
        elif kind in _STATUS_OF_EVENT:
            if kind in TERMINAL_EVENTS:
                self._cached.pop(rid, None)
            rows.append(
                (
                    _RUN_STATUS,
                    (
                        _STATUS_OF_EVENT[kind],
                        run.started_at,
                        run.finished_at,
                        None if run.outputs is None else _json(run.outputs, "outputs"),
                        None if run.error is None else _json(run.error, "error"),
                        rid,
                    ),
                )
            )
        elif kind == "run.created":
            rows.append(
                (
                    _RUN,
                    (
                        rid,
                        run.workflow,
                        run.version,
                        run.digest,
                        run.parent_id,
                        run.parent_step,
                        run.idempotency_key,
                        _json(run.inputs, "inputs"),
                        run.total_steps,
                        run.created_at,
                    ),
                )
            )
            if run.idempotency_key is not None:
                rows.append((_KEY, (run.idempotency_key, rid)))
        elif kind == "conversation.appended":
            name = event.data["conversation"]
            history = run.conversations.get(name, [])
            new = event.data["messages"]
            start = len(history) - len(new)
            for i, message in enumerate(new):
                rows.append((_MESSAGE, (rid, name, start + i, _json(message, "message"))))
        router = self._router
        if router is not None:  # its deliveries, in the event's own transaction
            routed = router.route(run, event)
            if routed is not None:
                hooks, body = routed
                rows.extend((_OUTBOX, (hook, body, event.ts, event.ts)) for hook in hooks)
        self._queue(rows, (run, event))

    def put_workflow(
        self, name: str, version: int, digest: str, definition: dict[str, Any], created_at: float
    ) -> None:
        """Queue a workflow version (its content stored once per digest) and make it current."""
        self._queue(
            [
                (_DEFINITION, (digest, name, _json(definition, "workflow", name))),
                (_VERSION, (name, version, digest, created_at)),
                (_WORKFLOW, (name, version, 0)),
            ]
        )

    def set_current(self, name: str, version: int, *, deleted: bool = False) -> None:
        """Queue a change of which version is current, or the deletion of the workflow."""
        self._queue([(_WORKFLOW, (name, version, int(deleted)))])

    def put_breakpoints(self, workflow: str, breakpoints: list[dict[str, Any]]) -> None:
        """Queue a workflow's breakpoints (all of them: they replace what was kept)."""
        self._queue([(_BREAKPOINTS, (workflow, _json(breakpoints, "breakpoints of", workflow)))])

    def put_step_config(self, run_id: str, path: str, attempt: int, config: Any) -> None:
        """Queue the whole configuration of a step attempt (its event holds a cut one)."""
        self._queue([(_STEP_CONFIG, (run_id, path, attempt, _json(config, "config of", path)))])

    def put_webhook(
        self,
        webhook_id: str,
        spec: dict[str, Any],
        state: dict[str, Any],
        *,
        requeue_at: float | None = None,
    ) -> None:
        """Queue a webhook subscription; with ``requeue_at``, its outbox messages start over."""
        rows: list[tuple[str, tuple[Any, ...]]] = [
            (_WEBHOOK, (webhook_id, _json(spec, "webhook", webhook_id), _json(state, "state")))
        ]
        if requeue_at is not None:
            rows.append((_OUTBOX_REQUEUE, (requeue_at, webhook_id)))
        self._queue(rows)

    def set_webhook_state(self, webhook_id: str, state: dict[str, Any]) -> None:
        """Queue a kept subscription's new state."""
        self._queue([(_WEBHOOK_STATE, (_json(state, "state of webhook", webhook_id), webhook_id))])

    def delete_webhook(self, webhook_id: str) -> None:
        """Queue the removal of a subscription with its outbox messages and delivery log."""
        self._queue(
            [
                (_WEBHOOK_GONE, (webhook_id,)),
                (_OUTBOX_GONE, (webhook_id,)),
                (_DELIVERIES_GONE, (webhook_id,)),
            ]
        )

    def webhook_attempt(self, attempt: WebhookAttempt) -> None:
        """Queue a delivery attempt: logged, and its message done or due again."""
        hook = attempt.webhook
        logged = (hook, attempt.message_id, attempt.attempt, attempt.status, attempt.error)
        self._queue(
            [
                (_DELIVERY, (*logged, attempt.ts)),
                (_DELIVERY_PRUNE, (hook, hook, DELIVERY_LOG_KEPT)),
                (_OUTBOX_DONE, (attempt.outbox_id,))
                if attempt.next_at is None
                else (_OUTBOX_RETRY, (attempt.attempt, attempt.next_at, attempt.outbox_id)),
            ]
        )

    def put_schedule(self, name: str, spec: dict[str, Any], state: dict[str, Any]) -> None:
        """Queue a schedule's spec and state (both replace what was kept)."""
        self._queue([(_SCHEDULE, (name, _json(spec, "schedule", name), _json(state, "of", name)))])

    def delete_schedule(self, name: str) -> None:
        """Queue the removal of a schedule."""
        self._queue([(_SCHEDULE, (name, "", "")), (_SCHEDULE_GONE, (name,))])

    async def sync(self) -> None:
        """Return once everything queued before the call is committed and told."""
        target = self._queued
        while self._told_rows < target:
            if self._tg is None:
                raise RuntimeError("the store is closed")
            await self._progress.wait()

    async def drained(self) -> None:
        """Wait while too many changes wait for the disk (backpressure on new steps)."""
        while self.pending > self.settings.max_pending // 2:
            await self._progress.wait()

    def _advance(self) -> None:
        progress, self._progress = self._progress, anyio.Event()
        progress.set()

    def _write(self, writing: anyio.Event) -> None:
        """The writer, in a thread of its own: commit what is queued, batch after batch.

        It never waits for the event loop (an event-loop task that sent each batch to a
        worker thread would): with thousands of steps ready at once a turn of the loop can
        take a second, and a writer that waited for its turn between commits would leave the
        disk idle that long, and every step waiting for room (``max_pending``) with it. The
        kicker tells the event loop.
        """
        anyio.from_thread.run_sync(writing.set)
        delay = 0.05
        taken: _Taken | None = None  # kept across a failed commit, to be tried again
        while True:
            while taken is None:
                with self._lock:
                    if self._queued != self._committed:
                        taken = _Taken(self._rows, self._told, self._queued)
                        self._rows, self._told = {sql: [] for sql in _ORDER}, []
                        break
                    if self._stopping:
                        return
                    self._writer_idle = True
                if not self._more.wait(THREAD_CHECK) and _interpreter_ending():
                    return
                self._more.clear()
            lost = self._log_lost()
            if lost is not None:  # nothing written from here on would survive a restart
                if self._broken is None:
                    self._broken = lost
                    log.error("store: %s; no more changes are written", lost)
                    self._commit_done.set()
                self._more.wait(THREAD_CHECK)
                self._more.clear()
                if self._stopping:
                    return
                continue
            try:
                try:
                    self._apply(taken.rows, False)
                except self._integrity_errors as exc:
                    # A row that can never go in (a bug, or a row already there): keep the
                    # rest of its batch.
                    log.error("store: a batch broke a constraint (%s); applying row by row", exc)
                    self._apply(taken.rows, True)
            except self._write_errors as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self._stopping:  # only if closing gave up waiting for the commit
                    log.error(
                        "store: commit failed (%s) while closing; %d changes are lost",
                        exc,
                        self._queued - self._committed,
                    )
                    return
                log.warning("store: commit failed (%s); retrying in %.2fs", exc, delay)
                self._commit_done.set()  # the teller tells those waiting for a commit
                self._more.wait(delay)  # set early when the store closes
                self._more.clear()
                delay = min(delay * 2, 5.0)
                continue
            self.last_error, delay = None, 0.05
            self._committed = taken.target
            self.commits += 1
            self._committed_batches.append((self._told_of(taken.told), taken.target))
            taken = None
            self._commit_done.set()

    def _kicker(self) -> None:
        """In a thread of its own: tell the event loop that commits are done, waiting for its
        turn here so that the writer never does (several commits in the meantime make one
        kick)."""
        while True:
            if not self._commit_done.wait(THREAD_CHECK):
                if _interpreter_ending():
                    return
                continue
            self._commit_done.clear()
            if self._stopping:
                return
            anyio.from_thread.run_sync(self._kick)

    def _kick(self) -> None:
        self._kicked.set()

    async def _teller(self) -> None:
        """Publish committed events, in commit order, once kicked."""
        batches = self._committed_batches
        unpaced = 0  # events told since the connections last had a turn
        while True:
            await self._kicked.wait()
            self._kicked = anyio.Event()
            if self.unavailable is not None:
                self._trouble.set()
            elif self._trouble.is_set():
                self._trouble = anyio.Event()
            while batches:
                told, target = batches.popleft()
                for run, event in told:
                    try:
                        run.publish(event)
                    except Exception:  # a follower's bug must not stop the store
                        log.exception("a follower of run %s failed on event %s", run.id, event.seq)
                    unpaced += 1
                    if unpaced == PUBLISH_CHUNK:
                        # Commits may release thousands of events in a row; let the
                        # connections' writers send them out, so a client that reads is never
                        # dropped for falling behind a burst it could not have read yet.
                        await (self.pace() if self.pace is not None else anyio.sleep(0))
                        unpaced = 0
                self._told_rows = target
                self._advance()

    def _apply(self, rows: dict[str, list[tuple[Any, ...]]], one_by_one: bool) -> None:
        conn = self._conn
        assert conn is not None
        began = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql in _ORDER:
                batch = rows[sql]
                if not batch:
                    continue
                if one_by_one:
                    self._apply_one_by_one(conn, sql, batch)
                elif sql in _MULTI_ROW:
                    _write_rows(conn, sql, batch)
                else:
                    conn.executemany(sql, batch)
            conn.execute("COMMIT")
            if self._metrics is not None:
                self._metrics.commit_seconds.observe(time.perf_counter() - began)
                self._metrics.committed_changes.inc(sum(len(batch) for batch in rows.values()))
        except BaseException:
            # SQLite rolls a transaction back by itself after some failures (a full disk):
            # a second ROLLBACK would then fail and hide the real error.
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as undo:
                    log.error("store: rollback after a failed commit failed too: %s", undo)
            raise

    @staticmethod
    def _apply_one_by_one(conn: sqlite3.Connection, sql: str, batch: list[tuple[Any, ...]]) -> None:
        for row in batch:
            try:
                conn.execute(sql, row)
            except sqlite3.IntegrityError as exc:
                log_dropped_row(exc, sql, row)

    # -- reading -----------------------------------------------------------------------------

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._read_lock:
                assert self._reader is not None, "the store is closed"
                return fn(self._reader)

        return await anyio.to_thread.run_sync(locked)

    def put_dead_letter(self, entry: dict[str, Any]) -> None:
        """Queue a dead-letter entry (replacing one for the same run)."""
        row = (
            entry["run_id"],
            entry["workflow"],
            entry.get("step"),
            entry.get("error_type"),
            _json(entry, "dead letter of", entry["run_id"]),
            entry["failed_at"],
            entry["state"],
        )
        self._queue([(_DEAD_LETTER, row)])

    def prune_dead_letters(self, before: float) -> None:
        """Queue the removal of the entries of runs that failed before ``before``."""
        self._queue([(_PRUNE_DEAD_LETTERS, (before,))])

    async def dead_letters(
        self,
        *,
        workflow: str | None = None,
        error_type: str | None = None,
        since: float | None = None,
        until: float | None = None,
        state: str | None = "open",
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Dead-letter entries, newest first, filtered (indexed by workflow and time)."""
        where, args = [], []
        for column, op, value in (
            ("workflow", "=", workflow),
            ("error_type", "=", error_type),
            ("failed_at", ">=", since),
            ("failed_at", "<", until),
            ("state", "=", state),
        ):
            if value is not None:
                where.append(f"{column} {op} ?")
                args.append(value)
        sql = "SELECT entry FROM dlq"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY failed_at DESC LIMIT ?"

        def read(c: sqlite3.Connection) -> list[dict[str, Any]]:
            return [json.loads(entry) for (entry,) in c.execute(sql, (*args, limit))]

        return await self._read(read)

    async def dead_letter(self, run_id: str) -> dict[str, Any] | None:
        """One dead-letter entry by its run's id."""

        def read(c: sqlite3.Connection) -> dict[str, Any] | None:
            row = c.execute("SELECT entry FROM dlq WHERE run_id = ?", (run_id,)).fetchone()
            return None if row is None else json.loads(row[0])

        return await self._read(read)

    async def breakpoints(self) -> dict[str, list[dict[str, Any]]]:
        """Every workflow's breakpoints."""

        def read(c: sqlite3.Connection) -> dict[str, list[dict[str, Any]]]:
            rows = c.execute("SELECT name, breakpoints FROM workflow_breakpoints")
            return {name: json.loads(items) for name, items in rows}

        return await self._read(read)

    async def step_config(self, run_id: str, path: str, attempt: int) -> Any:
        """The whole configuration of a step attempt, if it was kept apart (else ``None``)."""

        def read(c: sqlite3.Connection) -> Any:
            row = c.execute(
                "SELECT config FROM step_configs WHERE run_id = ? AND path = ? AND attempt = ?",
                (run_id, path, attempt),
            ).fetchone()
            return None if row is None else json.loads(row[0])

        return await self._read(read)

    async def schedules(self) -> list[dict[str, Any]]:
        """Every kept schedule: ``{name, spec, state}`` by name."""
        rows = await self._read(
            lambda c: c.execute(
                "SELECT name, spec, state FROM schedules WHERE spec != '' ORDER BY name"
            ).fetchall()
        )
        return [
            {"name": name, "spec": json.loads(spec), "state": json.loads(state)}
            for name, spec, state in rows
        ]

    async def webhooks(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """Every kept webhook subscription: ``(id, spec, state)``, by id."""
        rows = await self._read(
            lambda c: c.execute("SELECT id, spec, state FROM webhooks ORDER BY id").fetchall()
        )
        return [(hook, json.loads(spec), json.loads(state)) for hook, spec, state in rows]

    async def due_webhook_messages(
        self, now: float, webhooks: Collection[str], limit: int
    ) -> tuple[list[OutboxMessage], float | None]:
        """Due outbox messages of ``webhooks``, the longest due first (the ``next_at`` index),
        and when the next one of theirs is due."""
        hooks = list(webhooks)
        if not hooks:
            return [], None
        marks = ", ".join("?" for _ in hooks)

        def read(c: sqlite3.Connection) -> tuple[list[OutboxMessage], float | None]:
            due = c.execute(
                "SELECT id, webhook, message, attempts, next_at, created_at FROM webhook_outbox "
                f"WHERE next_at <= ? AND webhook IN ({marks}) ORDER BY next_at, id LIMIT ?",
                (now, *hooks, limit),
            ).fetchall()
            (later,) = c.execute(
                "SELECT min(next_at) FROM webhook_outbox "
                f"WHERE next_at > ? AND webhook IN ({marks})",
                (now, *hooks),
            ).fetchone()
            return [OutboxMessage(*row) for row in due], later

        return await self._read(read)

    async def webhook_deliveries(
        self, webhook_id: str, *, before: int | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """A subscription's delivery attempts, newest first, with ids below ``before``."""
        sql = (
            "SELECT id, message_id, attempt, status, error, ts FROM webhook_deliveries "
            "WHERE webhook = ?"
        )
        params: tuple[Any, ...] = (webhook_id,)
        if before is not None:
            sql += " AND id < ?"
            params += (before,)
        sql += " ORDER BY id DESC LIMIT ?"
        rows = await self._read(lambda c: c.execute(sql, (*params, limit)).fetchall())
        keys = ("id", "messageId", "attempt", "status", "error", "ts")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    async def webhook_backlog(self) -> dict[str, int]:
        """Messages waiting in the outbox, by subscription."""
        rows = await self._read(
            lambda c: c.execute(
                "SELECT webhook, count(*) FROM webhook_outbox GROUP BY webhook"
            ).fetchall()
        )
        return dict(rows)

    async def catalog(self) -> list[dict[str, Any]]:
        """Every workflow with every version: ``{name, current, deleted, versions: [...]}``."""

        def read(c: sqlite3.Connection) -> list[dict[str, Any]]:
            out = {
                name: {"name": name, "current": current, "deleted": bool(deleted), "versions": []}
                for name, current, deleted in c.execute(
                    "SELECT name, current, deleted FROM workflows ORDER BY name"
                )
            }
            for name, version, digest, created_at, definition in c.execute(
                "SELECT v.name, v.version, v.digest, v.created_at, d.definition "
                "FROM workflow_versions v JOIN definitions d ON d.digest = v.digest "
                "ORDER BY v.name, v.version"
            ):
                if name in out:
                    out[name]["versions"].append(
                        {
                            "version": version,
                            "digest": digest,
                            "created_at": created_at,
                            "definition": json.loads(definition),
                        }
                    )
            return list(out.values())

        return await self._read(read)

    async def definition(self, digest: str) -> dict[str, Any] | None:
        """The definition a run snapshotted, by its digest."""
        row = await self._read(
            lambda c: c.execute(
                "SELECT definition FROM definitions WHERE digest = ?", (digest,)
            ).fetchone()
        )
        return None if row is None else json.loads(row[0])

    async def run_row(self, run_id: str) -> dict[str, Any] | None:
        """A run's row, decoded, or ``None``."""
        row = await self._read(
            lambda c: c.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
        )
        return None if row is None else _decode_run(row)

    async def load_run(self, run_id: str) -> Run | None:
        """A run as stored: its row and settled steps (for runs no longer in memory)."""

        def read(c: sqlite3.Connection) -> tuple[Any, list[Any]] | None:
            row = c.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                return None
            steps = c.execute(
                "SELECT path, status, output, error, attempts, started_at, "
                "finished_at FROM steps WHERE run_id = ?",
                (run_id,),
            ).fetchall()
            return row, steps

        found = await self._read(read)
        if found is None:
            return None
        row, steps = found
        return run_from_row(
            _decode_run(row),
            {
                path: StepState(
                    status=status,
                    output=_maybe(output),
                    error=_maybe(error),
                    attempts=attempts,
                    started_at=started,
                    finished_at=finished,
                )
                for path, status, output, error, attempts, started, finished in steps
            },
        )

    async def events(self, run_id: str, since: int = 0, limit: int | None = None) -> list[Event]:
        """Committed events of a run with ``seq > since``, in order."""
        sql = (
            "SELECT seq, type, step, data, ts FROM events WHERE run_id = ? AND seq > ? ORDER BY seq"
        )
        params: tuple[Any, ...] = (run_id, since)
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        rows = await self._read(lambda c: c.execute(sql, params).fetchall())
        return [
            Event(seq, run_id, kind, step, json.loads(data), ts)
            for seq, kind, step, data, ts in rows
        ]

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
        cursor: tuple[float, str] | None = None,
        limit: int = 50,
    ) -> RunPage:
        """Top-level runs, newest first, filtered, one page after ``cursor``."""
        where = ["parent_id IS NULL"]
        params: list[Any] = []
        for clause, value in (
            ("workflow = ?", workflow),
            ("status = ?", status),
            ("created_at >= ?", created_after),
            ("created_at < ?", created_before),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        if cursor is not None:
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            params += [cursor[0], cursor[0], cursor[1]]
        sql = (
            f"SELECT {', '.join(SUMMARY_FIELDS)} FROM runs WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, id DESC LIMIT ?"
        )
        params.append(limit + 1)
        rows = await self._read(lambda c: c.execute(sql, params).fetchall())
        runs = [dict(zip(SUMMARY_FIELDS, r, strict=True)) for r in rows[:limit]]
        more = len(rows) > limit and runs
        return RunPage(runs, page_cursor(runs[-1]["created_at"], runs[-1]["id"]) if more else None)

    async def run_ids_starting(self, prefix: str, limit: int) -> list[str]:
        """Ids of runs starting with ``prefix``, in order, at most ``limit``: a range of the
        primary key's index (``prefix <= id < prefix`` with its last character raised), so a
        lookup costs the same with a million runs kept as with ten."""
        if not prefix:
            return []
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # UTF-8 sorts as code points do
        rows = await self._read(
            lambda c: c.execute(RUN_IDS_STARTING, (prefix, upper, limit)).fetchall()
        )
        return [run_id for (run_id,) in rows]

    async def run_for_key(self, key: str) -> str | None:
        """The run started with idempotency key ``key``, if any."""
        row = await self._read(
            lambda c: c.execute("SELECT run_id FROM idempotency WHERE key = ?", (key,)).fetchone()
        )
        return None if row is None else row[0]

    async def child_run(self, parent_id: str, parent_step: str) -> dict[str, Any] | None:
        """The child run a parent's step attempt started, if it got that far."""
        row = await self._read(
            lambda c: c.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE parent_id = ? AND parent_step = ? "
                "ORDER BY created_at DESC LIMIT 1",
                (parent_id, parent_step),
            ).fetchone()
        )
        return None if row is None else _decode_run(row)

    async def unfinished_runs(self) -> list[dict[str, Any]]:
        """Top-level runs that had not ended when the host stopped, oldest first."""
        marks = ", ".join("?" for _ in UNFINISHED)
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE status IN ({marks}) AND parent_id IS NULL "
                "ORDER BY created_at, id",
                UNFINISHED,
            ).fetchall()
        )
        return [_decode_run(r) for r in rows]

    async def counts(self) -> dict[str, int]:
        """Top-level runs by status."""
        rows = await self._read(
            lambda c: c.execute(
                "SELECT status, count(*) FROM runs WHERE parent_id IS NULL GROUP BY status"
            ).fetchall()
        )
        return dict(rows)

    async def stats(self, *, workflow: str | None = None, since: float | None = None) -> RunStats:
        """``runs/stats``'s figures, computed by SQLite over indexed columns (see
        :func:`_read_stats`)."""
        return await self._read(lambda c: _read_stats(c, workflow, since))

    async def run_timings(
        self, workflow: str, *, since: float | None = None, limit: int = BOTTLENECK_RUNS
    ) -> list[RunTiming]:
        """The newest succeeded runs of ``workflow`` with their top-level steps' timings."""
        return await self._read(lambda c: _read_timings(c, workflow, since, limit))


def _window(workflow: str | None, since: float | None, column: str) -> tuple[str, list[Any]]:
    """The ``AND ...`` clauses (and their parameters) of a stats query's filter: one workflow,
    and ``column`` (the run's creation time) at or after ``since``."""
    where = ""
    params: list[Any] = []
    if workflow is not None:
        where += " AND workflow = ?"
        params.append(workflow)
    if since is not None:
        where += f" AND {column} >= ?"
        params.append(since)
    return where, params


def _percentiles(c: sqlite3.Connection, sql: str, params: list[Any], count: int) -> Percentiles:
    """The nearest-rank percentiles of a group of ``count`` durations, each one value read
    with ``LIMIT 1 OFFSET``: ``sql`` walks the group's index in duration order (``{order}``
    is filled with ``ASC`` or ``DESC``), so no sort is made and nothing but the value comes
    back. The high percentiles walk from the top: about 0.56 of the group is stepped over in
    all, never a row is read from the table."""
    if count == 0:
        return Percentiles()
    values = []
    for percent in PERCENTILES:
        rank = nearest_rank(count, percent)  # 1-based, ascending
        if rank <= count // 2:
            order, offset = "ASC", rank - 1
        else:
            order, offset = "DESC", count - rank
        row = c.execute(sql.format(order=order), [*params, offset]).fetchone()
        values.append(None if row is None else row[0])
    return Percentiles(*values)


def _read_stats(c: sqlite3.Connection, workflow: str | None, since: float | None) -> RunStats:
    """``runs/stats`` from the indexes ``runs_by_duration`` and ``steps_stats`` (migration 4):
    one aggregate query per table counts each group while scanning its covering index in
    order (no sort, no table row read), then each percentile of each group is one walk of
    that group's index range (:func:`_percentiles`)."""
    of_runs, run_params = _window(workflow, since, "created_at")
    in_runs, in_run_params = _window(None, since, "created_at")
    workflows = []
    for name, runs, ok, bad, off, ended in c.execute(
        "SELECT workflow, count(*), sum(status = 'succeeded'), sum(status = 'failed'), "
        "sum(status = 'cancelled'), count(finished_at - started_at) "
        f"FROM runs INDEXED BY runs_by_duration WHERE 1{of_runs} "
        "GROUP BY workflow ORDER BY workflow",
        run_params,
    ).fetchall():
        duration = _percentiles(
            c,
            "SELECT finished_at - started_at FROM runs INDEXED BY runs_by_duration "
            f"WHERE workflow = ? AND finished_at - started_at IS NOT NULL{in_runs} "
            "ORDER BY finished_at - started_at {order} LIMIT 1 OFFSET ?",
            [name, *in_run_params],
            ended,
        )
        workflows.append(WorkflowStats(name, runs, ok, bad, off, duration))
    of_steps, step_params = _window(workflow, since, "run_created")
    in_steps, in_step_params = _window(None, since, "run_created")
    steps = []
    for name, step, count, bad, retried, cached, waited, busy, timed in c.execute(
        "SELECT workflow, base, count(*), sum(status = 'failed'), sum(attempts > 1), "
        "sum(cached), total(waited), total(duration), count(duration) "
        f"FROM steps INDEXED BY steps_stats WHERE base IS NOT NULL AND {_RAN}{of_steps} "
        "GROUP BY workflow, base ORDER BY workflow, base",
        step_params,
    ).fetchall():
        if name is None:  # none once migrated (a row written by other means, say)
            continue
        duration = _percentiles(
            c,
            "SELECT duration FROM steps INDEXED BY steps_stats WHERE workflow = ? AND base = ? "
            f"AND duration IS NOT NULL AND {_RAN}{in_steps} "
            "ORDER BY duration {order} LIMIT 1 OFFSET ?",
            [name, step, *in_step_params],
            timed,
        )
        steps.append(StepStats(name, step, count, bad, retried, cached, waited, busy, duration))
    agents: dict[str, AgentUsage] = {}
    where, params = _window(workflow, since, "run_created")
    for agent, count, turns in c.execute(
        f"SELECT agent, count(*), sum(turns) FROM agent_usage WHERE 1{where} "
        "GROUP BY agent ORDER BY agent",
        params,
    ):
        agents[agent] = AgentUsage(agent, count, turns, {})
    for agent, key, total in c.execute(
        "SELECT a.agent, u.key, sum(u.value) FROM agent_usage AS a, json_each(a.usage) AS u "
        f"WHERE u.type = 'integer'{where} GROUP BY a.agent, u.key ORDER BY a.agent, u.key",
        params,
    ):
        agents[agent].usage[key] = total
    return RunStats(workflows, steps, list(agents.values()))


def _read_timings(
    c: sqlite3.Connection, workflow: str, since: float | None, limit: int
) -> list[RunTiming]:
    """The newest succeeded runs of ``workflow`` (``runs_by_workflow``, read backwards) and
    their top-level step rows (the steps' primary key, a range per run)."""
    where, params = _window(None, since, "created_at")
    runs = c.execute(
        "SELECT id, digest, started_at, finished_at FROM runs "
        f"WHERE workflow = ? AND status = 'succeeded'{where} ORDER BY created_at DESC LIMIT ?",
        [workflow, *params, limit],
    ).fetchall()
    if not runs:
        return []
    by_run: dict[str, list[StepTiming]] = {run_id: [] for run_id, *_ in runs}
    marks = ", ".join("?" for _ in runs)
    for run_id, path, status, started, finished, waited, attempts, cached in c.execute(
        "SELECT run_id, path, status, started_at, finished_at, waited, attempts, cached "
        f"FROM steps WHERE run_id IN ({marks}) AND instr(path, '.') = 0 "
        "AND instr(path, '[') = 0",
        list(by_run),
    ):
        by_run[run_id].append(
            StepTiming(path, status, started, finished, waited or 0.0, attempts, bool(cached))
        )
    return [
        RunTiming(run_id, digest, started, finished, by_run[run_id])
        for run_id, digest, started, finished in runs
        if started is not None and finished is not None
    ]


def _maybe(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _decode_run(row: Iterable[Any]) -> dict[str, Any]:
    out = dict(zip(RUN_FIELDS, row, strict=True))
    for key in ("inputs", "outputs", "error"):
        out[key] = _maybe(out[key])
    return out
