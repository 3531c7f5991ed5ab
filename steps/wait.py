"""The ``wait`` step: wait for an external signal sent to the run."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from plait.errors import RunError
from plait.plugins import StepConfig, StepContext, StepType, hookimpl

if TYPE_CHECKING:
    from plait.plugins.types import RegisterStepType

__all__ = ["SignalTimeout", "TimedWaitConfig", "WaitConfig", "WaitStep"]


class SignalTimeout(RunError):
    """A ``wait`` step's signal did not arrive within its ``within`` seconds."""

    kind = "signal_timeout"
    retryable = False

    def __init__(self, event: str, within: float) -> None:
        self.event = event
        self.within = within
        super().__init__(f"signal {event!r} did not arrive within {within:g}s")


class TimedWaitConfig(StepConfig):
    """What every step that waits for someone has: ``within``, ``on_timeout``, ``default``
    (the ``wait`` and ``input`` steps)."""

    within: float | None = Field(default=None, gt=0)
    """Seconds to wait at most; ``None`` waits forever."""
    default: Any = None
    """The output when nothing comes in time and ``on_timeout`` is ``default``."""
    on_timeout: Literal["fail", "default"] = "fail"
    """What a timeout does: fail the step, or output ``default``."""

    @model_validator(mode="after")
    def _timeout_fields(self) -> TimedWaitConfig:
        given = self.model_fields_set & {"default", "on_timeout"}
        if given and self.within is None:
            names = " and ".join(f"`{n}`" for n in sorted(given))
            raise ValueError(f"{names} need(s) `within` (the seconds to wait at most)")
        if "default" in given and "on_timeout" not in given:
            self.on_timeout = "default"
        return self


class WaitConfig(TimedWaitConfig):
    """The fields of a ``wait`` step."""

    wait: str = Field(min_length=1)
    """The signal's event name."""


class WaitStep(StepType[WaitConfig]):
    """Wait until the run receives a signal (``runs/signal``) and output its data.

    Fields:
        wait: the signal's event name.
        within: seconds to wait at most (default: forever). ``timeout``, the common field,
            limits one attempt instead and fails it.
        on_timeout: ``fail`` (default) or ``default``: output ``default`` when time runs out.
        default: the output on timeout. Giving it implies ``on_timeout: default``.

    Signals sent before the step waits are kept for it, and both the signals and the ``within``
    deadline survive a host restart.

    Output: the signal's data (or ``default`` on timeout).

    Example::

        - id: approval
          wait: approved
          within: 86400
          default: {approved: false}
    """

    key = "wait"
    description = "Wait for an external signal sent to the run."
    uses_capacity = False

    Config = WaitConfig

    def signals(self, config: Mapping[str, Any]) -> list[str]:
        """The event it waits for, so ``runs/signal`` knows it before the step waits."""
        event = config.get("wait")
        return [event] if isinstance(event, str) else []

    async def run(self, ctx: StepContext, config: WaitConfig) -> Any:
        """Wait for the signal; on timeout fail or return the default."""
        timeout = None
        if config.within is not None:  # the deadline is kept, so a restart does not extend it
            deadline = await ctx.checkpoint("deadline", time.time() + config.within)
            timeout = max(0.0, deadline - time.time())
        try:
            return await ctx.wait_signal(config.wait, timeout=timeout)
        except TimeoutError:
            if config.on_timeout == "default":
                return config.default
            raise SignalTimeout(config.wait, config.within or 0.0) from None


@hookimpl
def register_step_types(register: RegisterStepType) -> None:
    """Register the ``wait`` step type."""
    register(WaitStep)
