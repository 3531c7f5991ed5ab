"""A minimal JSON-RPC client over WebSocket, for the command line (``plait call``, ``plait runs``).

It also finds the host: an explicit URL wins; otherwise the running host's ``host.json`` in the
data dir, else the configured port on 127.0.0.1. The token comes from ``--token``,
``$PLAIT_TOKEN`` or the data dir's token file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
from websockets.asyncio.client import connect

from plait.config import HostConfig
from plait.errors import ConfigError
from plait.rpc.errors import RpcError
from plait.store.datadir import TOKEN_FILE, read_host_info

__all__ = ["call", "host_target", "host_url", "read_token"]


def host_url(data_dir: str, port: int, url: str | None = None) -> str:
    """The URL to reach: ``url``, else the one the running host wrote, else the default."""
    if url:
        return url
    info = read_host_info(Path(data_dir)) or {}
    found = info.get("url")
    return found if isinstance(found, str) else f"ws://127.0.0.1:{port}/rpc"


def read_token(data_dir: str, token: str | None = None) -> str:
    """The token: given, else ``$PLAIT_TOKEN``, else ``<data_dir>/token``."""
    token = token or os.environ.get("PLAIT_TOKEN")
    if token:
        return token
    path = Path(data_dir) / TOKEN_FILE
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        raise ConfigError(
            f"no token: pass --token, set PLAIT_TOKEN, or start the host with "
            f"data dir {data_dir} ({path} is missing)"
        ) from None


def host_target(config: HostConfig, url: str | None, token: str | None) -> tuple[str, str]:
    """Where a command-line client goes and what it shows: (URL, token)."""
    return host_url(config.host.data_dir, config.host.port, url), read_token(
        config.host.data_dir, token
    )


async def call(
    url: str,
    token: str,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    timeout: float = 60.0,
) -> Any:
    """Send one request and return its result.

    Raises:
        RpcError: the host answered with an error.
        OSError: the host cannot be reached.
    """
    async with connect(
        url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10, max_size=None
    ) as ws:
        await ws.send(
            json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}})
        )
        with anyio.fail_after(timeout):
            while True:
                reply = json.loads(await ws.recv())
                if isinstance(reply, dict) and reply.get("id") == 1:
                    break
    if "error" in reply:
        raise RpcError.from_error_data(reply["error"])
    return reply.get("result")
