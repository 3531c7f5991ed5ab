"""Compensation (sagas): when a run fails, undo what its succeeded steps did, latest first.

A top-level step may declare ``compensate:``, a step that undoes its effect (a refund for a
charge). When the run fails for good, the compensations of the steps that had succeeded run
one after another in reverse order of completion, each with its own retry policy, while the
run is still ``running``; a compensation that fails is recorded and the rest still run. Then
the run fails as it would have.

A compensation's steps are ordinary step events under ``<step>.compensate.<id>``, bracketed by
``compensation.started`` and ``compensation.succeeded`` / ``compensation.failed`` on the
compensated step; after a restart in the middle, the ones that ended are replayed from their
events and not run again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plait.engine.scheduler import ScopeExecution
from plait.errors import RunError

if TYPE_CHECKING:
    from plait.definition.compiler import CompiledWorkflow
    from plait.engine.scheduler import RunExecution

__all__ = ["compensate"]

_ENDED = ("compensation.succeeded", "compensation.failed")


async def compensate(rx: RunExecution, compiled: CompiledWorkflow) -> None:
    """Run the compensations a failed run owes, latest-succeeded step first."""
    top = rx.top
    run = rx.run
    if top is None:
        return
    steps = run.steps
    owed = [
        step
        for step in compiled.scope.steps
        if step.compensation is not None
        and step.id in steps
        and steps[step.id].status == "succeeded"
    ]
    if not owed:
        return
    done = {e.step for e in run.events if e.type in _ENDED}
    started = {e.step for e in run.events if e.type == "compensation.started"}
    owed.sort(key=lambda step: steps[step.id].finished_at or 0.0, reverse=True)
    for step in owed:
        if step.id in done:
            continue
        assert step.compensation is not None
        if step.id not in started:
            run.record("compensation.started", step.id, {})
        body = ScopeExecution(rx, step.compensation, f"{step.id}.compensate.", top)
        try:
            await body.execute()
        except RunError as exc:
            run.record("compensation.failed", step.id, {"error": exc.to_dict()})
            continue
        run.record("compensation.succeeded", step.id, {})
