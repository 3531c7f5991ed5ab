"""The host: configuration, plugins, cache and engine wired together, embeddable in a program."""

from __future__ import annotations

import gc
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

import anyio
import anyio.abc

from plait.config import HostConfig, TracingSettings, load_config
from plait.definition.compiler import CompiledWorkflow
from plait.definition.models import WorkflowDef
from plait.engine.analytics import run_stats
from plait.engine.catalog import CatalogEntry
from plait.engine.dead_letters import DeadLetters
from plait.engine.debugging import Debugger
from plait.engine.engine import Engine
from plait.engine.lineage import diff_runs
from plait.engine.schedules import Schedules
from plait.errors import (
    AgentFailed,
    ConfigError,
    DefinitionError,
    Issue,
    StoreError,
    StoreUnavailable,
)
from plait.host.cluster import Cluster
from plait.host.compose import build_engine, build_schedules, tool_cache
from plait.host.logs import run_lines, run_log
from plait.host.observing import check_endpoint, cluster_levels, levels
from plait.host.watchdog import LoopWatchdog
from plait.plugins.manager import PluginManager
from plait.plugins.threads import abandoned_threads
from plait.plugins.types import Tool
from plait.rpc.dispatcher import Dispatcher
from plait.rpc.errors import RpcError
from plait.rpc.methods.api import register_api
from plait.rpc.methods.debug import register_debug
from plait.rpc.methods.dlq import register_dlq
from plait.rpc.methods.mcp import register_mcp
from plait.rpc.methods.schedules import register_schedules
from plait.rpc.methods.stats import register_stats
from plait.rpc.methods.web import register_web
from plait.rpc.methods.webhooks import register_webhooks
from plait.rpc.session import Session, SessionClosed
from plait.rpc.transports.stdio import serve_stdio
from plait.rpc.transports.websocket import LOOPBACK, RPC_PATH, WebSocketTransport
from plait.rpc.web import WebAccess
from plait.services.mcp import McpTools
from plait.services.webhooks import Webhooks
from plait.state.run_store import RunPage, RunStore
from plait.state.runs import Event, Run
from plait.store.datadir import (
    TOKEN_FILE,
    DataDirLock,
    ensure_private_dir,
    remove_host_info,
    write_host_info,
    write_private,
)
from plait.store.memory import MemoryStore
from plait.store.postgres import PostgresStore
from plait.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from plait.telemetry import Metrics, Tracing

__all__ = ["Host", "tune_gc"]

log = logging.getLogger("plait.host")

WORKFLOW_SUFFIXES = (".yaml", ".yml", ".json")
"""Files in a workflows folder that are read as workflows."""
PACE_SECONDS = 0.25
"""How long event publication waits for a congested connection to drain before going on."""


GC_THRESHOLDS = (100_000, 50, 20)
"""Collection thresholds for a process that is a plait host (see :func:`tune_gc`)."""


