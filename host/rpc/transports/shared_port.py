"""One port, two servers: WebSocket handshakes to websockets, plain HTTP at chosen paths to an
ASGI app.

websockets parses only what a handshake may be (a ``GET`` without a body), so MCP's
Streamable HTTP (``POST /mcp`` with a JSON body, answered as JSON or an event stream) cannot go
through it. Rather than move the whole port to another server (the WebSocket path is the
host's hottest), each new connection is looked at once: its request line names a path, and a
connection whose first request is for one of the diverted paths is handed, bytes read so far
included, to uvicorn's HTTP/1.1 protocol running the ASGI app; every other connection becomes
a websockets connection exactly as if websockets had accepted it. After the hand-over the
transport talks to its protocol directly: the look costs one buffered read per connection.

A keep-alive connection stays with the server it was handed to: further requests on a
diverted connection go to the ASGI app (which answers only its own paths).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import Any, cast

import anyio
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

__all__ = ["PortSharing"]

log = logging.getLogger("plait.http")

ARRIVED = "plait.arrived"
"""The key, in an ASGI scope's ``state``, of what to call once a request's headers are in."""
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 30\r\n"
    b"Connection: close\r\n\r\ntoo many HTTP connections open\n"
)
MAX_REQUEST_LINE = 8192
"""Bytes read while looking for the request line; past it the connection goes to websockets,
which refuses it as a bad request."""


class PortSharing:
    """A ``create_connection`` factory for :func:`websockets.asyncio.server.serve` that diverts
    connections for ``paths`` to ``app`` (an ASGI 3 application)."""

    def __init__(
        self,
        app: Callable[..., Any],
        paths: Collection[str],
        *,
        first_request_timeout: float,
        max_open: int,
        keep_alive: float = 5.0,
        max_header_bytes: int = 65536,
    ) -> None:
        """``first_request_timeout``: seconds a connection has to send its first request line
        and, when diverted, its first request's headers (a client trickling them is cut, as
        websockets cuts a slow handshake). ``max_open``: diverted connections open at once;
        past it a new one is answered 503 and closed."""
        self.paths = frozenset(paths)
        self.first_request_timeout = first_request_timeout
        self.max_open = max_open
        self.config = Config(
            app,
            ws="none",  # WebSockets are websockets' (on the other paths)
            lifespan="off",
            proxy_headers=False,  # a header must never move the peer address
            server_header=False,
            date_header=False,
            log_config=None,
            access_log=False,
            timeout_keep_alive=int(keep_alive),
            h11_max_incomplete_event_size=max_header_bytes,
        )
        self.config.load()
        self.state = ServerState()
        self.state.default_headers = [(b"server", b"plait")]
        self.waiting: set[_Looking] = set()

    def __call__(self, protocol: Any, server: Any, **options: Any) -> _Looking:
        """What websockets calls for each accepted socket (in place of ``ServerConnection``)."""
        from websockets.asyncio.server import ServerConnection

        def websocket() -> asyncio.Protocol:
            return ServerConnection(protocol, server, **options)

        return _Looking(self, websocket)

    def diverts(self, request_line: bytes) -> bool:
        """Whether a request line (``METHOD SP target SP version``) asks for a diverted path."""
        parts = request_line.split(b" ")
        if len(parts) != 3:
            return False
        path = parts[1].split(b"?", 1)[0].decode("latin-1")
        return path in self.paths

    def http(self, arrived: Callable[[], None]) -> asyncio.Protocol:
        """The HTTP/1.1 protocol of a diverted connection; the ASGI app calls
        ``scope["state"]["arrived"]()`` when a request's headers are in."""
        return H11Protocol(self.config, self.state, {ARRIVED: arrived})

    @property
    def open(self) -> int:
        """Diverted connections open now."""
        return len(self.state.connections)

    async def close(self, grace: float = 2.0) -> None:
        """Close diverted connections: idle ones now, busy ones after their response, and
        whatever still runs after ``grace`` seconds is cancelled (an event stream ends when
        its client or the host goes)."""
        for looking in list(self.waiting):
            looking.abort()
        for connection in list(self.state.connections):
            connection.shutdown()
        with anyio.move_on_after(grace):
            while self.state.tasks:
                await anyio.sleep(0.02)
        # uvicorn's request tasks are asyncio tasks of its own: cancelled, then waited for
        # (their outcome is theirs: an ASGI app's error is logged by uvicorn)
        running = list(self.state.tasks)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=grace)
        for connection in list(self.state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()


class _Looking(asyncio.Protocol):
    """A connection whose first request line has not arrived yet."""

    def __init__(self, sharing: PortSharing, websocket: Callable[[], asyncio.Protocol]) -> None:
        self.sharing = sharing
        self.websocket = websocket
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.sharing.waiting.add(self)
        self.timer = asyncio.get_running_loop().call_later(
            self.sharing.first_request_timeout, self.abort
        )

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n")
        if end < 0 and len(self.buffer) < MAX_REQUEST_LINE:
            return
        line = bytes(self.buffer[:end]) if end >= 0 else b""
        if not self.sharing.diverts(line):
            self._stop_waiting()
            self._hand_over(self.websocket())
        elif self.sharing.open >= self.sharing.max_open:
            self._stop_waiting()
            log.warning("refused an HTTP connection: %d open, the limit", self.sharing.open)
            transport = self.transport
            assert transport is not None
            transport.write(BUSY)
            transport.close()
        else:  # the headers are still timed: the app says when they are in
            self.sharing.waiting.discard(self)
            self._hand_over(self.sharing.http(self._arrived))

    def _arrived(self) -> None:
        """The diverted connection's first request is in: it is no longer timed."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _hand_over(self, protocol: asyncio.Protocol) -> None:
        transport = self.transport
        assert transport is not None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(bytes(self.buffer))
        self.buffer.clear()

    def eof_received(self) -> bool | None:
        self.abort()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()

    def abort(self) -> None:
        self._stop_waiting()
        if self.transport is not None:
            self.transport.abort()

    def _stop_waiting(self) -> None:
        self.sharing.waiting.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
