"""MCP servers as tool sources: every tool of a configured server becomes ``<server>.<tool>``.

The host is an MCP client through the official SDK. Each ``[mcp_servers.<name>]`` table names a
server to start (``command``/``args``, spoken to over stdio) or to reach (``url``, Streamable
HTTP). At start the host connects to all of them at once, lists their tools and registers them
with their input schemas; ``tools/list`` then shows them beside the plugins' tools. A server
that dies, or stops answering pings, is reconnected with a growing backoff, and its tools are
registered again; while it is away its tools fail fast with a retryable error naming the
server. A server that cannot be reached at start does not stop the host: it is reported in
``host/info`` and retried in the background.

A tool that reports a failure (``isError``) fails the step with the server's message; the
value of a successful call is its structured content when the server gives one, else its text
(parsed as JSON when it is JSON).

A server with a ``breaker`` table has one circuit breaker, ``mcp:<name>``, for all its tools
(see ``plait.services.breakers``): calls that find it gone or get no answer open it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from plait.config import BreakerSettings
from plait.errors import ConfigError, ToolFailed
from plait.plugins.types import Tool, validation_problems

if TYPE_CHECKING:
    from mcp import Client

    from plait.services.tools import ToolRunner

__all__ = ["McpServer", "McpServerSettings", "McpTools"]

log = logging.getLogger("plait.services.mcp")

MAX_BACKOFF = 30.0
"""The longest wait between two reconnection attempts."""


class McpServerSettings(BaseModel):
    """One ``[mcp_servers.<name>]`` table."""

    model_config = ConfigDict(extra="forbid")

    command: str | None = None
    """The program to start; the host speaks MCP to it over its stdin and stdout. A bare name
    is looked for next to the host's own Python first (its virtualenv's ``bin``: ``python``,
    or a server installed with plait such as ``mcp-server-time``), then on ``PATH``."""
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    """Environment variables for the program. It gets only a minimal environment of its own
    (``HOME``, ``PATH``, ``USER``, ...: the SDK's safe default) plus these, so the host's
    secrets (an API key) never reach a server that was not given them."""
    cwd: str | None = None
    url: str | None = None
    """A Streamable HTTP endpoint, instead of a command."""
    headers: dict[str, str] = Field(default_factory=dict)
    """HTTP headers for ``url`` (an ``Authorization``, say)."""
    timeout: float = Field(60.0, gt=0)
    """Seconds one tool call may take."""
    connect_timeout: float = Field(20.0, gt=0)
    """Seconds the host waits at start for the server before going on without it."""
    ping_interval: float = Field(10.0, gt=0)
    """Seconds between pings that notice a server which stopped answering."""
    cacheable: bool | None = None
    """Whether its tools' results may be memoized by default (``None``: only when a step asks)."""
    max_concurrency: int | None = Field(None, ge=1)
    """Calls to this server's tools at once, per tool."""
    breaker: BreakerSettings | None = None
    """A circuit breaker on the server (``mcp:<name>``), shared by all its tools: it counts
    calls that could not reach the server or got no answer (not a tool's own ``isError``)."""
    enabled: bool = True

    @model_validator(mode="after")
    def _one_target(self) -> McpServerSettings:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of command (a program to start) or url")
        return self


def parse_servers(tables: Mapping[str, Mapping[str, Any]]) -> dict[str, McpServerSettings]:
    """Validate the ``[mcp_servers]`` tables; raise :class:`ConfigError` naming each problem."""
    servers = {}
    problems = []
    for name, table in tables.items():
        if not name.replace("-", "").replace("_", "").isalnum():
            problems.append(
                f"mcp_servers.{name}: a server name is letters, digits, - and _ "
                "(its tools are named <server>.<tool>)"
            )
            continue
        try:
            servers[name] = McpServerSettings.model_validate(dict(table))
        except ValidationError as exc:
            problems += validation_problems(exc, f"mcp_servers.{name}")
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    return servers


def resolve_command(command: str) -> str:
    """A bare program name, found next to the running Python first, then on ``PATH``."""
    if os.sep in command:
        return command
    beside = Path(sys.executable).parent / command
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(command) or command


def tool_value(result: Any) -> Any:
    """What a step gets from a successful ``CallToolResult``."""
    if result.structured_content is not None:
        return result.structured_content
    texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
    others = [
        c.model_dump(mode="json", exclude_none=True)
        for c in result.content
        if getattr(c, "type", None) != "text"
    ]
    if others:
        return [*({"type": "text", "text": t} for t in texts), *others]
    if len(texts) == 1:
        try:
            return json.loads(texts[0])
        except ValueError:
            return texts[0]
    return texts


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


class McpServer:
    """One configured server: its connection, kept up, and the tools it provides."""

    def __init__(self, name: str, settings: McpServerSettings, runner: ToolRunner) -> None:
        self.name = name
        self.settings = settings
        self.runner = runner
        self.status = "connecting"
        """``connecting``, ``connected`` or ``reconnecting``."""
        self.error: str | None = None
        self.tools: list[str] = []
        self.connects = 0
        self._client: Client | None = None
        self._broken = anyio.Event()
        self.breaker = runner.breakers.add(f"mcp:{name}", settings.breaker)

    @property
    def owner(self) -> str:
        """The name its tools are registered under, where plugins put their own."""
        return f"mcp:{self.name}"

    def info(self) -> dict[str, Any]:
        """Status for ``host/info``."""
        return {
            "status": self.status,
            "tools": list(self.tools),
            "error": self.error,
            "connects": self.connects,
        }

    def _connection(self) -> AbstractAsyncContextManager[Client]:
        from mcp import Client, StdioServerParameters

        s = self.settings
        if s.command is not None:
            from mcp.client.stdio import get_default_environment

            target: Any = StdioServerParameters(
                command=resolve_command(s.command),
                args=s.args,
                env={**get_default_environment(), **s.env},
                cwd=s.cwd,
            )
        elif s.headers:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            target = streamable_http_client(
                s.url or "", http_client=httpx2.AsyncClient(headers=s.headers, timeout=s.timeout)
            )
        else:
            target = s.url
        return Client(target, mode="legacy", read_timeout_seconds=s.timeout)

    async def keep_connected(self, first: anyio.Event) -> None:
        """Connect, list and register the tools, watch the connection; again when it drops."""
        delay = 0.5
        while True:
            try:
                async with self._connection() as client:
                    listed = (await client.list_tools()).tools
                    self._install(listed)
                    self._client = client
                    self._broken = anyio.Event()
                    self.status, self.error, self.connects = "connected", None, self.connects + 1
                    delay = 0.5
                    first.set()
                    log.info("MCP server %s: connected, %d tool(s)", self.name, len(listed))
                    await self._watch(client)
            except Exception as exc:  # noqa: BLE001 - whatever the server or transport did
                self.error = _describe(exc)
                log.warning(
                    "MCP server %s: %s; reconnecting in %.1fs", self.name, self.error, delay
                )
            finally:
                self._client = None
            self.status = "reconnecting"
            first.set()
            await anyio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def _watch(self, client: Client) -> None:
        """Return (by raising) when the connection is gone: a ping that fails, or a call that
        failed for a reason other than the tool itself."""
        while True:
            with anyio.move_on_after(self.settings.ping_interval):
                await self._broken.wait()
            if self._broken.is_set():
                raise ConnectionError("a call failed: the connection looks broken")
            with anyio.fail_after(self.settings.timeout):
                await client.session.send_ping()

    def _install(self, listed: list[Any]) -> None:
        names = []
        for spec in listed:
            name = f"{self.name}.{spec.name}"
            holder = self.runner.tools.owner(name)
            if holder not in (None, self.owner):  # replace=True is for our own tools only
                log.error(
                    "MCP server %s: tool %s is already registered by %s; the server's is not used",
                    self.name,
                    name,
                    holder,
                )
                continue
            schema = dict(spec.input_schema or {"type": "object"})
            returns = getattr(spec, "output_schema", None)  # structured content's schema
            self.runner.add(
                Tool(
                    name=name,
                    call=self._caller(spec.name),
                    input_schema=schema,
                    output_schema=dict(returns) if isinstance(returns, dict) else None,
                    description=spec.description or "",
                    version=f"mcp:{self.name}",
                    cacheable=self.settings.cacheable,
                    max_concurrency=self.settings.max_concurrency,
                ),
                owner=self.owner,
                replace=True,
            )
            names.append(name)
        for gone in set(self.tools) - set(names):  # the server no longer offers it
            self.runner.remove(gone)
        self.tools = names

    def _caller(self, tool: str) -> Any:
        async def call(args: dict[str, Any]) -> Any:
            return await self.call(tool, args)

        return call

    async def call(self, tool: str, args: dict[str, Any]) -> Any:
        """Call one of the server's tools; failures name the server.

        The server's breaker, if it has one, guards the request: a server that is gone or does
        not answer is its failure; a tool that reports one (``isError``) is a server that
        answered.
        """
        if self.breaker is None:
            result = await self._request(tool, args)
        else:
            result = await self.breaker.call(self._request, tool, args)
        if result.is_error:
            from mcp.types import TextContent  # loaded with the client by now

            text = " ".join(c.text for c in result.content if isinstance(c, TextContent))
            raise ToolFailed(
                f"{self.name}.{tool}",
                f"MCP server {self.name!r} reported: {text or 'an error without a message'}",
            )
        return tool_value(result)

    async def _request(self, tool: str, args: dict[str, Any]) -> Any:
        """The server's ``CallToolResult``; :class:`ToolFailed` when it cannot be had."""
        name = f"{self.name}.{tool}"
        client = self._client
        if client is None:
            raise ToolFailed(
                name,
                f"MCP server {self.name!r} is not connected ({self.status}"
                f"{': ' + self.error if self.error else ''})",
            )
        try:
            # The SDK puts the current trace context (the calling step's tool span, when
            # traced) in the request's ``_meta``: the server continues the run's trace.
            result = await client.call_tool(tool, args, read_timeout_seconds=self.settings.timeout)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # noqa: BLE001 - protocol errors, timeouts, a dead server
            self._broken.set()  # check the connection now rather than at the next ping
            raise ToolFailed(name, f"MCP server {self.name!r}: {_describe(exc)}") from exc
        return result


class McpTools:
    """Every configured MCP server of one engine, connected while this context is entered.

    Entering connects to all servers at once and waits (each at most its ``connect_timeout``)
    until each is connected or has failed once; leaving disconnects and forgets their tools.
    """

    def __init__(self, runner: ToolRunner, tables: Mapping[str, Mapping[str, Any]]) -> None:
        self.servers = {
            name: McpServer(name, settings, runner)
            for name, settings in parse_servers(tables).items()
            if settings.enabled
        }
        self.runner = runner
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> McpTools:
        if not self.servers:
            return self
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        firsts = []
        for server in self.servers.values():
            first = anyio.Event()
            firsts.append((server, first))
            self._tg.start_soon(server.keep_connected, first)
        for server, first in firsts:
            with anyio.move_on_after(server.settings.connect_timeout):
                await first.wait()
            if server.status != "connected":
                log.error(
                    "MCP server %s is not available (%s); its tools are missing until it connects",
                    server.name,
                    server.error or f"no answer in {server.settings.connect_timeout:g}s",
                )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            self._tg = None
        for server in self.servers.values():
            for name in server.tools:
                self.runner.remove(name)
            server.tools = []

    def info(self) -> dict[str, Any]:
        """Each server's status, for ``host/info``."""
        return {name: server.info() for name, server in self.servers.items()}
