"""Rebuilding a run from its events after a restart.

The store keeps every event, so a run's state is a fold over them. :func:`replay` computes what
the scheduler needs to pick up where the run stopped: for every step path, whether it settled
(and with what output, error and chosen branches) or was in flight (and which attempt, with
which checkpoints); the signals sent but not yet taken; and each conversation's history.

The scheduler then walks the graph as usual: a settled step is settled again from its record
without running (so a committed step never runs twice), and an in-flight step runs again as
the same attempt with the same idempotency key.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from plait.plugins.types import Message
from plait.state.runs import Event, StepState, StepStatus

__all__ = ["REPLAYED", "RecoveredRun", "StepRecord", "count_crashes", "replay"]

REPLAYED: frozenset[str] = frozenset({"succeeded", "failed", "skipped"})
"""Settled statuses replayed from the record. A cancelled step (a losing ``wait: any``
branch, or a shutdown) runs again if its scope runs again."""


@dataclass(slots=True)
class StepRecord:
    """What the events say about one step path."""

    status: StepStatus = "pending"
    output: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    attempt: int = 1
    """The attempt to run when the step resumes: the one in flight, or the next after a
    failed attempt that was waiting to be retried."""
    executing: bool = False
    """An attempt had started and not ended: its work may have been half done."""
    branches: list[str] | None = None
    checkpoints: dict[str, Any] = field(default_factory=dict)
    started_at: float | None = None
    finished_at: float | None = None
    taken: tuple[str, Any] | None = None
    """The signal the step's current attempt took: (event, data)."""
    retry_at: float | None = None
    """When the next attempt was due, if the step was waiting out a retry's backoff."""
    crashes: int = 0
    """Host crashes in a row the current attempt was executing through."""
    reused_from: str | None = None
    """The run whose result the step took over (``step.reused``, made by ``runs/rerun``)."""

    @property
    def settled(self) -> bool:
        """Whether the step is replayed instead of run."""
        return self.status in REPLAYED

    @property
    def in_flight(self) -> bool:
        """Whether the step was running or waiting when the host stopped: it goes on as the
        same attempt."""
        return self.status in ("running", "waiting")

    def state(self) -> StepState:
        """The step state shown by ``runs/get`` until the step runs or is replayed."""
        return StepState(
            status=self.status,
            output=self.output,
            error=self.error,
            attempts=self.attempts,
            started_at=self.started_at,
            finished_at=self.finished_at,
            checkpoints=dict(self.checkpoints) or None,
            reused_from=self.reused_from,
        )


@dataclass(slots=True)
class RecoveredRun:
    """A run's state as of its last committed event."""

    steps: dict[str, StepRecord] = field(default_factory=dict)
    signals: dict[str, deque[Any]] = field(default_factory=dict)
    conversations: dict[str, list[Message]] = field(default_factory=dict)
    seq: int = 0
    origin: dict[str, Any] | None = None
    """For a run made by ``runs/rerun``, the ``origin`` its ``run.created`` event names."""
    traceparent: str | None = None
    """The trace context its ``run.created`` event kept (tracing)."""

    @property
    def in_flight(self) -> list[str]:
        """Steps that were running or waiting when the host stopped."""
        return [path for path, rec in self.steps.items() if rec.in_flight]


_SETTLED_STATUS: dict[str, StepStatus] = {
    "step.succeeded": "succeeded",
    "step.failed": "failed",
    "step.skipped": "skipped",
    "step.cancelled": "cancelled",
    "step.interrupted": "interrupted",
}
"""The step status each settling event leaves behind."""


_NOT_STEP_CHANGES = frozenset({"run.breakpoint", "debug.step"})
"""Events that name a step without changing it."""


