"""Named agents from the host configuration, built by their providers on first use.

Every agent gets the same wrappers whatever its provider: ``max_concurrency`` (completions in
flight), a ``requests_per_minute`` / ``tokens_per_minute`` budget, a circuit breaker
(``breaker = {...}``, see ``plait.services.breakers``) and provider errors turned into step
errors. The budget is a pair of buckets that refill continuously; a completion
reserves one request and its estimated tokens (a quarter of the conversation's characters,
plus ``max_tokens`` or 256 for the answer) and the estimate is corrected by the usage the
provider reports. A step that has to wait for the budget shows as ``waiting``, with the reason,
until it may go on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio

from plait.errors import AgentFailed, AgentNotFound, RunError
from plait.faults import is_plugin_failure, log_plugin_failure
from plait.plugins.registry import Registry
from plait.plugins.types import Agent, AgentProvider, AgentReply, AgentRequest
from plait.services.breakers import Breakers, CircuitBreaker, breaker_settings

log = logging.getLogger("plait.agents")


if TYPE_CHECKING:
    from plait.telemetry import Metrics, Tracing

__all__ = ["AgentPool", "Budget"]

POOL_KEYS = ("max_concurrency", "requests_per_minute", "tokens_per_minute", "breaker")
"""Keys of an ``[agents.<name>]`` table that the pool handles for every provider."""
ANSWER_TOKENS = 256
"""Tokens an answer is assumed to take when the agent sets no ``max_tokens``."""


class Budget:
    """Requests and tokens per minute: buckets that start full and refill continuously."""

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        clock: Any = time.monotonic,
    ) -> None:
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self.requests = float(requests_per_minute or 0)
        self.tokens = float(tokens_per_minute or 0)
        self._clock = clock
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed, self._at = now - self._at, now
        if self.rpm:
            self.requests = min(self.rpm, self.requests + elapsed * self.rpm / 60)
        if self.tpm:
            self.tokens = min(self.tpm, self.tokens + elapsed * self.tpm / 60)

    def wait(self, tokens: int) -> tuple[float, str | None]:
        """Seconds until one request with ``tokens`` may go, and which limit holds it."""
        self._refill()
        waits = []
        if self.rpm and self.requests < 1:
            waits.append(((1 - self.requests) * 60 / self.rpm, "requests_per_minute"))
        if self.tpm:
            need = min(tokens, self.tpm)  # a request larger than the budget waits for it full
            if self.tokens < need:
                waits.append(((need - self.tokens) * 60 / self.tpm, "tokens_per_minute"))
        return max(waits) if waits else (0.0, None)

    def take(self, tokens: int) -> None:
        """Spend one request and ``tokens`` tokens (call right after :meth:`wait` said 0)."""
        self._refill()  # time that passed is credited before the spend, within the cap
        if self.rpm:
            self.requests -= 1
        if self.tpm:
            self.tokens -= min(tokens, self.tpm)

    def correct(self, tokens: int) -> None:
        """Charge (or give back) the difference between the estimate and the real usage."""
        self._refill()
        if self.tpm:
            self.tokens = min(self.tpm, self.tokens - tokens)


def estimate_tokens(request: AgentRequest, answer: int) -> int:
    """A rough token count of a completion: characters / 4, plus the answer's budget."""
    chars = sum(
        len(m.content) + sum(len(json.dumps(c.arguments)) for c in m.tool_calls)
        for m in request.messages
    )
    chars += sum(len(json.dumps(t)) for t in request.tools)
    return chars // 4 + answer


