"""The WebSocket transport: ``ws://127.0.0.1:8765/rpc``, one JSON-RPC message per text frame.

The handshake is where a browser-borne attack is stopped: the ``Host`` header must name this
server (DNS rebinding), a browser ``Origin`` must be on the allow-list, and every connection
must present the per-launch token (``Authorization: Bearer`` or ``?token=``), compared in
constant time. ``GET /health`` is answered over plain HTTP for liveness probes.

MCP over Streamable HTTP is served at ``/mcp`` on the same port, behind the same ``Host``,
``Origin`` and token checks (:mod:`plait.rpc.transports.mcp_http`); connections for it are
told apart from WebSocket handshakes by their first request line
(:mod:`plait.rpc.transports.shared_port`).

With a :class:`~plait.rpc.web.WebAccess`, the web view is served on the same port: ``/`` and
``/static/...`` over plain HTTP (after the same ``Host`` check), and the page's own origin
(``http://127.0.0.1:PORT``) may open ``/rpc`` with its session cookie instead of the token.
The cookie is accepted from that origin only: another page, even one on another port of
127.0.0.1 that the browser sends the cookie from, needs the token like any client.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from plait.rpc.dispatcher import Dispatcher
from plait.rpc.session import Session
from plait.rpc.transports.mcp_http import MCP_PATH, McpHttp, Refusal
from plait.rpc.transports.shared_port import PortSharing

if TYPE_CHECKING:
    from plait.config import Limits
    from plait.rpc.host_api import HostApi
    from plait.rpc.web import WebAccess
    from plait.telemetry import Metrics

__all__ = ["RPC_PATH", "WebSocketTransport"]

log = logging.getLogger("plait.ws")


class _RedactToken(logging.Filter):
    """websockets traces handshakes at DEBUG; the token must never reach a log."""

    _PATTERNS = (
        re.compile(r"(token=)[^&\s]+"),
        re.compile(r"(Bearer )\S+"),
        re.compile(r"((?:Set-)?Cookie: ).+", re.IGNORECASE),  # the web view's session secret
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = message
        for pattern in self._PATTERNS:
            redacted = pattern.sub(r"\1<redacted>", redacted)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


protocol_log = logging.getLogger("plait.ws.protocol")
"""The logger websockets writes its protocol trace to, with the token redacted."""
protocol_log.addFilter(_RedactToken())

RPC_PATH = "/rpc"
"""Where the JSON-RPC endpoint is."""
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
"""Binds only this machine can reach."""
PING_INTERVAL = 20.0
"""Seconds between keepalive pings; a peer silent for ``PING_INTERVAL + PING_TIMEOUT`` is
dropped."""
PING_TIMEOUT = 20.0
OPEN_TIMEOUT = 10.0
"""A handshake not completed in this many seconds is dropped."""


class WebSocketTransport:
    """Serves the dispatcher to WebSocket clients with the checks above."""

    def __init__(
        self,
        host: HostApi,
        dispatcher: Dispatcher,
        *,
        token: str,
        limits: Limits,
        bind: str = "127.0.0.1",
        port: int = 0,
        allowed_origins: Iterable[str] = (),
        web: WebAccess | None = None,
        metrics: Metrics | None = None,
        metrics_public: bool = False,
    ) -> None:
        """``metrics``: served at ``/metrics``, to holders of the token, or to anyone when
        ``metrics_public`` and the bind is loopback (the only peers are on this machine)."""
        self.host = host
        self.metrics = metrics
        self.metrics_public = metrics_public and bind in LOOPBACK
        self.dispatcher = dispatcher
        self.token = token
        self.allowed_origins = frozenset(allowed_origins)
        self.max_inflight = limits.max_inflight
        self.max_queue = limits.send_queue_messages
        self.max_queue_bytes = limits.send_queue_bytes
        self.limits = limits
        self.requested_port = port
        self.port = 0
        self.bind = bind
        self.server: Server | None = None
        self.open = 0
        self.web = web
        """The web view's links and sessions: the page is served when given."""
        self.mcp = McpHttp(dispatcher, host.sessions, self, limits, metrics=metrics)
        """MCP over Streamable HTTP at ``/mcp``."""
        self.sharing = PortSharing(
            self.mcp,
            [MCP_PATH],
            first_request_timeout=OPEN_TIMEOUT,
            max_open=limits.max_connections * 4,
        )

    async def start(self) -> int:
        """Listen; returns the port (useful when configured as 0)."""
        self.server = await serve(
            self._connection,
            self.bind,
            self.requested_port,
            process_request=self._checked,
            max_size=self.limits.max_message_bytes,
            ping_interval=PING_INTERVAL,
            ping_timeout=PING_TIMEOUT,
            open_timeout=OPEN_TIMEOUT,
            server_header="plait",
            logger=protocol_log,
            create_connection=self.sharing,  # type: ignore[arg-type]  # a ServerConnection maker
        )
        sockets = list(self.server.sockets)
        self.port = sockets[0].getsockname()[1] if sockets else self.requested_port
        if self.web is not None:
            self.web.listening(self.page_url, self.port)
        return self.port

    @property
    def page_url(self) -> str:
        """Where a browser finds the web view: an address the ``Host`` check accepts (a
        wildcard bind is reached through loopback)."""
        name = self.bind
        if name in ("0.0.0.0", "::", "localhost"):
            name = "127.0.0.1"
        return f"http://{f'[{name}]' if ':' in name else name}:{self.port}"

    async def stop(self) -> None:
        """Close the listener and every connection."""
        if self.server is not None:
            await self.mcp.close()
            await self.sharing.close()
            self.server.close()
            await self.server.wait_closed()

    # -- the handshake -------------------------------------------------------------------------

    def _allowed_hosts(self) -> set[str]:
        names = {"127.0.0.1", "localhost", "[::1]"}
        if self.bind not in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::"):
            names.add(f"[{self.bind}]" if ":" in self.bind else self.bind)
        return {f"{name}:{self.port}" for name in names}

    def _own_origins(self) -> set[str]:
        """The origins of the page this transport serves, under each name of this server."""
        return {f"http://{host}" for host in self._allowed_hosts()}

    def _checked(self, connection: ServerConnection, request: Request) -> Response | None:
        """The handshake's answer (``None``: go on to the WebSocket), counted."""
        if self.metrics is None:
            return self._check(connection, request)
        response: Response | None
        if urlsplit(request.path).path == METRICS_PATH:
            response = self._host_refusal(connection, request) or self._metrics(
                connection, request, self.metrics
            )
        else:
            response = self._check(connection, request)
        if response is None:
            self.metrics.connections.labels("websocket").inc()
        elif response.status_code >= 400:
            self.metrics.refusals.labels(str(response.status_code)).inc()
        return response

    def _metrics(
        self, connection: ServerConnection, request: Request, metrics: Metrics
    ) -> Response:
        """``GET /metrics`` (its Host header checked): the Prometheus text format, behind
        the token unless public."""
        url = urlsplit(request.path)
        if not self.metrics_public and not self._token_ok(request.headers, url.query):
            return _refuse(
                connection,
                HTTPStatus.UNAUTHORIZED,
                "a valid token is required (Authorization: Bearer <token>), or set "
                "[metrics] public = true on a loopback bind",
            )
        response = connection.respond(HTTPStatus.OK, "")
        response.body = metrics.exposition()
        del response.headers["Content-Type"], response.headers["Content-Length"]
        response.headers["Content-Type"] = metrics.content_type
        response.headers["Content-Length"] = str(len(response.body))
        return response

    def _host_refusal(self, connection: ServerConnection, request: Request) -> Response | None:
        """The refusal of a ``Host`` header this server does not answer to (DNS rebinding):
        the first check of every path."""
        refusal = self._host_problem(request.headers)
        if refusal is None:
            return None
        return _refuse(connection, refusal.status, refusal.reason, refusal.why)

    def _host_problem(self, headers: Headers) -> Refusal | None:
        host_header = headers.get("Host", "")
        if host_header in self._allowed_hosts():
            return None
        return Refusal(
            HTTPStatus.FORBIDDEN,
            "Host header not allowed",
            f"bad Host header {host_header[:200]!r} (DNS rebinding?)",
        )

    def http_refusal(self, headers: Headers, query: str, *, preflight: bool) -> Refusal | None:
        """The checks of ``/mcp``: those of ``/rpc`` (the web view's cookie aside: the page
        does not speak MCP); a CORS preflight carries no token, so it is not asked for one."""
        refusal = self._host_problem(headers)
        if refusal is not None:
            return refusal
        origin = headers.get("Origin")
        if origin is not None and not self.origin_allowed(origin):
            return Refusal(
                HTTPStatus.FORBIDDEN, "Origin not allowed", f"bad origin {origin[:200]!r}"
            )
        if preflight or self._token_ok(headers, query):
            return None
        given = _given_token(headers, query)
        return Refusal(
            HTTPStatus.UNAUTHORIZED,
            "a valid token is required (Authorization: Bearer <token>)",
            "bad token" if given else "no token",
        )

    def origin_allowed(self, origin: str) -> bool:
        return origin in self.allowed_origins

    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        refusal = self._host_refusal(connection, request)
        if refusal is not None:
            return refusal
        if url.path == HEALTH_PATH:
            # A store that cannot write makes the host unhealthy: it answers, but refuses work.
            problem = self.host.store_problem()
            response = connection.respond(
                HTTPStatus.OK if problem is None else HTTPStatus.SERVICE_UNAVAILABLE,
                json.dumps(
                    {
                        "status": "ok" if problem is None else "unavailable",
                        "name": "plait",
                        "version": self.host.version,
                        "connections": self.open,
                        "store": problem or "ok",
                        "limits": self.limits.model_dump(),
                    }
                )
                + "\n",
            )
            del response.headers["Content-Type"]  # respond() made it text/plain
            response.headers["Content-Type"] = "application/json"
            return response
        if self.web is not None and self.web.handles(url.path):
            return self.web.respond(request, self._own_origins())
        if url.path != RPC_PATH:
            return _refuse(
                connection,
                HTTPStatus.NOT_FOUND,
                f"the endpoint is {RPC_PATH}",
                f"no such path {url.path[:200]!r}",
            )
        origin = request.headers.get("Origin")
        page = self.web is not None and origin is not None and origin in self._own_origins()
        if origin is not None and origin not in self.allowed_origins and not page:
            return _refuse(
                connection,
                HTTPStatus.FORBIDDEN,
                "Origin not allowed",
                f"bad origin {origin[:200]!r}",
            )
        if not self._token_ok(request.headers, url.query) and not (
            page and self.web is not None and self.web.session_ok(request.headers)
        ):
            given = _given_token(request.headers, url.query)
            return _refuse(
                connection,
                HTTPStatus.UNAUTHORIZED,
                "a valid token is required",
                "bad token" if given else "no token",
            )
        if self.open >= self.limits.max_connections:
            return _refuse(
                connection,
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"too many connections (limit {self.limits.max_connections})",
                f"too many connections ({self.open} open, limit {self.limits.max_connections})",
            )
        return None

    def _page_session(self, ws: ServerConnection) -> bool:
        """Whether the connection is the web view's page: its own origin and a session
        cookie, not the token (what an answer's ``web`` channel means)."""
        request = ws.request
        if self.web is None or request is None:
            return False
        origin = request.headers.get("Origin")
        return (
            origin is not None
            and origin in self._own_origins()
            and not self._token_ok(request.headers, urlsplit(request.path).query)
            and self.web.session_ok(request.headers)
        )

    def _token_ok(self, headers: Headers, query: str) -> bool:
        given = _given_token(headers, query)
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    # -- a connection ------------------------------------------------------------------------

    async def _connection(self, ws: ServerConnection) -> None:
        """Read messages and hand them to this connection's workers.

        Workers are tasks that serve one message after another; one is added whenever a
        message arrives and none is free (a ``runs/wait`` holds its worker while others go
        on), up to ``max_inflight + 8``. Past that the reader waits, and TCP pushes back on a
        flooding client. Spawning a worker per burst instead of a task per message keeps a
        request's cost close to the transport's own.
        """
        self.open += 1
        peer = _peer(ws)
        opened = time.monotonic()
        log.info(
            "connection opened from %s (%d open)",
            peer,
            self.open,
            extra={"peer": peer, "connections": self.open},
        )
        session = Session(
            transport="websocket",
            max_inflight=self.max_inflight,
            max_queue=self.max_queue,
            max_queue_bytes=self.max_queue_bytes,
        )
        session.web = self._page_session(ws)
        self.host.sessions.add(session)
        most = self.max_inflight + 8
        inbox, taken = anyio.create_memory_object_stream[str | bytes](most)
        workers = 0
        try:
            async with anyio.create_task_group() as tg, inbox, taken:
                session.on_overflow = lambda: tg.start_soon(_drop, ws)
                tg.start_soon(self._writer, ws, session)
                try:
                    async for message in ws:
                        if inbox.statistics().tasks_waiting_receive == 0 and workers < most:
                            workers += 1
                            tg.start_soon(self._worker, taken.clone(), session)
                        await inbox.send(message)
                except ConnectionClosed:
                    pass
                tg.cancel_scope.cancel()  # replies can no longer be sent; runs go on
        finally:
            session.close()
            self.host.sessions.discard(session)
            self.open -= 1
            took = round(time.monotonic() - opened, 3)
            log.info(
                "connection closed from %s after %.3f s (close code %s, %d open)",
                peer,
                took,
                ws.close_code,
                self.open,
                extra={
                    "peer": peer,
                    "duration": took,
                    "close_code": ws.close_code,
                    "connections": self.open,
                },
            )

    async def _worker(
        self, messages: MemoryObjectReceiveStream[str | bytes], session: Session
    ) -> None:
        async with messages:
            async for message in messages:
                await self.dispatcher.serve(message, session)

    async def _writer(self, ws: ServerConnection, session: Session) -> None:
        try:
            async with session.outbox as outbox:
                async for text in outbox:
                    while True:  # what else is queued goes without an event-loop turn per frame
                        await ws.send(text)
                        session.sent(text)
                        try:
                            text = outbox.receive_nowait()
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            break
        except ConnectionClosed:
            pass


