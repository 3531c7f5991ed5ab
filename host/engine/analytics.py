"""``runs/stats``: what the store counts, and a bottleneck report read from the workflow's graph.

The store computes the figures (per workflow, per step, per agent; in SQL over indexed columns
for the durable store, see :meth:`plait.state.RunStore.stats`). What needs the compiled
workflow is done here: the **critical path** of each of a workflow's most recent succeeded
runs (at most :data:`~plait.state.run_store.BOTTLENECK_RUNS`), how often each step is on it and
what share of the runs' time it takes there, and advice on what would shorten the runs.

The critical path of a run is found backwards: from the top-level step that finished last, to
the dependency of that step (``needs``, a template reference, a branch's gate; of ``needs_any``
only the one that finished first, since the step waited for that one alone) that finished
latest, and so on until a step with no dependency that ran. That is the chain of steps each of
which held up the next: shortening any other step would not have ended the run sooner. Each
run is read with the graph of the version it ran (its definition digest); a run whose version
can no longer be compiled is read without a graph, each step's predecessor then being the step
that finished latest before it started.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from plait.definition.compiler import CompiledWorkflow
from plait.engine.catalog import Catalog
from plait.errors import DefinitionError, WorkflowNotFound
from plait.state.run_store import (
    BOTTLENECK_RUNS,
    RunStats,
    RunStore,
    RunTiming,
    StepStats,
    StepTiming,
    WorkflowStats,
)
from plait.state.runs import is_top_level

__all__ = [
    "Bottleneck",
    "Graph",
    "PathStep",
    "advice",
    "bottleneck",
    "bottleneck_to_dict",
    "critical_path",
    "graph_of",
    "run_stats",
    "stats_to_dict",
    "unknown_workflow",
]

WAITING_SHARE = 0.5
"""A step that waits for a concurrency slot for at least this share of its time is held by
the limit more than by its own work."""
RETRY_RATE = 0.1
"""A step retried in at least this share of its executions has failures to look at."""
FAILURE_RATE = 0.05
"""A step failing in at least this share of its executions has failures to look at."""
CACHE_RATE = 0.5
"""A cached step taking fewer of its results from the cache than this misses it mostly."""
DOMINANT_SHARE = 0.5
"""A step taking at least this share of the runs' time on their critical paths dominates."""
BETWEEN_SHARE = 0.2
"""At least this share of the runs' time passing between the steps of the critical path (retry
backoff, pauses, a store that held new steps back) is worth a word."""


@dataclass(frozen=True, slots=True)
class Graph:
    """What each top-level step of one workflow version waits for."""

    needs: Mapping[str, Sequence[str]]
    """Step id → the ids of the steps it needs all of (``needs``, references, gates)."""
    needs_any: Mapping[str, Sequence[str]]
    """Step id → the ids of the steps it needs one of (``needs_any``)."""
    cached: frozenset[str]
    """Steps with a ``cache:`` policy."""


def graph_of(compiled: CompiledWorkflow) -> Graph:
    """The top-level dependency graph of a compiled workflow."""
    steps = compiled.scope.steps
    return Graph(
        needs={s.id: [steps[d].id for d in s.deps] for s in steps},
        needs_any={s.id: [steps[d].id for d in s.any_deps] for s in steps},
        cached=frozenset(s.id for s in steps if s.cache is not None and s.cache.enabled),
    )


def critical_path(run: RunTiming, graph: Graph | None) -> list[StepTiming]:
    """The steps of ``run``'s critical path, first to last (see the module's docstring).

    Steps that did not run (skipped, no timings) are not on it. Without a graph, a step's
    predecessor is the step that finished latest before it started.
    """
    timed = {s.step: s for s in run.steps if s.started_at is not None and s.finished_at is not None}
    if not timed:
        return []
    current = max(timed.values(), key=_finished)
    path = [current]
    seen = {current.step}
    while True:
        if graph is not None and current.step in graph.needs:
            candidates = [timed[d] for d in graph.needs[current.step] if d in timed]
            first_of_any = [timed[d] for d in graph.needs_any.get(current.step, ()) if d in timed]
            if first_of_any:
                candidates.append(min(first_of_any, key=_finished))
        else:
            began = _started(current)
            candidates = [s for s in timed.values() if _finished(s) <= began]
        candidates = [s for s in candidates if s.step not in seen]
        if not candidates:
            break
        current = max(candidates, key=_finished)
        seen.add(current.step)
        path.append(current)
    path.reverse()
    return path


def _finished(step: StepTiming) -> float:
    assert step.finished_at is not None
    return step.finished_at


