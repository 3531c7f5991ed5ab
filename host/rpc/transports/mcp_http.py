"""MCP over Streamable HTTP at ``/mcp``, on the WebSocket's port, behind the same checks.

One POST carries one JSON-RPC message. A request is answered on its own response: as
``application/json`` when the answer is ready before anything else is sent (the usual case),
else as ``text/event-stream`` carrying the request's progress notifications and the host's own
requests (``elicitation/create``), then the answer. A notification or a response is
acknowledged with ``202``. Closing the response stream cancels the request.

Both MCP eras are served, as on stdio and the WebSocket:

- **2026-07-28** (stateless): every POST stands alone; its ``_meta`` envelope and the
  ``MCP-Protocol-Version`` / ``Mcp-Method`` / ``Mcp-Name`` headers must agree (the MCP SDK's
  inbound ladder checks them), and a JSON-RPC error is sent with the HTTP status the revision
  maps it to. No session id is issued. Long calls become tasks (``tasks/get``), a question
  becomes an ``input_required`` result.
- **2025-11-25 and older**: ``initialize`` opens a session and its answer carries
  ``Mcp-Session-Id``; every later POST names it (missing: ``400``; unknown or ended: ``404``,
  so the client initializes again). ``DELETE /mcp`` ends a session. Sessions idle for
  :data:`SESSION_IDLE` seconds are forgotten; at most ``[limits] max_connections`` are open.

Each POST is answered by its own :class:`~plait.rpc.session.Session` (an *exchange*), whose
queue is the response body: that is what routes a progress notification to the stream of the
call it belongs to. A handshake-era exchange starts from its session's negotiated state and,
for ``initialize``, hands it back.

``GET /mcp`` (a stream of server-initiated messages) is answered ``405``: plait sends nothing
outside a request's own stream (``runs/subscribe`` is the WebSocket's).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import orjson
from websockets.datastructures import Headers

from plait.rpc.mcp_era import HANDSHAKE_VERSIONS, MODERN_VERSIONS, is_modern
from plait.rpc.session import Session, id_key
from plait.rpc.transports.shared_port import ARRIVED

if TYPE_CHECKING:
    from plait.config import Limits
    from plait.rpc.dispatcher import Dispatcher
    from plait.telemetry import Metrics

__all__ = ["MCP_PATH", "SESSION_IDLE", "HttpGate", "McpHttp", "Refusal"]

log = logging.getLogger("plait.http")

MCP_PATH = "/mcp"
SESSION_IDLE = 3600.0
"""Seconds a handshake-era session may go unused before it is forgotten."""
STREAM_AFTER = 1.0
"""Seconds an answer may take before the response turns into an event stream (so a proxy sees
bytes; a quick answer stays plain JSON)."""
PING_EVERY = 15.0
"""Seconds between keepalive comments on an event stream."""
SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"
CORS_HEADERS = (
    "authorization, content-type, accept, last-event-id, mcp-protocol-version, "
    "mcp-session-id, mcp-method, mcp-name"
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is not served: the status, what the client is told, what the log says."""

    status: HTTPStatus
    reason: str
    why: str


class HttpGate(Protocol):
    """The checks a request passes before it is read (the WebSocket transport's own)."""

    def http_refusal(self, headers: Headers, query: str, *, preflight: bool) -> Refusal | None:
        """``Host`` and ``Origin``, then (except a CORS preflight) the token."""
        ...

    def origin_allowed(self, origin: str) -> bool:
        """Whether a browser page of ``origin`` may call (CORS answers are given to it)."""
        ...


@dataclass
class _McpSession:
    """A handshake-era client: what it negotiated, and its requests being answered."""

    id: str
    state: Session
    exchanges: set[Session] = field(default_factory=set)
    used: float = field(default_factory=time.monotonic)


