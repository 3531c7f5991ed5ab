"""`plait mcp --url` bridges an IDE's stdio MCP client to a running, shared host.

One `plait serve --port 0` subprocess serves the whole module. Each test launches the bridge
with the official SDK client, exactly as an IDE would, and then checks on the shared host
(over its WebSocket, and with `plait call`) that the bridged calls ran there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from .mcp_helpers import (
    GREET_INPUTS,
    SLOW_INPUTS,
    SLOW_STEPS,
    SUPPORTED,
    WsHost,
    bridge_command,
    sdk_client,
    start_ws_host,
    stop_ws_host,
    write_workflows,
    ws_rpc,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def ws_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WsHost]:
    tmp = tmp_path_factory.mktemp("shared-host")
    write_workflows(tmp / "wf")
    host = start_ws_host(tmp)
    try:
        yield host
    finally:
        stop_ws_host(host.process)


def bridge(host: WsHost, tmp: Path, **kw):
    return sdk_client(bridge_command(host), tmp, name="bridge", **kw)


async def test_the_bridge_gives_an_ide_client_the_shared_host(ws_host, tmp_path):
    async with ws_rpc(ws_host) as rpc:
        before = {r["id"] for r in (await rpc("runs/list", {"limit": 500}))["runs"]}
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    with anyio.fail_after(30):
        async with bridge(ws_host, tmp_path) as client:
            assert client.protocol_version in SUPPORTED
            assert client.server_info is not None and client.server_info.name == "plait"
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert {"math.sum", "time.sleep", "workflow.greet", "workflow.slow"} <= set(tools)
            assert tools["workflow.greet"].input_schema == GREET_INPUTS
            assert tools["workflow.slow"].input_schema == SLOW_INPUTS

            greeted = await client.call_tool("workflow.greet", {"name": "ide"})
            assert greeted.is_error is False
            assert greeted.structured_content == {"greeting": "hello, ide"}

            slow = await client.call_tool(
                "workflow.slow", {"seconds": 0.1}, progress_callback=on_progress
            )
            assert slow.is_error is False
            assert len(seen) >= 3, seen
            progress = [p for p, _, _ in seen]
            assert progress == sorted(set(progress)), seen
            assert {t for _, t, _ in seen} == {SLOW_STEPS}

            # Cancel a long call on the client side: the SDK sends notifications/cancelled,
            # the bridge relays it, and the shared host stops the run within 2 s.
            with anyio.move_on_after(0.5) as scope:
                await client.call_tool("workflow.slow", {"seconds": 5})
            assert scope.cancelled_caught
            cancelled_at = time.monotonic()
            async with ws_rpc(ws_host) as rpc:
                with anyio.fail_after(2):
                    while True:
                        runs = (await rpc("runs/list", {"workflow": "slow"}))["runs"]
                        long = [
                            r
                            for r in runs
                            if r["id"] not in before and r["id"] != slow.meta["runId"]
                        ]
                        assert len(long) == 1, runs
                        if long[0]["status"] == "cancelled":
                            break
                        assert long[0]["status"] == "running", long
                        await anyio.sleep(0.05)
            assert time.monotonic() - cancelled_at < 2

            again = await client.call_tool("workflow.greet", {"name": "again"})
            assert again.structured_content == {"greeting": "hello, again"}

    # Every bridged call is a run on the shared host, visible to any other client.
    runs = (await anyio.to_thread.run_sync(ws_host.call, "runs/list"))["runs"]
    mine = {r["id"]: r for r in runs if r["id"] not in before}
    assert mine[greeted.meta["runId"]]["status"] == "succeeded"
    assert mine[greeted.meta["runId"]]["workflow"] == "greet"
    assert mine[slow.meta["runId"]]["status"] == "succeeded"
    assert mine[again.meta["runId"]]["status"] == "succeeded"
    assert sorted(r["status"] for r in mine.values()) == [
        "cancelled",
        "succeeded",
        "succeeded",
        "succeeded",
    ]
    async with ws_rpc(ws_host) as rpc:
        run = (await rpc("runs/get", {"runId": greeted.meta["runId"]}))["run"]
    assert run["outputs"] == {"greeting": "hello, ide"}
    assert ws_host.process.poll() is None  # the shared host outlives the bridge


async def test_tool_failures_come_back_as_error_results_through_the_bridge(ws_host, tmp_path):
    with anyio.fail_after(20):
        async with bridge(ws_host, tmp_path) as client:
            failed = await client.call_tool("chaos.fail", {"key": "bridge", "times": 5})
            summed = await client.call_tool("math.sum", {"values": [1, 2]})
    assert failed.is_error is True
    assert "planned failure" in failed.content[0].text
    assert summed.is_error is False and summed.content[0].text == "3.0"


async def test_the_sdk_default_speaks_the_2026_revision_through_the_bridge(ws_host, tmp_path):
    start = time.monotonic()
    with anyio.fail_after(6):
        async with bridge(ws_host, tmp_path, mode="auto") as client:
            assert client.protocol_version == "2026-07-28"
            assert client.server_info is not None and client.server_info.name == "plait"
            tools = await client.list_tools()
            assert time.monotonic() - start < 5
    assert "workflow.greet" in {t.name for t in tools.tools}


async def test_invalid_arguments_are_an_error_result_through_the_bridge(ws_host, tmp_path):
    async with bridge(ws_host, tmp_path) as client:
        with anyio.fail_after(3):
            result = await client.call_tool("workflow.greet", {"name": 5})
    assert result.is_error is True and "name" in result.content[0].text