def _started(step: StepTiming) -> float:
    assert step.started_at is not None
    return step.started_at


@dataclass(frozen=True, slots=True)
class PathStep:
    """One step's place on the critical paths of the runs a report read."""

    step: str
    runs: int
    """Runs whose critical path it is on."""
    seconds: float
    """Seconds it took on those paths, in all (its waits for a concurrency slot included)."""
    waited: float
    """Of those, seconds it waited for a concurrency slot."""


@dataclass(frozen=True, slots=True)
class Bottleneck:
    """Where a workflow's recent runs spent their time, and what would shorten them."""

    workflow: str
    runs: int
    """Succeeded runs read (at most ``limit``)."""
    limit: int
    seconds: float
    """Their durations, in all."""
    between: float
    """Seconds of their durations spent on no step of their critical path (between steps:
    retry backoff, pauses, the wait before the first step)."""
    steps: list[PathStep]
    """Steps on some critical path, the most time on the paths first."""
    advice: list[str]


def bottleneck(
    workflow: str,
    timings: Sequence[RunTiming],
    graphs: Mapping[str | None, Graph | None],
    steps: Sequence[StepStats],
    *,
    limit: int = BOTTLENECK_RUNS,
) -> Bottleneck:
    """The report over ``timings`` (each read with ``graphs[its digest]``), with advice drawn
    from the paths and from the workflow's step figures ``steps``."""
    on_path: dict[str, list[float]] = {}
    total = between = 0.0
    for run in timings:
        duration = max(0.0, run.finished_at - run.started_at)
        total += duration
        path = critical_path(run, graphs.get(run.digest))
        spent = 0.0
        for s in path:
            took = max(0.0, _finished(s) - _started(s))
            spent += took
            kept = on_path.setdefault(s.step, [0, 0.0, 0.0])
            kept[0] += 1
            kept[1] += took
            kept[2] += min(s.waited, took)
        between += max(0.0, duration - spent)
    ranked = sorted(
        (PathStep(step, int(n), seconds, waited) for step, (n, seconds, waited) in on_path.items()),
        key=lambda p: (-p.seconds, p.step),
    )
    cached = frozenset().union(*(g.cached for g in graphs.values() if g is not None))
    report = Bottleneck(workflow, len(timings), limit, total, between, ranked, [])
    return replace(report, advice=advice(report, steps, cached))


def advice(report: Bottleneck, steps: Sequence[StepStats], cached: frozenset[str]) -> list[str]:
    """What would shorten the runs, most telling first: a step that dominates the critical
    path, one held by a concurrency limit, one retried or failing often, one whose cache
    mostly misses, and time lost between steps."""
    out: list[str] = []
    total = report.seconds
    figures = {s.step: s for s in steps if is_top_level(s.step)}
    if not report.runs or total <= 0:
        return out
    for p in report.steps:
        share = (p.seconds - p.waited) / total  # its own work: a wait for a slot is below
        if share >= DOMINANT_SHARE:
            out.append(
                f"{p.step} is on the critical path of {p.runs / report.runs:.0%} of the runs and "
                f"works {share:.0%} of their time: shortening it shortens the runs; make it "
                "faster, cache its results if its inputs repeat, or split it so that part of "
                "it runs beside other steps"
            )
    for p in report.steps:
        if p.seconds > 0 and p.waited / p.seconds >= WAITING_SHARE:
            out.append(
                f"{p.step} waits for a concurrency slot longer than it runs ({p.waited:.3g} s of "
                f"its {p.seconds:.3g} s on the critical paths): raise the limit that holds it "
                "(the workflow's concurrency, or [limits] max_concurrent_steps of the host)"
            )
    on_path = {p.step for p in report.steps}
    for step, s in sorted(figures.items()):
        where = " (on the critical path)" if step in on_path else ""
        if s.executions and s.retried / s.executions >= RETRY_RATE:
            out.append(
                f"{step}{where} is retried in {s.retried / s.executions:.0%} of its executions: "
                "look at its failures (plait runs events RUN) before adding attempts; each "
                "retry adds its backoff to the run"
            )
        elif s.executions and s.failed / s.executions >= FAILURE_RATE:
            out.append(
                f"{step}{where} fails in {s.failed / s.executions:.0%} of its executions: look "
                "at its failures (plait dlq list, plait runs events RUN)"
            )
        if step in cached and s.executions and s.cached / s.executions < CACHE_RATE:
            out.append(
                f"{step}{where} takes only {s.cached / s.executions:.0%} of its results from "
                "the cache: a longer ttl, or a cache.key that leaves out what differs between "
                "runs, lets more runs reuse them"
            )
    if report.between / total >= BETWEEN_SHARE:
        out.append(
            f"{report.between / total:.0%} of the runs' time passes between the steps of their "
            "critical path (retry backoff, pauses, a store that held new steps back)"
        )
    return out


