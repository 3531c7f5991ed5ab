"""docs/reliability.md §18-§22 and §24 on the wire: raw JSON lines to `plait serve --stdio`.

Each test launches the host as a subprocess, writes newline-delimited JSON-RPC to its stdin and
reads every line of its stdout (which must carry protocol messages only).
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from .mcp_helpers import (
    SUPPORTED,
    host_env,
    is_progress,
    is_response,
    raw_stdio_host,
    write_workflows,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    write_workflows(tmp_path / "wf")
    return tmp_path


def call(name: str, arguments: dict, request_id, token=None) -> dict:
    params: dict = {"name": name, "arguments": arguments}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


async def runs_of(raw, workflow: str) -> list[dict]:
    reply = await raw.request("runs/list", {"workflow": workflow})
    assert "result" in reply, reply
    return reply["result"]["runs"]


def error_code(reply: dict) -> int | None:
    return (reply.get("error") or {}).get("code")


# -- 18. initialize first -----------------------------------------------------------------------


async def test_requests_before_initialize_are_refused_and_not_executed_but_ping_works(tmp):
    async with raw_stdio_host(tmp) as raw:
        assert (await raw.request("ping"))["result"] == {}
        listed = await raw.request("tools/list", request_id="early-list")
        assert "result" not in listed and error_code(listed) is not None, listed
        assert listed["id"] == "early-list"
        called = await raw.request(
            "tools/call", {"name": "workflow.greet", "arguments": {"name": "early"}}
        )
        assert "result" not in called and error_code(called) is not None, called
        await raw.initialize()
        assert await runs_of(raw, "greet") == []  # the early call was not executed
        listed = await raw.request("tools/list")
        assert "workflow.greet" in {t["name"] for t in listed["result"]["tools"]}
        raw.assert_clean_stdout()


# -- 19. version negotiation --------------------------------------------------------------------


async def test_an_unsupported_protocol_version_gets_a_counter_offer(tmp):
    async with raw_stdio_host(tmp) as raw:
        reply = await raw.request(
            "initialize",
            {
                "protocolVersion": "1999-01-01",
                "capabilities": {},
                "clientInfo": {"name": "old", "version": "0"},
            },
        )
        if "error" in reply:  # the other allowed answer: -32602 naming the supported versions
            assert error_code(reply) == -32602, reply
            assert set(reply["error"]["data"]["supported"]) & SUPPORTED, reply
        else:
            result = reply["result"]
            assert result["protocolVersion"] in SUPPORTED, result
            assert result["serverInfo"]["name"] == "plait"
            await raw.notify("notifications/initialized")
            listed = await raw.request("tools/list")
            assert "tools" in listed["result"]
        raw.assert_clean_stdout()


async def test_a_supported_protocol_version_is_echoed(tmp):
    async with raw_stdio_host(tmp) as raw:
        result = await raw.initialize("2024-11-05")
        assert result["protocolVersion"] == "2024-11-05"
        assert result["capabilities"]["tools"] is not None


# -- 20. no batches on modern revisions ---------------------------------------------------------


async def test_a_batch_after_a_modern_handshake_gets_one_error_and_nothing_runs(tmp):
    async with raw_stdio_host(tmp) as raw:
        result = await raw.initialize("2025-06-18")
        assert result["protocolVersion"] == "2025-06-18"
        start = len(raw.messages)
        await raw.send(
            [
                call("workflow.slow", {"seconds": 0.05}, "b-slow", token="b-progress"),
                call("workflow.greet", {"name": "batched"}, "b-greet"),
                {"jsonrpc": "2.0", "id": "b-ping", "method": "ping"},
            ]
        )
        reply = await raw.wait_for(lambda m: True, start=start)
        assert isinstance(reply, dict), f"a single error object, not an array: {reply}"
        assert error_code(reply) == -32600 and reply["id"] is None, reply
        # Nothing of the batch ran: no progress, no answers, no runs (slow would take 0.2 s).
        ids = ("b-slow", "b-greet", "b-ping")
        stray = await raw.silent_for(
            lambda m: is_progress("b-progress")(m) or any(is_response(m, i) for i in ids),
            1.0,
            start=start,
        )
        assert stray == []
        assert await runs_of(raw, "slow") == []
        assert await runs_of(raw, "greet") == []
        raw.assert_clean_stdout()


async def test_batches_still_work_under_an_older_revision(tmp):
    async with raw_stdio_host(tmp) as raw:
        await raw.initialize("2025-03-26")
        start = len(raw.messages)
        await raw.send(
            [
                {"jsonrpc": "2.0", "id": "p1", "method": "ping"},
                {"jsonrpc": "2.0", "id": "p2", "method": "ping"},
            ]
        )
        reply = await raw.wait_for(lambda m: True, start=start)
        assert isinstance(reply, list), reply
        assert sorted(r["id"] for r in reply) == ["p1", "p2"]
        assert all(r["result"] == {} for r in reply)


# -- 21. ids ------------------------------------------------------------------------------------


async def test_a_null_id_is_an_invalid_request(tmp):
    async with raw_stdio_host(tmp) as raw:
        await raw.initialize()
        start = len(raw.messages)
        await raw.send(call("workflow.greet", {"name": "null"}, None))
        reply = await raw.wait_for(lambda m: True, start=start)
        assert error_code(reply) == -32600 and reply["id"] is None, reply
        assert await runs_of(raw, "greet") == []
        raw.assert_clean_stdout()


async def test_reusing_an_id_in_flight_is_refused_and_the_original_completes(tmp):
    async with raw_stdio_host(tmp) as raw:
        await raw.initialize()
        start = len(raw.messages)
        await raw.send(call("workflow.slow", {"seconds": 0.2}, 7))
        await anyio.sleep(0.1)  # the first request is in flight (it takes 0.8 s)
        await raw.send({"jsonrpc": "2.0", "id": 7, "method": "ping"})
        first = await raw.wait_for(lambda m: is_response(m, 7), start=start)
        assert "error" in first, f"the duplicate must be refused first: {first}"
        assert error_code(first) in (-32600, -32602), first
        index = raw.messages.index(first) + 1
        done = await raw.wait_for(lambda m: is_response(m, 7), start=index)
        assert done["result"]["isError"] is False, done
        assert (
            done["result"]["structuredContent"]["slept"] >= 0.79
        )  # each sleep measures itself to the ms
        # Type matters: "7" is a different id from 7, and both may be in flight.
        await raw.send(call("workflow.slow", {"seconds": 0.1}, 8))
        await raw.send({"jsonrpc": "2.0", "id": "8", "method": "ping"})
        assert (await raw.wait_for(lambda m: is_response(m, "8"), start=index))["result"] == {}
        assert "result" in await raw.wait_for(lambda m: is_response(m, 8), start=index)
        raw.assert_clean_stdout()


# -- 22. cancellation ---------------------------------------------------------------------------


async def test_a_cancelled_call_gets_no_response_and_its_run_stops(tmp):
    async with raw_stdio_host(tmp) as raw:
        await raw.initialize()
        start = len(raw.messages)
        await raw.send(call("workflow.slow", {"seconds": 3}, "long", token="long-progress"))
        await anyio.sleep(0.3)
        await raw.notify("notifications/cancelled", {"requestId": "long", "reason": "test"})
        # The work stops within 2 s...
        status = None
        with anyio.fail_after(2):
            while status != "cancelled":
                runs = await runs_of(raw, "slow")
                assert len(runs) == 1, runs
                status = runs[0]["status"]
                if status != "cancelled":
                    await anyio.sleep(0.05)
        # ...no response is ever sent for it, and the host keeps answering.
        assert await raw.ping_time() < 0.5
        stray = await raw.silent_for(lambda m: is_response(m, "long"), 2.0, start=start)
        assert stray == []
        assert await raw.ping_time() < 0.5
        greeted = await raw.request(
            "tools/call", {"name": "workflow.greet", "arguments": {"name": "after"}}
        )
        assert greeted["result"]["structuredContent"] == {"greeting": "hello, after"}
        raw.assert_clean_stdout()


async def test_cancelling_an_unknown_or_finished_request_is_harmless(tmp):
    async with raw_stdio_host(tmp) as raw:
        await raw.initialize()
        done = await raw.request(
            "tools/call", {"name": "workflow.greet", "arguments": {"name": "x"}}, request_id="g"
        )
        assert "result" in done
        start = len(raw.messages)
        await raw.notify("notifications/cancelled", {"requestId": "g"})
        await raw.notify("notifications/cancelled", {"requestId": "never-sent"})
        assert await raw.ping_time() < 0.5
        # Notifications are never answered.
        assert [m for m in raw.messages[start:] if m.get("id") in ("g", "never-sent")] == []


# -- 24. arguments and failures -----------------------------------------------------------------


async def test_arguments_are_validated_against_the_input_schema_before_running(tmp):
    async with raw_stdio_host(tmp) as raw:
        await raw.initialize()
        for name, arguments in (
            ("math.sum", {"values": "x"}),
            ("math.sum", {}),
            ("math.sum", {"values": [1], "extra": True}),
            ("workflow.greet", {"name": 5}),
            ("workflow.greet", {}),
        ):
            reply = await raw.request(
                "tools/call", {"name": name, "arguments": arguments}, timeout=3
            )
            assert error_code(reply) == -32602, (name, arguments, reply)
            assert "result" not in reply
        assert await runs_of(raw, "greet") == []  # rejected before a run started
        raw.assert_clean_stdout()


async def test_unknown_methods_and_tools_get_errors(tmp):
    async with raw_stdio_host(tmp) as raw:
        await raw.initialize()
        unknown = await raw.request("tools/frobnicate", {}, timeout=3)
        assert error_code(unknown) == -32601, unknown
        missing = await raw.request(
            "tools/call", {"name": "no.such.tool", "arguments": {}}, timeout=3
        )
        assert "error" in missing or missing["result"]["isError"] is True, missing
        raw.assert_clean_stdout()


async def test_execution_failures_are_error_results(tmp):
    async with raw_stdio_host(tmp) as raw:
        await raw.initialize()
        tool = await raw.request(
            "tools/call", {"name": "chaos.fail", "arguments": {"key": "raw", "times": 5}}
        )
        assert "error" not in tool, tool
        assert tool["result"]["isError"] is True
        assert "planned failure" in tool["result"]["content"][0]["text"]
        run = await raw.request("tools/call", {"name": "workflow.fails", "arguments": {}})
        assert "error" not in run, run
        assert run["result"]["isError"] is True
        assert [r["status"] for r in await runs_of(raw, "fails")] == ["failed"]
        raw.assert_clean_stdout()


# -- the stdio transport itself -----------------------------------------------------------------


async def test_stdout_carries_only_protocol_lines(tmp_path):
    # A workflow file that fails to load, a failing tool and a failing run all produce
    # warnings and logs: they must go to stderr, never to stdout.
    write_workflows(tmp_path / "wf", broken=True)
    async with raw_stdio_host(tmp_path) as raw:
        await raw.initialize()
        await raw.request(
            "tools/call", {"name": "chaos.fail", "arguments": {"key": "log", "times": 5}}
        )
        await raw.request("tools/call", {"name": "workflow.fails", "arguments": {}})
        listed = await raw.request("tools/list")
        names = {t["name"] for t in listed["result"]["tools"]}
        assert "workflow.greet" in names and "workflow.broken" not in names
        raw.assert_clean_stdout()
        assert all(isinstance(m, dict) and m.get("jsonrpc") == "2.0" for m in raw.messages)
    assert "broken.yaml" in (tmp_path / "host.stderr").read_text(encoding="utf-8")


async def test_an_oversized_message_gets_an_error_and_the_host_keeps_serving(tmp):
    env = host_env(PLAIT_LIMITS_MAX_MESSAGE_BYTES="4096")
    async with raw_stdio_host(tmp, env=env) as raw:
        await raw.initialize()
        start = len(raw.messages)
        big = {"jsonrpc": "2.0", "id": "big", "method": "ping", "params": {"pad": "x" * 10_000}}
        await raw.send(big)
        reply = await raw.wait_for(lambda m: True, start=start)
        assert error_code(reply) == -32600, reply
        assert reply["id"] in (None, "big")
        assert await raw.ping_time() < 0.5
        # A message just under the limit is still served, and so is a request after it.
        fits = await raw.request("ping", {"pad": "y" * 3000})
        assert fits["result"] == {}
        greeted = await raw.request(
            "tools/call", {"name": "workflow.greet", "arguments": {"name": "z"}}
        )
        assert greeted["result"]["structuredContent"] == {"greeting": "hello, z"}
        raw.assert_clean_stdout()
        assert len(json.dumps(big)) > 4096


MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
}


async def test_the_2026_revision_needs_no_handshake_and_stamps_its_results(tmp):
    async with raw_stdio_host(tmp) as raw:
        found = await raw.request("server/discover", {"_meta": MODERN_META}, timeout=3)
        assert "2026-07-28" in found["result"]["supportedVersions"], found
        assert "2025-11-25" in found["result"]["supportedVersions"]
        assert found["result"]["resultType"] == "complete"
        assert found["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "plait"
        listed = await raw.request("tools/list", {"_meta": MODERN_META}, timeout=3)
        assert "error" not in listed, listed  # no initialize was sent
        names = [tool["name"] for tool in listed["result"]["tools"]]
        again = await raw.request("tools/list", {"_meta": MODERN_META}, timeout=3)
        assert names == [tool["name"] for tool in again["result"]["tools"]]  # the same order
        greet = next(t for t in listed["result"]["tools"] if t["name"] == "workflow.greet")
        assert greet["outputSchema"]["type"] == "object"
        called = await raw.request(
            "tools/call",
            {"name": "workflow.greet", "arguments": {"name": "ada"}, "_meta": MODERN_META},
            timeout=10,
        )
        assert called["result"]["isError"] is False, called
        assert called["result"]["resultType"] == "complete"
        raw.assert_clean_stdout()


async def test_a_2026_request_with_a_bad_envelope_is_refused_with_what_to_fix(tmp):
    async with raw_stdio_host(tmp) as raw:
        wrong = dict(MODERN_META, **{"io.modelcontextprotocol/protocolVersion": "2099-01-01"})
        refused = await raw.request("tools/list", {"_meta": wrong}, timeout=3)
        assert refused["error"]["code"] == -32022, refused
        assert refused["error"]["data"]["requested"] == "2099-01-01"
        assert "2026-07-28" in refused["error"]["data"]["supported"]
        half = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}
        missing = await raw.request("tools/list", {"_meta": half}, timeout=3)
        assert missing["error"]["code"] == -32602
        assert "clientCapabilities" in missing["error"]["message"]
        # the host went on serving: a good request after the bad ones is answered
        listed = await raw.request("tools/list", {"_meta": MODERN_META}, timeout=3)
        assert "result" in listed
        raw.assert_clean_stdout()


async def test_bad_tool_arguments_are_an_error_result_the_model_can_read(tmp):
    async with raw_stdio_host(tmp) as raw:
        await raw.initialize("2025-11-25")
        typo = await raw.request(
            "tools/call", {"name": "workflow.greet", "arguments": {"nam": "ada"}}, timeout=5
        )
        assert "error" not in typo, typo
        text = typo["result"]["content"][0]["text"]
        assert typo["result"]["isError"] is True
        assert "nam: unknown argument (did you mean 'name'?)" in text, text
        assert "Fix the arguments" in text
    async with raw_stdio_host(tmp) as raw:  # an older revision: a protocol error, as it was
        await raw.initialize("2025-06-18")
        old = await raw.request(
            "tools/call", {"name": "workflow.greet", "arguments": {"name": 5}}, timeout=5
        )
        assert error_code(old) == -32602, old