class McpHttp:
    """The ASGI application behind ``/mcp``."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        sessions: set[Session],
        gate: HttpGate,
        limits: Limits,
        *,
        metrics: Metrics | None = None,
        idle: float = SESSION_IDLE,
    ) -> None:
        """``sessions``: the host's live sessions, where each exchange is listed while it
        runs (the host counts and notifies them)."""
        self.dispatcher = dispatcher
        self.sessions = sessions
        self.gate = gate
        self.limits = limits
        self.metrics = metrics
        self.idle = idle
        self.clients: dict[str, _McpSession] = {}
        self.answering = 0
        """Requests being answered now, over every session."""

    # -- the request ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        arrived = scope.get("state", {}).get(ARRIVED)
        if arrived is not None:  # the connection's headers came in time
            arrived()
        headers = Headers(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]
        )
        reply = _Reply(scope, send, headers, self.gate)
        if scope["path"] != MCP_PATH:
            await reply.text(
                HTTPStatus.NOT_FOUND,
                f"this connection serves {MCP_PATH} only; open another for other paths",
            )
            return
        method = scope["method"]
        query = scope.get("query_string", b"").decode("latin-1")
        refusal = self.gate.http_refusal(headers, query, preflight=method == "OPTIONS")
        if refusal is not None:
            _log_refusal(scope, refusal)
            if self.metrics is not None:
                self.metrics.refusals.labels(str(int(refusal.status))).inc()
            await reply.text(refusal.status, refusal.reason, authenticate=True)
            return
        if method == "OPTIONS":
            await reply.empty(HTTPStatus.NO_CONTENT, preflight=True)
        elif method == "DELETE":
            await self._end_session(headers, reply)
        elif method != "POST":
            await reply.empty(HTTPStatus.METHOD_NOT_ALLOWED, allow="POST, DELETE")
        else:
            try:
                await self._post(scope, receive, headers, reply)
            except _Gone:
                return

    async def _post(self, scope: Scope, receive: Receive, headers: Headers, reply: _Reply) -> None:
        accepts_json, accepts_stream = _accepts(headers.get("Accept", ""))
        if not accepts_json:
            await reply.text(
                HTTPStatus.NOT_ACCEPTABLE,
                "send Accept: application/json, text/event-stream (MCP answers are JSON, "
                "long ones an event stream)",
            )
            return
        kind = headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            await reply.text(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "the body must be Content-Type: application/json"
            )
            return
        body = await _read_body(receive, self.limits.max_message_bytes)
        if body is None:
            await reply.rpc_error(
                -32600,
                f"message larger than {self.limits.max_message_bytes} bytes",
                status=HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            )
            return
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            await reply.rpc_error(-32700, f"parse error: {exc}", status=HTTPStatus.BAD_REQUEST)
            return
        if not isinstance(message, dict):
            await reply.rpc_error(
                -32600,
                "the body must be one JSON-RPC message object (batches are not taken over HTTP)",
                status=HTTPStatus.BAD_REQUEST,
            )
            return
        if is_modern(message):
            await self._modern(message, body, headers, receive, reply, accepts_stream)
        else:
            await self._handshake_era(message, body, headers, receive, reply, accepts_stream)

    async def _modern(
        self,
        message: dict[str, Any],
        body: bytes,
        headers: Headers,
        receive: Receive,
        reply: _Reply,
        accepts_stream: bool,
    ) -> None:
        """A 2026-07-28 POST: checked by the SDK's inbound ladder (headers included), then
        answered by an exchange of its own."""
        from mcp.shared.inbound import (
            ERROR_CODE_HTTP_STATUS,
            InboundLadderRejection,
            classify_inbound_request,
            find_duplicated_routing_header,
        )
        from mcp_types import HEADER_MISMATCH

        if "id" not in message:  # no client notification means anything on this wire
            await reply.empty(HTTPStatus.ACCEPTED)
            return
        if "method" not in message:
            await reply.rpc_error(
                -32600,
                "a 2026-07-28 client answers nothing over HTTP (the host asks no questions "
                "on this revision: it returns input_required)",
                status=HTTPStatus.BAD_REQUEST,
                request_id=message.get("id"),
            )
            return
        duplicated = find_duplicated_routing_header(headers.raw_items())
        found = (
            InboundLadderRejection(
                code=HEADER_MISMATCH, message=f"{duplicated} header appears more than once"
            )
            if duplicated is not None
            else classify_inbound_request(
                message,
                headers={name.lower(): value for name, value in headers.raw_items()},
                supported_modern_versions=MODERN_VERSIONS,
            )
        )
        if isinstance(found, InboundLadderRejection):
            await reply.rpc_error(
                found.code,
                found.message,
                status=HTTPStatus(ERROR_CODE_HTTP_STATUS.get(found.code, 400)),
                request_id=message.get("id"),
                data=found.data,
            )
            return
        exchange = self._exchange()
        await self._answer(body, exchange, receive, reply, accepts_stream, modern=True)

    async def _handshake_era(
        self,
        message: dict[str, Any],
        body: bytes,
        headers: Headers,
        receive: Receive,
        reply: _Reply,
        accepts_stream: bool,
    ) -> None:
        """A POST of a session opened by ``initialize`` (or the ``initialize`` itself)."""
        version = headers.get(VERSION_HEADER)
        if version is not None and version not in HANDSHAKE_VERSIONS:
            await reply.rpc_error(
                -32600,
                f"unsupported {VERSION_HEADER} {version[:40]!r}; this host speaks "
                f"{', '.join((*MODERN_VERSIONS, *HANDSHAKE_VERSIONS))}",
                status=HTTPStatus.BAD_REQUEST,
                request_id=message.get("id"),
            )
            return
        method = message.get("method")
        if method == "initialize":
            client = self._open_session()
            if client is None:
                await reply.rpc_error(
                    -32006,
                    f"too many MCP sessions (limit {self.limits.max_connections}, "
                    "[limits] max_connections); end one with DELETE /mcp",
                    status=HTTPStatus.SERVICE_UNAVAILABLE,
                    request_id=message.get("id"),
                )
                return
        else:
            named = headers.get(SESSION_HEADER)
            if named is None:
                await reply.rpc_error(
                    -32600,
                    f"no {SESSION_HEADER} header: send initialize first (its answer carries "
                    "the id), or use protocol version 2026-07-28, which needs no session",
                    status=HTTPStatus.BAD_REQUEST,
                    request_id=message.get("id"),
                )
                return
            found = self.clients.get(named)
            if found is None:
                await reply.rpc_error(
                    -32600,
                    f"no MCP session {named[:64]!r} (it ended, expired or the host restarted): "
                    "initialize again",
                    status=HTTPStatus.NOT_FOUND,
                    request_id=message.get("id"),
                )
                return
            client = found
        client.used = time.monotonic()
        if "id" not in message or "method" not in message:
            await self._route(client, message, body)
            await reply.empty(HTTPStatus.ACCEPTED)
            return
        exchange = self._exchange(client)
        try:
            answered = await self._answer(
                body,
                exchange,
                receive,
                reply,
                accepts_stream,
                session_id=client.id if method == "initialize" else None,
            )
        finally:
            client.exchanges.discard(exchange)
        if method == "initialize":
            if answered:
                _copy_state(exchange, client.state)
            else:
                self.clients.pop(client.id, None)

    async def _route(self, client: _McpSession, message: dict[str, Any], body: bytes) -> None:
        """A notification or a response of a handshake-era client, to the exchange it is about:
        a response to the one that asked, a cancellation to the one answering that request."""
        if "method" not in message:
            for exchange in client.exchanges:
                if exchange.awaits(message.get("id")):
                    await self.dispatcher.serve(body, exchange)
                    return
            log.info("MCP session %s: a response to no open question (dropped)", client.id)
            return
        if message.get("method") == "notifications/cancelled":
            params = message.get("params")
            target = params.get("requestId") if isinstance(params, dict) else None
            for exchange in client.exchanges:
                if id_key(target) in exchange.inflight:
                    await self.dispatcher.serve(body, exchange)
                    return
            return
        exchange = self._exchange(client)
        try:
            await self.dispatcher.serve(body, exchange)
        finally:
            exchange.close()
            client.exchanges.discard(exchange)
            self.sessions.discard(exchange)
        if message.get("method") == "notifications/initialized":
            _copy_state(exchange, client.state)

    # -- sessions ------------------------------------------------------------------------------

    def _open_session(self) -> _McpSession | None:
        """A new handshake-era session, after forgetting idle ones; ``None`` when full."""
        now = time.monotonic()
        for stale in [c for c in self.clients.values() if now - c.used > self.idle]:
            if not stale.exchanges:
                del self.clients[stale.id]
        if len(self.clients) >= self.limits.max_connections:
            idle = sorted(
                (c for c in self.clients.values() if not c.exchanges), key=lambda c: c.used
            )
            if not idle:
                return None
            del self.clients[idle[0].id]
        client = _McpSession(
            secrets.token_urlsafe(24), Session(transport="mcp-http", strict_mcp=True)
        )
        self.clients[client.id] = client
        if self.metrics is not None:
            self.metrics.connections.labels("mcp-http").inc()
        return client

    async def _end_session(self, headers: Headers, reply: _Reply) -> None:
        named = headers.get(SESSION_HEADER)
        client = self.clients.pop(named, None) if named is not None else None
        if client is None:
            await reply.text(HTTPStatus.NOT_FOUND, f"no such MCP session ({SESSION_HEADER})")
            return
        for exchange in list(client.exchanges):
            exchange.close()
        await reply.empty(HTTPStatus.NO_CONTENT)

    def _exchange(self, client: _McpSession | None = None) -> Session:
        """A session answering one POST, starting from ``client``'s negotiated state."""
        exchange = Session(
            transport="mcp-http",
            strict_mcp=True,
            max_inflight=self.limits.max_inflight,
            max_queue=self.limits.send_queue_messages,
            max_queue_bytes=self.limits.send_queue_bytes,
        )
        if client is not None:
            _copy_state(client.state, exchange)
            client.exchanges.add(exchange)
        return exchange

    # -- answering -----------------------------------------------------------------------------

    async def _answer(
        self,
        body: bytes,
        exchange: Session,
        receive: Receive,
        reply: _Reply,
        accepts_stream: bool,
        *,
        modern: bool = False,
        session_id: str | None = None,
    ) -> bool:
        """Dispatch a request on ``exchange`` and send what it queues as the response; True
        when its answer was a result (not an error). ``modern``: a 2026-07-28 request (its
        errors carry the revision's HTTP statuses; hanging up cancels it)."""
        busy = self.limits.max_connections * self.limits.max_inflight
        if self.answering >= busy:
            await reply.rpc_error(
                -32006,
                f"too many MCP requests over HTTP in flight (limit {busy})",
                status=HTTPStatus.SERVICE_UNAVAILABLE,
            )
            return False
        self.answering += 1
        self.sessions.add(exchange)
        extra = [(SESSION_HEADER, session_id)] if session_id is not None else []
        answer: list[dict[str, Any]] = []
        try:
            async with anyio.create_task_group() as tg:
                exchange.on_overflow = tg.cancel_scope.cancel

                async def dispatch() -> None:
                    try:
                        await self.dispatcher.serve(body, exchange)
                    finally:
                        exchange.close()

                async def hang_up() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    if modern:  # 2026-07-28: closing the stream is how a client cancels
                        exchange.cancelled.update(exchange.inflight)
                    # (before it, a client cancels with notifications/cancelled: a dropped
                    # connection only stops the answer, as on the WebSocket)
                    tg.cancel_scope.cancel()

                tg.start_soon(dispatch)
                tg.start_soon(hang_up)
                await _respond(exchange, reply, answer, accepts_stream, modern, extra)
                tg.cancel_scope.cancel()
        finally:
            self.answering -= 1
            exchange.close()
            self.sessions.discard(exchange)
        return bool(answer) and "result" in answer[0]

    async def close(self) -> None:
        """Forget every session (the host is stopping)."""
        for client in self.clients.values():
            for exchange in list(client.exchanges):
                exchange.close()
        self.clients.clear()


