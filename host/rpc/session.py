"""One connected client: what it negotiated, what it has in flight, and a bounded way to reach it.

A transport creates a :class:`Session` per connection and gives it a ``deliver`` callback that
queues one text frame or line without waiting. The queue is bounded in messages and bytes: a
client that stops reading is dropped instead of growing the host's memory.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import anyio
import anyio.abc
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from plait.rpc.codec import encode
from plait.rpc.errors import RpcError

__all__ = ["CURRENT_REQUEST", "REPLY_HOOKS", "Session", "SessionClosed", "id_key"]

log = logging.getLogger("plait.rpc")

REPLY_HOOKS: ContextVar[list[Callable[[], None]] | None] = ContextVar("plait_reply_hooks")
"""Callbacks to run once the reply to the message being handled is queued."""

CURRENT_REQUEST: ContextVar[tuple[str, Any] | None] = ContextVar("plait_current_request")
"""The in-flight key of the request a handler is answering."""

MODERN_BATCHLESS = "2025-06-18"
"""MCP revisions from this one on receive no batches."""


class SessionClosed(Exception):
    """The client is gone, or was dropped for not reading."""


def id_key(request_id: Any) -> tuple[str, Any]:
    """A dict key that keeps ``1`` and ``"1"`` apart."""
    return (type(request_id).__name__, request_id)


class Session:
    """State of one client connection, shared by every request it sends."""

    def __init__(
        self,
        *,
        transport: str,
        strict_mcp: bool = False,
        max_queue: int = 1000,
        max_queue_bytes: int = 8 << 20,
        max_inflight: int = 64,
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.transport = transport
        self.strict_mcp = strict_mcp
        """stdio: every MCP rule applies, and ``initialize`` must come first."""
        self.mcp_version: str | None = None
        self.initialized = False
        self.client_info: dict[str, Any] = {}
        self.client_capabilities: dict[str, Any] = {}
        self.inflight: dict[tuple[str, Any], anyio.CancelScope | None] = {}
        """Requests being answered, by id; the scope of those that can be cancelled."""
        self.cancelled: set[tuple[str, Any]] = set()
        self.max_inflight = max_inflight
        self.subscriptions: dict[str, Callable[[], None]] = {}
        self._pending: dict[str, tuple[anyio.Event, list[Any]]] = {}
        self._ids = itertools.count(1)
        self._send, self._receive = anyio.create_memory_object_stream[str](max_queue)
        self._queued_bytes = 0
        self.max_queue_bytes = max_queue_bytes
        self.on_overflow = on_overflow
        self._has_writer = False
        self.closed = False
        self.web = False
        """The web view's page (its session cookie, from its own origin): ``runs/respond``
        answers through the ``web`` channel."""
        self._batch_limiter: anyio.CapacityLimiter | None = None
        self.max_queue = max_queue
        self.stalled = False
        """Congested and not draining: publishers stop waiting for it (it will be dropped)."""
        self._drained = anyio.Event()

    def batch_limiter(self, concurrency: int) -> anyio.CapacityLimiter:
        """The limiter every batch of this connection shares, so that two batches sent at once
        still run at most ``concurrency`` items together (docs/reliability.md §13)."""
        if self._batch_limiter is None:
            self._batch_limiter = anyio.CapacityLimiter(concurrency)
        return self._batch_limiter

    # -- sending -----------------------------------------------------------------------------

    @property
    def outbox(self) -> MemoryObjectReceiveStream[str]:
        """What the transport's writer task sends, in order. The writer owns it: it reads
        until the session closes (the rest of the queue drains first) and then closes it."""
        self._has_writer = True
        return self._receive

    def sent(self, text: str) -> None:
        """The writer reports a frame as sent, so its bytes leave the budget."""
        self._queued_bytes -= len(text)
        if not self._drained.is_set() and not self._above(4):
            self.stalled = False
            self._drained.set()

    def _above(self, fraction: int) -> bool:
        queued = self._send.statistics().current_buffer_used
        return (
            queued > self.max_queue // fraction
            or self._queued_bytes > self.max_queue_bytes // fraction
        )

    @property
    def congested(self) -> bool:
        """More than half of the send queue is in use."""
        return not self.closed and self._above(2)

    async def drained(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the queue is down to a quarter; False if not.

        A client that drains nothing in that time is marked :attr:`stalled`.
        """
        if self._drained.is_set():
            self._drained = anyio.Event()
        if not self._above(4):
            return True
        with anyio.move_on_after(timeout):
            await self._drained.wait()
            return True
        self.stalled = not self.closed
        return False

    def deliver(self, message: dict[str, Any] | list[Any] | str) -> None:
        """Queue a message without waiting; drop the client if its queue is full.

        One message larger than the whole queue could ever hold is not a reason to drop a
        client that reads: a reply becomes an error answer saying how to ask for less, an
        event notification goes out without its data (``runs/events`` pages it).
        """
        if self.closed:
            raise SessionClosed(self.id)
        text = message if isinstance(message, str) else encode(message)
        if len(text) > self.max_queue_bytes:  # rare: read back what an encoded reply holds
            parsed = orjson.loads(text) if isinstance(message, str) else message
            text = encode(_shrunk(parsed, len(text), self.max_queue_bytes))
        if self._queued_bytes + len(text) > self.max_queue_bytes:
            self._overflow("bytes")
        try:
            self._send.send_nowait(text)
        except anyio.WouldBlock:
            self._overflow("messages")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise SessionClosed(self.id) from None
        self._queued_bytes += len(text)

    def _overflow(self, what: str) -> None:
        log.warning("session %s: send queue full (%s); dropping the client", self.id, what)
        self.close()
        if self.on_overflow is not None:
            self.on_overflow()
        raise SessionClosed(self.id)

    def after_reply(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` right after the reply to the current message is queued."""
        hooks = REPLY_HOOKS.get(None)
        if hooks is None:
            callback()
        else:
            hooks.append(callback)

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """Send a notification; silently nothing if the client is gone."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        try:
            self.deliver(message)
        except SessionClosed:
            pass

    async def request(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 60.0
    ) -> Any:
        """Send a request to the client and wait for its answer (host → client, e.g. sampling).

        Raises:
            TimeoutError: no answer in time.
            RpcError: the client answered with an error.
            SessionClosed: the client went away.
        """
        request_id = f"plait-{next(self._ids)}"
        done = anyio.Event()
        box: list[Any] = []
        self._pending[request_id] = (done, box)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        try:
            self.deliver(message)
            with anyio.fail_after(timeout):
                await done.wait()
        finally:
            self._pending.pop(request_id, None)
        outcome = box[0]
        if isinstance(outcome, RpcError):
            raise outcome
        if outcome is SessionClosed:
            raise SessionClosed(self.id)
        return outcome

    def awaits(self, request_id: Any) -> bool:
        """Whether the host asked the client ``request_id`` and waits for the answer."""
        return isinstance(request_id, str) and request_id in self._pending

    def resolve(self, message: dict[str, Any]) -> bool:
        """Match a response from the client to a request the host sent; False if unknown."""
        entry = self._pending.get(message.get("id"))  # type: ignore[arg-type]
        if entry is None:
            return False
        done, box = entry
        if "error" in message and isinstance(message["error"], dict):
            box.append(RpcError.from_error_data(message["error"]))
        else:
            box.append(message.get("result"))
        done.set()
        return True

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def batches_allowed(self) -> bool:
        """JSON-RPC batches, except under MCP 2025-06-18 or later."""
        return self.mcp_version is None or self.mcp_version < MODERN_BATCHLESS

    def close(self) -> None:
        """Stop sending, end subscriptions and fail requests waiting on the client."""
        if self.closed:
            return
        self.closed = True
        for undo in self.subscriptions.values():
            undo()
        self.subscriptions.clear()
        for done, box in self._pending.values():
            box.append(SessionClosed)
            done.set()
        self._send.close()
        if not self._has_writer:
            self._receive.close()

    @property
    def sender(self) -> MemoryObjectSendStream[str]:
        """The queue's sending end (for transports that need to close it)."""
        return self._send


TOO_LARGE = -32006
"""The code of the error answer that stands in for a reply too large to send (busy: a limit)."""


def _shrunk(
    message: dict[str, Any] | list[Any], size: int, limit: int
) -> dict[str, Any] | list[Any]:
    """What goes out instead of a message of ``size`` bytes, over the ``limit`` of one message."""
    if isinstance(message, list):
        return [_shrunk(item, size, limit) if isinstance(item, dict) else item for item in message]
    if "result" in message and "id" in message:
        log.warning(
            "a reply of %d bytes is over the %d-byte send limit; answered with an error",
            size,
            limit,
        )
        return {
            "jsonrpc": "2.0",
            "id": message["id"],
            "error": {
                "code": TOO_LARGE,
                "message": f"the reply is {size} bytes, more than this connection takes at once "
                f"({limit}, [limits] send_queue_bytes): ask for less (runs/get with "
                "steps=false or a stepsLimit, runs/events with a smaller limit)",
                "data": {"bytes": size, "limit": limit},
            },
        }
    params = message.get("params")
    if message.get("method") == "runs/event" and isinstance(params, dict):
        return {
            **message,
            "params": {
                **params,
                "data": {"omitted": True, "bytes": size, "read": "runs/events"},
            },
        }
    return message
