"""What the engine needs from wherever runs are kept: the :class:`RunStore` protocol.

Two stores implement it: :class:`plait.store.SqliteStore` (durable, the default) and
:class:`plait.store.MemoryStore` (a process's lifetime, bounded). The engine talks to this
protocol only, so it never asks whether there is a store: there always is one, and the memory
store simply tells every event at once and forgets the oldest finished runs.

A stored run travels as a *row*: a plain dict with :data:`RUN_FIELDS` as keys (JSON values
already decoded), which :func:`run_from_row` turns back into a :class:`Run`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from plait.state.runs import STEP_SETTLED, Event, Run, StepState, is_top_level

__all__ = [
    "BOTTLENECK_RUNS",
    "DELIVERY_LOG_KEPT",
    "PERCENTILES",
    "RUN_FIELDS",
    "UNFINISHED",
    "RunPage",
    "AgentUsage",
    "EventRouter",
    "Percentiles",
    "RunStats",
    "RunTiming",
    "StepStats",
    "StepTiming",
    "WorkflowStats",
    "OutboxMessage",
    "RunStore",
    "WebhookAttempt",
    "nearest_rank",
    "page_cursor",
    "parse_cursor",
    "percentiles_of",
    "row_of",
    "run_from_row",
]

RUN_FIELDS: tuple[str, ...] = (
    "id",
    "workflow",
    "version",
    "digest",
    "status",
    "parent_id",
    "parent_step",
    "idempotency_key",
    "inputs",
    "outputs",
    "error",
    "total_steps",
    "created_at",
    "started_at",
    "finished_at",
)
"""The keys of a run row (the columns of the SQLite ``runs`` table)."""

UNFINISHED: tuple[str, ...] = ("pending", "running", "paused", "waiting")
"""Run statuses of a run that has not ended."""


@dataclass(frozen=True, slots=True)
class RunPage:
    """One page of ``runs/list``: summaries, newest first, and the cursor of the next page."""

    runs: list[dict[str, Any]]
    next_cursor: str | None


DELIVERY_LOG_KEPT = 1000
"""Delivery attempts the store keeps per webhook subscription (the oldest go first)."""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A webhook message waiting in the outbox for delivery to one subscription."""

    id: int
    webhook: str
    """The subscription's id."""
    message: str
    """The body to send (JSON text), made when its event was recorded."""
    attempts: int
    """Attempts made so far."""
    next_at: float
    """When it is due (epoch seconds)."""
    created_at: float


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """One delivery attempt of an outbox message, as the store records it."""

    outbox_id: int
    webhook: str
    message_id: str
    attempt: int
    status: int | None
    """The HTTP status answered, or ``None`` when none came (a network error, a timeout)."""
    error: str | None
    ts: float
    next_at: float | None
    """When to try again, or ``None``: the message leaves the outbox (delivered, given up)."""


class EventRouter(Protocol):
    """Which webhook subscriptions an event goes to (``plait.services.webhooks.Webhooks``).

    A store given one asks it about every event it keeps and writes an outbox row for each
    subscription named, in the same transaction as the event: a kept event always has its
    deliveries queued, and a crash loses none.
    """

    def route(self, run: Run, event: Event) -> tuple[Sequence[str], str] | None:
        """The subscriptions ``event`` goes to and the message for them, or ``None`` (what
        most events get, for the price of a dict lookup). Never raises."""
        ...


# -- analytics (runs/stats) -------------------------------------------------------------------

PERCENTILES: tuple[int, ...] = (50, 95, 99)
"""The percentiles ``runs/stats`` reports, in percent."""

BOTTLENECK_RUNS = 1000
"""The most recent succeeded runs of a workflow whose critical paths a bottleneck report reads:
enough for stable shares, few enough to answer in milliseconds whatever the store holds."""


