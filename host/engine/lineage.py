"""Re-running a run from one of its steps (``runs/rerun``) and comparing two runs (``runs/diff``).

A rerun is a new run, never a change of the old one: the source run's history stays what it
was, and the new run's own events say what it took over and from where. The steps that do not
depend on the chosen step (transitively, through the compiled graph: references, ``needs``,
branches and fallbacks) and that succeeded in the source keep their results; the chosen step
and everything downstream of it run again.

Taking a result over is recorded as a ``step.reused`` event, all of them right after
``run.created`` and before anything runs, and the scheduler settles those steps from records
without running them, exactly as it settles the steps a restart finds settled
(:func:`plait.state.recovery.replay` folds ``step.reused`` like ``step.succeeded``). So a
host that crashes during a rerun resumes it without running a reused step either.

The store's rows (the run row, the step rows) are written for steps that *ran*: a finished
rerun read back from the store gets its origin and its reused steps from those first events
(:func:`kept_lineage`), which is why they come first and together.

A ``config`` override makes a definition that no catalog version has: it is kept in the store
by its digest, like every snapshot a run executes, without becoming a version of the workflow
(the workflow's current version stays as it was for everyone else), so a restart finds it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from itertools import takewhile
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from plait.definition.compiler import CompiledStep, CompiledWorkflow, Scope
from plait.errors import DefinitionError, InputsInvalid, WorkflowNotFound, did_you_mean
from plait.plugins.types import Message
from plait.state.recovery import StepRecord, replay
from plait.state.runs import STEP_SETTLED, Event, Run, is_top_level
from plait.values import bounded

if TYPE_CHECKING:
    from plait.engine.catalog import Catalog
    from plait.state.run_store import RunStore

__all__ = [
    "REUSED",
    "LineageServices",
    "RerunInvalid",
    "diff_runs",
    "kept_lineage",
    "plan_reuse",
    "rerun",
]

REUSED = "step.reused"
"""The event of a step whose result a rerun took over from its source run."""
HEAD_PAGE = 256
"""Events read at a time when a finished rerun's first events are read back."""
_HEAD = frozenset({REUSED, "conversation.appended"})
"""What a rerun records between ``run.created`` and its start (see :func:`kept_lineage`)."""
_COPIED = frozenset({*STEP_SETTLED, "interrupted"})
"""Statuses of the steps inside a reused step that are copied with it (settled ones)."""
_PATH_HEAD = re.compile(r"[.\[]")


class RerunInvalid(InputsInvalid):
    """A ``runs/rerun`` request that cannot make a run; nothing was created.

    An :class:`InputsInvalid`, like a refused signal: what the caller gave does not fit the
    run, so the JSON-RPC method answers invalid params (-32602) and the command line bad input.
    """

    def __init__(self, workflow: str, problem: str, problems: list[str] | None = None) -> None:
        self.workflow = workflow
        self.problems = problems or [problem]
        super(InputsInvalid, self).__init__(problem)  # its own words, not "invalid inputs"


class LineageServices(Protocol):
    """What a rerun and a diff need of the engine (the engine is one).

    A protocol rather than the :class:`~plait.engine.engine.Engine` itself: the engine imports
    this module (for :func:`kept_lineage`), so this module does not import it back.
    """

    store: RunStore
    catalog: Catalog

    async def load_run(self, run_id: str) -> Run:
        """A run by id or unique prefix, live or kept."""
        ...

    async def events(self, run_id: str, since: int = 0, limit: int | None = None) -> list[Event]:
        """A run's kept events after ``since``."""
        ...

    async def snapshot(self, digest: str | None, name: str, version: int) -> CompiledWorkflow:
        """The compiled definition a run executes."""
        ...

    def compile(self, source: Mapping[str, Any], *, check_plugins: bool = True) -> CompiledWorkflow:
        """Compile a definition against the engine's plugins."""
        ...

    async def start(
        self,
        compiled: CompiledWorkflow,
        inputs: Mapping[str, Any] | None = None,
        *,
        origin: Any = None,
        rerun_of: Mapping[str, Any] | None = None,
        reuse: Callable[[Run], dict[str, StepRecord]] | None = None,
    ) -> Run:
        """Create a run and start it; returns once its creation is kept."""
        ...


# -- runs/rerun ------------------------------------------------------------------------------


