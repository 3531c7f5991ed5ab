"""The debugger's part of a run: breakpoints, the steps a pause holds, and stepping.

A run has a :class:`RunDebug` only once something asks for it (a breakpoint on the run or its
workflow, a run started paused, a debug action): a run nobody debugs pays one ``is None`` test
per step. While a run has one, every step goes through the scheduler's task path (no inline
fast path), so that every step start passes :meth:`RunDebug.gate`, where a pause holds it,
and :meth:`RunDebug.stops_before` / ``stops_after`` / ``stops_on_failure``, where a breakpoint
turns into a pause.

Breakpoints are kept as run events (``debug.break`` / ``debug.clear``) or, for a workflow, in
the store, so they survive a restart like everything else about a run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from plait.errors import DebugError, TemplateError, TemplateSyntaxError
from plait.state.runs import without_indexes
from plait.templates.engine import Template, TemplateEngine

if TYPE_CHECKING:
    from plait.definition.compiler import CompiledStep
    from plait.definition.compiler import Scope as StepScope
    from plait.state.runs import Run


class Execution(Protocol):
    """What the debugger needs of a run's execution (``scheduler.RunExecution``)."""

    run: Run
    paused: bool
    held: dict[str, Held]
    permit: str | None

    def pause(self) -> None: ...

    def wake(self) -> None: ...


class Scope(Protocol):
    """What the debugger needs of one scope's execution (``scheduler.ScopeExecution``)."""

    prefix: str
    scope: StepScope
    context: dict[str, Any]
    views: dict[str, dict[str, Any]]

    def render(
        self,
        template: Template,
        step: CompiledStep,
        field: str,
        extra: Mapping[str, Any] | None = None,
    ) -> Any: ...

    def configure(self, step: CompiledStep) -> Any: ...


__all__ = [
    "Breakpoint",
    "Execution",
    "Held",
    "RunDebug",
    "Scope",
    "problems_of",
    "step_matches",
    "without_indexes",
]

Where = Literal["before", "after", "failure"]
WHERE: tuple[Where, ...] = ("before", "after", "failure")


def step_matches(spec: str, step_id: str, path: str) -> bool:
    """Whether a breakpoint's ``step`` names the step at ``path``: its id (anywhere), its
    whole path (``each[2].fetch``), or its path without indexes (``each.fetch``)."""
    if spec == step_id or spec == path:
        return True
    return "[" in path and without_indexes(path) == spec


@dataclass(frozen=True, eq=False)
class Breakpoint:
    """Where a run stops, and on what condition."""

    id: str
    at: Where
    step: str | None
    """A step id or path; ``None`` (only with ``failure``) for any step."""
    condition: str | None
    run_id: str | None = None
    workflow: str | None = None
    template: Template | None = field(default=None, repr=False)
    """The compiled condition."""

    @classmethod
    def make(
        cls,
        templates: TemplateEngine,
        *,
        at: str,
        step: str | None,
        condition: str | None,
        run_id: str | None = None,
        workflow: str | None = None,
        id: str | None = None,
    ) -> Breakpoint:
        """A checked breakpoint.

        Raises:
            DebugError: ``at`` is not one of before, after, failure; ``step`` is missing for
                before/after; the condition does not parse.
        """
        if at not in WHERE:
            raise DebugError(f"at must be one of before, after, failure; got {at!r}")
        if step is None and at != "failure":
            raise DebugError(f"a breakpoint {at} a step needs the step: give step")
        template = None
        if condition is not None:
            try:
                template = templates.compile_expression(condition, where="condition")
            except TemplateSyntaxError as exc:
                raise DebugError(
                    f"the breakpoint's condition does not parse: {problems_of(exc)}"
                ) from None
        return cls(id or uuid.uuid4().hex[:8], at, step, condition, run_id, workflow, template)

    def to_dict(self) -> dict[str, Any]:
        """The wire form (and what a ``debug.break`` event keeps)."""
        out: dict[str, Any] = {"id": self.id, "at": self.at, "step": self.step}
        if self.condition is not None:
            out["condition"] = self.condition
        if self.run_id is not None:
            out["runId"] = self.run_id
        if self.workflow is not None:
            out["workflow"] = self.workflow
        return out

    @classmethod
    def from_dict(cls, templates: TemplateEngine, data: Mapping[str, Any]) -> Breakpoint:
        """Back from :meth:`to_dict` (a kept event, a store row)."""
        return cls.make(
            templates,
            at=data["at"],
            step=data.get("step"),
            condition=data.get("condition"),
            run_id=data.get("runId"),
            workflow=data.get("workflow"),
            id=data.get("id"),
        )


