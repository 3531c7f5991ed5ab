"""End-to-end tests of the ``openai`` agent provider against a real local HTTP server.

Nothing of plait is mocked: a host runs workflows with ``agent`` steps, and the provider talks
HTTP to a server started by each test on 127.0.0.1. The server speaks the OpenAI
chat-completions wire format (JSON bodies, SSE streams ending with ``data: [DONE]``), answers
from a per-test script of canned responses, records every request (headers, JSON body, time),
and rejects what the real API rejects (function names outside ``^[a-zA-Z0-9_-]{1,64}$``,
tool messages that answer no earlier tool call) with the real API's 400 error shape.
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import json
import re
import threading
import time
import traceback
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio
import httpx
import pytest

import plait
from plait.agents.openai import _retry_after, _safe_names
from plait.config import HostConfig

pytestmark = pytest.mark.anyio

NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
KEY_ENV = "PLAIT_TEST_KEY"


# ------------------------------------------------------------------------------------------
# The stand-in model API: a real HTTP server
# ------------------------------------------------------------------------------------------


class FakeOpenAI:
    """A threaded HTTP server answering ``POST /v1/chat/completions`` from a script.

    ``script`` holds one responder per expected request (a function taking the handler);
    ``default`` answers once the script is used up. ``requests`` records each request as
    ``{"path", "headers" (lower-case names), "body", "at" (time.monotonic())}``.
    """

    def __init__(self):
        self.script = collections.deque()
        self.default = None
        self.requests = []
        self.errors = []
        self.closing = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw)
                outer.requests.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                        "at": time.monotonic(),
                    }
                )
                try:
                    if self.path != "/v1/chat/completions":
                        respond = json_reply({"error": {"message": "not found"}}, status=404)
                    else:
                        problem = wire_problem(body)
                        if problem is not None:
                            respond = json_reply(
                                {
                                    "error": {
                                        "message": problem[1],
                                        "type": "invalid_request_error",
                                        "param": problem[0],
                                        "code": "invalid_value",
                                    }
                                },
                                status=400,
                            )
                        elif outer.script:
                            respond = outer.script.popleft()
                        elif outer.default is not None:
                            respond = outer.default
                        else:
                            respond = json_reply(
                                {"error": {"message": "unexpected request"}}, status=418
                            )
                    respond(self)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                outer.errors.append(traceback.format_exc())

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.closing = self.closing
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.url = f"{self.base_url}/chat/completions"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def add(self, *responders):
        self.script.extend(responders)

    def bodies(self):
        return [r["body"] for r in self.requests]

    def start(self):
        self.thread.start()

    def close(self):
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def wire_problem(body):
    """What the real API would reject in a request body: ``(param, message)`` or ``None``."""
    if not body.get("model"):
        return "model", "you must provide a model parameter"
    for i, tool in enumerate(body.get("tools") or ()):
        name = tool.get("function", {}).get("name", "")
        if not NAME_PATTERN.match(name):
            param = f"tools[{i}].function.name"
            return param, (
                f"Invalid '{param}': string does not match pattern. Expected a "
                "string that matches the pattern '^[a-zA-Z0-9_-]+$'."
            )
    open_calls = set()
    for i, message in enumerate(body.get("messages") or ()):
        for j, call in enumerate(message.get("tool_calls") or ()):
            name = call.get("function", {}).get("name", "")
            if not NAME_PATTERN.match(name):
                param = f"messages[{i}].tool_calls[{j}].function.name"
                return param, (
                    f"Invalid '{param}': string does not match pattern. Expected a "
                    "string that matches the pattern '^[a-zA-Z0-9_-]+$'."
                )
            open_calls.add(call.get("id"))
        if message.get("role") == "tool" and message.get("tool_call_id") not in open_calls:
            return f"messages[{i}].role", (
                "Invalid parameter: messages with role 'tool' must "
                "be a response to a preceeding message with "
                "'tool_calls'."
            )
    return None


def json_reply(body, status=200, headers=None):
    def respond(handler):
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)

    return respond


def sse_reply(chunks, pause=0.0):
    """A ``text/event-stream`` of ``data: {chunk}`` events and ``data: [DONE]``, sent with
    chunked transfer encoding, ``pause`` seconds between events."""

    def respond(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        events = [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]
        for n, event in enumerate(events):
            if n and pause:
                time.sleep(pause)
            data = event.encode()
            handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            handler.wfile.flush()
        handler.wfile.write(b"0\r\n\r\n")

    return respond


def stall(seconds, then):
    """Say nothing for ``seconds`` (or until the server closes), then answer with ``then``."""

    def respond(handler):
        if not handler.server.closing.wait(seconds):
            then(handler)
        handler.close_connection = True

    return respond


def completion(content=None, tool_calls=None, usage=None):
    message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if tool_calls else "stop",
            }
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def tool_call(call_id, name, arguments):
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def chunk(delta=None, finish=None, usage=None):
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "m",
        "choices": [],
    }
    if delta is not None or finish is not None:
        body["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    if usage is not None:
        body["usage"] = usage
    return body


def usage(prompt, completion_tokens):
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


def streamed_text(*parts, tokens=None):
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": p}) for p in parts]
    chunks.append(chunk({}, finish="stop"))
    if tokens is not None:
        chunks.append(chunk(usage=tokens))
    return chunks


# ------------------------------------------------------------------------------------------
# Fixtures and helpers
# ------------------------------------------------------------------------------------------


@pytest.fixture
def api(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    server = FakeOpenAI()
    server.start()
    yield server
    server.close()
    assert not server.errors, server.errors[0]


@contextlib.asynccontextmanager
async def host_for(pm, api, agent=None, **settings):
    table = (
        agent
        if agent is not None
        else {
            "provider": "openai",
            "model": "m",
            "base_url": api.base_url,
            "api_key_env": KEY_ENV,
            **settings,
        }
    )
    config = HostConfig.model_validate(
        {
            "host": {"data_dir": ":memory:"},
            "plugins": {"entry_points": False},
            "agents": {"w": table},
        }
    )
    async with plait.Host(config, pm=pm) as host:
        yield host


async def run_steps(host, *steps):
    host.register({"name": "t", "steps": list(steps)})
    run = await host.wait(await host.start_run("t", {}))
    return run, await host.engine.events(run.id)


def of_type(events, kind):
    return [e.data for e in events if e.type == kind]


# ------------------------------------------------------------------------------------------
# Completions, tools, streaming
# ------------------------------------------------------------------------------------------


async def test_tool_call_round_trip_without_streaming(pm, probe, api):
    api.add(
        json_reply(
            completion(
                tool_calls=[tool_call("call_1", "probe__add", {"a": 2, "b": 3})], usage=usage(10, 5)
            )
        ),
        json_reply(completion("the sum is 5", usage=usage(20, 3))),
    )
    async with host_for(
        pm,
        api,
        stream=False,
        system="be brief",
        temperature=0.2,
        max_tokens=50,
        headers={"X-Team": "qa"},
        extra_body={"seed": 7},
    ) as host:
        spec = host.engine.tools.specs(("probe.add",))[0]
        run, events = await run_steps(
            host, {"id": "ask", "agent": "w", "prompt": "add 2 and 3", "tools": ["probe.add"]}
        )
    assert run.status == "succeeded", run.error
    assert run.steps["ask"].output == "the sum is 5"
    assert probe.calls == [("add", {"a": 2, "b": 3})]

    assert len(api.requests) == 2
    first, second = api.requests
    assert first["path"] == "/v1/chat/completions"
    assert first["headers"]["authorization"] == "Bearer sk-test"
    assert first["headers"]["content-type"].startswith("application/json")
    assert first["headers"]["x-team"] == "qa"
    body = first["body"]
    assert body["model"] == "m"
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "add 2 and 3"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "probe__add",
                "description": spec["description"] or "",
                "parameters": spec["input_schema"],
            },
        }
    ]
    params = body["tools"][0]["function"]["parameters"]
    assert set(params["properties"]) == {"a", "b"}
    assert params["properties"]["a"]["type"] == "integer"
    assert body["temperature"] == 0.2
    assert body["max_tokens"] == 50
    assert body["seed"] == 7
    assert "stream" not in body and "stream_options" not in body
    assert "response_format" not in body

    messages = second["body"]["messages"]
    assert messages[:2] == body["messages"]
    assistant, tool = messages[2:]
    assert assistant["role"] == "assistant" and not assistant.get("content")
    [call] = assistant["tool_calls"]
    assert call["id"] == "call_1" and call["type"] == "function"
    assert call["function"]["name"] == "probe__add"
    assert json.loads(call["function"]["arguments"]) == {"a": 2, "b": 3}
    assert tool == {"role": "tool", "tool_call_id": "call_1", "content": "5"}

    [called] = of_type(events, "agent.tool_call")
    assert called["tool"] == "probe.add"
    assert called["id"] == "call_1"
    assert called["arguments"] == {"a": 2, "b": 3}
    assert called["result"] == 5
    assert [m["usage"] for m in of_type(events, "agent.message")] == [usage(10, 5), usage(20, 3)]
    [total] = of_type(events, "agent.usage")
    assert total["usage"] == usage(30, 8)
    assert total["turns"] == 2
    assert not of_type(events, "agent.delta")


async def test_streamed_text_is_told_in_deltas(pm, api):
    api.add(sse_reply(streamed_text("Hel", "lo, ", "wor", "ld!", tokens=usage(7, 4)), pause=0.12))
    async with host_for(pm, api) as host:
        run, events = await run_steps(host, {"id": "ask", "agent": "w", "prompt": "hi"})
    assert run.status == "succeeded", run.error
    assert run.steps["ask"].output == "Hello, world!"

    [request] = api.requests
    assert request["body"]["stream"] is True
    assert request["body"]["stream_options"] == {"include_usage": True}
    assert "tools" not in request["body"]

    deltas = [e for e in events if e.type == "agent.delta"]
    assert len(deltas) >= 2, "text streamed over ~0.8 s should be told in several bursts"
    assert all(e.step == "ask" for e in deltas)
    assert "".join(e.data["text"] for e in deltas) == "Hello, world!"
    first_delta = events.index(deltas[0])
    message = next(i for i, e in enumerate(events) if e.type == "agent.message")
    assert first_delta < message, "deltas are told before the whole message"
    [total] = of_type(events, "agent.usage")
    assert total["usage"] == usage(7, 4)


async def test_streamed_tool_calls_with_split_arguments(pm, probe, api):
    def part(index, arguments, **extra):
        return chunk(
            {"tool_calls": [{"index": index, **extra, "function": {"arguments": arguments}}]}
        )

    first = [
        chunk(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "probe__add", "arguments": ""},
                    }
                ],
            }
        ),
        part(0, '{"a"'),
        part(0, ': 2, "b'),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "probe__add", "arguments": '{"a": 10'},
                    }
                ]
            }
        ),
        part(0, '": 3}'),
        part(1, ', "b": 20}'),
        chunk({}, finish="tool_calls"),
        chunk(usage=usage(12, 9)),
    ]
    api.add(
        sse_reply(first),
        sse_reply(streamed_text("The sums are ", "5 and 30.", tokens=usage(30, 6))),
    )
    async with host_for(pm, api) as host:
        run, events = await run_steps(
            host, {"id": "ask", "agent": "w", "prompt": "add", "tools": ["probe.add"]}
        )
    assert run.status == "succeeded", run.error
    assert run.steps["ask"].output == "The sums are 5 and 30."
    assert probe.calls == [("add", {"a": 2, "b": 3}), ("add", {"a": 10, "b": 20})]

    calls = of_type(events, "agent.tool_call")
    assert [(c["id"], c["tool"], c["arguments"], c["result"]) for c in calls] == [
        ("call_a", "probe.add", {"a": 2, "b": 3}, 5),
        ("call_b", "probe.add", {"a": 10, "b": 20}, 30),
    ]

    messages = api.requests[1]["body"]["messages"]
    assistant = messages[1]
    assert [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in assistant["tool_calls"]
    ] == [("call_a", "probe__add", {"a": 2, "b": 3}), ("call_b", "probe__add", {"a": 10, "b": 20})]
    assert messages[2:] == [
        {"role": "tool", "tool_call_id": "call_a", "content": "5"},
        {"role": "tool", "tool_call_id": "call_b", "content": "30"},
    ]
    [total] = of_type(events, "agent.usage")
    assert total["usage"] == usage(42, 15)


async def test_call_to_a_tool_the_step_does_not_list_is_answered_with_an_error(pm, probe, api):
    api.add(
        json_reply(completion(tool_calls=[tool_call("call_x", "probe__echo", {"value": "boom"})])),
        json_reply(completion("fine, no echo")),
    )
    async with host_for(pm, api, stream=False) as host:
        run, events = await run_steps(
            host, {"id": "ask", "agent": "w", "prompt": "go", "tools": ["probe.add"]}
        )
    assert run.status == "succeeded", run.error
    assert run.steps["ask"].output == "fine, no echo"
    assert probe.count("echo") == 0
    [called] = of_type(events, "agent.tool_call")
    assert "not available" in called["error"] and "probe.add" in called["error"]
    assert "result" not in called
    tool = api.requests[1]["body"]["messages"][-1]
    assert tool["role"] == "tool" and tool["tool_call_id"] == "call_x"
    assert tool["content"].startswith("error:") and "not available" in tool["content"]


# ------------------------------------------------------------------------------------------
# Retries and failures
# ------------------------------------------------------------------------------------------


async def test_429_waits_what_retry_after_says(pm, api):
    api.add(
        json_reply(
            {"error": {"message": "Rate limit reached", "type": "requests"}},
            status=429,
            headers={"Retry-After": "0.3"},
        ),
        sse_reply(streamed_text("ok")),
    )
    async with host_for(pm, api) as host:
        run, _ = await run_steps(host, {"id": "ask", "agent": "w", "prompt": "hi"})
    assert run.status == "succeeded", run.error
    assert run.steps["ask"].output == "ok"
    assert len(api.requests) == 2
    gap = api.requests[1]["at"] - api.requests[0]["at"]
    assert 0.28 <= gap < 0.45, f"waited {gap:.2f}s, not Retry-After's 0.3 s (nor the 0.5 s backoff)"


async def test_retry_after_forms():
    def after(value):
        return _retry_after(httpx.Response(429, headers={"Retry-After": value}))

    later = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    assert 8.5 <= after(later) <= 10.0
    past = email.utils.format_datetime(datetime.now(UTC) - timedelta(seconds=30), usegmt=True)
    assert after(past) == 0.0
    assert after("2.5") == 2.5
    assert after("3600") == 60.0
    assert after("soon") is None
    assert _retry_after(httpx.Response(429)) is None


async def test_500_on_every_request_fails_after_max_retries(pm, api):
    api.default = json_reply({"error": {"message": "The server had an error"}}, status=500)
    async with host_for(pm, api, max_retries=2) as host:
        run, _ = await run_steps(host, {"id": "ask", "agent": "w", "prompt": "hi"})
    assert run.status == "failed"
    assert len(api.requests) == 3
    times = [r["at"] for r in api.requests]
    assert times[1] - times[0] >= 0.45 and times[2] - times[1] >= 0.95, "a growing backoff"
    for message in (run.error["message"], run.steps["ask"].error["message"]):
        assert "500" in message
        assert api.url in message
        assert "The server had an error" in message
        assert "3 tries" in message


async def test_400_fails_at_once_with_the_servers_message(pm, api):
    api.add(
        json_reply(
            {
                "error": {
                    "message": "model not found",
                    "type": "invalid_request_error",
                    "code": "model_not_found",
                }
            },
            status=400,
        )
    )
    async with host_for(pm, api) as host:
        run, _ = await run_steps(
            host,
            {"id": "ask", "agent": "w", "prompt": "hi", "retry": {"attempts": 3, "base": 0.01}},
        )
    assert run.status == "failed"
    assert len(api.requests) == 1, "a 400 is neither retried by the provider nor by the step"
    assert "model not found" in run.error["message"]
    assert "400" in run.error["message"]


async def test_error_body_with_a_string_error(pm, api):
    api.add(json_reply({"error": "model not found", "error_type": "validation"}, status=400))
    async with host_for(pm, api) as host:
        run, _ = await run_steps(host, {"id": "ask", "agent": "w", "prompt": "hi"})
    assert run.status == "failed"
    assert len(api.requests) == 1
    assert "model not found" in run.error["message"]


async def test_a_stalled_server_times_out_and_is_retried(pm, api):
    api.default = stall(1.0, json_reply(completion("too late")))
    started = time.monotonic()
    async with host_for(pm, api, timeout=0.3, max_retries=1) as host:
        run, _ = await run_steps(host, {"id": "ask", "agent": "w", "prompt": "hi"})
    elapsed = time.monotonic() - started
    assert run.status == "failed"
    assert len(api.requests) == 2
    assert "timed out" in run.error["message"]
    assert api.url in run.error["message"]
    assert "2 tries" in run.error["message"]
    assert elapsed < 1.9, f"two 0.3 s timeouts and a 0.5 s backoff took {elapsed:.2f}s"


# ------------------------------------------------------------------------------------------
# Structured output
# ------------------------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "required": ["score"],
    "properties": {"score": {"type": "number"}, "note": {"type": "string"}},
}


async def test_output_schema_with_json_schema_response_format(pm, api):
    api.add(json_reply(completion('{"score": 7, "note": "solid"}', usage=usage(5, 5))))
    async with host_for(pm, api, stream=False, response_format="json_schema") as host:
        run, _ = await run_steps(
            host, {"id": "ask", "agent": "w", "prompt": "rate it", "output_schema": SCHEMA}
        )
    assert run.status == "succeeded", run.error
    assert run.steps["ask"].output == {"score": 7, "note": "solid"}
    [body] = api.bodies()
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": SCHEMA},
    }


async def test_output_schema_repair_turn(pm, api):
    api.add(
        sse_reply(streamed_text('{"score": "high"}')), sse_reply(streamed_text('{"score": ', "9}"))
    )
    async with host_for(pm, api, response_format="json_object") as host:
        run, events = await run_steps(
            host, {"id": "ask", "agent": "w", "prompt": "rate it", "output_schema": SCHEMA}
        )
    assert run.status == "succeeded", run.error
    assert run.steps["ask"].output == {"score": 9}
    first, second = api.bodies()
    assert first["response_format"] == {"type": "json_object"}
    assert second["messages"][:2] == [
        {"role": "user", "content": "rate it"},
        {"role": "assistant", "content": '{"score": "high"}'},
    ]
    repair = second["messages"][2]
    assert repair["role"] == "user"
    assert "does not match" in repair["content"]
    assert "$.score" in repair["content"] and "number" in repair["content"]
    assert len(second["messages"]) == 3
    assert [e["turn"] for e in of_type(events, "agent.message")] == [1, 2]


# ------------------------------------------------------------------------------------------
# Conversations
# ------------------------------------------------------------------------------------------


async def test_conversation_carries_over_two_steps(pm, api):
    api.add(json_reply(completion("Paris")), json_reply(completion("About 2.1 million")))
    async with host_for(pm, api, stream=False) as host:
        run, _ = await run_steps(
            host,
            {"id": "one", "agent": "w", "prompt": "Capital of France?", "conversation": "c"},
            {
                "id": "two",
                "agent": "w",
                "prompt": "Its population?",
                "conversation": "c",
                "needs": ["one"],
            },
        )
    assert run.status == "succeeded", run.error
    assert run.steps["two"].output == "About 2.1 million"
    first, second = api.bodies()
    assert first["messages"] == [{"role": "user", "content": "Capital of France?"}]
    assert second["messages"] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "Its population?"},
    ]
    assert [m.role for m in run.conversations["c"]] == ["user", "assistant", "user", "assistant"]


async def test_tool_history_continued_by_a_step_without_tools(pm, api):
    api.add(
        json_reply(completion(tool_calls=[tool_call("call_1", "probe__add", {"a": 2, "b": 3})])),
        json_reply(completion("5")),
        json_reply(completion('{"ok": true}')),
    )
    async with host_for(pm, api, stream=False) as host:
        run, _ = await run_steps(
            host,
            {
                "id": "one",
                "agent": "w",
                "prompt": "add",
                "tools": ["probe.add"],
                "conversation": "c",
            },
            {
                "id": "two",
                "agent": "w",
                "prompt": "verdict?",
                "conversation": "c",
                "needs": ["one"],
                "output_schema": {"type": "object", "required": ["ok"]},
            },
        )
    assert run.status == "succeeded", run.error
    assert run.steps["two"].output == {"ok": True}
    third = api.bodies()[2]
    assert "tools" not in third
    assert third["messages"][1]["tool_calls"][0]["function"]["name"] == "probe__add"


async def test_tool_names_are_made_valid_function_names():
    names = _safe_names(
        [{"name": "git.diff"}, {"name": "git__diff"}, {"name": "a b/c"}, {"name": "x" * 80}]
    )
    assert list(names.values()) == ["git.diff", "git__diff", "a b/c", "x" * 80]
    assert list(names)[:3] == ["git__diff", "git__diff_2", "a_b_c"]
    assert all(NAME_PATTERN.match(n) for n in names)


# ------------------------------------------------------------------------------------------
# Budget and configuration
# ------------------------------------------------------------------------------------------


async def test_tokens_per_minute_budget_makes_the_next_step_wait(pm, api):
    api.add(
        json_reply(completion("first", usage=usage(60000, 1000))),
        json_reply(completion("second", usage=usage(20, 2))),
    )
    async with host_for(pm, api, stream=False, tokens_per_minute=60000) as host:
        host.register(
            {
                "name": "t",
                "steps": [
                    {"id": "first", "agent": "w", "prompt": "one"},
                    {"id": "second", "agent": "w", "prompt": "two", "needs": ["first"]},
                ],
            }
        )
        run_id = await host.start_run("t", {})
        seen = None
        with anyio.fail_after(10):
            while True:
                live = host.engine.runs[run_id]
                state = live.steps.get("second")
                if state is not None and state.status == "waiting":
                    seen = (state.status, state.reason, (await host.get_run(run_id)).status)
                    break
                assert not live.done, "the second step never waited"
                await anyio.sleep(0.01)
        run = await host.wait(run_id)
        events = await host.engine.events(run_id)
    assert seen is not None
    assert "tokens_per_minute" in seen[1] and "'w'" in seen[1]
    assert run.status == "succeeded", run.error
    assert run.steps["second"].output == "second"
    assert run.steps["second"].status == "succeeded" and run.steps["second"].reason is None
    gap = api.requests[1]["at"] - api.requests[0]["at"]
    assert 1.0 <= gap <= 2.5, f"the second request went after {gap:.2f}s"
    waiting = [e for e in events if e.type == "step.waiting"]
    assert [e.step for e in waiting] == ["second"]
    assert "tokens_per_minute" in waiting[0].data["reason"]
    assert waiting[0].data["reason"] == seen[1]
    assert any(e.type == "step.resumed" and e.step == "second" for e in events)


@pytest.mark.parametrize(
    ("table", "names"),
    [
        ({"modle": "m"}, ["modle", "unknown key", "model"]),
        (
            {"model": "m", "response_format": "xml", "max_retries": 99},
            ["response_format", "max_retries"],
        ),
    ],
)
async def test_bad_agent_table_fails_the_step_clearly(pm, api, table, names):
    agent = {"provider": "openai", "base_url": api.base_url, **table}
    async with host_for(pm, api, agent=agent) as host:
        run, _ = await run_steps(
            host,
            {"id": "ask", "agent": "w", "prompt": "hi", "retry": {"attempts": 3, "base": 0.01}},
        )
    assert run.status == "failed"
    message = run.steps["ask"].error["message"]
    assert "invalid configuration" in message
    for name in names:
        assert name in message
    assert api.requests == []


# ------------------------------------------------------------------------------------------
# Traces
# ------------------------------------------------------------------------------------------


async def test_a_traced_completion_carries_the_trace_to_the_endpoint(pm, api):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from plait.telemetry.tracing import Tracing

    api.add(sse_reply(streamed_text("traced", tokens=usage(3, 1))))
    api.add(json_reply(completion("plain")))
    exporter = InMemorySpanExporter()
    tracing = Tracing.to(exporter)
    config = HostConfig.model_validate(
        {
            "host": {"data_dir": ":memory:"},
            "plugins": {"entry_points": False},
            "agents": {
                "w": {
                    "provider": "openai",
                    "model": "m",
                    "base_url": api.base_url,
                    "api_key_env": KEY_ENV,
                }
            },
        }
    )
    async with plait.Host(config, pm=pm, tracing=tracing) as host:
        run, _ = await run_steps(host, {"id": "ask", "agent": "w", "prompt": "hi"})
    assert run.status == "succeeded", run.error
    [chat] = [span for span in exporter.get_finished_spans() if span.name == "chat m"]
    sent = api.requests[0]["headers"]["traceparent"]
    _, trace_id, span_id, _ = sent.split("-")
    assert int(trace_id, 16) == chat.context.trace_id
    assert int(span_id, 16) == chat.context.span_id  # the endpoint's parent is the chat span
    assert chat.attributes["gen_ai.usage.input_tokens"] == 3
    assert chat.attributes["gen_ai.usage.output_tokens"] == 1
    tracing.shutdown()

    async with host_for(pm, api) as host:  # not traced: nothing is added
        run, _ = await run_steps(host, {"id": "ask", "agent": "w", "prompt": "hi"})
    assert run.status == "succeeded", run.error
    assert "traceparent" not in api.requests[1]["headers"]
