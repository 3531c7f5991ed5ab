"""``plait mcp``: an IDE's stdio MCP client, bridged to a running host's WebSocket.

Lines from stdin go to the host as text frames; frames from the host go to stdout as lines.
The IDE's tool calls therefore run on the shared host, where people can watch them.

The IDE starts the bridge once and keeps it for its whole session, while the host may restart
under it (a deploy, a crash). When the connection drops the bridge connects again with backoff,
asking ``target()`` each time (a restarted host has a new token, and maybe a new port, in its
data dir), replays the client's ``initialize`` on the new connection (its answer is not passed
on: the IDE already has one), and answers each request the old connection left unanswered with
an error saying the host restarted, so the IDE never waits for a reply that cannot come.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import IO, Any

import anyio
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from plait.rpc.client import HostUnreachable, open_connection

__all__ = ["bridge"]

log = logging.getLogger("plait.bridge")

RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Waits between attempts to reach the host again; the last one repeats."""
HOST_GONE = -32000
"""The code of the answer to a request the host did not answer before its connection dropped."""
_REPLAYED = "plait-bridge-initialize"
"""The id of a replayed ``initialize``, whose answer is not passed on."""


async def bridge(
    target: Callable[[], tuple[str, str]],
    *,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
    max_message_bytes: int = 1 << 20,
    give_up_after: float = 300.0,
) -> None:
    """Pump messages both ways until stdin closes, reconnecting when the host goes away.

    Args:
        target: where the host is, asked before each connection: (URL, token).
        give_up_after: seconds without reaching the host after which the bridge ends.

    Raises:
        plait.rpc.client.HostUnreachable: the first connection failed (the host is not
            running, or refused the token), or no connection could be made for
            ``give_up_after`` seconds.
    """
    pump = _Pump(anyio.wrap_file(stdout or sys.stdout.buffer))
    reader = anyio.wrap_file(stdin or sys.stdin.buffer)
    send_lines, receive_lines = anyio.create_memory_object_stream[bytes](64)

    async def read_stdin() -> None:
        async with send_lines:
            while line := await reader.readline():
                if line.strip():
                    await send_lines.send(line)

    url, token = target()
    connection = open_connection(url, token, max_size=max_message_bytes)
    ws = await connection.__aenter__()  # the first failure is the caller's to report
    async with anyio.create_task_group() as tg, receive_lines:
        tg.start_soon(read_stdin)
        connected = True
        try:
            while await pump.serve(ws, receive_lines):  # True: the host went away
                connected = False
                await connection.__aexit__(None, None, None)
                await pump.fail_pending()
                connection, ws = await _reconnect(target, max_message_bytes, give_up_after)
                connected = True
                await pump.replay(ws)
        finally:
            if connected:
                await connection.__aexit__(None, None, None)
            tg.cancel_scope.cancel()


class _Pump:
    """The bridge's memory of the MCP session: its ``initialize`` and requests in flight."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.initialize: dict[str, Any] | None = None
        self.pending: dict[str, Any] = {}
        self.held: str | None = None
        """A line read from the client and not yet sent (the connection dropped meanwhile)."""
        self.stdin_done = False

    async def write(self, data: bytes) -> None:
        await self.writer.write(data.replace(b"\n", b" ") + b"\n")
        await self.writer.flush()

    def note_upstream(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            return
        for item in message if isinstance(message, list) else [message]:
            if not isinstance(item, dict) or "method" not in item or "id" not in item:
                continue
            self.pending[json.dumps(item["id"])] = item["id"]
            if item["method"] == "initialize":
                self.initialize = item

    def note_downstream(self, data: bytes) -> bool:
        """Forget answered requests; False for the answer to a replayed ``initialize``."""
        try:
            message = json.loads(data)
        except ValueError:
            return True
        items = message if isinstance(message, list) else [message]
        for item in items:
            if isinstance(item, dict) and "method" not in item and "id" in item:
                if item["id"] == _REPLAYED:
                    return False
                self.pending.pop(json.dumps(item["id"]), None)
        return True

    async def serve(self, ws: ClientConnection, lines: Any) -> bool:
        """Pump until the host goes away (True) or the client's stdin has ended (False)."""
        gone = False

        async def upstream() -> None:
            nonlocal gone
            while True:
                if self.held is None:
                    try:
                        line = await lines.receive()
                    except anyio.EndOfStream:
                        self.stdin_done = True
                        await ws.close()
                        return
                    self.held = line.decode("utf-8", errors="replace").rstrip("\r\n")
                try:
                    await ws.send(self.held)
                except ConnectionClosed:
                    gone = True
                    return
                self.note_upstream(self.held)
                self.held = None

        async def downstream() -> None:
            nonlocal gone
            try:
                async for message in ws:
                    data = message if isinstance(message, bytes) else message.encode()
                    if self.note_downstream(data):
                        await self.write(data)
            except ConnectionClosed:
                pass
            gone = gone or not self.stdin_done

        async with anyio.create_task_group() as tg:
            tg.start_soon(upstream)
            await downstream()
            tg.cancel_scope.cancel()
        return gone and not self.stdin_done

    async def fail_pending(self) -> None:
        """Answer every request the lost connection left unanswered."""
        for request_id in list(self.pending.values()):
            answer = {
                "jsonrpc": "2.0",
                "id": request_id,
                "error": {
                    "code": HOST_GONE,
                    "message": "the plait host went away before answering; the bridge is "
                    "connecting again: retry the request",
                },
            }
            await self.write(json.dumps(answer).encode())
        self.pending.clear()

    async def replay(self, ws: ClientConnection) -> None:
        """Initialize the new connection as the client initialized the old one."""
        if self.initialize is None:
            return
        await ws.send(json.dumps({**self.initialize, "id": _REPLAYED}))
        await ws.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))


async def _reconnect(
    target: Callable[[], tuple[str, str]], max_size: int, give_up_after: float
) -> tuple[Any, ClientConnection]:
    """Connect again with backoff, reading where the host is before each attempt."""
    deadline = anyio.current_time() + give_up_after
    attempt = 0
    while True:
        await anyio.sleep(RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)])
        attempt += 1
        try:
            url, token = target()
            cm = open_connection(url, token, max_size=max_size)
            ws = await cm.__aenter__()
        except (HostUnreachable, OSError) as exc:
            if anyio.current_time() > deadline:
                raise HostUnreachable(
                    "", f"the host did not come back within {give_up_after:g} s: {exc}"
                ) from None
            log.info("bridge: host not reachable yet (%s); retrying", exc)
            continue
        log.info("bridge: connected again to %s", url)
        return cm, ws
