"""The event-loop watchdog: a stall is found and blamed, not suffered.

Plugin code that blocks the event loop (a synchronous tool registered ``blocking=False``, a
CPU-bound step type) stalls every run and every connection. A task on the loop beats every
:data:`BEAT` seconds; a thread of its own watches the beat, and when it is late by more than the
threshold it reads the loop thread's stack to name what holds the loop: the tool call and the
step (with their plugins) and the innermost frame of code. When the loop comes back, the stall
is logged with how long it lasted, and ``host/info`` keeps the worst one of the last
:data:`WINDOW` seconds.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import anyio

from plait.engine.engine import Engine
from plait.engine.scheduler import ScopeExecution
from plait.services.tools import ToolRunner

__all__ = ["LoopWatchdog", "Stall"]

log = logging.getLogger("plait.watchdog")

BEAT = 0.05
"""Seconds between two beats of the loop task."""
WINDOW = 600.0
"""How far back ``host/info``'s worst stall looks, in seconds."""

_STEP_CODES = (ScopeExecution.attempts.__code__, ScopeExecution.attempt_inline.__code__)
_TOOL_CODE = ToolRunner._invoke.__code__


@dataclass
class Stall:
    """The event loop held by something for ``seconds``."""

    seconds: float
    at: float
    """When it began (seconds since the epoch)."""
    culprit: dict[str, Any] = field(default_factory=dict)
    """What held the loop, as far as its stack tells: ``tool``, ``step``, ``stepType``,
    ``run``, ``plugin``, ``code``."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form for ``host/info``."""
        return {"seconds": round(self.seconds, 3), "at": self.at, **self.culprit}

    def describe(self) -> str:
        """One line for the log."""
        c = self.culprit
        parts = []
        if "tool" in c:
            parts.append(f"tool {c['tool']!r}")
        if "step" in c:
            parts.append(f"step {c['step']!r} ({c.get('stepType')}) of run {c.get('run')}")
        if "plugin" in c:
            parts.append(f"plugin {c['plugin']!r}")
        where = ", ".join(parts) or "code outside any step"
        code = f"; at {c['code']}" if "code" in c else ""
        return f"the event loop was blocked for {self.seconds:.2f} s by {where}{code}"


class LoopWatchdog:
    """Measures the loop's lag and names what caused a stall."""

    def __init__(self, engine: Engine, threshold: float) -> None:
        self.engine = engine
        self.threshold = threshold
        """A beat later than this many seconds is a stall."""
        self.stalls = 0
        """Stalls seen since the host started."""
        self._recent: deque[Stall] = deque()
        self._beat = time.monotonic()
        self._culprit: dict[str, Any] | None = None
        self._loop_thread = 0
        self._stop = threading.Event()

    def worst_recent(self) -> Stall | None:
        """The longest stall of the last :data:`WINDOW` seconds."""
        horizon = time.time() - WINDOW
        while self._recent and self._recent[0].at < horizon:
            self._recent.popleft()
        return max(self._recent, key=lambda s: s.seconds, default=None)

    def info(self) -> dict[str, Any]:
        """``host/info``'s ``loop``: the threshold, stalls so far, the worst recent one."""
        worst = self.worst_recent()
        return {
            "stallThreshold": self.threshold,
            "stalls": self.stalls,
            "worstRecentStall": worst.to_dict() if worst is not None else None,
        }

    async def run(self) -> None:
        """Beat until cancelled, with the watching thread alongside."""
        self._loop_thread = threading.get_ident()
        self._stop.clear()
        watcher = threading.Thread(target=self._watch, name="plait loop watchdog", daemon=True)
        watcher.start()
        try:
            while True:
                self._beat = before = time.monotonic()
                await anyio.sleep(BEAT)
                late = time.monotonic() - before - BEAT
                if late > self.threshold:
                    self._report(late, time.time() - late - BEAT)
                self._culprit = None
        finally:
            self._stop.set()

    def _report(self, seconds: float, began: float) -> None:
        stall = Stall(seconds, began, dict(self._culprit or {}))
        self.stalls += 1
        self._recent.append(stall)
        log.warning("%s", stall.describe())

    def _watch(self) -> None:
        """In a thread: when the beat is late, read the loop thread's stack once."""
        while not self._stop.wait(BEAT):
            late = time.monotonic() - self._beat - BEAT
            if late > self.threshold and self._culprit is None:
                frame = sys._current_frames().get(self._loop_thread)
                self._culprit = self._blame(frame) if frame is not None else {}

    def _blame(self, frame: FrameType) -> dict[str, Any]:
        """What the stack shows: the innermost code, the tool call and the step it is in."""
        code = frame.f_code
        found: dict[str, Any] = {"code": f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"}
        current: FrameType | None = frame
        while current is not None:
            try:
                self._note(current, found)
            except Exception:  # noqa: BLE001 - a frame changing under us tells nothing
                pass
            current = current.f_back
        return found

    def _note(self, frame: FrameType, found: dict[str, Any]) -> None:
        code = frame.f_code
        if code is _TOOL_CODE and "tool" not in found:
            tool = frame.f_locals.get("tool")
            if tool is not None:
                found["tool"] = tool.name
                owner = self.engine.registries.tools.owner(tool.name)
                if owner:
                    found["plugin"] = owner
        elif code in _STEP_CODES and "step" not in found:
            step = frame.f_locals.get("step")
            scope = frame.f_locals.get("self")
            ctx = frame.f_locals.get("ctx")
            path = frame.f_locals.get("path") or getattr(ctx, "step_id", None)
            if step is not None:
                found["step"] = path or step.id
                found["stepType"] = step.key
                found.setdefault("plugin", self.engine.step_type_owner(step.key))
            if scope is not None:
                found["run"] = scope.rx.run.id
