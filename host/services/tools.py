"""Calling tools by name: argument checks, per-tool concurrency limits and the result cache.

A call runs in the host's process, or on the executor its tool or its step names
(``plait.services.executors``): the limits, the cache, the breakers and the errors are the same
either way."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio

from plait.config import ToolSettings
from plait.definition.models import CachePolicy
from plait.errors import OutputError, RunError, ToolFailed, ToolNotFound
from plait.faults import is_plugin_failure, log_plugin_failure
from plait.plugins.registry import Registry
from plait.plugins.types import Tool, ToolContext
from plait.services.breakers import Breakers, Reporter, reporting
from plait.services.cache import ToolCache, cache_key
from plait.services.executors import Executors
from plait.values import json_problem

if TYPE_CHECKING:
    from plait.telemetry import Metrics, Tracing

__all__ = ["ToolRunner"]

log = logging.getLogger("plait.services.tools")


class ToolRunner:
    """Runs registered tools for steps and agents, the same way for both."""

    def __init__(
        self,
        tools: Registry[Tool],
        cache: ToolCache,
        settings: Mapping[str, ToolSettings] | None = None,
        *,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        executors: Executors | None = None,
    ) -> None:
        self.tools = tools
        self.cache = cache
        self.executors = executors if executors is not None else Executors(Registry("executor"))
        """Where calls of tools (or steps) that name an executor run."""
        self.metrics = metrics
        self.tracing = tracing
        self.settings = dict(settings or {})
        self._limiters: dict[str, anyio.CapacityLimiter] = {}
        for name in tools:
            self._limit(tools[name])
        self.breakers = Breakers()
        """The tools' breakers (``tool:<name>``, from ``[tools."<name>"] breaker``) and the
        MCP servers' (``mcp:<server>``, added by their :class:`~plait.services.mcp.McpTools`)."""
        for name, tool_settings in self.settings.items():
            self.breakers.add(f"tool:{name}", tool_settings.breaker)

    def _limit(self, tool: Tool) -> None:
        """Give the tool its ``max_concurrency`` limiter (the config's, else its own), if any."""
        limit = self._setting(tool.name, "max_concurrency") or tool.max_concurrency
        if limit:
            self._limiters[tool.name] = anyio.CapacityLimiter(limit)

    def add(self, tool: Tool, *, owner: str, replace: bool = False) -> None:
        """Register a tool from a source other than a plugin (an MCP server), with its limit."""
        self.tools.add(tool.name, tool, plugin=owner, replace=replace)
        self._limit(tool)

    def remove(self, name: str) -> None:
        """Forget a tool added with :meth:`add`."""
        self.tools.remove(name)
        self._limiters.pop(name, None)

    def _setting(self, name: str, key: str) -> Any:
        settings = self.settings.get(name)
        return getattr(settings, key) if settings is not None else None

    def get(self, name: str) -> Tool:
        """The tool called ``name``; raises :class:`ToolNotFound` listing what exists."""
        tool = self.tools.get(name)
        if tool is None:
            raise ToolNotFound(name, self.tools.names())
        return tool

    def specs(self, names: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
        """``[{name, description, input_schema}]`` for a model's tool list."""
        return [
            {"name": t.name, "description": t.description, "input_schema": t.input_schema}
            for t in (self.get(n) for n in names)
        ]

    def policy(self, tool: Tool, step_policy: CachePolicy | None) -> CachePolicy | None:
        """The cache policy of one call: the step's, else the tool's default; never for
        tools that declare side effects."""
        cacheable = self._setting(tool.name, "cacheable")
        if cacheable is None:
            cacheable = tool.cacheable
        if cacheable is False or not self.cache.enabled:
            return None
        if step_policy is not None:
            return step_policy if step_policy.enabled else None
        if cacheable:
            ttl = self._setting(tool.name, "cache_ttl") or tool.cache_ttl
            return CachePolicy(ttl=ttl)
        return None

    async def call(
        self,
        name: str,
        args: Mapping[str, Any],
        *,
        policy: CachePolicy | None = None,
        extra_key: str | None = None,
        on_cached: Callable[[str, str], Any] | None = None,
        context: ToolContext | None = None,
        on_breaker: Reporter | None = None,
        executor: str | None = None,
    ) -> Any:
        """Call tool ``name``; consult and fill the cache when the policy allows.

        Args:
            policy: the calling step's ``cache:`` policy, if any.
            extra_key: the rendered ``cache.key`` template, added to the cache key.
            on_cached: called with (tool name, key) on a cache hit (emits ``step.cached``).
            context: what the tool may know of the call (for tools that ask for it).
            on_breaker: called with (event type, data) when the call changes the state of a
                circuit breaker (records ``breaker.opened`` ... on the calling run).
            executor: run the call on this executor (a tool step's ``executor:``) rather than
                where the tool says (its ``executor``, else in the host). The cache is
                consulted first either way, here.

        Raises:
            CircuitOpen: the tool's breaker (or its MCP server's) is open.
            ExecutorFailed: the executor lost the call (a worker died): retryable.
        """
        tool = self.get(name)
        if not isinstance(args, Mapping):
            raise ToolFailed(
                name, f"arguments must be a mapping, got {type(args).__name__}", retryable=False
            )
        effective = self.policy(tool, policy)
        key = None
        if effective is not None:
            try:
                key = cache_key(tool.name, tool.version, args, extra_key)
            except (TypeError, ValueError):
                key = None  # arguments that are not JSON cannot be keyed; call uncached
            if key is not None:
                hit, value = await self.cache.get(key)
                if self.metrics is not None:
                    self.metrics.cache_lookups.labels(tool.name, "hit" if hit else "miss").inc()
                if hit:
                    if on_cached is not None:
                        await on_cached(tool.name, key)
                    return value
        where = executor or tool.executor
        if self.metrics is None and self.tracing is None:
            value = await self._guarded(tool, dict(args), context, on_breaker, where)
        else:
            value = await self._observed(tool, dict(args), context, on_breaker, where)
        if key is not None:
            await self.cache.set(key, value, ttl=effective.ttl if effective else None)
        return value

    async def _guarded(
        self,
        tool: Tool,
        args: dict[str, Any],
        context: ToolContext | None,
        on_breaker: Reporter | None,
        executor: str | None = None,
    ) -> Any:
        """The call behind its breakers: a cache hit never touches a breaker; a call does,
        the tool's own and, below it, an MCP server's (which finds ``on_breaker`` through
        ``reporting``)."""
        if not self.breakers:
            return await self._invoke(tool, args, context, executor)
        breaker = self.breakers.get(f"tool:{tool.name}")
        with reporting(on_breaker):
            if breaker is None:
                return await self._invoke(tool, args, context, executor)
            return await breaker.call(self._invoke, tool, args, context, executor)

    async def _observed(
        self,
        tool: Tool,
        args: dict[str, Any],
        context: ToolContext | None,
        on_breaker: Reporter | None,
        executor: str | None = None,
    ) -> Any:
        """The call timed (metrics) and in a span of its own (traces)."""
        began = time.perf_counter()
        outcome = "error"
        try:
            if self.tracing is None:
                value = await self._guarded(tool, args, context, on_breaker, executor)
            else:
                with self.tracing.tool(tool.name) as span:
                    try:
                        value = await self._guarded(tool, args, context, on_breaker, executor)
                    except RunError as exc:
                        self.tracing.failed(span, exc.to_dict())
                        raise
            outcome = "ok"
            return value
        finally:
            if self.metrics is not None:
                self.metrics.tool_called(tool.name, outcome, time.perf_counter() - began)

    async def _invoke(
        self,
        tool: Tool,
        args: dict[str, Any],
        context: ToolContext | None,
        executor: str | None = None,
    ) -> Any:
        limiter = self._limiters.get(tool.name)
        call: Any
        given: tuple[Any, ...]
        if executor is not None:  # on an executor: the same limits, the value handed back
            call, given = self.executors.run, (executor, tool, args, context)
        else:
            call = tool.call
            given = (args, context) if tool.takes_context else (args,)
        try:
            if limiter is None:
                value = await call(*given)
            else:
                async with limiter:
                    value = await call(*given)
        except RunError:
            raise
        except BaseException as exc:
            if not is_plugin_failure(exc):
                raise
            owner = self.tools.owner(tool.name)
            source = f" (plugin {owner!r})" if owner else ""
            if executor is not None:
                source += f" (on executor {executor!r})"
            failed = ToolFailed(tool.name, f"{type(exc).__name__}: {exc}{source}")
            failed.correlation_id = log_plugin_failure(
                exc,
                f"tool {tool.name!r}",
                plugin=owner,
                run_id=context.run_id if context is not None else None,
                step=context.step_id if context is not None else None,
            )
            raise failed from exc
        problem = json_problem(value)
        if problem is not None:
            raise OutputError(f"tool {tool.name!r} returned a value that is not JSON: {problem}")
        return value
