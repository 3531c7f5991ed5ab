"""``runs/stats``: run, step and agent figures of the kept runs, and a workflow's bottlenecks.

Params: ``since`` (Unix seconds: only runs created at or after it count; default all kept
runs), ``workflow`` (one workflow's figures only) and ``bottleneck`` (the workflow's bottleneck
report; by default on exactly when ``workflow`` is given, since a report is of one workflow:
``bottleneck: true`` without a workflow is refused, ``false`` with one leaves it out). An
unknown workflow is ``-32602`` naming it and the registered names close to it: a typo must not
read as "no runs". docs/analytics.md says what each figure means.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from plait.engine.analytics import unknown_workflow
from plait.errors import WorkflowNotFound
from plait.rpc.dispatcher import Dispatcher
from plait.rpc.errors import InvalidParams
from plait.rpc.session import Session

if TYPE_CHECKING:
    from plait.rpc.host_api import HostApi

__all__ = ["register_stats"]


class StatsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)

    workflow: str | None = Field(None, min_length=1, max_length=256)
    since: float | None = Field(None, ge=0)
    """Unix seconds; ints are taken too (strict mode lets an int be a float)."""
    bottleneck: bool | None = None

    @model_validator(mode="after")
    def _of_a_workflow(self) -> StatsParams:
        if self.bottleneck and self.workflow is None:
            raise ValueError("a bottleneck report is of one workflow: give workflow")
        return self


def register_stats(dispatcher: Dispatcher, host: HostApi) -> None:
    """Add ``runs/stats``, bound to ``host``, to ``dispatcher``."""

    @dispatcher.method("runs/stats", StatsParams, cancellable=True)
    async def stats(session: Session, p: StatsParams) -> dict[str, Any]:
        bottleneck = p.workflow is not None if p.bottleneck is None else p.bottleneck
        try:
            return await host.run_stats(workflow=p.workflow, since=p.since, bottleneck=bottleneck)
        except WorkflowNotFound:
            assert p.workflow is not None
            known = [entry.name for entry in host.list_workflows()]
            message, close = unknown_workflow(p.workflow, known)
            raise InvalidParams(message, {"workflow": p.workflow, "closeMatches": close}) from None
