"""The ``openai`` agent provider: any OpenAI-compatible chat-completions endpoint.

Hosted APIs and local servers (llama.cpp, vLLM, Ollama, LM Studio) speak the same
``POST {base_url}/chat/completions``. The provider sends the conversation and the step's tools
(as functions), streams the answer by default (each burst of text becomes an ``agent.delta``
event), reads tool calls and token usage, and retries what is worth retrying: connection
errors, timeouts, 429 and 5xx, waiting what ``Retry-After`` says (at most 60 s) or else a
growing backoff. Other 4xx answers fail the step at once with the server's message. A stream
that breaks after text has been sent is not retried here (the text was already told); the
step's own retry policy decides.

Tool names such as ``git.diff`` are not valid function names for these APIs
(``^[a-zA-Z0-9_-]{1,64}$``), so they are sent as ``git__diff`` and mapped back.
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from pydantic import BaseModel, ConfigDict, Field

from plait.definition.models import RetryPolicy
from plait.errors import AgentFailed
from plait.plugins import (
    AgentReply,
    AgentRequest,
    Message,
    ToolCall,
    agent_settings,
    hookimpl,
)

if TYPE_CHECKING:
    from plait.plugins.types import RegisterAgent

__all__ = ["OpenAIAgent", "OpenAIProvider"]

_BACKOFF = RetryPolicy(base=0.5, max=8.0)
"""Between retries the server did not time (no Retry-After): 0.5 s, doubling, at most 8 s."""

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
"""Statuses worth another try."""
MAX_RETRY_AFTER = 60.0
"""The longest ``Retry-After`` the provider honours (seconds)."""
DELTA_SECONDS = 0.1
"""Streamed text is told in bursts at most this often, not token by token."""


class _Settings(BaseModel):
    """The ``[agents.<name>]`` table of an OpenAI-compatible agent."""

    model_config = ConfigDict(extra="forbid")

    provider: str = "openai"
    model: str = Field(min_length=1)
    base_url: str = Field(
        default_factory=lambda: os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
    )
    """The endpoint; by default ``$OPENAI_BASE_URL`` (as the OpenAI SDK reads it), else
    OpenAI's."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """The environment variable holding the key; unset or empty sends no Authorization (local
    servers need none)."""
    system: str | None = None
    """A system prompt used when the conversation has none."""
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    stream: bool = True
    timeout: float = Field(120.0, gt=0)
    """Seconds for one request (connecting, and between two chunks of a stream)."""
    max_retries: int = Field(3, ge=0, le=10)
    response_format: str | None = Field(None, pattern="^(json_object|json_schema)$")
    """Ask the server to force JSON when the step has an ``output_schema`` (not every server
    supports it; without it the step still validates and asks for repairs)."""
    headers: dict[str, str] = Field(default_factory=dict)
    extra_body: dict[str, Any] = Field(default_factory=dict)
    """More request fields, as the server takes them (``top_p``, ``seed``, ...)."""


def _function_name(tool: str) -> str:
    """A tool's name as these APIs accept a function name (``git.diff`` → ``git__diff``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", tool.replace(".", "__"))[:60] or "tool"


def _safe_names(tools: list[dict[str, Any]]) -> dict[str, str]:
    """Function name → tool name, for the tools of one request."""
    names: dict[str, str] = {}
    for tool in tools:
        base = _function_name(tool["name"])
        safe, n = base, 1
        while safe in names:
            n += 1
            safe = f"{base}_{n}"
        names[safe] = tool["name"]
    return names


def _messages(
    request: AgentRequest, system: str | None, to_safe: Mapping[str, str]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if system and not any(m.role == "system" for m in request.messages):
        out.append({"role": "system", "content": system})
    for m in request.messages:
        if m.role == "tool":
            out.append({"role": "tool", "tool_call_id": m.tool_call_id or "", "content": m.content})
        elif m.role == "assistant" and m.tool_calls:
            out.append(
                {
                    "role": "assistant",
                    "content": m.content or None,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",  # a call of an earlier step's tool too
                            "function": {
                                "name": to_safe.get(c.name) or _function_name(c.name),
                                "arguments": json.dumps(c.arguments),
                            },
                        }
                        for c in m.tool_calls
                    ],
                }
            )
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(seconds, MAX_RETRY_AFTER))


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):  # OpenAI: {"error": {"message": ...}}
        error = error.get("message")
    if isinstance(error, str) and error:  # others: {"error": "..."}
        return error
    return response.text[:300] or response.reason_phrase