def replay(events: Iterable[Event]) -> RecoveredRun:
    """Fold a run's events (in ``seq`` order) into its recovered state."""
    out = RecoveredRun()
    steps = out.steps
    for event in events:
        out.seq = event.seq
        kind, data, path = event.type, event.data, event.step
        if kind == "run.signal":
            out.signals.setdefault(data["event"], deque()).append(data.get("data"))
            continue
        if kind == "conversation.appended":
            out.conversations.setdefault(data["conversation"], []).extend(
                Message.from_dict(m) for m in data["messages"]
            )
            continue
        if kind == "run.created":
            out.origin = data.get("origin") or None
            out.traceparent = data.get("traceparent")
            continue
        if kind == "run.recovered":
            count_crashes(steps, data.get("interrupted", ()), crashed=bool(data.get("crash")))
            continue
        if path is None or kind in _NOT_STEP_CHANGES:
            continue
        if kind == "debug.output":  # the debugger replaced an ended step's output
            if (found := steps.get(path)) is not None and found.status == "succeeded":
                found.output = data.get("output")
            continue
        rec = steps.get(path)
        if rec is None:
            rec = steps[path] = StepRecord()
        _apply(rec, kind, data, event.ts, out.signals)
    # A signal taken by an attempt that never finished goes back to the front of its queue.
    for rec in steps.values():
        if rec.taken is not None and not rec.settled:
            name, value = rec.taken
            out.signals.setdefault(name, deque()).appendleft(value)
            rec.taken = None
    return out


def count_crashes(steps: dict[str, StepRecord], paths: Iterable[str], *, crashed: bool) -> None:
    """A restart found ``paths`` in flight: count a crash against each attempt that was
    executing (a clean stop, or a step only waiting, clears the count)."""
    for path in paths:
        rec = steps.get(path)
        if rec is not None:
            rec.crashes = rec.crashes + 1 if crashed and rec.executing else 0


def _apply(
    rec: StepRecord, kind: str, data: dict[str, Any], ts: float, signals: dict[str, deque[Any]]
) -> None:
    if kind == "step.started":
        attempt = int(data.get("attempt", rec.attempt))
        if attempt != rec.attempt:  # a new attempt starts clean; a resumed one keeps its own
            rec.checkpoints = {}
        rec.status, rec.attempts, rec.attempt, rec.executing = "running", attempt, attempt, True
        rec.retry_at = None
        rec.started_at = rec.started_at if data.get("recovered") else ts
        if not data.get("recovered"):
            rec.crashes = 0
        rec.taken = None
    elif kind == "step.retrying":
        rec.attempt = int(data.get("attempt", rec.attempt)) + 1
        rec.executing = False
        rec.checkpoints = {}
        rec.retry_at = ts + float(data.get("delay") or 0.0)
    elif kind == "step.waiting":
        rec.status = "waiting"
    elif kind == "step.resumed":
        rec.status = "running"
    elif kind == "signal.taken":
        queue = signals.get(data["event"])
        rec.taken = (data["event"], queue.popleft() if queue else None)
        rec.status = "running"
    elif kind == "step.checkpoint":
        rec.checkpoints[data["key"]] = data.get("value")
    elif kind in (
        "step.succeeded",
        "step.failed",
        "step.skipped",
        "step.cancelled",
        "step.interrupted",
    ):
        rec.status = _SETTLED_STATUS[kind]
        rec.executing = False
        rec.finished_at = ts
        if kind == "step.succeeded":
            rec.output = data.get("output")
            rec.branches = data.get("branches")
        elif kind == "step.failed":
            rec.error = data.get("error")
    elif kind == "step.reused":
        # A result taken over from another run (runs/rerun): settled like step.succeeded, so
        # a restart replays it instead of running it. Steps inside a reused step keep the
        # status they had there (data.status).
        rec.status = data.get("status", "succeeded")
        rec.output, rec.error = data.get("output"), data.get("error")
        rec.branches = data.get("branches")
        rec.attempts = int(data.get("attempts", rec.attempts))
        rec.executing = False
        rec.finished_at = ts
        rec.reused_from = data.get("from")
