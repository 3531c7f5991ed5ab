"""Run and step state, and the events that record every change to them.

Every change of a run or a step goes through :meth:`Run.record` (or the helpers that call it):
it applies the change and appends an event with the run's next sequence number. Recording and
telling are two steps: without a store, :meth:`Run.publish` follows at once; with one, the store
calls it once the event is committed, so that no follower (a subscriber, ``runs/wait``, an MCP
progress notification) ever hears of a change a crash could still undo.
"""

from __future__ import annotations

import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from plait.plugins.types import INPUT_SIGNAL_PREFIX, Message

__all__ = [
    "STEP_SETTLED",
    "TERMINAL",
    "TERMINAL_EVENTS",
    "Event",
    "Run",
    "RunStatus",
    "StepState",
    "StepStatus",
    "SUMMARY_FIELDS",
    "is_top_level",
    "new_run_id",
    "without_indexes",
]

RunStatus = Literal["pending", "running", "paused", "waiting", "succeeded", "failed", "cancelled"]
StepStatus = Literal[
    "pending", "running", "succeeded", "failed", "skipped", "cancelled", "waiting", "interrupted"
]

TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
"""Run statuses a run never leaves."""

STEP_SETTLED: frozenset[str] = frozenset({"succeeded", "failed", "skipped", "cancelled"})
"""Step statuses after which a step never runs again in this run."""

TERMINAL_EVENTS: frozenset[str] = frozenset({"run.succeeded", "run.failed", "run.cancelled"})
"""The event types that end a run."""

_LEAVE_PAUSE: frozenset[str] = frozenset(
    {"run.resumed", "run.waiting", "run.started", *TERMINAL_EVENTS}
)
"""The events that end a pause (``runs/resume`` records ``run.resumed`` or ``run.waiting``)."""

_CLOSE_QUESTION: frozenset[str] = frozenset(
    {
        "input.answered",
        "step.retrying",
        "step.succeeded",
        "step.failed",
        "step.skipped",
        "step.cancelled",
        "step.interrupted",
    }
)
"""Events of a step that close its open question (``questions``)."""

SUMMARY_FIELDS: tuple[str, ...] = (
    "id",
    "workflow",
    "version",
    "status",
    "created_at",
    "finished_at",
    "parent_id",
)
"""What ``runs/list`` tells of each run (attributes of :class:`Run`, columns of the store)."""


@dataclass(slots=True)
class Event:
    """One change of a run, numbered in order: ``seq`` starts at 1 and has no gaps.

    Not to be changed once recorded (it is not frozen only because frozen dataclasses cost
    several times more to create, and every change of every run makes one).
    """

    seq: int
    run_id: str
    type: str
    """``run.started``, ``step.succeeded``, ``step.cached``, ``agent.message``, ..."""
    step: str | None
    data: dict[str, Any]
    ts: float
    """Wall-clock time (``time.time()``)."""

    def to_dict(self) -> dict[str, Any]:
        """The wire form of ``runs/events`` and ``runs/event`` notifications."""
        return {
            "runId": self.run_id,
            "seq": self.seq,
            "type": self.type,
            "step": self.step,
            "data": self.data,
            "ts": self.ts,
        }


