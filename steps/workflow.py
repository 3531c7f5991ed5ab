"""The ``workflow`` step: run another registered workflow as a child run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from plait.plugins import StepConfig, StepContext, StepType, hookimpl

if TYPE_CHECKING:
    from plait.plugins.types import RegisterStepType

__all__ = ["WorkflowConfig", "WorkflowStep"]


class WorkflowConfig(StepConfig):
    """The fields of a ``workflow`` step."""

    workflow: str = Field(min_length=1)
    """The child workflow's name."""
    version: int | None = Field(default=None, ge=1)
    """The version to run; ``None`` for the current one."""
    inputs: dict[str, Any] = Field(default_factory=dict)
    """The child's inputs."""


class WorkflowStep(StepType[WorkflowConfig]):
    """Run another registered workflow as a child run and wait for it.

    Fields:
        workflow: the child workflow's name.
        version: a specific version (default: the current one).
        inputs: the child's inputs, rendered (default: none).

    A failed child fails this step.

    Output: the child run's outputs (a mapping).

    Example::

        - id: lint
          workflow: lint-repo
          inputs: {repo: "${inputs.repo}"}
    """

    key = "workflow"
    description = "Run another registered workflow as a child run."
    uses_capacity = False

    Config = WorkflowConfig

    async def run(self, ctx: StepContext, config: WorkflowConfig) -> dict[str, Any]:
        """Run the child and return its outputs."""
        return await ctx.run_workflow(config.workflow, config.inputs, version=config.version)


@hookimpl
def register_step_types(register: RegisterStepType) -> None:
    """Register the ``workflow`` step type."""
    register(WorkflowStep)
