"""MCP over the same dispatcher: both eras (``initialize`` up to 2025-11-25; ``server/discover``
and a ``_meta`` envelope per request for 2026-07-28, see ``plait.rpc.mcp_era``), tools (host
tools and every workflow), progress and cancel.

Every registered workflow is also a tool, ``workflow.<name>``, whose input schema is the
workflow's inputs and whose output schema its declared outputs; calling it starts a run,
reports progress when the call carries a progress token, and returns the run's outputs as
``structuredContent``. Arguments the schema refuses, or that it does not name, are a tool
result with ``isError`` under 2025-11-25 and later (the model reads it and tries again), and an
invalid-params error under older revisions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field

from plait.errors import InputsInvalid, PlaitError, RunError, did_you_mean
from plait.rpc.dispatcher import Dispatcher
from plait.rpc.errors import InvalidParams, NotFound, RpcError
from plait.rpc.mcp_era import HANDSHAKE_VERSIONS, MCP_REQUEST, MODERN_VERSIONS, request_version
from plait.rpc.methods.questions import answer_of, asks_mcp, elicitation_request
from plait.rpc.methods.tasks import TASKS_EXTENSION, register_tasks, task_view, wants_task
from plait.rpc.session import CURRENT_REQUEST, Session, SessionClosed, id_key
from plait.state.runs import STEP_SETTLED, Event, Run, is_top_level

if TYPE_CHECKING:
    from plait.rpc.host_api import HostApi

__all__ = ["PROTOCOL_VERSIONS", "WORKFLOW_TOOL_PREFIX", "progress_reporter", "register_mcp"]

PROTOCOL_VERSIONS = HANDSHAKE_VERSIONS
"""MCP revisions negotiated by ``initialize``, newest first; an unknown request gets the
newest. The stateless 2026-07-28 needs no handshake (``plait.rpc.mcp_era``)."""
TOOL_ERRORS_AS_RESULTS = frozenset({"2025-11-25", *MODERN_VERSIONS})
"""Revisions under which bad tool arguments are a tool result with ``isError`` that tells the
model what to fix, not a protocol error."""
INSTRUCTIONS = (
    "plait runs workflows of tools and agents. Every registered workflow is a tool named "
    "workflow.<name>."
)
WORKFLOW_TOOL_PREFIX = "workflow."
"""Workflows appear as tools named ``workflow.<name>``."""


class _Params(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class InitializeParams(_Params):
    protocol_version: str = Field(alias="protocolVersion")
    capabilities: dict[str, Any] = Field(default_factory=dict)
    client_info: dict[str, Any] = Field(default_factory=dict, alias="clientInfo")


class ListToolsParams(_Params):
    cursor: str | None = None


class CallToolParams(_Params):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict, alias="_meta")


class CancelledParams(_Params):
    request_id: str | int | None = Field(None, alias="requestId")
    reason: str | None = None


def _text_result(value: Any, *, error: bool = False) -> dict[str, Any]:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": error}
    if isinstance(value, dict) and not error:
        result["structuredContent"] = value
    return result


def register_mcp(dispatcher: Dispatcher, host: HostApi) -> None:
    """Add the MCP methods, bound to ``host``, to ``dispatcher``."""
    method = dispatcher.method

    @method("initialize", InitializeParams, before_init=True)
    async def initialize(session: Session, p: InitializeParams) -> dict[str, Any]:
        version = (
            p.protocol_version if p.protocol_version in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0]
        )
        session.mcp_version = version
        session.client_capabilities = p.capabilities
        session.client_info = p.client_info
        session.initialized = True
        return {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "plait", "version": host.version},
            "instructions": INSTRUCTIONS,
        }

    @method("server/discover", _Params, before_init=True)
    async def discover(session: Session, p: _Params) -> dict[str, Any]:
        """2026-07-28: what this server speaks, without a handshake (the SDK's ``mode="auto"``
        asks it first, then sends every request with its own ``_meta`` envelope)."""
        return {
            "supportedVersions": [*MODERN_VERSIONS, *PROTOCOL_VERSIONS],
            "capabilities": {
                "tools": {"listChanged": False},
                "extensions": {TASKS_EXTENSION: {}},
            },
            "serverInfo": {"name": "plait", "version": host.version},
            "instructions": INSTRUCTIONS,
        }

    @method("notifications/initialized", _Params, before_init=True)
    async def initialized(session: Session, p: _Params) -> None:
        return None

    @method("ping", _Params, before_init=True)
    async def ping(session: Session, p: _Params) -> dict[str, Any]:
        return {}

    @method("notifications/cancelled", CancelledParams, before_init=True)
    async def cancelled(session: Session, p: CancelledParams) -> None:
        key = id_key(p.request_id)
        scope = session.inflight.get(key)
        if scope is not None:
            session.cancelled.add(key)
            scope.cancel()
        return None

    @method("tools/list", ListToolsParams, mcp=True)
    async def list_tools(session: Session, p: ListToolsParams) -> dict[str, Any]:
        return {"tools": host_tools(host)}

    @method("tools/call", CallToolParams, mcp=True, cancellable=True)
    async def call_tool(session: Session, p: CallToolParams) -> dict[str, Any]:
        if p.name.startswith(WORKFLOW_TOOL_PREFIX):
            return await _call_workflow(host, session, p)
        tool = host.tool(p.name)
        if tool is None:
            raise NotFound(f"unknown tool {p.name!r}")
        problem = _argument_problem(tool.input_schema, p.arguments, p.name, session)
        if problem is not None:
            return problem
        try:
            value = await host.call_tool(p.name, p.arguments)
        except RunError as exc:
            return _text_result(str(exc), error=True)
        return _text_result(value)

    register_tasks(dispatcher, host, run_outcome)


def host_tools(host: HostApi) -> list[dict[str, Any]]:
    """The MCP tool list: registered tools by name, then one tool per workflow by name (the
    same order on every call: clients cache and diff it)."""
    tools = [
        {"name": t.name, "description": t.description or t.name, "inputSchema": t.input_schema}
        for t in sorted(host.tools(), key=lambda t: t.name)
    ]
    for entry in sorted(host.list_workflows(), key=lambda e: e.name):
        schema = entry.inputs
        schema.setdefault("type", "object")
        tools.append(
            {
                "name": f"{WORKFLOW_TOOL_PREFIX}{entry.name}",
                "description": entry.description or f"Run the workflow {entry.name}",
                "inputSchema": schema,
                "outputSchema": _output_schema(entry.definition.get("outputs")),
            }
        )
    return tools


def _output_schema(outputs: Any) -> dict[str, Any]:
    """The ``structuredContent`` a workflow tool returns: an object with the workflow's
    declared outputs (their values are whatever the templates render: any JSON)."""
    names = sorted(outputs) if isinstance(outputs, dict) else []
    return {
        "type": "object",
        "properties": {name: {} for name in names},
        "required": names,
    }


def _argument_problems(schema: dict[str, Any], arguments: dict[str, Any]) -> list[str]:
    """What is wrong with a call's arguments: what the schema refuses, and arguments it does
    not name (a misspelled one would otherwise be dropped without a word), with the closest
    name it does."""
    try:
        validator = Draft202012Validator(schema)
        problems = [
            f"{'.'.join(str(p) for p in e.absolute_path) or 'arguments'}: {e.message}"
            for e in validator.iter_errors(arguments)
        ]
    except SchemaError as exc:
        return [f"the tool's input schema is invalid: {exc.message}"]
    known = schema.get("properties")
    if isinstance(known, dict) and schema.get("additionalProperties") is None:
        for name in sorted(set(arguments) - set(known)):
            hint = did_you_mean(name, known)
            taken = ", ".join(sorted(known)) or "none"
            problems.append(f"{name}: unknown argument{hint}; the tool takes: {taken}")
    return problems


def _argument_problem(
    schema: dict[str, Any], arguments: dict[str, Any], name: str, session: Session
) -> dict[str, Any] | None:
    """``None`` when the arguments fit; else, as the request's revision wants it, a tool
    result with ``isError`` that tells the model what to fix (2025-11-25 and later) or an
    invalid-params error (earlier revisions)."""
    problems = _argument_problems(schema, arguments)
    if not problems:
        return None
    message = f"invalid arguments for {name}: " + "; ".join(problems)
    if request_version(session.mcp_version) in TOOL_ERRORS_AS_RESULTS:
        return _text_result(message + ". Fix the arguments and call the tool again.", error=True)
    raise InvalidParams(message, {"problems": problems})


async def _call_workflow(host: HostApi, session: Session, p: CallToolParams) -> dict[str, Any]:
    name = p.name[len(WORKFLOW_TOOL_PREFIX) :]
    entry = host.get_workflow(name)
    problem = _argument_problem(entry.inputs, p.arguments, p.name, session)
    if problem is not None:
        return problem
    modern = MCP_REQUEST.get() is not None
    state = (p.model_extra or {}).get("requestState")
    refused: dict[str, str] = {}
    if modern and isinstance(state, str) and state.startswith(REQUEST_STATE_PREFIX):
        # The retry of a call that was answered "input required": the same run goes on.
        run, refused = await _resume_with_answers(host, session, state, p)
    else:
        try:
            run = await host.launch(name, p.arguments, version=entry.version, origin=session)
        except InputsInvalid as exc:
            raise InvalidParams(str(exc), {"problems": exc.problems}) from None
    if wants_task(session):  # the run is the task: answered once its start is kept
        return {"resultType": "task", **task_view(run)}
    token = p.meta.get("progressToken")
    undo = None
    if token is not None:

        def send(progress: int, message: str) -> None:
            session.notify(
                "notifications/progress",
                {
                    "progressToken": token,
                    "progress": progress,
                    "total": run.total_steps,
                    "message": message,
                },
            )

        undo = run.listen(progress_reporter(run, send))
    key = _current_request(session)
    try:
        asked = await _wait_for_end_or_question(host, session, run, modern)
        if asked is not None:  # 2026-07-28: the question goes back to the client
            return _input_required(run, asked, refused.get(asked["step"]))
    except anyio.get_cancelled_exc_class():
        # notifications/cancelled stops the run; a dropped connection leaves it running.
        if key is not None and key in session.cancelled and not run.done:
            host.cancel_soon(run.id)
        raise
    finally:
        if undo is not None:
            undo()
    return run_outcome(run)


REQUEST_STATE_PREFIX = "plait-run:"
"""How a workflow call's ``requestState`` starts: the run it goes on with follows."""