async def rerun(
    engine: LineageServices,
    run_id: str,
    step: str,
    *,
    inputs: Mapping[str, Any] | None = None,
    version: int | None = None,
    config: Mapping[str, Any] | None = None,
    origin: Any = None,
) -> Run:
    """Start a new run from run ``run_id``: ``step`` (a top-level step id) and what depends on
    it run again, the other steps that succeeded there keep their results.

    ``inputs`` replaces the source's inputs, ``version`` runs another version of the workflow
    (a step whose definition differs there runs again, and so does what depends on it), and
    ``config`` lays fields over ``step``'s definition for this run only (a field set to
    ``null`` is removed). ``origin`` is the client connection that asked. Everything is checked
    before anything is kept: a refused request creates nothing.

    Raises:
        RunNotFound: no run ``run_id`` (or the prefix names several).
        RerunInvalid: the step, the version or the config does not fit; InputsInvalid: the
            inputs.
    """
    source = await engine.load_run(run_id)
    name = source.workflow
    top = _PATH_HEAD.split(step, maxsplit=1)[0]
    if top != step:
        raise RerunInvalid(
            name,
            f"{step!r} is a step inside step {top!r}: a run re-runs from a top-level step; "
            f"give {top!r} (it runs again as a whole)",
        )
    try:
        base = await engine.snapshot(source.digest, name, source.version)
    except (DefinitionError, LookupError) as exc:
        raise RerunInvalid(
            name,
            f"the definition run {source.id} executed (workflow {name!r} version "
            f"{source.version}) no longer loads: {str(exc).splitlines()[0]}",
        ) from None
    # the source's own snapshot by default (a rerun of a rerun keeps its config override)
    target = base if version is None else _version(engine, name, version)
    if step not in target.scope.by_id:
        known = list(target.scope.by_id)
        raise RerunInvalid(
            name,
            f"workflow {name!r} version {target.version} has no step {step!r}"
            f"{did_you_mean(step, known)}; its steps: {', '.join(known)}",
        )
    if config:
        target = await _overlaid(engine, target, step, config)
    values = dict(source.inputs if inputs is None else inputs)
    _check_inputs(target, values)
    events = await engine.events(source.id)
    records = replay(events).steps
    reused = plan_reuse(base.scope, target.scope, records, step)
    if target.digest != base.digest:
        _keep_definition(engine, target)

    def take_over(run: Run) -> dict[str, StepRecord]:
        return _take_over(run, source.id, reused, records, events)

    lineage: dict[str, Any] = {"runId": source.id, "step": step}
    if config:  # the run's definition is no version's: say how it was made
        lineage["config"] = dict(config)
    return await engine.start(target, values, origin=origin, rerun_of=lineage, reuse=take_over)


def plan_reuse(
    source: Scope, target: Scope, records: Mapping[str, StepRecord], step: str
) -> list[str]:
    """The top-level steps of ``target`` whose results a rerun from ``step`` takes over from a
    run of ``source`` whose steps ended as ``records`` say, in the order they are written.

    What runs again: ``step``, every step whose definition differs between the two versions
    (or that ``source`` does not have), and everything that depends on one of them. Of the
    rest, a step is taken over when it succeeded and the scheduler will settle it from its
    record: each of its dependencies is taken over too (or is a fallback that will not be
    needed, its primary being taken over), and at least one of its ``needs_any`` steps is. A
    step whose dependency runs again could be skipped this time where it ran before, so it
    runs again rather than show a result its run contradicts.
    """
    steps = target.steps
    again: set[int] = set()
    pending = [target.by_id[step], *(s.index for s in steps if _changed(s, target, source))]
    while pending:
        i = pending.pop()
        if i not in again:
            again.add(i)
            pending.extend(steps[i].dependents)
    reused: set[int] = set()
    for i in _topological(steps):
        s = steps[i]
        rec = records.get(s.id)
        if i in again or rec is None or rec.status != "succeeded":
            continue
        if not all(d in reused or steps[d].fallback_for in reused for d in s.deps):
            continue
        if s.any_deps and not any(d in reused for d in s.any_deps):
            continue
        reused.add(i)
    return [s.id for s in steps if s.index in reused]


def _changed(step: CompiledStep, target: Scope, source: Scope) -> bool:
    """Whether ``step`` is not the step of that id in ``source`` (a step that is not there, or
    one written differently, or whose failure goes to another fallback)."""
    j = source.by_id.get(step.id)
    if j is None:
        return True
    old = source.steps[j]
    return old.definition != step.definition or _handler(old, source) != _handler(step, target)


def _handler(step: CompiledStep, scope: Scope) -> str:
    return scope.steps[step.fallback].id if step.fallback is not None else step.on_error


def _topological(steps: list[CompiledStep]) -> list[int]:
    """Step indices, each after every step it depends on."""
    indegree = [len(s.deps) + len(s.any_deps) for s in steps]
    ready = [s.index for s in steps if not indegree[s.index]]
    order = []
    while ready:
        i = ready.pop()
        order.append(i)
        for d in steps[i].dependents:
            indegree[d] -= 1
            if not indegree[d]:
                ready.append(d)
    return order