class _Limited:
    """An agent behind its concurrency limit and budget, with provider errors made step
    errors."""

    def __init__(
        self,
        name: str,
        agent: Agent,
        config: Mapping[str, Any],
        breaker: CircuitBreaker | None = None,
        *,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.name = name
        self._breaker = breaker
        self.metrics = metrics
        self.tracing = tracing
        self.provider = str(config.get("provider") or "")
        self.model = str(config.get("model") or "")
        """For metric labels and span attributes: what the table names (bounded)."""
        limit = config.get("max_concurrency")
        self.max_concurrency = int(limit) if limit else None
        self._agent = agent
        self._limiter = (
            anyio.CapacityLimiter(self.max_concurrency) if self.max_concurrency else None
        )
        rpm, tpm = config.get("requests_per_minute"), config.get("tokens_per_minute")
        self._budget = Budget(rpm, tpm) if rpm or tpm else None
        self._answer = int(config.get("max_tokens") or ANSWER_TOKENS)

    async def complete(self, request: AgentRequest) -> AgentReply:
        if self.metrics is None and self.tracing is None:
            return await self._guarded(request)
        began = time.perf_counter()
        outcome, usage = "error", {}
        try:
            if self.tracing is None:
                reply = await self._guarded(request)
            else:
                with self.tracing.agent(self.name, self.provider, self.model) as span:
                    try:
                        reply = await self._guarded(request)
                    except RunError as exc:
                        self.tracing.failed(span, exc.to_dict())
                        raise
                    self.tracing.usage(span, reply.usage)
            outcome, usage = "ok", reply.usage
            return reply
        finally:
            if self.metrics is not None:
                seconds = time.perf_counter() - began
                self.metrics.agent_answered(self.name, self.model, outcome, seconds, usage)

    async def _guarded(self, request: AgentRequest) -> AgentReply:
        if self._breaker is None:
            return await self._complete(request)
        # Refused at once while the breaker is open, before any budget is spent; a change of
        # its state is recorded on the step's run.
        report = request.context.emit if request.context is not None else None
        return await self._breaker.call(self._complete, request, report=report)

    async def _complete(self, request: AgentRequest) -> AgentReply:
        estimate = 0
        if self._budget is not None:
            estimate = estimate_tokens(request, self._answer)
            await self._reserve(request, estimate)
        try:
            if self._limiter is None:
                reply = await self._agent.complete(request)
            else:
                async with self._limiter:
                    reply = await self._agent.complete(request)
        except RunError:
            raise
        except BaseException as exc:
            if not is_plugin_failure(exc):
                raise
            failed = AgentFailed(self.name, f"{type(exc).__name__}: {exc}")
            failed.correlation_id = log_plugin_failure(
                exc,
                f"agent {self.name!r} (provider {self.provider!r})",
                plugin=self.provider or None,
                run_id=request.run_id or None,
                step=request.step_id or None,
            )
            raise failed from exc
        if not isinstance(reply, AgentReply):
            raise AgentFailed(
                self.name,
                f"provider returned {type(reply).__name__}, not an AgentReply",
                retryable=False,
            )
        if self._budget is not None:
            used = reply.usage.get("total_tokens") or (
                reply.usage.get("prompt_tokens", 0) + reply.usage.get("completion_tokens", 0)
            )
            if used:
                self._budget.correct(int(used) - estimate)
        return reply

    async def _reserve(self, request: AgentRequest, tokens: int) -> None:
        assert self._budget is not None
        shown = False
        try:
            while True:
                seconds, limit = self._budget.wait(tokens)
                if seconds <= 0:
                    self._budget.take(tokens)
                    return
                if not shown and request.context is not None:
                    shown = True
                    await request.context.waiting(
                        f"agent {self.name!r}: waiting {seconds:.1f}s for its {limit} budget"
                    )
                await anyio.sleep(seconds)
        finally:
            if shown and request.context is not None:
                with anyio.CancelScope(shield=True):
                    await request.context.waiting(None)


class AgentPool:
    """``[agents.<name>]`` tables turned into agents, each made once and shared by all runs."""

    def __init__(
        self,
        providers: Registry[AgentProvider],
        configs: Mapping[str, Mapping[str, Any]],
        *,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.providers = providers
        self.metrics = metrics
        self.tracing = tracing
        self.configs = {name: dict(cfg) for name, cfg in configs.items()}
        self._agents: dict[str, _Limited] = {}
        self.breakers = Breakers()
        """``agent:<name>`` for each agent whose table has a ``breaker``."""
        for name, cfg in self.configs.items():  # a bad breaker table fails here, at start
            self.breakers.add(
                f"agent:{name}", breaker_settings(cfg.get("breaker"), f"agents.{name}")
            )

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
            raise AgentFailed(
                name,
                f"provider {provider_name!r} is not installed; providers: "
                f"{', '.join(self.providers.names()) or 'none'}",
                retryable=False,
            )
        own = {k: v for k, v in config.items() if k not in POOL_KEYS}
        try:
            made = provider.create(name, own)
        except Exception as exc:
            raise AgentFailed(name, f"invalid configuration: {exc}", retryable=False) from exc
        breaker = self.breakers.get(f"agent:{name}")
        agent = self._agents[name] = _Limited(
            name, made, config, breaker, metrics=self.metrics, tracing=self.tracing
        )
        return agent

    async def aclose(self) -> None:
        """Close what providers opened (HTTP clients), for agents that have ``aclose``."""
        for limited in self._agents.values():
            close = getattr(limited._agent, "aclose", None)
            if close is not None:
                try:
                    await close()
                except BaseException as exc:  # closing never fails the host
                    if not is_plugin_failure(exc):
                        raise
                    log.warning("agent %r failed to close: %s", limited.name, exc)
