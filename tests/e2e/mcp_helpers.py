"""Helpers for the MCP end-to-end tests: workflows on disk, real host subprocesses, raw clients.

Nothing is mocked. Every host is a real ``python -m plait.cli`` subprocess: ``serve --stdio``
(the embedded host an IDE launches), ``serve --port 0`` (the shared WebSocket host) and
``mcp --url`` (the stdio bridge to it). The SDK side is the official ``mcp`` client.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import Client, StdioServerParameters, stdio_client, types
from pydantic import TypeAdapter

WAIT = 5.0
"""Default bound, in seconds, on any single wait."""

PLAIT = [sys.executable, "-m", "plait.cli"]

SLOW_STEPS = 4
SUPPORTED = {"2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"}
"""MCP revisions the host must speak (written out: the contract, not the host's own list)."""
SLOW_INPUTS = {
    "type": "object",
    "properties": {"seconds": {"type": "number"}},
    "required": ["seconds"],
}
GREET_INPUTS = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}

SLOW_YAML = """\
name: slow
description: Sleep in four sequential steps.
inputs:
  type: object
  properties:
    seconds: {type: number}
  required: [seconds]
steps:
  - {id: a, tool: time.sleep, with: {seconds: "${inputs.seconds}"}}
  - {id: b, tool: time.sleep, with: {seconds: "${inputs.seconds}"}, needs: [a]}
  - {id: c, tool: time.sleep, with: {seconds: "${inputs.seconds}"}, needs: [b]}
  - {id: d, tool: time.sleep, with: {seconds: "${inputs.seconds}"}, needs: [c]}
outputs:
  slept: "${steps.a.output + steps.b.output + steps.c.output + steps.d.output}"
"""

GREET_YAML = """\
name: greet
description: Greet someone.
inputs:
  type: object
  properties:
    name: {type: string}
  required: [name]
steps:
  - {id: say, transform: "hello, ${inputs.name}"}
outputs:
  greeting: "${steps.say.output}"
"""

BROKEN_YAML = """\
name: broken
steps:
  - {id: a, tool: time.sleep, with: {seconds: "${steps.nope.output}"}}
"""

FAILS_YAML = """\
name: fails
description: A step that always fails.
steps:
  - {id: boom, tool: chaos.fail, with: {key: "fails-${run.id}", times: 100}}
outputs:
  never: "${steps.boom.output}"
"""


def write_workflows(folder: Path, *, broken: bool = False) -> Path:
    """The test workflows: ``slow`` (4 sequential sleeps), ``greet``, ``fails``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "slow.yaml").write_text(SLOW_YAML, encoding="utf-8")
    (folder / "greet.yaml").write_text(GREET_YAML, encoding="utf-8")
    (folder / "fails.yaml").write_text(FAILS_YAML, encoding="utf-8")
    if broken:
        (folder / "broken.yaml").write_text(BROKEN_YAML, encoding="utf-8")
    return folder


def host_env(**extra: str) -> dict[str, str]:
    """The test's own environment (so the subprocess imports the same plait), plus ``extra``."""
    env = dict(os.environ)
    env.update(extra)
    return env


def stdio_command(tmp: Path) -> list[str]:
    """``plait serve --stdio`` on ``tmp/data`` with the workflows of ``tmp/wf``."""
    return [
        *PLAIT,
        "serve",
        "--stdio",
        "--data-dir",
        str(tmp / "data"),
        "--workflows",
        str(tmp / "wf"),
    ]


# -- the official SDK client --------------------------------------------------------------------


@asynccontextmanager
async def sdk_client(
    command: list[str],
    tmp: Path,
    *,
    mode: str = "legacy",
    env: dict[str, str] | None = None,
    name: str = "sdk",
    **client: Any,
) -> AsyncIterator[Client]:
    """An entered ``mcp.Client`` that launches ``command`` and speaks stdio to it.

    ``mode="legacy"`` goes straight to ``initialize``; ``"auto"`` (the SDK default) probes
    ``server/discover`` first. The subprocess's stderr goes to ``tmp/<name>.stderr``; ``client``
    goes to ``mcp.Client`` (an ``elicitation_callback``, say).
    """
    params = StdioServerParameters(
        command=command[0], args=command[1:], cwd=str(tmp), env=env or host_env()
    )
    with (tmp / f"{name}.stderr").open("w", encoding="utf-8") as errlog:
        async with Client(
            stdio_client(params, errlog=errlog), mode=mode, read_timeout_seconds=30, **client
        ) as entered:
            yield entered


RUNS_LIST = TypeAdapter(dict[str, Any])


