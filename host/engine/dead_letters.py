"""The dead-letter queue: runs that failed for good, kept for a person to look at and replay.

A top-level run that ends ``failed`` (its retries and fallbacks spent, its compensations run)
gets an entry, queued in the same commit as the run's failure: the failed step, the error, the
attempt history of that step, the run's inputs and version. ``replay`` re-runs it from the
failed step (:func:`plait.engine.lineage.rerun`: what succeeded before is reused), optionally
on another version of the workflow or with other inputs, and marks the entry ``replayed`` with
the new run's id; ``discard`` marks it ``discarded``. Entries older than ``[limits]
dlq_keep_days`` are pruned when the host starts.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from plait.errors import DeadLetterError, PlaitError
from plait.state.runs import is_top_level

if TYPE_CHECKING:
    from plait.config import Limits
    from plait.engine.catalog import Catalog
    from plait.state.run_store import RunStore
    from plait.state.runs import Run

__all__ = ["DeadLetterServices", "DeadLetters"]

HISTORY = ("step.started", "step.retrying", "step.failed", "step.interrupted", "step.quarantined")


class DeadLetterServices(Protocol):
    """What the queue needs of its engine (the engine is one)."""

    store: RunStore
    catalog: Catalog

    async def resolve_run_id(self, run_id: str) -> str: ...

    async def rerun(
        self,
        run_id: str,
        step: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        version: int | None = None,
    ) -> Run: ...


class DeadLetters:
    """The dead-letter queue of an engine's store."""

    def __init__(self, engine: DeadLetterServices, limits: Limits) -> None:
        self.engine = engine
        self.limits = limits

    def record(self, run: Run) -> None:
        """Queue the entry of a top-level run that is failing for good (before its
        ``run.failed``, so both are kept together)."""
        if run.parent_id is not None:
            return
        failed = [p for p, s in run.steps.items() if s.status in ("failed", "interrupted")]
        inner = [  # where the failure began: not a step failing because its body did
            p for p in failed if not any(q.startswith((f"{p}.", f"{p}[")) for q in failed)
        ]
        step = _latest(run, inner)
        replay_from = _latest(run, [p for p in failed if is_top_level(p)])
        history = [
            {
                "type": e.type,
                "attempt": e.data.get("attempt"),
                "error": e.data.get("error"),
                "ts": e.ts,
            }
            for e in run.events
            if e.step == step and e.type in HISTORY
        ]
        # The error where the failure began (the run's own may be a step failing because its
        # body failed): its type is what the queue is filtered by.
        error = (run.steps[step].error if step is not None else None) or run.error or {}
        self.engine.store.put_dead_letter(
            {
                "run_id": run.id,
                "workflow": run.workflow,
                "version": run.version,
                "inputs": run.inputs,
                "step": step,
                "replay_from": replay_from,
                "error": error,
                "error_type": error.get("type"),
                "attempts": history,
                "failed_at": time.time(),
                "state": "open",
            }
        )

    def prune(self) -> None:
        """Forget entries older than ``dlq_keep_days``."""
        self.engine.store.prune_dead_letters(time.time() - self.limits.dlq_keep_days * 86400)

    async def list(
        self,
        *,
        workflow: str | None = None,
        error_type: str | None = None,
        since: float | None = None,
        until: float | None = None,
        state: str | None = "open",
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Entries, newest first."""
        return await self.engine.store.dead_letters(
            workflow=workflow,
            error_type=error_type,
            since=since,
            until=until,
            state=state,
            limit=limit,
        )

    async def get(self, run_id: str) -> dict[str, Any]:
        """One entry.

        Raises:
            DeadLetterError: no entry for that run.
        """
        run_id = await self.engine.resolve_run_id(run_id)  # a prefix will do
        entry = await self.engine.store.dead_letter(run_id)
        if entry is None:
            raise DeadLetterError(f"no dead-letter entry for run {run_id!r}")
        return entry

    async def replay(
        self,
        run_id: str,
        *,
        version: int | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Re-run an entry's run from its failed step; the entry becomes ``replayed``.

        Raises:
            DeadLetterError: no entry, or not open; the run cannot be re-run (its workflow was
                deleted, the version does not exist...), with the reason.
        """
        entry = await self.get(run_id)
        run_id = entry["run_id"]
        if entry["state"] != "open":
            raise DeadLetterError(
                f"the entry of run {run_id} is {entry['state']}"
                + (f" (as run {entry['replayed_as']})" if entry.get("replayed_as") else "")
            )
        if entry["workflow"] not in self.engine.catalog:
            raise DeadLetterError(
                f"cannot replay run {run_id}: its workflow {entry['workflow']!r} was deleted; "
                "register it again to replay its runs"
            )
        step = entry.get("replay_from")
        if not step:
            raise DeadLetterError(f"run {run_id} failed before any step: nothing to re-run from")
        try:
            run = await self.engine.rerun(run_id, step, inputs=inputs, version=version)
        except PlaitError as exc:
            raise DeadLetterError(f"cannot replay run {run_id}: {exc}") from None
        entry.update(state="replayed", replayed_as=run.id, replayed_at=time.time())
        self.engine.store.put_dead_letter(entry)
        return entry

    async def discard(self, run_id: str) -> dict[str, Any]:
        """Mark an entry ``discarded`` (it stays listed under that state until pruned)."""
        entry = await self.get(run_id)
        entry.update(state="discarded", discarded_at=time.time())
        self.engine.store.put_dead_letter(entry)
        return entry


def _latest(run: Run, paths: list[str]) -> str | None:
    """The path that ended last (the failure that ended the run)."""
    return max(paths, key=lambda p: run.steps[p].finished_at or 0.0) if paths else None