@dataclass(eq=False)
class Held:
    """A step a pause holds: ready (``before``) or failed for good (``failure``)."""

    scope: Scope
    step: CompiledStep
    path: str
    at: Where
    error: dict[str, Any] | None = None
    """For a step held at its failure: the error it failed with."""


class RunDebug:
    """The debugger's state of one live run."""

    def __init__(
        self,
        rx: Execution,
        workflow_breakpoints: Callable[[], Iterable[Breakpoint]],
    ) -> None:
        self.rx = rx
        self.breakpoints: list[Breakpoint] = []
        """The run's own, in the order they were set."""
        self.workflow_breakpoints = workflow_breakpoints
        """Its workflow's, read live: one set while the run goes on applies to it."""
        self.outputs: dict[str, Any] = {}
        """Outputs set by ``debug/setOutput`` for steps held at their failure."""
        self.started: dict[str, CompiledStep] = {}
        """Steps that went past the gate (so read their inputs), by path."""
        self.settled: dict[str, tuple[Scope, CompiledStep]] = {}
        """Steps that ended while the run was debugged, by path, with their scope."""
        self.restored_vars: dict[str, Any] = {}
        """Variables ``debug/setVar`` set before a restart, laid over the computed ones."""
        self.fired: set[str] = set()
        """Steps whose ``before`` breakpoint stopped the run before a restart, and that had
        not started: going on after the restart, they do not stop there a second time."""

    def all_breakpoints(self) -> list[Breakpoint]:
        return [*self.breakpoints, *self.workflow_breakpoints()]

    # -- where a run stops -----------------------------------------------------------------

    def stop_at(self, at: Where, scope: Scope, step: CompiledStep, path: str) -> Breakpoint | None:
        """The first breakpoint ``at`` this step whose condition holds, if any.

        A condition that fails to evaluate stops the run too: the user asked to look at this
        step when something is so, and cannot be told whether it is.
        """
        if at == "before" and path in self.fired:
            self.fired.discard(path)
            return None
        for bp in self.all_breakpoints():
            if bp.at != at or (bp.step is not None and not step_matches(bp.step, step.id, path)):
                continue
            if bp.template is None:
                return bp
            try:
                if scope.render(bp.template, step, "condition"):
                    return bp
            except TemplateError:
                return bp
        return None

    def pause_at(self, bp: Breakpoint | None, path: str, at: str, reason: str) -> None:
        """Pause the run where a breakpoint (or a step through) stopped it."""
        rx = self.rx
        run = rx.run
        rx.pause()
        data: dict[str, Any] = {"step": path, "at": at}
        if bp is not None:
            data["breakpoint"] = bp.to_dict()
            run.record("run.breakpoint", path, data)
        if run.status in ("running", "waiting"):
            run.set_status("paused", reason=reason, step=path)

    # -- held steps ------------------------------------------------------------------------

    def let_one_through(self, path: str | None) -> str:
        """Let exactly one held step go on (the named one, or the first held).

        Raises:
            DebugError: the run is not paused, nothing is held, or not that step.
        """
        if not self.rx.paused:
            raise DebugError("the run is not paused: there is nothing to step through")
        if not self.rx.held:
            raise DebugError(
                "no step is held: the paused run has no step ready to run (steps already "
                "running finish on their own; continue to let the run go on)"
            )
        if path is None:
            path = next(iter(self.rx.held))
        elif path not in self.rx.held:
            raise DebugError(
                f"step {path!r} is not held; held: {', '.join(self.rx.held)}"
                if self.rx.held
                else f"step {path!r} is not held"
            )
        self.rx.permit = path
        self.rx.wake()
        return path


def problems_of(exc: TemplateSyntaxError) -> str:
    """A template's syntax problems, without the field path that means nothing here."""
    return "; ".join(issue.message for issue in exc.issues) or str(exc)
