"""MCP over Streamable HTTP at ``/mcp`` on the host's own port, against a real ``plait serve``:
the official SDK client in both eras (``mode="auto"``, which discovers the 2026-07-28 revision,
and the legacy ``initialize`` handshake), workflows as durable tasks polled over plain HTTP
(surviving a ``kill -9`` of the host), human input, and the same ``Host``/``Origin``/token
checks and limits as the WebSocket.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, types
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, ElicitResult, Result
from pydantic import ConfigDict, TypeAdapter

from .host_process import HostProcess
from .mcp_helpers import GREET_YAML, SLOW_YAML

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

TASKS = "io.modelcontextprotocol/tasks"
MODERN = "2026-07-28"

ASK_YAML = """\
name: ask
description: Ask a person whether to ship.
steps:
  - id: approve
    input: "Ship version 2?"
    schema:
      type: object
      required: [ok]
      properties: {ok: {type: boolean}}
outputs: {ok: "${steps.approve.output.ok}"}
"""


@pytest.fixture
def host(tmp_path: Path):
    served = HostProcess(
        tmp_path,
        workflows={"slow": SLOW_YAML, "greet": GREET_YAML, "ask": ASK_YAML},
        config='[host]\nallowed_origins = ["https://app.example"]\n',
    )
    served.start()
    try:
        yield served
    finally:
        served.stop()


def mcp_url(host: HostProcess) -> str:
    return f"http://127.0.0.1:{host.port}/mcp"


@asynccontextmanager
async def sdk(host: HostProcess, **client: Any) -> AsyncIterator[Client]:
    """The official SDK client over Streamable HTTP, with the host's token as a bearer."""
    headers = {"Authorization": f"Bearer {host.token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with Client(
            streamable_http_client(mcp_url(host), http_client=http),
            read_timeout_seconds=30,
            **client,
        ) as entered:
            yield entered


def envelope(*, tasks: bool = False) -> dict[str, Any]:
    capabilities: dict[str, Any] = {"extensions": {TASKS: {}}} if tasks else {}
    return {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": capabilities,
    }


async def post(
    host: HostProcess,
    message: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    token: bool = True,
) -> httpx.Response:
    """One POST to ``/mcp`` with the headers a 2026-07-28 client sends for ``message``."""
    sent = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if token:
        sent["Authorization"] = f"Bearer {host.token}"
    params = message.get("params") or {}
    if MODERN == params.get("_meta", {}).get("io.modelcontextprotocol/protocolVersion"):
        sent["MCP-Protocol-Version"] = MODERN
        sent["Mcp-Method"] = message["method"]
        if "name" in params:
            sent["Mcp-Name"] = params["name"]
    sent.update(headers or {})
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(mcp_url(host), content=json.dumps(message), headers=sent)


async def modern(host: HostProcess, method: str, params: dict[str, Any], **kw: Any) -> Any:
    reply = await post(
        host,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": method,
            "params": {**params, "_meta": envelope(**kw)},
        },
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert "result" in body, body
    return body["result"]


# -- the SDK client, both eras -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_the_sdk_client_lists_and_calls_with_progress_over_http(host, mode):
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    with anyio.fail_after(60):
        async with sdk(host, mode=mode) as client:
            assert client.protocol_version == (MODERN if mode == "auto" else "2025-11-25")
            assert client.server_info is not None and client.server_info.name == "plait"
            tools = [tool.name for tool in (await client.list_tools()).tools]
            greeted = await client.call_tool("workflow.greet", {"name": "ada"})
            typo = await client.call_tool("workflow.greet", {"nme": "ada"})
            slow = await client.call_tool(
                "workflow.slow", {"seconds": 0.3}, progress_callback=on_progress
            )
    assert {"math.sum", "workflow.greet", "workflow.slow"} <= set(tools)
    assert tools == sorted(tools[: tools.index("workflow.ask")]) + sorted(
        tools[tools.index("workflow.ask") :]
    )
    assert greeted.is_error is False and greeted.structured_content == {"greeting": "hello, ada"}
    assert typo.is_error is True and "did you mean 'name'" in typo.content[0].text
    assert slow.is_error is False and slow.structured_content == {
        "slept": pytest.approx(1.2, abs=0.3)
    }
    assert len(progress) >= 4 and progress == sorted(progress)