def _version(engine: LineageServices, name: str, version: int) -> CompiledWorkflow:
    try:
        return engine.catalog.get(name, version)
    except WorkflowNotFound:
        try:
            versions = ", ".join(str(v["version"]) for v in engine.catalog.versions(name))
        except WorkflowNotFound:
            raise RerunInvalid(
                name, f"workflow {name!r} is not registered, so it has no version {version}"
            ) from None
        raise RerunInvalid(
            name, f"workflow {name!r} has no version {version}; its versions: {versions}"
        ) from None
    except DefinitionError as exc:
        raise RerunInvalid(
            name,
            f"workflow {name!r} version {version} no longer compiles: {str(exc).splitlines()[0]}",
        ) from None


async def _overlaid(
    engine: LineageServices, compiled: CompiledWorkflow, step: str, config: Mapping[str, Any]
) -> CompiledWorkflow:
    """``compiled`` with ``config``'s fields laid over step ``step`` (``null`` removes one),
    compiled and checked like any workflow put to the host."""
    name = compiled.name
    if "id" in config and config["id"] != step:
        raise RerunInvalid(name, f"config cannot change the id of step {step!r}")
    definition = compiled.definition.to_dict()
    written = definition["steps"]
    i = next(n for n, s in enumerate(written) if s.get("id") == step)
    merged = {**written[i], **config}
    written[i] = {key: value for key, value in merged.items() if value is not None}
    try:
        # off the event loop: a workflow of thousands of steps compiles for seconds
        changed = await anyio.to_thread.run_sync(lambda: engine.compile(definition))
    except DefinitionError as exc:
        problems = [str(issue) for issue in exc.issues]
        raise RerunInvalid(
            name,
            f"the config given for step {step!r} does not make a valid workflow: "
            + "; ".join(problems),
            problems,
        ) from None
    changed.version = compiled.version
    return changed


def _check_inputs(compiled: CompiledWorkflow, inputs: dict[str, Any]) -> None:
    """Refuse inputs the run would refuse, before anything is kept for it (the engine checks
    them again, with the same schema defaults, when it creates the run)."""
    values = dict(inputs)
    for key, prop in (compiled.definition.inputs.get("properties") or {}).items():
        if key not in values and isinstance(prop, Mapping) and "default" in prop:
            values[key] = prop["default"]
    problems = compiled.check_inputs(values)
    if problems:
        raise InputsInvalid(compiled.name, problems)


def _keep_definition(engine: LineageServices, compiled: CompiledWorkflow) -> None:
    """Keep a definition made for one rerun in the store, by its digest, as the snapshot the
    run executes (a restart compiles it from there), without making it a version.

    The store keeps definitions with a version (``put_workflow``): it is filed under the
    workflow's current version, whose row exists already and is left as it is, and which
    is then made current again, so nothing changes for anyone but this run.
    """
    name = compiled.name
    if engine.catalog.find(compiled.digest) is not None:
        return  # a version has this content: kept already
    try:
        current = engine.catalog.entry(name).version
    except WorkflowNotFound:
        raise RerunInvalid(
            name,
            f"workflow {name!r} is not registered (deleted?): a config override is kept beside "
            "its versions; register it again, or re-run without config",
        ) from None
    store = engine.store
    store.put_workflow(name, current, compiled.digest, compiled.definition.to_dict(), time.time())
    store.set_current(name, current)


def _take_over(
    run: Run,
    source_id: str,
    reused: list[str],
    records: Mapping[str, StepRecord],
    events: Iterable[Event],
) -> dict[str, StepRecord]:
    """Record in the new ``run`` what it takes over from run ``source_id``; return the records
    its scheduler settles the reused steps from.

    Each reused step is a ``step.reused`` event, and so is each step inside one (a loop's
    iterations: the run shows them as they were); the conversation messages the reused steps
    added come along, so a step that runs again continues the same history.
    """
    top = set(reused)
    inside = tuple(f"{i}{sep}" for i in reused for sep in ".[")
    out: dict[str, StepRecord] = {}
    for path, rec in records.items():  # in the order the source reached them
        if path in top:
            out[path] = StepRecord(
                status="succeeded",
                output=rec.output,
                attempts=rec.attempts,
                branches=rec.branches,
                reused_from=source_id,
            )
        elif not (path.startswith(inside) and rec.status in _COPIED):
            continue
        data: dict[str, Any] = {"from": source_id, "output": rec.output, "attempts": rec.attempts}
        if rec.status != "succeeded":
            data["status"] = rec.status
        if rec.error is not None:
            data["error"] = rec.error
        if rec.branches is not None:
            data["branches"] = rec.branches
        run.set_step(
            path,
            rec.status,
            data,
            type=REUSED,
            output=rec.output,
            error=rec.error,
            attempts=rec.attempts,
            reused_from=source_id,
        )
    for event in events:
        step = event.step
        if event.type != "conversation.appended" or step is None:
            continue
        if step in top or step.startswith(inside):
            name, messages = event.data["conversation"], event.data["messages"]
            # kept on the run first: the store numbers the messages from the history's length
            run.conversations.setdefault(name, []).extend(Message.from_dict(m) for m in messages)
            run.record(event.type, step, {"conversation": name, "messages": messages})
    return out


