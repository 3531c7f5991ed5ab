"""Schedules: runs of a workflow that start themselves, on a cron expression or an interval.

:class:`Schedules` is one task in the host's task group. It keeps every schedule's next fire in
a heap and sleeps until the earliest one is due (at most :data:`MAX_SLEEP` at a time, so a jump
of the wall clock is noticed), so an idle host with a thousand schedules wakes only when one of
them fires. Its clock (``now`` and ``sleep_until``) is a collaborator, so tests drive time.

**A fire** has a scheduled (nominal) time: a cron time in the schedule's time zone, or a
multiple of ``every`` seconds since the Unix epoch. ``jitter`` delays it by a fraction of
itself computed from the schedule's name and that time, so a restart computes the same delay.
A fire starts its run through :meth:`Engine.start` with the idempotency key
``schedule:<name>:<scheduled time, ISO 8601 UTC>``: a host that dies at the moment of firing
and fires again after its restart gets the run it had started back, never a second one.

**Overlap** (the schedule's previous run is still going): ``skip`` the fire, ``buffer_one``
(keep at most one fire, started when the running one ends), ``allow`` it, or
``cancel_previous`` (cancel the running ones and start). Run ends are heard through the
engine's listeners of every event.

**Catch-up.** A fire is *missed* when it fell due while no host ran it (before this scheduler
started), or more than :data:`LATE_SECONDS` ago (the host was stalled or suspended). Of the
missed fires within ``catchup_window`` seconds, ``none`` starts none, ``latest`` the latest
one (unless a fire is due on time anyway), ``all`` every one, the latest ``max_catchup`` at
most. Missed fires go through the overlap policy like any other.

Schedules are kept in the store (``RunStore.put_schedule``): their spec and their state (the
next fire, the pending and buffered fires, the runs going on, the last runs and what happened
to the fires that started none). Schedules declared in a workflow (``schedules:``) are named
``<workflow>/<name>`` and follow the workflow's current version (:meth:`sync_workflow`);
the others come from ``schedules/put``.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import time
from collections.abc import Mapping
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol
from zoneinfo import ZoneInfo

import anyio
import anyio.abc
from croniter import croniter
from pydantic import ValidationError

from plait.definition.models import OverlapPolicy, ScheduleDef
from plait.errors import DefinitionError, PlaitError, WorkflowNotFound
from plait.state.runs import TERMINAL, TERMINAL_EVENTS, Event, Run

if TYPE_CHECKING:
    from plait.engine.engine import Engine

__all__ = [
    "Cadence",
    "Clock",
    "ScheduleError",
    "ScheduleNotFound",
    "Schedules",
    "SystemClock",
    "fire_key",
    "iso_time",
]

log = logging.getLogger("plait.engine.schedules")

LATE_SECONDS = 60.0
"""A fire handled later than this after it fell due counts as missed (the host was stalled)."""
MAX_SLEEP = 60.0
"""The longest the scheduler sleeps at once, so that a jump of the wall clock is noticed."""
RUNS_KEPT = 20
"""Runs a schedule remembers (its last runs)."""
NOTES_KEPT = 20
"""Fires that started no run (skipped, buffered, missed, failed) a schedule remembers."""
SCAN_EXTRA = 64
"""Fires looked at beyond those a catch-up may start, when the host was down a long time."""
PENDING_KEPT = 1000
"""Fires scheduled but held back by their jitter that a schedule keeps at once."""
Origin = Literal["api", "workflow"]


class ScheduleError(PlaitError, ValueError):
    """A schedule request that cannot be done as asked; ``field`` names what is wrong.
    Nothing was changed."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class ScheduleNotFound(ScheduleError):
    """No schedule of that name."""

    def __init__(self, name: str, known: list[str]) -> None:
        hint = f"; schedules: {', '.join(known[:10])}" if known else "; there are no schedules"
        super().__init__("name", f"no schedule named {name!r}{hint}")


# -- time -------------------------------------------------------------------------------------