async def _wait_for_end_or_question(
    host: HostApi, session: Session, run: Run, modern: bool
) -> dict[str, Any] | None:
    """Wait for the run to end; meanwhile, a question of an ``input`` step the MCP client may
    answer is put to it: returned, for a 2026-era request (its answer comes with the call's
    retry), or asked with ``elicitation/create`` when the session's client declared
    elicitation (2025-11-25). A question the client cannot be asked waits for another channel
    (``runs/respond``, the web view)."""
    capabilities = session.client_capabilities
    elicits = not modern and "elicitation" in capabilities
    if not modern and not elicits:
        await run.wait()
        return None
    asked: set[str] = set()
    while not run.finished:  # its end is kept (and told, like every event: see below)
        pending = [q for q in run.questions() if asks_mcp(q) and q["step"] not in asked]
        if pending:
            question = pending[0]
            if modern:
                return question
            asked.add(question["step"])
            await _elicit(host, session, run, question)
            continue
        # Every kept event is told to the run's listeners, its end included: one wakes this
        # loop to look again (no await between the look above and listening).
        changed = anyio.Event()
        undo = run.listen(lambda event: changed.set())
        try:
            await changed.wait()
        finally:
            undo()
    return None


async def _elicit(host: HostApi, session: Session, run: Run, question: dict[str, Any]) -> None:
    """Put a question to a 2025-11-25 client as a form (``elicitation/create``); an accepted
    answer goes to the run like any other (checked against the step's schema). A declined,
    cancelled or failed elicitation leaves the question open for another channel."""
    params = elicitation_request(question)["params"]
    try:
        reply = await session.request("elicitation/create", params, timeout=3600)
    except (TimeoutError, RpcError, SessionClosed):
        return
    if not isinstance(reply, dict) or reply.get("action") != "accept":
        return
    by = str(session.client_info.get("name") or "mcp client")
    content = reply.get("content")
    try:
        await host.respond(
            run.id, question["step"], answer_of(question, content), by=by, channel="mcp"
        )
    except PlaitError:  # answered meanwhile elsewhere, or a wrong answer: the step says so
        return


