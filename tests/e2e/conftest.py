"""A real plait host on a free loopback port, and small real WebSocket / raw-HTTP clients.

Nothing is mocked: every test talks to ``plait.Host.serve_websocket`` over TCP with the
``websockets`` client (or a raw socket when the handshake itself is under test).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect

import plait
from plait.config import HostConfig

WAIT = 5.0
"""Default bound, in seconds, on any single wait in these tests."""

SLOW = {
    "name": "slow",
    "description": "one probe.work step",
    "inputs": {"type": "object", "properties": {"seconds": {"type": "number", "default": 1.0}}},
    "steps": [
        {
            "id": "work",
            "tool": "probe.work",
            "with": {"seconds": "${inputs.seconds}", "label": "done"},
        }
    ],
    "outputs": {"label": "${steps.work.output}"},
}

GATE = {
    "name": "gate",
    "description": "waits for the signal go",
    "steps": [{"id": "hold", "wait": "go"}, {"id": "after", "transform": "${steps.hold.output}"}],
    "outputs": {"got": "${steps.after.output}"},
}

QUICK = {
    "name": "quick",
    "description": "doubles x",
    "inputs": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
    "steps": [{"id": "double", "transform": "${inputs.x * 2}"}],
    "outputs": {"y": "${steps.double.output}"},
}


def ticker(n: int, seconds: float) -> dict[str, Any]:
    """A loop of ``n`` iterations, each ``seconds`` of probe.work then a transform."""
    return {
        "name": f"ticker{n}",
        "steps": [
            {
                "id": "each",
                "loop": f"${{range({n}) | list}}",
                "steps": [
                    {"id": "w", "tool": "probe.work", "with": {"seconds": seconds}},
                    {"id": "t", "transform": "${item}", "needs": ["w"]},
                ],
                "output": "${steps.t.output}",
            }
        ],
        "outputs": {"n": "${steps.each.output | length}"},
    }


class RpcFailure(AssertionError):
    """An unexpected JSON-RPC error answer."""


@dataclass
class Client:
    """A WebSocket JSON-RPC client that keeps notifications aside while waiting for answers."""

    ws: ClientConnection
    notifications: list[dict[str, Any]] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    async def send(self, message: Any) -> None:
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    async def recv(self, timeout: float = WAIT) -> Any:
        """The next frame, parsed (raises TimeoutError when none comes in time)."""
        with anyio.fail_after(timeout):
            return json.loads(await self.ws.recv())

    async def recv_text(self, timeout: float = WAIT) -> str:
        with anyio.fail_after(timeout):
            text = await self.ws.recv()
        assert isinstance(text, str)
        return text

    async def silent(self, seconds: float = 0.3) -> None:
        """Assert that no frame arrives for ``seconds``."""
        with anyio.move_on_after(seconds):
            frame = await self.ws.recv()
            raise AssertionError(f"expected no frame, got {frame!r}")

    async def request(
        self, method: str, params: Any = None, *, id: Any = None, timeout: float = WAIT
    ) -> dict[str, Any]:
        """Send a request and return the whole response object (result or error)."""
        rid = next(self._ids) if id is None else id
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": rid}
        if params is not None:
            message["params"] = params
        await self.send(message)
        with anyio.fail_after(timeout):
            while True:
                frame = json.loads(await self.ws.recv())
                if isinstance(frame, dict) and "method" in frame and "id" not in frame:
                    self.notifications.append(frame)
                    continue
                assert isinstance(frame, dict) and frame.get("id") == rid, frame
                return frame

    async def call(self, method: str, params: Any = None, *, timeout: float = WAIT) -> Any:
        """Send a request and return its result; an error answer fails the test."""
        response = await self.request(method, params, timeout=timeout)
        if "error" in response:
            raise RpcFailure(f"{method} answered {response['error']}")
        return response["result"]

    async def error(
        self, method: str, params: Any = None, *, timeout: float = WAIT
    ) -> dict[str, Any]:
        """Send a request that must fail and return its ``error`` member."""
        response = await self.request(method, params, timeout=timeout)
        assert "error" in response, f"{method} should have failed: {response}"
        assert "result" not in response
        return response["error"]

    async def ping_time(self) -> float:
        """Seconds for an MCP ``ping`` round trip."""
        start = time.perf_counter()
        assert await self.call("ping") == {}
        return time.perf_counter() - start

    async def notification(self, timeout: float = WAIT) -> dict[str, Any]:
        """The next notification (kept ones first)."""
        if self.notifications:
            return self.notifications.pop(0)
        frame = await self.recv(timeout)
        assert "method" in frame and "id" not in frame, frame
        return frame


@dataclass
class Served:
    """A running host and how to reach it."""

    host: plait.Host
    url: str
    token: str
    port: int

    @asynccontextmanager
    async def client(self, **kwargs: Any) -> AsyncIterator[Client]:
        headers = kwargs.pop("additional_headers", {"Authorization": f"Bearer {self.token}"})
        url = kwargs.pop("url", self.url)
        kwargs.setdefault("proxy", None)
        with anyio.fail_after(WAIT):
            ws = await connect(url, additional_headers=headers, **kwargs)
        try:
            yield Client(ws)
        finally:
            with anyio.move_on_after(WAIT, shield=True):
                await ws.close()


def make_config(tmp_path: Any, **limits: Any) -> HostConfig:
    host = {"data_dir": str(tmp_path / "data"), "port": 0}
    for key in ("bind", "allowed_origins", "allow_remote"):
        if key in limits:
            host[key] = limits.pop(key)
    return HostConfig.model_validate(
        {"host": host, "limits": limits, "plugins": {"entry_points": False}}
    )


@asynccontextmanager
async def websocket_of(host: plait.Host, token: str | None = None) -> AsyncIterator[Served]:
    """The WebSocket server of an entered host, in the caller's event loop."""
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(WAIT):
            url, given = await tg.start(partial(host.serve_websocket, token=token))
        port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
        try:
            yield Served(host, url, given, port)
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def serving(
    tmp_path: Any,
    pm: Any,
    *,
    token: str | None = None,
    workflows: tuple[dict[str, Any], ...] = (SLOW, GATE, QUICK),
    **limits: Any,
) -> AsyncIterator[Served]:
    """Start a host and its WebSocket server inside the caller's event loop."""
    host = plait.Host(make_config(tmp_path, **limits), pm=pm)
    async with host:
        for definition in workflows:
            host.register(definition)
        async with websocket_of(host, token) as served:
            yield served


