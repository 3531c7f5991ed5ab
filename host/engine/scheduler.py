"""Running a compiled graph of steps: scheduling, guards, retries, timeouts, errors, bodies.

Each step starts the moment its own dependencies settle: there is no superstep barrier, so a
slow branch never delays an independent fast one.

Tasks are the expensive part, so the scheduler makes as few as it can. An inline step (a pure
computation) runs within the scheduling pass that found it ready. A task that finishes a step
goes on with one of the steps that became ready and spawns tasks only for the others, so a
chain of steps runs in one task. A scope (the workflow's top level, or one run of a nested body)
opens its task group only when two steps are ready at once; a sequential scope runs entirely in
the task that runs the scope.
"""

from __future__ import annotations

import logging
import time
from collections import ChainMap
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.lowlevel
from pydantic import ValidationError

from plait.definition.compiler import CompiledStep, Scope
from plait.engine.debugger import Held
from plait.errors import (
    AgentFailed,
    AgentNotFound,
    CircuitOpen,
    OutputError,
    RunCancelled,
    RunError,
    StepFailed,
    StepInterrupted,
    StepQuarantined,
    StepTimeout,
    TemplateError,
)
from plait.faults import is_plugin_failure, log_plugin_failure
from plait.plugins.types import Agent, Message, Renderable, ToolContext
from plait.values import bounded, json_problem

if TYPE_CHECKING:
    from plait.engine.debugger import RunDebug
    from plait.services.agents import AgentPool
    from plait.services.tools import ToolRunner
    from plait.state.recovery import StepRecord
    from plait.state.run_store import RunStore
    from plait.state.runs import Run
    from plait.telemetry import Metrics, Tracing
    from plait.templates.engine import Template

Sampler = Callable[["Run", dict[str, Any], float], Awaitable[dict[str, Any]]]
"""(run, sampling/createMessage params, timeout) → the client's result."""


class RunServices(Protocol):
    """What running a run needs from its engine, and nothing more (the engine is one)."""

    store: RunStore
    tools: ToolRunner
    agents: AgentPool
    sampler: Sampler | None
    step_limiter: anyio.CapacityLimiter
    """Steps in flight host-wide (``[limits] max_concurrent_steps``)."""
    crash_limit: int
    """Host crashes in a row a step attempt may be in flight for before it is quarantined."""
    metrics: Metrics | None
    tracing: Tracing | None

    def root_context(self, rx: RunExecution) -> dict[str, Any]:
        """The template roots of a run before any step: inputs, vars, run, env."""
        ...

    def step_type_owner(self, key: str) -> str | None:
        """The plugin that registered a step type, for error messages."""
        ...

    async def run_child(
        self,
        parent: RunExecution,
        step_path: str,
        attempt: int,
        name: str,
        inputs: dict[str, Any],
        version: int | None,
        *,
        resumed: bool = False,
    ) -> dict[str, Any]:
        """Run a sub-workflow inside the calling step."""
        ...


Ready = list[tuple["CompiledStep | None", Any]]
"""Work for a task: (step, the failed attempt an inline step continues from, or None), or
(None, step indices) for a scheduling pass that stopped to let the event loop run."""

__all__ = ["RunExecution", "RunServices", "Sampler", "ScopeExecution", "StepRuntimeError"]

log = logging.getLogger("plait.steps")

INLINE_BUDGET = 200
"""Inline steps one scheduling pass runs before the rest wait for a task of their own, so
that a long chain of pure steps still lets the event loop serve everything else."""


class StepRuntimeError(RunError):
    """A step's code raised something that is not a plait error; names the plugin."""

    kind = "step_error"


class ConfigInvalid(RunError):
    """A step's rendered configuration does not fit its step type."""

    kind = "config"
    retryable = False


