"""An example plait plugin package: one step type and one tool, registered through hooks."""

from __future__ import annotations

import plait
from plait.plugins import RegisterStepType, RegisterTool, StepConfig, StepContext, StepType

__version__ = "0.1.0"


@plait.tool("hello.greet", cacheable=True, blocking=False)
def greet(name: str, punctuation: str = "!") -> str:
    """Greet someone by name."""
    return f"hello, {name}{punctuation}"


class GreetConfig(StepConfig):
    """Fields of a greet step."""

    greet: str
    times: int = 1


class Greet(StepType[GreetConfig]):
    """A `greet` step: ``{id: hi, greet: "${inputs.name}", times: 2}`` → ``"hi ada, hi ada"``."""

    key = "greet"
    description = "Greet someone, a number of times."
    Config = GreetConfig

    async def run(self, ctx: StepContext, config: GreetConfig) -> str:
        """Repeat the greeting `times` times."""
        await ctx.emit("hello.greeting", {"name": config.greet})
        return ", ".join(f"hi {config.greet}" for _ in range(config.times))


@plait.hookimpl
def register_step_types(register: RegisterStepType) -> None:
    """Add the `greet` step type."""
    register(Greet)


@plait.hookimpl
def register_tools(register: RegisterTool) -> None:
    """Add the `hello.greet` tool."""
    register(greet)