@pytest.fixture
async def served(tmp_path, pm) -> AsyncIterator[Served]:
    """A host with default limits and the SLOW, GATE and QUICK workflows."""
    async with serving(tmp_path, pm) as s:
        yield s


@pytest.fixture
async def client(served) -> AsyncIterator[Client]:
    async with served.client() as c:
        yield c


# -- raw HTTP / WebSocket over a plain socket ------------------------------------------------


def upgrade_request(
    port: int, path: str = "/rpc", *, host: str | None = None, headers: dict[str, str] | None = None
) -> bytes:
    """A WebSocket upgrade request, byte for byte, with chosen Host and extra headers."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host if host is not None else f'127.0.0.1:{port}'}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def http_status(port: int, request: bytes, *, timeout: float = WAIT) -> tuple[int, bytes]:
    """Send ``request`` on a fresh connection; returns the status and the response head."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        data = b""
        with anyio.fail_after(timeout):
            while b"\r\n\r\n" not in data:
                try:
                    data += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 §5.2)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close_code(data: bytes) -> int | None:
    """The status code of the first server close frame found in ``data`` (unmasked)."""
    i = 0
    while i + 2 <= len(data):
        opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if length == 126:
            length, i = int.from_bytes(data[i : i + 2], "big"), i + 2
        elif length == 127:
            length, i = int.from_bytes(data[i : i + 8], "big"), i + 8
        payload, i = data[i : i + length], i + length
        if opcode == 0x8:
            return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
    return None


async def read_until_eof(stream: anyio.abc.SocketStream, timeout: float) -> bytes:
    data = b""
    with anyio.fail_after(timeout):
        while True:
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                return data


async def raw_websocket(
    port: int, token: str, *, rcvbuf: int | None = None
) -> tuple[anyio.abc.SocketStream, bytes]:
    """A WebSocket opened by hand (101 checked); returns the stream and bytes past the head."""
    if rcvbuf is None:
        stream = await anyio.connect_tcp("127.0.0.1", port)
    else:  # a small receive window, set before connecting so that it is the one advertised
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect(("127.0.0.1", port))
        stream = await anyio.abc.SocketStream.from_socket(sock)
    await stream.send(upgrade_request(port, headers={"Authorization": f"Bearer {token}"}))
    data = b""
    with anyio.fail_after(WAIT):
        while b"\r\n\r\n" not in data:
            data += await stream.receive()
    head, _, rest = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        await stream.aclose()
        raise AssertionError(head)
    return stream, rest
