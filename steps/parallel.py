"""The ``parallel`` step: named branches of steps run concurrently (fork-join)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import anyio
from pydantic import model_validator

from plait.errors import RunError
from plait.plugins import StepConfig, StepContext, StepType, hookimpl

if TYPE_CHECKING:
    from collections.abc import Mapping

    from plait.plugins.types import RegisterStepType

__all__ = ["BranchesFailed", "ParallelConfig", "ParallelStep"]

_NOT_BRANCHES = (list, str, int, float, bool)
"""Values that cannot be a mapping of branches."""


class BranchesFailed(RunError):
    """Every branch of a ``wait: any`` parallel step failed; ``errors`` maps branch → error."""

    kind = "parallel"

    def __init__(self, errors: dict[str, Exception]) -> None:
        self.errors = {name: str(exc) for name, exc in errors.items()}
        self.retryable = any(getattr(exc, "retryable", True) for exc in errors.values())
        lines = "\n".join(f"  - {name}: {msg}" for name, msg in self.errors.items())
        super().__init__(f"all {len(errors)} branches failed\n{lines}")

    def to_dict(self) -> dict[str, Any]:
        """The stored error, with each branch's error."""
        return {**super().to_dict(), "branches": dict(self.errors)}


class ParallelConfig(StepConfig):
    """The fields of a ``parallel`` step."""

    parallel: Any = None
    """The branches, as written; the engine compiles each into a scope (labelled with
    its name) and leaves them out of the config it renders for a run."""
    wait: Literal["all", "any"] = "all"
    """Join all branches, or take the first to succeed."""

    @model_validator(mode="after")
    def _branches(self) -> ParallelConfig:
        if isinstance(self.parallel, dict):
            _check_branches(self.parallel)
        elif isinstance(self.parallel, _NOT_BRANCHES):
            raise ValueError("`parallel` must map branch names to lists of steps")
        return self


class ParallelStep(StepType[ParallelConfig]):
    """Run named branches of steps concurrently and join them.

    Fields:
        parallel: branch name → list of steps; each branch is its own scope.
        wait: ``all`` (default): every branch must succeed, the first failure cancels the rest
            and fails the step. ``any``: the first branch to succeed wins and the others are
            cancelled; the step fails only when every branch fails, listing their errors.

    A branch's output is its last step's output.

    Output: ``{branch: output}`` (with ``wait: any``, only the winner).

    Example::

        - id: research
          parallel:
            web: [{id: search, tool: web.search, with: {q: "${inputs.topic}"}}]
            docs: [{id: grep, tool: docs.grep, with: {pattern: "${inputs.topic}"}}]
          wait: all
    """

    key = "parallel"
    description = "Run named branches of steps concurrently (fork-join)."
    uses_capacity = False
    deferred = frozenset({"parallel"})

    Config = ParallelConfig

    def bodies(self, config: Mapping[str, Any]) -> dict[str, list[Any]]:
        """One body per branch, labelled with the branch's name.

        A missing ``parallel`` (a step written with ``type: parallel``) is one empty body, so
        the engine reports it; other shapes are reported by ``Config``.
        """
        branches = config.get("parallel")
        if branches is None:
            return {"parallel": []}
        if not isinstance(branches, dict):
            return {}
        return {str(name): steps for name, steps in branches.items() if isinstance(steps, list)}

    async def run(self, ctx: StepContext, config: ParallelConfig) -> dict[str, Any]:
        """Run the branches and join them as ``wait`` says."""
        names = list(self.bodies(ctx.definition))
        if config.wait == "any":
            return await _first(ctx, names)
        return await _every(ctx, names)


def _check_branches(branches: dict[Any, Any]) -> None:
    if not branches:
        raise ValueError("`parallel` needs at least one branch")
    for name, steps in branches.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"branch name {name!r} must be a non-empty string")
        if not isinstance(steps, list) or not steps:
            raise ValueError(f"branch {name!r} must be a non-empty list of steps")


async def _every(ctx: StepContext, names: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    failures: list[Exception] = []

    async def branch(name: str, scope: anyio.CancelScope) -> None:
        try:
            results[name] = await ctx.run_body(name, key=name)
        except Exception as exc:
            if not failures:
                failures.append(exc)
                scope.cancel()

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(branch, name, tg.cancel_scope)
    if failures:
        raise failures[0]
    return {name: results[name] for name in names}


async def _first(ctx: StepContext, names: list[str]) -> dict[str, Any]:
    winner: dict[str, Any] = {}
    errors: dict[str, Exception] = {}

    async def branch(name: str, scope: anyio.CancelScope) -> None:
        try:
            output = await ctx.run_body(name, key=name)
        except Exception as exc:
            errors[name] = exc
            return
        if not winner:
            winner[name] = output
            scope.cancel()

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(branch, name, tg.cancel_scope)
    if winner:
        return winner
    raise BranchesFailed({name: errors[name] for name in names if name in errors})


@hookimpl
def register_step_types(register: RegisterStepType) -> None:
    """Register the ``parallel`` step type."""
    register(ParallelStep)
