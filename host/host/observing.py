"""The host's levels as gauges, and the start-up check of the trace exporter's endpoint.

Levels are read when ``/metrics`` is scraped, from the parts that already know them, so they
cost nothing between scrapes.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio

from plait.engine.engine import Engine
from plait.rpc.session import Session

if TYPE_CHECKING:
    from plait.host.cluster import Cluster
    from plait.telemetry import Metrics

__all__ = ["BREAKER_STATES", "check_endpoint", "cluster_levels", "levels"]

log = logging.getLogger("plait.tracing")

BREAKER_STATES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
"""``plait_breaker_state``: a number per state, so an alert can say ``> 0``."""


def levels(metrics: Metrics, engine: Engine, sessions: Collection[Session]) -> None:
    """Report the engine's and the connections' levels as gauges of ``metrics``."""

    def runs() -> Iterable[tuple[tuple[str, ...], float]]:
        by_workflow: dict[str, int] = {}
        for run in list(engine.runs.values()):
            by_workflow[run.workflow] = by_workflow.get(run.workflow, 0) + 1
        return [((name,), float(n)) for name, n in sorted(by_workflow.items())]

    def connections() -> Iterable[tuple[tuple[str, ...], float]]:
        by_transport: dict[str, int] = {}
        for session in list(sessions):
            by_transport[session.transport] = by_transport.get(session.transport, 0) + 1
        return [((name,), float(n)) for name, n in sorted(by_transport.items())]

    def breakers() -> Iterable[tuple[tuple[str, ...], float]]:
        found = {**engine.tools.breakers.info(), **engine.agents.breakers.info()}
        return [
            ((name,), BREAKER_STATES.get(str(info["state"]), 0.0))
            for name, info in sorted(found.items())
        ]

    metrics.gauge("plait_runs_live", "Runs not yet finished, by workflow.", runs, ["workflow"])
    metrics.gauge(
        "plait_connections_open", "Connected clients, by transport.", connections, ["transport"]
    )
    metrics.gauge(
        "plait_store_pending_changes",
        "Changes queued for the durable store and not yet committed.",
        lambda: [((), float(engine.store.describe().get("pending", 0) or 0))],
    )
    metrics.gauge(
        "plait_breaker_state",
        "Circuit breakers: 0 closed, 1 half-open, 2 open.",
        breakers,
        ["breaker"],
    )


async def check_endpoint(endpoint: str, timeout: float = 3.0) -> None:
    """Say in the log when the OTLP endpoint does not answer at start: the host runs on and
    the exporter drops spans until it does."""
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with anyio.fail_after(timeout):
            stream = await anyio.connect_tcp(parts.hostname or "", port)
            await stream.aclose()
    except (OSError, TimeoutError) as exc:
        log.warning(
            "tracing: the OTLP endpoint %s does not answer (%s); spans are dropped until it does",
            endpoint,
            exc or type(exc).__name__,
        )
    else:
        log.info("tracing: exporting spans to %s", endpoint)


def cluster_levels(metrics: Metrics, cluster: Cluster) -> None:
    """Report how many hosts share the store, as this host's last heartbeat saw them."""
    metrics.gauge(
        "plait_cluster_hosts",
        "Live hosts sharing the PostgreSQL store, this one included (as of its last heartbeat).",
        lambda: [((), float(len(cluster.peers) + 1))],
    )
