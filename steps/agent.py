"""The ``agent`` step: a conversation turn with a configured agent, with tools and a schema."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from pydantic import Field

from plait.errors import AgentFailed, RunCancelled, RunError
from plait.plugins import (
    Agent,
    AgentReply,
    AgentRequest,
    Message,
    StepConfig,
    StepContext,
    StepType,
    ToolCall,
    hookimpl,
)

if TYPE_CHECKING:
    from plait.plugins.types import RegisterStepType

__all__ = ["AgentConfig", "AgentStep", "extract_json"]


class AgentConfig(StepConfig):
    """The fields of an ``agent`` step."""

    agent: str = Field(min_length=1)
    """The configured agent's name."""
    prompt: str
    """The user message."""
    system: str | None = None
    """A system prompt for a conversation that has none."""
    conversation: str | None = Field(default=None, min_length=1)
    """The conversation's name; ``None`` for ``agent:<agent>``."""
    tools: list[str] = Field(default_factory=list)
    """Tools the agent may call."""
    max_turns: int = Field(default=8, ge=1, le=100)
    """Replies allowed in this step."""
    output_schema: dict[str, Any] | None = None
    """JSON Schema of the final answer."""
    repair_turns: int = Field(default=2, ge=0, le=5)
    """Retries of a final answer that does not match ``output_schema``."""


class AgentStep(StepType[AgentConfig]):
    """Send a prompt to a configured agent inside a conversation; let it call tools.

    Fields:
        agent: the agent's name (``[agents.<name>]`` in the host config).
        prompt: the user message.
        system: a system prompt, added when the conversation has none yet.
        conversation: the conversation to continue (default ``agent:<agent>``, one per run
            and agent); later steps naming it see the whole history.
        tools: tools the agent may call (default none). A call to any other tool is answered
            with an error message instead of being run.
        max_turns: agent replies allowed in this step, tool rounds and repairs included
            (1 to 100, default 8).
        output_schema: when given, the final answer must be JSON matching this JSON Schema
            (plain, or in a fenced block); the parsed value is the output.
        repair_turns: times the agent is told what was wrong with a non-matching answer and
            asked again (0 to 5, default 2).

    Messages are added to the conversation turn by turn, so a failure keeps the history up to
    the last complete turn. Events: ``agent.message`` per reply (with its usage),
    ``agent.tool_call`` per call, ``agent.usage`` with the totals at the end.

    Output: the final answer's text, or its parsed JSON when ``output_schema`` is set.

    Example::

        - id: review
          agent: reviewer
          conversation: "pr-${inputs.pr}"
          prompt: "Review these files: ${steps.files.output | join(', ')}"
          tools: [git.diff]
          output_schema: {type: object, required: [score], properties: {score: {type: number}}}
    """

    key = "agent"
    description = "Ask a configured agent, letting it call the listed tools."

    Config = AgentConfig

    def references(self, config: Mapping[str, Any]) -> dict[str, list[str]]:
        """The agent it asks and the tools it offers, for validation."""
        agent = config.get("agent")
        tools = config.get("tools")
        return {
            "agents": [agent] if isinstance(agent, str) else [],
            "tools": [t for t in tools if isinstance(t, str)] if isinstance(tools, list) else [],
        }

    def output_schema(
        self,
        config: Mapping[str, Any],
        tool_output_schema: Callable[[str], dict[str, Any] | None],
    ) -> dict[str, Any] | None:
        """Its ``output_schema``: the parsed answer matches it."""
        schema = config.get("output_schema")
        return schema if isinstance(schema, dict) else None

    async def run(self, ctx: StepContext, config: AgentConfig) -> Any:
        """Converse until the agent gives a final answer; return it."""
        return await _Session(ctx, config).run()


