"""The engine: registered workflows, runs in flight, and the services steps use.

An :class:`Engine` is an async context manager owning one task group; every run is a task in
it. It is built from a plugin manager's registries, so it names no step type or agent itself.

Every run records into the engine's :class:`~plait.state.RunStore`: replies wait for the
store to keep what they report, a finished run leaves the engine (the store answers for it),
and :meth:`Engine.recover` picks up the runs a stopped or crashed host left unfinished. The
memory store keeps runs for the life of the process; the SQLite store keeps them on disk.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping
from copy import deepcopy
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc

from plait.config import HostConfig
from plait.definition.compiler import (
    CompiledWorkflow,
    UnknownSignal,
    compile_workflow,
    with_compile_issues,
)
from plait.definition.loader import load
from plait.definition.models import WorkflowDef
from plait.engine.catalog import Catalog
from plait.engine.chaining import Chains
from plait.engine.compensation import compensate
from plait.engine.dead_letters import DeadLetters
from plait.engine.debugging import Debugger
from plait.engine.inputs import reserved_signal, respond
from plait.engine.lineage import kept_lineage, rerun
from plait.engine.scheduler import RunExecution, Sampler, ScopeExecution
from plait.errors import (
    AmbiguousRunId,
    DefinitionError,
    InputsInvalid,
    InvalidRunState,
    LimitReached,
    RunCancelled,
    RunError,
    RunNotFound,
    StepFailed,
    StoreUnavailable,
    TemplateError,
)
from plait.faults import is_plugin_failure
from plait.plugins.manager import PluginManager
from plait.plugins.types import RunInfo
from plait.services.agents import AgentPool
from plait.services.cache import ToolCache
from plait.services.executors import Executors
from plait.services.mcp import McpTools
from plait.services.tools import ToolRunner
from plait.state.recovery import RecoveredRun, StepRecord, count_crashes, replay
from plait.state.run_store import RunPage, RunStore, run_from_row
from plait.state.runs import TERMINAL_EVENTS, Event, Run, new_run_id
from plait.store.memory import MemoryStore
from plait.templates.engine import TemplateEngine, TemplateLimits

if TYPE_CHECKING:
    from plait.telemetry import Metrics, Tracing

__all__ = ["Engine", "template_engine"]

log = logging.getLogger("plait.engine.engine")


_STEP_OUTCOME = {f"step.{s}": s for s in ("succeeded", "failed", "skipped", "cancelled")}
"""The events of a step settling, and the outcome ``step_finished`` reports for each."""
OBSERVER_SECONDS = 10.0
"""How long an async lifecycle observer may take before it is cancelled."""
CANCEL_SECONDS = 5.0
"""How long ``cancel`` waits for the run to wind down before answering with where it is."""
LIVE = ("pending", "running", "paused", "waiting")
SNAPSHOTS_KEPT = 16
"""Compiled definitions of runs whose version the catalog no longer holds, kept by digest."""
STORE_CHECK_SECONDS = 0.25
"""How often a reply waiting for the store looks whether the store can write at all."""
MIN_RUN_ID_PREFIX = 4
"""The shortest run-id prefix looked up as one (a shorter id must be a whole id)."""
AMBIGUOUS_SHOWN = 5
"""How many of the runs an ambiguous prefix matches its error names."""
_FULL_RUN_ID = re.compile(r"[0-9a-f]{32}")
T = TypeVar("T")


class Engine:
    """Compiles workflows, starts and controls runs, and serves steps their tools and agents."""

    def __init__(
        self,
        pm: PluginManager,
        config: HostConfig | None = None,
        *,
        cache: ToolCache | None = None,
        store: RunStore | None = None,
        sampler: Sampler | None = None,
        templates: TemplateEngine | None = None,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.pm = pm
        self.metrics = metrics
        """Where runs, steps, tools and agents are counted (``None``: not counted)."""
        self.tracing = tracing
        """Spans of runs, step attempts, tool calls and completions (``None``: off)."""
        self.config = config or HostConfig()
        limits = self.config.limits
        self.registries = pm.registries
        self.templates = templates or template_engine(pm, self.config)
        """The sandboxed template engine of ``pm``'s plugins (shareable between engines)."""
        self.cache = cache or ToolCache(None)
        self.store: RunStore = (
            store if store is not None else MemoryStore(self.config.store.keep_finished)
        )
        """Where runs are kept (default: in memory, for the life of the process)."""
        self.tools = ToolRunner(
            self.registries.tools,
            self.cache,
            self.config.tools,
            metrics=metrics,
            tracing=tracing,
            executors=Executors(
                self.registries.executor_providers, self.config.executors, self.registries.tools
            ),
        )
        self.agents = AgentPool(
            self.registries.agent_providers, self.config.agents, metrics=metrics, tracing=tracing
        )
        self.catalog = Catalog(self.compile, self.store, keep_steps=limits.compiled_cache_steps)
        self.debugger = Debugger(self)
        """Breakpoints, and what can be done to a run at a pause."""
        self.chains = Chains(self, limits, self._spawn)
        """The ``on:`` triggers of the workflows: a run's end starting others."""
        self.dead_letters = DeadLetters(self, limits)
        """Runs that failed for good, for a person to look at and replay."""
        self.runs: dict[str, Run] = {}
        """Runs not yet finished (a finished run is the store's to answer for)."""
        self.executions: dict[str, RunExecution] = {}
        self.idempotency: dict[str, str] = {}
        self.listeners: list[Callable[[Event], None]] = []
        """Called with every event of every run (subscriptions to all runs)."""
        self.step_limiter = anyio.CapacityLimiter(limits.max_concurrent_steps)
        self.crash_limit = limits.max_crash_restarts
        """Crashes in a row a step attempt may be in flight for before it is quarantined."""
        self.stopping = False
        self.abandoned: set[str] = set()
        """Runs another host took over (see :meth:`abandon`)."""
        self.mcp: McpTools | None = None
        """The configured MCP servers as tool sources, while the engine is entered."""
        self.sampler = sampler
        """Sends a run's ``sampling/createMessage`` to a connected client (the host's)."""
        self._run_limiters: dict[tuple[str, int], anyio.CapacityLimiter] = {}
        self._tree_children: dict[str, int] = {}
        self._store_waits: set[anyio.CancelScope] = set()
        """Replies waiting for the store to keep something (see :meth:`until_kept`)."""
        """Child runs made so far by each top-level run's tree still running."""
        self._snapshots: OrderedDict[str, CompiledWorkflow] = OrderedDict()
        """Definitions runs still execute that the catalog no longer holds, by digest."""
        self._tg: anyio.abc.TaskGroup | None = None
        self._observing = 0
        self._observed = frozenset(
            h
            for h in ("run_started", "run_finished", "step_started", "step_finished")
            if pm.has_impls(h)
        )
        """The lifecycle hooks some plugin implements (none: events skip observing at once)."""
        env_allow = self.config.env.allow
        self._env = {k: os.environ[k] for k in env_allow if k in os.environ}

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        mcp = McpTools(self.tools, self.config.mcp_servers)  # a bad table fails before anything
        self.catalog.restore(await self.store.catalog())
        await self.debugger.load()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        if self.store.durable:  # a memory store never fails to write
            self._tg.start_soon(self._watch_store)
        try:
            self.mcp = await mcp.__aenter__()
        except BaseException:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            self._tg = None
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        if self.mcp is not None:  # the servers' tools go first, as the runs are still there
            mcp, self.mcp = self.mcp, None
            await mcp.__aexit__(None, None, None)
        if self._observing:  # let async observers of finished runs finish (each ≤ 10 s)
            with anyio.move_on_after(OBSERVER_SECONDS):
                while self._observing:
                    await anyio.sleep(0.005)
        self.stopping = True
        self.store.freeze()  # runs in flight stay as they are, to be resumed next start
        if self.store.durable:  # and so do their calls on executors, found again by key
            self.tools.executors.detach()
        self._tg.cancel_scope.cancel()
        try:
            # The body's own exception is not handed to the task group, so it propagates as
            # itself instead of inside an exception group.
            await self._tg.__aexit__(None, None, None)
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True):
                await self.agents.aclose()
                await self.tools.executors.aclose()
        return None

    # -- workflows ---------------------------------------------------------------------------

    def compile(
        self,
        source: WorkflowDef | Mapping[str, Any] | str | os.PathLike[str],
        *,
        text_only: bool = False,
        check_plugins: bool = True,
    ) -> CompiledWorkflow:
        """Load (if needed) and compile a workflow against this engine's plugins.

        ``text_only``: a string is the definition's text, never a file name (see ``load``).
        ``check_plugins``: refuse tools no plugin registers and agents the config does not
        name; off for a run's stored snapshot, which resumes and fails only at the step.
        """

        def compile_(wf: WorkflowDef) -> CompiledWorkflow:
            return compile_workflow(
                wf,
                self.registries.step_types,
                self.templates,
                self.config.limits,
                tools=self.registries.tools if check_plugins else None,
                agents=frozenset(self.config.agents) if check_plugins else None,
                tool_sources=frozenset(self.config.mcp_servers),
                executors=self.tools.executors.problem if check_plugins else None,
            )

        if isinstance(source, WorkflowDef):
            return compile_(source)
        try:
            wf = self.load(source, text_only=text_only)
        except DefinitionError as exc:
            # Every problem at once: those of the rest of the workflow join the loader's.
            raise with_compile_issues(exc, compile_) from None
        return compile_(wf)

    def register(
        self, source: WorkflowDef | Mapping[str, Any] | str | os.PathLike[str]
    ) -> CompiledWorkflow:
        """Compile and register a workflow so runs and sub-workflow steps can name it.

        With a store the new version is queued for the disk; await :meth:`committed` before
        telling anyone it exists.
        """
        return self.add(self.compile(source))

    def add(self, compiled: CompiledWorkflow) -> CompiledWorkflow:
        """Register a compiled workflow (its ``on:`` triggers checked against the others).

        Raises:
            DefinitionError: a trigger watches a workflow that is not registered, or closes a
                loop of triggers.
        """
        self.chains.check(compiled)
        return self.catalog.add(compiled)

    async def committed(self) -> None:
        """Return once every change made so far is kept (at once in memory)."""
        await self.until_kept(self.store.sync)

    def load(
        self,
        source: Mapping[str, Any] | str | os.PathLike[str],
        *,
        text_only: bool = False,
    ) -> WorkflowDef:
        """Read a definition (with the formats plugins add through ``load_workflow``)."""
        return load(source, hook=self._load_hook, text_only=text_only)

    def _load_hook(self, text: str, path: str | None) -> Mapping[str, Any] | None:
        results = self.pm.call_isolated("load_workflow", firstresult=True, source=text, path=path)
        return next((r for r in results if r is not None), None)

    async def snapshot(self, digest: str | None, name: str, version: int) -> CompiledWorkflow:
        """The compiled definition a stored run executes: its own snapshot, by digest.

        Raises:
            DefinitionError: the snapshot is missing or no longer compiles (a step type's
                plugin is gone, say).
        """
        if digest is None:
            return self.catalog.get(name, version)
        found = self.catalog.find(digest) or self._snapshots.get(digest)
        if found is None:  # not in the catalog: only in the store
            definition = await self.store.definition(digest)
            if definition is None:
                raise DefinitionError(
                    f"the definition snapshot {digest[:12]} of workflow "
                    f"{name!r} version {version} is missing from the store"
                )
            # off the event loop: a large definition compiles for seconds
            found = await anyio.to_thread.run_sync(
                lambda: self.compile(definition, check_plugins=False)
            )
            self._snapshots[digest] = found
            while len(self._snapshots) > SNAPSHOTS_KEPT:
                self._snapshots.popitem(last=False)
            found.version = version
        return found

    # -- runs --------------------------------------------------------------------------------

    def prepare(
        self,
        compiled: CompiledWorkflow,
        inputs: Mapping[str, Any] | None,
        *,
        run_id: str | None = None,
        parent_id: str | None = None,
        parent_step: str | None = None,
        idempotency_key: str | None = None,
        rerun_of: Mapping[str, Any] | None = None,
    ) -> Run:
        """Check inputs (applying schema defaults) and create the run record.

        ``rerun_of``: the run (and step) a rerun re-runs, kept in its ``run.created`` event.
        """
        values = _with_defaults(compiled.definition.inputs, dict(inputs or {}))
        problems = compiled.check_inputs(values)
        if problems:
            raise InputsInvalid(compiled.name, problems)
        run = Run(
            id=run_id or new_run_id(),
            workflow=compiled.name,
            version=compiled.version,
            inputs=values,
            parent_id=parent_id,
            total_steps=len(compiled.scope.steps),
            digest=compiled.digest,
            parent_step=parent_step,
            idempotency_key=idempotency_key,
            rerun_of=dict(rerun_of) if rerun_of else None,
        )
        self._adopt(run)
        created: dict[str, Any] = {
            "workflow": compiled.name,
            "version": compiled.version,
            "inputs": values,
        }
        if run.rerun_of is not None:
            created["origin"] = run.rerun_of
        if self.tracing is not None and parent_id is None:
            run.traceparent = created["traceparent"] = self.tracing.traceparent()
        run.record("run.created", None, created)
        return run

    def _adopt(self, run: Run) -> None:
        self.store.attach(run)
        self.runs[run.id] = run
        if run.idempotency_key is not None:
            self.idempotency[run.idempotency_key] = run.id
        run.listen(self._on_event)

    def _on_event(self, event: Event) -> None:
        for listener in self.listeners:
            listener(event)
        if self._observed:
            self._observe_event(event)
        if event.type in TERMINAL_EVENTS:  # kept and told: from now on the store answers
            self._tree_children.pop(event.run_id, None)
            run = self.runs.pop(event.run_id, None)
            if run is not None:
                if run.idempotency_key is not None:
                    self.idempotency.pop(run.idempotency_key, None)
                self.store.release(run)

    async def start(
        self,
        compiled: CompiledWorkflow,
        inputs: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        origin: Any = None,
        paused: bool = False,
        rerun_of: Mapping[str, Any] | None = None,
        reuse: Callable[[Run], dict[str, StepRecord]] | None = None,
    ) -> Run:
        """Create a run and start it in the background; returns once its creation is kept.

        With an ``idempotency_key`` already used, the existing run is returned instead.
        ``origin`` is the client connection that asked (sampling asks it first). A ``paused``
        run stops before its first step, for a debugger to go on with it.

        A rerun (``plait.engine.lineage``) gives ``rerun_of`` (recorded on the run) and
        ``reuse``, called with the new run before it starts: it records the results the run
        takes over and returns the records its scheduler settles those steps from.
        """
        if self._tg is None:
            raise RuntimeError("the engine is not started: use `async with engine:`")
        if idempotency_key is not None:
            existing = await self._by_key(idempotency_key)
            if existing is not None:
                values = _with_defaults(compiled.definition.inputs, dict(inputs or {}))
                if existing.workflow != compiled.name or existing.inputs != values:
                    # The same key for another request is a client's mistake, not a repeat.
                    raise InputsInvalid(
                        compiled.name,
                        [
                            f"idempotency key {idempotency_key!r} was used for run "
                            f"{existing.id} of workflow {existing.workflow!r} with other "
                            "inputs; use a new key for a new request"
                        ],
                    )
                return existing
        self._check_room()
        run = self.prepare(
            compiled, inputs, run_id=run_id, idempotency_key=idempotency_key, rerun_of=rerun_of
        )
        run.origin = origin
        reused = reuse(run) if reuse is not None else None
        rx = RunExecution(self, run, recovered=reused, limiter=self.run_limiter(compiled))
        self.debugger.attach_if_watched(rx, compiled.name)
        if paused:
            self.debugger.attach(rx, compiled.name)
            rx.pause()
        self.executions[run.id] = rx
        self._tg.start_soon(self.execute, rx, compiled, False, True)
        return await self.until_kept(run.committed)

    def _check_room(self) -> None:
        """Refuse a new run while the host has ``max_live_runs`` in flight."""
        limit = self.config.limits.max_live_runs
        if len(self.executions) >= limit:
            raise LimitReached(
                f"the host has {len(self.executions)} runs in flight (max_live_runs = {limit}); "
                "retry later"
            )

    async def _by_key(self, key: str) -> Run | None:
        run_id = self.idempotency.get(key)
        if run_id is None:
            run_id = await self.store.run_for_key(key) or self.idempotency.get(key)
        return None if run_id is None else await self.load_run(run_id)

    async def execute(
        self,
        rx: RunExecution,
        compiled: CompiledWorkflow,
        resume: bool = False,
        quiet: bool = False,
    ) -> dict[str, Any] | None:
        """Run to a terminal state; returns the outputs or raises the failure (also recorded).

        With ``resume``, the run continues from its recovered state: a paused or waiting run
        stays so, and the steps its events settled are replayed instead of run. ``quiet``
        returns ``None`` instead of raising a failure (a run in the background: the failure is
        recorded on it; one coroutine less per run in flight than a wrapper catching it).
        """
        if self.tracing is None:
            return await self._execute(rx, compiled, resume, quiet)
        run = rx.run
        with self.tracing.run(
            run.id,
            run.workflow,
            run.version,
            traceparent=run.traceparent,
            child=run.parent_id is not None,
            resumed=resume,
        ) as span:
            try:
                return await self._execute(rx, compiled, resume, quiet)
            finally:
                span.set_attribute("plait.status", run.status)
                if run.status == "failed" and run.error:
                    self.tracing.failed(span, run.error)

    async def _execute(
        self, rx: RunExecution, compiled: CompiledWorkflow, resume: bool, quiet: bool
    ) -> dict[str, Any] | None:
        run = rx.run
        scope = None
        try:
            with rx.cancel_scope as cancel_scope:
                if not resume or run.status == "pending":
                    run.set_status("running")
                    if rx.paused:  # started paused: held before its first step
                        run.set_status("paused", reason="started paused")
                if self.metrics is not None:
                    self.metrics.run_started(run.workflow)
                scope = rx.top = ScopeExecution(rx, compiled.scope, "", None)
                rx.vars.update(self._render_top(compiled.vars, scope, "vars") or {})
                if rx.debug is not None and rx.debug.restored_vars:  # set by debug/setVar
                    rx.vars.update(rx.debug.restored_vars)
                await scope.execute()
                outputs = self._render_top(compiled.outputs, scope, "outputs") or {}
            if cancel_scope.cancelled_caught:
                raise RunCancelled(f"run {run.id} was cancelled")
        except RunCancelled as exc:
            if run.id in self.abandoned:
                self._dropped(rx, quiet)
                return None
            self._finish(rx, "cancelled", compiled, error=exc.to_dict())
            if quiet:
                return None
            raise
        except anyio.get_cancelled_exc_class():
            if run.id in self.abandoned:
                self._dropped(rx, True)
            elif not self.store.durable or not self.stopping:
                with anyio.CancelScope(shield=True):
                    self._finish(
                        rx,
                        "cancelled",
                        compiled,
                        error={"type": "cancelled", "message": "the host stopped"},
                    )
            raise  # with a store, the next start resumes the run
        except RunError as exc:
            error = exc.error if isinstance(exc, StepFailed) else exc.to_dict()
            await compensate(rx, compiled)  # the saga's undo, before the run fails
            self._finish(rx, "failed", compiled, error=error)
            if quiet:
                return None
            raise
        run.outputs = outputs
        self._finish(rx, "succeeded", outputs=outputs)
        return outputs

    def abandon(self, run_ids: Collection[str]) -> list[str]:
        """Stop the runs ``run_ids`` here without recording anything: another host owns them
        now (its store refused this host's changes to them), and resumes them from what is
        kept. Nothing of their end runs here (no compensation, no chained run, no dead
        letter). Returns the ids of those that were live."""
        stopped = []
        for run_id in run_ids:
            self.abandoned.add(run_id)
            rx = self.executions.get(run_id)
            if rx is not None:
                rx.cancel_scope.cancel()
                stopped.append(run_id)
            elif run_id in self.runs:  # not executing (restored, never started): forget it
                self._forget(run_id)
        return stopped

    def adopting(self, run_ids: Collection[str]) -> None:
        """This host takes ``run_ids`` (back) over: they are no longer abandoned here."""
        self.abandoned.difference_update(run_ids)

    def _dropped(self, rx: RunExecution, quiet: bool) -> None:
        """An abandoned run leaves this host's memory as it is, unfinished."""
        self._forget(rx.run.id)
        log.warning("run %s is no longer run here: another host took it over", rx.run.id)
        if not quiet:
            raise RunCancelled(f"run {rx.run.id} was taken over by another host")

    def _forget(self, run_id: str) -> None:
        self.executions.pop(run_id, None)
        self._tree_children.pop(run_id, None)
        run = self.runs.pop(run_id, None)
        if run is not None and run.idempotency_key is not None:
            self.idempotency.pop(run.idempotency_key, None)

    def _render_top(self, template: Any, scope: ScopeExecution, field: str) -> Any:
        try:
            return template.render(scope.context)
        except TemplateError as exc:
            raise exc.located(field=field) from None

    def _finish(
        self, rx: RunExecution, status: str, compiled: CompiledWorkflow | None = None, **data: Any
    ) -> None:
        run = rx.run
        for path, state in run.steps.items():
            if state.status in ("pending", "running", "waiting"):
                run.set_step(path, "cancelled")
        if compiled is not None and status != "succeeded":
            for step in compiled.scope.steps:  # the rest, never started, are cancelled too
                if step.id not in run.steps:
                    run.set_step(step.id, "cancelled", {"reason": "never started"})
        if "error" in data:
            run.error = data["error"]
        if status == "failed":
            self.dead_letters.record(run)  # queued with the failure: both kept, or neither
        run.set_status(status, **data)  # type: ignore[arg-type]
        if self.metrics is not None:
            began, ended = run.started_at, run.finished_at
            seconds = ended - began if began is not None and ended is not None else None
            self.metrics.run_finished(run.workflow, status, seconds)
        self.executions.pop(run.id, None)
        self.chains.ended(run)

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
        """Run a sub-workflow inside the calling step, so cancelling the parent cancels it.

        A ``resumed`` step attempt (in flight when the host stopped) finds the child it had
        started and continues that one; only such an attempt can have one.
        """
        limit = self.config.limits.max_run_depth
        if parent.depth + 1 > limit:
            raise StepFailed(
                step_path,
                f"sub-workflow nesting is deeper than {limit} "
                "(max_run_depth); does a workflow call itself?",
            )
        parent_step = f"{step_path}#{attempt}"
        if resumed:
            row = await self.store.child_run(parent.run.id, parent_step)
            if row is not None:
                return await self._continue_child(parent, row, step_path)
        made = self._tree_children.get(parent.root, 0)
        if made >= self.config.limits.max_child_runs:
            raise StepFailed(
                step_path,
                f"the run tree of run {parent.root} already made {made} child runs "
                f"(max_child_runs = {self.config.limits.max_child_runs}); a sub-workflow "
                "fans out further than this host allows",
            )
        try:
            self._check_room()
        except LimitReached as exc:
            raise StepFailed(step_path, str(exc)) from None
        self._tree_children[parent.root] = made + 1
        compiled = self.catalog.get(name, version)
        try:
            child = self.prepare(compiled, inputs, parent_id=parent.run.id, parent_step=parent_step)
        except InputsInvalid as exc:
            raise StepFailed(step_path, str(exc)) from None
        child.origin = parent.run.origin
        parent.run.record("run.child", step_path, {"child": child.id, "workflow": name})
        rx = RunExecution(
            self, child, parent.depth + 1, limiter=self.run_limiter(compiled), root=parent.root
        )
        self.debugger.attach_if_watched(rx, compiled.name)
        self.executions[child.id] = rx
        return await self._child_outcome(rx, compiled, step_path, resume=False)

    async def _child_outcome(
        self, rx: RunExecution, compiled: CompiledWorkflow | None, step_path: str, *, resume: bool
    ) -> dict[str, Any]:
        child = rx.run
        try:
            if compiled is None:
                raise RunError(child.error["message"] if child.error else "cannot resume")
            outputs = await self.execute(rx, compiled, resume=resume)
        except RunError as exc:
            raise StepFailed(
                step_path, f"child run {child.id} of workflow {child.workflow!r} failed: {exc}"
            ) from None
        assert outputs is not None  # not quiet: a failure raises
        return outputs

    async def _continue_child(
        self, parent: RunExecution, row: dict[str, Any], step_path: str
    ) -> dict[str, Any]:
        if row["status"] == "succeeded":
            return dict(row["outputs"] or {})
        if row["status"] in ("failed", "cancelled"):
            message = (row["error"] or {}).get("message", row["status"])
            raise StepFailed(
                step_path,
                f"child run {row['id']} of workflow {row['workflow']!r} {row['status']}: {message}",
            )
        rx, compiled = await self._restore(row, parent.depth + 1, root=parent.root)
        return await self._child_outcome(rx, compiled, step_path, resume=True)

    # -- recovery ----------------------------------------------------------------------------

    async def recover(
        self, run_ids: Collection[str] | None = None, *, hold: bool = False, start: bool = True
    ) -> list[Run]:
        """Resume every top-level run the store holds unfinished (or only ``run_ids``).

        Paused runs stay paused and waiting runs keep waiting (with their deadlines); a run
        whose definition no longer compiles fails with the reason instead of vanishing. With
        ``hold``, no step starts until the run is resumed or cancelled (``plait runs cancel``
        on a data dir uses this to end a run without running any of it). Without ``start``
        the run is restored but not executed at all, not even the steps that were in flight:
        what is recorded on it (a signal, a pause) is for the host that starts next.
        """
        if self._tg is None:
            return []
        restored = []
        for row in await self.store.unfinished_runs():
            if run_ids is not None and row["id"] not in run_ids:
                continue
            rx, compiled = await self._restore(row, 0)
            if hold:
                rx.pause()
            restored.append((rx, compiled))
        # Every run.recovered is kept before any step runs again: a step that kills the host
        # at once must still have this crash counted against it (see max_crash_restarts).
        await self.until_kept(self.store.sync)
        for rx, compiled in restored:
            if compiled is not None and start:
                self._tg.start_soon(self.execute, rx, compiled, True, True)
        if run_ids is None and start:  # the host's own start: its housekeeping too
            self.dead_letters.prune()
            self._tg.start_soon(self.chains.catch_up)
        return [rx.run for rx, _ in restored]

    async def _restore(
        self, row: dict[str, Any], depth: int, *, root: str | None = None
    ) -> tuple[RunExecution, CompiledWorkflow | None]:
        """Rebuild a stored run in memory from its events, ready to execute again."""
        events = await self.store.events(row["id"])
        state = replay(events)
        run = run_from_row(row)
        _load_state(run, events, state)
        compiled: CompiledWorkflow | None = None
        problem: Exception | None = None
        try:
            compiled = await self.snapshot(row["digest"], row["workflow"], row["version"])
        except (DefinitionError, LookupError) as exc:
            problem = exc
        self._adopt(run)
        limiter = self.run_limiter(compiled) if compiled is not None else None
        rx = RunExecution(
            self,
            run,
            depth,
            recovered=state.steps,
            limiter=limiter,
            root=root,
            careful=self.store.after_crash,
        )
        self.executions[run.id] = rx
        self.debugger.attach_if_watched(rx, run.workflow)
        self.debugger.restore(rx, events)
        if row["status"] == "paused":
            rx.pause()
            run.reason = _pause_reason(events)
        crash = self.store.after_crash
        interrupted = state.in_flight
        run.record(
            "run.recovered",
            None,
            {"status": row["status"], "interrupted": interrupted, "crash": crash},
        )
        count_crashes(state.steps, interrupted, crashed=crash)
        if problem is not None:
            log.error("cannot resume run %s: %s", run.id, problem)
            self._finish(
                rx,
                "failed",
                error={
                    "type": "definition",
                    "message": f"cannot resume after a restart: workflow {run.workflow!r} version "
                    f"{run.version} no longer loads: {problem}",
                },
            )
            return rx, None
        return rx, compiled

    # -- looking runs up ---------------------------------------------------------------------

    def _spawn(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` in the engine's task group (it ends with the engine)."""
        if self._tg is not None:
            self._tg.start_soon(work)

    async def rerun(
        self,
        run_id: str,
        step: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        version: int | None = None,
        config: Mapping[str, Any] | None = None,
        origin: Any = None,
    ) -> Run:
        """A new run from run ``run_id``, from ``step`` on (see :func:`lineage.rerun`): the
        one way a rerun is made, for ``runs/rerun``, ``plait runs rerun`` and dead letters."""
        return await rerun(
            self, run_id, step, inputs=inputs, version=version, config=config, origin=origin
        )

    def current_workflow(self, name: str) -> CompiledWorkflow:
        """The current version of a registered workflow (raises WorkflowNotFound)."""
        return self.catalog.get(name)

    async def load_run(self, run_id: str) -> Run:
        """The run with that id (or a unique prefix of it, see :meth:`resolve_run_id`): in
        memory, else from the store; raises :class:`RunNotFound`."""
        run = self.runs.get(run_id)
        if run is None:
            run_id = await self.resolve_run_id(run_id)
            run = self.runs.get(run_id)
        return run if run is not None else await self.kept_run(run_id)

    async def resolve_run_id(self, run_id: str) -> str:
        """The whole id of the run ``run_id`` names, which may be the first characters of it.

        Every method taking a run id goes through here. A live run's id, a whole run id (32
        hex digits) and anything shorter than :data:`MIN_RUN_ID_PREFIX` are taken as they
        are, without asking the store; otherwise an exact id wins, then the one run whose id
        starts with it. An id that names nothing comes back as it is (the lookup that follows
        says not found).

        Raises:
            AmbiguousRunId: more than one run's id starts with it (the error names them).
        """
        if run_id in self.runs or len(run_id) < MIN_RUN_ID_PREFIX or _FULL_RUN_ID.fullmatch(run_id):
            return run_id
        found = await self.store.run_ids_starting(run_id, AMBIGUOUS_SHOWN + 1)
        if len(found) == 1:
            return found[0]
        if not found or run_id in found:
            return run_id
        raise AmbiguousRunId(run_id, found[:AMBIGUOUS_SHOWN], more=len(found) > AMBIGUOUS_SHOWN)

    async def until_kept(self, wait: Callable[[], Awaitable[T]]) -> T:
        """``await wait()``, a wait for the store to keep something, given up with
        :class:`StoreUnavailable` once the store reports it cannot write: a reply is never
        held until a full disk has room again. What was queued stays queued and is kept when
        the store can write again."""
        while True:
            self.check_writable(
                "what this request changed is queued, and kept once the store can write again"
            )
            with anyio.CancelScope() as scope:  # cancelled by _watch_store on trouble
                self._store_waits.add(scope)
                try:
                    return await wait()
                finally:
                    self._store_waits.discard(scope)

    async def _watch_store(self) -> None:
        """Wake the replies waiting for a commit whenever the store cannot write."""
        while True:
            await self.store.troubled()
            for scope in list(self._store_waits):
                scope.cancel()
            await anyio.sleep(STORE_CHECK_SECONDS)  # still in trouble: newcomers at this pace

    def check_writable(self, note: str = "") -> None:
        """Raise :class:`StoreUnavailable` (with ``note``) while the store cannot write."""
        reason = self.store.unavailable
        if reason is not None:
            where = str(self.store.describe().get("path", ":memory:"))
            raise StoreUnavailable(where, f"{reason} ({note})" if note else reason)

    async def kept_run(self, run_id: str) -> Run:
        """The run as the store has kept it (its row, and for an unfinished run its committed
        events): a run no longer in memory, or a live one whose view cannot wait for the
        disk."""
        run_id = await self.resolve_run_id(run_id)
        run = await self.store.load_run(run_id)
        if run is None:
            raise RunNotFound(run_id)
        if not run.finished:  # its events too: what it asks (questions), where to follow on
            events = await self.store.events(run_id)
            _load_state(run, events, replay(events))
        elif run.rerun_of is None:  # what a finished rerun's rows leave out
            await kept_lineage(self.store, run)
        return run

    def wait(self, run_id: str) -> Awaitable[Run]:
        """Await run ``run_id``'s end (kept): the run, once it is terminal.

        A run in memory is awaited directly, without a coroutine of this method in between
        (each waiter holds its await chain for as long as the run goes on).
        """
        run = self.runs.get(run_id)
        return run.wait() if run is not None else self._load_and_wait(run_id)

    async def _load_and_wait(self, run_id: str) -> Run:
        return await (await self.load_run(run_id)).wait()

    async def events(self, run_id: str, since: int = 0, limit: int | None = None) -> list[Event]:
        """A run's kept events with ``seq > since``, oldest first."""
        run = self.runs.get(run_id)  # in memory: every event, the kept ones up to published
        if run is None:
            run_id = await self.resolve_run_id(run_id)
            run = self.runs.get(run_id)
        if run is not None:
            end = run.published if limit is None else min(run.published, since + limit)
            return run.events[since:end]
        events = await self.store.events(run_id, since, limit)
        # Every kept run has events: only an empty answer needs asking whether it exists.
        if not events and await self.store.run_row(run_id) is None:
            raise RunNotFound(run_id)
        return events

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
        cursor: tuple[float, str] | None = None,
        limit: int = 50,
    ) -> RunPage:
        """Top-level runs, newest first, filtered, a page at a time."""
        return await self.store.list_runs(
            workflow=workflow,
            status=status,
            created_after=created_after,
            created_before=created_before,
            cursor=cursor,
            limit=limit,
        )

    # -- control -----------------------------------------------------------------------------

    async def _live(self, run_id: str, action: str, allowed: tuple[str, ...]) -> RunExecution:
        run = await self.load_run(run_id)
        rx = self.executions.get(run.id)
        if rx is None or run.status not in allowed:
            raise InvalidRunState(run.id, run.status, action)
        return rx

    async def cancel(self, run_id: str) -> Run:
        """Cancel a run: running steps are cancelled, the rest marked cancelled.

        Returns once the run has ended (or after a few seconds, as it then stands).
        """
        rx = await self._live(run_id, "cancel", LIVE)
        self.cancel_now(rx.run.id)
        with anyio.move_on_after(CANCEL_SECONDS):
            await rx.run.wait()
        return rx.run

    def cancel_now(self, run_id: str) -> bool:
        """Start cancelling a run in memory without waiting; False if it is not live."""
        rx = self.executions.get(run_id)
        if rx is None:
            return False
        # Steps held by a pause are cancelled where they wait: they never start.
        rx.cancel_scope.cancel()  # entering a scope cancelled early cancels at once
        return True

    async def pause(self, run_id: str) -> Run:
        """Stop starting new steps of a run; running ones finish.

        Returns the run at once; ``await run.view()`` (or ``run.committed()``) to know the
        change is kept. The same holds for :meth:`resume`.
        """
        rx = await self._live(run_id, "pause", ("running", "waiting"))
        rx.pause()
        rx.run.set_status("paused")
        return rx.run

    async def resume(self, run_id: str) -> Run:
        """Continue a paused run."""
        rx = await self._live(run_id, "resume", ("paused",))
        # Waiting iff a step waits and none is ready or running (the steps a pause held are
        # ready). Right after a restart a waiting step may not have re-entered its wait yet;
        # its recovered record still says where it is.
        waiting = not rx.busy and (
            rx.waiting or any(rec.status == "waiting" for rec in (rx.recovered or {}).values())
        )
        rx.run.set_status("waiting" if waiting else "running")
        rx.resume()
        return rx.run

    async def signal(self, run_id: str, event: str, data: Any = None) -> None:
        """Deliver a signal to a run's ``wait`` steps (kept until one takes it).

        Raises:
            UnknownSignal: no step of the run's workflow declares ``event``
                (``StepType.signals``) and no step of the run is waiting for it now.
        """
        run_id = await self.resolve_run_id(run_id)
        run = await self.load_run(run_id)
        if reserved_signal(event):  # an answer goes through respond, which checks it
            raise UnknownSignal(
                run.workflow,
                event,
                f"the signal name {event!r} is reserved for the answers of input steps: "
                "answer with runs/respond (`plait runs respond`)",
            )
        if run.done or run_id not in self.executions:
            raise InvalidRunState(run_id, run.status, "signal")
        # The events steps wait for right now: a step type may wait without declaring.
        awaited = run.awaited_signals()
        if event not in awaited:
            try:
                compiled = await self.snapshot(run.digest, run.workflow, run.version)
            except (DefinitionError, LookupError):
                compiled = None  # its definition cannot tell: keep the signal, as ever
            problem = compiled.signal_problem(event, awaited) if compiled is not None else None
            if problem is not None:
                raise UnknownSignal(run.workflow, event, problem)
            if run.done:  # it ended while its definition was read from the store
                raise InvalidRunState(run_id, run.status, "signal")
        run.signal(event, data)
        await self.until_kept(run.committed)

    async def respond(
        self,
        run_id: str,
        step: str,
        answer: Any,
        *,
        by: str | None = None,
        channel: str = "api",
    ) -> None:
        """Answer the question an ``input`` step waits for (:func:`plait.engine.inputs.respond`)."""
        await respond(self, run_id, step, answer, by=by, channel=channel)

    # -- services for the execution layer ----------------------------------------------------

    def root_context(self, rx: RunExecution) -> dict[str, Any]:
        """The template roots of a run, before any step: inputs, vars, run, env (a new dict:
        the run's top scope adds its ``steps`` to it)."""
        return {"inputs": rx.run.inputs, "vars": rx.vars, "run": rx.run.info(), "env": self._env}

    def run_limiter(self, compiled: CompiledWorkflow) -> anyio.CapacityLimiter | None:
        """The per-workflow step limit (``concurrency:``) of the version a run executes.

        Runs of the workflow that declare the same limit share it; a version declaring another
        limit gets a limiter of its own, so a new version's limit holds from its first run
        (runs of older versions keep theirs until they end).
        """
        limit = compiled.definition.concurrency
        if not limit:
            return None
        key = (compiled.name, limit)
        limiter = self._run_limiters.get(key)
        if limiter is None:
            limiter = self._run_limiters[key] = anyio.CapacityLimiter(limit)
        return limiter

    def step_type_owner(self, key: str) -> str | None:
        """The plugin that registered a step type, for error messages."""
        return self.registries.step_types.owner(key)

    def _observe_event(self, event: Event) -> None:
        """Tell the lifecycle observers of a told (so committed) event, with a snapshot."""
        kind = event.type
        extra: dict[str, Any]
        if kind == "step.started":
            hook, extra = "step_started", {"step": event.step}
        elif kind in _STEP_OUTCOME:
            hook, extra = "step_finished", {"step": event.step, "outcome": _STEP_OUTCOME[kind]}
        elif kind in TERMINAL_EVENTS:
            hook, extra = "run_finished", {"outcome": kind[4:]}
        elif kind == "run.started" or (
            kind == "run.recovered" and event.data.get("status") != "pending"
        ):
            hook, extra = "run_started", {}  # a recovered pending run is started afresh
        else:
            return
        run = self.runs.get(event.run_id)
        if run is None or hook not in self._observed:
            return
        # Told after its commit, the run may have gone on meanwhile: a start is shown as it
        # was at the start (running, no outcome yet).
        info = RunInfo.of(run, started=True) if hook == "run_started" else RunInfo.of(run)
        self._observe(hook, run=info, **extra)

    def _observe(self, hook: str, **kwargs: Any) -> None:
        for result in self.pm.call_isolated(hook, **kwargs):
            if inspect.isawaitable(result) and self._tg is not None:
                self._observing += 1
                self._tg.start_soon(self._await_observer, hook, result)

    async def _await_observer(self, hook: str, awaitable: Any) -> None:
        try:
            with anyio.fail_after(OBSERVER_SECONDS):
                await awaitable
        except BaseException as exc:  # an observer never aborts anything
            if not is_plugin_failure(exc):
                raise
            log.error("observer %s failed: %s: %s", hook, type(exc).__name__, exc)
        finally:
            self._observing -= 1


def template_engine(pm: PluginManager, config: HostConfig) -> TemplateEngine:
    """A template engine with ``config``'s limits and the filters ``pm``'s plugins add."""
    limits = config.limits
    templates = TemplateEngine(
        TemplateLimits(max_output=limits.template_output_bytes, max_seconds=limits.template_seconds)
    )
    pm.call_isolated("prepare_jinja_environment", env=templates.env)
    return templates


def _with_defaults(schema: Mapping[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """Fill top-level input defaults declared in the schema (``properties.x.default``)."""
    for name, prop in (schema.get("properties") or {}).items():
        if name not in inputs and isinstance(prop, Mapping) and "default" in prop:
            inputs[name] = deepcopy(prop["default"])
    return inputs


def _load_state(run: Run, events: list[Event], state: RecoveredRun) -> None:
    """Put a recovered run's events, step states, signals and conversations in place."""
    run.events = events
    run.seq = run.published = state.seq
    run.finished = False
    run.steps = {path: rec.state() for path, rec in state.steps.items()}
    run.conversations = state.conversations
    run.restore_signals(state.signals)
    run.rerun_of = state.origin
    run.traceparent = state.traceparent


def _pause_reason(events: list[Event]) -> str | None:
    """Why a recovered paused run was paused (its last ``run.paused`` event says)."""
    for event in reversed(events):
        if event.type == "run.paused":
            reason = event.data.get("reason")
            return reason if isinstance(reason, str) else None
    return None
