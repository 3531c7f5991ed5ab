"""Circuit breakers: calls to a tool, an agent or an MCP server that keeps failing fail at once.

A breaker is ``closed`` while its calls mostly succeed. It **opens** after ``failures``
failures in a row, or when at least ``min_calls`` calls ended in the last ``window`` seconds
and the share of them that failed reached ``failure_rate``. While open, a call is refused at
once with :class:`plait.CircuitOpen`, which says when the breaker lets a call through again
(``retry_at``, epoch seconds): a retry policy waits until then instead of spending its
attempts. ``reset_after`` seconds after it opened, the next call finds it **half-open**: up to
``half_open_calls`` probe calls go through at once (more are refused like an open breaker's,
told to come back ``reset_after`` seconds later); the first probe that succeeds closes it, the
first that fails opens it again for another ``reset_after``.

What counts as a failure (:func:`counts_as_failure`): an error of the service, that is a
retryable step error (``ToolFailed``, ``AgentFailed``...) or a plugin's own exception. An
error the caller caused (invalid arguments, and every error marked not retryable), another
breaker's refusal and a cancellation are neither failures nor successes: they change nothing.
Calls are judged in the state they were let through in: the outcome of a call that was let
through before the breaker last changed state is ignored (a late probe after the first one
closed it, a slow call that ends after the breaker opened).

The state machine is synchronous (no await between a check and its update), so concurrent
calls on one event loop need no lock; only telling a change may await. A change is logged on
the ``plait.breakers`` logger (opening at WARNING, the others at INFO) and handed to the
reporter of the call that made it, which records ``breaker.opened``, ``breaker.half_open`` or
``breaker.closed`` on that call's run. A breaker below the one that knows the run (an MCP
server's, under a tool call) finds the reporter through :func:`reporting`.

Names say what a breaker guards: ``tool:<tool>``, ``agent:<agent>``, ``mcp:<server>``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import anyio
from pydantic import ValidationError

from plait.config import BreakerSettings
from plait.errors import CircuitOpen, ConfigError, RunError
from plait.plugins.types import validation_problems

__all__ = [
    "Breakers",
    "Change",
    "CircuitBreaker",
    "Reporter",
    "State",
    "breaker_settings",
    "counts_as_failure",
    "reporting",
]

log = logging.getLogger("plait.breakers")

T = TypeVar("T")

State = Literal["closed", "open", "half_open"]
Reporter = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""Records an event (its type and data) on the run whose call changed a breaker's state."""

EVENTS: Mapping[State, str] = {
    "open": "breaker.opened",
    "half_open": "breaker.half_open",
    "closed": "breaker.closed",
}
"""The event recorded when a breaker enters each state."""

_reporter: ContextVar[Reporter | None] = ContextVar("plait_breaker_reporter", default=None)


@contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Within the block, a breaker that a call changes tells ``reporter``, unless its call
    gave a reporter of its own (``None``: nobody is told)."""
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)


def counts_as_failure(exc: BaseException) -> bool:
    """Whether a call that raised ``exc`` failed in its breaker's eyes: an error of the service,
    not of the caller (invalid arguments: not retryable), not another breaker's refusal and
    not a cancellation."""
    if isinstance(exc, CircuitOpen):
        return False
    if isinstance(exc, RunError):
        return exc.retryable
    return isinstance(exc, Exception)


def breaker_settings(value: Any, where: str) -> BreakerSettings | None:
    """The ``breaker`` entry of a free-form table (``where``: ``agents.reviewer``), validated.

    Raises:
        ConfigError: naming each wrong key (``agents.reviewer.breaker.failures: ...``).
    """
    if value is None:
        return None
    try:
        return BreakerSettings.model_validate(value)
    except ValidationError as exc:
        problems = validation_problems(exc, f"{where}.breaker")
        raise ConfigError("invalid config: " + "; ".join(problems)) from None


@dataclass(frozen=True, slots=True)
class Change:
    """A breaker entering a state."""

    breaker: str
    state: State
    failures: int
    """Failures in a row when it changed."""
    retry_at: float | None
    """While open: when it lets a call through again (epoch seconds)."""

    @property
    def event(self) -> str:
        """``breaker.opened``, ``breaker.half_open`` or ``breaker.closed``."""
        return EVENTS[self.state]

    def data(self) -> dict[str, Any]:
        """The event's data."""
        return {
            "breaker": self.breaker,
            "state": self.state,
            "failures": self.failures,
            "retry_at": self.retry_at,
        }