class _Session:
    """One agent step's exchange: the messages so far and those not yet stored."""

    def __init__(self, ctx: StepContext, config: AgentConfig) -> None:
        self.ctx = ctx
        self.config = config
        self.name = config.conversation or f"agent:{config.agent}"
        self.messages: list[Message] = []
        self.unsaved: list[Message] = []
        self.usage: dict[str, int] = {}
        self.turns = 0

    async def run(self) -> Any:
        cfg = self.config
        validator = _schema_validator(cfg) if cfg.output_schema is not None else None
        agent = self.ctx.agent(cfg.agent)
        specs = self.ctx.tool_specs(cfg.tools) if cfg.tools else []
        self.messages = list(await self.ctx.conversation(self.name))
        if cfg.system and not any(m.role == "system" for m in self.messages):
            self._add(Message(role="system", content=cfg.system))
        self._add(Message(role="user", content=cfg.prompt))
        try:
            return await self._converse(agent, specs, validator)
        except AgentFailed:
            await self._emit_usage()
            raise

    async def _converse(
        self, agent: Agent, specs: list[dict[str, Any]], validator: Validator | None
    ) -> Any:
        cfg = self.config
        repairs = cfg.repair_turns
        for _ in range(cfg.max_turns):
            reply = await self._complete(agent, specs)
            if reply.tool_calls:
                await self._call_tools(reply.tool_calls)
                await self._save()
                continue
            if validator is None:
                return await self._finish(reply.content)
            value, problems = _check(reply.content, validator)
            if not problems:
                return await self._finish(value)
            if repairs == 0:
                await self._save()
                raise AgentFailed(
                    cfg.agent,
                    f"final answer does not match output_schema after {cfg.repair_turns} "
                    f"repair turn(s): {'; '.join(problems)}",
                )
            repairs -= 1
            self._add(Message(role="user", content=_repair_prompt(problems)))
        await self._save()
        raise AgentFailed(cfg.agent, f"did not finish within max_turns={cfg.max_turns}")

    async def _complete(self, agent: Agent, specs: list[dict[str, Any]]) -> Message:
        cfg, ctx = self.config, self.ctx
        request = AgentRequest(
            messages=_system_first(self.messages),
            tools=specs,
            output_schema=cfg.output_schema,
            step_id=ctx.step_id,
            run_id=ctx.run_id,
            context=ctx,
        )
        try:
            reply = await agent.complete(request)
        except RunError:
            raise
        except Exception as exc:
            raise AgentFailed(cfg.agent, f"provider error: {type(exc).__name__}: {exc}") from exc
        if not isinstance(reply, AgentReply) or not isinstance(reply.message, Message):
            raise AgentFailed(
                cfg.agent,
                f"provider returned {type(reply).__name__}, not an AgentReply",
                retryable=False,
            )
        if reply.message.role != "assistant":
            raise AgentFailed(
                cfg.agent,
                f"reply has role {reply.message.role!r}, expected 'assistant'",
                retryable=False,
            )
        self.turns += 1
        for key, count in reply.usage.items():
            if isinstance(count, int):
                self.usage[key] = self.usage.get(key, 0) + count
        self._add(reply.message)
        await ctx.emit(
            "agent.message",
            {
                "agent": cfg.agent,
                "conversation": self.name,
                "turn": self.turns,
                "message": reply.message.to_dict(),
                "usage": dict(reply.usage),
            },
        )
        return reply.message

    async def _call_tools(self, calls: list[ToolCall]) -> None:
        allowed = self.config.tools
        for call in calls:
            event: dict[str, Any] = {"id": call.id, "tool": call.name, "arguments": call.arguments}
            if call.name not in allowed:
                error = (
                    f"tool {call.name!r} is not available to this agent step; available: "
                    f"{', '.join(allowed) or 'none'}"
                )
                content = f"error: {error}"
                event["error"] = error
            else:
                try:
                    result = await self.ctx.call_tool(call.name, call.arguments, key=call.id)
                except RunCancelled:
                    raise
                except RunError as exc:
                    content = f"error: {exc}"
                    event["error"] = str(exc)
                else:
                    content = json.dumps(result, ensure_ascii=False, default=str)
                    event["result"] = result
            await self.ctx.emit("agent.tool_call", event)
            self._add(Message(role="tool", content=content, tool_call_id=call.id, name=call.name))

    def _add(self, message: Message) -> None:
        self.messages.append(message)
        self.unsaved.append(message)

    async def _save(self) -> None:
        if self.unsaved:
            await self.ctx.append_messages(self.name, self.unsaved)
            self.unsaved = []

    async def _finish(self, output: Any) -> Any:
        await self._save()
        await self._emit_usage()
        return output

    async def _emit_usage(self) -> None:
        await self.ctx.emit(
            "agent.usage",
            {
                "agent": self.config.agent,
                "conversation": self.name,
                "turns": self.turns,
                "usage": dict(self.usage),
            },
        )


def _schema_validator(cfg: AgentConfig) -> Validator:
    schema = cfg.output_schema or {}
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise AgentFailed(
            cfg.agent,
            f"output_schema is not a valid JSON Schema: {exc.json_path}: {exc.message}",
            retryable=False,
        ) from None
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _system_first(messages: list[Message]) -> list[Message]:
    """The conversation with its system messages first (one added late was appended)."""
    return sorted(messages, key=lambda m: m.role != "system")


_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n?(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_json(text: str) -> Any:
    """The JSON value in a reply: the whole text, a fenced block, or the first ``{``/``[``.

    Raises:
        ValueError: no JSON value could be read, saying why.
    """
    try:
        return json.loads(text)
    except ValueError:
        pass
    fence = _FENCE.search(text)
    if fence:
        try:
            return json.loads(fence.group(1))
        except ValueError as exc:
            raise ValueError(f"the fenced block is not valid JSON: {exc}") from None
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        raise ValueError("the reply contains no JSON value")
    try:
        return json.JSONDecoder().raw_decode(text, min(starts))[0]
    except ValueError as exc:
        raise ValueError(f"the reply is not valid JSON: {exc}") from None


def _check(content: str, validator: Validator) -> tuple[Any, list[str]]:
    try:
        value = extract_json(content)
    except ValueError as exc:
        return None, [str(exc)]
    return value, [f"{e.json_path}: {e.message}" for e in validator.iter_errors(value)]


def _repair_prompt(problems: list[str]) -> str:
    lines = "\n".join(f"- {p}" for p in problems)
    return (
        "Your answer does not match the required output schema:\n"
        f"{lines}\n"
        "Reply again with only the corrected JSON value, and nothing else."
    )


@hookimpl
def register_step_types(register: RegisterStepType) -> None:
    """Register the ``agent`` step type."""
    register(AgentStep)