class Clock(Protocol):
    """The scheduler's time: epoch seconds, and a sleep until one of them."""

    def now(self) -> float:
        """The current time, in seconds since the Unix epoch."""
        ...

    async def sleep_until(self, when: float) -> None:
        """Return at ``when`` (or a little later); cancellable."""
        ...


class SystemClock:
    """The wall clock (``time.time``)."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, when: float) -> None:
        await anyio.sleep(max(0.0, when - time.time()))


def iso_time(t: float) -> str:
    """``t`` as ISO 8601 in UTC: whole seconds, or milliseconds when it has a fraction."""
    whole = abs(t - round(t)) < 5e-4
    stamp = datetime.fromtimestamp(round(t) if whole else t, UTC)
    return stamp.isoformat(timespec="seconds" if whole else "milliseconds").replace("+00:00", "Z")


def fire_key(name: str, scheduled: float) -> str:
    """The idempotency key of the run a schedule's fire starts."""
    return f"schedule:{name}:{iso_time(scheduled)}"


def _is_trigger(key: str) -> bool:
    return ":trigger:" in key


_FIXED_HOUR_ALIASES = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight"}
)


class Cadence:
    """When a schedule fires: its scheduled times and their jitter.

    Cron times are read in the schedule's time zone. On a day a time zone's clocks go
    forward, a time that does not exist fires at the first one that does (02:30 → 03:00); on a
    day they go back, a time that happens twice fires once, the first time, unless the
    expression's hour field is ``*`` (``0 * * * *`` fires every hour that passes).
    """

    def __init__(self, spec: ScheduleDef, name: str) -> None:
        self.every = spec.every
        self.cron = spec.cron
        self.zone = ZoneInfo(spec.timezone)
        self.jitter_max = spec.jitter
        self.name = name
        fields = (spec.cron or "").split()
        self._seconds = len(fields) == 6
        if len(fields) == 1:
            self._fixed_hour = fields[0].lower() in _FIXED_HOUR_ALIASES
        else:
            self._fixed_hour = bool(fields) and not fields[2 if self._seconds else 1].startswith(
                "*"
            )

    def _iter(self, t: float) -> croniter:
        assert self.cron is not None
        start = datetime.fromtimestamp(t, self.zone)
        return croniter(self.cron, start, second_at_beginning=self._seconds)

    def _repeat(self, t: float) -> bool:
        """Whether ``t`` is the second time its wall-clock time happens (clocks went back) and
        the expression names fixed hours."""
        if not self._fixed_hour:
            return False
        local = datetime.fromtimestamp(t, self.zone)
        return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()

    def after(self, t: float) -> float | None:
        """The first scheduled time strictly after ``t`` (``None``: never again)."""
        if self.every is not None:
            k = math.floor(t / self.every) + 1
            while k * self.every <= t:
                k += 1
            return k * self.every
        try:
            found = self._iter(t).get_next(float)
            while self._repeat(found):
                found = self._iter(found).get_next(float)
        except (ValueError, KeyError, OverflowError) as exc:  # croniter: no such date
            log.warning("schedule %s: no fire after %s: %s", self.name, iso_time(t), exc)
            return None
        return float(found)

    def at_or_before(self, t: float) -> float | None:
        """The last scheduled time at or before ``t`` (``None``: none)."""
        if self.every is not None:
            k = math.floor(t / self.every)
            while k * self.every > t:
                k -= 1
            return k * self.every if k >= 0 else None
        return self.before(math.floor(t) + 1)

    def before(self, t: float) -> float | None:
        """The last scheduled time strictly before ``t`` (``None``: none)."""
        if self.every is not None:
            k = math.ceil(t / self.every) - 1
            while k * self.every >= t:
                k -= 1
            return k * self.every if k >= 0 else None
        try:
            found = self._iter(t).get_prev(float)
            while self._repeat(found):
                found = self._iter(found).get_prev(float)
        except (ValueError, KeyError, OverflowError):
            return None
        return float(found) if found > 0 else None

    def jitter(self, scheduled: float) -> float:
        """The delay of the fire scheduled at ``scheduled``: the same on every host."""
        if not self.jitter_max:
            return 0.0
        digest = hashlib.sha256(f"{self.name}@{iso_time(scheduled)}".encode()).digest()
        return self.jitter_max * int.from_bytes(digest[:8], "big") / 2**64

    def due(self, scheduled: float) -> float:
        """When the fire scheduled at ``scheduled`` starts its run."""
        return scheduled + self.jitter(scheduled)