@pytest.mark.parametrize("mode", [MODERN, "legacy"])
async def test_the_calling_client_answers_an_input_step_over_http(host, mode):
    asked: list[Any] = []

    async def elicit(context: Any, params: Any) -> ElicitResult:
        asked.append(params)
        return ElicitResult(action="accept", content={"ok": True})

    with anyio.fail_after(60):
        async with sdk(host, mode=mode, elicitation_callback=elicit) as client:
            result = await client.call_tool("workflow.ask", {})
    assert result.is_error is False, result
    assert result.structured_content == {"ok": True}
    assert [question.message for question in asked] == ["Ship version 2?"]


# -- tasks with the SDK client ------------------------------------------------------------------


class TaskCreated(Result):
    """The ``tasks`` extension's answer to a call: the task, not yet its result."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    result_type: Literal["task"] = "task"
    task_id: str
    status: str
    poll_interval_ms: int = 500


class Detached(Exception):
    """A task left to run: the client goes away with its id."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)
        self.task_id = task_id


class PolledTasks(ClientExtension):
    """The tasks extension on the SDK's client: a task answer is polled with ``tasks/get``
    until it completes, then it is the call's result (with ``detach``, the call raises
    :class:`Detached` with the task's id instead). Each status seen is noted in ``seen``."""

    identifier = TASKS

    def __init__(self, *, detach: bool = False) -> None:
        self.detach = detach
        self.seen: list[tuple[str, str]] = []

    def claims(self):
        return [ResultClaim(result_type="task", model=TaskCreated, resolve=self.poll)]

    async def poll(self, created: TaskCreated, context: ClaimContext) -> CallToolResult:
        self.seen.append((created.task_id, created.status))
        if self.detach:
            raise Detached(created.task_id)
        return await poll_task(context.session, created.task_id, self.seen)


async def poll_task(session: Any, task_id: str, seen: list[tuple[str, str]]) -> CallToolResult:
    """``tasks/get`` through an SDK session until the task is done; its result."""
    request = types.Request[dict[str, Any], str](method="tasks/get", params={"taskId": task_id})
    with anyio.fail_after(60):
        while True:
            task = await session.send_request(request, TypeAdapter(dict[str, Any]))
            seen.append((task_id, task["status"]))
            if task["status"] not in ("working", "input_required"):
                return CallToolResult.model_validate(task["result"])
            await anyio.sleep(task["pollIntervalMs"] / 1000 / 4)


async def test_the_sdk_client_calls_as_a_task_and_polls_it_to_its_result(host):
    tasks = PolledTasks()
    with anyio.fail_after(60):
        async with sdk(host, extensions=[tasks]) as client:
            assert client.protocol_version == MODERN
            result = await client.call_tool("workflow.slow", {"seconds": 0.3})
    assert result.is_error is False and result.structured_content == {
        "slept": pytest.approx(1.2, abs=0.4)
    }
    statuses = [status for _, status in tasks.seen]
    assert statuses[0] == "working" and "working" in statuses[1:] and statuses[-1] == "completed"
    assert len({task_id for task_id, _ in tasks.seen}) == 1  # one task throughout: the run


async def test_a_task_survives_a_kill_and_a_new_sdk_client_gets_its_result(tmp_path):
    served = HostProcess(tmp_path, workflows={"slow": SLOW_YAML})
    served.start()
    try:
        task_id = ""
        async with sdk(served, extensions=[PolledTasks(detach=True)]) as client:
            try:
                await client.call_tool("workflow.slow", {"seconds": 0.8})
            except Detached as left:
                task_id = left.task_id
        assert task_id
        await anyio.sleep(0.5)
        served.kill()  # kill -9 while the task's run is in its steps
        served.start()  # the same data dir; a new port and token
        seen: list[tuple[str, str]] = []
        with anyio.fail_after(60):
            async with sdk(served, extensions=[PolledTasks()]) as client:
                result = await poll_task(client.session, task_id, seen)
    finally:
        served.stop()
    assert result.is_error is False
    assert result.structured_content == {"slept": pytest.approx(3.2, abs=1.0)}
    assert seen[0][1] == "working" and seen[-1][1] == "completed"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- tasks over plain HTTP ---------------------------------------------------------------------


