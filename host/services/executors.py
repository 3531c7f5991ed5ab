"""Executors: where a tool's calls run when the tool or its step names one.

A tool registered with ``executor="dask"``, or a tool step that says ``executor: dask``, has
its calls run by the executor of that name instead of in the host's process. Executors come
from plugins (the ``register_executors`` hook: the built-in ``dask`` one as any other) and are
made from the ``[executors.<name>]`` tables of the configuration when the engine is built, so
a table that is wrong, or a tool naming an executor that cannot be made, stops the host at
start with the setting to fix. Making one checks its settings only: nothing connects, and no
library of the executor's is imported, until a call runs on it.

The host keeps everything else of a call: its arguments are checked here, the tool cache,
the limits, the breakers and the retries are the tool runner's, and every event is recorded
here. The executor runs the function on a worker and hands its value back.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from plait.errors import ConfigError, ToolFailed, did_you_mean
from plait.faults import is_plugin_failure
from plait.plugins.registry import Registry
from plait.plugins.types import Executor, ExecutorProvider, Tool, ToolContext, ToolJob
from plait.services.cache import cache_key

__all__ = ["Executors", "job_key"]

log = logging.getLogger("plait.services.executors")


def job_key(tool: Tool, args: Mapping[str, Any], context: ToolContext | None) -> str:
    """The id a call is submitted under: ``plait-<tool>-<digest>``.

    The digest covers the call's idempotency key (``run_id/step_path``, plus the agent's call
    id), its attempt and its cache key (the tool's name, version and arguments): the same
    step attempt with the same arguments gets the same key on any host and after a restart,
    so a resubmission finds the task already submitted; a retry (a new attempt) gets a new
    one. A direct call (``tools/call``, no step) has no idempotency key and gets a random id.
    """
    if context is None or context.idempotency_key is None:
        return f"plait-{tool.name}-{uuid.uuid4().hex}"
    try:
        call = cache_key(tool.name, tool.version, args)
    except (TypeError, ValueError):  # arguments that are not JSON: the attempt tells the call
        call = f"{tool.name}/{tool.version}"
    text = f"{context.idempotency_key}\n{context.attempt}\n{call}"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"plait-{tool.name}-{digest}"


class Executors:
    """The executors of one engine: the configured ones, and those a provider makes without
    settings, by name.

    Raises:
        ConfigError: at construction, naming every ``[executors.<name>]`` table that is wrong
            (an unknown provider, a missing or bad setting) and every tool registered with an
            executor that cannot be made.
    """

    def __init__(
        self,
        providers: Registry[ExecutorProvider],
        tables: Mapping[str, Mapping[str, Any]] | None = None,
        tools: Registry[Tool] | None = None,
    ) -> None:
        self.providers = providers
        self._made: dict[str, Executor] = {}
        self._problems: dict[str, str] = {}
        """Executor names no table configures whose provider could not make them unset."""
        self.configured = sorted(tables or {})
        problems = []
        for name, table in (tables or {}).items():
            try:
                self._made[name] = self._make(name, dict(table))
            except ValueError as exc:
                problems.append(f"[executors.{name}]: {exc}")
        if tools is not None:
            for tool_name in tools:
                tool = tools[tool_name]
                if tool.executor is None:
                    continue
                problem = self.problem(tool.executor)
                if problem is not None:
                    owner = tools.owner(tool_name)
                    by = f" (plugin {owner!r})" if owner else ""
                    problems.append(
                        f"tool {tool_name!r}{by} runs on executor {tool.executor!r}: {problem}"
                    )
        if problems:
            raise ConfigError("executors: " + "; ".join(problems))

    def _make(self, name: str, table: dict[str, Any]) -> Executor:
        provider_name = table.pop("provider", name)
        if not isinstance(provider_name, str) or not provider_name:
            raise ValueError(f"provider must name an executor provider, not {provider_name!r}")
        provider = self.providers.get(provider_name)
        if provider is None:
            installed = self.providers.names()
            raise ValueError(
                f"no executor provider {provider_name!r} is installed"
                f"{did_you_mean(provider_name, installed)}; installed: "
                f"{', '.join(installed) or 'none'}"
            )
        try:
            return provider.create(name, table)
        except ValueError:
            raise
        except Exception as exc:  # a provider's own bug is still a reason not to start
            owner = self.providers.owner(provider_name)
            raise ValueError(
                f"provider {provider_name!r} (plugin {owner!r}) failed to make it: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def names(self) -> list[str]:
        """Every executor name a call may use: the configured ones and the providers'."""
        return sorted({*self.configured, *self.providers.names()})

    def problem(self, name: str) -> str | None:
        """Why calls cannot run on the executor ``name`` (``None``: they can).

        A name no table configures is made by the provider of that name with no settings, the
        first time it is asked for; a provider that needs settings says which are missing.
        """
        if name in self._made:
            return None
        if name in self._problems:
            return self._problems[name]
        if name not in self.providers:
            known = self.names()
            hint = did_you_mean(name, known)
            listed = f"known executors: {', '.join(known)}" if known else "none is installed"
            return f"unknown executor {name!r}{hint}; {listed}"
        try:
            self._made[name] = self._make(name, {})
        except ValueError as exc:
            self._problems[name] = problem = (
                f"no [executors.{name}] table in the host configuration, and it needs one: {exc}"
            )
            return problem
        return None

    def get(self, name: str, tool: str) -> Executor:
        """The executor ``name``, for a call of ``tool``.

        Raises:
            ToolFailed: it cannot be used (not retryable), saying why.
        """
        found = self._made.get(name)
        if found is not None:
            return found
        problem = self.problem(name)
        if problem is not None:
            raise ToolFailed(tool, problem, retryable=False)
        return self._made[name]

    async def run(
        self,
        name: str,
        tool: Tool,
        args: Mapping[str, Any],
        context: ToolContext | None,
    ) -> Any:
        """Run one call of ``tool`` on the executor ``name`` and return the tool's value.

        The arguments are checked here first; the executor gets the function, its keyword
        arguments and the call's key (:func:`job_key`).

        Raises:
            ToolFailed: the tool cannot run on an executor (it is no Python function), the
                executor cannot be used, or the arguments do not fit (none retryable).
            ExecutorFailed: the executor lost the call (retryable).
        """
        function = tool.function
        if function is None:
            raise ToolFailed(
                tool.name,
                f"cannot run on executor {name!r}: it is not a Python function plait can send "
                "(an MCP server's tool, or a Tool made without from_function)",
                retryable=False,
            )
        executor = self.get(name, tool.name)
        kwargs = function.bind(dict(args), context)
        job = ToolJob(job_key(tool, args, context), tool.name, function.function, kwargs, context)
        value = await executor.run(job)
        return function.to_json(value)

    def detach(self) -> None:
        """The host is stopping to resume its runs later: executors leave the calls cancelled
        from now on running, for the next host to find by their keys."""
        for name, executor in self._made.items():
            try:
                executor.detach()
            except BaseException as exc:  # noqa: BLE001 - stopping goes on whatever a plugin does
                if not is_plugin_failure(exc):
                    raise
                log.warning("executor %r failed to detach: %s", name, exc)

    async def aclose(self) -> None:
        """Close every executor made (connections, local clusters); errors are logged."""
        for name, executor in self._made.items():
            try:
                await executor.aclose()
            except BaseException as exc:  # noqa: BLE001 - closing never fails the host
                if not is_plugin_failure(exc):
                    raise
                log.warning("executor %r failed to close: %s", name, exc)
