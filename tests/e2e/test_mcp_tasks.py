"""Workflows as durable MCP tasks (the ``io.modelcontextprotocol/tasks`` extension, 2026-07-28)
against a real ``plait serve --stdio``: a task is created, polled, cancelled, and survives a
``kill -9`` of the host: the restarted host answers ``tasks/get`` for the same id with the
result of the resumed run.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from .mcp_helpers import RawStdio, raw_stdio_host, write_workflows

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

TASKS = "io.modelcontextprotocol/tasks"


def meta(*, tasks: bool = True) -> dict[str, Any]:
    capabilities: dict[str, Any] = {"extensions": {TASKS: {}}} if tasks else {}
    return {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": capabilities,
    }


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    write_workflows(tmp_path / "wf")
    return tmp_path


async def call(raw: RawStdio, method: str, params: dict[str, Any], **kw: Any) -> dict[str, Any]:
    reply = await raw.request(method, {**params, "_meta": meta(**kw)}, timeout=15)
    assert "result" in reply, reply
    return reply["result"]


async def poll(raw: RawStdio, task_id: str, until: set[str], seconds: float = 30) -> dict[str, Any]:
    with anyio.fail_after(seconds):
        while True:
            task = await call(raw, "tasks/get", {"taskId": task_id})
            if task["status"] in until:
                return task
            await anyio.sleep(task["pollIntervalMs"] / 1000 / 5)


async def test_a_workflow_call_becomes_a_task_that_is_polled_to_its_result(tmp):
    async with raw_stdio_host(tmp) as raw:
        found = await call(raw, "server/discover", {})
        assert TASKS in found["capabilities"]["extensions"]
        created = await call(
            raw, "tools/call", {"name": "workflow.slow", "arguments": {"seconds": 0.1}}
        )
        assert created["resultType"] == "task", created
        assert created["status"] == "working"
        assert created["createdAt"].endswith("Z") and created["pollIntervalMs"] > 0
        task_id = created["taskId"]
        done = await poll(raw, task_id, {"completed"})
        assert done["resultType"] == "complete"
        assert done["result"]["isError"] is False
        assert done["result"]["structuredContent"]["slept"] >= 0.39
        # the task is the run: the plait API knows it by the same id
        run = await call(raw, "runs/get", {"runId": task_id})
        assert run["run"]["status"] == "succeeded"
        raw.assert_clean_stdout()


async def test_a_failing_workflow_is_a_completed_task_with_an_error_result(tmp):
    async with raw_stdio_host(tmp) as raw:
        created = await call(raw, "tools/call", {"name": "workflow.fails", "arguments": {}})
        done = await poll(raw, created["taskId"], {"completed"})
        assert done["result"]["isError"] is True


async def test_a_task_is_cancelled_and_unknown_tasks_are_errors(tmp):
    async with raw_stdio_host(tmp) as raw:
        created = await call(
            raw, "tools/call", {"name": "workflow.slow", "arguments": {"seconds": 5}}
        )
        assert await call(raw, "tasks/cancel", {"taskId": created["taskId"]}) == {
            "resultType": "complete",
            "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "plait", "version": "0.1.0"}},
        }
        cancelled = await poll(raw, created["taskId"], {"cancelled"}, seconds=10)
        assert cancelled["status"] == "cancelled"
        unknown = await raw.request("tasks/get", {"taskId": "nope", "_meta": meta()})
        assert unknown["error"]["code"] == -32602 and "unknown task" in unknown["error"]["message"]
        updated = await raw.request(
            "tasks/update", {"taskId": created["taskId"], "inputResponses": {}, "_meta": meta()}
        )
        assert updated["result"]["resultType"] == "complete"


async def test_without_the_extension_the_call_is_synchronous_and_tasks_are_refused(tmp):
    async with raw_stdio_host(tmp) as raw:
        result = await call(
            raw, "tools/call", {"name": "workflow.greet", "arguments": {"name": "ada"}}, tasks=False
        )
        assert result["resultType"] == "complete" and result["isError"] is False
        refused = await raw.request("tasks/get", {"taskId": "x", "_meta": meta(tasks=False)})
        assert refused["error"]["code"] == -32021
        assert TASKS in refused["error"]["data"]["requiredCapabilities"]["extensions"]


async def test_a_task_survives_a_kill_of_the_host_and_gets_its_result_after_restart(tmp):
    async with raw_stdio_host(tmp) as raw:
        created = await call(
            raw, "tools/call", {"name": "workflow.slow", "arguments": {"seconds": 0.5}}
        )
        task_id = created["taskId"]
        await anyio.sleep(0.7)  # inside the run: a step or two done, the rest to come
        os.kill(raw.process.pid, signal.SIGKILL)
        with anyio.fail_after(10):
            await raw.process.wait()
    async with raw_stdio_host(tmp) as raw:  # a new host on the same data dir
        done = await poll(raw, task_id, {"completed"})
        assert done["result"]["isError"] is False, done
        assert done["result"]["structuredContent"]["slept"] >= 1.98


async def test_a_handshake_client_declaring_the_extension_still_gets_its_result(tmp):
    # 2025-11-25 clients (the MCP Inspector among them) may list the extension at initialize;
    # only a 2026-era request's own capabilities can ask for a task.
    async with raw_stdio_host(tmp) as raw:
        reply = await raw.request(
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": {"extensions": {TASKS: {}}},
                "clientInfo": {"name": "legacy", "version": "1"},
            },
        )
        assert "result" in reply, reply
        await raw.notify("notifications/initialized")
        result = await raw.request(
            "tools/call", {"name": "workflow.greet", "arguments": {"name": "ada"}}, timeout=15
        )
        assert "resultType" not in result["result"], result
        assert result["result"]["structuredContent"] == {"greeting": "hello, ada"}
