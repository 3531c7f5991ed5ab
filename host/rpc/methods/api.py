"""The plait methods of the JSON-RPC API: workflows, runs, subscriptions, plugins, host info."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, model_validator

from plait.rpc.codec import encode
from plait.rpc.dispatcher import Dispatcher
from plait.rpc.errors import Busy, InvalidParams
from plait.rpc.session import Session
from plait.state.run_store import parse_cursor
from plait.state.runs import Event

if TYPE_CHECKING:
    from plait.rpc.host_api import HostApi

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
    paused: bool = False
    """Start held before the first step, for a debugger (see debug/*)."""


class RunParams(_Params):
    run_id: str = Field(alias="runId")


class GetRunParams(RunParams):
    steps: bool = True
    """Whether the reply holds the step states at all."""
    steps_limit: int | None = Field(None, ge=1, le=100_000, alias="stepsLimit")
    """At most this many step states (a run with a long loop has one per iteration)."""
    steps_after: str | None = Field(None, alias="stepsAfter")
    """Continue after this step path (the ``nextStepsAfter`` of the previous page)."""


class WaitParams(GetRunParams):
    timeout: float | None = Field(None, gt=0, le=3600)


class SignalParams(RunParams):
    event: str = Field(min_length=1, max_length=256)
    data: Any = None


class RespondParams(RunParams):
    step: str = Field(min_length=1, max_length=1024)
    """The path of the ``input`` step whose question is answered."""
    answer: Any
    """The answer: any JSON (null too), checked against the step's schema."""
    by: str | None = Field(None, max_length=256)
    """Who answered, recorded in ``input.answered``."""


class RerunParams(RunParams):
    step: str = Field(min_length=1, max_length=1024)
    """A top-level step id: it and what depends on it run again."""
    inputs: dict[str, Any] | None = None
    """The new run's inputs (default: the source run's)."""
    version: int | None = Field(None, ge=1)
    config: dict[str, Any] | None = None
    """Fields laid over ``step``'s definition for the new run only."""


class DiffParams(RunParams):
    other_run_id: str = Field(alias="otherRunId")


class EventsParams(RunParams):
    since: int = Field(0, ge=0)
    limit: int = Field(1000, ge=1, le=10000)


class ListParams(_Params):
    workflow: str | None = None
    status: (
        Literal["pending", "running", "paused", "waiting", "succeeded", "failed", "cancelled"]
        | None
    ) = None
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


def _page_steps(view: dict[str, Any], p: GetRunParams) -> dict[str, Any]:
    """The steps of a run's view as the params ask: none, or a page of them in order."""
    steps = view.pop("steps", None) or {}
    if not p.steps:
        return view
    paths = list(steps)
    start = 0
    if p.steps_after is not None:
        if p.steps_after not in steps:
            raise InvalidParams(f"stepsAfter: the run has no step {p.steps_after!r}")
        start = paths.index(p.steps_after) + 1
    end = len(paths) if p.steps_limit is None else start + p.steps_limit
    view["steps"] = {path: steps[path] for path in paths[start:end]}
    if end < len(paths):
        view["nextStepsAfter"] = paths[end - 1]
    return view


def _event_notification(subscription: str, event: Event) -> dict[str, Any]:
    return {
        "subscription": subscription,
        "runId": event.run_id,
        "seq": event.seq,
        "type": event.type,
        "step": event.step,
        "data": event.data,
        "ts": event.ts,
    }


def register_api(dispatcher: Dispatcher, host: HostApi) -> None:
    """Add the plait methods, bound to ``host``, to ``dispatcher``."""
    method = dispatcher.method
    delivered = dispatcher.metrics.events_delivered if dispatcher.metrics is not None else None

    @method("workflows/put", DefinitionParams)
    async def put(session: Session, p: DefinitionParams) -> dict[str, Any]:
        compiled = await host.put_workflow(p.value)
        return {"name": compiled.name, "version": compiled.version}

    @method("workflows/validate", DefinitionParams)
    async def validate(session: Session, p: DefinitionParams) -> dict[str, Any]:
        issues = await host.validate_workflow(p.value)
        return {"valid": not issues, "errors": [i.to_dict() for i in issues]}

    @method("workflows/list")
    async def list_workflows(session: Session, p: None) -> dict[str, Any]:
        return {
            "workflows": [
                {"name": e.name, "version": e.version, "description": e.description}
                for e in host.list_workflows()
            ]
        }

    @method("workflows/get", GetWorkflowParams)
    async def get_workflow(session: Session, p: GetWorkflowParams) -> dict[str, Any]:
        entry = host.get_workflow(p.name, p.version)
        return {"workflow": entry.definition | {"version": entry.version}}

    @method("workflows/delete", NameParams)
    async def delete(session: Session, p: NameParams) -> dict[str, Any]:
        await host.delete_workflow(p.name)
        return {}

    @method("workflows/versions", NameParams)
    async def versions(session: Session, p: NameParams) -> dict[str, Any]:
        return {"versions": host.workflow_versions(p.name)}

    @method("workflows/rollback", RollbackParams)
    async def rollback(session: Session, p: RollbackParams) -> dict[str, Any]:
        compiled = await host.rollback_workflow(p.name, p.version)
        return {"name": compiled.name, "version": compiled.version}

    @method("runs/start", StartParams)
    async def start(session: Session, p: StartParams) -> dict[str, Any]:
        run = await host.launch(
            p.workflow,
            p.inputs,
            version=p.version,
            idempotency_key=p.idempotency_key,
            origin=session,
            paused=p.paused,
        )
        return {"runId": run.id, "status": run.status}

    @method("runs/get", GetRunParams)
    async def get_run(session: Session, p: GetRunParams) -> dict[str, Any]:
        return {"run": _page_steps(await host.view_run(p.run_id), p)}

    @method("runs/list", ListParams)
    async def list_runs(session: Session, p: ListParams) -> dict[str, Any]:
        page = await host.list_runs(
            workflow=p.workflow,
            status=p.status,
            created_after=p.created_after,
            created_before=p.created_before,
            limit=p.limit,
            cursor=_parse_cursor(p.cursor) if p.cursor else None,
        )
        return {"runs": page.runs, "nextCursor": page.next_cursor}

    @method("runs/wait", WaitParams, cancellable=True)
    async def wait(session: Session, p: WaitParams) -> dict[str, Any]:
        run = await host.get_run(p.run_id)
        with anyio.move_on_after(p.timeout):
            await run.wait()
        return {"run": _page_steps(await host.view_run(p.run_id), p)}

    @method("runs/cancel", RunParams)
    async def cancel(session: Session, p: RunParams) -> dict[str, Any]:
        run = await host.cancel_run(p.run_id)
        return {"run": await host.view_run(run.id)}

    @method("runs/pause", RunParams)
    async def pause(session: Session, p: RunParams) -> dict[str, Any]:
        run = await host.pause_run(p.run_id)
        return {"run": await host.view_run(run.id)}

    @method("runs/resume", RunParams)
    async def resume(session: Session, p: RunParams) -> dict[str, Any]:
        run = await host.resume_run(p.run_id)
        return {"run": await host.view_run(run.id)}

    @method("runs/signal", SignalParams)
    async def signal(session: Session, p: SignalParams) -> dict[str, Any]:
        await host.signal_run(p.run_id, p.event, p.data)
        return {}

    @method("runs/respond", RespondParams)
    async def respond(session: Session, p: RespondParams) -> dict[str, Any]:
        channel = "web" if session.web else "api"  # the web view's page answers as `web`
        await host.respond(p.run_id, p.step, p.answer, by=p.by, channel=channel)
        return {"run": await host.view_run(p.run_id)}

    @method("runs/rerun", RerunParams)
    async def rerun(session: Session, p: RerunParams) -> dict[str, Any]:
        run = await host.rerun_run(
            p.run_id,
            p.step,
            inputs=p.inputs,
            version=p.version,
            config=p.config,
            origin=session,
        )
        return {"runId": run.id}

    @method("runs/diff", DiffParams)
    async def diff(session: Session, p: DiffParams) -> dict[str, Any]:
        return await host.diff_runs(p.run_id, p.other_run_id)

    @method("runs/events", EventsParams)
    async def events(session: Session, p: EventsParams) -> dict[str, Any]:
        chosen = await host.events(p.run_id, p.since, p.limit)
        # Stop short of what the connection can take at once; ``since`` pages on from there.
        budget = session.max_queue_bytes // 2
        out: list[dict[str, Any]] = []
        for event in chosen:
            item = event.to_dict()
            budget -= len(encode(item))
            if out and budget < 0:
                break
            out.append(item)
        return {"events": out}

    @method("runs/subscribe", SubscribeParams)
    async def subscribe(session: Session, p: SubscribeParams) -> dict[str, Any]:
        if len(session.subscriptions) >= MAX_SUBSCRIPTIONS:
            raise Busy(f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection")
        subscription = uuid.uuid4().hex[:16]
        if p.run_id is None and p.since is not None:
            raise InvalidParams("since needs a runId: sequence numbers are per run")
        run = await host.get_run(p.run_id) if p.run_id is not None else None
        # Events wait in `held` until the reply carrying the subscription id is queued, then
        # the backlog and whatever arrived meanwhile go out in order: no gap, no repeat (a run
        # in memory answers without yielding, so nothing arrives before `forward` listens).
        held = await host.events(run.id, p.since or 0) if run is not None else []
        live = False
        sent = 0
        """The last seq sent of the run: a run followed from another host's commits may be
        told events again that the backlog held (each is sent once)."""

        def send(event: Event) -> bool:
            nonlocal sent
            if run is not None:
                if event.seq <= sent:
                    return False
                sent = event.seq
            session.notify("runs/event", _event_notification(subscription, event))
            return True

        def forward(event: Event) -> None:
            if live:
                if send(event) and delivered is not None:
                    delivered.inc()
            else:
                held.append(event)

        def go_live() -> None:
            nonlocal live
            told = sum(send(event) for event in held)
            if delivered is not None and told:
                delivered.inc(told)
            held.clear()
            live = True

        if run is None:
            session.subscriptions[subscription] = host.follow_all(forward)
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
        return host.plugins_info()

    @method("host/info")
    async def info(session: Session, p: None) -> dict[str, Any]:
        return await host.info()
