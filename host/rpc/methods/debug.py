"""The debugger's JSON-RPC methods: ``debug/*`` and ``runs/stepConfig``.

Every one of them goes through the host's :class:`~plait.engine.debugging.Debugger`, which
checks a request in full before changing anything; a refusal is ``-32602`` naming the
problem. Changes are recorded on the run with ``by``: the connection that asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from plait.rpc.dispatcher import Dispatcher
from plait.rpc.session import Session

if TYPE_CHECKING:
    from plait.rpc.host_api import HostApi

__all__ = ["register_debug"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class TargetParams(_Params):
    run_id: str | None = Field(None, alias="runId")
    workflow: str | None = None


class BreakParams(TargetParams):
    at: Literal["before", "after", "failure"]
    step: str | None = Field(None, max_length=1000)
    condition: str | None = Field(None, max_length=10_000)


class ClearParams(TargetParams):
    id: str | None = None


class RunParams(_Params):
    run_id: str = Field(alias="runId")


class InspectParams(RunParams):
    step: str | None = None


class EvalParams(RunParams):
    expression: str = Field(max_length=10_000)
    step: str | None = None


class SetOutputParams(RunParams):
    step: str
    output: Any = None


class SetVarParams(RunParams):
    name: str = Field(min_length=1, max_length=200)
    value: Any = None


class StepParams(RunParams):
    step: str | None = None


class StepConfigParams(RunParams):
    step: str
    attempt: int | None = Field(None, ge=1)


def _by(session: Session) -> str:
    """Who asked, as the run's history shows it."""
    client = session.client_info.get("name")
    who = f"{session.transport} session {session.id}"
    return f"{client} ({who})" if isinstance(client, str) and client else who


def register_debug(dispatcher: Dispatcher, host: HostApi) -> None:
    """Add the debugger's methods, bound to ``host``, to ``dispatcher``."""
    method = dispatcher.method

    @method("debug/break", BreakParams)
    async def set_breakpoint(session: Session, p: BreakParams) -> dict[str, Any]:
        bp = await host.debugger.set_breakpoint(
            run_id=p.run_id,
            workflow=p.workflow,
            at=p.at,
            step=p.step,
            condition=p.condition,
            by=_by(session),
        )
        return {"breakpoint": bp.to_dict()}

    @method("debug/clear", ClearParams)
    async def clear(session: Session, p: ClearParams) -> dict[str, Any]:
        cleared = await host.debugger.clear_breakpoints(
            run_id=p.run_id, workflow=p.workflow, bp_id=p.id, by=_by(session)
        )
        return {"cleared": cleared}

    @method("debug/breakpoints", TargetParams)
    async def breakpoints(session: Session, p: TargetParams) -> dict[str, Any]:
        found = await host.debugger.breakpoints(run_id=p.run_id, workflow=p.workflow)
        return {"breakpoints": [bp.to_dict() for bp in found]}

    @method("debug/inspect", InspectParams)
    async def inspect(session: Session, p: InspectParams) -> dict[str, Any]:
        return await host.debugger.inspect(p.run_id, p.step)

    @method("debug/eval", EvalParams)
    async def evaluate(session: Session, p: EvalParams) -> dict[str, Any]:
        return {"value": await host.debugger.evaluate(p.run_id, p.expression, p.step)}

    @method("debug/setOutput", SetOutputParams)
    async def set_output(session: Session, p: SetOutputParams) -> dict[str, Any]:
        run = await host.debugger.set_output(p.run_id, p.step, p.output, by=_by(session))
        state = run.steps.get(p.step)
        return {"step": state.to_dict() if state is not None else {"status": "running"}}

    @method("debug/setVar", SetVarParams)
    async def set_var(session: Session, p: SetVarParams) -> dict[str, Any]:
        await host.debugger.set_var(p.run_id, p.name, p.value, by=_by(session))
        return {"name": p.name, "value": p.value}

    @method("debug/step", StepParams)
    async def step(session: Session, p: StepParams) -> dict[str, Any]:
        return {"step": await host.debugger.step(p.run_id, p.step, by=_by(session))}

    @method("debug/continue", RunParams)
    async def resume(session: Session, p: RunParams) -> dict[str, Any]:
        run = await host.resume_run(p.run_id)
        return {"run": await host.view_run(run.id)}

    @method("runs/stepConfig", StepConfigParams)
    async def step_config(session: Session, p: StepConfigParams) -> dict[str, Any]:
        return {"config": await host.debugger.step_config(p.run_id, p.step, p.attempt)}