async def _respond(
    exchange: Session,
    reply: _Reply,
    answer: list[dict[str, Any]],
    accepts_stream: bool,
    status_map: bool,
    extra: list[tuple[str, str]],
) -> None:
    """Send what ``exchange`` queues: JSON if the answer comes first and soon, else a stream
    (or, for a client that takes no stream, JSON once the answer comes, without the rest)."""
    outbox = exchange.outbox
    early: list[bytes] = []
    ended = False
    with anyio.move_on_after(STREAM_AFTER if accepts_stream else float("inf")):
        while True:
            try:
                text = await outbox.receive()
            except anyio.EndOfStream:
                ended = True
                break
            parsed = orjson.loads(text)
            if _is_answer(parsed):
                answer.append(parsed)
            elif accepts_stream:
                early.append(text.encode())
                break
    if ended and answer:
        await reply.json(answer[0], status_map=status_map, extra=extra)
        return
    if ended:  # a notification sent as a request: nothing to answer
        await reply.empty(HTTPStatus.ACCEPTED)
        return
    await reply.stream_start(extra)
    for text_bytes in early:
        await reply.stream_event(text_bytes)
    if answer:
        await reply.stream_event(orjson.dumps(answer[0]))
    while True:
        with anyio.move_on_after(PING_EVERY) as idle:
            try:
                text = await outbox.receive()
            except anyio.EndOfStream:
                break
            if _is_answer(orjson.loads(text)):
                answer.append(orjson.loads(text))
            await reply.stream_event(text.encode())
        if idle.cancelled_caught:
            await reply.stream_ping()
    await reply.stream_end()


