"""The ``input`` step: ask a person a question and wait for a typed answer."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import Field, field_validator

from plait.errors import RunError
from plait.plugins import StepContext, StepType, hookimpl
from plait.plugins.types import INPUT_SIGNAL_PREFIX
from plait.steps.wait import TimedWaitConfig

if TYPE_CHECKING:
    from plait.plugins.types import RegisterStepType

__all__ = ["ANSWERERS", "InputConfig", "InputStep", "InputTimeout"]

Answerer = Literal["api", "mcp", "web"]

ANSWERERS: tuple[Answerer, ...] = ("api", "mcp", "web")
"""The channels an answer may come through: ``runs/respond`` (and ``plait runs respond``), an
MCP client, the web view."""


class InputTimeout(RunError):
    """An ``input`` step's question was not answered within its ``within`` seconds."""

    kind = "input_timeout"
    retryable = False

    def __init__(self, step: str, within: float) -> None:
        self.step = step
        self.within = within
        super().__init__(f"the question of step {step!r} was not answered within {within:g}s")


class InputConfig(TimedWaitConfig):
    """The fields of an ``input`` step."""

    input: str = Field(min_length=1)
    """The message shown to the person asked (a template)."""
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    """The JSON Schema (draft 2020-12) the answer must match; ``{}`` takes any JSON."""
    answerers: list[Answerer] = Field(default_factory=lambda: list(ANSWERERS), min_length=1)
    """The channels that may answer: ``api``, ``mcp``, ``web``."""

    @field_validator("schema_")
    @classmethod
    def _a_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            Draft202012Validator.check_schema(value)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.json_path}: {exc.message}") from None
        return value

    @field_validator("answerers")
    @classmethod
    def _no_repeats(cls, value: list[Answerer]) -> list[Answerer]:
        return list(dict.fromkeys(value))


class InputStep(StepType[InputConfig]):
    """Ask a person a question and wait for an answer that fits a JSON Schema.

    Fields:
        input: the message shown to the person (a template).
        schema: the JSON Schema (draft 2020-12) of the answer; default ``{}``, any JSON. It is
            checked as a schema when the workflow is registered.
        answerers: the channels that may answer, among ``api`` (``runs/respond``, ``plait runs
            respond``), ``mcp`` and ``web`` (the web view); default: all of them.
        within: seconds to wait at most (default: forever).
        on_timeout: ``fail`` (default) or ``default``: output ``default`` when time runs out.
        default: the output on timeout. Giving it implies ``on_timeout: default``.

    While it waits the step is ``waiting`` with reason ``input``, its question is listed in the
    run's ``questions`` (``runs/get``), and an ``input.requested`` event (message, schema,
    answerers, deadline) is recorded each time it starts waiting (again after a host restart,
    with the same deadline). ``runs/respond`` checks an answer against the schema before the
    step sees it; the step then records ``input.answered`` (``by``, ``channel``). The question,
    its deadline and an answer given but not yet taken survive a host restart.

    Output: the answer (or ``default`` on timeout).

    Example::

        - id: approve
          input: "Ship ${inputs.version}?"
          schema: {type: object, required: [ok], properties: {ok: {type: boolean}}}
          within: 86400
          default: {ok: false}
    """

    key = "input"
    description = "Ask a person a question and wait for a typed answer."
    uses_capacity = False

    Config = InputConfig

    def output_schema(
        self,
        config: Mapping[str, Any],
        tool_output_schema: Callable[[str], dict[str, Any] | None],
    ) -> dict[str, Any] | None:
        """Its ``schema`` (when it has no ``default``, which need not match it)."""
        schema = config.get("schema")
        if not isinstance(schema, dict) or not schema or "default" in config:
            return None
        return schema

    async def run(self, ctx: StepContext, config: InputConfig) -> Any:
        """Ask, wait for the answer; on timeout fail or return the default."""
        deadline: float | None = None
        timeout = None
        if config.within is not None:  # the deadline is kept, so a restart does not extend it
            deadline = await ctx.checkpoint("deadline", time.time() + config.within)
            timeout = max(0.0, deadline - time.time())
        await ctx.emit(
            "input.requested",
            {
                "message": config.input,
                "schema": config.schema_,
                "answerers": list(config.answerers),
                "deadline": deadline,
            },
        )
        try:
            reply = await ctx.wait_signal(
                INPUT_SIGNAL_PREFIX + ctx.step_id, timeout=timeout, reason="input"
            )
        except TimeoutError:
            if config.on_timeout == "default":
                return config.default
            raise InputTimeout(ctx.step_id, config.within or 0.0) from None
        if not isinstance(reply, dict):  # not sent by runs/respond: taken as the answer itself
            reply = {"answer": reply}
        await ctx.emit("input.answered", {"by": reply.get("by"), "channel": reply.get("channel")})
        return reply.get("answer")


@hookimpl
def register_step_types(register: RegisterStepType) -> None:
    """Register the ``input`` step type."""
    register(InputStep)
