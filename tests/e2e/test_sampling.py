"""The ``sampling`` agent provider end to end: a connected MCP client runs the completion.

Nothing is mocked. Over stdio the official SDK client launches ``plait serve --stdio`` and
answers ``sampling/createMessage`` with its ``sampling_callback`` (text, then tool use); over
WebSocket a raw client that declared the ``sampling`` capability answers for a run another
client started, and with no such client the run fails saying so.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import anyio
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters, stdio_client

import plait
from plait.config import HostConfig

from .conftest import Served
from .mcp_helpers import host_env, sdk_runs, stdio_command

pytestmark = pytest.mark.anyio

WAIT = 10.0
"""Bound on one wait; a stdio host is a fresh Python process, so allow for its start."""

ASK_YAML = """\
name: ask
description: Ask the helper agent.
inputs:
  type: object
  properties:
    q: {type: string}
  required: [q]
steps:
  - {id: answer, agent: helper, prompt: "${inputs.q}"}
outputs:
  answer: "${steps.answer.output}"
"""

SUM_YAML = """\
name: add
description: Ask the helper agent, which may use math.sum.
inputs:
  type: object
  properties:
    q: {type: string}
  required: [q]
steps:
  - {id: answer, agent: helper, prompt: "${inputs.q}", tools: [math.sum]}
outputs:
  answer: "${steps.answer.output}"
