"""The transport-agnostic JSON-RPC dispatcher: one instance serves WebSocket and stdio alike.

Everything JSON-RPC 2.0 asks of a server is done here (see docs/reliability.md §1-§24): a batch
is answered item by item, is bounded in size and runs with bounded concurrency; envelopes are
checked by a fast hand-written validator; a method is looked up in the table and called with its
params validated by type with pydantic; handler failures carry a correlation id instead of
exception text; results that are not JSON become -32603; MCP session rules (initialize first, no
batches on modern revisions, no null or reused ids) and cancellation are enforced here.

plait used jsonrpcserver's per-request layer for the lookup, the call and the response shape;
with every check above already made, that layer only added cost (a request object, binding the
arguments to a signature, result and response wrappers: ~40% of a ``ping``), so the dispatcher
makes the call itself.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel, ValidationError

from plait import errors as domain
from plait.faults import new_correlation_id
from plait.rpc.codec import MAX_DEPTH, decode, encode
from plait.rpc.errors import (
    Busy,
    InternalError,
    InvalidParams,
    InvalidRequest,
    InvalidWorkflow,
    MethodNotFound,
    NotAllowed,
    NotFound,
    ParseError,
    RpcError,
    RunNotFound,
    WorkflowNotFound,
)
from plait.rpc.mcp_era import MCP_REQUEST, classify, finish, is_modern
from plait.rpc.session import CURRENT_REQUEST, REPLY_HOOKS, Session, SessionClosed, id_key
from plait.values import json_problem

if TYPE_CHECKING:
    from plait.telemetry import Metrics, Tracing

__all__ = ["Dispatcher", "MethodSpec", "to_rpc_error"]

log = logging.getLogger("plait.rpc")

Handler = Callable[[Session, Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """A method: its handler, its params model and where it may be called."""

    name: str
    handler: Handler
    params: type[BaseModel] | None
    mcp: bool = False
    """An MCP method: needs ``initialize`` first on every transport."""
    before_init: bool = False
    """Allowed before ``initialize`` even on a strict MCP session (``initialize``, ``ping``)."""
    cancellable: bool = False
    """Can take long, so ``notifications/cancelled`` may stop it (it runs in a cancel scope).
    Quick methods answer before a cancel could arrive and spare the scope."""


def to_rpc_error(exc: BaseException) -> RpcError:
    """The wire error for a domain error; anything unexpected is an internal error."""
    if isinstance(exc, RpcError):
        return exc
    if isinstance(exc, domain.DefinitionError):
        return InvalidWorkflow(
            str(exc).split("\n", 1)[0], [issue.to_dict() for issue in exc.issues]
        )
    if isinstance(exc, domain.WorkflowNotFound):
        return WorkflowNotFound(str(exc))
    if isinstance(exc, domain.RunNotFound):
        return RunNotFound(str(exc))
    if isinstance(exc, domain.InvalidRunState):
        return NotAllowed(str(exc), {"status": exc.status})
    if isinstance(exc, domain.InputsInvalid):
        return InvalidParams(str(exc), {"problems": exc.problems})
    if isinstance(exc, domain.DebugError | domain.DeadLetterError):
        return InvalidParams(str(exc))
    if isinstance(exc, domain.ToolNotFound | domain.AgentNotFound):
        return NotFound(str(exc))
    if isinstance(exc, domain.LimitReached):
        return Busy(str(exc))
    if isinstance(exc, domain.StoreUnavailable):
        return Busy(str(exc), {"store": exc.reason})
    correlation = new_correlation_id()
    log.error(
        "internal error [correlation %s]",
        correlation,
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={"correlation_id": correlation},
    )
    return InternalError(data={"correlationId": correlation})


def _error(exc: RpcError, request_id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": exc.to_error_data(), "id": request_id}


def _reply_error(error: dict[str, Any], request_id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": error, "id": request_id}


class _Failed:
    """A handler's failure as its JSON-RPC error object (a result is returned as it is)."""

    __slots__ = ("error",)

    def __init__(self, error: dict[str, Any]) -> None:
        self.error = error