def _refuse(
    connection: ServerConnection, status: HTTPStatus, reason: str, why: str | None = None
) -> Response:
    """Answer a handshake with ``status`` and ``reason``, and log who was refused and why
    (``why``: the log's words, more precise than what the client is told; never the token)."""
    peer = _peer(connection)
    why = why or reason
    log.warning(
        "refused a connection from %s: %s (HTTP %d)",
        peer,
        why,
        int(status),
        extra={"peer": peer, "reason": why, "status": int(status)},
    )
    return connection.respond(status, reason + "\n")


def _peer(connection: ServerConnection) -> str:
    """``host:port`` of the other end (``[::1]:port`` for IPv6), or ``?`` once it is gone."""
    try:
        address = connection.remote_address
    except (AttributeError, OSError):
        address = None
    if not address:
        return "?"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _given_token(headers: Headers, query: str) -> str:
    """The token a handshake carries (``Authorization: Bearer``, else ``?token=``), or ``""``.
    A refusal says "bad token" or "no token" by it, which tells a misconfigured client from a
    stale one without logging either."""
    auth = headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[len("Bearer ") :].strip()
    if query:
        return (parse_qs(query).get("token") or [""])[0]
    return ""


async def _drop(ws: ServerConnection) -> None:
    """Close a client that stopped reading: try a 1008 close, then cut the connection."""
    with anyio.move_on_after(1):
        await ws.close(1008, "send queue full: the client is not reading")
    transport: Any = getattr(ws, "transport", None)
    if transport is not None:
        transport.abort()