async def sdk_runs(client: Client, workflow: str) -> list[dict[str, Any]]:
    """``runs/list`` (a plait method) sent through the SDK session's public ``send_request``."""
    request = types.Request[dict[str, Any], str](method="runs/list", params={"workflow": workflow})
    result = await client.session.send_request(request, RUNS_LIST)
    return result["runs"]


# -- a raw newline-delimited JSON-RPC client ----------------------------------------------------


class HostExited(AssertionError):
    """The host closed stdout (it exited) while the test was waiting for a message."""


@dataclass
class RawStdio:
    """Writes JSON lines to a host's stdin and records every line of its stdout.

    A background task reads stdout; ``messages`` holds every parsed line and ``garbage``
    every line that is not JSON (stdout must carry protocol lines only).
    """

    process: anyio.abc.Process
    stderr_path: Path
    messages: list[Any] = field(default_factory=list)
    garbage: list[bytes] = field(default_factory=list)
    eof: bool = False
    _changed: anyio.Event = field(default_factory=anyio.Event)
    _next_id: int = 0

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        except OSError:
            return ""

    async def _read(self) -> None:
        assert self.process.stdout is not None
        stream = BufferedByteReceiveStream(self.process.stdout)
        try:
            while True:
                line = await stream.receive_until(b"\n", 64 << 20)
                try:
                    self.messages.append(json.loads(line))
                except ValueError:
                    self.garbage.append(line)
                self._wake()
        except (
            anyio.EndOfStream,
            anyio.IncompleteRead,
            anyio.ClosedResourceError,
            anyio.BrokenResourceError,
        ):
            pass
        finally:
            self.eof = True
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def send(self, message: Any) -> None:
        """Write one line: a message object, or a raw string sent as is."""
        assert self.process.stdin is not None
        text = message if isinstance(message, str) else json.dumps(message)
        await self.process.stdin.send(text.encode() + b"\n")

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        request_id: Any = None,
        timeout: float = WAIT,
    ) -> dict[str, Any]:
        """Send a request and return its response (result or error)."""
        rid = self.new_id() if request_id is None else request_id
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            message["params"] = params
        start = len(self.messages)
        await self.send(message)
        return await self.wait_for(lambda m: is_response(m, rid), timeout=timeout, start=start)

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)

    async def wait_for(
        self, predicate: Callable[[Any], bool], *, timeout: float = WAIT, start: int = 0
    ) -> Any:
        """The first message from index ``start`` on that matches; fails after ``timeout``."""
        seen = start
        with anyio.fail_after(timeout):
            while True:
                while seen < len(self.messages):
                    seen += 1
                    if predicate(self.messages[seen - 1]):
                        return self.messages[seen - 1]
                if self.eof:
                    raise HostExited(
                        f"the host closed stdout (exit code "
                        f"{self.process.returncode}); stderr:\n{self.stderr()}"
                    )
                await self._changed.wait()

    async def silent_for(
        self, predicate: Callable[[Any], bool], seconds: float, *, start: int = 0
    ) -> list[Any]:
        """Wait ``seconds`` and return every message from ``start`` that matches."""
        await anyio.sleep(seconds)
        if self.eof:
            raise HostExited(f"the host exited; stderr:\n{self.stderr()}")
        return [m for m in self.messages[start:] if predicate(m)]

    async def initialize(self, version: str = "2025-06-18") -> dict[str, Any]:
        reply = await self.request(
            "initialize",
            {
                "protocolVersion": version,
                "capabilities": {},
                "clientInfo": {"name": "plait-e2e", "version": "1"},
            },
        )
        assert "result" in reply, reply
        await self.notify("notifications/initialized")
        return reply["result"]

    async def ping_time(self) -> float:
        """Seconds a ping takes to be answered."""
        start = time.monotonic()
        reply = await self.request("ping")
        assert reply.get("result") == {}, reply
        return time.monotonic() - start

    def assert_clean_stdout(self) -> None:
        assert self.garbage == [], f"non-protocol lines on stdout: {self.garbage[:5]}"


def is_response(message: Any, request_id: Any) -> bool:
    """A response (result or error) with this id, type included (1 is not "1")."""
    return (
        isinstance(message, dict)
        and "method" not in message
        and ("result" in message or "error" in message)
        and type(message.get("id")) is type(request_id)
        and message.get("id") == request_id
    )


def is_progress(token: Any) -> Callable[[Any], bool]:
    def match(message: Any) -> bool:
        return (
            isinstance(message, dict)
            and message.get("method") == "notifications/progress"
            and (message.get("params") or {}).get("progressToken") == token
        )

    return match


