"""The ``transform`` step: compute a value from templates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plait.plugins import StepConfig, StepContext, StepType, hookimpl

if TYPE_CHECKING:
    from plait.plugins.types import RegisterStepType

__all__ = ["TransformConfig", "TransformStep"]


class TransformConfig(StepConfig):
    """The fields of a ``transform`` step."""

    transform: Any
    """The value, already rendered by the engine."""


class TransformStep(StepType[TransformConfig]):
    """Evaluate a template value, or a mapping or list of them, and output the result.

    Fields:
        transform: any value. Strings holding ``${...}`` are rendered (a string that is exactly
            one ``${expr}`` keeps its native type); other strings and values are literals.

    Output: the rendered value.

    Example::

        - id: summary
          transform:
            title: "${steps.fetch.output.title | upper}"
            count: "${steps.files.output | length}"
    """

    key = "transform"
    description = "Evaluate a value or a mapping of expressions."
    uses_capacity = False
    inline = True

    Config = TransformConfig

    async def run(self, ctx: StepContext, config: TransformConfig) -> Any:
        """Return the rendered value."""
        return config.transform


@hookimpl
def register_step_types(register: RegisterStepType) -> None:
    """Register the ``transform`` step type."""
    register(TransformStep)
