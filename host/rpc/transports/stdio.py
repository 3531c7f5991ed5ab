"""The stdio transport: newline-delimited JSON-RPC on stdin/stdout, for IDEs' MCP clients.

Every MCP rule applies in full here (``initialize`` first, no null ids, no batches on modern
revisions). Only protocol messages go to stdout; logs go to stderr.
"""

from __future__ import annotations

import sys
from typing import IO

import anyio
import anyio.to_thread

from plait.rpc.codec import encode
from plait.rpc.dispatcher import Dispatcher
from plait.rpc.errors import InvalidRequest
from plait.rpc.session import Session

__all__ = ["serve_stdio"]


async def serve_stdio(
    dispatcher: Dispatcher,
    sessions: set[Session],
    *,
    max_message_bytes: int,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
    max_inflight: int = 64,
) -> None:
    """Serve one MCP client on stdin/stdout until stdin closes."""
    source = stdin or sys.stdin.buffer
    writer = anyio.wrap_file(stdout or sys.stdout.buffer)

    async def readline(limit: int) -> bytes:
        # A worker thread per read keeps the event loop free; the size bound keeps one
        # endless line from growing memory.
        return await anyio.to_thread.run_sync(source.readline, limit, abandon_on_cancel=True)

    session = Session(transport="stdio", strict_mcp=True, max_inflight=max_inflight)
    sessions.add(session)
    slots = anyio.Semaphore(max_inflight + 8)

    async def write_out() -> None:
        async with session.outbox as outbox:
            async for text in outbox:
                await writer.write(text.encode() + b"\n")
                await writer.flush()
                session.sent(text)

    async def serve_one(line: bytes) -> None:
        try:
            await dispatcher.serve(line, session)
        finally:
            slots.release()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(write_out)
            while True:
                line = await readline(max_message_bytes + 1)
                if not line:
                    break
                if len(line) > max_message_bytes and not line.endswith(b"\n"):
                    session.deliver(
                        encode(
                            {
                                "jsonrpc": "2.0",
                                "id": None,
                                "error": InvalidRequest(
                                    f"message larger than {max_message_bytes} bytes"
                                ).to_error_data(),
                            }
                        )
                    )
                    while line and not line.endswith(b"\n"):  # skip the rest of it
                        line = await readline(max_message_bytes + 1)
                    continue
                if not line.strip():
                    continue
                await slots.acquire()
                tg.start_soon(serve_one, line)
            # stdin closed: let in-flight requests answer, then stop.
            while slots.value < max_inflight + 8:
                await anyio.sleep(0.01)
            session.close()
    finally:
        session.close()
        sessions.discard(session)
