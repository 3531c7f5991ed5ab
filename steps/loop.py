"""The ``loop`` step: run a body of steps for each item of a list, or while a condition holds."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import Field, model_validator

from plait.errors import RunError
from plait.plugins import StepConfig, StepContext, StepType, hookimpl

if TYPE_CHECKING:
    from collections.abc import Mapping

    from plait.plugins.types import RegisterStepType

__all__ = ["LoopConfig", "LoopError", "LoopLimitExceeded", "LoopStep"]


class LoopError(RunError):
    """A loop was given something it cannot iterate."""

    kind = "loop"
    retryable = False


class LoopLimitExceeded(LoopError):
    """A loop would run more than its ``max_iterations``."""

    kind = "loop_limit"


class LoopConfig(StepConfig):
    """The fields of a ``loop`` step."""

    loop: Any = None
    """The list to iterate (rendered by the engine); absent for a while-loop."""
    while_: Any = Field(default=None, alias="while")
    """The compiled condition of a while-loop (rendered by the step)."""
    steps: Any = None
    """The body, as written; the engine compiles it into a scope (label ``steps``) and
    leaves it out of the config it renders for a run, so nothing here relies on it."""
    concurrency: int = Field(default=1, ge=1, le=1000)
    """For-each iterations at once."""
    max_iterations: int = Field(default=1000, ge=1, le=100_000)
    """The most iterations allowed."""
    output: Any = None
    """The compiled per-iteration output template, or ``None`` for the last step's."""

    @model_validator(mode="after")
    def _one_mode(self) -> LoopConfig:
        over = "loop" in self.model_fields_set
        if over and self.while_ is not None:
            raise ValueError("give either `loop` (a list to iterate) or `while`, not both")
        if not over and self.while_ is None:
            raise ValueError("a loop needs `loop: <list>` (for each) or `while: <expression>`")
        if not over and self.concurrency != 1:
            raise ValueError("`concurrency` applies to for-each loops only, not `while`")
        return self


class LoopStep(StepType[LoopConfig]):
    """Run a body of steps for each item of a list, or while a condition holds.

    Example, for each (the value of ``loop`` is the list)::

        - id: each
          loop: "${inputs.files}"
          concurrency: 4
          steps:
            - {id: fetch, tool: http.get, with: {url: "${item}"}}
          output: "${steps.fetch.output.status}"

    Example, while (name the type and give ``while``)::

        - id: poll
          type: loop
          while: "index == 0 or item.state != 'done'"
          max_iterations: 60
          steps:
            - {id: check, tool: jobs.status, with: {job: "${inputs.job}"}}

    Fields:
        loop: the list to iterate; the body sees ``item`` and ``index``.
        while: an expression evaluated before every iteration (the first included); it sees
            ``index`` (the iteration about to run) and ``item`` (the previous iteration's
            output, null before the first). The body sees the same two roots.
        steps: the body, a list of steps forming their own scope.
        concurrency: iterations of a for-each loop running at once (1 to 1000, default 1).
        max_iterations: the most iterations allowed (default 1000, at most 100000); a longer
            list, or a condition still true after that many, fails the step.
        output: a template rendered in the body's scope after each iteration; default: the
            output of the body's last step.

    Output: the list of the iterations' outputs, in order.
    """

    key = "loop"
    description = "Run a body of steps for each item of a list, or while a condition holds."
    uses_capacity = False
    body_roots = frozenset({"item", "index"})
    deferred = frozenset({"while", "output", "steps"})
    expressions = frozenset({"while"})

    Config = LoopConfig

    def bodies(self, config: Mapping[str, Any]) -> dict[str, list[Any]]:
        """The loop body, labelled ``steps``; empty when missing, which the engine reports."""
        steps = config.get("steps")
        return {"steps": steps if isinstance(steps, list) else []}

    async def run(self, ctx: StepContext, config: LoopConfig) -> list[Any]:
        """Run the iterations and return their outputs."""
        if "loop" in config.model_fields_set:
            return await self._for_each(ctx, config)
        return await self._while(ctx, config)

    async def _for_each(self, ctx: StepContext, config: LoopConfig) -> list[Any]:
        items = config.loop
        if not isinstance(items, list | tuple):
            raise LoopError(f"loop expects a list, got {_json_type(items)}")
        if len(items) > config.max_iterations:
            raise LoopLimitExceeded(
                f"loop over {len(items)} items exceeds max_iterations={config.max_iterations}"
            )

        def iteration(i: int) -> Callable[[], Awaitable[Any]]:
            return lambda: ctx.run_body(
                "steps", vars={"item": items[i], "index": i}, output=config.output, key=str(i)
            )

        return await _run_all([iteration(i) for i in range(len(items))], config.concurrency)

    async def _while(self, ctx: StepContext, config: LoopConfig) -> list[Any]:
        outputs: list[Any] = []
        last: Any = None
        index = 0
        while ctx.render(config.while_, index=index, item=last):
            if index >= config.max_iterations:
                raise LoopLimitExceeded(
                    f"while-loop condition still true after max_iterations={config.max_iterations}"
                )
            last = await ctx.run_body(
                "steps", vars={"index": index, "item": last}, output=config.output, key=str(index)
            )
            outputs.append(last)
            index += 1
        return outputs


async def _run_all(jobs: Sequence[Callable[[], Awaitable[Any]]], concurrency: int) -> list[Any]:
    """Run ``jobs`` with at most ``concurrency`` at once; results in order.

    The first failure cancels the jobs still running and is raised as itself (not wrapped in
    an exception group).
    """
    results: list[Any] = [None] * len(jobs)
    if concurrency <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            results[i] = await job()
        return results
    pending = iter(enumerate(jobs))
    failures: list[Exception] = []

    async def worker(scope: anyio.CancelScope) -> None:
        for i, job in pending:
            try:
                results[i] = await job()
            except Exception as exc:
                if not failures:
                    failures.append(exc)
                    scope.cancel()
                return

    async with anyio.create_task_group() as tg:
        for _ in range(min(concurrency, len(jobs))):
            tg.start_soon(worker, tg.cancel_scope)
    if failures:
        raise failures[0]
    return results


def _json_type(value: Any) -> str:
    names = {
        dict: "an object",
        str: "a string",
        bool: "a bool",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


@hookimpl
def register_step_types(register: RegisterStepType) -> None:
    """Register the ``loop`` step type."""
    register(LoopStep)