async def kept_lineage(store: RunStore, run: Run) -> None:
    """Complete a finished run read back from ``store`` with what its rows leave out when it
    is a rerun: its origin, and the steps it took over (rows are written for steps that ran).

    Both come from the run's first events: ``run.created`` names the origin, and a rerun
    records its ``step.reused`` events (and the conversations they bring) right after it. A
    run that is not a rerun costs one read of its first event.
    """
    head = await store.events(run.id, 0, 1)
    if not head or not head[0].data.get("origin"):
        return
    events = list(head)
    while True:
        page = await store.events(run.id, events[-1].seq, HEAD_PAGE)
        lead = list(takewhile(lambda e: e.type in _HEAD, page))
        events.extend(lead)
        if len(lead) < HEAD_PAGE:
            break
    state = replay(events)
    run.rerun_of = state.origin
    taken = {path: rec.state() for path, rec in state.steps.items()}
    for path, row in run.steps.items():  # a reused step's row does not say it was reused
        took = taken.get(path)
        if took is not None and took.reused_from is not None and row.status == took.status:
            row.reused_from = took.reused_from
    run.steps = {**taken, **run.steps}  # a row written later for a step wins
    run.settled_steps = sum(
        1 for path, s in run.steps.items() if is_top_level(path) and s.status in STEP_SETTLED
    )


# -- runs/diff -------------------------------------------------------------------------------

_FIELDS = ("status", "output", "error")
_ABSENT = object()


async def diff_runs(engine: LineageServices, run_id: str, other_id: str) -> dict[str, Any]:
    """Compare two runs (of any workflows) step by step: ``{first, steps}``.

    ``steps`` lists every difference as ``{path, field, a, b}``: the runs' inputs (path ``""``)
    and, for each step path of either run, its status, output, error and the configuration its
    last attempt ran with (the ``config`` of its last ``step.started``, compared where both
    runs recorded one: a reused step ran nowhere in its run). Paths come in the order the first
    run reached them, then those only the second run has; ``first`` is the first step path
    with a difference, or ``None``. Values whose JSON is large are cut as in events.
    """
    a, b = await engine.load_run(run_id), await engine.load_run(other_id)
    view_a, view_b = await a.view(), await b.view()
    events_a, events_b = await engine.events(a.id), await engine.events(b.id)
    steps_a, steps_b = view_a.get("steps") or {}, view_b.get("steps") or {}
    order = _reached(events_a)
    for path in _reached(events_b):
        order.setdefault(path, None)
    for path in sorted({*steps_a, *steps_b}):  # what no event names (kept rows only)
        order.setdefault(path, None)
    configs_a, configs_b = _configs(events_a), _configs(events_b)
    out: list[dict[str, Any]] = []
    if not _same(view_a.get("inputs"), view_b.get("inputs")):
        out.append(_difference("", "inputs", view_a.get("inputs"), view_b.get("inputs")))
    first = None
    for path in order:
        state_a, state_b = steps_a.get(path) or {}, steps_b.get(path) or {}
        found = [
            _difference(path, field, state_a.get(field), state_b.get(field))
            for field in _FIELDS
            if not _same(state_a.get(field), state_b.get(field))
        ]
        config_a, config_b = configs_a.get(path, _ABSENT), configs_b.get(path, _ABSENT)
        if _ABSENT not in (config_a, config_b) and not _same(config_a, config_b):
            found.append(_difference(path, "config", config_a, config_b))
        if found and first is None:
            first = path
        out.extend(found)
    return {"first": first, "steps": out}


def _reached(events: Iterable[Event]) -> dict[str, None]:
    """Step paths in the order a run first recorded something of them (started, skipped,
    reused...), as the keys of a dict."""
    return {e.step: None for e in events if e.step is not None and e.type.startswith("step.")}


def _configs(events: Iterable[Event]) -> dict[str, Any]:
    """Each step's configuration as its last attempt ran with it (``step.started``)."""
    return {
        e.step: e.data["config"]
        for e in events
        if e.type == "step.started" and e.step is not None and "config" in e.data
    }


def _difference(path: str, field: str, a: Any, b: Any) -> dict[str, Any]:
    return {"path": path, "field": field, "a": bounded(a), "b": bounded(b)}


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, ``1`` is ``1.0``, and key order does not count."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(_same(value, b[key]) for key, value in a.items())
        )
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b
