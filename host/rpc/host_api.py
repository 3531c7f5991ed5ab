"""What the JSON-RPC methods and transports need from the host: the :class:`HostApi` seam.

The rpc layer talks to this protocol only, never to the engine or a private member of the
host; :class:`plait.Host` implements it. A test or another front end can serve the same
methods from anything that does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from plait.definition.compiler import CompiledWorkflow
    from plait.definition.models import WorkflowDef
    from plait.engine.catalog import CatalogEntry
    from plait.engine.dead_letters import DeadLetters
    from plait.engine.debugging import Debugger
    from plait.errors import Issue
    from plait.plugins.types import Tool
    from plait.rpc.session import Session
    from plait.state.run_store import RunPage
    from plait.state.runs import Event, Run

__all__ = ["HostApi"]


class HostApi(Protocol):
    """The host as the JSON-RPC methods see it."""

    @property
    def version(self) -> str:
        """The plait version this host runs."""
        ...

    @property
    def sessions(self) -> set[Session]:
        """Connected clients, on any transport (transports add and remove theirs)."""
        ...

    # -- workflows -------------------------------------------------------------------------

    async def put_workflow(self, source: WorkflowDef | Mapping[str, Any] | str) -> CompiledWorkflow:
        """Register a workflow (text is always a definition, never a path) once it is kept."""
        ...

    async def validate_workflow(self, source: WorkflowDef | Mapping[str, Any] | str) -> list[Issue]:
        """Every problem of a definition (empty when it is valid); registers nothing."""
        ...

    def list_workflows(self) -> list[CatalogEntry]:
        """The current version of every registered workflow."""
        ...

    def get_workflow(self, name: str, version: int | None = None) -> CatalogEntry:
        """A registered workflow version (the current one by default)."""
        ...

    def workflow_versions(self, name: str) -> list[dict[str, Any]]:
        """``[{version, created_at, current}]`` of a workflow, oldest first."""
        ...

    async def delete_workflow(self, name: str) -> None:
        """Unregister a workflow once that is kept (its runs keep their snapshots)."""
        ...

    async def rollback_workflow(self, name: str, version: int) -> CompiledWorkflow:
        """Make an earlier version current again, once that is kept."""
        ...

    # -- runs ------------------------------------------------------------------------------

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
        """Start a run of a registered workflow; returns it once its start is kept
        (``paused``: held before its first step, for a debugger)."""
        ...

    @property
    def debugger(self) -> Debugger:
        """Breakpoints of runs and workflows, and what can be done at a pause."""
        ...

    @property
    def dead_letters(self) -> DeadLetters:
        """Runs that failed for good, to look at and replay."""
        ...

    async def run_stats(
        self, *, workflow: str | None = None, since: float | None = None, bottleneck: bool = False
    ) -> dict[str, Any]:
        """``runs/stats``'s reply: figures per workflow, step and agent of the runs created
        since ``since``; with ``bottleneck``, ``workflow``'s bottleneck report.

        Raises:
            WorkflowNotFound: ``workflow`` is not registered and has no kept runs.
        """
        ...

    async def get_run(self, run_id: str) -> Run:
        """A run, live or kept."""
        ...

    async def view_run(self, run_id: str) -> dict[str, Any]:
        """A run's JSON view, all of it kept (as last kept while the store cannot write)."""
        ...

    def store_problem(self) -> str | None:
        """Why the store cannot write now, or ``None`` (``/health`` reports it)."""
        ...

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
        """Top-level runs, newest first, a page at a time."""
        ...

    async def events(self, run_id: str, since: int = 0, limit: int | None = None) -> list[Event]:
        """A run's kept events after ``since``."""
        ...

    def follow_all(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``listener`` with every told event of every run; returns the undo."""
        ...

    async def cancel_run(self, run_id: str) -> Run:
        """Cancel a run and return it once it ended (or after a few seconds)."""
        ...

    def cancel_soon(self, run_id: str) -> bool:
        """Start cancelling a live run without waiting; False if it is not live."""
        ...

    async def pause_run(self, run_id: str) -> Run:
        """Start no new steps of a run."""
        ...

    async def resume_run(self, run_id: str) -> Run:
        """Continue a paused run."""
        ...

    async def signal_run(self, run_id: str, event: str, data: Any = None) -> None:
        """Deliver a signal to a run's ``wait`` steps, once it is kept."""
        ...

    async def respond(
        self,
        run_id: str,
        step: str,
        answer: Any,
        *,
        by: str | None = None,
        channel: str = "api",
    ) -> None:
        """Answer the question an ``input`` step waits for (checked against its schema and its
        ``answerers``: ``channel`` is ``api``, ``mcp`` or ``web``), once the answer is kept."""
        ...

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
        """Start a new run from a run: ``step`` and what depends on it run again, the other
        steps that succeeded keep their results; returns it once its start is kept."""
        ...

    async def diff_runs(self, run_id: str, other_run_id: str) -> dict[str, Any]:
        """Two runs compared step by step: ``{first, steps: [{path, field, a, b}]}``."""
        ...

    # -- tools, plugins, the host ----------------------------------------------------------

    def tools(self) -> list[Tool]:
        """Every registered tool, by name."""
        ...

    def tool(self, name: str) -> Tool | None:
        """The registered tool of that name, if any."""
        ...

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        """Call a registered tool directly (through the cache, like a tool step)."""
        ...

    def plugins_info(self) -> dict[str, Any]:
        """``plugins/list``: loaded plugins with what they add, and those that failed."""
        ...

    async def info(self) -> dict[str, Any]:
        """``host/info``: version, uptime, limits, store, counts, MCP servers."""
        ...
