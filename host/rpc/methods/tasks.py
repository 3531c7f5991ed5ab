"""Workflows as durable MCP tasks: the ``io.modelcontextprotocol/tasks`` extension (2026-07-28).

A client that declares the extension in a request's ``clientCapabilities.extensions`` gets a
task back from a ``workflow.<name>`` tool call instead of waiting for the run: the run *is* the
task, and its id is the task id. The run is durable, so the task is too: a client that
reconnects after a crash of the host (or of itself) asks ``tasks/get`` for the same id and
gets the run's state, and its result once the resumed run ends. A client that does not declare
the extension keeps the synchronous call with progress notifications.

Status mapping: a run with a question of an ``input`` step the MCP client may answer is
``input_required``, the question in ``inputRequests`` (keyed by the step's path; the answer
comes with ``tasks/update``); otherwise a run pending, running, paused or waiting is
``working`` (with a status message saying how far it is, or what it waits for); a run that
succeeded is ``completed`` with the ``CallToolResult`` the synchronous call would have
returned; a run that failed is also ``completed``, with that result's ``isError`` (a tool's
failure is a result, not a JSON-RPC error: the extension keeps ``failed`` for those); a
cancelled run is ``cancelled``.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from plait.errors import InvalidRunState, PlaitError, RunNotFound
from plait.rpc.dispatcher import Dispatcher
from plait.rpc.errors import InvalidParams, RpcError
from plait.rpc.mcp_era import MCP_REQUEST
from plait.rpc.methods.questions import answer_of, asks_mcp, elicitation_request
from plait.rpc.session import Session
from plait.state.runs import Run

if TYPE_CHECKING:
    from plait.rpc.host_api import HostApi

__all__ = ["TASKS_EXTENSION", "register_tasks", "task_view", "wants_task"]

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
POLL_INTERVAL_MS = 500
"""What a client is asked to wait between two ``tasks/get``."""
_WORKING = frozenset({"pending", "running", "paused", "waiting"})


class MissingCapability(RpcError):
    """-32021: the request needs a client capability it did not declare."""

    code = -32021
    default_message = "Missing required client capability"


class _Params(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class TaskParams(_Params):
    task_id: str = Field(alias="taskId", min_length=1, max_length=200)


class UpdateParams(TaskParams):
    input_responses: dict[str, Any] = Field(default_factory=dict, alias="inputResponses")


def wants_task(session: Session) -> bool:
    """Whether the request being handled is a 2026-era request that declared the tasks
    extension. A handshake-era session's capabilities never count: 2025-11-25 clients (the
    MCP Inspector among them) may list the extension at ``initialize`` while expecting a
    ``CallToolResult`` from every call (that revision's own tasks are asked per request)."""
    modern = MCP_REQUEST.get()
    if modern is None:
        return False
    extensions = modern.capabilities.get("extensions")
    return isinstance(extensions, dict) and TASKS_EXTENSION in extensions


def _require_extension(session: Session) -> None:
    if not wants_task(session):
        raise MissingCapability(
            data={"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}}
        )


def _iso(ts: float | None) -> str:
    moment = datetime.fromtimestamp(ts if ts is not None else time.time(), tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def task_view(run: Run, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``Task`` a run is: status, a message, times; ``result`` once it ended."""
    last = run.finished_at or (run.events[-1].ts if run.events else None) or run.created_at
    task: dict[str, Any] = {
        "taskId": run.id,
        "createdAt": _iso(run.created_at),
        "lastUpdatedAt": _iso(last),
        "ttlMs": None,  # kept as long as the run is kept
        "pollIntervalMs": POLL_INTERVAL_MS,
    }
    asked = [q for q in run.questions() if asks_mcp(q)] if run.status in _WORKING else []
    if asked:
        task["status"] = "input_required"
        task["statusMessage"] = f"step {asked[0]['step']} waits for an answer"
        task["inputRequests"] = {q["step"]: elicitation_request(q) for q in asked}
    elif run.status in _WORKING:
        task["status"] = "working"
        if run.status in ("paused", "waiting") and run.reason:
            task["statusMessage"] = f"{run.status}: {run.reason}"
        else:
            task["statusMessage"] = (
                f"run {run.id} of {run.workflow}: {run.settled_steps} of {run.total_steps} "
                f"steps done"
            )
    elif run.status == "cancelled":
        task["status"] = "cancelled"
        task["statusMessage"] = (run.error or {}).get("message", "cancelled")
    else:
        task["status"] = "completed"
        task["statusMessage"] = f"run {run.id} {run.status}"
        if result is not None:
            task["result"] = result
    return task


def register_tasks(dispatcher: Dispatcher, host: HostApi, outcome: Any) -> None:
    """Add ``tasks/get``, ``tasks/update`` and ``tasks/cancel``, bound to ``host``.

    ``outcome(run)`` is the ``CallToolResult`` of an ended run (the MCP methods' own).
    """
    method = dispatcher.method

    async def the_run(p: TaskParams) -> Run:
        try:
            return await host.get_run(p.task_id)
        except RunNotFound:
            raise InvalidParams(
                f"unknown task {p.task_id!r}: no run of this host has that id",
                {"taskId": p.task_id},
            ) from None

    @method("tasks/get", TaskParams, mcp=True)
    async def get(session: Session, p: TaskParams) -> dict[str, Any]:
        _require_extension(session)
        run = await the_run(p)
        ended = run.status not in _WORKING and run.status != "cancelled"
        return task_view(run, outcome(run) if ended else None)

    @method("tasks/update", UpdateParams, mcp=True)
    async def update(session: Session, p: UpdateParams) -> dict[str, Any]:
        """Answers to the questions a task's ``inputRequests`` listed, keyed by step path. A
        key that is not outstanding, a declined answer, or one the step's schema refuses
        (the question stays open, and ``tasks/get`` lists it again) is ignored, as the
        extension says."""
        _require_extension(session)
        run = await the_run(p)
        modern = MCP_REQUEST.get()
        client = (modern.client_info if modern is not None else None) or {}
        by = str(client.get("name") or "mcp client")
        for step, reply in p.input_responses.items():
            question = run.question(step)
            if question is None or not asks_mcp(question) or not isinstance(reply, dict):
                continue
            if reply.get("action") != "accept":
                continue
            answer = answer_of(question, reply.get("content"))
            try:
                await host.respond(run.id, step, answer, by=by, channel="mcp")
            except PlaitError:
                continue
        return {}

    @method("tasks/cancel", TaskParams, mcp=True)
    async def cancel(session: Session, p: TaskParams) -> dict[str, Any]:
        _require_extension(session)
        run = await the_run(p)
        if run.status in _WORKING:
            # Answered once the cancellation is kept (a crash right after the answer must not
            # bring the run back), on whichever host owns the run.
            with contextlib.suppress(InvalidRunState):  # it ended meanwhile
                await host.cancel_run(run.id)
        return {}
