"""The ``scripted`` agent provider: deterministic replies and tool calls, for tests and demos."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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

__all__ = ["ScriptedAgent", "ScriptedProvider"]


class _Call(BaseModel):
    """One tool call of a ``calls`` entry."""

    model_config = ConfigDict(extra="forbid")

    tool: str = Field(min_length=1)
    args: dict[str, Any] = Field(default_factory=dict)


class _Entry(BaseModel):
    """One scripted reply: exactly one of ``say``, ``json``, ``call`` or ``calls``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    say: str | None = None
    json_: Any = Field(default=None, alias="json")
    call: str | None = Field(default=None, min_length=1)
    args: dict[str, Any] | None = None
    calls: list[_Call] | None = Field(default=None, min_length=1)
    when: str | None = None

    @field_validator("when")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"`when` is not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> _Entry:
        kinds = [
            k.rstrip("_") for k in ("say", "json_", "call", "calls") if k in self.model_fields_set
        ]
        if len(kinds) != 1:
            got = ", ".join(kinds) if kinds else "none of them"
            raise ValueError(f"give exactly one of say, json, call, calls (got {got})")
        if self.args is not None and self.call is None:
            raise ValueError("`args` goes with `call` (inside `calls`, give each its own args)")
        return self


class _Settings(BaseModel):
    """The ``[agents.<name>]`` table of a scripted agent."""

    model_config = ConfigDict(extra="forbid")

    provider: str = "scripted"
    model: str | None = None
    system: str | None = None
    max_concurrency: int | None = Field(default=None, ge=1)
    script: list[_Entry] = Field(min_length=1)


class ScriptedAgent:
    """Replies from a fixed script: the k-th assistant turn of a conversation uses entry k.

    The position comes from the request itself (the assistant messages already in it), so the
    agent keeps no state and replays identically after a restart.
    """

    def __init__(self, name: str, settings: _Settings) -> None:
        self.name = name
        self.max_concurrency = settings.max_concurrency
        self.system = settings.system
        """The configured default system prompt; recorded, not used by the script."""
        self.script = settings.script

    async def complete(self, request: AgentRequest) -> AgentReply:
        """The next scripted reply for the conversation in ``request``."""
        messages = request.messages
        k = sum(1 for m in messages if m.role == "assistant")
        if k >= len(self.script):
            raise AgentFailed(
                self.name, f"script exhausted after {len(self.script)} replies", retryable=False
            )
        entry = self.script[k]
        last = next((m.content for m in reversed(messages) if m.role != "assistant"), "")
        if entry.when is not None and not re.search(entry.when, last):
            raise AgentFailed(
                self.name,
                f"script[{k}] expects the last message to match "
                f"/{entry.when}/, but it is {_brief(last)}",
                retryable=False,
            )
        message = _reply(entry, last, sum(len(m.tool_calls) for m in messages))
        usage = {
            "prompt_tokens": sum(len(m.content) for m in messages) // 4,
            "completion_tokens": len(message.content) // 4,
        }
        return AgentReply(message=message, usage=usage)


def _reply(entry: _Entry, last: str, calls_so_far: int) -> Message:
    if entry.say is not None:
        return Message(role="assistant", content=entry.say.replace("{last}", last))
    if entry.call is not None:
        calls = [_Call(tool=entry.call, args=entry.args or {})]
    elif entry.calls is not None:
        calls = entry.calls
    else:
        return Message(role="assistant", content=json.dumps(entry.json_, ensure_ascii=False))
    return Message(
        role="assistant",
        tool_calls=[
            ToolCall(id=f"call_{calls_so_far + i + 1}", name=c.tool, arguments=dict(c.args))
            for i, c in enumerate(calls)
        ],
    )


def _brief(text: str, limit: int = 200) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


class ScriptedProvider:
    """Makes :class:`ScriptedAgent` s from ``provider = "scripted"`` tables.

    Example::

        [agents.demo]
        provider = "scripted"
        script = [
          {call = "git.diff", args = {pr = 7}},
          {say = "The diff: {last}", when = "diff"},
          {json = {score = 0.9, text = "ok"}},
        ]
    """

    name = "scripted"

    def create(self, name: str, config: Mapping[str, Any]) -> ScriptedAgent:
        """Validate the table and build the agent; a bad table raises ``ValueError``."""
        return ScriptedAgent(name, agent_settings(_Settings, name, "scripted", config))


@hookimpl
def register_agents(register: RegisterAgent) -> None:
    """Register the ``scripted`` agent provider."""
    register(ScriptedProvider())
