"""The ``sampling`` agent provider end to end: a connected MCP client runs the completion.

Nothing is mocked. Over stdio the official SDK client launches ``plait serve --stdio`` and
answers ``sampling/createMessage`` with its ``sampling_callback`` (text, then a ``tool_use`` of a
host tool and the text after its ``tool_result``). Over WebSocket, raw clients that declared the
``sampling`` capability answer for runs other clients started; the client that started a run
is asked first; a refusal, a client that does not answer in time, and no client able to sample
at all each fail the step with an error that says so.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import anyio
import pytest
from mcp import Client, StdioServerParameters, stdio_client, types

import plait
from plait.config import HostConfig

from .conftest import websocket_of
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


def ask(name, agent="helper", **step):
    """A one-step workflow ``name`` asking ``agent`` the input ``q``."""
    return {
        "name": name,
        "inputs": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        "steps": [{"id": "answer", "agent": agent, "prompt": "${inputs.q}", **step}],
        "outputs": {"answer": "${steps.answer.output}"},
    }


WS_WORKFLOWS = (
    ask("ask", system="Be brief."),
    ask("ask_retrying", retry={"attempts": 3, "backoff": "fixed", "base": 0.1}),
    ask("ask_slow", agent="slowpoke"),
)
WS_AGENTS = {
    "helper": {"provider": "sampling", "model": "hinted-model", "max_tokens": 64, "timeout": 5},
    "slowpoke": {"provider": "sampling", "timeout": 0.5},
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
    params = StdioServerParameters(
        command=command[0], args=command[1:], cwd=str(tmp), env=host_env()
    )
    with (tmp / "host.stderr").open("w", encoding="utf-8") as errlog:
        async with Client(
            stdio_client(params, errlog=errlog),
            mode="legacy",
            read_timeout_seconds=30,
            sampling_callback=callback,
            sampling_capabilities=capabilities,
        ) as client:
            yield client


@asynccontextmanager
async def websocket_host(tmp_path, pm):
    """A real host with ``WS_AGENTS`` and ``WS_WORKFLOWS`` and its WebSocket server."""
    config = HostConfig.model_validate(
        {
            "host": {"data_dir": str(tmp_path / "data"), "port": 0},
            "plugins": {"entry_points": False},
            "agents": WS_AGENTS,
        }
    )
    async with plait.Host(config, pm=pm) as host:
        for definition in WS_WORKFLOWS:
            host.register(definition)
        async with websocket_of(host) as served:
            yield served


async def initialize(client, capabilities):
    result = await client.call(
        "initialize",
        {
            "protocolVersion": "2025-11-25",
            "capabilities": capabilities,
            "clientInfo": {"name": "plait-e2e", "version": "1"},
        },
    )
    await client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    return result


def text_reply(text):
    def reply(frame):
        return {
            "result": {
                "role": "assistant",
                "model": "ws-model",
                "content": {"type": "text", "text": text},
            }
        }

    return reply


async def answer(client, asked, reply):
    """Answer each ``sampling/createMessage`` sent to ``client`` with ``reply(frame)``
    (``None``: leave it unanswered); every such request is kept in ``asked``."""
    while True:
        frame = json.loads(await client.ws.recv())
        if frame.get("method") == "sampling/createMessage" and "id" in frame:
            asked.append(frame)
            response = reply(frame)
            if response is not None:
                await client.send({"jsonrpc": "2.0", "id": frame["id"], **response})


async def wait_for(client, run_id):
    """``runs/wait`` until the run ends (bounded); the run as the host shows it."""
    waited = await client.call("runs/wait", {"runId": run_id, "timeout": 5}, timeout=WAIT)
    return waited["run"]


async def start_and_wait(client, workflow, q="hi"):
    started = await client.call("runs/start", {"workflow": workflow, "inputs": {"q": q}})
    return await wait_for(client, started["runId"])


# -- stdio: the official SDK client samples --------------------------------------------------


async def test_sdk_client_answers_sampling_for_a_workflow_it_called(tmp_path):
    seen = []

    async def sample(context, params):
        seen.append(params)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="hello from the client"),
            model="test-model",
        )

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
                role="assistant",
                model="test-model",
                stop_reason="toolUse",
                content=[
                    types.ToolUseContent(id="call-1", name="math.sum", input={"values": [1, 2]})
                ],
            )
        [text] = results[0].content
        return types.CreateMessageResult(
            role="assistant",
            model="test-model",
            content=types.TextContent(type="text", text=f"the sum is {json.loads(text.text):g}"),
        )

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
    assert (use.type, use.id, use.name, use.input) == (
        "tool_use",
        "call-1",
        "math.sum",
        {"values": [1, 2]},
    )
    [tool_result] = blocks(second[2])
    assert tool_result.type == "tool_result" and tool_result.tool_use_id == "call-1"
    assert [json.loads(c.text) for c in tool_result.content] == [3]


# -- WebSocket: any connected client that declared sampling ----------------------------------


async def test_another_websocket_client_that_declared_sampling_answers(tmp_path, pm):
    asked = []
    with anyio.fail_after(3 * WAIT):
        async with websocket_host(tmp_path, pm) as s:
            async with s.client() as a, s.client() as b, anyio.create_task_group() as tg:
                init = await initialize(a, {"sampling": {}})
                assert init["protocolVersion"] == "2025-11-25"
                tg.start_soon(answer, a, asked, text_reply("answer from A"))
                run = await start_and_wait(b, "ask")  # B never sent initialize
                tg.cancel_scope.cancel()
    assert run["status"] == "succeeded", run["error"]
    assert run["outputs"] == {"answer": "answer from A"}
    assert len(asked) == 1
    request = asked[0]
    assert isinstance(request["id"], str)
    assert request["params"] == {
        "messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}],
        "systemPrompt": "Be brief.",
        "maxTokens": 64,
        "modelPreferences": {"hints": [{"name": "hinted-model"}]},
    }
    assert b.notifications == []  # B, which cannot sample, was never asked


async def test_the_client_that_started_the_run_is_asked_first(tmp_path, pm):
    asked_a, asked_b = [], []
    with anyio.fail_after(3 * WAIT):
        async with websocket_host(tmp_path, pm) as s:
            async with s.client() as a, s.client() as b, s.client() as c:
                await initialize(a, {"sampling": {}})
                await initialize(b, {"sampling": {}})
                async with anyio.create_task_group() as tg:
                    tg.start_soon(answer, a, asked_a, text_reply("from A"))
                    tg.start_soon(answer, b, asked_b, text_reply("from B"))
                    # A and B read only sampling requests now: C starts runs for them.
                    by_c = await start_and_wait(c, "ask")
                    tg.cancel_scope.cancel()
                # B starts a run: B is asked, though A could answer too. The request may
                # come before the answer to runs/start: read both, in either order.
                await b.send(
                    {
                        "jsonrpc": "2.0",
                        "id": "start",
                        "method": "runs/start",
                        "params": {"workflow": "ask", "inputs": {"q": "mine"}},
                    }
                )
                frames = [await b.recv(WAIT), await b.recv(WAIT)]
                [started] = [f["result"] for f in frames if f.get("id") == "start"]
                [frame] = [f for f in frames if f.get("method") == "sampling/createMessage"]
                await b.send(
                    {"jsonrpc": "2.0", "id": frame["id"], **text_reply("from B, the origin")(frame)}
                )
                by_b = await wait_for(c, started["runId"])
                await a.silent(0.1)  # A was not asked
    assert by_c["status"] == "succeeded"
    assert by_c["outputs"]["answer"] in ("from A", "from B")
    assert len(asked_a) + len(asked_b) == 1
    assert by_b["status"] == "succeeded", by_b["error"]
    assert by_b["outputs"] == {"answer": "from B, the origin"}
    assert frame["params"]["messages"][0]["content"]["text"] == "mine"


async def test_a_client_that_refuses_fails_the_step_without_retries(tmp_path, pm):
    asked = []

    def refuse(frame):
        return {"error": {"code": -32600, "message": "the user declined"}}

    with anyio.fail_after(3 * WAIT):
        async with websocket_host(tmp_path, pm) as s:
            async with s.client() as a, s.client() as b, anyio.create_task_group() as tg:
                await initialize(a, {"sampling": {}})
                tg.start_soon(answer, a, asked, refuse)
                run = await start_and_wait(b, "ask_retrying")
                tg.cancel_scope.cancel()
    assert run["status"] == "failed"
    message = run["error"]["message"]
    assert "the client refused sampling/createMessage: the user declined" in message, message
    assert run["steps"]["answer"]["attempts"] == 1  # a refusal is not retried
    assert len(asked) == 1


async def test_a_client_that_does_not_answer_in_time_fails_the_step(tmp_path, pm):
    asked = []
    with anyio.fail_after(3 * WAIT):
        async with websocket_host(tmp_path, pm) as s:
            async with s.client() as a, s.client() as b, anyio.create_task_group() as tg:
                await initialize(a, {"sampling": {}})
                tg.start_soon(answer, a, asked, lambda frame: None)
                run = await start_and_wait(b, "ask_slow")
                tg.cancel_scope.cancel()
    assert run["status"] == "failed"
    message = run["error"]["message"]
    assert "did not answer sampling/createMessage within 0.5s" in message, message
    assert len(asked) == 1


async def test_a_run_fails_when_no_connected_client_declared_sampling(tmp_path, pm):
    with anyio.fail_after(3 * WAIT):
        async with websocket_host(tmp_path, pm) as s, s.client() as b:
            assert (await b.call("host/info"))["counts"]["connections"] == 1
            run = await start_and_wait(b, "ask")
            await b.silent(0.1)  # no sampling/createMessage came to B
    assert run["status"] == "failed"
    assert run["outputs"] is None
    message = run["error"]["message"]
    assert "no connected MCP client declared the sampling capability" in message, message
    step = run["steps"]["answer"]
    assert step["status"] == "failed"
    assert step["error"]["type"] == "agent"
