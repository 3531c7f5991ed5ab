"""The ``delay`` step: wait a number of seconds, or until a wall-clock time."""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator, model_validator

from plait.plugins import StepConfig, StepContext, StepType, hookimpl

if TYPE_CHECKING:
    from plait.plugins.types import RegisterStepType

__all__ = ["DelayConfig", "DelayStep"]

MAX_DELAY = 31 * 24 * 3600.0
"""The longest relative delay, in seconds (31 days)."""


class DelayConfig(StepConfig):
    """The fields of a ``delay`` step."""

    delay: float | None = Field(default=None, ge=0, le=MAX_DELAY)
    """Seconds to wait."""
    until: float | None = Field(default=None, allow_inf_nan=False)
    """The wall-clock deadline, as epoch seconds (timestamps are converted)."""

    @field_validator("until", mode="before")
    @classmethod
    def _timestamp(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("until: expected a timestamp or epoch seconds, got a bool")
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
            try:
                value = datetime.fromisoformat(value.strip())
            except ValueError:
                raise ValueError(
                    f"until: {value!r} is not an ISO-8601 timestamp "
                    "(e.g. 2025-06-01T09:00:00Z) or epoch seconds"
                ) from None
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise ValueError(
                    f"until: {value.isoformat()} has no timezone; add one, e.g. Z or +02:00"
                )
            return value.timestamp()
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> DelayConfig:
        if (self.delay is None) == (self.until is None):
            raise ValueError("give exactly one of `delay` (seconds) or `until` (a timestamp)")
        return self

    def deadline(self, now: float) -> float:
        """The wall-clock time to wake up, for a step starting at ``now``."""
        return self.until if self.until is not None else now + (self.delay or 0.0)


class DelayStep(StepType[DelayConfig]):
    """Wait a number of seconds, or until a timestamp; the deadline survives a host restart.

    Fields:
        delay: seconds to wait (0 to 31 days).
        until: an ISO-8601 timestamp with a timezone (``2025-06-01T09:00:00Z``) or epoch
            seconds. A time in the past does not wait.

    Give exactly one; a step with only ``until`` names its type explicitly. The deadline is
    kept with the run before the step sleeps (and told in a ``delay.scheduled`` event), so a
    host restart neither restarts the wait nor forgets it: a deadline that passed while the
    host was down ends the step as soon as the run resumes.

    Output: null.

    Example::

        - {id: pause, delay: 10}
        - {id: morning, type: delay, until: "${inputs.start_at}"}
    """

    key = "delay"
    description = "Wait a number of seconds, or until a timestamp."
    uses_capacity = False

    Config = DelayConfig

    async def run(self, ctx: StepContext, config: DelayConfig) -> None:
        """Record the deadline (kept across a restart), then sleep until it."""
        deadline = await ctx.checkpoint("until", config.deadline(time.time()))
        await ctx.emit("delay.scheduled", {"until": deadline})
        await ctx.sleep_until(deadline)


@hookimpl
def register_step_types(register: RegisterStepType) -> None:
    """Register the ``delay`` step type."""
    register(DelayStep)