async def test_a_task_is_polled_cancelled_and_survives_a_kill_of_the_host(host):
    started = await modern(
        host, "tools/call", {"name": "workflow.slow", "arguments": {"seconds": 1.5}}, tasks=True
    )
    assert started["resultType"] == "task", started
    task = started["taskId"]
    polled = await modern(host, "tasks/get", {"taskId": task}, tasks=True)
    assert polled["status"] == "working", polled

    doomed = await modern(
        host, "tools/call", {"name": "workflow.slow", "arguments": {"seconds": 30}}, tasks=True
    )
    doomed_id = doomed["taskId"]
    await modern(host, "tasks/cancel", {"taskId": doomed_id}, tasks=True)

    host.kill()  # kill -9 while the first task's run is in its first steps
    host.start()
    with anyio.fail_after(60):
        while True:
            polled = await modern(host, "tasks/get", {"taskId": task}, tasks=True)
            if polled["status"] != "working":
                break
            await anyio.sleep(0.2)
    assert polled["status"] == "completed", polled
    assert polled["result"]["structuredContent"] == {"slept": pytest.approx(6.0, abs=1.0)}
    cancelled = await modern(host, "tasks/get", {"taskId": doomed_id}, tasks=True)
    assert cancelled["status"] == "cancelled", cancelled
    missing = await post(
        host,
        {
            "jsonrpc": "2.0",
            "id": 9,
            "method": "tasks/get",
            "params": {"taskId": "no-such-task", "_meta": envelope(tasks=True)},
        },
    )
    assert "error" in missing.json() and "no-such-task" in missing.json()["error"]["message"]


