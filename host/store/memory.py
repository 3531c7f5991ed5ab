"""A store that keeps runs for the life of the process: no disk, same protocol.

Runs record straight to their followers (no sink: nothing is waited for), the runs in flight
and the ``keep_finished`` most recently finished ones answer every query, and the oldest
finished runs, child runs included, are forgotten first with their idempotency keys. Used
when ``[store] durable = false`` or the data dir is ``:memory:``, and by ``plait.run``.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Collection
from dataclasses import replace
from functools import partial
from itertools import count
from typing import Any

import anyio

from plait.state.run_store import (
    BOTTLENECK_RUNS,
    DELIVERY_LOG_KEPT,
    AgentUsage,
    EventRouter,
    OutboxMessage,
    RunPage,
    RunStats,
    RunTiming,
    StepStats,
    StepTiming,
    WebhookAttempt,
    WorkflowStats,
    page_cursor,
    percentiles_of,
    row_of,
)
from plait.state.runs import Event, Run, is_top_level, without_indexes
from plait.values import dumps

__all__ = ["MemoryStore"]


class MemoryStore:
    """The :class:`~plait.state.RunStore` of a host that keeps nothing on disk."""

    def __init__(self, keep_finished: int = 10_000, *, webhooks: EventRouter | None = None) -> None:
        self.keep_finished = keep_finished
        """How many finished runs stay answerable; the longest-finished go first."""
        self._runs: dict[str, Run] = {}
        self._finished: deque[str] = deque()
        self._keys: dict[str, str] = {}
        self._definitions: dict[str, dict[str, Any]] = {}
        self._workflows: dict[str, dict[str, Any]] = {}
        self._breakpoints: dict[str, list[dict[str, Any]]] = {}
        self._step_configs: dict[tuple[str, str, int], Any] = {}
        self._schedules: dict[str, dict[str, Any]] = {}
        self._dead_letters: dict[str, dict[str, Any]] = {}
        self._router = webhooks
        """Names the webhook subscriptions of each told event (the outbox below)."""
        self._webhooks: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self._outbox: dict[int, OutboxMessage] = {}
        self._outbox_ids = count(1)
        self._deliveries: dict[str, deque[dict[str, Any]]] = {}
        self._delivery_ids = count(1)

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
        if self._router is not None:  # told at once: its deliveries are queued as it is told
            run.listen(partial(self._route, self._router, run))

    def _route(self, router: EventRouter, run: Run, event: Event) -> None:
        routed = router.route(run, event)
        if routed is not None:
            hooks, body = routed
            for hook in hooks:
                key = next(self._outbox_ids)
                self._outbox[key] = OutboxMessage(key, hook, body, 0, event.ts, event.ts)

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

    def put_breakpoints(self, workflow: str, breakpoints: list[dict[str, Any]]) -> None:
        """Keep a workflow's breakpoints (replacing what was kept)."""
        self._breakpoints[workflow] = list(breakpoints)

    def put_step_config(self, run_id: str, path: str, attempt: int, config: Any) -> None:
        """Keep the whole configuration of a step attempt (while the run is kept)."""
        self._step_configs[run_id, path, attempt] = config

    def put_dead_letter(self, entry: dict[str, Any]) -> None:
        """Keep a dead-letter entry (replacing one for the same run)."""
        self._dead_letters[entry["run_id"]] = dict(entry)

    async def dead_letters(
        self,
        *,
        workflow: str | None = None,
        error_type: str | None = None,
        since: float | None = None,
        until: float | None = None,
        state: str | None = "open",
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Dead-letter entries, newest first, filtered."""
        found = [
            dict(e)
            for e in self._dead_letters.values()
            if (workflow is None or e["workflow"] == workflow)
            and (error_type is None or e.get("error_type") == error_type)
            and (since is None or e["failed_at"] >= since)
            and (until is None or e["failed_at"] < until)
            and (state is None or e["state"] == state)
        ]
        found.sort(key=lambda e: e["failed_at"], reverse=True)
        return found[:limit]

    async def dead_letter(self, run_id: str) -> dict[str, Any] | None:
        """One dead-letter entry by its run's id."""
        entry = self._dead_letters.get(run_id)
        return dict(entry) if entry is not None else None

    def prune_dead_letters(self, before: float) -> None:
        """Forget the entries of runs that failed before ``before``."""
        for run_id in [k for k, e in self._dead_letters.items() if e["failed_at"] < before]:
            del self._dead_letters[run_id]

    async def breakpoints(self) -> dict[str, list[dict[str, Any]]]:
        """Every workflow's breakpoints."""
        return {name: list(items) for name, items in self._breakpoints.items()}

    async def step_config(self, run_id: str, path: str, attempt: int) -> Any:
        """The whole configuration of a step attempt, if it was kept apart."""
        return self._step_configs.get((run_id, path, attempt))

    def put_schedule(self, name: str, spec: dict[str, Any], state: dict[str, Any]) -> None:
        """Keep a schedule's spec and state (as JSON text: nothing is shared with the caller)."""
        self._schedules[name] = {"name": name, "spec": dumps(spec), "state": dumps(state)}

    def delete_schedule(self, name: str) -> None:
        """Forget a schedule."""
        self._schedules.pop(name, None)

    async def schedules(self) -> list[dict[str, Any]]:
        """Every kept schedule, by name."""
        return [
            {"name": name, "spec": json.loads(row["spec"]), "state": json.loads(row["state"])}
            for name, row in sorted(self._schedules.items())
        ]

    def put_webhook(
        self,
        webhook_id: str,
        spec: dict[str, Any],
        state: dict[str, Any],
        *,
        requeue_at: float | None = None,
    ) -> None:
        """Keep a webhook subscription; with ``requeue_at``, its messages start over."""
        self._webhooks[webhook_id] = (dict(spec), dict(state))
        if requeue_at is not None:
            for key, message in self._outbox.items():
                if message.webhook == webhook_id:
                    self._outbox[key] = replace(message, attempts=0, next_at=requeue_at)

    def set_webhook_state(self, webhook_id: str, state: dict[str, Any]) -> None:
        """A kept subscription's new state."""
        kept = self._webhooks.get(webhook_id)
        if kept is not None:
            self._webhooks[webhook_id] = (kept[0], dict(state))

    def delete_webhook(self, webhook_id: str) -> None:
        """Forget a subscription, its outbox messages and its delivery log."""
        self._webhooks.pop(webhook_id, None)
        self._deliveries.pop(webhook_id, None)
        for key in [k for k, m in self._outbox.items() if m.webhook == webhook_id]:
            del self._outbox[key]

    def webhook_attempt(self, attempt: WebhookAttempt) -> None:
        """Log a delivery attempt; its message leaves the outbox or is due again."""
        log = self._deliveries.setdefault(attempt.webhook, deque(maxlen=DELIVERY_LOG_KEPT))
        log.append(
            {
                "id": next(self._delivery_ids),
                "messageId": attempt.message_id,
                "attempt": attempt.attempt,
                "status": attempt.status,
                "error": attempt.error,
                "ts": attempt.ts,
            }
        )
        message = self._outbox.get(attempt.outbox_id)
        if message is None:
            return
        if attempt.next_at is None:
            del self._outbox[attempt.outbox_id]
        else:
            self._outbox[attempt.outbox_id] = replace(
                message, attempts=attempt.attempt, next_at=attempt.next_at
            )

    async def webhooks(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """Every kept subscription: ``(id, spec, state)``, by id."""
        return [(k, dict(spec), dict(state)) for k, (spec, state) in sorted(self._webhooks.items())]

    async def due_webhook_messages(
        self, now: float, webhooks: Collection[str], limit: int
    ) -> tuple[list[OutboxMessage], float | None]:
        """Due outbox messages of ``webhooks``, the longest due first, and when the next is."""
        hooks = set(webhooks)
        mine = [m for m in self._outbox.values() if m.webhook in hooks]
        due = sorted((m for m in mine if m.next_at <= now), key=lambda m: (m.next_at, m.id))
        later = [m.next_at for m in mine if m.next_at > now]
        return due[:limit], min(later) if later else None

    async def webhook_deliveries(
        self, webhook_id: str, *, before: int | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """A subscription's delivery attempts, newest first, with ids below ``before``."""
        found = []
        for row in reversed(self._deliveries.get(webhook_id, ())):
            if before is None or row["id"] < before:
                found.append(dict(row))
                if len(found) == limit:
                    break
        return found

    async def webhook_backlog(self) -> dict[str, int]:
        """Messages waiting in the outbox, by subscription."""
        return dict(Counter(m.webhook for m in self._outbox.values()))

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

    async def stats(self, *, workflow: str | None = None, since: float | None = None) -> RunStats:
        """``runs/stats`` over the kept runs, computed here from the runs and their events
        (at most ``keep_finished`` finished runs: the figures are of those)."""
        runs = sorted(
            (
                r
                for r in self._runs.values()
                if (workflow is None or r.workflow == workflow)
                and (since is None or r.created_at >= since)
            ),
            key=lambda r: r.workflow,
        )
        by_workflow: dict[str, list[Run]] = {}
        by_step: dict[tuple[str, str], list[tuple[Run, str, bool]]] = {}
        agents: dict[str, AgentUsage] = {}
        for run in runs:
            by_workflow.setdefault(run.workflow, []).append(run)
            cached = _cached_steps(run)
            for path, state in run.steps.items():
                if state.status in ("succeeded", "failed") and state.reused_from is None:
                    key = (run.workflow, without_indexes(path))
                    by_step.setdefault(key, []).append((run, path, path in cached))
            for event in run.events[: run.published]:
                if event.type == "agent.usage":
                    _add_usage(agents, event.data)
        workflows = []
        for name, kept in by_workflow.items():
            statuses = Counter(r.status for r in kept)
            durations = [
                r.finished_at - r.started_at
                for r in kept
                if r.finished_at is not None and r.started_at is not None
            ]
            workflows.append(
                WorkflowStats(
                    name,
                    len(kept),
                    statuses["succeeded"],
                    statuses["failed"],
                    statuses["cancelled"],
                    percentiles_of(durations),
                )
            )
        steps = []
        for (name, step), ran in sorted(by_step.items()):
            states = [(run.steps[path], cached) for run, path, cached in ran]
            durations = [
                s.finished_at - s.started_at
                for s, _ in states
                if s.finished_at is not None and s.started_at is not None
            ]
            steps.append(
                StepStats(
                    name,
                    step,
                    len(states),
                    sum(s.status == "failed" for s, _ in states),
                    sum(s.attempts > 1 for s, _ in states),
                    sum(cached for _, cached in states),
                    sum(s.waited for s, _ in states),
                    sum(durations),
                    percentiles_of(durations),
                )
            )
        return RunStats(workflows, steps, [agents[name] for name in sorted(agents)])

    async def run_timings(
        self, workflow: str, *, since: float | None = None, limit: int = BOTTLENECK_RUNS
    ) -> list[RunTiming]:
        """The newest kept succeeded runs of ``workflow`` with their top-level step timings."""
        runs = sorted(
            (
                r
                for r in self._runs.values()
                if r.workflow == workflow
                and r.status == "succeeded"
                and r.started_at is not None
                and r.finished_at is not None
                and (since is None or r.created_at >= since)
            ),
            key=lambda r: r.created_at,
            reverse=True,
        )[:limit]
        out = []
        for run in runs:
            assert run.started_at is not None and run.finished_at is not None
            cached = _cached_steps(run)
            steps = [
                StepTiming(
                    path,
                    s.status,
                    s.started_at,
                    s.finished_at,
                    s.waited,
                    s.attempts,
                    path in cached,
                )
                for path, s in run.steps.items()
                if is_top_level(path)
            ]
            out.append(RunTiming(run.id, run.digest, run.started_at, run.finished_at, steps))
        return out

    def describe(self) -> dict[str, Any]:
        """What ``host/info`` reports: not durable, and how many runs are kept."""
        return {"durable": False, "runs": len(self._runs), "keepFinished": self.keep_finished}


def _cached_steps(run: Run) -> set[str]:
    """The steps of ``run`` whose last attempt took a tool result from the cache (a
    ``step.cached`` event after the attempt's ``step.started``)."""
    cached: set[str] = set()
    for event in run.events[: run.published]:
        if event.type == "step.cached":
            cached.add(event.step or "")
        elif event.type == "step.started":
            cached.discard(event.step or "")
    return cached


def _add_usage(agents: dict[str, AgentUsage], data: dict[str, Any]) -> None:
    """Count one ``agent.usage`` event's figures into ``agents``."""
    name = str(data.get("agent", ""))
    kept = agents.get(name)
    turns = data.get("turns")
    turns = turns if isinstance(turns, int) else 0
    usage = dict(kept.usage) if kept is not None else {}
    for key, used in (data.get("usage") or {}).items():
        if isinstance(used, int) and not isinstance(used, bool):
            usage[key] = usage.get(key, 0) + used
    agents[name] = AgentUsage(
        name,
        (kept.steps if kept is not None else 0) + 1,
        (kept.turns if kept is not None else 0) + turns,
        usage,
    )