def _input_required(
    run: Run, question: dict[str, Any], refused: str | None = None
) -> dict[str, Any]:
    """2026-07-28: the call needs the client's input; its retry carries the answer (keyed by
    the step's path) and this state, and the same run goes on. ``refused``: why the answer of
    the last round was not taken, told with the question asked again."""
    return {
        "resultType": "input_required",
        "inputRequests": {question["step"]: elicitation_request(question, refused)},
        "requestState": REQUEST_STATE_PREFIX + run.id,
    }


async def _resume_with_answers(
    host: HostApi, session: Session, state: str, p: CallToolParams
) -> tuple[Run, dict[str, str]]:
    """The run a retried call goes on with, given the answers its ``inputResponses`` carry,
    and why any of them was refused (by step: a wrong answer leaves its question open)."""
    run_id = state[len(REQUEST_STATE_PREFIX) :]
    try:
        run = await host.get_run(run_id)
    except PlaitError:
        raise InvalidParams(f"requestState names no run of this host: {run_id!r}") from None
    responses = (p.model_extra or {}).get("inputResponses") or {}
    if not isinstance(responses, dict):
        raise InvalidParams("inputResponses must be an object keyed by the inputRequests' keys")
    modern = MCP_REQUEST.get()
    client = (modern.client_info if modern is not None else None) or {}
    by = str(client.get("name") or "mcp client")
    refused: dict[str, str] = {}
    for step, reply in responses.items():
        question = run.question(step)
        if question is None or not isinstance(reply, dict) or reply.get("action") != "accept":
            continue  # not outstanding (answered, or never asked), or declined: ignored
        answer = answer_of(question, reply.get("content"))
        try:
            await host.respond(run.id, step, answer, by=by, channel="mcp")
        except InputsInvalid as exc:
            refused[step] = str(exc)
    return run, refused


