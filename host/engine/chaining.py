"""Chaining: a workflow's ``on:`` triggers start a run of it when a run of another one ends.

A trigger names the workflow it watches, the ends it cares for (``status``, default
``succeeded``), an optional condition and the new run's inputs, both templates over the ``run``
that ended (``run.outputs``, ``run.inputs``, ``run.status``, ``run.error``, ``run.id``).

Guarantees:

- **Never twice.** A triggered run's idempotency key is ``chain:<run id>:<workflow>``: a
  trigger evaluated again (after a restart) finds the run it started.
- **Never lost.** At start the host looks again at the runs that ended within
  ``[limits] chain_catchup_seconds`` (an hour by default), so a trigger a crash interrupted
  between a run's end and the start of the next one still fires.
- **No endless loops.** A workflow whose triggers would lead back to itself is refused when it
  is registered (naming the loop), and a chain is cut after ``[limits] max_chain_depth`` runs.

A triggered run's ``origin`` says what started it: ``{trigger: {runId, workflow, status},
depth}``. Only top-level runs trigger (a sub-workflow's run belongs to its parent).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from plait.errors import DefinitionError, Issue, PlaitError, RunError
from plait.state.run_store import parse_cursor

if TYPE_CHECKING:
    from plait.config import Limits
    from plait.definition.compiler import CompiledTrigger, CompiledWorkflow
    from plait.engine.catalog import Catalog
    from plait.state.run_store import RunStore
    from plait.state.runs import Run

__all__ = ["ChainServices", "Chains"]

log = logging.getLogger("plait.chains")


class ChainServices(Protocol):
    """What chaining needs of its engine (the engine is one)."""

    catalog: Catalog
    store: RunStore

    async def start(
        self,
        compiled: CompiledWorkflow,
        inputs: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        rerun_of: Mapping[str, Any] | None = None,
    ) -> Run: ...


class Chains:
    """The ``on:`` triggers of an engine's workflows."""

    def __init__(
        self,
        engine: ChainServices,
        limits: Limits,
        spawn: Callable[[Callable[[], Awaitable[None]]], None],
    ) -> None:
        self.engine = engine
        self.limits = limits
        self.spawn = spawn
        """Runs a coroutine in the engine's task group: a run's end must not wait for the
        runs it triggers to start."""

    # -- registration ------------------------------------------------------------------------

    def check(self, compiled: CompiledWorkflow) -> None:
        """Refuse triggers on workflows that do not exist, and a loop of triggers.

        Raises:
            DefinitionError: naming each ``on[i].workflow`` at fault.
        """
        catalog = self.engine.catalog
        issues = []
        for trigger in compiled.triggers:
            if trigger.workflow != compiled.name and trigger.workflow not in catalog:
                known = ", ".join(catalog.names()) or "none"
                issues.append(
                    Issue(
                        f"{trigger.where}.workflow",
                        f"no workflow {trigger.workflow!r} is registered to watch (workflows: "
                        f"{known}); register it first",
                    )
                )
            elif (loop := self._loop(compiled.name, trigger.workflow)) is not None:
                issues.append(
                    Issue(
                        f"{trigger.where}.workflow",
                        "triggers would start runs in a loop: " + " → ".join(loop),
                    )
                )
        if issues:
            raise DefinitionError(issues, source=compiled.definition.origin)

    def _loop(self, name: str, watched: str) -> list[str] | None:
        """The loop ``name`` would close by watching ``watched``: runs of ``watched`` start
        ``name``; if runs of ``name`` (through other triggers) start ``watched``, it loops."""
        if watched == name:
            return [name, name]
        catalog = self.engine.catalog
        path = {name: [name]}
        frontier = [name]
        while frontier:
            current = frontier.pop()
            for follower in catalog.watchers(current):
                if follower == name:
                    continue
                if follower not in path:
                    path[follower] = [*path[current], follower]
                    frontier.append(follower)
        if watched in path:
            return [*path[watched], name]
        return None

    # -- a run ended -------------------------------------------------------------------------

    def ended(self, run: Run) -> None:
        """Look at the triggers watching ``run``'s workflow (in the background)."""
        if run.parent_id is not None or not self.engine.catalog.watchers(run.workflow):
            return
        view = _ended_view(run.to_dict(steps=False))
        depth = _depth(run.rerun_of)
        self.spawn(lambda: self.follow(view, depth))

    async def follow(self, view: dict[str, Any], depth: int) -> None:
        """Start the runs the triggers watching ``view``'s workflow ask for."""
        catalog = self.engine.catalog
        for name in catalog.watchers(view["workflow"]):
            try:
                compiled = catalog.get(name)
            except PlaitError:
                continue  # deleted meanwhile
            for trigger in compiled.triggers:
                if trigger.workflow == view["workflow"]:
                    await self._fire(trigger, compiled, view, depth)

    async def _fire(
        self,
        trigger: CompiledTrigger,
        compiled: CompiledWorkflow,
        view: dict[str, Any],
        depth: int,
    ) -> None:
        try:
            inputs = trigger.fires(view)
        except RunError as exc:
            log.warning(
                "trigger %s of workflow %r on run %s failed: %s",
                trigger.where,
                compiled.name,
                view["id"],
                exc,
            )
            return
        if inputs is None:
            return
        if depth >= self.limits.max_chain_depth:
            log.warning(
                "run %s of %r would trigger %r, but the chain is %d runs long "
                "([limits] max_chain_depth): not followed",
                view["id"],
                view["workflow"],
                compiled.name,
                depth,
            )
            return
        origin = {
            "trigger": {
                "runId": view["id"],
                "workflow": view["workflow"],
                "status": view["status"],
            },
            "depth": depth + 1,
        }
        try:
            await self.engine.start(
                compiled,
                inputs,
                idempotency_key=f"chain:{view['id']}:{compiled.name}",
                rerun_of=origin,
            )
        except PlaitError as exc:
            log.warning(
                "run %s of %r triggered %r, which could not start: %s",
                view["id"],
                view["workflow"],
                compiled.name,
                exc,
            )

    async def catch_up(self) -> int:
        """At start: follow the triggers of runs that ended lately (a crash may have come
        between a run's end and the start of what it triggers). Returns the runs looked at."""
        window = self.limits.chain_catchup_seconds
        catalog = self.engine.catalog
        watched = {t.workflow for n in catalog.names() for t in _triggers(catalog, n)}
        seen = 0
        since = time.time() - window
        for workflow in sorted(watched):
            cursor = None
            while True:
                page = await self.engine.store.list_runs(
                    workflow=workflow, created_after=since, cursor=cursor, limit=200
                )
                for row in page.runs:
                    if row["status"] in ("succeeded", "failed", "cancelled"):
                        seen += 1
                        kept = await self.engine.store.run_row(row["id"])  # no step rows
                        if kept is not None:
                            await self.follow(_ended_view(kept), 0)
                if page.next_cursor is None:
                    break
                cursor = parse_cursor(page.next_cursor)
        return seen


def _triggers(catalog: Catalog, name: str) -> tuple[CompiledTrigger, ...]:
    try:
        return catalog.get(name).triggers
    except PlaitError:
        return ()


def _ended_view(run: Mapping[str, Any]) -> dict[str, Any]:
    """What a trigger's templates see of the run that ended."""
    return {key: run.get(key) for key in ("id", "workflow", "status", "inputs", "outputs", "error")}


def _depth(origin: Mapping[str, Any] | None) -> int:
    if not origin:
        return 0
    depth = origin.get("depth")
    return depth if isinstance(depth, int) else 0
