"""The host's Prometheus metrics, served at ``GET /metrics`` (``prometheus_client``).

One :class:`Metrics` per host, on its own registry (not the library's global one), so two hosts
in one process, as tests and embedders run them, count apart. The parts that record are handed
it by the composition root; each records where the thing happens (a step settles in the
scheduler, a commit in the store's writer, a request in the dispatcher), and what is a level
rather than a count (runs in flight, open connections, pending changes, breaker states) is read
when scraped, through :meth:`Metrics.gauge`, so it costs nothing in between.

Labels are bounded: workflow, step type, tool, agent and model names are what the host has
registered or configured, and an RPC method outside the method table is counted as
``"other"``. No run id, step path or error message is ever a label.

The hot paths (a step settling, a tool call) keep their labelled children in a dict, as
``labels()`` costs several times an ``observe()``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from plait.telemetry import tokens

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The ``Content-Type`` of :meth:`Metrics.exposition` (the Prometheus text format)."""

STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
"""Seconds: steps run from a millisecond (a transform) to many minutes (an agent's loop)."""
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)

Gauge = Callable[[], Iterable[tuple[tuple[str, ...], float]]]
"""Reads a level when scraped: (label values, value) pairs."""


class _Levels(Collector):
    """Gauges read at scrape time from the parts that know them."""

    def __init__(self) -> None:
        self.sources: list[tuple[str, str, tuple[str, ...], Gauge]] = []

    def collect(self) -> Iterator[Metric]:
        for name, documentation, labels, read in self.sources:
            family = GaugeMetricFamily(name, documentation, labels=list(labels))
            for values, value in read():
                family.add_metric(list(values), value)
            yield family


class _LoopHistogram(Collector):
    """A histogram observed only from the event loop's thread, so without a lock: a bucket
    index by bisection and two additions (~0.3 us, where ``Histogram.observe`` takes ~0.8).
    For the per-step metrics, which a chain of trivial steps records thousands of times a
    second."""

    def __init__(
        self, name: str, documentation: str, labels: tuple[str, ...], buckets: tuple[float, ...]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.bounds = list(buckets)
        self.series: dict[tuple[str, ...], list[float]] = {}
        """Per label values: a count per bucket (the last one +Inf), then the sum."""

    def child(self, values: tuple[str, ...]) -> list[float]:
        found = self.series.get(values)
        if found is None:
            found = self.series[values] = [0.0] * (len(self.bounds) + 2)
        return found

    def observe(self, series: list[float], value: float) -> None:
        series[bisect_left(self.bounds, value)] += 1
        series[-1] += value

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labels))
        edges = [*(floatToGoString(b) for b in self.bounds), "+Inf"]
        for values, series in list(self.series.items()):
            running, buckets = 0.0, []
            for edge, count in zip(edges, series[:-1], strict=True):
                running += count
                buckets.append((edge, running))
            family.add_metric(list(values), buckets, series[-1])
        yield family


