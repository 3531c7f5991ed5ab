"""OpenTelemetry traces of runs, step attempts, tool calls and agent completions.

Off by default (``[tracing] enabled = true`` turns it on); off, nothing here runs: the parts
that would open a span hold ``None`` and test for it once. On, the host has a tracer provider
of its own (never the process-wide one, which an embedding application may own) exporting in
batches over OTLP/HTTP, so a slow or absent collector costs the host dropped spans, never a
wait.

Spans nest as the run does, through the context each task inherits: a run's span is the parent
of its steps' attempt spans; a tool call or an agent completion made by a step is a child of
that attempt; a sub-workflow's run is a child of the step that started it; the steps of a loop
or parallel body are children of the loop's attempt. A request that carries a W3C
``traceparent`` (JSON-RPC or MCP, in ``params._meta``) is the parent of the run it starts, and
the run keeps that ``traceparent`` in its ``run.created`` event, so a run resumed after a restart
goes on in the same trace. Agent and tool spans follow the OpenTelemetry GenAI semantic
conventions (``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
``gen_ai.usage.input_tokens``/``output_tokens``, ``gen_ai.tool.name``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from plait.config import TracingSettings
from plait.telemetry import tokens

__all__ = ["Tracing", "context_of"]

log = logging.getLogger("plait.tracing")

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_EMPTY = Context()


def context_of(meta: Any) -> Context | None:
    """The trace context a request's ``_meta`` carries (``traceparent``, ``tracestate``);
    ``None`` when it carries none. A malformed one is ignored and logged: a client's broken
    header never fails its request."""
    if not isinstance(meta, Mapping):
        return None
    parent = meta.get("traceparent")
    if parent is None:
        return None
    if not isinstance(parent, str) or not _TRACEPARENT.match(parent):
        log.info("ignoring a malformed traceparent in a request: %.80r", parent)
        return None
    carrier = {"traceparent": parent}
    state = meta.get("tracestate")
    if isinstance(state, str):
        carrier["tracestate"] = state
    found = _PROPAGATOR.extract(carrier, context=_EMPTY)
    if not trace.get_current_span(found).get_span_context().is_valid:
        log.info("ignoring a traceparent with a zero trace or span id: %.80r", parent)
        return None
    return found


def _endpoint_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return f"the OTLP endpoint must be an http(s) URL, not {url!r}"
    if not parts.hostname:
        return f"the OTLP endpoint {url!r} names no host"
    return None


class Tracing:
    """The host's tracer and the spans its parts open."""

    def __init__(self, provider: TracerProvider, *, endpoint: str | None = None) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("plait")
        self.endpoint = endpoint
        """Where spans go (OTLP), for the start-up check; ``None`` for other exporters."""

    @classmethod
    def from_settings(cls, settings: TracingSettings) -> Tracing | None:
        """The tracing ``[tracing]`` asks for; ``None`` when off, or when its exporter cannot
        be made (the host starts without traces and says why in its log)."""
        if not settings.enabled:
            return None
        exporter: SpanExporter
        endpoint = None
        if settings.exporter == "console":
            exporter = ConsoleSpanExporter(service_name=settings.service_name)
        else:
            problem = _endpoint_problem(settings.endpoint)
            if problem is not None:
                log.warning("tracing is off: %s ([tracing] endpoint)", problem)
                return None
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = settings.endpoint
            exporter = OTLPSpanExporter(
                endpoint=endpoint, headers=dict(settings.headers), timeout=settings.timeout
            )
        provider = cls._provider(settings.service_name, settings.sample_ratio)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider, endpoint=endpoint)

    @classmethod
    def to(cls, exporter: SpanExporter, *, sample_ratio: float = 1.0) -> Tracing:
        """Tracing that hands each span to ``exporter`` as it ends (tests, embedders)."""
        provider = cls._provider("plait", sample_ratio)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        return cls(provider)

    @staticmethod
    def _provider(service: str, ratio: float) -> TracerProvider:
        return TracerProvider(
            resource=Resource.create({"service.name": service}),
            sampler=ParentBased(TraceIdRatioBased(ratio)),
        )

    context_of = staticmethod(context_of)

    def shutdown(self) -> None:
        """Export what is buffered and stop (blocks up to the exporter's timeout: call it off
        the event loop)."""
        self.provider.shutdown()

    # -- context -----------------------------------------------------------------------------

    @staticmethod
    def traceparent() -> str | None:
        """The current span's ``traceparent``, kept with a run so it can be continued."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return carrier.get("traceparent")

    @staticmethod
    def headers() -> dict[str, str]:
        """The current trace context as HTTP headers (for an outgoing call)."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return carrier

    @contextmanager
    def request(self, method: str, parent: Context | None) -> Iterator[Span]:
        """A span for one JSON-RPC request, under the client's trace when it sent one."""
        with self.tracer.start_as_current_span(
            method,
            context=parent or _EMPTY,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "jsonrpc", "rpc.method": method},
        ) as span:
            yield span

    # -- spans -------------------------------------------------------------------------------

    @contextmanager
    def run(
        self,
        run_id: str,
        workflow: str,
        version: int,
        *,
        traceparent: str | None,
        child: bool,
        resumed: bool,
    ) -> Iterator[Span]:
        """A run's span: under its parent step's span (a sub-workflow), else under the
        request that started it (``traceparent``), else a trace of its own."""
        if child:
            parent = None  # the current context: the calling step's attempt
        elif traceparent is not None:
            parent = _PROPAGATOR.extract({"traceparent": traceparent}, context=_EMPTY)
        else:
            parent = _EMPTY
        attributes: dict[str, Any] = {
            "plait.run_id": run_id,
            "plait.workflow": workflow,
            "plait.workflow_version": version,
        }
        if resumed:
            attributes["plait.resumed"] = True
        with self.tracer.start_as_current_span(
            f"run {workflow}",
            context=parent,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    def step(self, run_id: str, path: str, step_type: str, attempt: int) -> Any:
        """One attempt of a step (a context manager yielding its span)."""
        return self.tracer.start_as_current_span(
            f"step {path}",
            attributes={
                "plait.run_id": run_id,
                "plait.step": path,
                "plait.step_type": step_type,
                "plait.attempt": attempt,
            },
        )

    def tool(self, tool: str) -> Any:
        """One tool call that runs (GenAI ``execute_tool``)."""
        return self.tracer.start_as_current_span(
            f"execute_tool {tool}",
            kind=SpanKind.INTERNAL,
            attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool},
        )

    def agent(self, agent: str, provider: str, model: str) -> Any:
        """One completion asked of an agent provider (GenAI ``chat``)."""
        return self.tracer.start_as_current_span(
            f"chat {model}" if model else f"chat {agent}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": provider,
                "gen_ai.system": provider,
                "gen_ai.request.model": model,
                "gen_ai.agent.name": agent,
            },
        )

    @staticmethod
    def usage(span: Span, usage: Mapping[str, int], model: str | None = None) -> None:
        """Token usage of a completion on its span."""
        given, taken = tokens(usage)
        if given is not None:
            span.set_attribute("gen_ai.usage.input_tokens", int(given))
        if taken is not None:
            span.set_attribute("gen_ai.usage.output_tokens", int(taken))
        if model:
            span.set_attribute("gen_ai.response.model", model)

    @staticmethod
    def failed(span: Span, error: Mapping[str, Any] | str) -> None:
        """Mark ``span`` as failed with a step or run error (type and message)."""
        if isinstance(error, str):
            span.set_status(Status(StatusCode.ERROR, error))
            return
        span.set_status(Status(StatusCode.ERROR, str(error.get("message", ""))[:500]))
        if error.get("type"):
            span.set_attribute("error.type", str(error["type"]))
