"""The debugger's operations on an engine's runs: breakpoints, inspecting, editing, stepping.

Each operation checks everything before it changes anything, so a refused request leaves the
run as it was, and each change is an event of the run (``debug.break``, ``debug.clear``,
``debug.output``, ``debug.var``, ``debug.step``) naming who asked (``by``): the history says
who changed what, and a restart replays it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from plait.engine.debugger import (
    Breakpoint,
    Execution,
    Held,
    RunDebug,
    Scope,
    problems_of,
    without_indexes,
)
from plait.errors import (
    DebugError,
    InvalidRunState,
    TemplateError,
    TemplateSyntaxError,
    did_you_mean,
)
from plait.values import bounded, json_problem

if TYPE_CHECKING:
    from plait.definition.compiler import CompiledStep, CompiledWorkflow
    from plait.definition.compiler import Scope as StepScope
    from plait.state.run_store import RunStore
    from plait.state.runs import Event, Run
    from plait.templates.engine import TemplateEngine

__all__ = ["DebugServices", "Debugger"]


class DebugExecution(Execution, Protocol):
    """A live run as the debugger drives it (``scheduler.RunExecution``)."""

    debug: RunDebug | None
    vars: dict[str, Any]

    @property
    def top(self) -> Scope | None: ...


class DebugServices(Protocol):
    """What the debugger needs of its engine (the engine is one)."""

    templates: TemplateEngine
    store: RunStore

    @property
    def executions(self) -> Mapping[str, Any]: ...

    async def load_run(self, run_id: str) -> Run: ...

    async def events(
        self, run_id: str, since: int = 0, limit: int | None = None
    ) -> list[Event]: ...

    async def snapshot(self, digest: str | None, name: str, version: int) -> CompiledWorkflow: ...

    def current_workflow(self, name: str) -> CompiledWorkflow: ...

    async def until_kept(self, wait: Callable[[], Awaitable[Any]]) -> Any: ...

    async def resume(self, run_id: str) -> Run: ...


class Debugger:
    """Breakpoints of runs and workflows, and what can be done at a pause."""

    def __init__(self, engine: DebugServices) -> None:
        self.engine = engine
        self.workflow_breakpoints: dict[str, list[Breakpoint]] = {}
        """Every workflow's breakpoints, as the store keeps them (loaded at start)."""

    async def load(self) -> None:
        """Read the workflows' breakpoints from the store (at engine start)."""
        templates = self.engine.templates
        for name, items in (await self.engine.store.breakpoints()).items():
            self.workflow_breakpoints[name] = [Breakpoint.from_dict(templates, b) for b in items]

    def attach(self, rx: DebugExecution, workflow: str) -> RunDebug:
        """The run's debugger state, made on first use."""
        if rx.debug is None:
            rx.debug = RunDebug(rx, lambda: self.workflow_breakpoints.get(workflow, ()))
        return rx.debug

    def attach_if_watched(self, rx: DebugExecution, workflow: str) -> None:
        """At a run's start or restore: debug it if its workflow has breakpoints."""
        if self.workflow_breakpoints.get(workflow):
            self.attach(rx, workflow)

    def restore(self, rx: DebugExecution, events: Iterable[Event]) -> None:
        """Put back what debugging did to a run before a restart: its breakpoints, the
        outputs and variables set (outputs come back through the step records)."""
        templates = self.engine.templates
        kept: dict[str, Breakpoint] = {}
        variables: dict[str, Any] = {}
        fired: set[str] = set()
        for event in events:
            if event.type == "run.breakpoint" and event.data.get("at") == "before":
                fired.add(event.data["step"])
            elif event.type == "step.started" and event.step in fired:
                fired.discard(event.step)
            elif event.type == "debug.break":
                bp = Breakpoint.from_dict(templates, event.data["breakpoint"])
                kept[bp.id] = bp
            elif event.type == "debug.clear":
                for bp_id in event.data.get("ids", ()):
                    kept.pop(bp_id, None)
            elif event.type == "debug.var":
                variables[event.data["name"]] = event.data["value"]
        if kept or variables or fired:
            debug = self.attach(rx, rx.run.workflow)
            debug.breakpoints = list(kept.values())
            debug.restored_vars = variables
            debug.fired = fired

    # -- breakpoints -------------------------------------------------------------------------

    async def set_breakpoint(
        self,
        *,
        run_id: str | None,
        workflow: str | None,
        at: str,
        step: str | None,
        condition: str | None,
        by: str | None = None,
    ) -> Breakpoint:
        """Set a breakpoint on a live run, or on a workflow (its later and unfinished runs).

        Raises:
            DebugError: the step does not exist, the condition does not parse, ``at`` is not
                known, or neither (or both) of run and workflow is given.
            InvalidRunState: the run is finished.
        """
        if (run_id is None) == (workflow is None):
            raise DebugError("give exactly one of runId or workflow")
        if run_id is not None:
            rx, run = await self._live(run_id, "set a breakpoint on")
            compiled = await self.engine.snapshot(run.digest, run.workflow, run.version)
            _check_step(compiled, step)
            bp = Breakpoint.make(
                self.engine.templates, at=at, step=step, condition=condition, run_id=run.id
            )
            debug = self.attach(rx, run.workflow)
            debug.breakpoints.append(bp)
            run.record("debug.break", None, _by({"breakpoint": bp.to_dict()}, by))
            await self.engine.until_kept(run.committed)
            return bp
        assert workflow is not None
        compiled = self.engine.current_workflow(workflow)
        _check_step(compiled, step)
        bp = Breakpoint.make(
            self.engine.templates, at=at, step=step, condition=condition, workflow=workflow
        )
        kept = self.workflow_breakpoints.setdefault(workflow, [])
        kept.append(bp)
        self.engine.store.put_breakpoints(workflow, [b.to_dict() for b in kept])
        for rx in self._live_runs_of(workflow):
            self.attach(rx, workflow)
        await self.engine.until_kept(self.engine.store.sync)
        return bp

    async def clear_breakpoints(
        self,
        *,
        run_id: str | None,
        workflow: str | None,
        bp_id: str | None,
        by: str | None = None,
    ) -> int:
        """Remove one breakpoint (or all) of a run or a workflow; the number removed.

        Raises:
            DebugError: no breakpoint has that id.
        """
        if (run_id is None) == (workflow is None):
            raise DebugError("give exactly one of runId or workflow")
        if run_id is not None:
            rx, run = await self._live(run_id, "clear a breakpoint of")
            own = rx.debug.breakpoints if rx.debug is not None else []
            gone = [b for b in own if bp_id is None or b.id == bp_id]
            if bp_id is not None and not gone:
                raise DebugError(_no_such(bp_id, own))
            if gone:
                assert rx.debug is not None
                rx.debug.breakpoints = [b for b in own if b not in gone]
                run.record("debug.clear", None, _by({"ids": [b.id for b in gone]}, by))
                await self.engine.until_kept(run.committed)
            return len(gone)
        assert workflow is not None
        kept = self.workflow_breakpoints.get(workflow, [])
        gone = [b for b in kept if bp_id is None or b.id == bp_id]
        if bp_id is not None and not gone:
            raise DebugError(_no_such(bp_id, kept))
        if gone:
            self.workflow_breakpoints[workflow] = [b for b in kept if b not in gone]
            self.engine.store.put_breakpoints(
                workflow, [b.to_dict() for b in self.workflow_breakpoints[workflow]]
            )
            await self.engine.until_kept(self.engine.store.sync)
        return len(gone)

    async def breakpoints(self, *, run_id: str | None, workflow: str | None) -> list[Breakpoint]:
        """A run's breakpoints and its workflow's, or a workflow's."""
        if (run_id is None) == (workflow is None):
            raise DebugError("give exactly one of runId or workflow")
        if workflow is not None:
            return list(self.workflow_breakpoints.get(workflow, ()))
        assert run_id is not None
        run = await self.engine.load_run(run_id)
        rx = self.engine.executions.get(run.id)
        own = list(rx.debug.breakpoints) if rx is not None and rx.debug is not None else []
        return own + list(self.workflow_breakpoints.get(run.workflow, ()))

    # -- at a pause --------------------------------------------------------------------------

    async def inspect(self, run_id: str, step: str | None = None) -> dict[str, Any]:
        """The run's pause: why, which steps it holds, and for one of them what it would
        receive (configuration and template context)."""
        rx, run = await self._live(run_id, "inspect")
        held = dict(rx.held)
        out: dict[str, Any] = {
            "status": run.status,
            "reason": run.reason,
            "held": [{"step": h.path, "at": h.at, "error": h.error} for h in held.values()],
        }
        if step is not None:
            found = held.get(step)
            if found is None:
                raise DebugError(_not_held(step, held))
            out["step"] = {
                "path": found.path,
                "at": found.at,
                "config": bounded(_shown_config(found)),
                "context": _shown_context(found.scope.context),
            }
        return out

    async def evaluate(self, run_id: str, expression: str, step: str | None = None) -> Any:
        """An expression's value in a held step's template context (or the run's top-level
        one), in the sandbox and under the limits of templates.

        Raises:
            DebugError: the expression does not parse or fails; the step is not held.
        """
        rx, _ = await self._live(run_id, "evaluate in")
        try:
            template = self.engine.templates.compile_expression(expression, where="expression")
        except TemplateSyntaxError as exc:
            raise DebugError(f"the expression does not parse: {problems_of(exc)}") from None
        if step is not None:
            held = rx.held
            found = held.get(step)
            if found is None:
                raise DebugError(_not_held(step, held))
            context = found.scope.context
        elif rx.top is not None:
            context = rx.top.context
        else:
            raise DebugError("the run has not started its steps yet: nothing to evaluate in")
        try:
            value = template.render(context)
        except TemplateError as exc:
            raise DebugError(f"the expression failed: {exc}") from None
        return bounded(value)

    async def set_output(self, run_id: str, path: str, output: Any, by: str | None = None) -> Run:
        """Replace the output of a step that ended (or is held at its failure) before any of
        its dependents read it.

        Raises:
            DebugError: the run is not paused; the step is running, was skipped or is
                unknown; a dependent already started; the output is not JSON.
        """
        rx, run = await self._live(run_id, "set an output of")
        if not rx.paused:
            raise DebugError("pause the run first: an output is replaced at a pause")
        if (problem := json_problem(output)) is not None:
            raise DebugError(f"the output is not JSON: {problem}")
        debug = self.attach(rx, run.workflow)
        held = rx.held.get(path)
        state = run.steps.get(path)
        if held is not None and held.at == "failure":
            debug.outputs[path] = output
            run.record("debug.output", path, _by({"output": output, "error": held.error}, by))
            await self.engine.until_kept(run.committed)
            return run
        if state is None or state.status in ("pending", "running", "waiting"):
            what = "has not run yet" if state is None or state.status == "pending" else "is running"
            raise DebugError(f"step {path!r} {what}: only a step that ended has an output to set")
        if state.status != "succeeded":
            raise DebugError(
                f"step {path!r} {state.status}: only a succeeded step's output can be replaced "
                "(set a failure breakpoint to fix a failing step's output)"
            )
        scope, step = self._settled(rx, path)
        readers = [
            d
            for d in _dependent_paths(scope, step)
            if d in debug.started or (run.steps.get(d) is not None)
        ]
        if readers:
            raise DebugError(
                f"step {path!r}'s output was already read by {', '.join(readers)}: "
                "it can only be replaced before its dependents start"
            )
        previous = state.output
        scope.views[step.id]["output"] = output
        state.output = output
        run.record("debug.output", path, _by({"output": output, "previous": previous}, by))
        await self.engine.until_kept(run.committed)
        return run

    async def set_var(self, run_id: str, name: str, value: Any, by: str | None = None) -> Run:
        """Replace a run variable while no step that reads ``vars`` has started.

        Raises:
            DebugError: the run is not paused, a step reading vars already started, or the
                value is not JSON.
        """
        rx, run = await self._live(run_id, "set a variable of")
        if not rx.paused:
            raise DebugError("pause the run first: a variable is replaced at a pause")
        if (problem := json_problem(value)) is not None:
            raise DebugError(f"the value is not JSON: {problem}")
        debug = self.attach(rx, run.workflow)
        compiled = await self.engine.snapshot(run.digest, run.workflow, run.version)
        top = {s.id: s for s in compiled.scope.steps}
        started = dict(debug.started)
        for path in run.steps:
            if path in top:
                started.setdefault(path, top[path])
        readers = sorted(p for p, s in started.items() if _reads_vars(s))
        if readers:
            raise DebugError(
                f"vars were already read by {', '.join(readers)}: a variable can only be "
                "replaced before any step that reads vars starts"
            )
        previous = rx.vars.get(name)
        rx.vars[name] = value
        run.record("debug.var", None, _by({"name": name, "value": value, "previous": previous}, by))
        await self.engine.until_kept(run.committed)
        return run

    async def step(self, run_id: str, path: str | None = None, by: str | None = None) -> str:
        """Let exactly one held step run; the run stays paused.

        Raises:
            DebugError: the run is not paused, nothing is held, or not that step.
        """
        rx, run = await self._live(run_id, "step through")
        debug = self.attach(rx, run.workflow)
        chosen = debug.let_one_through(path)
        run.record("debug.step", chosen, _by({}, by))
        await self.engine.until_kept(run.committed)
        return chosen

    # -- what a step received ----------------------------------------------------------------

    async def step_config(self, run_id: str, path: str, attempt: int | None = None) -> Any:
        """The whole configuration an attempt of a step ran with (default: its last one):
        its ``step.started`` event's, with what the event had to cut put back.

        Raises:
            DebugError: the step never started (or not that attempt).
        """
        run = await self.engine.load_run(run_id)
        started = [
            e
            for e in await self.engine.events(run.id)
            if e.type == "step.started" and e.step == path
        ]
        if attempt is not None:
            started = [e for e in started if e.data.get("attempt") == attempt]
        if not started:
            what = f"attempt {attempt} of step" if attempt is not None else "step"
            raise DebugError(f"run {run.id} has no {what} {path!r} that started")
        event = started[-1]
        config = dict(event.data.get("config") or {})
        if any(_cut(v) for v in config.values()):
            whole = await self.engine.store.step_config(run.id, path, event.data["attempt"])
            for key, value in (whole or {}).items():
                if _cut(config.get(key)):
                    config[key] = value
        return config

    # -- helpers -----------------------------------------------------------------------------

    async def _live(self, run_id: str, action: str) -> tuple[DebugExecution, Run]:
        run = await self.engine.load_run(run_id)
        rx = self.engine.executions.get(run.id)
        if rx is None or run.done:
            raise InvalidRunState(run.id, run.status, action)
        return rx, run

    def _live_runs_of(self, workflow: str) -> Iterator[DebugExecution]:
        for rx in self.engine.executions.values():
            if rx.run.workflow == workflow:
                yield rx

    def _settled(self, rx: DebugExecution, path: str) -> tuple[Scope, CompiledStep]:
        debug = rx.debug
        if debug is not None and path in debug.settled:
            return debug.settled[path]
        top = rx.top
        if top is not None and path in top.views:
            return top, top.scope.steps[top.scope.by_id[path]]
        raise DebugError(
            f"step {path!r} ended before the run was debugged, inside a body: its output "
            "cannot be replaced now (set a breakpoint after it on the next run)"
        )