@dataclass(frozen=True, slots=True)
class _Ticket:
    """A call let through: the state's epoch it was let through in, and whether as a probe."""

    epoch: int
    probe: bool


class CircuitBreaker:
    """One breaker. ``clock`` measures its intervals (``time.monotonic``); ``wall`` tells the
    epoch time that ``retry_at`` is given in (``time.time``). Both are injectable for tests."""

    def __init__(
        self,
        name: str,
        settings: BreakerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        counts: Callable[[BaseException], bool] = counts_as_failure,
    ) -> None:
        self.name = name
        self.settings = settings
        self.state: State = "closed"
        self.failures = 0
        """Failures in a row (a success sets it back to 0)."""
        self.retry_at: float | None = None
        """While open: when it lets a call through again, in epoch seconds."""
        self.counts = counts
        self._clock = clock
        self._wall = wall
        self._until = 0.0
        """While open: the ``clock`` time it lets probes through from."""
        self._epoch = 0
        """Counts the changes of state; a call's outcome counts only in its own epoch."""
        self._probes = 0
        """Probe calls in flight while half-open."""
        self._window: deque[tuple[float, bool]] = deque()
        """``(clock time, failed)`` of the calls that ended within the window (rate rule)."""
        self._window_failures = 0

    def info(self) -> dict[str, Any]:
        """``{state, failures, retry_at}`` for ``host/info``."""
        return {"state": self.state, "failures": self.failures, "retry_at": self.retry_at}

    # -- the state machine (synchronous: no await between a check and its update) -----------

    def admit(self) -> tuple[_Ticket, Change | None]:
        """Let one call through, or raise :class:`CircuitOpen`; with the change it made (an
        open breaker whose time is up turns half-open)."""
        change = None
        if self.state == "open":
            if self._clock() < self._until:
                assert self.retry_at is not None
                raise CircuitOpen(self.name, self.retry_at, failures=self.failures)
            change = self._move("half_open")
        if self.state == "half_open":
            if self._probes >= self.settings.half_open_calls:
                retry_at = self._wall() + self.settings.reset_after
                raise CircuitOpen(self.name, retry_at, failures=self.failures)
            self._probes += 1
            return _Ticket(self._epoch, probe=True), change
        return _Ticket(self._epoch, probe=False), change

    def settle(self, ticket: _Ticket, failed: bool | None) -> Change | None:
        """Record how a call let through by :meth:`admit` ended (``None``: it neither failed
        nor succeeded); returns the change it made."""
        if ticket.epoch != self._epoch:
            return None  # let through before the last change: its outcome is old news
        if ticket.probe:
            self._probes -= 1
        if failed is None:
            return None
        if self.state == "half_open":
            if failed:
                self.failures += 1
                return self._open("its probe call failed")
            return self._move("closed")
        if not failed:
            self.failures = 0
        else:
            self.failures += 1
        why = self._tripped(failed)
        return self._open(why) if why is not None else None

    def _tripped(self, failed: bool) -> str | None:
        """Why the last outcome opens the breaker, if it does."""
        s = self.settings
        if s.failure_rate is not None:
            now = self._clock()
            self._window.append((now, failed))
            self._window_failures += failed
            horizon = now - s.window
            while self._window and self._window[0][0] <= horizon:
                self._window_failures -= self._window.popleft()[1]
        if not failed:
            return None
        if s.failures is not None and self.failures >= s.failures:
            return f"{self.failures} failures in a row"
        calls = len(self._window)
        if s.failure_rate is not None and calls >= s.min_calls:
            rate = self._window_failures / calls
            if rate >= s.failure_rate:
                return (
                    f"{self._window_failures} of the last {calls} calls failed in "
                    f"{s.window:g}s ({rate:.0%})"
                )
        return None

    def _open(self, why: str) -> Change:
        self._until = self._clock() + self.settings.reset_after
        self.retry_at = self._wall() + self.settings.reset_after
        change = self._move("open")
        when = datetime.fromtimestamp(self.retry_at, UTC).isoformat(timespec="milliseconds")
        log.warning(
            "circuit breaker %s opened (%s): calls fail at once until %s",
            self.name,
            why,
            when.replace("+00:00", "Z"),
        )
        return change

    def _move(self, state: State) -> Change:
        self.state = state
        self._epoch += 1
        self._probes = 0
        self._window.clear()
        self._window_failures = 0
        if state != "open":
            self.retry_at = None
        if state == "closed":
            self.failures = 0
        if state == "half_open":
            log.info("circuit breaker %s is half-open: probing with the next call(s)", self.name)
        elif state == "closed":
            log.info("circuit breaker %s closed: a probe call succeeded", self.name)
        return Change(self.name, state, self.failures, self.retry_at)

    # -- calls --------------------------------------------------------------------------------

    @asynccontextmanager
    async def guard(self, report: Reporter | None = None) -> AsyncIterator[None]:
        """Run the block as one call through the breaker: refused at once with
        :class:`CircuitOpen` while it is open, its outcome recorded after. A change is told
        to ``report``, else to the reporter :func:`reporting` set."""
        teller = report if report is not None else _reporter.get()
        ticket, change = self.admit()
        if change is not None:
            await _tell(change, teller)
        try:
            yield
        except BaseException as exc:
            change = self.settle(ticket, True if self.counts(exc) else None)
            if change is not None:
                await _tell(change, teller)
            raise
        change = self.settle(ticket, False)
        if change is not None:
            await _tell(change, teller)

    async def call(
        self, fn: Callable[..., Awaitable[T]], *args: Any, report: Reporter | None = None
    ) -> T:
        """``await fn(*args)`` through the breaker (see :meth:`guard`)."""
        async with self.guard(report):
            return await fn(*args)