class RunExecution:
    """The live part of one run: its engine, state, limits, pause gate and cancel scope."""

    __slots__ = (
        "busy",
        "cancel_scope",
        "debug",
        "held",
        "depth",
        "engine",
        "careful",
        "limiter",
        "root",
        "paused",
        "permit",
        "top",
        "prewaiting",
        "recovered",
        "run",
        "unpaused",
        "vars",
        "waiting",
    )

    def __init__(
        self,
        engine: RunServices,
        run: Run,
        depth: int = 0,
        recovered: dict[str, StepRecord] | None = None,
        *,
        limiter: anyio.CapacityLimiter | None = None,
        root: str | None = None,
        careful: bool = False,
    ) -> None:
        self.engine = engine
        self.run = run
        self.depth = depth
        self.root = root or run.id
        """The top-level run of this run's tree (itself, for a top-level run)."""
        self.careful = careful
        """The run was resumed after a crash: each step attempt starts only once what came
        before it (its own start included) is kept, so that a step that brings the host down
        at once is still found in flight, and blamed, by the next start."""
        self.recovered = recovered
        """After a restart: what the events say of each step path, used up as steps reach it."""
        self.paused = False
        self.unpaused: anyio.Event | None = None
        self.cancel_scope = anyio.CancelScope()
        """The run's scope, made here so that a cancel arriving before the run's task starts
        still takes effect."""
        self.limiter = limiter
        """The workflow's ``concurrency:`` limit, shared with the workflow's other runs."""
        self.vars: dict[str, Any] = {}
        self.waiting = 0
        """Steps waiting for an outside event: a signal, a deadline, an agent's budget."""
        self.busy = 0
        """Steps that can progress: ready (held by a pause, or by a limiter, included) or
        running, not counting a step whose body runs (its body's steps count) nor one in a
        wait (counted in ``waiting``)."""
        self.prewaiting: set[str] | None = None
        """After a restart: the paths of steps that were waiting and go on, counted as
        waiting until they are back in their wait."""
        self.held: dict[str, Held] = {}
        """The steps the pause holds, by path, in the order they were held."""
        self.permit: str | None = None
        """The held step ``debug/step`` lets through, once."""
        self.top: ScopeExecution | None = None
        """The run's top-level scope, once its steps started."""
        self.debug: RunDebug | None = None
        """The debugger's state of the run, once anything debugs it (see plait.engine.debugger)."""

    # -- the run's status from what its steps do ----------------------------------------------

    def reflect(self) -> None:
        """Move a running or waiting run to the status its steps give it: ``waiting`` iff at
        least one step waits and none is ready or running.

        A pause, a cancel or the end of the run leave the status alone: a cancelled run goes
        from where it was straight to ``cancelled``, with no ``run.resumed`` on the way.
        """
        run = self.run
        status = run.status
        if self.cancel_scope.cancel_called:
            return
        if status == "running":
            if self.waiting and not self.busy:
                run.set_status("waiting")
        elif status == "waiting" and self.busy:
            run.set_status("running")

    def enter_wait(self, scope: ScopeExecution, path: str, **data: Any) -> None:
        """A step of ``scope`` waits for an outside event (``data`` goes in ``run.waiting``)."""
        if self.prewaiting and path in self.prewaiting:
            self.prewaiting.discard(path)  # counted as waiting since it went on
        else:
            scope.count(-1)
            self.waiting += 1
        if self.run.status == "running" and not self.busy and not self.cancel_scope.cancel_called:
            self.run.set_status("waiting", **data)

    def leave_wait(self, scope: ScopeExecution, cancelled: bool = False) -> None:
        """The step goes on; the run is running again unless it was cancelled meanwhile."""
        self.waiting -= 1
        scope.count(1)
        if not cancelled:
            self.reflect()

    def pause(self) -> None:
        """No new step starts until :meth:`resume`; running ones finish."""
        if not self.paused:
            self.paused = True
            self.unpaused = anyio.Event()

    def resume(self) -> None:
        """Start the steps that became ready while paused."""
        self.paused = False
        if self.unpaused is not None:
            self.unpaused.set()

    def wake(self) -> None:
        """Wake the steps a pause holds, the run staying paused: each looks again at whether
        it may go on (``debug/step`` let one through, or the debugger now holds them)."""
        if self.unpaused is not None:
            woken, self.unpaused = self.unpaused, anyio.Event()
            woken.set()

    def take_record(self, path: str) -> StepRecord | None:
        """The recovered record of ``path``, once: a later run of the same path is new."""
        return self.recovered.pop(path, None) if self.recovered else None

    def forget_under(self, path: str) -> None:
        """A step starts a fresh attempt: what its nested steps did before is not replayed."""
        if self.recovered:
            for key in [k for k in self.recovered if k.startswith((f"{path}.", f"{path}["))]:
                del self.recovered[key]