# -- one schedule -----------------------------------------------------------------------------


@dataclass(eq=False)
class _Schedule:
    name: str
    origin: Origin
    workflow: str
    version: int | None
    spec: ScheduleDef
    cadence: Cadence
    created_at: float
    next: float | None = None
    """The earliest scheduled time not looked at yet (those before it fired, or will not)."""
    pending: list[float] = field(default_factory=list)
    """Scheduled times looked at whose jitter holds them back (or whose start a crash cut)."""
    paused: bool = False
    running: list[str] = field(default_factory=list)
    """Runs it started that have not ended."""
    buffered: dict[str, Any] | None = None
    """``buffer_one``: the fire that starts when the running run ends (``{at, key}``)."""
    runs: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)
    fired: int = 0
    starting: dict[str, float | None] = field(default_factory=dict)
    """Starts under way: idempotency key → scheduled time (``None`` for a trigger)."""
    gen: int = 0
    """Bumped whenever its heap entry goes stale."""
    wake: float | None = None
    removed: bool = False

    @property
    def busy(self) -> bool:
        return bool(self.running or self.starting)

    def spec_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "workflow": self.workflow,
            "version": self.version,
            "definition": self.spec.model_dump(mode="json", exclude_defaults=True)
            | {"name": self.spec.name},
        }

    def state_dict(self) -> dict[str, Any]:
        starting = [t for t in self.starting.values() if t is not None]
        return {
            "next": self.next,
            "pending": sorted(set(self.pending) | set(starting)),
            "paused": self.paused,
            "running": list(self.running),
            "buffered": self.buffered,
            "runs": self.runs,
            "notes": self.notes,
            "fired": self.fired,
            "createdAt": self.created_at,
        }

    def note(self, scheduled: float, outcome: str, **extra: Any) -> None:
        self.notes.append({"scheduledAt": iso_time(scheduled), "outcome": outcome, **extra})
        del self.notes[:-NOTES_KEPT]


# -- the scheduler ----------------------------------------------------------------------------


