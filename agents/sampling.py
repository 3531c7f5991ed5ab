"""The ``sampling`` agent provider: the connected MCP client runs the completion.

The agent step sends the conversation to a client with ``sampling/createMessage`` (the client
that started the run, else any connected client that declared the ``sampling`` capability),
so the host needs no model credentials: an IDE runs the model it already has. Tools the step
lists are offered with the request (MCP 2025-11-25 tool use in sampling); a client that cannot
use them answers with an error, which fails the step with its message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

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

__all__ = ["SamplingAgent", "SamplingProvider"]


class _Settings(BaseModel):
    """The ``[agents.<name>]`` table of a sampling agent."""

    model_config = ConfigDict(extra="forbid")

    provider: str = "sampling"
    model: str | None = None
    """A model name the client is asked to prefer (``modelPreferences.hints``)."""
    system: str | None = None
    """A system prompt used when the conversation has none."""
    max_tokens: int = Field(1024, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    timeout: float = Field(300.0, gt=0)
    """Seconds the client may take to answer (a person may have to approve the request)."""
    include_context: str | None = Field(None, pattern="^(none|thisServer|allServers)$")


def _blocks(message: Message) -> list[dict[str, Any]]:
    if message.role == "tool":
        return [
            {
                "type": "tool_result",
                "toolUseId": message.tool_call_id or "",
                "content": [{"type": "text", "text": message.content}],
            }
        ]
    blocks: list[dict[str, Any]] = []
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    blocks += [
        {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
        for c in message.tool_calls
    ]
    return blocks


def to_params(request: AgentRequest, settings: _Settings) -> dict[str, Any]:
    """The ``sampling/createMessage`` params for a request."""
    system = "\n\n".join(m.content for m in request.messages if m.role == "system")
    messages = []
    for m in request.messages:
        if m.role == "system":
            continue
        blocks = _blocks(m)
        messages.append(
            {
                "role": "assistant" if m.role == "assistant" else "user",
                "content": blocks[0] if len(blocks) == 1 else blocks,
            }
        )
    params: dict[str, Any] = {"messages": messages, "maxTokens": settings.max_tokens}
    if system or settings.system:
        params["systemPrompt"] = system or settings.system
    if settings.temperature is not None:
        params["temperature"] = settings.temperature
    if settings.model:
        params["modelPreferences"] = {"hints": [{"name": settings.model}]}
    if settings.include_context:
        params["includeContext"] = settings.include_context
    if request.tools:
        params["tools"] = [
            {
                "name": t["name"],
                "description": t.get("description") or "",
                "inputSchema": t.get("input_schema") or {"type": "object"},
            }
            for t in request.tools
        ]
    return params


def from_result(name: str, result: Mapping[str, Any]) -> AgentReply:
    """An :class:`AgentReply` from the client's ``CreateMessageResult``."""
    content = result.get("content")
    blocks = content if isinstance(content, list) else [content]
    texts, calls = [], []
    for block in blocks:
        if not isinstance(block, Mapping):
            raise AgentFailed(
                name,
                f"the client's sampling result has no content: {str(result)[:200]}",
                retryable=False,
            )
        if block.get("type") == "text":
            texts.append(str(block.get("text", "")))
        elif block.get("type") == "tool_use":
            calls.append(
                ToolCall(
                    str(block.get("id")), str(block.get("name")), dict(block.get("input") or {})
                )
            )
        else:
            raise AgentFailed(
                name,
                f"the client answered with {block.get('type')!r} content; "
                "only text and tool_use can be used",
                retryable=False,
            )
    return AgentReply(Message(role="assistant", content="".join(texts), tool_calls=calls))


class SamplingAgent:
    """Answers through the connected client's ``sampling/createMessage``."""

    def __init__(self, name: str, settings: _Settings) -> None:
        self.name = name
        self.max_concurrency: int | None = None
        self.settings = settings

    async def complete(self, request: AgentRequest) -> AgentReply:
        """Send the conversation to a client and return its answer."""
        if request.context is None:
            raise AgentFailed(
                self.name, "sampling needs a step's context (a run on a host)", retryable=False
            )
        result = await request.context.sample(
            to_params(request, self.settings), timeout=self.settings.timeout
        )
        return from_result(self.name, result)


class SamplingProvider:
    """Makes :class:`SamplingAgent` s from ``provider = "sampling"`` tables.

    Example::

        [agents.assistant]
        provider = "sampling"
        model = "claude-sonnet"       # a hint; the client chooses
        max_tokens = 2048
    """

    name = "sampling"

    def create(self, name: str, config: Mapping[str, Any]) -> SamplingAgent:
        """Validate the table and build the agent; a bad table raises ``ValueError``."""
        return SamplingAgent(name, agent_settings(_Settings, name, "sampling", config))


@hookimpl
def register_agents(register: RegisterAgent) -> None:
    """Register the ``sampling`` agent provider."""
    register(SamplingProvider())
