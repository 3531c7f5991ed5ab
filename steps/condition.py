"""The ``if`` step: evaluate a condition and choose which gated steps run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator, model_validator

from plait.plugins import StepConfig, StepContext, StepType, hookimpl

if TYPE_CHECKING:
    from collections.abc import Mapping

    from plait.plugins.types import RegisterStepType

__all__ = ["IfConfig", "IfStep"]


class IfConfig(StepConfig):
    """The fields of an ``if`` step."""

    if_: Any = Field(alias="if")
    """The condition, rendered to a native value by the engine."""
    then: list[str] = Field(default_factory=list)
    """Steps to run when the condition holds."""
    else_: list[str] = Field(default_factory=list, alias="else")
    """Steps to run when it does not."""

    @field_validator("then", "else_", mode="before")
    @classmethod
    def _one_id(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _disjoint(self) -> IfConfig:
        both = sorted(set(self.then) & set(self.else_))
        if both:
            raise ValueError(f"steps listed in both `then` and `else`: {', '.join(both)}")
        return self


class IfStep(StepType[IfConfig]):
    """Evaluate a condition; the steps of the branch not taken are skipped.

    Fields:
        if: an expression (``"steps.a.output > 3"`` or ``"${steps.a.output > 3}"``); its
            truthiness decides.
        then: ids of sibling steps that run only when it is true.
        else: ids of sibling steps that run only when it is false.

    The listed steps wait for this one. A single id may be written without the list.

    Output: the condition as a bool.

    Example::

        - id: good
          if: "steps.review.output.score >= 0.8"
          then: [approve]
          else: [comment]
    """

    key = "if"
    description = "Evaluate a condition; skip the steps of the branch not taken."
    uses_capacity = False
    inline = True
    expressions = frozenset({"if"})

    Config = IfConfig

    def branches(self, config: Mapping[str, Any]) -> dict[str, list[str]]:
        """The ``then`` and ``else`` step ids, as written."""
        return {"then": _ids(config.get("then")), "else": _ids(config.get("else"))}

    async def run(self, ctx: StepContext, config: IfConfig) -> bool:
        """Select the branch and return the condition's truth."""
        value = bool(config.if_)
        ctx.select_branch("then" if value else "else")
        return value


def _ids(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


@hookimpl
def register_step_types(register: RegisterStepType) -> None:
    """Register the ``if`` step type."""
    register(IfStep)
