"""What the host tells about itself beyond its answers: metrics (``metrics``) and traces
(``tracing``). A layer of its own, below everything that records, above the configuration."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the libraries behind them load only when a host uses them
    from plait.telemetry.metrics import Metrics
    from plait.telemetry.tracing import Tracing

__all__ = ["Metrics", "Tracing", "tokens"]


def tokens(usage: Mapping[str, int]) -> tuple[int | None, int | None]:
    """(input, output) tokens of a provider's usage, under either naming (OpenAI's
    ``prompt``/``completion``, or ``input``/``output``); ``None`` for what it does not say.
    Metrics and traces read a completion's usage the same way."""
    given = usage.get("prompt_tokens", usage.get("input_tokens"))
    taken = usage.get("completion_tokens", usage.get("output_tokens"))
    return given, taken