"""

ASK = {
    "name": "ask",
    "inputs": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    "steps": [{"id": "answer", "agent": "helper", "prompt": "${inputs.q}"}],
    "outputs": {"answer": "${steps.answer.output}"},
}

PLAIT_TOML = """\
[agents.helper]
provider = "sampling"
timeout = 10
"""


def blocks(message):
    """The content blocks of a sampling message (one block or a list)."""
    return message.content if isinstance(message.content, list) else [message.content]


@asynccontextmanager
async def stdio_sampling_host(tmp, callback, capabilities=None):
    """``plait serve --stdio --config plait.toml`` launched by the SDK client that samples."""
    (tmp / "wf").mkdir(exist_ok=True)
    (tmp / "wf" / "ask.yaml").write_text(ASK_YAML, encoding="utf-8")
    (tmp / "wf" / "add.yaml").write_text(SUM_YAML, encoding="utf-8")
    (tmp / "plait.toml").write_text(PLAIT_TOML, encoding="utf-8")
    command = [*stdio_command(tmp), "--config", str(tmp / "plait.toml")]
    params = StdioServerParameters(command=command[0], args=command[1:], cwd=str(tmp),
                                   env=host_env())
    with (tmp / "host.stderr").open("w", encoding="utf-8") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode="legacy",
                          read_timeout_seconds=30, sampling_callback=callback,
                          sampling_capabilities=capabilities) as client:
            yield client


@asynccontextmanager
async def websocket_host(tmp_path, pm, agents):
    """A real host with ``[agents]`` and its WebSocket server, inside this event loop."""
    config = HostConfig.model_validate({
        "host": {"data_dir": str(tmp_path / "data"), "port": 0},
        "plugins": {"entry_points": False}, "agents": agents})
    host = plait.Host(config, pm=pm)
    async with host:
        host.register(ASK)
        found = []
        ready = anyio.Event()

        def on_ready(url, token):
            found.append((url, token))
            ready.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: host.serve_websocket(ready=on_ready))
            with anyio.fail_after(WAIT):
                await ready.wait()
            url, token = found[0]
            port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
            try:
                yield Served(host, url, token, port)
            finally:
                tg.cancel_scope.cancel()


def initialize_params(capabilities):
    return {"protocolVersion": "2025-11-25", "capabilities": capabilities,
            "clientInfo": {"name": "plait-e2e", "version": "1"}}


# -- stdio: the official SDK client samples --------------------------------------------------


async def test_sdk_client_answers_sampling_for_a_workflow_it_called(tmp_path):
    seen = []

    async def sample(context, params):
        seen.append(params)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="hello from the client"),
            model="test-model")

    with anyio.fail_after(30):
        async with stdio_sampling_host(tmp_path, sample) as client:
            assert client.protocol_version == "2025-11-25"
            result = await client.call_tool("workflow.ask", {"q": "hi"})
            runs = await sdk_runs(client, "ask")
    assert result.is_error is False, result.content
    assert result.structured_content == {"answer": "hello from the client"}
    assert json.loads(result.content[0].text) == {"answer": "hello from the client"}
    assert [r["status"] for r in runs] == ["succeeded"]
    assert result.meta is not None and result.meta.get("runId") == runs[0]["id"]
    # One sampling/createMessage, carrying the step's prompt as the user's message.
    assert len(seen) == 1
    params = seen[0]
    assert [m.role for m in params.messages] == ["user"]
    [block] = blocks(params.messages[0])
    assert block.type == "text" and block.text == "hi"
    assert params.max_tokens == 1024
    assert params.tools is None  # the step lists no tools


async def test_sdk_client_uses_a_host_tool_inside_sampling(tmp_path):
    seen = []

    async def sample(context, params):
        seen.append(params)
        last = blocks(params.messages[-1])
        results = [b for b in last if b.type == "tool_result"]
        if not results:
            return types.CreateMessageResultWithTools(
                role="assistant", model="test-model", stop_reason="toolUse",
                content=[types.ToolUseContent(id="call-1", name="math.sum",
                                              input={"values": [1, 2]})])
        [text] = results[0].content
        return types.CreateMessageResult(
            role="assistant", model="test-model",
            content=types.TextContent(type="text", text=f"the sum is {json.loads(text.text):g}"))

    capabilities = types.SamplingCapability(tools=types.SamplingToolsCapability())
    with anyio.fail_after(30):
        async with stdio_sampling_host(tmp_path, sample, capabilities) as client:
            result = await client.call_tool("workflow.add", {"q": "what is 1 + 2?"})
    assert result.is_error is False, result.content
    assert result.structured_content == {"answer": "the sum is 3"}
    assert len(seen) == 2
    # The listed host tool is offered with its input schema.
    first = seen[0]
    assert [t.name for t in first.tools] == ["math.sum"]
    assert first.tools[0].input_schema["properties"]["values"]["type"] == "array"
    # The second request carries the conversation: the prompt, the tool use, its result.
    second = seen[1].messages
    assert [m.role for m in second] == ["user", "assistant", "user"]
    assert blocks(second[0])[0].text == "what is 1 + 2?"
    [use] = blocks(second[1])
    assert (use.type, use.id, use.name, use.input) == ("tool_use", "call-1", "math.sum",
                                                       {"values": [1, 2]})
    [tool_result] = blocks(second[2])
    assert tool_result.type == "tool_result" and tool_result.tool_use_id == "call-1"
    assert [json.loads(c.text) for c in tool_result.content] == [3]


# -- WebSocket: any connected client that declared sampling ----------------------------------


async def test_another_websocket_client_that_declared_sampling_answers(tmp_path, pm):
    asked = []

    async def answer_sampling(a):
        while True:
            frame = json.loads(await a.ws.recv())
            if frame.get("method") == "sampling/createMessage" and "id" in frame:
                asked.append(frame)
                await a.send({"jsonrpc": "2.0", "id": frame["id"], "result": {
                    "role": "assistant", "model": "ws-model",
                    "content": {"type": "text", "text": "answer from A"}}})

    async with websocket_host(tmp_path, pm, {"helper": {"provider": "sampling",
                                                        "timeout": 5}}) as s:
        async with s.client() as a, s.client() as b, anyio.create_task_group() as tg:
            init = await a.call("initialize", initialize_params({"sampling": {}}))
            assert init["protocolVersion"] == "2025-11-25"
            await a.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            tg.start_soon(answer_sampling, a)
            started = await b.call("runs/start", {"workflow": "ask", "inputs": {"q": "hi"}})
            waited = await b.call("runs/wait", {"runId": started["runId"], "timeout": 5},
                                  timeout=WAIT)
            tg.cancel_scope.cancel()
    run = waited["run"]
    assert run["status"] == "succeeded", run["error"]
    assert run["outputs"] == {"answer": "answer from A"}
    assert len(asked) == 1
    request = asked[0]
    assert isinstance(request["id"], str)
    assert request["params"]["messages"] == [
        {"role": "user", "content": {"type": "text", "text": "hi"}}]
    assert b.notifications == []  # B, which cannot sample, was never asked


async def test_a_run_fails_when_no_connected_client_declared_sampling(tmp_path, pm):
    async with websocket_host(tmp_path, pm, {"helper": {"provider": "sampling"}}) as s:
        async with s.client() as b:
            assert (await b.call("host/info"))["counts"]["connections"] == 1
            started = await b.call("runs/start", {"workflow": "ask", "inputs": {"q": "hi"}})
            waited = await b.call("runs/wait", {"runId": started["runId"], "timeout": 5},
                                  timeout=WAIT)
            await b.silent(0.1)  # no sampling/createMessage came to B
    run = waited["run"]
    assert run["status"] == "failed"
    assert run["outputs"] is None
    message = run["error"]["message"]
    assert "no connected MCP client declared the sampling capability" in message, message
    step = run["steps"]["answer"]
    assert step["status"] == "failed"
    assert step["error"]["type"] == "agent"