@dataclass(slots=True)
class StepState:
    """Where one step of a run stands."""

    status: StepStatus = "pending"
    output: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    checkpoints: dict[str, Any] | None = None
    """Values the current attempt asked to keep across a restart (``ctx.checkpoint``)."""
    reason: str | None = None
    """What a ``waiting`` step waits for (a signal, a rate budget)."""
    reused_from: str | None = None
    """The run this step's result was taken from (``runs/rerun``): it did not run here."""
    waited: float = 0.0
    """Seconds its attempts waited for a slot of the run's or the host's concurrency limit."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form for ``runs/get``."""
        out = {
            "status": self.status,
            "output": self.output,
            "error": self.error,
            "attempts": self.attempts,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        if self.reused_from is not None:
            out["reused"] = True
            out["from"] = self.reused_from
        return out


def is_top_level(path: str) -> bool:
    """Whether a step path names a step of the workflow itself, not one inside a loop's or a
    parallel step's body (``each[3].t``, ``p.a``): what progress counts."""
    return "." not in path and "[" not in path


_INDEX = re.compile(r"\[[^\]]*\]")


def without_indexes(path: str) -> str:
    """A step path without its loop indexes and branch keys: ``each[2].fetch`` → ``each.fetch``.

    What a breakpoint may name, and what ``runs/stats`` groups a nested step's figures by (every
    iteration of a loop's body is the same step of the definition)."""
    return _INDEX.sub("", path) if "[" in path else path


def new_run_id() -> str:
    """A unique run id: 128 random bits as 32 hex digits, like a uuid4's hex.

    Made without a system call (``uuid4`` reads ``os.urandom`` each time): a run id names a
    run, it is not a secret, so a PRNG seeded once from the OS is enough. Random from the
    first digit, so a short prefix tells runs apart.
    """
    return f"{_ids.getrandbits(128):032x}"


_ids = random.Random()  # seeded from os.urandom once, at import

Listener = Callable[[Event], None]
Sink = Callable[["Run", Event], None]
"""Where recorded events go before they are told (the store's ``record``)."""


@dataclass(eq=False, slots=True)
class Run:
    """A run: its identity, inputs, status, step states, outputs and event history."""

    id: str
    workflow: str
    version: int
    inputs: dict[str, Any]
    parent_id: str | None = None
    status: RunStatus = "pending"
    outputs: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    steps: dict[str, StepState] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    """Every event, while the run is in memory (live, or kept without a store); a finished
    run read back from the store has none here: ``Host.events`` reads them."""
    conversations: dict[str, list[Message]] = field(default_factory=dict)
    total_steps: int = 0
    """Top-level steps of the workflow, for progress."""
    settled_steps: int = 0
    idempotency_key: str | None = None
    digest: str | None = None
    """The definition snapshot this run executes (the workflow version's content hash)."""
    parent_step: str | None = None
    """For a child run: the step path, and ``#attempt``, of the parent step that started it."""
    rerun_of: dict[str, Any] | None = None
    """For a run made by ``runs/rerun``: ``{runId, step}``, the run it re-runs and the step it
    re-runs from (its ``origin`` in ``runs/get``, kept in its ``run.created`` event)."""
    traceparent: str | None = None
    """The W3C trace context the run's span continues (the request that started it), kept
    in its ``run.created`` event so a resumed run stays in the same trace."""
    origin: Any = field(default=None, repr=False)
    """The client connection that started the run, if any (not kept: gone after a restart);
    the sampling provider asks it first."""
    reason: str | None = None
    """Why a paused run is paused, when something other than ``runs/pause`` paused it (a
    breakpoint, a run started paused)."""
    seq: int = 0
    """The sequence number of the last recorded event."""
    published: int = 0
    """The sequence number of the last event told to followers (committed, with a store)."""
    finished: bool = False
    """Whether the terminal event has been told: what ``wait`` and followers go by."""
    sink: Sink | None = field(default=None, repr=False)
    _listeners: list[Listener] = field(default_factory=list, repr=False)
    _waiters: list[tuple[int, anyio.Event]] = field(default_factory=list, repr=False)
    """(seq, event): set once ``published`` reaches seq (``-1``: once the run is finished)."""
    _signals: dict[str, deque[Any]] | None = field(default=None, repr=False)
    _signal_waiters: dict[str, anyio.Event] | None = field(default=None, repr=False)
    _signals_awaited: dict[str, int] = field(default_factory=dict, repr=False)
    _asked: tuple[int, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: (0, {}), repr=False
    )
    """For :meth:`questions`, read from the events as far as they were read: (events read, the
    open questions by step path)."""
    _pauses: tuple[int, float | None, float] = field(default=(0, None, 0.0), repr=False)
    """For the ETA, read from the events as far as they were read: (events read, when the
    pause in progress began or ``None``, seconds spent in pauses that ended)."""

    # -- the one place changes go through -------------------------------------------------

    def record(
        self, type: str, step: str | None = None, data: dict[str, Any] | None = None
    ) -> Event:
        """Append an event for a change already applied; tell followers once it is kept."""
        self.seq += 1
        event = Event(self.seq, self.id, type, step, data or {}, time.time())
        self.events.append(event)
        if self.sink is None:
            self.publish(event)
        else:
            self.sink(self, event)
        return event

    def publish(self, event: Event) -> None:
        """Tell every follower about a kept event (in ``seq`` order, each once)."""
        self.published = event.seq
        if event.type in TERMINAL_EVENTS:
            self.finished = True
        for listener in self._listeners:
            listener(event)
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        published, finished = self.published, self.finished
        keep = []
        for target, waiter in self._waiters:
            if finished if target < 0 else published >= target:
                waiter.set()
            else:
                keep.append((target, waiter))
        self._waiters = keep

    async def _until(self, target: int) -> None:
        waiter = anyio.Event()
        self._waiters.append((target, waiter))
        await waiter.wait()

    def set_status(self, status: RunStatus, **data: Any) -> Event:
        """Move the run to ``status`` and record ``run.<status>`` (``run.started`` or
        ``run.resumed`` for ``running``)."""
        now = time.time()
        self.status = status
        self.reason = data.get("reason") if status == "paused" else None
        kind: str = status
        if status == "running":
            kind = "started" if self.started_at is None else "resumed"
            self.started_at = self.started_at or now
        if status in TERMINAL:
            self.finished_at = now
        return self.record(f"run.{kind}", None, data)

    def step_state(self, path: str) -> StepState:
        """The state of step ``path``, created pending on first use."""
        state = self.steps.get(path)
        if state is None:
            state = self.steps[path] = StepState()
        return state

    def set_step(
        self,
        path: str,
        status: StepStatus,
        data: dict[str, Any] | None = None,
        *,
        type: str | None = None,
        **changes: Any,
    ) -> Event:
        """Change a step's status (and fields like ``output``), recording ``step.<status>``
        (``step.started`` for ``running``).

        ``type`` names another event for the change: a step going on after a wait
        (``signal.taken``, ``step.resumed``) is ``running`` again without a new start.
        """
        state = self.step_state(path)
        state.status = status
        if state.reason is not None and status != "waiting":
            state.reason = None
        now = time.time()
        if status == "running" and type is None:
            state.started_at = now
        elif status in STEP_SETTLED:
            state.finished_at = now
        for name, value in changes.items():
            setattr(state, name, value)
        if type is None:
            type = "step.started" if status == "running" else f"step.{status}"
        return self.record(type, path, data)

    # -- followers ---------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Whether the run reached a terminal status (possibly not yet kept; see ``finished``)."""
        return self.status in TERMINAL

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` synchronously with every new event; returns the undo function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def follow(self, since: int = 0) -> AsyncIterator[Event]:
        """Every event after ``since``, live, until the run is terminal and all are read."""
        cursor = since
        while True:
            while cursor < self.published:
                cursor += 1
                yield self.events[cursor - 1]
            if self.finished:
                return
            await self._until(cursor + 1)

    async def wait(self) -> Run:
        """Return once the run is terminal and that is kept."""
        if not self.finished:  # _until(-1), written out: one frame less per waiting caller
            waiter = anyio.Event()
            self._waiters.append((-1, waiter))
            await waiter.wait()
        return self

    async def committed(self) -> Run:
        """Return once every change recorded so far is kept and told (at once without a store).

        A reply that describes the run awaits this first, so it never reports what a crash
        could undo.
        """
        target = self.seq
        if self.published < target:
            await self._until(target)
        return self

    async def view(self) -> dict[str, Any]:
        """:meth:`to_dict` as the run stands now, returned once all of it is kept.

        The snapshot is taken first, so a change recorded while the commit is awaited is not
        in it: a reply never shows what a crash could still undo.
        """
        snapshot = self.to_dict()
        await self.committed()
        return snapshot

    # -- signals -----------------------------------------------------------------------------

    def signal(self, event: str, data: Any = None) -> None:
        """Deliver a signal; kept until a ``wait`` step takes it."""
        if self._signals is None:
            self._signals = {}
        self._signals.setdefault(event, deque()).append(data)
        self.record("run.signal", None, {"event": event, "data": data})
        waiter = self._signal_waiters.pop(event, None) if self._signal_waiters else None
        if waiter is not None:
            waiter.set()

    def restore_signals(self, queued: dict[str, deque[Any]]) -> None:
        """Signals sent but not taken before a restart, oldest first."""
        self._signals = queued

    async def take_signal(self, event: str, step: str) -> Any:
        """Wait for (or take a queued) signal ``event`` for ``step``; records ``signal.taken``."""
        while True:
            queue = self._signals.get(event) if self._signals else None
            if queue:
                data = queue.popleft()
                self.set_step(step, "running", {"event": event}, type="signal.taken")
                return data
            if self._signal_waiters is None:
                self._signal_waiters = {}
            waiter = self._signal_waiters.get(event)
            if waiter is None:
                waiter = self._signal_waiters[event] = anyio.Event()
            awaited = self._signals_awaited
            awaited[event] = awaited.get(event, 0) + 1
            try:
                await waiter.wait()
            finally:
                awaited[event] -= 1
                if not awaited[event]:
                    del awaited[event]

    def queued_signals(self, event: str) -> int:
        """How many signals ``event`` were sent and not taken yet."""
        queue = self._signals.get(event) if self._signals else None
        return len(queue) if queue else 0

    # -- questions (``input`` steps) -----------------------------------------------------------

    def questions(self) -> list[dict[str, Any]]:
        """The questions of ``input`` steps waiting for an answer, oldest first:
        ``{step, message, schema, answerers, deadline}`` each.

        Read from the events (``input.requested`` opens a question; its answer, taken or only
        sent, and the step settling or retrying close it), each event once.
        """
        read, open_ = self._asked
        events = self.events
        if read > len(events):  # the events were put back after a restart: read them again
            read, open_ = 0, {}
        for event in events[read:]:
            kind, path = event.type, event.step
            if kind == "input.requested" and path is not None:
                open_.pop(path, None)  # asked again (after a restart): it goes last
                open_[path] = {"step": path, **event.data}
            elif kind == "run.signal" or kind == "signal.taken":
                name = event.data.get("event")
                if isinstance(name, str) and name.startswith(INPUT_SIGNAL_PREFIX):
                    open_.pop(name[len(INPUT_SIGNAL_PREFIX) :], None)
            elif path is not None and kind in _CLOSE_QUESTION:
                open_.pop(path, None)
            elif kind in TERMINAL_EVENTS:
                open_.clear()
        self._asked = (len(events), open_)
        if self.done:
            return []
        # Asked again after a restart while an answer sent before it waits to be taken.
        return [
            q for path, q in open_.items() if not self.queued_signals(INPUT_SIGNAL_PREFIX + path)
        ]

    def question(self, step: str) -> dict[str, Any] | None:
        """The open question of step ``step``, or ``None``."""
        return next((q for q in self.questions() if q["step"] == step), None)

    def awaited_signals(self) -> Collection[str]:
        """The events some step of the run is waiting for right now (a step type may wait
        for a signal its workflow does not declare)."""
        return self._signals_awaited.keys()

    # -- views -------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """The ``run`` root of templates: identity only, nothing secret."""
        return {
            "id": self.id,
            "workflow": self.workflow,
            "version": self.version,
            "started_at": self.started_at,
            "parent_id": self.parent_id,
        }

    def paused_time(self, now: float | None = None) -> float:
        """Seconds this run has spent paused so far, from its ``run.*`` events (each event is
        read once: the count goes on from where the last call stopped)."""
        read, since, total = self._pauses
        events = self.events
        if read > len(events):  # the events were put back after a restart: read them again
            read, since, total = 0, None, 0.0
        for event in events[read:]:
            kind = event.type
            if kind == "run.paused":
                if since is None:
                    since = event.ts
            elif since is not None and kind in _LEAVE_PAUSE:
                total += max(0.0, event.ts - since)
                since = None
        self._pauses = (len(events), since, total)
        if since is not None:
            total += max(0.0, (time.time() if now is None else now) - since)
        return total

    def progress(self) -> dict[str, Any]:
        """Done, total, percent and a naive ETA (seconds) from the pace so far.

        The pace is that of the time spent working: time spent paused does not count, so the
        ETA of a paused run stays as it was when the pause began.
        """
        total = max(self.total_steps, 1)
        done = min(self.settled_steps, total)
        eta = None
        if self.started_at and 0 < done < total and not self.done:
            now = time.time()
            elapsed = max(0.0, now - self.started_at - self.paused_time(now))
            eta = elapsed / done * (total - done)
        return {
            "done": done,
            "total": self.total_steps,
            "percent": round(100 * done / total, 1),
            "eta": eta,
        }

    def summary(self) -> dict[str, Any]:
        """The short JSON form of ``runs/list``."""
        return {name: getattr(self, name) for name in SUMMARY_FIELDS}

    def to_dict(self, *, steps: bool = True) -> dict[str, Any]:
        """JSON form for ``runs/get`` and ``plait run --json``."""
        out: dict[str, Any] = {
            "id": self.id,
            "workflow": self.workflow,
            "version": self.version,
            "status": self.status,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "error": self.error,
            "parent_id": self.parent_id,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "progress": self.progress(),
        }
        if self.reason is not None:
            out["reason"] = self.reason
        if self.rerun_of is not None:
            out["origin"] = self.rerun_of
        if self.events and (questions := self.questions()):
            out["questions"] = questions
        if steps:
            out["steps"] = {path: s.to_dict() for path, s in self.steps.items()}
        return out
