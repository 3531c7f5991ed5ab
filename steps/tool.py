"""The ``tool`` step: call one registered tool with rendered arguments."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from plait.plugins import StepConfig, StepContext, StepType, hookimpl

if TYPE_CHECKING:
    from plait.plugins.types import RegisterStepType

__all__ = ["ToolConfig", "ToolStep"]


class ToolConfig(StepConfig):
    """The fields of a ``tool`` step."""

    tool: str = Field(min_length=1)
    """The registered tool name."""
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    """The tool's arguments."""
    executor: str | None = Field(None, min_length=1)
    """Where the call runs: the name of an executor (``dask``) instead of where the tool says
    (its own ``executor``, else the host's process)."""


class ToolStep(StepType[ToolConfig]):
    """Call a registered tool with the step's ``with`` arguments, through the result cache.

    Fields:
        tool: the tool's registered name (``git.diff``, ``time.get_current_time``).
        with: the arguments, a mapping rendered before the call (default: none).
        executor: run the call on this executor (``[executors.<name>]`` of the host), a Dask
            cluster say, rather than where the tool says (default: the tool's choice, else
            the host's process). The host checks the arguments, consults the cache and
            records everything; the executor's worker only runs the function.

    The step's ``cache:`` policy is applied by the engine inside the call, before any executor
    is asked: a cached result never leaves the host.

    Output: whatever the tool returns.

    Example::

        - id: files
          tool: git.changed_files
          with: {repo: "${inputs.repo}", pr: "${inputs.pr}"}
          cache: {ttl: 3600}
        - id: model
          tool: ml.fit
          with: {data: "${steps.files.output}"}
          executor: dask
    """

    key = "tool"
    description = "Call a registered tool with the `with` arguments."

    Config = ToolConfig
    tool_arguments = "with"

    def references(self, config: Mapping[str, Any]) -> dict[str, list[str]]:
        """The tool it calls and the executor it names, for validation."""
        refs: dict[str, list[str]] = {}
        name = config.get("tool")
        if isinstance(name, str):
            refs["tools"] = [name]
        executor = config.get("executor")
        if isinstance(executor, str):
            refs["executors"] = [executor]
        return refs

    def output_schema(
        self,
        config: Mapping[str, Any],
        tool_output_schema: Callable[[str], dict[str, Any] | None],
    ) -> dict[str, Any] | None:
        """The output schema its tool declares, for validating paths into its output."""
        name = config.get("tool")
        return tool_output_schema(name) if isinstance(name, str) else None

    async def run(self, ctx: StepContext, config: ToolConfig) -> Any:
        """Call the tool and return its result."""
        if config.executor is None:  # as before: a context of an older contract works too
            return await ctx.call_tool(config.tool, config.with_)
        return await ctx.call_tool(config.tool, config.with_, executor=config.executor)


@hookimpl
def register_step_types(register: RegisterStepType) -> None:
    """Register the ``tool`` step type."""
    register(ToolStep)
