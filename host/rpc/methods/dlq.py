"""The dead-letter queue's JSON-RPC methods: ``dlq/list|get|replay|discard``.

``replay`` and ``discard`` take one ``runId`` or a filter (the same as ``dlq/list``'s) and
act on every open entry it selects, reporting each: one entry that cannot be replayed (its
workflow was deleted, say) does not stop the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from plait.errors import DeadLetterError
from plait.rpc.dispatcher import Dispatcher
from plait.rpc.session import Session

if TYPE_CHECKING:
    from plait.rpc.host_api import HostApi

__all__ = ["register_dlq"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class FilterParams(_Params):
    workflow: str | None = None
    error_type: str | None = Field(None, alias="errorType")
    since: float | None = None
    until: float | None = None
    state: Literal["open", "replayed", "discarded"] | None = "open"
    limit: int = Field(100, ge=1, le=1000)


class EntryParams(_Params):
    run_id: str = Field(alias="runId")


class ActParams(FilterParams):
    run_id: str | None = Field(None, alias="runId")
    version: int | None = Field(None, ge=1)
    inputs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_or_filter(self) -> ActParams:
        if self.run_id is None and self.workflow is None and self.error_type is None:
            raise ValueError("give runId, or a filter (workflow, errorType, since, until)")
        return self


def register_dlq(dispatcher: Dispatcher, host: HostApi) -> None:
    """Add the dead-letter methods, bound to ``host``, to ``dispatcher``."""
    method = dispatcher.method

    async def selected(p: ActParams) -> list[str]:
        if p.run_id is not None:
            return [p.run_id]
        entries = await host.dead_letters.list(
            workflow=p.workflow,
            error_type=p.error_type,
            since=p.since,
            until=p.until,
            state="open",
            limit=p.limit,
        )
        return [e["run_id"] for e in entries]

    @method("dlq/list", FilterParams)
    async def list_entries(session: Session, p: FilterParams) -> dict[str, Any]:
        entries = await host.dead_letters.list(
            workflow=p.workflow,
            error_type=p.error_type,
            since=p.since,
            until=p.until,
            state=p.state,
            limit=p.limit,
        )
        return {"entries": entries}

    @method("dlq/get", EntryParams)
    async def get(session: Session, p: EntryParams) -> dict[str, Any]:
        return {"entry": await host.dead_letters.get(p.run_id)}

    @method("dlq/replay", ActParams)
    async def replay(session: Session, p: ActParams) -> dict[str, Any]:
        done, failed = [], []
        for run_id in await selected(p):
            try:
                entry = await host.dead_letters.replay(run_id, version=p.version, inputs=p.inputs)
            except DeadLetterError as exc:
                if p.run_id is not None:
                    raise
                failed.append({"runId": run_id, "error": str(exc)})
                continue
            done.append({"runId": run_id, "replayedAs": entry["replayed_as"]})
        return {"replayed": done, "failed": failed}

    @method("dlq/discard", ActParams)
    async def discard(session: Session, p: ActParams) -> dict[str, Any]:
        discarded = [
            (await host.dead_letters.discard(run_id))["run_id"] for run_id in await selected(p)
        ]
        return {"discarded": discarded}
