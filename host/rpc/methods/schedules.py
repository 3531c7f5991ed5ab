"""The schedules' JSON-RPC methods: ``schedules/put|list|get|delete|pause|resume|trigger``.

Each goes through the host's :class:`~plait.engine.schedules.Schedules`, which checks a request
in full before changing anything. A refusal (an invalid cron expression or time zone, an unknown
workflow, inputs the workflow's input schema refuses, an unknown policy, an unknown schedule)
is ``-32602`` whose ``data.problems`` name the field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from plait.definition.models import OverlapPolicy, ScheduleDef
from plait.engine.schedules import ScheduleError
from plait.rpc.dispatcher import Dispatcher
from plait.rpc.errors import InvalidParams, NotAllowed
from plait.rpc.session import Session

if TYPE_CHECKING:
    from plait.engine.schedules import Schedules

__all__ = ["ScheduleHost", "register_schedules"]


class ScheduleHost(Protocol):
    """What these methods need of the host: its schedules, while it fires them."""

    @property
    def schedules(self) -> Schedules | None: ...


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class PutParams(ScheduleDef):
    """A schedule as a workflow file writes it, plus the workflow it starts."""

    workflow: str = Field(min_length=1, max_length=128)
    version: int | None = Field(None, ge=1)
    """Pin a version (default: the workflow's current version at each fire)."""


class NameParams(_Params):
    name: str = Field(min_length=1, max_length=300)


class GetParams(NameParams):
    next: int = Field(5, ge=0, le=100)
    """How many upcoming fire times to show."""


class TriggerParams(NameParams):
    overlap: OverlapPolicy | None = None
    """The overlap policy of this fire (default: the schedule's)."""


def _refused(exc: ScheduleError) -> InvalidParams:
    return InvalidParams(str(exc), {"problems": [{"field": exc.field, "message": exc.message}]})


def register_schedules(dispatcher: Dispatcher, host: ScheduleHost) -> None:
    """Add the schedules' methods, bound to ``host``, to ``dispatcher``."""
    method = dispatcher.method

    def schedules() -> Schedules:
        found = host.schedules
        if found is None:
            raise NotAllowed("this host fires no schedules (it was started not to resume runs)")
        return found

    @method("schedules/put", PutParams)
    async def put(session: Session, p: PutParams) -> dict[str, Any]:
        definition = ScheduleDef.model_validate(
            p.model_dump(exclude={"workflow", "version"}, exclude_defaults=True) | {"name": p.name}
        )
        try:
            view = await schedules().put(definition, workflow=p.workflow, version=p.version)
        except ScheduleError as exc:
            raise _refused(exc) from None
        return {"schedule": view}

    @method("schedules/list")
    async def list_schedules(session: Session, p: None) -> dict[str, Any]:
        return {"schedules": schedules().summaries()}

    @method("schedules/get", GetParams)
    async def get(session: Session, p: GetParams) -> dict[str, Any]:
        try:
            return {"schedule": await schedules().view(p.name, upcoming=p.next)}
        except ScheduleError as exc:
            raise _refused(exc) from None

    @method("schedules/delete", NameParams)
    async def delete(session: Session, p: NameParams) -> dict[str, Any]:
        try:
            await schedules().delete(p.name)
        except ScheduleError as exc:
            raise _refused(exc) from None
        return {}

    @method("schedules/pause", NameParams)
    async def pause(session: Session, p: NameParams) -> dict[str, Any]:
        try:
            return {"schedule": await schedules().pause(p.name)}
        except ScheduleError as exc:
            raise _refused(exc) from None

    @method("schedules/resume", NameParams)
    async def resume(session: Session, p: NameParams) -> dict[str, Any]:
        try:
            return {"schedule": await schedules().resume(p.name)}
        except ScheduleError as exc:
            raise _refused(exc) from None

    @method("schedules/trigger", TriggerParams)
    async def trigger(session: Session, p: TriggerParams) -> dict[str, Any]:
        try:
            return await schedules().trigger(p.name, overlap=p.overlap)
        except ScheduleError as exc:
            raise _refused(exc) from None
