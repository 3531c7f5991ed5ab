"""The plait methods of DESIGN §7: workflows, runs, subscriptions, plugins and host info."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, model_validator

from plait.errors import DefinitionError
from plait.rpc.dispatcher import Dispatcher
from plait.rpc.errors import Busy, InvalidParams
from plait.rpc.session import Session
from plait.runs import Event
from plait.store import parse_cursor

if TYPE_CHECKING:
    from plait.app import Host

__all__ = ["MAX_SUBSCRIPTIONS", "register_api"]

MAX_SUBSCRIPTIONS = 100
"""Subscriptions one connection may hold at once."""


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class DefinitionParams(_Params):
    definition: dict[str, Any] | None = None
    source: str | None = Field(None, max_length=4 << 20)

    @model_validator(mode="after")
    def _one(self) -> DefinitionParams:
        if (self.definition is None) == (self.source is None):
            raise ValueError("give exactly one of definition (an object) or source (YAML text)")
        return self

    @property
    def value(self) -> dict[str, Any] | str:
        return self.definition if self.definition is not None else self.source  # type: ignore[return-value]


class NameParams(_Params):
    name: str


class GetWorkflowParams(_Params):
    name: str
    version: int | None = Field(None, ge=1)


class RollbackParams(_Params):
    name: str
    version: int = Field(ge=1)


class StartParams(_Params):
    workflow: str
    version: int | None = Field(None, ge=1)
    inputs: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(None, alias="idempotencyKey", max_length=256)


class RunParams(_Params):
    run_id: str = Field(alias="runId")


class WaitParams(RunParams):
    timeout: float | None = Field(None, gt=0, le=3600)


class SignalParams(RunParams):
    event: str = Field(min_length=1, max_length=256)
    data: Any = None


class EventsParams(RunParams):
    since: int = Field(0, ge=0)
    limit: int = Field(1000, ge=1, le=10000)


class ListParams(_Params):
    workflow: str | None = None
    status: Literal["pending", "running", "paused", "waiting", "succeeded", "failed",
                    "cancelled"] | None = None
    limit: int = Field(50, ge=1, le=500)
    cursor: str | None = None
    created_after: float | None = Field(None, alias="createdAfter")
    created_before: float | None = Field(None, alias="createdBefore")


class SubscribeParams(_Params):
    run_id: str | None = Field(None, alias="runId")
    since: int | None = Field(None, ge=0)


class UnsubscribeParams(_Params):
    subscription: str


def _parse_cursor(cursor: str) -> tuple[float, str]:
    try:
        return parse_cursor(cursor)
    except ValueError:
        raise InvalidParams("cursor is not one this host returned") from None


def _event_notification(subscription: str, event: Event) -> dict[str, Any]:
    return {"subscription": subscription, "runId": event.run_id, "seq": event.seq,
            "type": event.type, "step": event.step, "data": event.data, "ts": event.ts}


def register_api(dispatcher: Dispatcher, host: Host) -> None:
    """Add the plait methods, bound to ``host``, to ``dispatcher``."""
    method = dispatcher.method

    def engine() -> Any:
        return host._engine()

    @method("workflows/put", DefinitionParams)
    async def put(session: Session, p: DefinitionParams) -> dict[str, Any]:
        compiled = host.register(p.value)
        await engine().committed()
        return {"name": compiled.name, "version": compiled.version}

    @method("workflows/validate", DefinitionParams)
    async def validate(session: Session, p: DefinitionParams) -> dict[str, Any]:
        try:
            engine().compile(p.value)
        except DefinitionError as exc:
            return {"valid": False, "errors": [i.to_dict() for i in exc.issues]}
        return {"valid": True, "errors": []}

    @method("workflows/list")
    async def list_workflows(session: Session, p: None) -> dict[str, Any]:
        return {"workflows": [{"name": e.name, "version": e.version,
                               "description": e.description}
                              for e in engine().catalog.current()]}

    @method("workflows/get", GetWorkflowParams)
    async def get_workflow(session: Session, p: GetWorkflowParams) -> dict[str, Any]:
        entry = engine().catalog.entry(p.name, p.version)
        return {"workflow": entry.definition | {"version": entry.version}}

    @method("workflows/delete", NameParams)
    async def delete(session: Session, p: NameParams) -> dict[str, Any]:
        engine().catalog.remove(p.name)
        await engine().committed()
        return {}

    @method("workflows/versions", NameParams)
    async def versions(session: Session, p: NameParams) -> dict[str, Any]:
        return {"versions": engine().catalog.versions(p.name)}

    @method("workflows/rollback", RollbackParams)
    async def rollback(session: Session, p: RollbackParams) -> dict[str, Any]:
        compiled = engine().catalog.rollback(p.name, p.version)
        await engine().committed()
        return {"name": compiled.name, "version": compiled.version}

    @method("runs/start", StartParams)
    async def start(session: Session, p: StartParams) -> dict[str, Any]:
        eng = engine()
        run = await eng.start(eng.catalog.get(p.workflow, p.version), p.inputs,
                              idempotency_key=p.idempotency_key, origin=session)
        return {"runId": run.id, "status": run.status}

    @method("runs/get", RunParams)
    async def get_run(session: Session, p: RunParams) -> dict[str, Any]:
        run = await engine().load_run(p.run_id)
        return {"run": await run.view()}

    @method("runs/list", ListParams)
    async def list_runs(session: Session, p: ListParams) -> dict[str, Any]:
        page = await engine().list_runs(
            workflow=p.workflow, status=p.status, created_after=p.created_after,
            created_before=p.created_before, limit=p.limit,
            cursor=_parse_cursor(p.cursor) if p.cursor else None)
        return {"runs": page.runs, "nextCursor": page.next_cursor}

    @method("runs/wait", WaitParams, cancellable=True)
    async def wait(session: Session, p: WaitParams) -> dict[str, Any]:
        run = await engine().load_run(p.run_id)
        with anyio.move_on_after(p.timeout):
            await run.wait()
        return {"run": await run.view()}

    @method("runs/cancel", RunParams)
    async def cancel(session: Session, p: RunParams) -> dict[str, Any]:
        return {"run": await (await engine().cancel(p.run_id)).view()}

    @method("runs/pause", RunParams)
    async def pause(session: Session, p: RunParams) -> dict[str, Any]:
        return {"run": await (await engine().pause(p.run_id)).view()}

    @method("runs/resume", RunParams)
    async def resume(session: Session, p: RunParams) -> dict[str, Any]:
        return {"run": await (await engine().resume(p.run_id)).view()}

    @method("runs/signal", SignalParams)
    async def signal(session: Session, p: SignalParams) -> dict[str, Any]:
        await engine().signal(p.run_id, p.event, p.data)
        return {}

    @method("runs/events", EventsParams)
    async def events(session: Session, p: EventsParams) -> dict[str, Any]:
        chosen = await engine().events(p.run_id, p.since, p.limit)
        return {"events": [e.to_dict() for e in chosen]}

    @method("runs/subscribe", SubscribeParams)
    async def subscribe(session: Session, p: SubscribeParams) -> dict[str, Any]:
        if len(session.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise Busy(f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection")
        eng = engine()
        subscription = uuid.uuid4().hex[:16]
        if p.run_id is None and p.since is not None:
            raise InvalidParams("since needs a runId: sequence numbers are per run")
        run = await eng.load_run(p.run_id) if p.run_id is not None else None
        # Events wait in `held` until the reply carrying the subscription id is queued, then
        # the backlog and whatever arrived meanwhile go out in order: no gap, no repeat (a run
        # in memory answers without yielding, so nothing arrives before `forward` listens).
        held = await eng.events(run.id, p.since or 0) if run is not None else []
        live = False

        def forward(event: Event) -> None:
            if live:
                session.notify("runs/event", _event_notification(subscription, event))
            else:
                held.append(event)

        def go_live() -> None:
            nonlocal live
            for event in held:
                session.notify("runs/event", _event_notification(subscription, event))
            held.clear()
            live = True

        if run is None:
            eng.listeners.append(forward)
            session.subscriptions[subscription] = lambda: eng.listeners.remove(forward)
        else:
            session.subscriptions[subscription] = run.listen(forward)
        session.after_reply(go_live)
        return {"subscription": subscription}

    @method("runs/unsubscribe", UnsubscribeParams)
    async def unsubscribe(session: Session, p: UnsubscribeParams) -> dict[str, Any]:
        undo = session.subscriptions.pop(p.subscription, None)
        if undo is None:
            raise InvalidParams(f"no subscription {p.subscription!r} on this connection")
        undo()
        return {}

    @method("plugins/list")
    async def plugins(session: Session, p: None) -> dict[str, Any]:
        return {"plugins": [i.to_dict() for i in host.pm.info()],
                "failed": [f.to_dict() for f in host.pm.failures]}

    @method("host/info")
    async def info(session: Session, p: None) -> dict[str, Any]:
        eng = engine()
        statuses: dict[str, int] = {}
        if eng.store is not None:
            statuses = await eng.store.counts()
        else:
            for run in eng.runs.values():
                if run.parent_id is None:
                    statuses[run.status] = statuses.get(run.status, 0) + 1
        store = eng.store
        return {
            "name": "plait", "version": host.version,
            "uptime": time.time() - (host.started_at or time.time()),
            "limits": host.config.limits.model_dump(),
            "store": {"durable": True, "path": str(store.path), "pending": store.pending,
                      "commits": store.commits, "lastError": store.last_error,
                      "synchronous": store.settings.synchronous}
            if store is not None else {"durable": False},
            "counts": {"workflows": len(eng.catalog.names()),
                       "runs": sum(statuses.values()), "liveRuns": len(eng.runs),
                       "runsByStatus": statuses, "connections": len(host.sessions),
                       "tools": len(eng.registries.tools)},
            "dataDir": str(host.data_dir) if host.data_dir else None,
            "mcpServers": eng.mcp.info() if eng.mcp is not None else {},
        }