async def test_closing_the_response_stream_cancels_the_call(host):
    message = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {
            "name": "workflow.slow",
            "arguments": {"seconds": 2},
            "_meta": {**envelope(), "progressToken": "p"},
        },
    }
    headers = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "Authorization": f"Bearer {host.token}",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": "workflow.slow",
    }
    async with httpx.AsyncClient(timeout=30) as http:
        async with http.stream(
            "POST", mcp_url(host), content=json.dumps(message), headers=headers
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            async for line in r.aiter_lines():
                if line.startswith("data:"):  # the first progress notification
                    break
    with anyio.fail_after(30):
        while True:
            runs = (await host.call("runs/list", {"workflow": "slow"}))["runs"]
            if runs and runs[0]["status"] != "running":
                break
            await anyio.sleep(0.1)
    assert runs[0]["status"] == "cancelled", runs


# -- the door: the WebSocket's checks, the revision's rules ------------------------------------


async def test_requests_without_the_token_or_from_elsewhere_are_refused(host):
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"_meta": envelope()}}
    no_token = await post(host, ping, token=False)
    assert no_token.status_code == 401
    assert no_token.headers["www-authenticate"].startswith("Bearer")
    bad_token = await post(host, ping, token=False, headers={"Authorization": "Bearer nope"})
    assert bad_token.status_code == 401
    rebinding = await post(host, ping, headers={"Host": "evil.example"})
    assert rebinding.status_code == 403 and "Host" in rebinding.text
    foreign = await post(host, ping, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403 and "Origin" in foreign.text
    allowed = await post(host, ping, headers={"Origin": "https://app.example"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    async with httpx.AsyncClient() as http:
        preflight = await http.options(
            mcp_url(host),
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, mcp-protocol-version",
            },
        )
    assert preflight.status_code == 204
    assert "mcp-protocol-version" in preflight.headers["access-control-allow-headers"]
    log = host.stderr().split("\n", 3)[-1]  # past the banner, which shows the token
    assert "refused an MCP request" in log and "no token" in log and host.token not in log


async def test_malformed_posts_get_one_clear_answer_and_the_host_serves_on(host):
    tokened = {"Authorization": f"Bearer {host.token}"}
    async with httpx.AsyncClient(timeout=30) as http:
        url = mcp_url(host)
        get = await http.get(url, headers=tokened)
        assert get.status_code == 405 and "POST" in get.headers["allow"]
        plain = await http.post(url, content="{}", headers={**tokened, "Accept": "text/html"})
        assert plain.status_code == 406
        form = await http.post(
            url,
            content="a=1",
            headers={**tokened, "Accept": "application/json", "Content-Type": "text/plain"},
        )
        assert form.status_code == 415
        json_headers = {
            **tokened,
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }
        garbage = await http.post(url, content="{nope", headers=json_headers)
        assert garbage.status_code == 400 and garbage.json()["error"]["code"] == -32700
        batch = await http.post(url, content="[]", headers=json_headers)
        assert batch.status_code == 400 and "batches" in batch.json()["error"]["message"]
        huge = await http.post(url, content=b'"' + b"x" * (2 << 20) + b'"', headers=json_headers)
        assert huge.status_code == 413
        sessionless = await http.post(
            url,
            content=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
            headers=json_headers,
        )
        assert sessionless.status_code == 400
        assert "Mcp-Session-Id" in sessionless.json()["error"]["message"]
        stale = await http.post(
            url,
            content=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
            headers={**json_headers, "Mcp-Session-Id": "gone"},
        )
        assert stale.status_code == 404
    future = await post(
        host,
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/list",
            "params": {
                "_meta": {**envelope(), "io.modelcontextprotocol/protocolVersion": "2099-01-01"}
            },
        },
        headers={"MCP-Protocol-Version": "2099-01-01", "Mcp-Method": "tools/list"},
    )
    assert future.status_code == 400
    assert future.json()["error"]["data"]["supported"] == [MODERN]
    mismatch = await post(
        host,
        {"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"_meta": envelope()}},
        headers={"Mcp-Method": "tools/call"},
    )
    assert mismatch.status_code == 400
    assert "mcp-method" in mismatch.json()["error"]["message"].lower()
    unknown = await post(
        host, {"jsonrpc": "2.0", "id": 4, "method": "no/such", "params": {"_meta": envelope()}}
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == -32601
    assert (await modern(host, "tools/list", {}))["tools"]
    status, health = await host.health()
    assert status == 200 and health["status"] == "ok"


async def test_a_legacy_session_is_opened_used_and_ended(host):
    json_headers = {
        "Authorization": f"Bearer {host.token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"},
        },
    }
    async with httpx.AsyncClient(timeout=30) as http:
        url = mcp_url(host)
        opened = await http.post(url, content=json.dumps(initialize), headers=json_headers)
        assert opened.status_code == 200
        assert opened.json()["result"]["protocolVersion"] == "2025-06-18"
        session = {**json_headers, "Mcp-Session-Id": opened.headers["mcp-session-id"]}
        ack = await http.post(
            url,
            content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            headers=session,
        )
        assert ack.status_code == 202
        listed = await http.post(
            url,
            content=json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
            headers={**session, "MCP-Protocol-Version": "2025-06-18"},
        )
        assert [t["name"] for t in listed.json()["result"]["tools"]][0] == "chaos.fail"
        bad_version = await http.post(
            url,
            content=json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
            headers={**session, "MCP-Protocol-Version": "1999-01-01"},
        )
        assert bad_version.status_code == 400
        ended = await http.delete(url, headers=session)
        assert ended.status_code == 204
        after = await http.post(
            url,
            content=json.dumps({"jsonrpc": "2.0", "id": 4, "method": "tools/list"}),
            headers=session,
        )
        assert after.status_code == 404


async def test_websocket_clients_are_served_beside_http_on_the_same_port(host):
    greeted = await modern(
        host, "tools/call", {"name": "workflow.greet", "arguments": {"name": "x"}}
    )
    assert greeted["structuredContent"] == {"greeting": "hello, x"}
    info = await host.call("host/info")
    assert info["version"]


async def test_a_legacy_session_cancels_a_call_with_a_notification(host):
    headers = {
        "Authorization": f"Bearer {host.token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"},
        },
    }
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": "workflow.slow",
            "arguments": {"seconds": 2},
            "_meta": {"progressToken": "p"},
        },
    }
    async with httpx.AsyncClient(timeout=30) as http:
        url = mcp_url(host)
        opened = await http.post(url, content=json.dumps(initialize), headers=headers)
        session = {**headers, "Mcp-Session-Id": opened.headers["mcp-session-id"]}
        await http.post(
            url,
            content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            headers=session,
        )
        lines: list[str] = []
        async with http.stream("POST", url, content=json.dumps(call), headers=session) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            async for line in r.aiter_lines():
                lines.append(line)
                if line.startswith("data:") and "notifications/progress" in line:
                    cancel = {
                        "jsonrpc": "2.0",
                        "method": "notifications/cancelled",
                        "params": {"requestId": 7},
                    }
                    ack = await http.post(url, content=json.dumps(cancel), headers=session)
                    assert ack.status_code == 202
    assert not any('"id":7' in line and '"result"' in line for line in lines)  # no answer
    with anyio.fail_after(20):
        while True:
            runs = (await host.call("runs/list", {"workflow": "slow"}))["runs"]
            if runs and runs[0]["status"] != "running":
                break
            await anyio.sleep(0.1)
    assert runs[0]["status"] == "cancelled"