def _cut(value: Any) -> bool:
    return isinstance(value, dict) and value.get("$truncated") is True


def _by(data: dict[str, Any], by: str | None) -> dict[str, Any]:
    if by is not None:
        data["by"] = by
    return data


def _no_such(bp_id: str, kept: list[Breakpoint]) -> str:
    ids = ", ".join(b.id for b in kept) or "none"
    return f"no breakpoint {bp_id!r} (breakpoints: {ids})"


def _not_held(step: str, held: Mapping[str, Held]) -> str:
    names = ", ".join(held) or "none"
    return f"step {step!r} is not held by the pause (held: {names})"


def step_names(scope: StepScope, prefix: str = "") -> Iterator[str]:
    """Every name a breakpoint may give a step of ``scope``: ids, and paths without indexes
    (``each.fetch``; a body named by its label too: ``p.primary.a``)."""
    for step in scope.steps:
        yield step.id
        if prefix:
            yield prefix + step.id
        for label, body in step.bodies.items():
            yield from step_names(body, f"{prefix}{step.id}.")
            yield from step_names(body, f"{prefix}{step.id}.{label}.")


def _check_step(compiled: CompiledWorkflow, step: str | None) -> None:
    if step is None:
        return
    names = set(step_names(compiled.scope))
    if step in names or without_indexes(step) in names:
        return
    hint = did_you_mean(step, sorted(names))
    raise DebugError(f"workflow {compiled.name!r} has no step {step!r}{hint}")


def _dependent_paths(scope: Scope, step: CompiledStep) -> list[str]:
    steps = scope.scope.steps
    return [scope.prefix + steps[d].id for d in step.dependents]


def _reads_vars(step: CompiledStep) -> bool:
    templates = [*step.templated.values(), step.when, step.cache_key, step.cache_when]
    return any(t is not None and "vars" in t.roots for t in templates)


def _shown_config(held: Held) -> dict[str, Any]:
    """What the held step would run with: its fields, templates rendered now."""
    step = held.step
    shown = dict(step.static)
    for key, template in step.templated.items():
        try:
            shown[key] = held.scope.render(template, step, key)
        except TemplateError as exc:
            shown[key] = {"$error": str(exc)}
    for key, template in step.deferred.items():
        shown[key] = template.source  # rendered by the step itself, later
    return shown


def _shown_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """A held step's template context, as JSON a person can read (large values cut)."""
    out: dict[str, Any] = {}
    for root, value in context.items():
        if root == "env":
            continue  # the host's environment is not the debugger's to show
        if root == "steps":
            value = {k: dict(v) for k, v in dict(value).items()}
        out[root] = bounded(value)
    return out