def _check_envelope(message: Any) -> RpcError | None:
    """JSON-RPC 2.0 §4: the shape of a request object, checked without a schema library."""
    if not isinstance(message, dict):
        return InvalidRequest(data={"reason": "a request is a JSON object"})
    if message.get("jsonrpc") != "2.0":
        return InvalidRequest(data={"reason": 'jsonrpc must be exactly "2.0"'})
    method = message.get("method")
    if not isinstance(method, str):
        return InvalidRequest(data={"reason": "method must be a string"})
    if "id" in message:
        rid = message["id"]
        if isinstance(rid, bool) or not isinstance(rid, str | int | float | type(None)):
            return InvalidRequest(data={"reason": "id must be a string, a number or null"})
    params = message.get("params")
    if "params" in message and not isinstance(params, dict | list):
        return InvalidRequest(data={"reason": "params must be an object or an array"})
    extra = set(message) - {"jsonrpc", "method", "params", "id"}
    if extra:
        return InvalidRequest(data={"reason": f"unknown members: {', '.join(sorted(extra))}"})
    return None


class Dispatcher:
    """Method table plus the message handling shared by every transport."""

    def __init__(
        self,
        *,
        max_batch: int = 100,
        batch_concurrency: int = 8,
        max_depth: int = MAX_DEPTH,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        server_info: dict[str, Any] | None = None,
    ) -> None:
        self.server_info = server_info or {"name": "plait"}
        """Who answers (``name``, ``version``): stamped on 2026-era MCP results."""
        self.max_batch = max_batch
        self.batch_concurrency = batch_concurrency
        self.max_depth = max_depth
        self.metrics = metrics
        """Counts each answered request by method and code."""
        self.tracing = tracing
        """Opens a span per request, under the ``traceparent`` of its ``_meta`` if any."""
        self.methods: dict[str, MethodSpec] = {}
        self._table: dict[str, Callable[[Session, dict[str, Any]], Awaitable[Any]]] = {}

    def add(self, spec: MethodSpec) -> None:
        """Register a method (``rpc.*`` names are reserved by JSON-RPC and refused)."""
        if spec.name.startswith("rpc.") or not spec.name:
            raise ValueError(f"method name {spec.name!r} is reserved")
        self.methods[spec.name] = spec
        self._table[spec.name] = self._wrap(spec)
        if self.metrics is not None:
            self.metrics.known_methods = frozenset(self.methods)

    def method(
        self,
        name: str,
        params: type[BaseModel] | None = None,
        *,
        mcp: bool = False,
        before_init: bool = False,
        cancellable: bool = False,
    ) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add`."""

        def register(handler: Handler) -> Handler:
            self.add(MethodSpec(name, handler, params, mcp, before_init, cancellable))
            return handler

        return register

    # -- messages ----------------------------------------------------------------------------

    async def serve(self, text: str | bytes, session: Session) -> None:
        """Handle one message from a transport and queue the reply (if any) on the session.

        What a handler asked to run after its reply (a subscription going live) runs right
        after the reply is queued, so the client always sees the reply first.
        """
        hooks: list[Callable[[], None]] = []
        token = REPLY_HOOKS.set(hooks)
        try:
            reply = await self.handle(text, session)
        finally:
            REPLY_HOOKS.reset(token)
        try:
            if reply is not None:
                session.deliver(reply)
        except SessionClosed:
            return
        for hook in hooks:
            hook()

    async def handle(self, text: str | bytes, session: Session) -> str | None:
        """Answer one message (a request, a notification, a batch or a response).

        Returns the text to send back, or ``None`` when nothing is to be sent.
        """
        try:
            message = decode(text, max_depth=self.max_depth)
        except ParseError as exc:
            return encode(_error(exc, None))
        if isinstance(message, list):
            return await self._batch(message, session)
        response = await self.handle_message(message, session)
        return None if response is None else self._encode(response)

    def _encode(self, response: dict[str, Any] | list[dict[str, Any]]) -> str:
        try:
            return encode(response)
        except InternalError as exc:  # a result that slipped past json_problem
            request_id = response.get("id") if isinstance(response, dict) else None
            return encode(_error(to_rpc_error(exc), request_id))

    async def _batch(self, items: list[Any], session: Session) -> str | None:
        if not session.batches_allowed:
            return encode(
                _error(
                    InvalidRequest(
                        f"batches are not allowed under MCP protocol version {session.mcp_version}"
                    ),
                    None,
                )
            )
        if not items:
            return encode(_error(InvalidRequest(data={"reason": "empty batch"}), None))
        if any(isinstance(item, dict) and is_modern(item) for item in items):
            refusal = InvalidRequest(
                "batches are not allowed under MCP protocol version 2026-07-28"
            )
            return encode(_error(refusal, None))
        if len(items) > self.max_batch:
            return encode(
                _error(
                    InvalidRequest(
                        f"batch too large: {len(items)} items; the limit is {self.max_batch}"
                    ),
                    None,
                )
            )
        results: list[dict[str, Any] | None] = [None] * len(items)
        limiter = session.batch_limiter(self.batch_concurrency)

        async def one(i: int, item: Any) -> None:
            async with limiter:
                results[i] = await self.handle_message(item, session)

        async with anyio.create_task_group() as tg:
            for i, item in enumerate(items):
                tg.start_soon(one, i, item)
        answered = [r for r in results if r is not None]
        return self._encode(answered) if answered else None

    async def handle_message(self, message: Any, session: Session) -> dict[str, Any] | None:
        """One parsed request object → its response object, or ``None`` for a notification."""
        if (
            isinstance(message, dict)
            and "method" not in message
            and ("result" in message or "error" in message)
        ):
            if isinstance(message.get("id"), str):
                session.resolve(message)
            return None  # a response to a request the host sent: never answered
        problem = _check_envelope(message)
        if problem is not None:
            return _error(problem, None)
        notification = "id" not in message
        request_id = message.get("id")
        if is_modern(message):  # MCP 2026-07-28: the request carries its own era
            return await self._handle_modern(message, session, notification)
        refusal = self._refuse(message, session, notification)
        if refusal is not None:
            return None if notification else _error(refusal, request_id)
        return await self._tracked(message, session, notification)

    async def _tracked(
        self, message: dict[str, Any], session: Session, notification: bool
    ) -> dict[str, Any] | None:
        """Call the method, the request kept in the session's in-flight table (and in a cancel
        scope when it is cancellable) until it is answered."""
        if notification:
            await self._call(message, session)
            return None
        key = id_key(message["id"])
        spec = self.methods.get(message["method"])
        scope = anyio.CancelScope() if spec is not None and spec.cancellable else None
        session.inflight[key] = scope
        current = CURRENT_REQUEST.set(key)
        try:
            if scope is None:
                response = await self._call(message, session)
            else:
                with scope:
                    response = await self._call(message, session)
        finally:
            CURRENT_REQUEST.reset(current)
            session.inflight.pop(key, None)
        if (scope is not None and scope.cancelled_caught) or key in session.cancelled:
            session.cancelled.discard(key)
            return None  # cancelled by the client: no response (MCP)
        if self.metrics is not None and response is not None:
            error = response.get("error")
            self.metrics.answered(message["method"], error["code"] if error else 0)
        return response

    async def _handle_modern(
        self, message: dict[str, Any], session: Session, notification: bool
    ) -> dict[str, Any] | None:
        """A 2026-era MCP request: its envelope checked, no ``initialize`` asked for, its era
        visible to the handler (``mcp_era.MCP_REQUEST``), its result finished as the revision
        wants (see :mod:`plait.rpc.mcp_era`)."""
        found = classify(message)
        if isinstance(found, RpcError):
            return None if notification else _error(found, message.get("id"))
        token = MCP_REQUEST.set(found)
        try:
            refusal = self._refuse(message, session, notification, handshake=False)
            if refusal is not None:
                return None if notification else _error(refusal, message["id"])
            response = await self._tracked(message, session, notification)
        finally:
            MCP_REQUEST.reset(token)
        if response is not None and "result" in response:
            try:
                response["result"] = finish(
                    message["method"], found.version, response["result"], self.server_info
                )
            except ValueError as exc:  # pydantic's: a result that does not fit the revision
                error = to_rpc_error(exc).to_error_data()
                return {"jsonrpc": "2.0", "error": error, "id": message.get("id")}
        return response

    def _refuse(
        self, message: dict[str, Any], session: Session, notification: bool, handshake: bool = True
    ) -> RpcError | None:
        spec = self.methods.get(message["method"])
        needs_init = spec is not None and not spec.before_init and (spec.mcp or session.strict_mcp)
        if handshake and needs_init and not session.initialized:
            return InvalidRequest(f"{message['method']} before initialize: send initialize first")
        if notification:
            return None
        request_id = message["id"]
        if request_id is None and (session.strict_mcp or session.initialized):
            return InvalidRequest("an MCP request id must not be null")
        if id_key(request_id) in session.inflight:
            return InvalidRequest(f"request id {request_id!r} is already in flight")
        if len(session.inflight) >= session.max_inflight:
            return Busy(
                f"more than {session.max_inflight} requests in flight on this "
                "connection; wait for answers"
            )
        return None

    async def _call(self, message: dict[str, Any], session: Session) -> dict[str, Any] | None:
        """Find the method and call it: the response object, or ``None`` for a notification.

        jsonrpcserver's own layers (a request object, binding the arguments to the handler's
        signature, result and response objects in ``oslash`` wrappers) cost more than the
        handler of a ``ping``; the envelope is checked already (``_check_envelope``) and the
        params by the method's pydantic model, so the call is made here directly, with the
        error codes and shapes of JSON-RPC 2.0 §5.1.
        """
        call = self._table.get(message["method"])
        request_id = message.get("id")
        if call is None:
            error = MethodNotFound(f"Method not found: {message['method']}").to_error_data()
        else:
            params = message.get("params")
            if isinstance(params, list):
                if params:
                    reason = {"reason": "params must be given by name (an object)"}
                    error = InvalidParams("Invalid params", reason).to_error_data()
                    return None if "id" not in message else _reply_error(error, request_id)
                params = None
            outcome = await call(session, params or {})
            if "id" not in message:
                return None
            if type(outcome) is _Failed:
                return _reply_error(outcome.error, request_id)
            return {"jsonrpc": "2.0", "result": outcome, "id": request_id}
        return None if "id" not in message else _reply_error(error, request_id)

    def _wrap(self, spec: MethodSpec) -> Callable[[Session, dict[str, Any]], Awaitable[Any]]:
        # Every method takes MCP's ``_meta`` (where a client puts its ``traceparent``); only
        # those whose params declare it see it.
        keeps_meta = spec.params is not None and any(
            field.alias == "_meta" for field in spec.params.model_fields.values()
        )
        tracing = self.tracing

        async def call(session: Session, params: dict[str, Any]) -> Any:
            """The handler's result, or a :class:`_Failed` carrying the error object."""
            meta = params.get("_meta") if keeps_meta else params.pop("_meta", None)
            try:
                parsed = _parse_params(spec, params)
                if tracing is None:
                    result = await spec.handler(session, parsed)
                else:
                    with tracing.request(spec.name, tracing.context_of(meta)):
                        result = await spec.handler(session, parsed)
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # noqa: BLE001 - every failure becomes an answer
                return _Failed(to_rpc_error(exc).to_error_data())
            problem = json_problem(result)
            if problem is not None:
                err = to_rpc_error(TypeError(f"{spec.name} returned a non-JSON result: {problem}"))
                return _Failed(err.to_error_data())
            return result

        return call


def _parse_params(spec: MethodSpec, params: dict[str, Any]) -> Any:
    if spec.params is None:
        if params:
            raise InvalidParams(f"{spec.name} takes no params", {"unexpected": sorted(params)})
        return None
    try:
        return spec.params.model_validate(params)
    except ValidationError as exc:
        problems = [
            {
                "field": ".".join(str(p) for p in e["loc"]) or "params",
                "message": "unknown param" if e["type"] == "extra_forbidden" else e["msg"],
            }
            for e in exc.errors(include_url=False)
        ]
        raise InvalidParams(
            f"invalid params for {spec.name}: "
            + "; ".join(f"{p['field']}: {p['message']}" for p in problems),
            {"problems": problems},
        ) from None
