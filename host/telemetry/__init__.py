"""What the host tells about itself beyond its answers: metrics (``metrics``) and traces
(``tracing``). A layer of its own, below everything that records, above the configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the libraries behind them load only when a host uses them
    from plait.telemetry.metrics import Metrics
    from plait.telemetry.tracing import Tracing

__all__ = ["Metrics", "Tracing"]
