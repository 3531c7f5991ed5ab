"""The engine: registered workflows, runs in flight, and the services steps use.

An :class:`Engine` is an async context manager owning one task group; every run is a task in
it. It is built from a plugin manager's registries, so it names no step type or agent itself.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from copy import deepcopy
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio
import anyio.abc

from plait.agent_pool import AgentPool
from plait.compiler import CompiledWorkflow, compile_workflow, definition_digest
from plait.config import HostConfig
from plait.errors import (
    InputsInvalid,
    InvalidRunState,
    RunCancelled,
    RunError,
    RunNotFound,
    StepFailed,
    TemplateError,
    WorkflowNotFound,
)
from plait.execution import RunExecution, ScopeExecution
from plait.loader import load
from plait.memo import ToolCache
from plait.models import WorkflowDef
from plait.plugins.manager import PluginManager
from plait.runs import Event, Run
from plait.templating import TemplateEngine, TemplateLimits
from plait.tools import ToolRunner
from plait.values import PLUGIN_ERRORS

__all__ = ["Catalog", "Engine"]

log = logging.getLogger("plait.engine")

OBSERVER_SECONDS = 10.0
"""How long an async lifecycle observer may take before it is cancelled."""


@dataclass
class _Versions:
    current: int
    by_number: dict[int, CompiledWorkflow] = field(default_factory=dict)
    created_at: dict[int, float] = field(default_factory=dict)


class Catalog:
    """Registered workflows by name and version; identical content keeps its version."""

    def __init__(self) -> None:
        self._workflows: dict[str, _Versions] = {}

    def add(self, compiled: CompiledWorkflow) -> CompiledWorkflow:
        """Register a compiled workflow; returns it with the version it was filed under."""
        entry = self._workflows.get(compiled.name)
        if entry is None:
            compiled.version = compiled.definition.version or 1
            entry = self._workflows[compiled.name] = _Versions(compiled.version)
        else:
            for existing in entry.by_number.values():
                if existing.digest == compiled.digest:
                    entry.current = existing.version
                    return existing
            compiled.version = max(entry.by_number) + 1
        entry.by_number[compiled.version] = compiled
        entry.created_at[compiled.version] = time.time()
        entry.current = compiled.version
        return compiled

    def versions(self, name: str) -> list[dict[str, Any]]:
        """``[{version, created_at, current}]`` of a workflow, oldest first."""
        entry = self._entry(name)
        return [{"version": v, "created_at": entry.created_at[v], "current": v == entry.current}
                for v in sorted(entry.by_number)]

    def rollback(self, name: str, version: int) -> CompiledWorkflow:
        """Make an older version current again."""
        entry = self._entry(name)
        if version not in entry.by_number:
            raise WorkflowNotFound(name, version)
        entry.current = version
        return entry.by_number[version]

    def _entry(self, name: str) -> _Versions:
        entry = self._workflows.get(name)
        if entry is None:
            raise WorkflowNotFound(name, None, self.names())
        return entry

    def current(self) -> list[CompiledWorkflow]:
        """The current version of every workflow, by name."""
        return [self.get(name) for name in self.names()]

    def get(self, name: str, version: int | None = None) -> CompiledWorkflow:
        """The current (or a given) version of ``name``."""
        entry = self._workflows.get(name)
        if entry is None:
            raise WorkflowNotFound(name, version, self.names())
        found = entry.by_number.get(entry.current if version is None else version)
        if found is None:
            raise WorkflowNotFound(name, version)
        return found

    def remove(self, name: str) -> None:
        """Forget every version of ``name``."""
        if self._workflows.pop(name, None) is None:
            raise WorkflowNotFound(name, None, self.names())

    def names(self) -> list[str]:
        """Registered workflow names."""
        return sorted(self._workflows)

    def __contains__(self, name: object) -> bool:
        return name in self._workflows


class Engine:
    """Compiles workflows, starts and controls runs, and serves steps their tools and agents."""

    def __init__(self, pm: PluginManager, config: HostConfig | None = None, *,
                 cache: ToolCache | None = None) -> None:
        self.pm = pm
        self.config = config or HostConfig()
        limits = self.config.limits
        self.registries = pm.registries
        self.templates = TemplateEngine(TemplateLimits(
            max_output=limits.template_output_bytes, max_seconds=limits.template_seconds))
        pm.call_isolated("prepare_jinja_environment", env=self.templates.env)
        self.cache = cache or ToolCache(None)
        self.tools = ToolRunner(self.registries.tools, self.cache, self.config.tools)
        self.agents = AgentPool(self.registries.agent_providers, self.config.agents)
        self.catalog = Catalog()
        self.runs: dict[str, Run] = {}
        self.executions: dict[str, RunExecution] = {}
        self.idempotency: dict[str, str] = {}
        self.listeners: list[Callable[[Event], None]] = []
        """Called with every event of every run (subscriptions to all runs)."""
        self.step_limiter = anyio.CapacityLimiter(limits.max_concurrent_steps)
        self._run_limiters: dict[str, anyio.CapacityLimiter | None] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._observing = 0
        self._observers = {h: pm.has_impls(h) for h in
                           ("run_started", "run_finished", "step_started", "step_finished")}
        env_allow = self.config.env.allow
        self._env = {k: os.environ[k] for k in env_allow if k in os.environ}

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        assert self._tg is not None
        if self._observing:  # let async observers of finished runs finish (each ≤ 10 s)
            with anyio.move_on_after(OBSERVER_SECONDS):
                while self._observing:
                    await anyio.sleep(0.005)
        self._tg.cancel_scope.cancel()  # runs still going are stopped with the engine
        try:
            # The body's own exception is not handed to the task group, so it propagates as
            # itself instead of inside an exception group.
            await self._tg.__aexit__(None, None, None)
        finally:
            self._tg = None
        return None

    # -- workflows ---------------------------------------------------------------------------

    def compile(self, source: WorkflowDef | Mapping[str, Any] | str) -> CompiledWorkflow:
        """Load (if needed) and compile a workflow against this engine's plugins."""
        wf = load(source, hook=self._load_hook) if not isinstance(source, WorkflowDef) \
            else source
        return compile_workflow(wf, self.registries.step_types, self.templates,
                                self.config.limits)

    def register(self, source: WorkflowDef | Mapping[str, Any] | str) -> CompiledWorkflow:
        """Compile and register a workflow so runs and sub-workflow steps can name it."""
        return self.catalog.add(self.compile(source))

    def _load_hook(self, text: str, path: str | None) -> Mapping[str, Any] | None:
        results = self.pm.call_isolated("load_workflow", firstresult=True, source=text,
                                        path=path)
        return next((r for r in results if r is not None), None)

    def digest(self, wf: WorkflowDef) -> str:
        """The content hash used to decide whether a definition changed."""
        return definition_digest(wf)

    # -- runs --------------------------------------------------------------------------------

    def prepare(self, compiled: CompiledWorkflow, inputs: Mapping[str, Any] | None, *,
                run_id: str | None = None, parent_id: str | None = None) -> Run:
        """Check inputs (applying schema defaults) and create the run record."""
        values = _with_defaults(compiled.definition.inputs, dict(inputs or {}))
        problems = compiled.check_inputs(values)
        if problems:
            raise InputsInvalid(compiled.name, problems)
        run = Run(id=run_id or uuid.uuid4().hex, workflow=compiled.name,
                  version=compiled.version, inputs=values, parent_id=parent_id,
                  total_steps=len(compiled.scope.steps))
        self.runs[run.id] = run
        run.listen(self._broadcast)
        run.record("run.created", None, {"workflow": compiled.name,
                                         "version": compiled.version, "inputs": values})
        return run

    def _broadcast(self, event: Event) -> None:
        for listener in self.listeners:
            listener(event)

    async def start(self, compiled: CompiledWorkflow, inputs: Mapping[str, Any] | None = None,
                    *, run_id: str | None = None, idempotency_key: str | None = None) -> Run:
        """Create a run and start it in the background; returns at once.

        With an ``idempotency_key`` already used, the existing run is returned instead.
        """
        if self._tg is None:
            raise RuntimeError("the engine is not started: use `async with engine:`")
        if idempotency_key is not None and idempotency_key in self.idempotency:
            return self.runs[self.idempotency[idempotency_key]]
        run = self.prepare(compiled, inputs, run_id=run_id)
        if idempotency_key is not None:
            run.idempotency_key = idempotency_key
            self.idempotency[idempotency_key] = run.id
        rx = RunExecution(self, run)
        self.executions[run.id] = rx
        self._tg.start_soon(self._execute_quietly, rx, compiled)
        return run

    async def _execute_quietly(self, rx: RunExecution, compiled: CompiledWorkflow) -> None:
        try:
            await self.execute(rx, compiled)
        except RunError:
            pass  # recorded on the run

    async def execute(self, rx: RunExecution, compiled: CompiledWorkflow) -> dict[str, Any]:
        """Run to a terminal state; returns the outputs or raises the failure (also recorded)."""
        run = rx.run
        scope = None
        try:
            with anyio.CancelScope() as cancel_scope:
                rx.cancel_scope = cancel_scope
                run.set_status("running")
                self._observe("run_started", run=run)
                scope = ScopeExecution(rx, compiled.scope, "", None)
                rx.vars.update(self._render_top(compiled.vars, scope, "vars") or {})
                await scope.execute()
                outputs = self._render_top(compiled.outputs, scope, "outputs") or {}
            if cancel_scope.cancelled_caught:
                raise RunCancelled(f"run {run.id} was cancelled")
        except RunCancelled as exc:
            self._finish(rx, "cancelled", error=exc.to_dict())
            raise
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                self._finish(rx, "cancelled", error={"type": "cancelled",
                                                     "message": "the host stopped"})
            raise
        except RunError as exc:
            error = exc.error if isinstance(exc, StepFailed) else exc.to_dict()
            self._finish(rx, "failed", error=error)
            raise
        run.outputs = outputs
        self._finish(rx, "succeeded", outputs=outputs)
        return outputs

    def _render_top(self, template: Any, scope: ScopeExecution, field: str) -> Any:
        try:
            return template.render(scope.context)
        except TemplateError as exc:
            raise exc.located(field=field) from None

    def _finish(self, rx: RunExecution, status: str, **data: Any) -> None:
        run = rx.run
        for path, state in run.steps.items():
            if state.status in ("pending", "running", "waiting"):
                run.set_step(path, "cancelled")
        if "error" in data:
            run.error = data["error"]
        run.set_status(status, **data)  # type: ignore[arg-type]
        self.executions.pop(run.id, None)
        self._observe("run_finished", run=run, outcome=status)

    async def run_child(self, parent: RunExecution, step_path: str, name: str,
                        inputs: dict[str, Any], version: int | None) -> dict[str, Any]:
        """Run a sub-workflow inside the calling step, so cancelling the parent cancels it."""
        limit = self.config.limits.max_run_depth
        if parent.depth + 1 > limit:
            raise StepFailed(step_path, f"sub-workflow nesting is deeper than {limit} "
                                        "(max_run_depth); does a workflow call itself?")
        compiled = self.catalog.get(name, version)
        try:
            child = self.prepare(compiled, inputs, parent_id=parent.run.id)
        except InputsInvalid as exc:
            raise StepFailed(step_path, str(exc)) from None
        parent.run.record("run.child", step_path, {"child": child.id, "workflow": name})
        rx = RunExecution(self, child, parent.depth + 1)
        self.executions[child.id] = rx
        try:
            return await self.execute(rx, compiled)
        except RunError as exc:
            raise StepFailed(step_path, f"child run {child.id} of workflow {name!r} failed: "
                                        f"{exc}") from None

    def get_run(self, run_id: str) -> Run:
        """The run with that id; raises :class:`RunNotFound`."""
        run = self.runs.get(run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run

    async def wait(self, run_id: str) -> Run:
        """Return once run ``run_id`` is terminal."""
        return await self.get_run(run_id).wait()

    def _live(self, run_id: str, action: str, allowed: tuple[str, ...]) -> RunExecution:
        run = self.get_run(run_id)
        rx = self.executions.get(run_id)
        if rx is None or run.status not in allowed:
            raise InvalidRunState(run_id, run.status, action)
        return rx

    def cancel(self, run_id: str) -> Run:
        """Cancel a run: running steps are cancelled, the rest marked cancelled."""
        rx = self._live(run_id, "cancel", ("pending", "running", "paused", "waiting"))
        if rx.paused:
            rx.resume()  # let held steps see the cancellation
        if rx.cancel_scope is not None:
            rx.cancel_scope.cancel()
        return rx.run

    def pause(self, run_id: str) -> Run:
        """Stop starting new steps of a run; running ones finish."""
        rx = self._live(run_id, "pause", ("running", "waiting"))
        rx.pause()
        rx.run.set_status("paused")
        return rx.run

    def resume(self, run_id: str) -> Run:
        """Continue a paused run."""
        rx = self._live(run_id, "resume", ("paused",))
        rx.run.set_status("waiting" if rx.waiting else "running")
        rx.resume()
        return rx.run

    def signal(self, run_id: str, event: str, data: Any = None) -> None:
        """Deliver a signal to a run's ``wait`` steps (kept until one takes it)."""
        run = self.get_run(run_id)
        if run.done:
            raise InvalidRunState(run_id, run.status, "signal")
        run.signal(event, data)

    def list_runs(self, *, workflow: str | None = None, status: str | None = None,
                  parent: bool = False) -> list[Run]:
        """Runs, newest first, filtered by workflow and status (child runs only if asked)."""
        runs = [r for r in self.runs.values()
                if (workflow is None or r.workflow == workflow)
                and (status is None or r.status == status)
                and (parent or r.parent_id is None)]
        runs.sort(key=lambda r: r.created_at, reverse=True)
        return runs

    # -- services for the execution layer ----------------------------------------------------

    def root_context(self, rx: RunExecution) -> dict[str, Any]:
        """The template roots of a run, before any step: inputs, vars, run, env."""
        return {"inputs": rx.run.inputs, "vars": rx.vars, "run": rx.run.info(),
                "env": self._env}

    def run_limiter(self, workflow: str) -> anyio.CapacityLimiter | None:
        """The per-workflow step limit (``concurrency:``), shared by that workflow's runs."""
        if workflow not in self._run_limiters:
            limit = None
            if workflow in self.catalog:
                limit = self.catalog.get(workflow).definition.concurrency
            self._run_limiters[workflow] = anyio.CapacityLimiter(limit) if limit else None
        return self._run_limiters[workflow]

    def step_type_owner(self, key: str) -> str | None:
        """The plugin that registered a step type, for error messages."""
        return self.registries.step_types.owner(key)

    def observe_step_started(self, run: Run, step: str) -> None:
        """Tell ``step_started`` observers, if any plugin listens."""
        if self._observers["step_started"]:
            self._observe("step_started", run=run, step=step)

    def observe_step_finished(self, run: Run, step: str, outcome: str) -> None:
        """Tell ``step_finished`` observers, if any plugin listens."""
        if self._observers["step_finished"]:
            self._observe("step_finished", run=run, step=step, outcome=outcome)

    def _observe(self, hook: str, **kwargs: Any) -> None:
        if not self._observers.get(hook, True):
            return
        for result in self.pm.call_isolated(hook, **kwargs):
            if inspect.isawaitable(result) and self._tg is not None:
                self._observing += 1
                self._tg.start_soon(self._await_observer, hook, result)

    async def _await_observer(self, hook: str, awaitable: Any) -> None:
        try:
            with anyio.fail_after(OBSERVER_SECONDS):
                await awaitable
        except PLUGIN_ERRORS as exc:  # an observer never aborts anything
            log.error("observer %s failed: %s", hook, exc)
        finally:
            self._observing -= 1


def _with_defaults(schema: Mapping[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """Fill top-level input defaults declared in the schema (``properties.x.default``)."""
    for name, prop in (schema.get("properties") or {}).items():
        if name not in inputs and isinstance(prop, Mapping) and "default" in prop:
            inputs[name] = deepcopy(prop["default"])
    return inputs
