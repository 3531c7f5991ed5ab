"""An in-process JSON-RPC client: the host's real dispatcher and a real session, no socket.

A test of a plugin's behaviour over the API should meet everything a WebSocket client meets
(params validation, the error codes, MCP session rules, notifications, host → client requests)
without a port, a token or a second process. :class:`Client` is a transport like the WebSocket
and stdio ones: it makes a :class:`~plait.rpc.session.Session`, hands each message it sends to
``Dispatcher.serve`` in a task of its own, and reads whatever the host queues on the session
(replies, notifications, requests such as ``sampling/createMessage``) in a writer task.
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from plait.rpc.errors import InternalError, MethodNotFound, RpcError
from plait.rpc.session import Session

if TYPE_CHECKING:
    from plait.host.app import Host
    from plait.rpc.dispatcher import Dispatcher

__all__ = ["MCP_PROTOCOL_VERSION", "Client", "RequestHandler"]

RequestHandler: TypeAlias = Callable[[str, dict[str, Any]], Awaitable[Any] | Any]
"""Answers a request the host sends to the client: ``(method, params) -> result``. Raising an
:class:`RpcError` answers with that error; any other exception with an internal error."""

MCP_PROTOCOL_VERSION = "2025-06-18"
"""The MCP revision :meth:`Client.initialize` asks for."""


class Client:
    """A JSON-RPC client of a started host, in this process.

    Use it as an async context manager (the ``plait_client`` fixture does)::

        async with Client(host) as client:
            started = await client.call("runs/start", workflow="hello", inputs={"name": "ada"})
            done = await client.call("runs/wait", runId=started["runId"])

    Args:
        host: a started :class:`plait.Host`.
        timeout: seconds :meth:`call` waits for an answer before raising ``TimeoutError``.
        on_request: answers requests the host sends (``sampling/createMessage``); without
            one they are answered with ``-32601`` (method not found), as a client that does
            not offer them would.
    """

    def __init__(
        self,
        host: Host,
        *,
        timeout: float = 30.0,
        on_request: RequestHandler | None = None,
    ) -> None:
        self.host = host
        self.timeout = timeout
        self.on_request = on_request
        limits = host.config.limits
        self.session = Session(
            transport="memory",
            max_inflight=limits.max_inflight,
            max_queue=limits.send_queue_messages,
            max_queue_bytes=limits.send_queue_bytes,
        )
        """The host side of this connection: what it negotiated, what it has in flight."""
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[anyio.Event, list[dict[str, Any]]]] = {}
        self._notes_in: MemoryObjectSendStream[dict[str, Any]] | None = None
        self._notes_out: MemoryObjectReceiveStream[dict[str, Any]] | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._dispatcher: Dispatcher | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        """Connect: the host counts the session among its clients from now on."""
        if self._tg is not None or self.session.closed:
            raise RuntimeError("a Client connects once: make a new one for another connection")
        dispatcher = self.host.dispatcher  # fails here, not at the first call, if not a host
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._dispatcher = dispatcher
        self._notes_in, self._notes_out = anyio.create_memory_object_stream[dict[str, Any]](
            math.inf
        )
        self.host.sessions.add(self.session)
        tg.start_soon(self._read)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Disconnect: requests still being served are cancelled; runs they started go on."""
        tg, _ = self._connection()
        self._tg = self._dispatcher = None
        tg.cancel_scope.cancel()
        try:
            return await tg.__aexit__(exc_type, exc, tb)
        finally:
            self.session.close()
            self.host.sessions.discard(self.session)
            if self._notes_in is not None and self._notes_out is not None:
                self._notes_in.close()
                self._notes_out.close()

    def _connection(self) -> tuple[anyio.abc.TaskGroup, Dispatcher]:
        if self._tg is None or self._dispatcher is None:
            raise RuntimeError("the Client is not connected: use `async with Client(host):`")
        return self._tg, self._dispatcher

    # -- sending -----------------------------------------------------------------------------

    async def call(
        self, method: str, params: Mapping[str, Any] | None = None, /, **named: Any
    ) -> Any:
        """Send a request and return its result.

        Params come as a mapping, as keywords, or both (``call("runs/wait", runId=rid,
        timeout=5)``); they are sent as a JSON object, so they must be JSON values.

        Raises:
            RpcError: the host answered with an error: the subclass of its code
                (``MethodNotFound`` for -32601, ``InvalidParams`` for -32602, ...), with the
                ``message`` and ``data`` the host sent.
            TimeoutError: no answer within :attr:`timeout` seconds.
        """
        tg, dispatcher = self._connection()
        request_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        message["params"] = {**(params or {}), **named}
        text = json.dumps(message)
        done = anyio.Event()
        box: list[dict[str, Any]] = []
        self._pending[request_id] = (done, box)
        try:
            tg.start_soon(dispatcher.serve, text, self.session)
            with anyio.fail_after(self.timeout):
                await done.wait()
        finally:
            self._pending.pop(request_id, None)
        response = box[0]
        if "error" in response:
            raise RpcError.from_error_data(response["error"])
        return response.get("result")

    async def notify(
        self, method: str, params: Mapping[str, Any] | None = None, /, **named: Any
    ) -> None:
        """Send a notification (no answer comes): ``notifications/initialized``, say."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params or named:
            message["params"] = {**(params or {}), **named}
        _, dispatcher = self._connection()
        await dispatcher.serve(json.dumps(message), self.session)

    async def initialize(
        self,
        capabilities: Mapping[str, Any] | None = None,
        *,
        protocol_version: str = MCP_PROTOCOL_VERSION,
    ) -> dict[str, Any]:
        """The MCP handshake (``initialize`` then ``notifications/initialized``).

        MCP methods (``tools/list``, ``tools/call``) are refused before it. Declare
        ``{"sampling": {}}`` in ``capabilities`` for the host to send this client
        ``sampling/createMessage`` (answered by ``on_request``).

        Returns:
            The host's ``initialize`` result (protocol version, capabilities, server info).
        """
        result: dict[str, Any] = await self.call(
            "initialize",
            protocolVersion=protocol_version,
            capabilities=dict(capabilities or {}),
            clientInfo={"name": "plait.testing", "version": "1"},
        )
        await self.notify("notifications/initialized")
        return result

    # -- receiving ---------------------------------------------------------------------------

    async def notification(self) -> dict[str, Any]:
        """The next notification the host sent (``runs/event``, ``notifications/progress``),
        waiting for it up to :attr:`timeout` seconds.

        Raises:
            TimeoutError: none came in time.
        """
        self._connection()
        assert self._notes_out is not None
        with anyio.fail_after(self.timeout):
            return await self._notes_out.receive()

    async def _read(self) -> None:
        """The transport's writer: take what the host queued, in order."""
        async with self.session.outbox as outbox:
            async for text in outbox:
                self.session.sent(text)
                frame = json.loads(text)
                for message in frame if isinstance(frame, list) else [frame]:
                    self._route(message)

    def _route(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        if "method" in message:
            if "id" in message:
                tg, _ = self._connection()
                tg.start_soon(self._answer, message)
            elif self._notes_in is not None:
                self._notes_in.send_nowait(message)
            return
        request_id = message.get("id")
        pending = self._pending.get(request_id) if isinstance(request_id, int) else None
        if pending is not None:
            done, box = pending
            box.append(message)
            done.set()

    async def _answer(self, request: dict[str, Any]) -> None:
        """Answer a request from the host with ``on_request``, as a real client would."""
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": request["id"]}
        try:
            if self.on_request is None:
                raise MethodNotFound(f"this client offers no {request['method']}")
            result = self.on_request(request["method"], dict(request.get("params") or {}))
            if inspect.isawaitable(result):
                result = await result
            reply["result"] = result
        except RpcError as exc:
            reply["error"] = exc.to_error_data()
        except Exception as exc:  # noqa: BLE001 - the host must get an answer, not silence
            reply["error"] = InternalError(f"{type(exc).__name__}: {exc}").to_error_data()
        _, dispatcher = self._connection()
        await dispatcher.serve(json.dumps(reply), self.session)