@asynccontextmanager
async def raw_stdio_host(
    tmp: Path, *, env: dict[str, str] | None = None, command: list[str] | None = None
) -> AsyncIterator[RawStdio]:
    """``plait serve --stdio`` as a subprocess, with a raw line client on its pipes."""
    stderr_path = tmp / "host.stderr"
    with stderr_path.open("wb") as errfile:
        process = await anyio.open_process(
            command or stdio_command(tmp), cwd=str(tmp), env=env or host_env(), stderr=errfile
        )
        raw = RawStdio(process, stderr_path)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(raw._read)
                try:
                    yield raw
                finally:
                    with anyio.CancelScope(shield=True):
                        await stop_stdio_process(process)
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await process.aclose()


async def stop_stdio_process(process: anyio.abc.Process) -> None:
    """Close stdin (the host's cue to exit), then terminate, then kill; every wait bounded."""
    if process.stdin is not None:
        try:
            await process.stdin.aclose()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
    for action in (None, process.terminate, process.kill):
        if action is not None and process.returncode is None:
            try:
                action()
            except ProcessLookupError:
                pass
        with anyio.move_on_after(3):
            await process.wait()
            return


# -- the shared WebSocket host ------------------------------------------------------------------


LISTENING = re.compile(r"listening on (ws://\S+)")
TOKEN = re.compile(r"^token: (\S+)$", re.MULTILINE)


@dataclass
class WsHost:
    """A ``plait serve --port 0`` subprocess and where to reach it."""

    process: subprocess.Popen[bytes]
    url: str
    token: str
    data_dir: Path
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    def call(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 20
    ) -> Any:
        """``plait call METHOD --url URL --data-dir DATA``: one WebSocket request, its result."""
        argv = [
            *PLAIT,
            "call",
            method,
            "--url",
            self.url,
            "--data-dir",
            str(self.data_dir),
            "--timeout",
            "10",
        ]
        if params is not None:
            argv.insert(4, json.dumps(params))
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=host_env(),
            cwd=str(self.data_dir.parent),
            check=False,
        )
        assert done.returncode == 0, f"plait call {method} failed: {done.stderr}"
        return json.loads(done.stdout)


def start_ws_host(tmp: Path, *, timeout: float = 20) -> WsHost:
    """Start ``plait serve --port 0`` and read the URL and token it prints on stderr."""
    data_dir = tmp / "data"
    stderr_path = tmp / "ws-host.stderr"
    with stderr_path.open("wb") as errfile:
        process = subprocess.Popen(
            [
                *PLAIT,
                "serve",
                "--port",
                "0",
                "--data-dir",
                str(data_dir),
                "--workflows",
                str(tmp / "wf"),
            ],
            cwd=str(tmp),
            env=host_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errfile,
        )
    deadline = time.monotonic() + timeout
    while True:
        text = stderr_path.read_text(encoding="utf-8", errors="replace")
        url, token = LISTENING.search(text), TOKEN.search(text)
        if url and token:
            return WsHost(process, url.group(1), token.group(1), data_dir, stderr_path)
        if process.poll() is not None or time.monotonic() > deadline:
            stop_ws_host(process)
            raise AssertionError(
                f"plait serve did not start (exit {process.returncode}):\n{text[-4000:]}"
            )
        time.sleep(0.05)


def stop_ws_host(process: subprocess.Popen[bytes]) -> int | None:
    """SIGINT (a clean stop), then SIGKILL after a timeout; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
    try:
        return process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None


def bridge_command(host: WsHost) -> list[str]:
    """``plait mcp --url URL --data-dir DATA``: an IDE's stdio, bridged to the shared host."""
    return [*PLAIT, "mcp", "--url", host.url, "--data-dir", str(host.data_dir)]


@asynccontextmanager
async def ws_rpc(host: WsHost) -> AsyncIterator[Callable[..., Any]]:
    """A WebSocket connection to the shared host with its token; yields ``request(method, params)``.

    plait's own methods (``runs/list``, ``runs/get``) need no ``initialize`` on the WebSocket.
    """
    from websockets.asyncio.client import connect

    ids = iter(range(1, 1 << 30))
    async with connect(
        host.url, additional_headers={"Authorization": f"Bearer {host.token}"}, open_timeout=WAIT
    ) as ws:

        async def request(method: str, params: dict[str, Any] | None = None) -> Any:
            rid = next(ids)
            await ws.send(
                json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}})
            )
            with anyio.fail_after(WAIT):
                while True:
                    reply = json.loads(await ws.recv())
                    if isinstance(reply, dict) and reply.get("id") == rid:
                        assert "result" in reply, reply
                        return reply["result"]

        yield request