class Schedules:
    """Every schedule of an engine, and the task that fires them.

    Enter it (``async with``) once the engine runs and its unfinished runs are recovered:
    entering reads the kept schedules, brings those declared by workflows in line with the
    catalog and starts the task; leaving stops it (runs it started go on).
    """

    def __init__(self, engine: Engine, clock: Clock | None = None) -> None:
        self.engine = engine
        self.clock: Clock = clock or SystemClock()
        self._schedules: dict[str, _Schedule] = {}
        self._heap: list[tuple[float, int, int, _Schedule]] = []
        self._seq = 0
        self._owner: dict[str, _Schedule] = {}
        """Run id → the schedule whose fire started it, while it runs."""
        self._tg: anyio.abc.TaskGroup | None = None
        self._sleep: anyio.CancelScope | None = None
        self._sleeping_until: float | None = None
        self._woken = False
        self.started_at = 0.0
        """When this scheduler started: fires due before it are missed ones."""
        self.wakeups = 0
        """How often the task woke up (a measure of its idle cost)."""

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Schedules:
        self.started_at = now = self.clock.now()
        for row in await self.engine.store.schedules():
            try:
                s = self._from_row(row, now)
            except (ValidationError, ValueError, KeyError, TypeError) as exc:
                log.error("schedule %s cannot be read back (%s); it is left as kept", row, exc)
                continue
            self._schedules[s.name] = s
        for name in sorted({*self.engine.catalog.names(), *self._declaring()}):
            self.sync_workflow(name)
        restart: list[_Schedule] = []
        for s in self._schedules.values():
            for run_id in list(s.running):
                run = self.engine.runs.get(run_id)
                if run is not None and not run.done:
                    self._owner[run_id] = s
                    continue
                s.running.remove(run_id)
                kept = await self.engine.store.run_row(run_id) if run is None else None
                self._set_status(
                    s, run_id, run.status if run is not None else (kept or {}).get("status")
                )
            if s.buffered is not None and not s.busy:
                restart.append(s)
            self._reschedule(s, now)
        self.engine.listeners.append(self._on_event)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._loop)
        for s in restart:
            self._start_buffered(s)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._on_event in self.engine.listeners:
            self.engine.listeners.remove(self._on_event)
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)

    def _declaring(self) -> set[str]:
        return {s.workflow for s in self._schedules.values() if s.origin == "workflow"}

    def _from_row(self, row: Mapping[str, Any], now: float) -> _Schedule:
        spec, state = row["spec"], row["state"]
        definition = ScheduleDef.model_validate(spec["definition"])
        s = _Schedule(
            name=row["name"],
            origin=spec["origin"],
            workflow=spec["workflow"],
            version=spec.get("version"),
            spec=definition,
            cadence=Cadence(definition, row["name"]),
            created_at=float(state.get("createdAt") or now),
            next=state.get("next"),
            pending=[float(t) for t in state.get("pending") or ()],
            paused=bool(state.get("paused")),
            running=list(state.get("running") or ()),
            buffered=state.get("buffered"),
            runs=list(state.get("runs") or ()),
            notes=list(state.get("notes") or ()),
            fired=int(state.get("fired") or 0),
        )
        if s.next is None:
            s.next = s.cadence.after(now)
        return s

    # -- the task ----------------------------------------------------------------------------

    async def _loop(self) -> None:
        heap = self._heap
        while True:
            now = self.clock.now()
            self.wakeups += 1
            self._woken = False
            while heap and heap[0][0] <= now:
                _, _, gen, s = heapq.heappop(heap)
                if gen == s.gen and not s.removed and not s.paused:
                    self._handle(s, now)
                    self._push(s)
            if len(heap) > 2 * len(self._schedules) + 64:  # stale entries pile up: drop them
                self._heap[:] = [e for e in heap if e[2] == e[3].gen and not e[3].removed]
                heapq.heapify(heap)
            until = min(heap[0][0], now + MAX_SLEEP) if heap else None
            with anyio.CancelScope() as scope:
                self._sleep, self._sleeping_until = scope, until
                if until is None:
                    await anyio.sleep_forever()
                else:
                    await self.clock.sleep_until(until)
            self._sleep = None

    def _wake(self) -> None:
        """Have the task look at the heap again (a schedule changed)."""
        self._woken = True
        if self._sleep is not None:
            self._sleep.cancel()

    def _push(self, s: _Schedule) -> None:
        if s.paused or s.removed or s.wake is None:
            return
        self._seq += 1
        heapq.heappush(self._heap, (s.wake, self._seq, s.gen, s))

    def _reschedule(self, s: _Schedule, now: float) -> None:
        """Put ``s`` in the heap anew (its timing, pause or pending fires changed)."""
        s.gen += 1
        times = [*s.pending, *([s.next] if s.next is not None else [])]
        s.wake = min((s.cadence.due(t) for t in times), default=None)
        self._push(s)

    def _handle(self, s: _Schedule, now: float) -> None:
        """Start (or skip, or buffer) the fires of ``s`` that are due at ``now``."""
        c, spec = s.cadence, s.spec
        missed_before = max(self.started_at, now - LATE_SECONDS)
        window_start = now - spec.catchup_window
        floor = s.next if s.next is not None else now
        lowest = missed_before if spec.catchup == "none" else window_start
        lo = max(floor, lowest - c.jitter_max)
        limit = (spec.max_catchup if spec.catchup == "all" else 1) + SCAN_EXTRA
        seen = set(s.pending)
        times = list(s.pending)
        t = c.at_or_before(now)
        scanned = 0
        while t is not None and t >= lo and scanned < limit:
            if t not in seen:
                times.append(t)
            scanned += 1
            t = c.before(t)
        earlier = t if t is not None and t >= floor else None  # not looked at: dropped
        pending, on_time, missed = [], [], []
        for t in sorted(times, reverse=True):
            due = c.due(t)
            if due > now:
                pending.append(t)
            elif due >= missed_before:
                on_time.append(t)
            elif due >= window_start:
                missed.append(t)
            elif earlier is None or t > earlier:
                earlier = t
        fire = list(on_time)
        if spec.catchup == "latest" and not on_time:
            fire = missed[:1]
        elif spec.catchup == "all":
            fire += missed[: spec.max_catchup]
        dropped = [t for t in missed if t not in fire]
        if dropped or earlier is not None:
            newest = max(dropped) if dropped else earlier
            assert newest is not None
            oldest = floor if earlier is not None else min(dropped)
            s.note(newest, "missed", since=iso_time(oldest), catchup=spec.catchup)
        s.pending = sorted(pending)[:PENDING_KEPT]
        s.next = c.after(now)
        times = [*s.pending, *([s.next] if s.next is not None else [])]
        s.wake = min((c.due(t) for t in times), default=None)
        for t in sorted(fire):
            self._fire(s, t, fire_key(s.name, t), spec.overlap)
        self._save(s)

    def _decide(
        self, s: _Schedule, scheduled: float, key: str, overlap: OverlapPolicy
    ) -> Literal["start", "skipped", "buffered"]:
        """Apply the overlap policy to a fire: ``start`` (then ``key`` is among the starts
        under way, and the caller starts the run), or why not."""
        if s.busy and overlap != "allow":
            if overlap == "skip":
                s.note(scheduled, "skipped", reason=self._busy_reason(s))
                return "skipped"
            if overlap == "buffer_one":
                if s.buffered is None:
                    s.buffered = {"at": scheduled, "key": key}
                    s.note(scheduled, "buffered", reason=self._busy_reason(s))
                    return "buffered"
                s.note(scheduled, "skipped", reason="a fire is buffered already")
                return "skipped"
            for run_id in list(s.running):  # cancel_previous
                self.engine.cancel_now(run_id)
        s.starting[key] = scheduled
        return "start"

    def _fire(self, s: _Schedule, scheduled: float, key: str, overlap: OverlapPolicy) -> None:
        """A fire: its run starts in the background, if the overlap policy says so."""
        if self._decide(s, scheduled, key, overlap) == "start" and self._tg is not None:
            self._tg.start_soon(self._start, s, scheduled, key)

    @staticmethod
    def _busy_reason(s: _Schedule) -> str:
        if s.running:
            return f"run {s.running[-1]} is still going"
        return "a run is being started"

    async def _start(
        self, s: _Schedule, scheduled: float, key: str, *, raising: bool = False
    ) -> Run | None:
        """Start the run of a fire (``s.starting`` holds ``key``); record what happened."""
        self._save(s)  # with the start under way: a crash before it is kept fires it again
        try:
            compiled = self.engine.catalog.get(s.workflow, s.version)
            run = await self.engine.start(compiled, s.spec.inputs, idempotency_key=key)
        except Exception as exc:  # noqa: BLE001 - a fire that fails never stops the others
            s.starting.pop(key, None)
            if isinstance(exc, PlaitError):
                log.warning(
                    "schedule %s: the fire of %s failed: %s", s.name, iso_time(scheduled), exc
                )
                s.note(scheduled, "failed", error=str(exc))
            else:
                log.exception("schedule %s: the fire of %s failed", s.name, iso_time(scheduled))
                s.note(scheduled, "failed", error=f"internal error: {type(exc).__name__}")
            self._save(s)
            if raising:
                raise
            return None
        s.starting.pop(key, None)
        if s.removed:
            return run
        if not run.done and run.id not in s.running:
            s.running.append(run.id)
            self._owner[run.id] = s
        if all(r.get("runId") != run.id for r in s.runs):
            s.fired += 1
            entry = {"scheduledAt": iso_time(scheduled), "runId": run.id, "status": run.status}
            s.runs.append(entry | ({"trigger": True} if _is_trigger(key) else {}))
            del s.runs[:-RUNS_KEPT]
        if run.done and s.buffered is not None and not s.busy:
            self._start_buffered(s)
        self._save(s)
        return run

    def _start_buffered(self, s: _Schedule) -> None:
        if s.buffered is None or s.paused or s.removed or s.busy:
            return
        buffered, s.buffered = s.buffered, None
        self._fire(s, float(buffered["at"]), str(buffered["key"]), "allow")
        self._save(s)

    def _on_event(self, event: Event) -> None:
        """Every told event of every run: a run a schedule started that ended."""
        s = self._owner.get(event.run_id)
        if s is None or event.type not in TERMINAL_EVENTS:
            return
        del self._owner[event.run_id]
        if event.run_id in s.running:
            s.running.remove(event.run_id)
        self._set_status(s, event.run_id, event.type[4:])
        if s.buffered is not None:
            self._start_buffered(s)
        self._save(s)

    @staticmethod
    def _set_status(s: _Schedule, run_id: str, status: str | None) -> None:
        for entry in reversed(s.runs):
            if entry.get("runId") == run_id:
                if status is not None:
                    entry["status"] = status
                return

    def _save(self, s: _Schedule) -> None:
        if not s.removed:
            self.engine.store.put_schedule(s.name, s.spec_dict(), s.state_dict())

    # -- changes -----------------------------------------------------------------------------

    def _get(self, name: str) -> _Schedule:
        s = self._schedules.get(name)
        if s is None:
            raise ScheduleNotFound(name, sorted(self._schedules))
        return s

    def _check(self, spec: ScheduleDef, workflow: str, version: int | None) -> None:
        """Refuse a schedule whose workflow, version or inputs do not fit."""
        engine = self.engine
        try:
            compiled = engine.catalog.get(workflow, version)
        except WorkflowNotFound as exc:
            where = "version" if version is not None and workflow in engine.catalog else "workflow"
            raise ScheduleError(where, str(exc)) from None
        except DefinitionError as exc:
            raise ScheduleError("workflow", f"{workflow!r} does not compile: {exc}") from None
        defaults = {
            k: deepcopy(p["default"])
            for k, p in (compiled.definition.inputs.get("properties") or {}).items()
            if isinstance(p, Mapping) and "default" in p
        }
        problems = compiled.check_inputs(defaults | dict(spec.inputs))
        if problems:
            raise ScheduleError(
                "inputs", f"do not match workflow {workflow!r}'s inputs: " + "; ".join(problems)
            )
        if Cadence(spec, spec.name).after(self.clock.now()) is None:
            raise ScheduleError("cron", f"{spec.cron!r} never fires again")

    def _install(
        self, name: str, origin: Origin, workflow: str, version: int | None, spec: ScheduleDef
    ) -> _Schedule:
        now = self.clock.now()
        s = self._schedules.get(name)
        cadence = Cadence(spec, name)
        if s is None:
            s = _Schedule(name, origin, workflow, version, spec, cadence, created_at=now)
            self._schedules[name] = s
            retime = True
        else:
            old = s.spec
            retime = (old.cron, old.every, old.timezone, old.jitter) != (
                spec.cron,
                spec.every,
                spec.timezone,
                spec.jitter,
            )
            s.origin, s.workflow, s.version, s.spec, s.cadence = (
                origin,
                workflow,
                version,
                spec,
                cadence,
            )
        if retime:
            s.next, s.pending = cadence.after(now), []
            self._reschedule(s, now)
            self._wake()
        self._save(s)
        return s

    def _remove(self, s: _Schedule) -> None:
        s.removed = True
        s.gen += 1
        self._schedules.pop(s.name, None)
        for run_id in s.running:
            self._owner.pop(run_id, None)
        self.engine.store.delete_schedule(s.name)

    async def _kept(self) -> None:
        await self.engine.committed()

    async def put(
        self, spec: ScheduleDef, *, workflow: str, version: int | None = None
    ) -> dict[str, Any]:
        """Create or replace a schedule (``schedules/put``); returns its view once kept.

        A replaced schedule keeps its state (pause, runs, history); when its timing changed,
        its next fire is computed anew from now.

        Raises:
            ScheduleError: the workflow, version or inputs do not fit, or the name is a
                workflow's own schedule; nothing changed.
        """
        self.engine.check_writable()
        existing = self._schedules.get(spec.name)
        if existing is not None and existing.origin == "workflow":
            raise ScheduleError(
                "name", f"schedule {spec.name!r} is declared by workflow {existing.workflow!r}"
            )
        self._check(spec, workflow, version)
        s = self._install(spec.name, "api", workflow, version, spec)
        await self._kept()
        return await self.view(s.name)

    async def delete(self, name: str) -> None:
        """Remove a schedule made through the API; runs it started go on."""
        self.engine.check_writable()
        s = self._get(name)
        if s.origin == "workflow":
            raise ScheduleError(
                "name",
                f"schedule {name!r} is declared by workflow {s.workflow!r}: remove it from the "
                "workflow's schedules (or pause it)",
            )
        self._remove(s)
        await self._kept()

    async def pause(self, name: str) -> dict[str, Any]:
        """Fire no more until resumed (fires meanwhile are not caught up); runs go on."""
        self.engine.check_writable()
        s = self._get(name)
        if not s.paused:
            s.paused = True
            s.gen += 1
            self._save(s)
        await self._kept()
        return await self.view(name)

    async def resume(self, name: str) -> dict[str, Any]:
        """Fire again from the next scheduled time after now."""
        self.engine.check_writable()
        s = self._get(name)
        if s.paused:
            now = self.clock.now()
            s.paused = False
            s.next, s.pending = s.cadence.after(now), []
            self._reschedule(s, now)
            self._wake()
            self._start_buffered(s)
            self._save(s)
        await self._kept()
        return await self.view(name)

    async def trigger(self, name: str, *, overlap: OverlapPolicy | None = None) -> dict[str, Any]:
        """Fire now, outside the schedule's times (also while it is paused), with its overlap
        policy (or ``overlap``); returns ``{scheduledAt, outcome, runId?}``."""
        self.engine.check_writable()
        s = self._get(name)
        now = round(self.clock.now(), 3)
        key = f"schedule:{name}:trigger:{iso_time(now)}"
        if key in s.starting:
            raise ScheduleError("name", f"schedule {name!r} was triggered at this very moment")
        outcome = self._decide(s, now, key, overlap or s.spec.overlap)
        if outcome != "start":
            self._save(s)
            await self._kept()
            return {"scheduledAt": iso_time(now), "outcome": outcome}
        s.starting[key] = None  # not a scheduled time: a crash does not fire it again
        try:
            run = await self._start(s, now, key, raising=True)
        except PlaitError as exc:
            raise ScheduleError("workflow", str(exc)) from None
        assert run is not None
        await self._kept()
        return {"scheduledAt": iso_time(now), "outcome": "started", "runId": run.id}

    def sync_workflow(self, workflow: str) -> None:
        """Bring the schedules ``workflow`` declares in line with its current version: call
        after registering, putting, rolling back or deleting it."""
        desired: dict[str, ScheduleDef] = {}
        catalog = self.engine.catalog
        if workflow in catalog:
            for item in catalog.entry(workflow).definition.get("schedules") or ():
                try:
                    spec = ScheduleDef.model_validate(item)
                except ValidationError as exc:  # checked when the workflow loaded
                    log.error("workflow %s: schedule %r is invalid: %s", workflow, item, exc)
                    continue
                desired[f"{workflow}/{spec.name}"] = spec
        for s in list(self._schedules.values()):
            if s.origin == "workflow" and s.workflow == workflow and s.name not in desired:
                self._remove(s)
        for name, spec in desired.items():
            found = self._schedules.get(name)
            if found is None or (found.spec, found.origin, found.workflow) != (
                spec,
                "workflow",
                workflow,
            ):
                self._install(name, "workflow", workflow, None, spec)

    # -- reading -----------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every schedule's name, sorted."""
        return sorted(self._schedules)

    def __len__(self) -> int:
        return len(self._schedules)

    def _summary(self, s: _Schedule) -> dict[str, Any]:
        spec = s.spec
        upcoming = self._upcoming(s, 1)
        return {
            "name": s.name,
            "workflow": s.workflow,
            "version": s.version,
            "origin": s.origin,
            **({"cron": spec.cron, "timezone": spec.timezone} if spec.cron else {}),
            **({"every": spec.every} if spec.every is not None else {}),
            "overlap": spec.overlap,
            "catchup": spec.catchup,
            "paused": s.paused,
            "nextAt": upcoming[0]["dueAt"] if upcoming else None,
            "running": list(s.running),
            "lastRun": dict(s.runs[-1]) if s.runs else None,
            "fired": s.fired,
        }

    def _upcoming(self, s: _Schedule, count: int) -> list[dict[str, Any]]:
        if s.paused or count <= 0:
            return []
        c = s.cadence
        times = sorted(s.pending)[:count]
        t = s.next
        while t is not None and len(times) < count:
            times.append(t)
            if len(times) < count:  # croniter is slow: no look past what is shown
                t = c.after(t)
        return [
            {"scheduledAt": iso_time(t), "dueAt": iso_time(c.due(t))}
            for t in sorted(times, key=c.due)[:count]
        ]

    def summaries(self) -> list[dict[str, Any]]:
        """Every schedule, summed up (``schedules/list``), by name."""
        return [self._summary(self._schedules[name]) for name in sorted(self._schedules)]

    async def view(self, name: str, *, upcoming: int = 5) -> dict[str, Any]:
        """One schedule in full (``schedules/get``): its spec, state, next fire times and last
        runs (newest first) with their statuses as they stand."""
        s = self._get(name)
        for entry in s.runs:
            if entry.get("status") not in TERMINAL:
                run = self.engine.runs.get(entry["runId"])
                if run is None:
                    row = await self.engine.store.run_row(entry["runId"])
                    if row is not None:
                        entry["status"] = row["status"]
                else:
                    entry["status"] = run.status
        return {
            **self._summary(s),
            "definition": s.spec.model_dump(mode="json"),
            "createdAt": iso_time(s.created_at),
            "next": self._upcoming(s, upcoming),
            "buffered": iso_time(float(s.buffered["at"])) if s.buffered else None,
            "lastRuns": [dict(r) for r in reversed(s.runs)],
            "notes": [dict(n) for n in reversed(s.notes)],
        }

    # -- for tests and benchmarks ------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Whether the task sleeps with nothing due before its wake-up and no start under
        way."""
        until = self._sleeping_until
        return (
            self._sleep is not None
            and not self._woken
            and (until is None or until > self.clock.now())
            and not any(s.starting for s in self._schedules.values())
        )

    async def settled(self) -> None:
        """Return once the task has handled every fire due by the clock's time and every
        start it made is kept (tests drive a clock, then wait here)."""
        while True:
            await anyio.wait_all_tasks_blocked()
            if self.idle:
                await self.engine.committed()
                if self.idle:
                    return
            await anyio.sleep(0.001)
