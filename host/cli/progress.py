"""The live display of ``plait run``: one line per step, overall progress; plain when piped."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from plait.definition.compiler import CompiledWorkflow
from plait.state.runs import Event, Run

__all__ = ["ProgressView"]

_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "running": "yellow",
    "skipped": "dim",
    "cancelled": "magenta",
    "waiting": "cyan",
    "pending": "dim",
}
_SHOWN = (
    "step.started",
    "step.succeeded",
    "step.failed",
    "step.skipped",
    "step.cancelled",
    "step.retrying",
    "step.cached",
    "step.waiting",
)


class ProgressView:
    """Shows a run as it goes: a rich live table on a terminal, plain lines otherwise."""

    def __init__(
        self, compiled: CompiledWorkflow, *, json_mode: bool = False, console: Console | None = None
    ) -> None:
        self.compiled = compiled
        self.json_mode = json_mode
        self.console = console or Console(stderr=json_mode)
        self.live: Live | None = None
        self._first_ts: float | None = None
        self._drawn = 0.0

    @property
    def interactive(self) -> bool:
        """Whether to draw the live table (a terminal, and not --json)."""
        return self.console.is_terminal and not self.json_mode

    def __enter__(self) -> ProgressView:
        if self.interactive:
            self.live = Live(console=self.console, refresh_per_second=8, transient=False)
            self.live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.live is not None:
            self.live.__exit__(exc_type, exc, tb)

    def update(self, run: Run, event: Event) -> None:
        """Reflect one event (the live table is rebuilt at most ten times a second)."""
        if self.live is not None:
            now = time.monotonic()
            if now - self._drawn >= 0.1 or event.type.startswith("run."):
                self._drawn = now
                self.live.update(self.render(run))
        elif not self.json_mode and event.type in _SHOWN:
            print(self.plain_line(event), flush=True)

    def plain_line(self, event: Event) -> str:
        """One line per step event, for logs and pipes."""
        kind = event.type.split(".", 1)[1]
        extra = ""
        if kind == "started":
            extra = f" (attempt {event.data.get('attempt', 1)})"
        elif kind == "failed":
            extra = f": {(event.data.get('error') or {}).get('message', '')}"
        elif kind == "retrying":
            extra = (
                f" after attempt {event.data.get('attempt')} in {event.data.get('delay', 0):.2f}s"
            )
        elif kind == "skipped":
            extra = f" ({event.data.get('reason', '')})"
        if self._first_ts is None:
            self._first_ts = event.ts
        return f"[{event.ts - self._first_ts:7.3f}s] {event.step}: {kind}{extra}"

    def render(self, run: Run) -> Group:
        """The live table."""
        table = Table(show_header=True, header_style="bold", expand=False)
        for col in ("step", "status", "attempts", "duration", "inner steps"):
            table.add_column(col)
        now = time.time()
        inner: dict[str, list[int]] = {}  # top-level step -> [settled, seen] nested steps
        for path, state in run.steps.items():
            top = _top(path)
            if top != path:
                counts = inner.setdefault(top, [0, 0])
                counts[1] += 1
                counts[0] += state.status in ("succeeded", "failed", "skipped", "cancelled")
        for path, state in run.steps.items():
            if _top(path) != path:
                continue  # nested steps are summed up on their container's line
            duration = ""
            if state.started_at:
                end = state.finished_at or now
                duration = f"{end - state.started_at:.2f}s"
            settled, seen = inner.get(path, (0, 0))
            table.add_row(
                path,
                Text(state.status, style=_STYLE.get(state.status, "")),
                str(state.attempts or ""),
                duration,
                f"{settled}/{seen}" if seen else "",
            )
        p = run.progress()
        bar = ProgressBar(total=max(p["total"], 1), completed=p["done"], width=40)
        head = Text(
            f"{run.workflow} v{run.version}  {run.status}  "
            f"{p['done']}/{p['total']} steps  {p['percent']}%"
        )
        return Group(head, bar, table)

    def summary(self, run: Run) -> None:
        """Print the outcome and outputs after the run."""
        out = Console(file=sys.stdout)
        style = _STYLE.get(run.status, "")
        out.print(Text(f"run {run.id} {run.status}", style=style))
        if run.error:
            out.print(Text(f"error: {run.error.get('message')}", style="red"))
        if run.outputs:
            out.print_json(data=run.outputs, default=str)


def _top(path: str) -> str:
    """The top-level step of a step path (``each[2].fetch`` → ``each``)."""
    cut = min((i for i in (path.find("."), path.find("[")) if i >= 0), default=-1)
    return path if cut < 0 else path[:cut]