class Metrics:
    """Every metric of one host, and the recording calls its parts make."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.runs_started = Counter(
            "plait_runs_started",
            "Runs that started (or resumed after a restart).",
            ["workflow"],
            registry=r,
        )
        self.runs_finished = Counter(
            "plait_runs_finished",
            "Runs that ended, by outcome (succeeded, failed, cancelled).",
            ["workflow", "status"],
            registry=r,
        )
        self.run_seconds = Histogram(
            "plait_run_duration_seconds",
            "From a run's start to its end.",
            ["workflow", "status"],
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.step_seconds = _LoopHistogram(
            "plait_step_duration_seconds",
            "From a step's first attempt to its outcome, retries and waits included.",
            ("workflow", "step_type", "status"),
            STEP_BUCKETS,
        )
        r.register(self.step_seconds)
        self.queue_seconds = _LoopHistogram(
            "plait_step_queue_seconds",
            "What the attempts of a step that does work waited for a slot of the run's or "
            "the host's concurrency limit (ready to running).",
            ("workflow", "step_type"),
            STEP_BUCKETS,
        )
        r.register(self.queue_seconds)
        self.retries = Counter(
            "plait_step_retries",
            "Step attempts that failed and are tried again.",
            ["workflow", "step_type"],
            registry=r,
        )
        self.tool_seconds = Histogram(
            "plait_tool_call_duration_seconds",
            "Tool calls that ran (not answered from the cache), by outcome (ok, error).",
            ["tool", "outcome"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.cache_lookups = Counter(
            "plait_tool_cache_lookups",
            "Tool-cache lookups, by result (hit, miss).",
            ["tool", "result"],
            registry=r,
        )
        self.agent_requests = Counter(
            "plait_agent_requests",
            "Completions asked of agent providers, by outcome.",
            ["agent", "model", "outcome"],
            registry=r,
        )
        self.agent_seconds = Histogram(
            "plait_agent_request_duration_seconds",
            "One completion, limits and budget waits included.",
            ["agent", "model"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.agent_tokens = Counter(
            "plait_agent_tokens",
            "Tokens agent providers reported, by kind (input, output).",
            ["agent", "model", "kind"],
            registry=r,
        )
        self.commit_seconds = Histogram(
            "plait_store_commit_duration_seconds",
            "One group commit of the durable store (a transaction holding many changes).",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.committed_changes = Counter(
            "plait_store_committed_changes",
            "Changes (events and rows) the store committed.",
            registry=r,
        )
        self.requests = Counter(
            "plait_rpc_requests",
            "JSON-RPC requests answered, by method and code (0 for a result).",
            ["method", "code"],
            registry=r,
        )
        self.connections = Counter(
            "plait_connections_opened",
            "Connections accepted, by transport.",
            ["transport"],
            registry=r,
        )
        self.refusals = Counter(
            "plait_connections_refused",
            "Handshakes refused, by HTTP status.",
            ["status"],
            registry=r,
        )
        self.events_delivered = Counter(
            "plait_subscriber_events_delivered",
            "Run events sent to subscribed clients (runs/subscribe).",
            registry=r,
        )
        self.takeovers = Counter(
            "plait_cluster_runs_taken_over",
            "Runs this host took over from another, by how it left them (crashed: its lease "
            "expired; handed: it stopped and handed them over).",
            ["how"],
            registry=r,
        )
        self.abandoned = Counter(
            "plait_cluster_runs_abandoned",
            "Runs this host stopped because another host took them over (its changes to them "
            "refused).",
            registry=r,
        )
        self.content_type = CONTENT_TYPE
        self._levels = _Levels()
        r.register(self._levels)
        self._started: dict[str, Any] = {}
        self._finished: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._steps: dict[tuple[str, str, str], tuple[list[float], list[float]]] = {}
        self._tools: dict[tuple[str, str], Any] = {}
        self._methods: dict[tuple[str, int], Any] = {}
        self.known_methods: frozenset[str] = frozenset()
        """Methods counted by name; any other is ``"other"`` (a client cannot add series)."""

    # -- levels, read when scraped -----------------------------------------------------------

    def gauge(self, name: str, documentation: str, read: Gauge, labels: Iterable[str] = ()) -> None:
        """Report ``read()`` as gauge ``name`` at every scrape."""
        self._levels.sources.append((name, documentation, tuple(labels), read))

    # -- recording ---------------------------------------------------------------------------

    def run_started(self, workflow: str) -> None:
        child = self._started.get(workflow)
        if child is None:
            child = self._started[workflow] = self.runs_started.labels(workflow)
        child.inc()

    def run_finished(self, workflow: str, status: str, seconds: float | None) -> None:
        """A run ended with ``status`` after ``seconds`` (``None``: it never started)."""
        key = (workflow, status)
        children = self._finished.get(key)
        if children is None:
            children = self._finished[key] = (
                self.runs_finished.labels(workflow, status),
                self.run_seconds.labels(workflow, status),
            )
        children[0].inc()
        if seconds is not None:
            children[1].observe(seconds)

    def step_settled(
        self,
        workflow: str,
        step_type: str,
        status: str,
        seconds: float | None,
        waited: float | None,
    ) -> None:
        """A step reached its outcome after ``seconds`` (``None``: it never started), having
        waited ``waited`` for a slot (``None``: a step type that takes none). From the event
        loop's thread only."""
        key = (workflow, step_type, status)
        children = self._steps.get(key)
        if children is None:
            children = self._steps[key] = (
                self.step_seconds.child(key),
                self.queue_seconds.child((workflow, step_type)),
            )
        if seconds is not None:
            self.step_seconds.observe(children[0], seconds)
            if waited is not None:
                self.queue_seconds.observe(children[1], waited)

    def tool_called(self, tool: str, outcome: str, seconds: float) -> None:
        key = (tool, outcome)
        child = self._tools.get(key)
        if child is None:
            child = self._tools[key] = self.tool_seconds.labels(tool, outcome)
        child.observe(seconds)

    def answered(self, method: str, code: int) -> None:
        """A request was answered with ``code`` (0: a result)."""
        if method not in self.known_methods:
            method = "other"
        key = (method, code)
        child = self._methods.get(key)
        if child is None:
            child = self._methods[key] = self.requests.labels(method, str(code))
        child.inc()

    def agent_answered(
        self, agent: str, model: str, outcome: str, seconds: float, usage: dict[str, int]
    ) -> None:
        self.agent_requests.labels(agent, model, outcome).inc()
        self.agent_seconds.labels(agent, model).observe(seconds)
        given, taken = tokens(usage)
        if given:
            self.agent_tokens.labels(agent, model, "input").inc(given)
        if taken:
            self.agent_tokens.labels(agent, model, "output").inc(taken)

    # -- the scrape --------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)
