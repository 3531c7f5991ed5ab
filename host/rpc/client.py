"""A minimal JSON-RPC client over WebSocket, for the command line (``plait call``, ``plait runs``).

It also finds the host: an explicit URL wins; otherwise the running host's ``host.json`` in the
data dir, else the configured port on 127.0.0.1. The token comes from ``--token``,
``$PLAIT_TOKEN`` or the data dir's token file.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

from plait.config import HostConfig
from plait.errors import ConfigError
from plait.rpc.errors import RpcError
from plait.store.datadir import TOKEN_FILE, read_host_info

__all__ = [
    "HostClosed",
    "HostUnreachable",
    "NoAnswer",
    "NoHost",
    "TokenRefused",
    "call",
    "host_target",
    "host_url",
    "open_connection",
    "read_token",
]

OPEN_SECONDS = 10.0
"""How long the WebSocket handshake may take."""


class HostUnreachable(OSError):
    """The host could not be asked, or did not answer: ``str()`` is one line saying why.

    An :class:`OSError`, as every failure to reach the host was before these classes."""

    def __init__(self, url: str, message: str) -> None:
        super().__init__(message)
        self.url = url

    def __str__(self) -> str:
        return str(self.args[0])


class NoHost(HostUnreachable):
    """Nothing answers at the URL: connection refused, unknown name, not a WebSocket host."""


class TokenRefused(HostUnreachable):
    """The host refused the handshake: HTTP 401 or 403, a wrong or stale token."""

    def __init__(self, url: str, status: int) -> None:
        super().__init__(url, f"the host at {url} refused the token (HTTP {status})")
        self.status = status


class NoAnswer(HostUnreachable, TimeoutError):
    """The host was reached but did not answer in time."""

    def __init__(self, url: str, seconds: float, what: str = "no answer") -> None:
        super().__init__(url, f"{what} from {url} within {seconds:g} s")
        self.seconds = seconds


class HostClosed(HostUnreachable):
    """The host closed the connection before it answered."""


@asynccontextmanager
async def open_connection(
    url: str, token: str, *, max_size: int | None = None, open_timeout: float = OPEN_SECONDS
) -> AsyncIterator[ClientConnection]:
    """A WebSocket to the host, with every way the handshake can fail raised as a
    :class:`HostUnreachable` whose message names the cause."""
    try:
        ws = await connect(
            url,
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=open_timeout,
            max_size=max_size,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise TokenRefused(url, status) from exc
        raise NoHost(
            url, f"{url} answered the WebSocket handshake with HTTP {status}: is it a plait host?"
        ) from exc
    except InvalidURI as exc:
        raise NoHost(url, f"{url} is not a WebSocket URL (ws://host:port/rpc)") from exc
    except TimeoutError as exc:
        raise NoAnswer(url, open_timeout, "no WebSocket handshake") from exc
    except socket.gaierror as exc:
        raise NoHost(url, f"cannot resolve the host name of {url}: {exc.strerror}") from exc
    except ConnectionRefusedError as exc:
        raise NoHost(url, f"no host is listening at {url} (connection refused)") from exc
    except OSError as exc:
        raise NoHost(url, f"cannot reach {url}: {exc.strerror or exc}") from exc
    except WebSocketException as exc:
        raise NoHost(url, f"{url} is not a plait host: {exc}") from exc
    try:
        yield ws
    except ConnectionClosed as exc:
        raise HostClosed(url, f"the host at {url} closed the connection: {exc}") from exc
    finally:
        await ws.close()


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
        HostUnreachable: the host cannot be reached (:class:`NoHost`, :class:`TokenRefused`),
            closed the connection (:class:`HostClosed`) or did not answer within ``timeout``
            seconds (:class:`NoAnswer`); an :class:`OSError`.
    """
    async with open_connection(url, token) as ws:
        await ws.send(
            json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}})
        )
        with anyio.move_on_after(timeout) as waiting:
            while True:
                reply = json.loads(await ws.recv())
                if isinstance(reply, dict) and reply.get("id") == 1:
                    break
        if waiting.cancelled_caught:
            raise NoAnswer(url, timeout)
    if "error" in reply:
        raise RpcError.from_error_data(reply["error"])
    return reply.get("result")
