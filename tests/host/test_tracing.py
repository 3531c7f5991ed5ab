"""Traces of runs, step attempts, tool calls and agent completions, checked with the
OpenTelemetry SDK's in-memory exporter: structure, parentage and attributes.

A real ``plait.Host`` (memory store) with the built-in step types; the agent is the built-in
``scripted`` provider; the tools are the probe's.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import plait
from plait.config import HostConfig
from plait.telemetry.tracing import Tracing

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

CHILD = {
    "name": "child",
    "inputs": {"type": "object", "properties": {"x": {"type": "integer"}}},
    "steps": [{"id": "add", "tool": "probe.add", "with": {"a": "${inputs.x}", "b": 1}}],
    "outputs": {"y": "${steps.add.output}"},
}
PARENT = {
    "name": "parent",
    "steps": [
        {"id": "first", "tool": "probe.echo", "with": {"value": 1}},
        {"id": "sub", "workflow": "child", "inputs": {"x": 41}, "needs": ["first"]},
        {
            "id": "each",
            "loop": ["a", "b"],
            "steps": [{"id": "w", "tool": "probe.work", "with": {"label": "${item}"}}],
            "needs": ["sub"],
        },
        {"id": "ask", "agent": "bot", "prompt": "hello", "needs": ["each"]},
    ],
}
CONFIG = {
    "host": {"data_dir": ":memory:"},
    "plugins": {"entry_points": False},
    "agents": {"bot": {"provider": "scripted", "model": "script-1", "script": [{"say": "hi"}]}},
}


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    """The spans by name (of spans sharing a name, such as a loop's tool calls, the last)."""
    return {span.name: span for span in spans}


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def traced_run(pm: Any, definition: dict[str, Any], *extra: dict[str, Any]) -> Any:
    exporter = InMemorySpanExporter()
    tracing = Tracing.to(exporter)
    async with plait.Host(HostConfig.model_validate(CONFIG), pm=pm, tracing=tracing) as host:
        for other in extra:
            host.register(other)
        host.register(definition)
        run = await host.wait(await host.start_run(definition["name"]))
    tracing.shutdown()
    return run, exporter.get_finished_spans()


async def test_spans_nest_as_the_run_does(pm):
    run, spans = await traced_run(pm, PARENT, CHILD)
    assert run.status == "succeeded", run.error
    s = by_name(spans)
    root = s["run parent"]
    assert root.parent is None
    assert root.attributes["plait.run_id"] == run.id
    assert root.attributes["plait.workflow"] == "parent"
    trace_id = root.context.trace_id
    assert all(span.context.trace_id == trace_id for span in spans)

    # steps are children of the run; a tool call is a child of its step's attempt
    for step in ("first", "sub", "each", "ask"):
        assert parent_of(s[f"step {step}"]) == root.context.span_id
    assert s["step first"].attributes["plait.step_type"] == "tool"
    assert s["step first"].attributes["plait.attempt"] == 1
    tool = s["execute_tool probe.echo"]
    assert parent_of(tool) == s["step first"].context.span_id
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "probe.echo"

    # a sub-workflow's run is a child of the step that started it, its steps below it
    child = s["run child"]
    assert parent_of(child) == s["step sub"].context.span_id
    assert parent_of(s["step add"]) == child.context.span_id
    assert parent_of(s["execute_tool probe.add"]) == s["step add"].context.span_id

    # loop iterations are children of the loop step's attempt
    for i in (0, 1):
        assert parent_of(s[f"step each[{i}].w"]) == s["step each"].context.span_id
    works = [span for span in spans if span.name == "execute_tool probe.work"]
    iterations = {s[f"step each[{i}].w"].context.span_id for i in (0, 1)}
    assert len(works) == 2 and {parent_of(w) for w in works} == iterations

    # the agent's completion, with the GenAI conventions
    chat = s["chat script-1"]
    assert parent_of(chat) == s["step ask"].context.span_id
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.provider.name"] == "scripted"
    assert chat.attributes["gen_ai.request.model"] == "script-1"
    assert chat.attributes["gen_ai.usage.input_tokens"] >= 1
    assert "gen_ai.usage.output_tokens" in chat.attributes


async def test_a_failed_attempt_is_a_failed_span_and_each_retry_has_its_own(pm):
    flaky = {
        "name": "flaky",
        "steps": [
            {
                "id": "call",
                "tool": "probe.fail",
                "with": {"key": "trace", "times": 1},
                "retry": {"attempts": 2, "backoff": "fixed", "base": 0.01},
            }
        ],
    }
    run, spans = await traced_run(pm, flaky)
    assert run.status == "succeeded", run.error
    attempts = sorted(
        (span for span in spans if span.name == "step call"),
        key=lambda span: span.attributes["plait.attempt"],
    )
    assert [span.attributes["plait.attempt"] for span in attempts] == [1, 2]
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert attempts[1].status.status_code is not StatusCode.ERROR
    tools = [span for span in spans if span.name == "execute_tool probe.fail"]
    assert [t.status.status_code is StatusCode.ERROR for t in tools] == [True, False]


async def test_a_failed_run_is_a_failed_span(pm):
    broken = {
        "name": "broken",
        "steps": [{"id": "call", "tool": "probe.fail", "with": {"key": "b", "times": 9}}],
    }
    run, spans = await traced_run(pm, broken)
    assert run.status == "failed"
    root = by_name(spans)["run broken"]
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes["plait.status"] == "failed"


async def test_tracing_off_opens_no_span_and_costs_no_context(pm):
    async with plait.Host(HostConfig.model_validate(CONFIG), pm=pm) as host:
        assert host.tracing is None and host.engine is not None
        assert host.engine.tracing is None and host.engine.tools.tracing is None
        host.register(CHILD)
        run = await host.wait(await host.start_run("child", {"x": 1}))
    assert run.status == "succeeded"


def test_a_request_traceparent_is_read_and_a_malformed_one_ignored(caplog):
    caplog.set_level(logging.INFO, "plait.tracing")
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ctx = Tracing.context_of({"traceparent": good})
    assert ctx is not None
    for bad in ("garbage", 42, "00-" + "0" * 32 + "-b7ad6b7169203331-01", "00-xyz-abc-01"):
        assert Tracing.context_of({"traceparent": bad}) is None
    assert Tracing.context_of(None) is None and Tracing.context_of({}) is None
    assert caplog.text.count("ignoring a malformed traceparent") == 3
    assert "zero trace or span id" in caplog.text
