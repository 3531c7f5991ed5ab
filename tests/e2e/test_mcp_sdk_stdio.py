"""MCP: the official MCP SDK client against `plait serve --stdio` as a subprocess.

This is what an IDE does: launch the host, handshake, list the tools (built-in tools and one
``workflow.<name>`` tool per workflow), call them, follow progress, and cancel a call.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest

from .mcp_helpers import (
    GREET_INPUTS,
    SLOW_INPUTS,
    SLOW_STEPS,
    SUPPORTED,
    WAIT,
    sdk_client,
    sdk_runs,
    stdio_command,
    write_workflows,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    write_workflows(tmp_path / "wf")
    return tmp_path


def stdio_host(tmp: Path, **kw):
    return sdk_client(stdio_command(tmp), tmp, **kw)


async def test_initialize_negotiates_a_version_and_lists_tools_and_workflows(tmp):
    with anyio.fail_after(15):
        async with stdio_host(tmp) as client:
            assert client.protocol_version in SUPPORTED
            assert client.server_info is not None and client.server_info.name == "plait"
            assert client.server_capabilities.tools is not None
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert {
        "math.sum",
        "time.sleep",
        "chaos.fail",
        "workflow.slow",
        "workflow.greet",
        "workflow.fails",
    } <= set(tools)
    assert tools["workflow.slow"].input_schema == SLOW_INPUTS
    assert tools["workflow.greet"].input_schema == GREET_INPUTS
    assert tools["math.sum"].input_schema["properties"]["values"]["type"] == "array"
    assert tools["workflow.greet"].description == "Greet someone."


async def test_the_sdk_default_discovers_and_speaks_the_2026_revision(tmp):
    # mode="auto" (the SDK's default) sends server/discover, then every request with its own
    # _meta envelope: no initialize at all.
    start = time.monotonic()
    with anyio.fail_after(10):
        async with stdio_host(tmp, mode="auto") as client:
            assert client.protocol_version == "2026-07-28"
            assert client.session.initialize_result is None
            assert client.server_info is not None and client.server_info.name == "plait"
            assert time.monotonic() - start < 5
            tools = await client.list_tools()
            greeted = await client.call_tool("workflow.greet", {"name": "ada"})
            typo = await client.call_tool("workflow.greet", {"nme": "ada"})
    assert "workflow.greet" in {t.name for t in tools.tools}
    assert greeted.is_error is False and greeted.structured_content is not None
    assert typo.is_error is True and "did you mean 'name'" in typo.content[0].text


async def test_a_client_pinned_to_the_2026_revision_calls_with_progress(tmp):
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    with anyio.fail_after(15):
        async with stdio_host(tmp, mode="2026-07-28") as client:
            result = await client.call_tool(
                "workflow.slow", {"seconds": 0.05}, progress_callback=on_progress
            )
    assert result.is_error is False
    assert seen and seen == sorted(seen)


async def test_calls_return_workflow_outputs_and_tool_values(tmp):
    with anyio.fail_after(15):
        async with stdio_host(tmp) as client:
            greeted = await client.call_tool("workflow.greet", {"name": "ada"})
            summed = await client.call_tool("math.sum", {"values": [1, 2]})
            runs = await sdk_runs(client, "greet")
    assert greeted.is_error is False
    assert greeted.structured_content == {"greeting": "hello, ada"}
    assert [c.type for c in greeted.content] == ["text"]
    assert json.loads(greeted.content[0].text) == {"greeting": "hello, ada"}
    # The run the call started is a real run on the host, named in the result's _meta.
    assert [r["status"] for r in runs] == ["succeeded"]
    assert greeted.meta is not None and greeted.meta.get("runId") == runs[0]["id"]
    assert summed.is_error is False
    assert json.loads(summed.content[0].text) == 3.0


async def test_tool_and_workflow_failures_are_error_results_not_protocol_errors(tmp):
    with anyio.fail_after(15):
        async with stdio_host(tmp) as client:
            failed_tool = await client.call_tool("chaos.fail", {"key": "sdk", "times": 5})
            failed_run = await client.call_tool("workflow.fails", {})
            after = await client.call_tool("math.sum", {"values": [2]})  # still serving
    assert failed_tool.is_error is True
    assert "planned failure" in failed_tool.content[0].text
    assert failed_run.is_error is True
    assert "failed" in failed_run.content[0].text
    assert after.is_error is False


async def test_invalid_arguments_are_error_results_that_say_what_to_fix(tmp):
    # Since 2025-11-25 (what the handshake negotiates), bad arguments are a tool result with
    # isError, for the model to read and retry; nothing is started.
    async with stdio_host(tmp) as client:
        for name, arguments, says in (
            ("math.sum", {"values": "x"}, "values"),
            ("workflow.greet", {"name": 5}, "name"),
            ("workflow.greet", {}, "'name' is a required property"),
        ):
            with anyio.fail_after(WAIT):
                result = await client.call_tool(name, arguments)
            assert result.is_error is True, (name, arguments, result)
            assert says in result.content[0].text
        with anyio.fail_after(WAIT):
            assert await sdk_runs(client, "greet") == []  # nothing was started


async def test_progress_notifications_follow_a_workflow_call(tmp):
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    with anyio.fail_after(15):
        async with stdio_host(tmp) as client:
            result = await client.call_tool(
                "workflow.slow", {"seconds": 0.1}, progress_callback=on_progress
            )
    assert result.is_error is False
    assert result.structured_content is not None and result.structured_content["slept"] >= 0.39
    assert len(seen) >= 3, seen
    progress = [p for p, _, _ in seen]
    assert progress == sorted(set(progress)), f"progress must increase: {seen}"
    assert {t for _, t, _ in seen} == {SLOW_STEPS}
    assert all(m for _, _, m in seen)


async def test_progress_counts_the_step_it_reports(tmp):
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    with anyio.fail_after(15):
        async with stdio_host(tmp) as client:
            await client.call_tool(
                "workflow.slow", {"seconds": 0.05}, progress_callback=on_progress
            )
    assert seen[0][:2] == (1, SLOW_STEPS), seen  # "a: succeeded" is one step of four
    assert seen[-1][:2] == (SLOW_STEPS, SLOW_STEPS), seen


async def test_cancelling_a_call_stops_its_run_and_the_host_keeps_serving(tmp):
    with anyio.fail_after(20):
        async with stdio_host(tmp) as client:
            # Cancelling the awaiting scope makes the SDK send notifications/cancelled.
            with anyio.move_on_after(0.5) as scope:
                await client.call_tool("workflow.slow", {"seconds": 5})
            assert scope.cancelled_caught
            cancelled_at = time.monotonic()
            status = None
            with anyio.fail_after(2):  # the work stops within 2 s
                while status != "cancelled":
                    runs = await sdk_runs(client, "slow")
                    assert len(runs) == 1, runs
                    status = runs[0]["status"]
                    assert status in ("running", "cancelled"), runs
                    if status != "cancelled":
                        await anyio.sleep(0.05)
            assert time.monotonic() - cancelled_at < 2
            again = await client.call_tool("workflow.greet", {"name": "bob"})
    assert again.structured_content == {"greeting": "hello, bob"}
