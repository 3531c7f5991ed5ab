"""Traces through the real OTLP/HTTP exporter into an HTTP server the test starts on
127.0.0.1, with a client's ``traceparent`` sent over a real WebSocket and carried on into a
real MCP server (the official SDK's, over stdio); and a host whose exporter endpoint is bad
still starts, runs and says so.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

import plait
from plait.config import HostConfig

from .conftest import websocket_of

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

ECHO = Path(__file__).with_name("trace_echo_server.py")
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACED = {
    "name": "traced",
    "steps": [
        {"id": "ask", "tool": "echo.traceparent"},
        {"id": "then", "transform": "${steps.ask.output}"},
    ],
    "outputs": {"seen": "${steps.then.output}"},
}


class Collector:
    """An OTLP/HTTP trace receiver: decodes each export and keeps its spans."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with outer.lock:
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            outer.spans.extend(scope.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def by_name(self) -> dict[str, Any]:
        with self.lock:
            return {span.name: span for span in self.spans}


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    c.thread.start()
    yield c
    c.server.shutdown()
    c.server.server_close()


def config(tmp_path: Path, tracing: dict[str, Any], **extra: Any) -> HostConfig:
    return HostConfig.model_validate(
        {
            "host": {"data_dir": str(tmp_path / "data"), "port": 0},
            "plugins": {"entry_points": False},
            "tracing": {"enabled": True, **tracing},
            **extra,
        }
    )


async def test_a_clients_trace_goes_through_plait_into_an_mcp_server(tmp_path, pm, collector):
    servers = {"echo": {"command": sys.executable, "args": [str(ECHO)]}}
    settings = config(tmp_path, {"endpoint": collector.url}, mcp_servers=servers)
    async with plait.Host(settings, pm=pm) as host:
        host.register(TRACED)
        async with websocket_of(host) as served, served.client() as client:
            meta = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
            started = await client.call("runs/start", {"workflow": "traced", "_meta": meta})
            done = await client.call("runs/wait", {"runId": started["runId"], "timeout": 30})
            # a malformed traceparent is ignored: the request is answered as usual
            bad = await client.call(
                "runs/start", {"workflow": "traced", "_meta": {"traceparent": "x"}}
            )
            assert (await client.call("runs/wait", {"runId": bad["runId"], "timeout": 30}))["run"][
                "status"
            ] == "succeeded"
    assert done["run"]["status"] == "succeeded", done["run"]["error"]
    seen = done["run"]["outputs"]["seen"]["result"]  # the tool's structured result
    # the MCP server got the trace in the request's _meta
    _, trace_id, seen_parent, _ = seen.split("-")
    assert trace_id == CLIENT_TRACE

    # the host flushed its spans to the collector when it stopped
    ours = [s for s in collector.spans if s.trace_id.hex() == CLIENT_TRACE]
    spans = {s.name: s for s in ours}
    request = spans["runs/start"]
    assert request.parent_span_id.hex() == CLIENT_SPAN
    run = spans["run traced"]
    assert run.parent_span_id == request.span_id
    step = spans["step ask"]
    assert step.parent_span_id == run.span_id
    tool = spans["execute_tool echo.traceparent"]
    assert tool.parent_span_id == step.span_id
    assert seen_parent == tool.span_id.hex()  # the server's parent is plait's tool call
    attributes = {a.key: a.value.string_value for a in run.attributes}
    assert attributes["plait.run_id"] == started["runId"]
    # the other run made a trace of its own
    others = {s.trace_id.hex() for s in collector.spans if s.name == "run traced"}
    assert len(others) == 2


async def test_a_run_resumed_after_a_restart_stays_in_its_trace(tmp_path, pm, collector):
    gate = {
        "name": "gated",
        "steps": [{"id": "hold", "wait": "go"}],
    }
    settings = config(tmp_path, {"endpoint": collector.url})
    async with plait.Host(settings, pm=pm) as host:
        host.register(gate)
        async with websocket_of(host) as served, served.client() as client:
            meta = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
            started = await client.call("runs/start", {"workflow": "gated", "_meta": meta})
    async with plait.Host(config(tmp_path, {"endpoint": collector.url}), pm=pm) as host:
        await host.signal_run(started["runId"], "go")
        run = await host.wait(started["runId"])
    assert run.status == "succeeded", run.error
    runs = [s for s in collector.spans if s.name == "run gated"]
    assert len(runs) == 2  # one per host that ran it
    assert {s.trace_id.hex() for s in runs} == {CLIENT_TRACE}
    resumed = [s for s in runs if any(a.key == "plait.resumed" for a in s.attributes)]
    assert len(resumed) == 1


async def test_a_bad_endpoint_leaves_the_host_running_and_says_so(tmp_path, pm, caplog):
    caplog.set_level(logging.INFO, "plait.tracing")
    async with plait.Host(config(tmp_path / "a", {"endpoint": "not a url"}), pm=pm) as host:
        assert host.tracing is None
        host.register(TRACED | {"steps": [{"id": "then", "transform": 1}], "outputs": {}})
        assert (await host.wait(await host.start_run("traced"))).status == "succeeded"
    assert "tracing is off: the OTLP endpoint must be an http(s) URL" in caplog.text

    # an endpoint nobody answers at: the host starts, runs, and says spans are dropped
    with socket_without_listener() as port:
        endpoint = f"http://127.0.0.1:{port}/v1/traces"
        settings = config(tmp_path / "b", {"endpoint": endpoint, "timeout": 1})
        async with plait.Host(settings, pm=pm) as host:
            assert host.tracing is not None
            host.register(TRACED | {"steps": [{"id": "then", "transform": 1}], "outputs": {}})
            assert (await host.wait(await host.start_run("traced"))).status == "succeeded"
            with anyio.fail_after(10):
                while "does not answer" not in caplog.text:
                    await anyio.sleep(0.05)
    assert endpoint in caplog.text


class socket_without_listener:
    """A port on 127.0.0.1 that is bound (so no one else takes it) but not listening."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