class _Reply:
    """The response side of one request, CORS headers included for an allowed browser page."""

    def __init__(self, scope: Scope, send: Send, headers: Headers, gate: HttpGate) -> None:
        self.send = send
        origin = headers.get("Origin")
        self.cors: list[tuple[bytes, bytes]] = []
        if origin is not None and gate.origin_allowed(origin):
            self.cors = [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-expose-headers", b"mcp-session-id"),
                (b"vary", b"origin"),
            ]

    async def _start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        await self.send(
            {"type": "http.response.start", "status": status, "headers": headers + self.cors}
        )

    async def text(self, status: HTTPStatus, reason: str, *, authenticate: bool = False) -> None:
        body = (reason + "\n").encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        if authenticate and status == HTTPStatus.UNAUTHORIZED:
            headers.append((b"www-authenticate", b'Bearer realm="plait"'))
        await self._start(status, headers)
        await self.send({"type": "http.response.body", "body": body})

    async def empty(
        self, status: HTTPStatus, *, allow: str | None = None, preflight: bool = False
    ) -> None:
        headers: list[tuple[bytes, bytes]] = []
        if allow is not None:
            headers.append((b"allow", allow.encode()))
        if preflight and self.cors:
            headers += [
                (b"access-control-allow-methods", b"POST, DELETE, OPTIONS"),
                (b"access-control-allow-headers", CORS_HEADERS.encode()),
                (b"access-control-max-age", b"600"),
            ]
        await self._start(status, headers)
        await self.send({"type": "http.response.body", "body": b""})

    async def json(
        self,
        message: dict[str, Any],
        *,
        status_map: bool = False,
        extra: Sequence[tuple[str, str]] = (),
    ) -> None:
        status = HTTPStatus.OK
        error = message.get("error")
        if status_map and isinstance(error, dict):
            from mcp.shared.inbound import ERROR_CODE_HTTP_STATUS

            status = HTTPStatus(ERROR_CODE_HTTP_STATUS.get(error.get("code", 0), 200))
        body = orjson.dumps(message)
        headers = [(b"content-type", b"application/json")]
        headers += [(name.lower().encode(), value.encode()) for name, value in extra]
        await self._start(status, headers)
        await self.send({"type": "http.response.body", "body": body})

    async def rpc_error(
        self,
        code: int,
        message: str,
        *,
        status: HTTPStatus,
        request_id: Any = None,
        data: Any = None,
    ) -> None:
        error: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            error["data"] = data
        body = orjson.dumps({"jsonrpc": "2.0", "id": request_id, "error": error})
        await self._start(status, [(b"content-type", b"application/json")])
        await self.send({"type": "http.response.body", "body": body})

    async def stream_start(self, extra: Sequence[tuple[str, str]]) -> None:
        headers = [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache, no-transform"),
            (b"x-accel-buffering", b"no"),
        ]
        headers += [(name.lower().encode(), value.encode()) for name, value in extra]
        await self._start(HTTPStatus.OK, headers)

    async def stream_event(self, data: bytes) -> None:
        frame = b"event: message\r\ndata: " + data + b"\r\n\r\n"
        await self.send({"type": "http.response.body", "body": frame, "more_body": True})

    async def stream_ping(self) -> None:
        await self.send(
            {"type": "http.response.body", "body": b": ping\r\n\r\n", "more_body": True}
        )

    async def stream_end(self) -> None:
        await self.send({"type": "http.response.body", "body": b""})