class _Retry(Exception):
    """A try that failed in a way worth trying again; ``after`` is the server's wish."""

    def __init__(self, message: str, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


class OpenAIAgent:
    """Completes conversations through one OpenAI-compatible endpoint."""

    def __init__(self, name: str, settings: _Settings) -> None:
        self.name = name
        self.max_concurrency: int | None = None
        self.settings = settings
        self.url = settings.base_url.rstrip("/") + "/chat/completions"
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"Content-Type": "application/json", **self.settings.headers}
            key = (
                os.environ.get(self.settings.api_key_env or "")
                if self.settings.api_key_env
                else None
            )
            if key:
                headers["Authorization"] = f"Bearer {key}"
            self._client = httpx.AsyncClient(headers=headers, timeout=self.settings.timeout)
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def body(self, request: AgentRequest, to_tool: Mapping[str, str]) -> dict[str, Any]:
        """The request body for a conversation."""
        s = self.settings
        to_safe = {tool: safe for safe, tool in to_tool.items()}
        body: dict[str, Any] = {"model": s.model, "messages": _messages(request, s.system, to_safe)}
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": to_safe[t["name"]],
                        "description": t.get("description") or "",
                        "parameters": t.get("input_schema") or {"type": "object"},
                    },
                }
                for t in request.tools
            ]
        if s.temperature is not None:
            body["temperature"] = s.temperature
        if s.max_tokens is not None:
            body["max_tokens"] = s.max_tokens
        if request.output_schema is not None and s.response_format == "json_object":
            body["response_format"] = {"type": "json_object"}
        elif request.output_schema is not None and s.response_format == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": request.output_schema},
            }
        if s.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body | s.extra_body

    async def complete(self, request: AgentRequest) -> AgentReply:
        """One completion, retried on what is worth retrying."""
        to_tool = _safe_names(request.tools)
        body = self.body(request, to_tool)
        for attempt in range(self.settings.max_retries + 1):
            try:
                return await self._once(body, to_tool, request)
            except _Retry as exc:
                if attempt == self.settings.max_retries:
                    raise AgentFailed(self.name, f"{exc} (after {attempt + 1} tries)") from None
                await anyio.sleep(
                    exc.after if exc.after is not None else _BACKOFF.delay(attempt + 1)
                )
        raise AssertionError("unreachable")

    async def _once(
        self, body: dict[str, Any], to_tool: Mapping[str, str], request: AgentRequest
    ) -> AgentReply:
        try:
            # The step's trace goes on in the endpoint (W3C traceparent), when traced.
            headers = request.context.trace_headers() if request.context is not None else None
            async with self._http().stream(
                "POST", self.url, json=body, headers=headers or None
            ) as response:
                if response.status_code in RETRY_STATUS:
                    await response.aread()
                    raise _Retry(
                        f"{self.url} answered {response.status_code}: {_error_text(response)}",
                        _retry_after(response),
                    )
                if response.status_code >= 400:
                    await response.aread()
                    raise AgentFailed(
                        self.name,
                        f"{self.url} answered {response.status_code}: {_error_text(response)}",
                        retryable=False,
                    )
                if body.get("stream"):
                    return await self._read_stream(response, to_tool, request)
                await response.aread()
                return self._reply(response.json(), to_tool)
        except httpx.TimeoutException as exc:
            raise _Retry(f"{self.url} timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise _Retry(f"cannot reach {self.url}: {exc}") from None
        except ValueError as exc:  # a body that is not JSON
            raise AgentFailed(
                self.name, f"{self.url} answered something that is not JSON: {exc}"
            ) from None

    def _reply(self, data: Mapping[str, Any], to_tool: Mapping[str, str]) -> AgentReply:
        try:
            message = data["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            raise AgentFailed(
                self.name, f"the answer has no choices[0].message: {str(data)[:200]}"
            ) from None
        calls = [
            self._call(c.get("id") or f"call_{i}", c.get("function") or {}, to_tool)
            for i, c in enumerate(message.get("tool_calls") or [])
        ]
        return AgentReply(
            Message(role="assistant", content=message.get("content") or "", tool_calls=calls),
            usage=_usage(data.get("usage")),
        )

    def _call(
        self, call_id: str, function: Mapping[str, Any], to_tool: Mapping[str, str]
    ) -> ToolCall:
        name = str(function.get("name") or "")
        raw = function.get("arguments") or "{}"
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else dict(raw)
        except ValueError:
            raise AgentFailed(
                self.name,
                f"the model called {name!r} with arguments that are not JSON: {str(raw)[:200]}",
            ) from None
        if not isinstance(arguments, dict):
            raise AgentFailed(
                self.name, f"the model called {name!r} with arguments that are not an object"
            )
        return ToolCall(call_id, to_tool.get(name, name), arguments)

    async def _read_stream(
        self, response: httpx.Response, to_tool: Mapping[str, str], request: AgentRequest
    ) -> AgentReply:
        text: list[str] = []
        pending: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        usage: dict[str, int] = {}
        told = False
        last = time.monotonic()

        async def tell(force: bool = False) -> None:
            nonlocal last, told
            if (
                pending
                and request.context is not None
                and (force or time.monotonic() - last >= DELTA_SECONDS)
            ):
                await request.context.emit("agent.delta", {"text": "".join(pending)})
                pending.clear()
                last, told = time.monotonic(), True

        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                usage = _usage(chunk.get("usage")) or usage
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        text.append(delta["content"])
                        pending.append(delta["content"])
                    for part in delta.get("tool_calls") or ():
                        slot = calls.setdefault(part.get("index", 0), {"arguments": ""})
                        if part.get("id"):
                            slot["id"] = part["id"]
                        function = part.get("function") or {}
                        if function.get("name"):
                            slot["name"] = function["name"]
                        slot["arguments"] += function.get("arguments") or ""
                await tell()
        except (httpx.TransportError, ValueError) as exc:
            if told:  # text already told: let the step's retry policy decide
                raise AgentFailed(self.name, f"the stream broke: {exc}") from None
            raise _Retry(f"the stream from {self.url} broke: {exc}") from None
        await tell(force=True)
        tool_calls = [
            self._call(
                c.get("id") or f"call_{i}",
                {"name": c.get("name"), "arguments": c["arguments"] or "{}"},
                to_tool,
            )
            for i, c in sorted(calls.items())
        ]
        return AgentReply(
            Message(role="assistant", content="".join(text), tool_calls=tool_calls), usage=usage
        )


def _usage(usage: Any) -> dict[str, int]:
    if not isinstance(usage, Mapping):
        return {}
    return {
        k: int(v)
        for k, v in usage.items()
        if k in ("prompt_tokens", "completion_tokens", "total_tokens")
        and isinstance(v, int | float)
    }


class OpenAIProvider:
    """Makes :class:`OpenAIAgent` s from ``provider = "openai"`` tables.

    Example::

        [agents.writer]
        provider = "openai"
        model = "gpt-4o-mini"
        base_url = "http://127.0.0.1:8080/v1"   # llama.cpp, vLLM, Ollama, ...
        api_key_env = "OPENAI_API_KEY"
    """

    name = "openai"

    def create(self, name: str, config: Mapping[str, Any]) -> OpenAIAgent:
        """Validate the table and build the agent; a bad table raises ``ValueError``."""
        return OpenAIAgent(name, agent_settings(_Settings, name, "openai", config))


@hookimpl
def register_agents(register: RegisterAgent) -> None:
    """Register the ``openai`` agent provider."""
    register(OpenAIProvider())