async def run_stats(
    store: RunStore,
    catalog: Catalog,
    *,
    workflow: str | None = None,
    since: float | None = None,
    with_bottleneck: bool = False,
    limit: int = BOTTLENECK_RUNS,
) -> dict[str, Any]:
    """``runs/stats``'s reply: the store's figures, and with ``with_bottleneck`` (which needs a
    ``workflow``) the bottleneck report of its most recent ``limit`` succeeded runs.

    Raises:
        WorkflowNotFound: ``workflow`` is neither registered nor has runs kept in the window
            (a deleted workflow's runs still have their figures).
        ValueError: a bottleneck report without a workflow.
    """
    if with_bottleneck and workflow is None:
        raise ValueError("a bottleneck report is of one workflow: give workflow")
    stats = await store.stats(workflow=workflow, since=since)
    if workflow is not None and not stats.workflows and workflow not in catalog:
        raise WorkflowNotFound(workflow)
    reply = stats_to_dict(stats)
    reply["since"] = since
    if with_bottleneck:
        assert workflow is not None
        timings = await store.run_timings(workflow, since=since, limit=limit)
        graphs: dict[str | None, Graph | None] = {}
        for run in timings:
            if run.digest not in graphs:
                graphs[run.digest] = _graph(catalog, run.digest)
        report = bottleneck(workflow, timings, graphs, stats.steps, limit=limit)
        reply["bottleneck"] = bottleneck_to_dict(report)
    return reply


def unknown_workflow(name: str, known: Sequence[str]) -> tuple[str, list[str]]:
    """What to say of a workflow ``runs/stats`` does not know, and the ``known`` names close to
    it: a typo must read as one, not as a workflow without runs."""
    close = difflib.get_close_matches(name, list(known), n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return f"unknown workflow {name!r}: it is not registered and no run of it is kept{hint}", close


def _graph(catalog: Catalog, digest: str | None) -> Graph | None:
    """The graph of the version with that digest, or ``None`` when it cannot be had."""
    if digest is None:
        return None
    try:
        compiled = catalog.find(digest)
    except DefinitionError:  # a kept version that no longer compiles with these plugins
        return None
    return None if compiled is None else graph_of(compiled)


# -- the wire form -----------------------------------------------------------------------------


def _rate(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _workflow_to_dict(w: WorkflowStats) -> dict[str, Any]:
    return {
        "workflow": w.workflow,
        "runs": w.runs,
        "finished": w.finished,
        "succeeded": w.succeeded,
        "failed": w.failed,
        "cancelled": w.cancelled,
        "successRate": w.success_rate,
        "duration": w.duration.to_dict(),
    }


def _step_to_dict(s: StepStats) -> dict[str, Any]:
    return {
        "workflow": s.workflow,
        "step": s.step,
        "executions": s.executions,
        "failed": s.failed,
        "failureRate": _rate(s.failed, s.executions),
        "retried": s.retried,
        "retryRate": _rate(s.retried, s.executions),
        "cached": s.cached,
        "cacheHitRate": _rate(s.cached, s.executions),
        "waited": s.waited,
        "waitedShare": _rate(s.waited, s.busy),
        "duration": s.duration.to_dict(),
    }


def stats_to_dict(stats: RunStats) -> dict[str, Any]:
    """The JSON form of a store's figures (``runs/stats``'s ``workflows``, ``steps``,
    ``agents``)."""
    return {
        "workflows": [_workflow_to_dict(w) for w in stats.workflows],
        "steps": [_step_to_dict(s) for s in stats.steps],
        "agents": [
            {"agent": a.agent, "steps": a.steps, "turns": a.turns, "usage": dict(a.usage)}
            for a in stats.agents
        ],
    }


def bottleneck_to_dict(report: Bottleneck) -> dict[str, Any]:
    """The JSON form of a bottleneck report (``runs/stats``'s ``bottleneck``)."""
    return {
        "workflow": report.workflow,
        "runs": report.runs,
        "limit": report.limit,
        "seconds": report.seconds,
        "between": report.between,
        "steps": [
            {
                "step": p.step,
                "runs": p.runs,
                "onPath": _rate(p.runs, report.runs),
                "seconds": p.seconds,
                "share": _rate(p.seconds, report.seconds),
                "waited": p.waited,
            }
            for p in report.steps
        ],
        "advice": list(report.advice),
    }
