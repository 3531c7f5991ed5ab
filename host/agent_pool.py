"""Named agents from the host configuration, built by their providers on first use."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio

from plait.errors import AgentFailed, AgentNotFound, RunError
from plait.plugins.registry import Registry
from plait.plugins.types import Agent, AgentProvider, AgentReply, AgentRequest
from plait.values import PLUGIN_ERRORS

__all__ = ["AgentPool"]


class _Limited:
    """An agent behind its ``max_concurrency`` limit, with provider errors made step errors."""

    def __init__(self, name: str, agent: Agent, limit: int | None) -> None:
        self.name = name
        self.max_concurrency = limit
        self._agent = agent
        self._limiter = anyio.CapacityLimiter(limit) if limit else None

    async def complete(self, request: AgentRequest) -> AgentReply:
        try:
            if self._limiter is None:
                reply = await self._agent.complete(request)
            else:
                async with self._limiter:
                    reply = await self._agent.complete(request)
        except RunError:
            raise
        except PLUGIN_ERRORS as exc:
            raise AgentFailed(self.name, f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(reply, AgentReply):
            raise AgentFailed(self.name, f"provider returned {type(reply).__name__}, "
                                         "not an AgentReply", retryable=False)
        return reply


class AgentPool:
    """``[agents.<name>]`` tables turned into agents, each made once and shared by all runs."""

    def __init__(self, providers: Registry[AgentProvider],
                 configs: Mapping[str, Mapping[str, Any]]) -> None:
        self.providers = providers
        self.configs = {name: dict(cfg) for name, cfg in configs.items()}
        self._agents: dict[str, _Limited] = {}

    def names(self) -> list[str]:
        """Configured agent names."""
        return sorted(self.configs)

    def get(self, name: str) -> Agent:
        """The agent called ``name``, built by its provider the first time it is asked for."""
        agent = self._agents.get(name)
        if agent is not None:
            return agent
        config = self.configs.get(name)
        if config is None:
            raise AgentNotFound(name, self.names())
        provider_name = config.get("provider")
        provider = self.providers.get(provider_name) if isinstance(provider_name, str) else None
        if provider is None:
            raise AgentFailed(name, f"provider {provider_name!r} is not installed; providers: "
                                    f"{', '.join(self.providers.names()) or 'none'}",
                              retryable=False)
        try:
            made = provider.create(name, config)
        except Exception as exc:
            raise AgentFailed(name, f"invalid configuration: {exc}", retryable=False) from exc
        limit = config.get("max_concurrency")
        agent = self._agents[name] = _Limited(name, made, int(limit) if limit else None)
        return agent
