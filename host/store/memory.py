"""A store that keeps runs for the life of the process: no disk, same protocol.

Runs record straight to their followers (no sink: nothing is waited for), the runs in flight
and the ``keep_finished`` most recently finished ones answer every query, and the oldest
finished runs, child runs included, are forgotten first with their idempotency keys. Used
when ``[store] durable = false`` or the data dir is ``:memory:``, and by ``plait.run``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import anyio

from plait.state.run_store import RunPage, page_cursor, row_of
from plait.state.runs import Event, Run

__all__ = ["MemoryStore"]


class MemoryStore:
    """The :class:`~plait.state.RunStore` of a host that keeps nothing on disk."""

    def __init__(self, keep_finished: int = 10_000) -> None:
        self.keep_finished = keep_finished
        """How many finished runs stay answerable; the longest-finished go first."""
        self._runs: dict[str, Run] = {}
        self._finished: deque[str] = deque()
        self._keys: dict[str, str] = {}
        self._definitions: dict[str, dict[str, Any]] = {}
        self._workflows: dict[str, dict[str, Any]] = {}

    # -- writing -----------------------------------------------------------------------------

    @property
    def durable(self) -> bool:
        """Never: runs end with the process."""
        return False

    @property
    def unavailable(self) -> str | None:
        """Never: memory does not fill up the way a disk does."""
        return None

    async def troubled(self) -> None:
        """Never returns: memory does not fail the way a disk does."""
        await anyio.sleep_forever()

    @property
    def after_crash(self) -> bool:
        """Never: a memory store starts empty."""
        return False

    def keep_crash_mark(self) -> None:
        """Nothing to keep: a memory store has no crash to remember."""

    @property
    def backlogged(self) -> bool:
        """Never: nothing waits for a disk."""
        return False

    def attach(self, run: Run) -> None:
        """Keep the run answerable; its events are told the moment they are recorded."""
        self._runs[run.id] = run
        if run.idempotency_key is not None:
            self._keys[run.idempotency_key] = run.id

    def release(self, run: Run) -> None:
        """Count the run among the finished ones, forgetting the oldest past the bound."""
        finished = self._finished
        finished.append(run.id)
        while len(finished) > self.keep_finished:
            gone = self._runs.pop(finished.popleft(), None)
            if gone is not None and gone.idempotency_key is not None:
                self._keys.pop(gone.idempotency_key, None)

    def put_workflow(
        self, name: str, version: int, digest: str, definition: dict[str, Any], created_at: float
    ) -> None:
        """Keep a workflow version and make it current."""
        self._definitions.setdefault(digest, definition)
        entry = self._workflows.setdefault(
            name, {"name": name, "current": version, "deleted": False, "versions": []}
        )
        if all(v["version"] != version for v in entry["versions"]):
            entry["versions"].append(
                {
                    "version": version,
                    "digest": digest,
                    "created_at": created_at,
                    "definition": definition,
                }
            )
        entry["current"], entry["deleted"] = version, False

    def set_current(self, name: str, version: int, *, deleted: bool = False) -> None:
        """Change which version is current, or mark the workflow deleted."""
        entry = self._workflows.get(name)
        if entry is not None:
            entry["current"], entry["deleted"] = version, deleted

    def freeze(self) -> None:
        """Nothing to hold back: a memory store ends with the host."""

    async def sync(self) -> None:
        """Everything is kept and told the moment it is recorded."""

    async def drained(self) -> None:
        """Nothing ever waits."""

    # -- reading -----------------------------------------------------------------------------

    async def catalog(self) -> list[dict[str, Any]]:
        """Every workflow kept here, with its versions."""
        return [
            dict(entry, versions=list(entry["versions"]))
            for _, entry in sorted(self._workflows.items())
        ]

    async def definition(self, digest: str) -> dict[str, Any] | None:
        """A kept definition by its digest."""
        return self._definitions.get(digest)

    async def run_row(self, run_id: str) -> dict[str, Any] | None:
        """A kept run's row."""
        run = self._runs.get(run_id)
        return None if run is None else row_of(run)

    async def load_run(self, run_id: str) -> Run | None:
        """The kept run itself, events and all."""
        return self._runs.get(run_id)

    async def events(self, run_id: str, since: int = 0, limit: int | None = None) -> list[Event]:
        """A kept run's told events after ``since``."""
        run = self._runs.get(run_id)
        if run is None:
            return []
        end = run.published if limit is None else min(run.published, since + limit)
        return run.events[since:end]

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
        """Top-level kept runs, newest first, filtered, one page after ``cursor``."""
        runs = sorted(
            (
                r
                for r in self._runs.values()
                if r.parent_id is None
                and (workflow is None or r.workflow == workflow)
                and (status is None or r.status == status)
                and (created_after is None or r.created_at >= created_after)
                and (created_before is None or r.created_at < created_before)
                and (cursor is None or (r.created_at, r.id) < cursor)
            ),
            key=lambda r: (r.created_at, r.id),
            reverse=True,
        )
        page = runs[:limit]
        more = len(runs) > limit and page
        return RunPage(
            [r.summary() for r in page],
            page_cursor(page[-1].created_at, page[-1].id) if more else None,
        )

    async def run_ids_starting(self, prefix: str, limit: int) -> list[str]:
        """Ids of kept runs starting with ``prefix``, in order, at most ``limit`` (a pass over
        the runs in memory: a user's lookup, bounded by ``keep_finished`` and the live runs)."""
        return sorted(run_id for run_id in self._runs if run_id.startswith(prefix))[:limit]

    async def run_for_key(self, key: str) -> str | None:
        """The kept run started with idempotency key ``key``."""
        return self._keys.get(key)

    async def child_run(self, parent_id: str, parent_step: str) -> dict[str, Any] | None:
        """The row of the kept child run a parent's step attempt started."""
        found = [
            r
            for r in self._runs.values()
            if r.parent_id == parent_id and r.parent_step == parent_step
        ]
        return row_of(max(found, key=lambda r: r.created_at)) if found else None

    async def unfinished_runs(self) -> list[dict[str, Any]]:
        """None: a new process starts with no runs."""
        return []

    async def counts(self) -> dict[str, int]:
        """Top-level kept runs by status."""
        counts: dict[str, int] = {}
        for run in self._runs.values():
            if run.parent_id is None:
                counts[run.status] = counts.get(run.status, 0) + 1
        return counts

    def describe(self) -> dict[str, Any]:
        """What ``host/info`` reports: not durable, and how many runs are kept."""
        return {"durable": False, "runs": len(self._runs), "keepFinished": self.keep_finished}