def tune_gc() -> None:
    """Collect garbage less often, for a process whose job is to be a plait host.

    A host holds many small live objects (runs, steps, events); with CPython's default
    thresholds the cyclic collector rescans them over and over while runs pile up, which cost
    about a fifth of the throughput with 10,000 runs in flight (``bench/``). Everything loaded
    at start is frozen out of collection, and the first generation holds 100,000 objects before
    it is collected. ``plait serve`` calls this; an embedding program decides for itself.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Host:
    """The whole plait host in one object.

    Example::

        host = plait.Host(data_dir=".plait")
        async with host:
            run_id = await host.start_run("hello", {"name": "ada"})
            run = await host.wait(run_id)
    """

    def __init__(
        self,
        config: HostConfig | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        workflows: str | os.PathLike[str] | None = None,
        plugins: Iterable[object] = (),
        pm: PluginManager | None = None,
        recover_runs: bool = True,
        tracing: Tracing | None = None,
    ) -> None:
        """``tracing``: spans to this tracer instead of the one ``[tracing]`` configures (an
        embedding application's, or a test's in-memory exporter); its owner shuts it down."""
        self.config = config or load_config()
        self.recover_runs = recover_runs
        """Resume unfinished runs at start (off for commands that pick runs themselves)."""
        if data_dir is not None:
            self.config.host.data_dir = str(data_dir)
        if workflows is not None:
            self.config.host.workflows = str(workflows)
        self.pm = pm or self.config.plugin_manager(plugins)
        self.started_at: float | None = None
        self.load_errors: dict[str, DefinitionError] = {}
        self.engine: Engine | None = None
        """The engine, while the host runs."""
        self.watchdog: LoopWatchdog | None = None
        """The event-loop watchdog, while the host runs."""
        self.recovered: list[Run] = []
        """The runs the last start found unfinished and resumed."""
        self.schedules: Schedules | None = None
        """The schedules and the task that fires them, while the host runs (not in a host
        that does not resume runs: a command working on a data dir fires nothing)."""
        self.cluster: Cluster | None = None
        """This host's part among several on one PostgreSQL store, while it runs."""
        self._stack: AsyncExitStack | None = None
        self.sessions: set[Session] = set()
        """Connected clients, on any transport."""
        self.version = _version()
        self.web = WebAccess()
        self.webhooks = Webhooks(self.config.webhooks, self.config.webhooks_policy)
        """The webhook subscriptions: the store's event router, and the delivery loop."""
        """The web view's one-time links and browser sessions (served with the WebSocket)."""
        self.metrics = _metrics() if self.config.metrics.enabled else None
        """The host's Prometheus metrics (``GET /metrics``); ``None`` when ``[metrics]`` is
        off."""
        self.tracing = tracing
        """Spans of runs, steps, tools and agents, while the host runs (``None``: off)."""
        self._own_tracing = tracing is None
        self._dispatcher: Dispatcher | None = None
        self._compile_limiter = anyio.CapacityLimiter(2)
        """Client compiles in worker threads at once (each holds the GIL most of the time)."""

    @property
    def mcp(self) -> McpTools | None:
        """The MCP servers the engine takes tools from, while the host runs."""
        return self.engine.mcp if self.engine is not None else None

    @property
    def data_dir(self) -> Path | None:
        """Where the store, cache and token live (``None`` in memory-only mode)."""
        return None if self.config.memory_only else Path(self.config.host.data_dir)

    @property
    def store(self) -> RunStore:
        """Where this host keeps its runs, while it runs."""
        return self._engine().store

    async def __aenter__(self) -> Host:
        """Lock the data dir, open the store and cache, load workflows, resume runs.

        Raises:
            DataDirLocked: another host uses the data dir.
            StoreCorrupt: the store is damaged; it is left untouched.
            StoreError: the data dir cannot be made or written (read-only, no permission).
        """
        async with AsyncExitStack() as stack:
            if self._own_tracing:
                self.tracing = _tracing(self.config.tracing)
                if self.tracing is not None:
                    stack.push_async_callback(self._stop_tracing, self.tracing)
            store: RunStore = MemoryStore(self.config.store.keep_finished, webhooks=self.webhooks)
            try:
                if self.data_dir is not None:
                    ensure_private_dir(self.data_dir)
                if self.config.durable:
                    assert self.data_dir is not None
                    lock = DataDirLock(self.data_dir)
                    lock.acquire()
                    stack.callback(lock.release)
                    store = await stack.enter_async_context(self._durable_store(self.data_dir))
            except (OSError, sqlite3.OperationalError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise StoreError(
                    str(self.data_dir),
                    f"the data dir cannot be written ({reason.lower()}); give a writable "
                    '--data-dir, or data_dir = ":memory:" to keep nothing on disk',
                ) from None
            await self.webhooks.load(store)  # routes every event recorded from here on
            stack.callback(self.webhooks.detach)
            cache = tool_cache(
                self.config, None if self.data_dir is None else self.data_dir / "cache"
            )
            cache.open()
            stack.callback(cache.close)
            self.engine = build_engine(
                self.config,
                self.pm,
                store=store,
                cache=cache,
                sampler=self.sample,
                metrics=self.metrics,
                tracing=self.tracing,
            )
            if run_log.isEnabledFor(logging.INFO):  # "run ... started/ended", when logged
                self.engine.listeners.append(run_lines(self.engine))
            await stack.enter_async_context(self.engine)
            if self.metrics is not None:
                levels(self.metrics, self.engine, self.sessions)
            self.watchdog = LoopWatchdog(self.engine, self.config.limits.stall_seconds)
            # Entered and left by hand: the body's own exception must not reach this task
            # group, which would wrap it in an exception group.
            watching = anyio.create_task_group()
            await watching.__aenter__()
            stack.push_async_callback(_close_task_group, watching)
            watching.start_soon(self.watchdog.run)
            if self.recover_runs:  # a command working on a data dir leaves them to the host
                watching.start_soon(self.webhooks.deliver)
            if self.tracing is not None and self.tracing.endpoint is not None:
                watching.start_soon(check_endpoint, self.tracing.endpoint)
            stack.push_async_callback(self._stopping)
            if self.config.host.workflows:
                self.load_folder(self.config.host.workflows)
            if self.recover_runs:
                self.recovered = await self.engine.recover()
            else:  # a command that picks runs itself: a crash's other runs are the next host's
                store.keep_crash_mark()
            if self.recovered:
                log.info("resumed %d unfinished run(s)", len(self.recovered))
            if self.recover_runs:
                self.schedules = await stack.enter_async_context(build_schedules(self.engine))
            if self.recover_runs and isinstance(store, PostgresStore):
                self.cluster = Cluster(
                    store,
                    self.engine,
                    self.config.cluster,
                    self._remote_commands(),
                    metrics=self.metrics,
                )
                if self.metrics is not None:
                    cluster_levels(self.metrics, self.cluster)
                watching.start_soon(self.cluster.run)
            self.started_at = time.time()
            self.pm.hook.host_started.call_historic(kwargs={"host": self})
            self._stack = stack.pop_all()
        return self

    def _durable_store(self, data_dir: Path) -> SqliteStore:
        """The store runs are kept in: PostgreSQL at ``[store] url``, else SQLite in the data
        dir."""
        options: dict[str, Any] = {
            "pace": self.pace,
            "webhooks": self.webhooks,
            "metrics": self.metrics,
        }
        if self.config.store.url is not None:
            return PostgresStore(
                self.config.store.url,
                self.config.store,
                self.config.cluster,
                data_dir=data_dir,
                member=self.recover_runs,  # a command on the store is no host among them
                **options,
            )
        return SqliteStore(data_dir, self.config.store, **options)

    def _remote_commands(self) -> dict[str, Callable[[str, dict[str, Any]], Awaitable[Any]]]:
        """How this host does the control commands other hosts send for the runs it owns."""
        engine = self._engine()

        async def cancel(run_id: str, args: dict[str, Any]) -> None:
            if not engine.cancel_now(run_id):
                await engine.cancel(run_id)  # says why it cannot (not live, finished)

        async def pause(run_id: str, args: dict[str, Any]) -> None:
            await engine.pause(run_id)

        async def resume(run_id: str, args: dict[str, Any]) -> None:
            await engine.resume(run_id)

        async def signal(run_id: str, args: dict[str, Any]) -> None:
            await engine.signal(run_id, args["event"], args.get("data"))

        async def respond(run_id: str, args: dict[str, Any]) -> None:
            await engine.respond(
                run_id, args["step"], args["answer"], by=args.get("by"), channel=args["channel"]
            )

        async def start(run_id: str, args: dict[str, Any]) -> str:
            run = await engine.start(
                engine.catalog.get(args["workflow"], args.get("version")),
                args.get("inputs"),
                idempotency_key=args.get("idempotencyKey"),
            )
            return run.id

        async def rerun(run_id: str, args: dict[str, Any]) -> str:
            run = await engine.rerun(
                args["runId"], args["step"], inputs=args.get("inputs"), version=args.get("version")
            )
            return run.id

        return {
            "start": start,
            "rerun": rerun,
            "cancel": cancel,
            "pause": pause,
            "resume": resume,
            "signal": signal,
            "respond": respond,
        }

    async def _done_elsewhere(
        self, run_id: str, command: str, args: dict[str, Any] | None = None
    ) -> str | None:
        """Have the host that owns ``run_id`` do ``command``, when another host owns it:
        the run's whole id once done, else ``None`` (this host does it)."""
        if self.cluster is None:
            return None
        run_id = await self._engine().resolve_run_id(run_id)
        if not await self.cluster.elsewhere(run_id):
            return None
        await self.cluster.control(run_id, command, args or {})
        return run_id

    @staticmethod
    async def _stop_tracing(tracing: Tracing) -> None:
        """Export what is buffered, off the event loop (bounded by the exporter's timeout)."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(tracing.shutdown, abandon_on_cancel=True)

    async def pace(self) -> None:
        """Let connections that fell behind a burst of events catch up, briefly.

        Only clients that keep draining are waited for; one that drains nothing within
        :data:`PACE_SECONDS` is marked stalled, no longer waited for, and dropped when its
        bounded queue overflows (docs/reliability.md §31).
        """
        await anyio.sleep(0)
        for session in [s for s in self.sessions if s.congested and not s.stalled]:
            await session.drained(PACE_SECONDS)

    async def _stopping(self) -> None:
        self.pm.call_isolated("host_stopping", host=self)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop: runs in flight are left as they are in the store, resumed by the next start."""
        assert self._stack is not None
        stack, self._stack = self._stack, None
        await stack.__aexit__(exc_type, exc, tb)

    def _engine(self) -> Engine:
        if self.engine is None:
            raise RuntimeError("the host is not started: use `async with host:`")
        return self.engine

    def load_folder(self, folder: str | os.PathLike[str]) -> list[CompiledWorkflow]:
        """Register every workflow file in ``folder``; a bad file is reported and skipped.

        A file whose ``on:`` watches a workflow of a later file is registered after it: the
        files are taken again while another pass registers more of them.
        """
        loaded = []
        pending = [
            p
            for p in sorted(Path(folder).iterdir())
            if p.suffix in WORKFLOW_SUFFIXES and p.is_file()
        ]
        errors: dict[Path, DefinitionError] = {}
        while pending:
            errors = {}
            for path in pending:
                try:
                    loaded.append(self.register(str(path)))
                except DefinitionError as exc:
                    errors[path] = exc
            if len(errors) == len(pending):
                break
            pending = list(errors)
        for path, problem in errors.items():
            self.load_errors[str(path)] = problem
            log.warning("skipping workflow file %s: %s", path, problem)
        return loaded

    def register(
        self, source: WorkflowDef | Mapping[str, Any] | str | os.PathLike[str]
    ) -> CompiledWorkflow:
        """Register (or update) a workflow; identical content keeps its version.

        A one-line string that names an existing file, or a path, is read as that file (for
        programs embedding the host); clients of the API go through :meth:`put_workflow`,
        whose text is always a definition.
        """
        compiled = self._engine().register(source)
        self._sync_schedules(compiled.name)
        return compiled

    def _sync_schedules(self, workflow: str) -> None:
        """The schedules ``workflow`` declares follow its current version."""
        if self.schedules is not None:
            self.schedules.sync_workflow(workflow)

    async def start_run(
        self,
        workflow: str,
        inputs: Mapping[str, Any] | None = None,
        *,
        version: int | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Start a run of a registered workflow; returns its id once the start is kept."""
        run = await self.launch(workflow, inputs, version=version, idempotency_key=idempotency_key)
        return run.id

    def wait(self, run_id: str) -> Awaitable[Run]:
        """Await the run's end: the run, once it is terminal.

        A plain function returning the engine's awaitable, not a coroutine of its own: every
        waiter keeps its await chain in memory for as long as the run goes on.
        """
        return self._engine().wait(run_id)

    # -- the HostApi the JSON-RPC methods use (plait.rpc.host_api) ---------------------------

    async def put_workflow(self, source: WorkflowDef | Mapping[str, Any] | str) -> CompiledWorkflow:
        """Register a workflow from a client (text is a definition, never a path); returns
        once the new version is kept."""
        self._writable()
        engine = self._engine()
        compiled = engine.add(await self._compile_off_loop(source))
        self._sync_schedules(compiled.name)
        await engine.committed()
        return compiled

    async def validate_workflow(self, source: WorkflowDef | Mapping[str, Any] | str) -> list[Issue]:
        """Every problem of a client's definition (text is a definition, never a path)."""
        try:
            await self._compile_off_loop(source)
        except DefinitionError as exc:
            return list(exc.issues)
        return []

    async def _compile_off_loop(
        self, source: WorkflowDef | Mapping[str, Any] | str
    ) -> CompiledWorkflow:
        """Compile a client's definition in a worker thread: a workflow of thousands of steps
        takes seconds to compile, during which the event loop must go on serving."""
        engine = self._engine()
        return await anyio.to_thread.run_sync(
            lambda: engine.compile(source, text_only=True), limiter=self._compile_limiter
        )

    def list_workflows(self) -> list[CatalogEntry]:
        """The current version of every registered workflow."""
        return self._engine().catalog.current()

    def get_workflow(self, name: str, version: int | None = None) -> CatalogEntry:
        """A registered workflow version (the current one by default)."""
        return self._engine().catalog.entry(name, version)

    def workflow_versions(self, name: str) -> list[dict[str, Any]]:
        """``[{version, created_at, current}]`` of a workflow, oldest first."""
        return self._engine().catalog.versions(name)

    async def delete_workflow(self, name: str) -> None:
        """Unregister a workflow, once that is kept."""
        self._writable()
        engine = self._engine()
        engine.catalog.remove(name)
        self._sync_schedules(name)
        await engine.committed()

    async def rollback_workflow(self, name: str, version: int) -> CompiledWorkflow:
        """Make an earlier version current again, once that is kept."""
        self._writable()
        engine = self._engine()
        compiled = engine.catalog.rollback(name, version)
        self._sync_schedules(name)
        await engine.committed()
        return compiled

    async def launch(
        self,
        workflow: str,
        inputs: Mapping[str, Any] | None = None,
        *,
        version: int | None = None,
        idempotency_key: str | None = None,
        origin: Session | None = None,
        paused: bool = False,
    ) -> Run:
        """Start a run of a registered workflow; returns the run once its start is kept.

        Among several hosts, a run a client starts (not one an MCP client waits on with
        questions, nor one started paused) may be started on a less busy host instead (see
        :meth:`plait.host.cluster.Cluster.place`); it is then followed here."""
        self._writable()
        engine = self._engine()
        target = (
            self.cluster.place()
            if self.cluster is not None and not paused and _forwardable(origin)
            else None
        )
        if target is not None:
            assert self.cluster is not None
            engine.catalog.get(workflow, version)  # an unknown workflow is refused here
            started = await self.cluster.control(
                None,
                "start",
                {
                    "workflow": workflow,
                    "inputs": dict(inputs or {}),
                    "version": version,
                    "idempotencyKey": idempotency_key,
                },
                host=target,
            )
            return await self.get_run(str(started))
        return await engine.start(
            engine.catalog.get(workflow, version),
            inputs,
            idempotency_key=idempotency_key,
            origin=origin,
            paused=paused,
        )

    @property
    def debugger(self) -> Debugger:
        """Breakpoints and what can be done at a pause, on this host's runs."""
        return self._engine().debugger

    @property
    def dead_letters(self) -> DeadLetters:
        """Runs that failed for good, to look at and replay."""
        return self._engine().dead_letters

    async def run_stats(
        self, *, workflow: str | None = None, since: float | None = None, bottleneck: bool = False
    ) -> dict[str, Any]:
        """``runs/stats``: figures of the kept runs created since ``since``, and with
        ``bottleneck`` the bottleneck report of ``workflow`` (see plait.engine.analytics)."""
        engine = self._engine()
        return await run_stats(
            engine.store,
            engine.catalog,
            workflow=workflow,
            since=since,
            with_bottleneck=bottleneck,
        )

    async def get_run(self, run_id: str) -> Run:
        """The run with that id, live or from the store (one owned by another host is
        followed: its listeners hear its events as they are kept)."""
        run = await self._engine().load_run(run_id)
        if self.cluster is not None and not run.finished and run.id not in self._engine().runs:
            return self.cluster.follow(run)
        return run

    async def view_run(self, run_id: str) -> dict[str, Any]:
        """``runs/get``'s view of a run: all of it kept. While the store cannot write, a live
        run is shown as the store last kept it instead of waiting for the disk."""
        engine = self._engine()
        run = await engine.load_run(run_id)
        if run.finished or engine.store.unavailable is None:
            try:
                return await engine.until_kept(run.view)
            except StoreUnavailable:
                pass  # the disk failed meanwhile: show what it kept
        return (await engine.kept_run(run_id)).to_dict()

    def store_problem(self) -> str | None:
        """Why the store cannot write now, or ``None``."""
        return self.engine.store.unavailable if self.engine is not None else None

    def _writable(self) -> None:
        """Refuse new work at once while the store cannot write (rather than wait for it)."""
        self._engine().check_writable()

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
        return await self._engine().list_runs(
            workflow=workflow,
            status=status,
            created_after=created_after,
            created_before=created_before,
            cursor=cursor,
            limit=limit,
        )

    async def events(self, run_id: str, since: int = 0, limit: int | None = None) -> list[Event]:
        """A run's kept events with ``seq > since``, oldest first (from the store once the
        run has left memory; ``Run.events`` of a run read back from the store is empty)."""
        return await self._engine().events(run_id, since, limit)

    def follow_all(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``listener`` with every told event of every run; returns the undo."""
        listeners = self._engine().listeners
        listeners.append(listener)
        return lambda: listeners.remove(listener)

    async def cancel_run(self, run_id: str) -> Run:
        """Cancel a run; returns once it ended (or after a few seconds, as it then stands)."""
        self._writable()
        remote = await self._done_elsewhere(run_id, "cancel")
        if remote is not None:
            return await self.get_run(remote)
        return await self._engine().cancel(run_id)

    def cancel_soon(self, run_id: str) -> bool:
        """Start cancelling a live run without waiting; False if it is not live."""
        return self._engine().cancel_now(run_id)

    async def pause_run(self, run_id: str) -> Run:
        """Start no new steps of a run; running ones finish."""
        self._writable()
        remote = await self._done_elsewhere(run_id, "pause")
        if remote is not None:
            return await self.get_run(remote)
        return await self._engine().pause(run_id)

    async def resume_run(self, run_id: str) -> Run:
        """Continue a paused run."""
        self._writable()
        remote = await self._done_elsewhere(run_id, "resume")
        if remote is not None:
            return await self.get_run(remote)
        return await self._engine().resume(run_id)

    async def signal_run(self, run_id: str, event: str, data: Any = None) -> None:
        """Deliver a signal to a run's ``wait`` steps, once it is kept."""
        self._writable()
        if await self._done_elsewhere(run_id, "signal", {"event": event, "data": data}):
            return
        await self._engine().signal(run_id, event, data)

    async def respond(
        self,
        run_id: str,
        step: str,
        answer: Any,
        *,
        by: str | None = None,
        channel: str = "api",
    ) -> None:
        """Answer the question an ``input`` step waits for, once the answer is kept.

        ``channel`` (``api``, ``mcp``, ``web``) is where the answer came from: a step takes
        answers only from its ``answerers``. Raises ``InputsInvalid`` for an answer that breaks
        the step's schema (the step keeps waiting) or an unknown step, ``InvalidRunState``
        when the step is not waiting for input from that channel, ``RunNotFound``.
        """
        self._writable()
        answered = {"step": step, "answer": answer, "by": by, "channel": channel}
        if await self._done_elsewhere(run_id, "respond", answered):
            return
        await self._engine().respond(run_id, step, answer, by=by, channel=channel)

    async def rerun_run(
        self,
        run_id: str,
        step: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        version: int | None = None,
        config: Mapping[str, Any] | None = None,
        origin: Session | None = None,
    ) -> Run:
        """Start a new run from a run (see :func:`plait.engine.lineage.rerun`); returns the new
        run once its start is kept."""
        self._writable()
        return await self._engine().rerun(
            run_id, step, inputs=inputs, version=version, config=config, origin=origin
        )

    async def diff_runs(self, run_id: str, other_run_id: str) -> dict[str, Any]:
        """Two runs compared step by step (see :func:`plait.engine.lineage.diff_runs`)."""
        return await diff_runs(self._engine(), run_id, other_run_id)

    def tools(self) -> list[Tool]:
        """Every registered tool (plugins' and MCP servers'), by name."""
        registry = self._engine().registries.tools
        return [registry[name] for name in registry.names()]

    def tool(self, name: str) -> Tool | None:
        """The registered tool of that name, if any."""
        return self._engine().registries.tools.get(name)

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        """Call a registered tool directly, through the cache as a tool step would."""
        return await self._engine().tools.call(name, arguments)

    def plugins_info(self) -> dict[str, Any]:
        """Loaded plugins with what they add, and those that failed to load."""
        return {
            "plugins": [i.to_dict() for i in self.pm.info()],
            "failed": [f.to_dict() for f in self.pm.failures],
        }

    async def info(self) -> dict[str, Any]:
        """Version, uptime, limits, the store, counts, MCP servers and circuit breakers
        (``host/info``)."""
        engine = self._engine()
        statuses = await engine.store.counts()
        return {
            "name": "plait",
            "version": self.version,
            "uptime": time.time() - (self.started_at or time.time()),
            "limits": self.config.limits.model_dump(),
            "store": engine.store.describe(),
            "counts": {
                "workflows": len(engine.catalog.names()),
                "runs": sum(statuses.values()),
                "liveRuns": len(engine.runs),
                "runsByStatus": statuses,
                "connections": len(self.sessions),
                "tools": len(engine.registries.tools),
            },
            "dataDir": str(self.data_dir) if self.data_dir else None,
            "mcpServers": engine.mcp.info() if engine.mcp is not None else {},
            "breakers": {**engine.tools.breakers.info(), **engine.agents.breakers.info()},
            "loop": self.watchdog.info() if self.watchdog is not None else None,
            "abandonedThreads": abandoned_threads(),
            "cluster": await self.cluster.info() if self.cluster is not None else None,
        }

    async def sample(self, run: Run, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send ``sampling/createMessage`` for ``run`` to a client and return its result.

        The client that started the run is asked when it declared the ``sampling``
        capability; otherwise each other connected client that did, until one answers.
        """
        origin = run.origin if isinstance(run.origin, Session) else None
        candidates = ([origin] if origin is not None else []) + [
            s for s in self.sessions if s is not origin
        ]
        for session in candidates:
            if session.closed or "sampling" not in session.client_capabilities:
                continue
            try:
                return dict(
                    await session.request("sampling/createMessage", params, timeout=timeout) or {}
                )
            except SessionClosed:
                continue  # gone meanwhile: ask the next one
            except TimeoutError:
                raise AgentFailed(
                    "sampling",
                    f"the client did not answer sampling/createMessage within {timeout:g}s",
                ) from None
            except RpcError as exc:
                raise AgentFailed(
                    "sampling",
                    f"the client refused sampling/createMessage: {exc.message}",
                    retryable=False,
                ) from None
        raise AgentFailed(
            "sampling",
            "no connected MCP client declared the sampling "
            "capability; connect one (an IDE through plait serve "
            "--stdio or plait mcp) and retry",
        )

    # -- serving -----------------------------------------------------------------------------

    @property
    def dispatcher(self) -> Dispatcher:
        """The JSON-RPC dispatcher with the plait and MCP methods, shared by all transports."""
        if self._dispatcher is None:
            limits = self.config.limits
            self._dispatcher = Dispatcher(
                max_batch=limits.max_batch,
                batch_concurrency=limits.batch_concurrency,
                max_depth=limits.max_nesting,
                metrics=self.metrics,
                tracing=self.tracing,
                server_info={"name": "plait", "version": self.version},
            )
            register_api(self._dispatcher, self)
            register_mcp(self._dispatcher, self)
            register_debug(self._dispatcher, self)
            register_schedules(self._dispatcher, self)
            register_dlq(self._dispatcher, self)
            register_stats(self._dispatcher, self)
            register_web(self._dispatcher, self, self.web)
            register_webhooks(self._dispatcher, self.webhooks)
        return self._dispatcher

    def issue_token(self) -> str:
        """A fresh random token for this launch (256 bits), written 0600 to the data dir."""
        token = secrets.token_urlsafe(32)
        while token.startswith("-"):  # `plait ... --token <token>` would read it as an option
            token = secrets.token_urlsafe(32)
        if self.data_dir is not None:
            write_private(ensure_private_dir(self.data_dir) / TOKEN_FILE, token + "\n")
        return token

    async def serve_websocket(
        self,
        *,
        token: str | None = None,
        ready: Callable[[str, str], None] | None = None,
        close_seconds: float = 2.0,
        task_status: anyio.abc.TaskStatus[tuple[str, str]] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve JSON-RPC over WebSocket until cancelled; once listening, ``ready(url, token)``
        is called and ``(url, token)`` handed to ``task_group.start``.

        When cancelled, each client is sent a close (1001) and given ``close_seconds`` to
        answer it; the connections of those that do not are cut."""
        settings = self.config.host
        if settings.bind not in LOOPBACK and not settings.allow_remote:
            raise ConfigError(
                f"refusing to bind {settings.bind}: only loopback addresses "
                "unless host.allow_remote is true (--allow-remote)"
            )
        if settings.bind not in LOOPBACK:
            log.warning(
                "listening on %s: reachable from other machines; the token is the only protection",
                settings.bind,
            )
        token = token or self.issue_token()
        transport = WebSocketTransport(
            self,
            self.dispatcher,
            token=token,
            limits=self.config.limits,
            bind=settings.bind,
            port=settings.port,
            allowed_origins=settings.allowed_origins,
            web=self.web,
            metrics=self.metrics,
            metrics_public=self.config.metrics.public,
        )
        port = await transport.start()
        try:
            shown = f"[{settings.bind}]" if ":" in settings.bind else settings.bind
            url = f"ws://{shown}:{port}{RPC_PATH}"
            if self.data_dir is not None:
                write_host_info(self.data_dir, url=url)
            if ready is not None:
                ready(url, token)
            task_status.started((url, token))
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                if self.data_dir is not None:
                    remove_host_info(self.data_dir)
                with anyio.move_on_after(close_seconds) as closing:
                    await transport.stop()
                if closing.cancelled_caught and transport.server is not None:
                    # Clients that neither answer the close nor read (websockets would wait
                    # 10 s for each): cut them, so that a stop never waits on a client.
                    stuck = list(transport.server.all_connections)
                    for connection in stuck:
                        connection.transport.abort()
                    log.warning(
                        "cut %d connection(s) that did not close within %gs",
                        len(stuck),
                        close_seconds,
                    )
                    with anyio.move_on_after(close_seconds):
                        await transport.server.wait_closed()

    async def serve_stdio(self, *, stdin: IO[bytes] | None = None) -> None:
        """Serve one MCP client on this process's stdin/stdout (or ``stdin``, read with
        ``readline(limit)``) until stdin closes."""
        limits = self.config.limits
        await serve_stdio(
            self.dispatcher,
            self.sessions,
            max_message_bytes=limits.max_message_bytes,
            max_inflight=limits.max_inflight,
            stdin=stdin,
        )


async def _close_task_group(tg: anyio.abc.TaskGroup) -> None:
    tg.cancel_scope.cancel()
    await tg.__aexit__(None, None, None)


def _forwardable(origin: Session | None) -> bool:
    """Whether a run may start on another host: not when its client speaks MCP (its questions
    go back to that client, through this host)."""
    return origin is None or origin.transport == "websocket"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("plait")
    except Exception:  # noqa: BLE001 - running from a checkout without metadata
        return "0+unknown"


# The telemetry libraries load only when used: prometheus_client and the OpenTelemetry SDK
# take ~0.1 s to import, which a one-shot ``plait.run`` or a command that never serves should
# not pay.


def _metrics() -> Metrics:
    from plait.telemetry.metrics import Metrics

    return Metrics()


def _tracing(settings: TracingSettings) -> Tracing | None:
    if not settings.enabled:
        return None
    from plait.telemetry.tracing import Tracing

    return Tracing.from_settings(settings)