def nearest_rank(count: int, percent: int) -> int:
    """The 1-based rank of the ``percent`` percentile among ``count`` sorted values (the
    nearest-rank method: the smallest value with at least ``percent`` % of them at or below it).

    Integer arithmetic, written the same way in the SQLite store's SQL, so both stores pick the
    same value: ``ceil(percent * count / 100)``, at least 1."""
    return max(1, (percent * count + 99) // 100)


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Nearest-rank percentiles of some durations, in seconds (``None``: no value to rank)."""

    p50: float | None = None
    p95: float | None = None
    p99: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        """The wire form: ``{p50, p95, p99}``."""
        return {"p50": self.p50, "p95": self.p95, "p99": self.p99}


def percentiles_of(values: Sequence[float]) -> Percentiles:
    """:class:`Percentiles` of ``values`` (any order), as the SQLite store computes them."""
    ordered = sorted(values)
    if not ordered:
        return Percentiles()
    p50, p95, p99 = (ordered[nearest_rank(len(ordered), p) - 1] for p in PERCENTILES)
    return Percentiles(p50, p95, p99)


@dataclass(frozen=True, slots=True)
class WorkflowStats:
    """A workflow's runs created in the window, child runs included (a ``workflow`` step's run
    is a run of its own workflow)."""

    workflow: str
    runs: int
    """Runs created in the window, whatever their status."""
    succeeded: int
    failed: int
    cancelled: int
    duration: Percentiles
    """``finished_at - started_at`` of the runs that ended (paused time included)."""

    @property
    def finished(self) -> int:
        """Runs that ended."""
        return self.succeeded + self.failed + self.cancelled

    @property
    def success_rate(self) -> float | None:
        """Succeeded among the runs that ended (``None`` when none did)."""
        return self.succeeded / self.finished if self.finished else None


@dataclass(frozen=True, slots=True)
class StepStats:
    """One step of a workflow over its runs in the window: a nested step (``each[3].t``) is
    counted under its path without indexes (``each.t``), each iteration once."""

    workflow: str
    step: str
    """The step's path without loop indexes or branch keys."""
    executions: int
    """Times it settled after running: succeeded or failed (not skipped, cancelled or reused)."""
    failed: int
    retried: int
    """Executions that took more than one attempt."""
    cached: int
    """Executions whose last attempt took a tool result from the tool cache."""
    waited: float
    """Seconds its executions waited in all for a slot of a concurrency limit."""
    busy: float
    """Seconds its executions took in all (the last attempt's start to its end, waits included)."""
    duration: Percentiles


@dataclass(frozen=True, slots=True)
class AgentUsage:
    """What one agent used in the window, from the ``agent.usage`` event each agent step emits
    when it ends (success or failure)."""

    agent: str
    steps: int
    """Agent steps that reported their usage."""
    turns: int
    usage: dict[str, int]
    """Every count the provider reported, summed by name (``input_tokens``, ...)."""


@dataclass(frozen=True, slots=True)
class RunStats:
    """``runs/stats``'s figures, as a store computes them."""

    workflows: list[WorkflowStats]
    """By workflow name."""
    steps: list[StepStats]
    """By workflow, then step path."""
    agents: list[AgentUsage]
    """By agent name."""


@dataclass(frozen=True, slots=True)
class StepTiming:
    """When a top-level step of a run ran, for its critical path."""

    step: str
    status: str
    started_at: float | None
    finished_at: float | None
    waited: float
    """Seconds it waited for a concurrency-limit slot."""
    attempts: int
    cached: bool


@dataclass(frozen=True, slots=True)
class RunTiming:
    """A succeeded run and its top-level steps' timings (what a critical path is read from)."""

    id: str
    digest: str | None
    """The definition it ran: which version's graph its steps depend by."""
    started_at: float
    finished_at: float
    steps: list[StepTiming]


def page_cursor(created_at: float, run_id: str) -> str:
    """The cursor of the page after the run listed last (runs sort by creation, then id)."""
    return f"{created_at!r}|{run_id}"


def parse_cursor(cursor: str) -> tuple[float, str]:
    """What :func:`page_cursor` made; raises ``ValueError`` for anything else."""
    stamp, sep, run_id = cursor.partition("|")
    if not sep or not run_id:
        raise ValueError(f"not a runs/list cursor: {cursor!r}")
    return float(stamp), run_id