def _is_answer(message: Any) -> bool:
    return isinstance(message, dict) and "method" not in message and "id" in message


def _accepts(accept: str) -> tuple[bool, bool]:
    """Whether an ``Accept`` header takes JSON and an event stream (``*/*`` takes both)."""
    kinds = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    anything = "*/*" in kinds or not accept.strip()
    return (
        anything or "application/json" in kinds or "application/*" in kinds,
        anything or "text/event-stream" in kinds or "text/*" in kinds,
    )


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or ``None`` once it passes ``limit`` bytes (the rest is not kept)."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Gone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


class _Gone(Exception):
    """The client hung up before its request was read."""


def _copy_state(source: Session, target: Session) -> None:
    """What a handshake negotiated, from one session to another."""
    target.mcp_version = source.mcp_version
    target.initialized = source.initialized
    target.client_info = source.client_info
    target.client_capabilities = source.client_capabilities


def _log_refusal(scope: Scope, refusal: Refusal) -> None:
    client = scope.get("client")
    peer = f"{client[0]}:{client[1]}" if client else "?"
    log.warning(
        "refused an MCP request from %s: %s (HTTP %d)",
        peer,
        refusal.why,
        int(refusal.status),
        extra={"peer": peer, "reason": refusal.why, "status": int(refusal.status)},
    )