class ScopeExecution:
    """One run of one scope: the step states of its graph and the task group running them."""

    __slots__ = (
        "busy",
        "context",
        "failure",
        "parent",
        "prefix",
        "rendered",
        "rx",
        "scope",
        "selected",
        "status",
        "tg",
        "unneeded",
        "views",
        "waiting",
    )

    def __init__(
        self,
        rx: RunExecution,
        scope: Scope,
        prefix: str,
        parent: ScopeExecution | None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.rx = rx
        self.scope = scope
        self.prefix = prefix
        self.parent = parent
        n = len(scope.steps)
        self.waiting = [len(s.deps) + len(s.any_deps) for s in scope.steps]
        self.status: list[str | None] = [None] * n
        self.unneeded = [False] * n
        self.selected: list[set[str] | None] = [None] * n
        self.views: dict[str, dict[str, Any]] = {}
        self.rendered: dict[int, dict[str, Any]] = {}
        """Each templated step's fields as last rendered (by step index), until it starts."""
        steps_view: Mapping[str, Any] = (
            ChainMap(self.views, parent.context["steps"]) if parent else self.views
        )
        if parent is None:  # the run's own roots, made for this scope: no copy needed
            self.context: dict[str, Any] = rx.engine.root_context(rx)
            self.context["steps"] = steps_view
            if extra:
                self.context.update(extra)
        else:
            self.context = {**parent.context, "steps": steps_view, **(extra or {})}
        self.failure: RunError | None = None
        self.tg: anyio.abc.TaskGroup | None = None
        self.busy = 0
        """This scope's share of ``rx.busy``: what is left of it when the scope ends (steps
        never started after a failure or a cancel) is taken back then."""

    def count(self, n: int) -> None:
        """``n`` more (or fewer) steps of this scope are ready or running."""
        self.busy += n
        self.rx.busy += n

    # -- scheduling --------------------------------------------------------------------------

    async def execute(self) -> None:
        """Run every step of the scope; raise the first unhandled step failure."""
        ready = self.schedule(self.scope.roots)
        self.count(len(ready))
        try:
            while len(ready) == 1 and self.failure is None:  # sequential so far: no task group
                step, extra = ready[0]
                ready = (
                    await self.run_step(step, extra)
                    if step is not None
                    else await self.next_pass(extra)
                )
                self.count(len(ready) - 1)
                self.rx.reflect()
            if ready and self.failure is None:
                async with anyio.create_task_group() as tg:
                    self.tg = tg
                    await self.drive(ready)
        except BaseException:
            self.count(-self.busy)  # the scope is torn down: its steps never run now
            raise
        if self.busy:  # steps that will never run after a failure
            self.count(-self.busy)
            self.rx.reflect()
        if self.failure is not None:
            raise self.failure

    async def drive(self, ready: Ready) -> None:
        """Run ready steps: one in this task, the others in new tasks; go on with what the
        one run here makes ready."""
        while ready:
            assert self.tg is not None
            for item in ready[1:]:
                self.tg.start_soon(self.drive, [item])
            # Awaited here rather than through a helper: a step in flight keeps a frame per
            # level of its await chain.
            step, extra = ready[0]
            ready = (
                await self.run_step(step, extra)
                if step is not None
                else await self.next_pass(extra)
            )
            self.count(len(ready) - 1)
            self.rx.reflect()

    async def next_pass(self, indices: Iterable[int]) -> Ready:
        """Go on with a long pass of inline steps after giving the event loop a turn, and
        the disk time to catch up if too much waits for it."""
        store = self.rx.engine.store
        if store.backlogged:
            await store.drained()
        else:
            await anyio.lowlevel.checkpoint()
        return self.schedule(indices)

    def schedule(self, indices: Iterable[int]) -> Ready:
        """Settle or run what can be done at once; return the steps that need a task.

        Works through a list of ready steps: a step whose dependencies say so is skipped, a
        replayed one is settled from its record, and an inline step runs right here; each adds
        its dependents to the list. The rest are returned for :meth:`drive` to run.
        """
        pending = list(indices)
        out: Ready = []
        budget = INLINE_BUDGET
        store = self.rx.engine.store
        while pending:
            if not budget or store.backlogged:
                out.append((None, pending))
                break
            i = pending.pop()
            step = self.scope.steps[i]
            reason = self.skip_reason(step)
            if reason is not None:
                if step.fallback_for is not None and reason == "fallback not needed":
                    self.unneeded[i] = True
                pending.extend(self.settle(step, "skipped", data={"reason": reason}))
                continue
            rec = self.rx.recovered and self.rx.recovered.get(self.prefix + step.id)
            if rec and rec.status in ("succeeded", "failed"):
                pending.extend(self.replay(step))
                continue
            self.status[i] = "running"
            if step.step_type.inline and not rec and self.may_inline():
                budget -= 1
                dependents, retry = self.run_inline(step)
                if retry is not None:
                    out.append((step, retry))
                pending.extend(dependents)
                continue
            out.append((step, None))
        return out

    def may_inline(self) -> bool:
        """Whether a step may run right now, in this pass: not paused, nothing cancelled."""
        rx = self.rx
        if rx.paused or rx.debug is not None or rx.cancel_scope.cancel_called:
            return False  # a debugged run's steps all pass the gate and breakpoints of run_step
        scope: ScopeExecution | None = self
        while scope is not None:
            if scope.failure is not None or (
                scope.tg is not None and scope.tg.cancel_scope.cancel_called
            ):
                return False
            scope = scope.parent
        return True

    def skip_reason(self, step: CompiledStep) -> str | None:
        """Why a ready step must not run, or ``None`` when it should."""
        status = self.status
        if step.fallback_for is not None and status[step.fallback_for] != "failed":
            return "fallback not needed"
        if step.gate is not None:
            gate, label = step.gate
            chosen = self.selected[gate]
            if status[gate] != "succeeded" or (chosen is not None and label not in chosen):
                return f"branch {label!r} of step {self.scope.steps[gate].id!r} not taken"
        for d in step.deps:
            if status[d] == "skipped" and not self.unneeded[d]:
                return f"step {self.scope.steps[d].id!r} was skipped"
        if step.any_deps and all(status[d] == "skipped" for d in step.any_deps):
            return "every step in needs_any was skipped"
        return None

    def replay(self, step: CompiledStep) -> list[int]:
        """Settle a step from its recovered record, without running it or recording again."""
        path = self.prefix + step.id
        rec = self.rx.take_record(path)
        assert rec is not None
        if rec.branches is not None:
            self.selected[step.index] = set(rec.branches)
        if rec.status == "succeeded":
            return self.settle(step, "succeeded", output=rec.output, replay=True)
        ready = self.settle(step, "failed", error=rec.error, replay=True)
        if step.on_error == "fail":
            message = (rec.error or {}).get("message", "failed")
            self.fail_scope(StepFailed(path, message, error=rec.error))
            return []
        return ready

    def settle(
        self,
        step: CompiledStep,
        status: str,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        replay: bool = False,
    ) -> list[int]:
        """Record a step's final status and return the dependents that became ready.

        ``replay`` settles a step the events already settled: nothing is recorded again.
        """
        i = step.index
        self.status[i] = status
        path = self.prefix + step.id
        run = self.rx.run
        if status == "skipped" and not replay and self.rx.recovered:
            rec = self.rx.recovered.get(path)
            if rec is not None and rec.status == "skipped":  # the events already say so
                self.rx.take_record(path)
                replay = True
        state = run.step_state(path)
        view_output = output
        if step.fallback_for is not None and status == "succeeded":
            primary = self.scope.steps[step.fallback_for]
            self.views[primary.id]["output"] = output  # dependents see the fallback's output
        self.views[step.id] = {
            "output": view_output,
            "status": status,
            "error": error,
            "attempts": state.attempts,
        }
        if self.rx.debug is not None:
            self.rx.debug.settled[path] = (self, step)
        if self.parent is None:
            run.settled_steps += 1  # counted before the event, so listeners see the progress
        if not replay:
            event_data = dict(data or {})
            if status == "succeeded":
                event_data["output"] = output
                if self.selected[i] is not None:  # replayed after a restart without running
                    event_data["branches"] = sorted(self.selected[i])  # type: ignore[arg-type]
            elif error is not None:
                event_data["error"] = error
            if state.waited:  # seconds its attempts waited on the run's and host's limits
                event_data["waited"] = round(state.waited, 6)
            run.set_step(path, status, event_data, output=output, error=error)  # type: ignore[arg-type]
            metrics = self.rx.engine.metrics
            if metrics is not None:
                began, ended = state.started_at, state.finished_at
                seconds = None if began is None or ended is None else ended - began
                waited = state.waited if step.step_type.uses_capacity else None
                metrics.step_settled(run.workflow, step.key, status, seconds, waited)
        ready = []
        waiting = self.waiting
        for d in step.dependents:
            waiting[d] -= 1
            if waiting[d] == 0:
                ready.append(d)
        return ready

    def fail_scope(self, error: RunError) -> None:
        """Stop the scope: the first unhandled failure wins and the rest are cancelled."""
        if self.failure is None:
            self.failure = error
        if self.tg is not None:
            self.tg.cancel_scope.cancel()

    # -- one step ----------------------------------------------------------------------------

    def run_inline(self, step: CompiledStep) -> tuple[list[int], tuple[Any, int, RunError] | None]:
        """Run an inline step's first attempt here and now.

        Returns the dependents it readied, or, for a failure its retry policy retries, where
        the retries (which must wait out a backoff) continue from.
        """
        path = self.prefix + step.id
        run = self.rx.run
        config = None
        try:
            if step.when is not None and not self.truthy(step.when, step, "when"):
                return self.settle(step, "skipped", data={"reason": "when was false"}), None
            config = self.configure(step)
            run.set_step(path, "running", self.started(step, path, 1), attempts=1)
            tracing = self.rx.engine.tracing
            with tracing.step(run.id, path, step.key, 1) if tracing else _NO_SCOPE:
                output = self.attempt_inline(step, StepRuntime(self, step, path, 1), config)
        except RunError as exc:
            if (
                config is not None
                and step.retry.attempts > 1
                and _retryable(exc, step.retry.retry_on)
            ):
                return [], (config, 1, exc)
            return self.settle_failure(step, exc), None
        return self.settle(step, "succeeded", output=output), None

    def attempt_inline(self, step: CompiledStep, ctx: StepRuntime, config: Any) -> Any:
        """Drive an inline step's ``run`` to its end without an event loop turn."""
        coro = step.step_type.run(ctx, config)
        try:
            coro.send(None)
        except StopIteration as done:
            output = done.value
        except RunError:
            raise
        except BaseException as exc:
            if not is_plugin_failure(exc):
                raise
            raise self.plugin_error(step, exc) from exc
        else:
            coro.close()
            raise StepRuntimeError(
                f"step type {step.key!r} (plugin {self.rx.engine.step_type_owner(step.key)!r})"
                " says it is inline, but its run() waited for something; an inline step type "
                "must not await anything that suspends (set inline = False)"
            )
        problem = json_problem(output)
        if problem is not None:
            raise OutputError(
                f"step type {step.key!r} returned a value that is not JSON: {problem}"
            )
        return output

    async def run_step(
        self, step: CompiledStep, retry: tuple[Any, int, RunError] | None = None
    ) -> Ready:
        """Guard, render, attempt with retries, and settle one step; return what it readied.

        ``retry`` continues an inline step whose first attempt failed: (config, attempt,
        error).
        """
        path = self.prefix + step.id
        run = self.rx.run
        rec = self.rx.recovered.get(path) if self.rx.recovered else None
        in_flight = retry is not None or (rec is not None and rec.in_flight)
        if in_flight and rec is not None and rec.status == "waiting":
            # It waited when the host stopped and goes back to its wait: not ready work.
            if self.rx.prewaiting is None:
                self.rx.prewaiting = set()
            self.rx.prewaiting.add(path)
            self.count(-1)
            self.rx.waiting += 1
        try:
            # Held here, inside the scope's task group, until resumed; a step that was
            # already running (before a restart, or an inline step now retrying) is not new,
            # so a pause does not hold it.
            if self.rx.paused and not in_flight:
                await self.gate(step, path)
            debug = self.rx.debug
            self.rx.reflect()  # a recovered waiting run with other steps to run is running
            # A run cancelled before this step got going must not record a start (cheap: it
            # neither yields nor switches tasks unless the run is cancelled).
            await anyio.lowlevel.checkpoint_if_cancelled()
            try:
                if retry is not None:
                    config, attempt, error = retry
                    output = await self.attempts(step, path, config, after=(attempt, error))
                else:
                    if debug is not None and step.when is not None:
                        debug.started[path] = step  # its guard reads what it references
                    if step.when is not None and not self.truthy(step.when, step, "when"):
                        return self.schedule(
                            self.settle(step, "skipped", data={"reason": "when was false"})
                        )
                    if debug is not None and not in_flight:
                        bp = debug.stop_at("before", self, step, path)
                        if bp is not None:
                            debug.pause_at(bp, path, "before", f"breakpoint before {path}")
                            await self.gate(step, path)
                        debug.started[path] = step  # it reads its inputs now
                    config = self.configure(step)
                    output = await self.attempts(step, path, config)
            except anyio.get_cancelled_exc_class():
                if run.steps.get(path) is not None and run.steps[path].status not in (
                    "succeeded",
                    "failed",
                    "skipped",
                    "cancelled",
                ):
                    run.set_step(path, "cancelled")
                    self.status[step.index] = "cancelled"
                raise
            except RunError as exc:
                debug = self.rx.debug
                if debug is not None:
                    bp = debug.stop_at("failure", self, step, path)
                    if bp is not None:  # held at its failure: a fixed output may replace it
                        debug.pause_at(bp, path, "failure", f"breakpoint on the failure of {path}")
                        await self.gate(step, path, exc.to_dict())
                        if path in debug.outputs:
                            fixed = debug.outputs.pop(path)
                            return self.schedule(self.settle(step, "succeeded", output=fixed))
                return self.schedule(self.settle_failure(step, exc))
            ready = self.settle(step, "succeeded", output=output)
            debug = self.rx.debug
            if debug is not None:
                bp = debug.stop_at("after", self, step, path)
                if bp is not None:  # paused before any dependent starts
                    debug.pause_at(bp, path, "after", f"breakpoint after {path}")
            return self.schedule(ready)
        finally:
            if self.rx.prewaiting and path in self.rx.prewaiting:  # it never waited again
                self.rx.prewaiting.discard(path)
                self.rx.waiting -= 1
                self.count(1)

    def started(self, step: CompiledStep, path: str, attempt: int) -> dict[str, Any]:
        """What an attempt's ``step.started`` says: its number and the configuration it runs
        with, large values cut (the whole kept apart, for ``runs/stepConfig``)."""
        rendered = self.rendered.get(step.index)
        if not rendered:
            return {"attempt": attempt, "config": step.shown}
        shown = bounded(rendered)
        if shown is not rendered:
            whole = {k: v for k, v in step.static.items() if k in step.shown}
            whole.update(rendered)
            self.rx.engine.store.put_step_config(self.rx.run.id, path, attempt, whole)
        return {"attempt": attempt, "config": {**step.shown, **shown}}

    async def gate(
        self, step: CompiledStep, path: str, error: dict[str, Any] | None = None
    ) -> None:
        """Hold a step while its run is paused; ``debug/step`` may let it through alone.

        ``error``: the step failed for good and waits at its failure breakpoint.
        """
        rx = self.rx
        rx.held[path] = Held(self, step, path, "failure" if error else "before", error)
        try:
            while rx.paused:
                if rx.permit == path:  # debug/step let this one through
                    rx.permit = None
                    return
                assert rx.unpaused is not None
                await rx.unpaused.wait()
        finally:
            rx.held.pop(path, None)

    def settle_failure(self, step: CompiledStep, exc: RunError) -> list[int]:
        """Settle a failed step by its ``on_error``; return the dependents it readied."""
        error = exc.to_dict()
        if isinstance(exc, StepFailed) and exc.step_id == self.prefix + step.id:
            error = exc.error
        if step.on_error == "fail":
            self.settle(step, "failed", error=error)
            self.fail_scope(StepFailed(self.prefix + step.id, str(exc), error=error))
            return []
        # continue, or fallback: dependents (and the fallback) decide
        return self.settle(step, "failed", error=error)

    def truthy(self, template: Template, step: CompiledStep, field: str) -> bool:
        return bool(self.render(template, step, field))

    def render(
        self,
        template: Renderable,
        step: CompiledStep,
        field: str,
        extra: Mapping[str, Any] | None = None,
    ) -> Any:
        context = {**self.context, **extra} if extra else self.context
        try:
            return template.render(context)
        except TemplateError as exc:
            raise exc.located(step=self.prefix + step.id, field=field) from None

    def configure(self, step: CompiledStep) -> Any:
        """The step's validated config: prebuilt when static, else rendered now.

        What it was rendered to is kept in ``rendered`` for the attempt's ``step.started``.
        """
        if step.static_config is not None:
            return step.static_config
        values = dict(step.static)
        rendered = {}
        for key, template in step.templated.items():
            rendered[key] = values[key] = self.render(template, step, key)
        self.rendered[step.index] = rendered
        values.update(step.deferred)
        try:
            return step.config_model.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            raise ConfigInvalid(
                f"step {self.prefix + step.id!r} has an invalid configuration "
                f"after rendering: {problems}"
            ) from None

    async def attempts(
        self, step: CompiledStep, path: str, config: Any, after: tuple[int, RunError] | None = None
    ) -> Any:
        """Run attempts until one succeeds or the retry policy gives up.

        A step that was in flight when the host stopped continues as the same attempt (same
        idempotency key, same checkpoints); if its type is not safe to run again it is marked
        ``interrupted`` and fails instead, following its ``on_error``. ``after`` continues from
        a failed attempt (attempt number, error) that ran elsewhere.
        """
        retry = step.retry
        run = self.rx.run
        engine = self.rx.engine
        store = engine.store
        attempt, error = after if after is not None else (0, None)
        rec = self.rx.take_record(path) if after is None else None
        resumed = rec is not None and rec.in_flight
        if resumed:
            assert rec is not None
            if rec.executing and rec.crashes >= engine.crash_limit:
                plugin = engine.step_type_owner(step.key)
                run.record(
                    "step.quarantined",
                    path,
                    {"attempt": rec.attempt, "crashes": rec.crashes, "plugin": plugin},
                )
                raise StepQuarantined(
                    f"step {path!r} (step type {step.key!r}, plugin {plugin!r}) was running "
                    f"each time the host crashed, {rec.crashes} times in a row; it is not run "
                    "again, as it may be what brings the host down"
                )
            if rec.executing and not step.step_type.rerunnable:
                run.set_step(path, "interrupted", {"attempt": rec.attempt})
                raise StepInterrupted(
                    f"step {path!r} was running when the host stopped, and step type "
                    f"{step.key!r} is not safe to run again (rerunnable = False)"
                )
            attempt = rec.attempt - 1
            run.step_state(path).checkpoints = dict(rec.checkpoints) or None
            if rec.retry_at is not None:  # the backoff the host stopped in keeps its deadline
                await _sleep_until(rec.retry_at)
        while True:
            if error is not None:
                if attempt >= retry.attempts or not _retryable(error, retry.retry_on):
                    raise error
                delay = retry.delay(attempt)
                if isinstance(error, CircuitOpen):  # wait for the breaker, not into it again
                    delay = max(delay, error.retry_at - time.time())
                run.record(
                    "step.retrying",
                    path,
                    {"attempt": attempt, "delay": delay, "error": error.to_dict()},
                )
                if engine.metrics is not None:
                    engine.metrics.retries.labels(run.workflow, step.key).inc()
                await _sleep_until(time.time() + delay)
            attempt += 1
            if store.backlogged:
                await store.drained()
            data = self.started(step, path, attempt)
            if resumed:
                data["recovered"] = True
            else:
                run.step_state(path).checkpoints = None
                self.rx.forget_under(path)
            resumed = False
            run.set_step(path, "running", data, attempts=attempt)
            if self.rx.careful:
                await store.sync()
            ctx = StepRuntime(self, step, path, attempt, "recovered" in data)
            # The attempt itself, within its deadline and the run's and host's limiters;
            # written out here rather than in a method of its own: a suspended step keeps a
            # frame per level of its await chain, and many steps are in flight at once.
            timeout = step.timeout
            limits = self.limits(step)
            tracing = engine.tracing
            try:
                # The attempt's span (tracing on) ends after the deadline's verdict, so a
                # timed-out attempt is a failed span.
                with tracing.step(run.id, path, step.key, attempt) if tracing else _NO_SCOPE:
                    with (
                        anyio.CancelScope(deadline=anyio.current_time() + timeout)
                        if timeout
                        else _NO_SCOPE
                    ) as deadline:
                        try:
                            async with limits:
                                output = await step.step_type.run(ctx, config)
                        finally:
                            if limits.waited:
                                run.step_state(path).waited += limits.waited
                    if deadline is not None and deadline.cancelled_caught:
                        # Only the deadline's own cancellation ends up here: a cancel from
                        # outside the scope goes on propagating.
                        raise StepTimeout(
                            f"step {path!r} timed out after {timeout} s (attempt {attempt})"
                        )
                problem = json_problem(output)
                if problem is not None:
                    raise OutputError(
                        f"step type {step.key!r} returned a value that is not JSON: {problem}"
                    )
                return output
            except RunError as exc:
                error = exc
            except BaseException as exc:
                if not is_plugin_failure(exc):
                    raise
                error = self.plugin_error(step, exc)
                error.__cause__ = exc

    def limits(self, step: CompiledStep) -> _acquire:
        """The limiters an attempt of ``step`` holds: the run's and the host's, for steps that
        do work. A step that only waits for others (a loop, a branch, a sub-workflow) holds
        neither: its body's steps take the slots, and holding one itself would deadlock a run
        limited to one step (and fail its first body step, in the same task)."""
        if not step.step_type.uses_capacity:
            return _NO_LIMITS
        run_limit = self.rx.limiter
        host_limit = self.rx.engine.step_limiter
        return _acquire(run_limit, host_limit)

    def plugin_error(self, step: CompiledStep, exc: BaseException) -> StepRuntimeError:
        """A step type's own exception, as a step error naming its plugin; its traceback goes
        to the host's log under the correlation id the error carries."""
        plugin = self.rx.engine.step_type_owner(step.key)
        error = StepRuntimeError(
            f"step type {step.key!r} (plugin {plugin!r}) raised {type(exc).__name__}: {exc}"
        )
        error.correlation_id = log_plugin_failure(
            exc,
            f"step type {step.key!r}",
            plugin=plugin,
            run_id=self.rx.run.id,
            step=self.prefix + step.id,
        )
        return error


class _nullcontext:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


TIMER_SLACK = 0.001
"""Seconds added to a sleep that must not end early: uvloop's timers count whole
milliseconds and may fire up to one before the time asked for."""


async def _sleep_until(deadline: float) -> None:
    """Sleep until the wall clock reads ``deadline`` (a backoff, a breaker's reopening), never
    less: a step retried a moment early would find the breaker still open."""
    while (left := deadline - time.time()) > 0:
        await anyio.sleep(left + TIMER_SLACK)


class _acquire:
    """Hold the given capacity limiters, in a fixed order (no deadlock)."""

    __slots__ = ("limiters", "waited")

    def __init__(self, *limiters: anyio.CapacityLimiter | None) -> None:
        self.limiters = [lim for lim in limiters if lim is not None]
        self.waited = 0.0
        """Seconds spent waiting for a slot (0 when every limiter had one free at once)."""

    async def __aenter__(self) -> None:
        for i, lim in enumerate(self.limiters):
            try:
                try:
                    lim.acquire_nowait()  # no event-loop turn when a slot is free
                except anyio.WouldBlock:
                    began = time.perf_counter()
                    try:
                        await lim.acquire()
                    finally:
                        self.waited += time.perf_counter() - began
            except BaseException:
                for held in reversed(self.limiters[:i]):
                    held.release()
                raise

    async def __aexit__(self, *exc: object) -> None:
        for lim in reversed(self.limiters):
            lim.release()


_NO_SCOPE = _nullcontext()
_NO_LIMITS = _acquire()
"""Stateless, so shared by every attempt without a deadline or without limiters."""


def _retryable(error: RunError, retry_on: Sequence[str]) -> bool:
    if isinstance(error, RunCancelled):
        return False
    if not retry_on:
        return error.retryable
    names = {error.kind, *(cls.__name__ for cls in type(error).__mro__)}
    cause = error.__cause__
    if cause is not None:
        names |= {cls.__name__ for cls in type(cause).__mro__}
    return bool(names & set(retry_on))


class StepRuntime:
    """The :class:`plait.plugins.StepContext` the engine gives one attempt of one step."""

    __slots__ = (
        "_bodies",
        "_log",
        "_scope",
        "_step",
        "attempt",
        "definition",
        "idempotency_key",
        "resumed",
        "run_id",
        "step_id",
    )

    def __init__(
        self,
        scope: ScopeExecution,
        step: CompiledStep,
        path: str,
        attempt: int,
        resumed: bool = False,
    ) -> None:
        self._scope = scope
        self._bodies = 0
        """Bodies of this step running now."""
        self.resumed = resumed
        """This attempt was in flight when the host stopped, and goes on after a restart."""
        self._step = step
        self.run_id = scope.rx.run.id
        self.step_id = path
        self.attempt = attempt
        self.idempotency_key = f"{self.run_id}/{path}"
        self.definition = step.definition
        self._log: logging.LoggerAdapter[logging.Logger] | None = None

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger that names the run and step (made when a step first logs)."""
        if self._log is None:
            self._log = logging.LoggerAdapter(log, {"run_id": self.run_id, "step": self.step_id})
        return self._log

    @property
    def _run(self) -> Run:
        return self._scope.rx.run

    def trace_headers(self) -> dict[str, str]:
        tracing = self._scope.rx.engine.tracing
        return tracing.headers() if tracing is not None else {}

    async def emit(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        payload = dict(data or {})
        problem = json_problem(payload)
        if problem is not None:
            raise OutputError(f"event {type!r} data is not JSON: {problem}")
        self._run.record(type, self.step_id, payload)

    def render(self, template: Renderable, **extra: Any) -> Any:
        return self._scope.render(template, self._step, getattr(template, "where", ""), extra)

    async def call_tool(
        self,
        name: str,
        args: Mapping[str, Any],
        *,
        cache: Any = None,
        key: str | None = None,
        executor: str | None = None,
    ) -> Any:
        step = self._step
        extra_key = None
        policy = step.cache
        if policy is not None and policy.enabled:
            if step.cache_when is not None and not self._scope.truthy(
                step.cache_when, step, "cache.when"
            ):
                policy = None
            elif step.cache_key is not None:
                extra_key = str(self._scope.render(step.cache_key, step, "cache.key"))
        elif policy is None and cache is not None:
            policy = cache

        async def cached(tool: str, key: str) -> None:
            self._run.record("step.cached", self.step_id, {"tool": tool, "key": key})

        idempotency_key = self.idempotency_key if key is None else f"{self.idempotency_key}/{key}"
        return await self._scope.rx.engine.tools.call(
            name,
            args,
            policy=policy,
            extra_key=extra_key,
            on_cached=cached,
            context=ToolContext(self.run_id, self.step_id, self.attempt, idempotency_key),
            on_breaker=self.emit,
            executor=executor,
        )

    def tool_specs(self, names: Sequence[str]) -> list[dict[str, Any]]:
        return self._scope.rx.engine.tools.specs(tuple(names))

    def agent(self, name: str) -> Agent:
        try:
            return self._scope.rx.engine.agents.get(name)
        except AgentNotFound:
            raise

    async def conversation(self, name: str) -> list[Message]:
        return list(self._run.conversations.get(name, ()))

    async def append_messages(self, name: str, messages: Sequence[Message]) -> None:
        history = self._run.conversations.setdefault(name, [])
        history.extend(messages)
        self._run.record(
            "conversation.appended",
            self.step_id,
            {"conversation": name, "messages": [m.to_dict() for m in messages]},
        )

    async def run_body(
        self,
        label: str,
        *,
        vars: Mapping[str, Any] | None = None,
        output: Any = None,
        key: str | None = None,
    ) -> Any:
        body = self._step.bodies.get(label)
        if body is None:
            raise StepRuntimeError(f"step {self.step_id!r} has no body {label!r}")
        suffix = f"[{key}]" if key is not None else f".{label}"
        inner = ScopeExecution(self._scope.rx, body, f"{self.step_id}{suffix}.", self._scope, vars)
        # While its bodies run (a parallel step runs several at once), a step is neither
        # ready nor running itself: its bodies' steps say whether the run can progress.
        self._bodies += 1
        if self._bodies == 1:
            self._scope.count(-1)
        try:
            await inner.execute()
        finally:
            self._bodies -= 1
            if self._bodies == 0:
                self._scope.count(1)
        if output is not None:
            return inner.render(output, self._step, "output")
        last = body.last
        return inner.views[last.id]["output"]

    def select_branch(self, label: str) -> None:
        selected = self._scope.selected[self._step.index]
        if selected is None:
            selected = self._scope.selected[self._step.index] = set()
        selected.add(label)

    async def run_workflow(
        self, name: str, inputs: Mapping[str, Any], *, version: int | None = None
    ) -> dict[str, Any]:
        rx = self._scope.rx
        return await rx.engine.run_child(
            rx, self.step_id, self.attempt, name, dict(inputs), version, resumed=self.resumed
        )

    async def checkpoint(self, key: str, value: Any) -> Any:
        state = self._run.step_state(self.step_id)
        if state.checkpoints is not None and key in state.checkpoints:
            return state.checkpoints[key]
        problem = json_problem(value)
        if problem is not None:
            raise OutputError(f"checkpoint {key!r} of step {self.step_id!r} is not JSON: {problem}")
        state.checkpoints = {**(state.checkpoints or {}), key: value}
        self._run.record("step.checkpoint", self.step_id, {"key": key, "value": value})
        return value

    async def wait_signal(
        self, event: str, *, timeout: float | None, reason: str | None = None
    ) -> Any:
        rx = self._scope.rx
        run = rx.run
        run.set_step(
            self.step_id,
            "waiting",
            {"event": event, "timeout": timeout},
            reason=reason or f"signal {event!r}",
        )
        rx.enter_wait(self._scope, self.step_id, event=event)
        try:
            with anyio.fail_after(timeout) if timeout is not None else _nullcontext():
                data = await run.take_signal(event, self.step_id)
        except anyio.get_cancelled_exc_class():
            rx.leave_wait(self._scope, cancelled=True)
            raise
        except BaseException:
            rx.leave_wait(self._scope)
            raise
        rx.leave_wait(self._scope)
        return data

    def sleep_until(self, deadline: float) -> Awaitable[None]:
        # anyio's sleep itself, not a coroutine around it: one frame less per sleeping step.
        # A delay is work on a clock, not an outside event: its run stays running. The slack
        # keeps it from ending before its time on a loop whose timers count whole ms (uvloop).
        return anyio.sleep(max(0.0, deadline - time.time()) + TIMER_SLACK)

    async def waiting(self, reason: str | None) -> None:
        run = self._run
        rx = self._scope.rx
        if reason is None:
            if run.step_state(self.step_id).status == "waiting":
                run.set_step(self.step_id, "running", {}, type="step.resumed")
                rx.leave_wait(self._scope, cancelled=rx.cancel_scope.cancel_called)
            return
        if run.step_state(self.step_id).status != "waiting":
            run.set_step(self.step_id, "waiting", {"reason": reason}, reason=reason)
            rx.enter_wait(self._scope, self.step_id, reason=reason)
        else:
            run.set_step(self.step_id, "waiting", {"reason": reason}, reason=reason)

    async def sample(self, params: Mapping[str, Any], *, timeout: float) -> dict[str, Any]:
        sampler = self._scope.rx.engine.sampler
        if sampler is None:
            raise AgentFailed(
                "sampling",
                "this engine serves no clients, so none can run a "
                "sampling request (use a host, plait serve)",
            )
        return await sampler(self._run, dict(params), timeout)