async def _tell(change: Change, report: Reporter | None) -> None:
    """Hand a change to the call's reporter; telling never fails or cancels the call."""
    if report is None:
        return
    with anyio.CancelScope(shield=True):
        try:
            await report(change.event, change.data())
        except Exception:  # noqa: BLE001 - a run that cannot record it: the log has it
            log.exception("circuit breaker %s: could not record %s", change.breaker, change.event)


class Breakers:
    """The breakers of one engine part, by name (``tool:web.fetch``, ``mcp:time``...)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._items: dict[str, CircuitBreaker] = {}

    def add(self, name: str, settings: BreakerSettings | None) -> CircuitBreaker | None:
        """The breaker ``name`` with these settings (kept when it has them already, so its
        state survives); none, and any old one forgotten, for ``None`` or ``enabled = false``."""
        if settings is None or not settings.enabled:
            self._items.pop(name, None)
            return None
        found = self._items.get(name)
        if found is not None and found.settings == settings:
            return found
        breaker = self._items[name] = CircuitBreaker(
            name, settings, clock=self._clock, wall=self._wall
        )
        return breaker

    def get(self, name: str) -> CircuitBreaker | None:
        return self._items.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def info(self) -> dict[str, dict[str, Any]]:
        """``{name: {state, failures, retry_at}}``, by name."""
        return {name: self._items[name].info() for name in sorted(self._items)}