def run_outcome(run: Run) -> dict[str, Any]:
    """The ``CallToolResult`` of a workflow tool's ended run: its outputs, or what failed."""
    if run.status != "succeeded":
        message = (run.error or {}).get("message", run.status)
        return _text_result(f"run {run.id} {run.status}: {message}", error=True)
    return _text_result(run.outputs or {}) | {"_meta": {"runId": run.id}}


def progress_reporter(run: Run, send: Callable[[int, str], None]) -> Callable[[Event], None]:
    """A run listener that sends (top-level steps settled, message) for each step change.

    The count comes from the events published so far, not from the run's live state: with a
    store an event is published after its commit, when later steps may have settled already.
    """
    read = settled = 0

    def listener(event: Event) -> None:
        nonlocal read, settled
        settled += sum(
            1
            for earlier in run.events[read : event.seq]
            if _top_level_step_event(earlier) and earlier.type[5:] in STEP_SETTLED
        )
        read = event.seq
        if _top_level_step_event(event) and event.type != "step.started":
            send(min(settled, run.total_steps), f"{event.step}: {event.type[5:]}")

    return listener


def _top_level_step_event(event: Event) -> bool:
    """A ``step.*`` event of a step of the workflow itself (not one inside a loop or
    parallel body)."""
    return event.step is not None and is_top_level(event.step) and event.type.startswith("step.")


def _current_request(session: Session) -> tuple[str, Any] | None:
    """The in-flight key of the request being handled (set by the dispatcher)."""
    return CURRENT_REQUEST.get(None)
