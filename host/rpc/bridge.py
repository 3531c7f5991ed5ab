"""``plait mcp --url``: an IDE's stdio MCP client, bridged to a running host's WebSocket.

Lines from stdin go to the host as text frames; frames from the host go to stdout as lines.
The IDE's tool calls therefore run on the shared host, where people can watch them.
"""

from __future__ import annotations

import sys
from typing import IO

import anyio
from websockets.exceptions import ConnectionClosed

from plait.rpc.client import open_connection

__all__ = ["bridge"]


async def bridge(
    url: str,
    token: str,
    *,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
    max_message_bytes: int = 1 << 20,
) -> None:
    """Pump messages both ways until either side closes.

    Raises:
        plait.rpc.client.HostUnreachable: the host cannot be reached or refused the token.
    """
    reader = anyio.wrap_file(stdin or sys.stdin.buffer)
    writer = anyio.wrap_file(stdout or sys.stdout.buffer)
    async with open_connection(url, token, max_size=max_message_bytes) as ws:

        async def upstream() -> None:
            while True:
                line = await reader.readline()
                if not line:
                    break
                if line.strip():
                    try:
                        await ws.send(line.decode("utf-8", errors="replace").rstrip("\r\n"))
                    except ConnectionClosed:
                        return  # the host went away: downstream ends too
            await ws.close()

        async def downstream() -> None:
            try:
                async for message in ws:
                    data = message if isinstance(message, bytes) else message.encode()
                    await writer.write(data.replace(b"\n", b" ") + b"\n")
                    await writer.flush()
            except ConnectionClosed:
                pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(upstream)
            await downstream()
            tg.cancel_scope.cancel()