def run_from_row(row: dict[str, Any], steps: dict[str, StepState] | None = None) -> Run:
    """A :class:`Run` built from its stored row (no events; ``finished`` when terminal)."""
    run = Run(
        id=row["id"],
        workflow=row["workflow"],
        version=row["version"],
        inputs=row["inputs"] or {},
        parent_id=row["parent_id"],
        status=row["status"],
        outputs=row["outputs"],
        error=row["error"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        total_steps=row["total_steps"],
        idempotency_key=row["idempotency_key"],
        digest=row["digest"],
        parent_step=row["parent_step"],
    )
    run.steps = steps or {}
    run.settled_steps = sum(
        1 for path, s in run.steps.items() if is_top_level(path) and s.status in STEP_SETTLED
    )
    run.finished = run.done
    return run


def row_of(run: Run) -> dict[str, Any]:
    """The row of a run as it stands (what :func:`run_from_row` reads)."""
    return {name: getattr(run, name) for name in RUN_FIELDS}


class RunStore(Protocol):
    """Where runs, their events and workflow versions are kept.

    Writes are queued and never wait; :meth:`sync` returns once everything queued is kept and
    told. Reads answer from what is kept.
    """

    @property
    def durable(self) -> bool:
        """Whether runs outlive the process (a stopping host leaves them to be resumed)."""
        ...

    @property
    def unavailable(self) -> str | None:
        """Why the store cannot write now (a full or read-only disk, a lost log), or ``None``
        while it can: new work is then refused at once instead of waiting for the disk."""
        ...

    async def troubled(self) -> None:
        """Return once the store cannot write (at once while it cannot): replies waiting for
        a commit are then told instead of held."""
        ...

    @property
    def after_crash(self) -> bool:
        """Whether the previous host using this store stopped without closing it (a crash,
        a kill, a power cut): what a restart finds in flight may be what brought it down."""
        ...

    def keep_crash_mark(self) -> None:
        """Leave the evidence of a crash (:attr:`after_crash`) for the next start: this one
        is only reading (``plait runs`` on a data dir), so the runs the crash left in flight are
        resumed, and their crash counted, by the host that starts next."""
        ...

    @property
    def backlogged(self) -> bool:
        """Whether so many changes wait to be kept that new steps should wait first."""
        ...

    def attach(self, run: Run) -> None:
        """Take a new or recovered run in: its events go to this store from now on."""
        ...

    def release(self, run: Run) -> None:
        """The run ended and that was told; the engine lets go of it."""
        ...

    def put_workflow(
        self, name: str, version: int, digest: str, definition: dict[str, Any], created_at: float
    ) -> None:
        """Queue a workflow version (its content kept once per digest) and make it current."""
        ...

    def set_current(self, name: str, version: int, *, deleted: bool = False) -> None:
        """Queue a change of which version is current, or the deletion of the workflow."""
        ...

    def put_breakpoints(self, workflow: str, breakpoints: list[dict[str, Any]]) -> None:
        """Queue a workflow's breakpoints (all of them: they replace what was kept)."""
        ...

    def put_step_config(self, run_id: str, path: str, attempt: int, config: Any) -> None:
        """Queue the whole rendered configuration of a step attempt whose ``step.started``
        event holds a cut one (``runs/stepConfig`` reads it back)."""
        ...

    async def breakpoints(self) -> dict[str, list[dict[str, Any]]]:
        """Every workflow's breakpoints (read once, at start)."""
        ...

    async def step_config(self, run_id: str, path: str, attempt: int) -> Any:
        """The whole configuration of a step attempt, if it was kept apart (else ``None``)."""
        ...

    def put_schedule(self, name: str, spec: dict[str, Any], state: dict[str, Any]) -> None:
        """Queue a schedule's spec and state (both replace what was kept)."""
        ...

    def delete_schedule(self, name: str) -> None:
        """Queue the removal of a schedule."""
        ...

    async def schedules(self) -> list[dict[str, Any]]:
        """Every kept schedule: ``{name, spec, state}`` by name (read once, at start)."""
        ...

    def put_dead_letter(self, entry: dict[str, Any]) -> None:
        """Queue a dead-letter entry (``run_id``, ``workflow``, ``step``, ``error_type``,
        ``failed_at``, ``state`` and the rest), replacing one for the same run."""
        ...

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
        """Dead-letter entries, newest first, filtered."""
        ...

    async def dead_letter(self, run_id: str) -> dict[str, Any] | None:
        """One dead-letter entry by its run's id."""
        ...

    def prune_dead_letters(self, before: float) -> None:
        """Queue the removal of the entries of runs that failed before ``before``."""
        ...

    def put_webhook(
        self,
        webhook_id: str,
        spec: dict[str, Any],
        state: dict[str, Any],
        *,
        requeue_at: float | None = None,
    ) -> None:
        """Queue a webhook subscription (replacing one with that id); with ``requeue_at``, the
        messages it has in the outbox start over: no attempts made, due at that time."""
        ...

    def set_webhook_state(self, webhook_id: str, state: dict[str, Any]) -> None:
        """Queue a new state for a kept subscription (nothing if it was deleted)."""
        ...

    def delete_webhook(self, webhook_id: str) -> None:
        """Queue the removal of a subscription, its outbox messages and its delivery log."""
        ...

    def webhook_attempt(self, attempt: WebhookAttempt) -> None:
        """Queue a delivery attempt: into the delivery log (the last
        :data:`DELIVERY_LOG_KEPT` of the subscription are kept), and its message out of the
        outbox or due again at ``attempt.next_at``."""
        ...

    async def webhooks(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """Every kept subscription: ``(id, spec, state)``, by id."""
        ...

    async def due_webhook_messages(
        self, now: float, webhooks: Collection[str], limit: int
    ) -> tuple[list[OutboxMessage], float | None]:
        """Outbox messages of ``webhooks`` due at ``now``, the longest due first, at most
        ``limit``; and when the next of theirs not yet due is (``None``: none waits)."""
        ...

    async def webhook_deliveries(
        self, webhook_id: str, *, before: int | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """A subscription's delivery attempts, newest first, with ids below ``before``:
        ``{id, messageId, attempt, status, error, ts}``."""
        ...

    async def webhook_backlog(self) -> dict[str, int]:
        """Messages waiting in the outbox, by subscription."""
        ...

    def freeze(self) -> None:
        """Accept no more changes: the host stops, runs in flight stay as they are."""
        ...

    async def sync(self) -> None:
        """Return once everything queued before the call is kept and told."""
        ...

    async def drained(self) -> None:
        """Wait while too many changes wait to be kept (backpressure on new steps)."""
        ...

    async def catalog(self) -> list[dict[str, Any]]:
        """Every workflow with every version: ``{name, current, deleted, versions: [...]}``."""
        ...

    async def definition(self, digest: str) -> dict[str, Any] | None:
        """The definition a run snapshotted, by its digest."""
        ...

    async def run_row(self, run_id: str) -> dict[str, Any] | None:
        """A run's row, or ``None``."""
        ...

    async def load_run(self, run_id: str) -> Run | None:
        """A kept run with its settled steps, or ``None``."""
        ...

    async def events(self, run_id: str, since: int = 0, limit: int | None = None) -> list[Event]:
        """Kept events of a run with ``seq > since``, in order."""
        ...

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
        ...

    async def run_ids_starting(self, prefix: str, limit: int) -> list[str]:
        """Ids of kept runs (child runs too) that start with ``prefix``, in order, at most
        ``limit``: what turns a run-id prefix a user typed into the run it names. An exact id
        is among them (it starts with itself). Answered from the id's index, never a scan."""
        ...

    async def run_for_key(self, key: str) -> str | None:
        """The run started with idempotency key ``key``, if any."""
        ...

    async def child_run(self, parent_id: str, parent_step: str) -> dict[str, Any] | None:
        """The row of the child run a parent's step attempt started, if any."""
        ...

    async def unfinished_runs(self) -> list[dict[str, Any]]:
        """Rows of top-level runs that had not ended when the last host stopped."""
        ...

    async def counts(self) -> dict[str, int]:
        """Top-level runs by status."""
        ...

    async def stats(self, *, workflow: str | None = None, since: float | None = None) -> RunStats:
        """Figures of the runs created at or after ``since`` (all runs: ``None``), of one
        workflow or of all: per workflow, per step, per agent (``runs/stats``)."""
        ...

    async def run_timings(
        self, workflow: str, *, since: float | None = None, limit: int = BOTTLENECK_RUNS
    ) -> list[RunTiming]:
        """The ``limit`` most recently created succeeded runs of ``workflow`` (created at or
        after ``since``) with their top-level steps' timings, newest first."""
        ...

    def describe(self) -> dict[str, Any]:
        """What ``host/info`` reports of the store."""
        ...
