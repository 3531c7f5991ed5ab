"""docs/reliability.md §1-§17: JSON-RPC 2.0 over a real WebSocket to a real host."""

from __future__ import annotations

import json
import logging
import math
import time

import anyio
import pytest

from plait.rpc.dispatcher import MethodSpec

from .conftest import Client, serving

pytestmark = pytest.mark.anyio


async def assert_serving(client: Client) -> None:
    """The connection is open and answers a ping quickly."""
    assert await client.ping_time() < 0.5


# -- 1. parse errors ------------------------------------------------------------------------


async def test_malformed_json_gets_the_exact_parse_error_and_the_connection_stays(client):
    await client.send('{"jsonrpc":"2.0","method":"foo,"params":"bar","baz]')
    reply = await client.recv()
    reply["error"].pop("data", None)  # data is optional
    assert reply == {
        "jsonrpc": "2.0",
        "error": {"code": -32700, "message": "Parse error"},
        "id": None,
    }
    await assert_serving(client)


@pytest.mark.parametrize(
    "text",
    [
        '{"jsonrpc":"2.0","method":"ping","id":1',  # truncated
        "",
        "   ",
        "\x00",
        "{'single': 'quotes'}",
        "[1,]",
    ],
)
async def test_other_non_json_gets_parse_error_with_null_id(client, text):
    await client.send(text)
    reply = await client.recv()
    assert reply["error"]["code"] == -32700 and reply["id"] is None
    await assert_serving(client)


async def test_non_utf8_binary_frame_gets_parse_error(client):
    await client.ws.send(b'{"jsonrpc":"2.0","method":"ping","id":1,"x":"\xff\xfe"}')
    reply = await client.recv()
    assert reply["error"]["code"] == -32700 and reply["id"] is None
    await assert_serving(client)


# -- 2-4. envelopes and ids --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '"x"',
        "42",
        "null",
        "true",
        "false",
        "3.5",
        '{"jsonrpc":"2.0","method":1}',
        '{"jsonrpc":"2.0","method":1,"id":7}',
        '{"jsonrpc":"2.0","method":null,"id":7}',
        '{"jsonrpc":"2.0","id":7}',
    ],
)
async def test_non_request_gets_a_single_invalid_request_with_null_id(client, text):
    await client.send(text)
    reply = await client.recv()
    assert isinstance(reply, dict)
    assert reply["jsonrpc"] == "2.0" and reply["id"] is None
    assert reply["error"]["code"] == -32600
    assert "result" not in reply
    await assert_serving(client)


@pytest.mark.parametrize(
    "envelope",
    [
        {},
        {"jsonrpc": "1.0"},
        {"jsonrpc": "2"},
        {"jsonrpc": 2.0},
        {"jsonrpc": "2.0 "},
        {"jsonrpc": None},
        {"jsonrpc": ["2.0"]},
    ],
)
async def test_jsonrpc_member_missing_or_not_exactly_2_0(client, envelope):
    await client.send({**envelope, "method": "ping", "id": 5})
    reply = await client.recv()
    assert reply["error"]["code"] == -32600
    assert reply["id"] is None
    await assert_serving(client)


@pytest.mark.parametrize("bad_id", [{"a": 1}, [1], [], True, False])
async def test_object_array_and_boolean_ids_are_invalid(served, client, bad_id):
    before = len(served.host.engine.runs)
    await client.send(
        {
            "jsonrpc": "2.0",
            "method": "runs/start",
            "params": {"workflow": "quick", "inputs": {"x": 1}},
            "id": bad_id,
        }
    )
    reply = await client.recv()
    assert reply["error"]["code"] == -32600 and reply["id"] is None
    assert len(served.host.engine.runs) == before  # not executed
    await assert_serving(client)


@pytest.mark.parametrize(
    "rid", ["1", 1, "", "abc-😀", 0, -5, 2**53 + 1, 2**64 + 7, -(2**63) - 1, 10**40]
)
async def test_string_and_integer_ids_are_echoed_exactly(client, rid):
    await client.send(f'{{"jsonrpc":"2.0","method":"ping","id":{json.dumps(rid)}}}')
    text = await client.recv_text()
    reply = json.loads(text)
    assert reply["result"] == {}
    assert reply["id"] == rid and type(reply["id"]) is type(rid)
    if isinstance(rid, int):
        assert f'"id":{rid}' in text.replace(" ", "")  # same digits, not a float form


async def test_one_and_string_one_are_distinct_requests(client):
    await client.send(
        '[{"jsonrpc":"2.0","method":"ping","id":1},{"jsonrpc":"2.0","method":"ping","id":"1"}]'
    )
    reply = await client.recv()
    ids = sorted((type(r["id"]).__name__, r["id"]) for r in reply)
    assert ids == [("int", 1), ("str", "1")]
    assert all(r["result"] == {} for r in reply)


# -- 5. unknown methods ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [
        "nope",
        "",
        "__class__",
        "__init__",
        "__call__",
        "__dict__",
        "rpc.discover",
        "rpc.",
        "rpc.anything",
        "RUNS/GET",
        "runs/get ",
        "dispatch",
    ],
)
@pytest.mark.parametrize("rid", [7, "seven"])
async def test_unknown_methods_get_method_not_found_with_the_request_id(client, method, rid):
    reply = await client.request(method, {}, id=rid)
    assert reply["id"] == rid
    assert reply["error"]["code"] == -32601
    assert method in reply["error"]["message"] or method == ""


async def test_no_rpc_method_is_registered(served):
    assert not [m for m in served.host.dispatcher.methods if m.startswith("rpc.") or not m]
    with pytest.raises(ValueError):
        served.host.dispatcher.add(MethodSpec("rpc.discover", lambda s, p: None, None))


# -- 6. params -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("runs/get", {}),  # missing
        ("runs/get", {"runId": "x", "bogus": 1}),  # unknown named param
        ("runs/get", {"runId": 5}),  # wrong type
        ("runs/get", {"runId": None}),
        ("runs/get", ["x"]),  # by position
        ("runs/get", ["x", "y"]),
        ("runs/wait", {"runId": "x", "timeout": "soon"}),
        ("runs/wait", {"runId": "x", "timeout": -1}),
        ("runs/events", {"runId": "x", "since": "0"}),
        ("runs/events", {"runId": "x", "limit": 0}),
        ("runs/start", {"workflow": "quick", "inputs": [1]}),
        ("runs/start", {"workflow": 3}),
        ("runs/list", {"limit": True}),
        ("runs/list", {"status": "nonsense"}),
        ("workflows/get", {"name": "quick", "version": "1"}),
        ("workflows/put", {"definition": "not an object"}),
        ("workflows/put", {}),
        ("host/info", {"x": 1}),
        ("host/info", [1]),
        ("plugins/list", {"verbose": True}),
        ("runs/subscribe", {"runId": 1}),
        ("ping", [1, 2]),
    ],
)
async def test_wrong_params_get_invalid_params_with_the_request_id(client, caplog, method, params):
    caplog.set_level(logging.DEBUG)
    reply = await client.request(method, params, id="p1")
    assert reply["id"] == "p1"
    assert reply["error"]["code"] == -32602, reply
    assert "TypeError" not in json.dumps(reply)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no handler crashed


# -- 7. notifications ----------------------------------------------------------------------------


async def test_notifications_are_never_answered(served, client):
    async def boom(session, params):
        raise RuntimeError("handler blew up")

    served.host.dispatcher.add(MethodSpec("test/boom", boom, None))
    for message in [
        {"jsonrpc": "2.0", "method": "host/info"},  # succeeds
        {"jsonrpc": "2.0", "method": "ping"},
        {"jsonrpc": "2.0", "method": "runs/get", "params": {"runId": "nope"}},  # domain error
        {"jsonrpc": "2.0", "method": "runs/get", "params": {"bogus": 1}},  # bad params
        {"jsonrpc": "2.0", "method": "runs/get", "params": ["x"]},
        {"jsonrpc": "2.0", "method": "no/such/method"},  # unknown
        {"jsonrpc": "2.0", "method": "rpc.discover"},
        {"jsonrpc": "2.0", "method": "test/boom"},  # crashes
        {"jsonrpc": "2.0", "method": "tools/list"},  # needs initialize
    ]:
        await client.send(message)
    await client.silent(0.3)
    reply = await client.request("ping", id="after")
    assert reply == {"jsonrpc": "2.0", "result": {}, "id": "after"}


async def test_a_notification_is_executed(served, client):
    await client.send(
        {
            "jsonrpc": "2.0",
            "method": "runs/start",
            "params": {"workflow": "quick", "inputs": {"x": 4}},
        }
    )
    await client.silent(0.3)
    runs = (await client.call("runs/list", {"workflow": "quick"}))["runs"]
    assert len(runs) == 1


# -- 8-11. batches -------------------------------------------------------------------------------


async def test_empty_batch_gets_a_single_invalid_request_object(client):
    await client.send("[]")
    reply = await client.recv()
    assert isinstance(reply, dict)
    assert reply["error"]["code"] == -32600 and reply["id"] is None
    await assert_serving(client)


async def test_batch_of_non_objects_gets_an_array_of_invalid_requests(client):
    await client.send("[1,2,3]")
    reply = await client.recv()
    assert isinstance(reply, list) and len(reply) == 3
    for item in reply:
        assert item["jsonrpc"] == "2.0" and item["id"] is None
        assert item["error"]["code"] == -32600
    await client.send("[1]")
    reply = await client.recv()
    assert isinstance(reply, list) and len(reply) == 1
    assert reply[0]["error"]["code"] == -32600 and reply[0]["id"] is None


async def test_spec_mixed_batch(served, client):
    put = {"definition": {"name": "from-notification", "steps": [{"id": "a", "transform": "1"}]}}
    batch = [
        {"jsonrpc": "2.0", "method": "host/info", "id": "1"},
        {"jsonrpc": "2.0", "method": "workflows/put", "params": put},  # notification
        {"jsonrpc": "2.0", "method": "workflows/list", "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {
            "jsonrpc": "2.0",
            "method": "runs/start",
            "params": {"workflow": "quick", "inputs": {"x": 21}},
            "id": "9",
        },
    ]
    await client.send(batch)
    reply = await client.recv()
    assert isinstance(reply, list) and len(reply) == 5
    by_id: dict = {}
    for item in reply:
        by_id.setdefault(item["id"], []).append(item)
    assert by_id["1"][0]["result"]["name"] == "plait"
    assert "workflows" in by_id["2"][0]["result"]
    assert by_id[None][0]["error"]["code"] == -32600
    assert by_id["5"][0]["error"]["code"] == -32601
    run_id = by_id["9"][0]["result"]["runId"]
    # the valid items ran, the notification included
    done = await client.call("runs/wait", {"runId": run_id, "timeout": 5})
    assert done["run"]["outputs"] == {"y": 42}
    names = [w["name"] for w in (await client.call("workflows/list"))["workflows"]]
    assert "from-notification" in names


async def test_batch_of_only_notifications_produces_no_frame(served, client):
    await client.send(
        [
            {"jsonrpc": "2.0", "method": "ping"},
            {
                "jsonrpc": "2.0",
                "method": "runs/start",
                "params": {"workflow": "quick", "inputs": {"x": 1}},
            },
            {"jsonrpc": "2.0", "method": "nope"},
        ]
    )
    await client.silent(0.3)
    assert await client.request("ping", id=1) == {"jsonrpc": "2.0", "result": {}, "id": 1}
    assert len((await client.call("runs/list"))["runs"]) == 1  # the valid one ran


def _starts(n: int) -> str:
    return json.dumps(
        [
            {
                "jsonrpc": "2.0",
                "method": "runs/start",
                "params": {"workflow": "quick", "inputs": {"x": i}},
                "id": i,
            }
            for i in range(n)
        ],
        separators=(",", ":"),
    )


async def test_batch_over_the_limit_is_refused_whole_and_nothing_runs(served, client):
    await client.send(_starts(101))
    reply = await client.recv()
    assert isinstance(reply, dict)
    assert reply["error"]["code"] == -32600 and reply["id"] is None
    assert "batch too large" in reply["error"]["message"]
    await anyio.sleep(0.1)
    assert (await client.call("runs/list"))["runs"] == []
    assert served.host.engine.runs == {}
    # exactly the limit is fine
    await client.send(_starts(100))
    reply = await client.recv()
    assert isinstance(reply, list) and len(reply) == 100
    assert all("result" in r for r in reply)


async def test_ten_thousand_item_batch_is_refused_within_a_second(served, client):
    text = _starts(10_000)
    assert len(text.encode()) < served.host.config.limits.max_message_bytes
    async with served.client() as other:
        start = time.perf_counter()
        await client.send(text)
        reply = await client.recv()
        elapsed = time.perf_counter() - start
        assert elapsed < 1.0
        assert isinstance(reply, dict) and reply["error"]["code"] == -32600
        assert served.host.engine.runs == {}
        assert await other.ping_time() < 0.5
        await assert_serving(client)


async def test_batch_items_run_with_bounded_concurrency(served, client, probe):
    # MCP tools/call of probe.work records the tool's peak concurrency; batches are allowed
    # under MCP 2025-03-26.
    init = await client.call(
        "initialize",
        {
            "protocolVersion": "2025-03-26",
            "capabilities": {},
            "clientInfo": {"name": "e2e", "version": "1"},
        },
    )
    assert init["protocolVersion"] == "2025-03-26"
    await client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    batch = [
        {
            "jsonrpc": "2.0",
            "method": "tools/call",
            "id": i,
            "params": {"name": "probe.work", "arguments": {"seconds": 0.1, "label": str(i)}},
        }
        for i in range(40)
    ]
    start = time.perf_counter()
    await client.send(batch)
    reply = await client.recv(timeout=10)
    elapsed = time.perf_counter() - start
    assert len(reply) == 40
    assert sorted(r["id"] for r in reply) == list(range(40))
    assert all(r["result"]["isError"] is False for r in reply)
    assert probe.count("work") == 40
    limit = served.host.config.limits.batch_concurrency
    assert probe.peak == limit  # concurrent, but never more than the limit
    assert elapsed >= (40 / limit) * 0.1 * 0.9


async def test_batch_concurrency_is_per_batch_limit_and_configurable(tmp_path, pm, probe):
    async with serving(tmp_path, pm, batch_concurrency=3) as s, s.client() as c:
        await c.call(
            "initialize",
            {
                "protocolVersion": "2025-03-26",
                "capabilities": {},
                "clientInfo": {"name": "e2e", "version": "1"},
            },
        )
        await c.send(
            [
                {
                    "jsonrpc": "2.0",
                    "method": "tools/call",
                    "id": i,
                    "params": {"name": "probe.work", "arguments": {"seconds": 0.05}},
                }
                for i in range(12)
            ]
        )
        reply = await c.recv(timeout=10)
        assert len(reply) == 12
        assert probe.peak == 3


async def test_batch_concurrency_is_bounded_per_connection_across_batches(served, client, probe):
    await client.call(
        "initialize",
        {
            "protocolVersion": "2025-03-26",
            "capabilities": {},
            "clientInfo": {"name": "e2e", "version": "1"},
        },
    )
    for b in range(2):
        await client.send(
            [
                {
                    "jsonrpc": "2.0",
                    "method": "tools/call",
                    "id": f"{b}-{i}",
                    "params": {"name": "probe.work", "arguments": {"seconds": 0.2}},
                }
                for i in range(16)
            ]
        )
    replies = [await client.recv(timeout=10), await client.recv(timeout=10)]
    assert sorted(len(r) for r in replies) == [16, 16]
    assert probe.peak <= served.host.config.limits.batch_concurrency


async def test_a_result_with_an_overlong_integer_gets_internal_error(served, client):
    async def huge(session, params):
        return {"n": 10**5000}

    served.host.dispatcher.add(MethodSpec("test/huge", huge, None))
    error = await client.error("test/huge")
    assert error["code"] == -32603
    await assert_serving(client)


# -- 14-15. internal errors ------------------------------------------------------------------------


async def test_handler_exception_gets_internal_error_with_only_a_correlation_id(
    served, client, caplog
):
    async def leaky(session, params):
        raise RuntimeError("secret /etc/passwd")

    served.host.dispatcher.add(MethodSpec("test/leaky", leaky, None))
    caplog.set_level(logging.ERROR, logger="plait.rpc")
    text_reply = None
    await client.send({"jsonrpc": "2.0", "method": "test/leaky", "id": 3})
    text_reply = await client.recv_text()
    reply = json.loads(text_reply)
    assert reply["id"] == 3
    assert reply["error"]["code"] == -32603
    correlation = reply["error"]["data"]["correlationId"]
    assert isinstance(correlation, str) and len(correlation) >= 8
    for leak in ("secret", "/etc/passwd", "RuntimeError", "Traceback", ".py", "line "):
        assert leak not in text_reply
    logged = [r for r in caplog.records if correlation in r.getMessage()]
    assert logged, "the log names the correlation id"
    assert logged[0].exc_info is not None
    assert "secret /etc/passwd" in caplog.text and "Traceback" in caplog.text
    await assert_serving(client)


async def test_each_internal_error_gets_its_own_correlation_id(served, client):
    async def leaky(session, params):
        raise KeyError("k")

    served.host.dispatcher.add(MethodSpec("test/leaky2", leaky, None))
    first = await client.error("test/leaky2")
    second = await client.error("test/leaky2")
    assert first["data"]["correlationId"] != second["data"]["correlationId"]


@pytest.mark.parametrize(
    "value",
    [
        {1, 2},
        math.nan,
        math.inf,
        -math.inf,
        b"bytes",
        print,
        {"nested": [object()]},
        {1: "int key"},
        (x for x in ()),
    ],
    ids=["set", "nan", "inf", "-inf", "bytes", "function", "object", "int-key", "generator"],
)
async def test_non_json_result_gets_internal_error_and_the_connection_stays(served, client, value):
    async def returns(session, params):
        return value

    served.host.dispatcher.add(MethodSpec("test/returns", returns, None))
    await client.send({"jsonrpc": "2.0", "method": "test/returns", "id": "r"})
    text = await client.recv_text()
    for word in ("NaN", "Infinity"):
        assert word not in text
    reply = json.loads(text)
    assert reply["id"] == "r"
    assert reply["error"]["code"] == -32603
    assert "correlationId" in reply["error"].get("data", {})
    await assert_serving(client)


async def test_non_json_result_inside_a_batch_fails_only_its_item(served, client):
    async def returns(session, params):
        return {1, 2}

    served.host.dispatcher.add(MethodSpec("test/set", returns, None))
    await client.send(
        [
            {"jsonrpc": "2.0", "method": "test/set", "id": 1},
            {"jsonrpc": "2.0", "method": "ping", "id": 2},
        ]
    )
    reply = {r["id"]: r for r in await client.recv()}
    assert reply[1]["error"]["code"] == -32603
    assert reply[2]["result"] == {}


# -- 16-17. strict JSON and bounded parsing ------------------------------------------------


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
async def test_nan_and_infinity_in_a_request_are_refused(served, client, literal):
    await client.send(
        '{"jsonrpc":"2.0","method":"runs/start","params":{"workflow":"quick",'
        f'"inputs":{{"x":{literal}}}}},"id":1}}'
    )
    text = await client.recv_text()
    reply = json.loads(text)  # standard JSON
    assert reply["error"]["code"] in (-32700, -32602)
    for word in ("NaN", "Infinity"):
        assert word not in text
    assert served.host.engine.runs == {}
    await assert_serving(client)


def _nested(depth: int) -> str:
    return (
        '{"jsonrpc":"2.0","method":"ping","params":{"a":' + "[" * depth + "]" * depth + '},"id":1}'
    )


@pytest.mark.parametrize(
    "text",
    [
        _nested(70),
        _nested(100_000),
        '{"jsonrpc":"2.0","method":"ping","params":{"a":'
        + '{"b":' * 200
        + "1"
        + "}" * 200
        + '},"id":1}',
        '{"jsonrpc":"2.0","method":"ping","params":{"n":' + "9" * 5000 + '},"id":1}',
        '{"jsonrpc":"2.0","method":"ping","params":{"n":-' + "1" * 4301 + '},"id":1}',
        '{"jsonrpc":"2.0","method":"ping","id":' + "7" * 5000 + "}",
    ],
    ids=["depth70", "depth100k", "objects200", "digits5000", "digits4301", "id-digits5000"],
)
async def test_too_deep_or_too_long_numbers_are_refused_fast(served, client, text):
    assert len(text.encode()) < served.host.config.limits.max_message_bytes
    async with served.client() as other:
        await client.ping_time()  # warm
        start = time.perf_counter()
        await client.send(text)
        reply = await client.recv()
        elapsed = time.perf_counter() - start
        assert reply["error"]["code"] in (-32700, -32600)
        assert reply["id"] is None
        assert elapsed < 0.1, f"took {elapsed:.3f}s"
        assert await other.ping_time() < 0.5
        await assert_serving(client)


async def test_nesting_at_the_limit_is_accepted(client):
    # params object (1) + 62 arrays + the envelope (1) = 64 levels
    await client.send(
        '{"jsonrpc":"2.0","method":"ping","params":{"a":' + "[" * 62 + "]" * 62 + '},"id":1}'
    )
    reply = await client.recv()
    assert reply["result"] == {}


async def test_a_4300_digit_number_is_accepted(client):
    await client.send('{"jsonrpc":"2.0","method":"ping","params":{"n":' + "9" * 4300 + '},"id":1}')
    reply = await client.recv()
    assert reply["result"] == {}


async def test_nesting_limit_is_configurable(tmp_path, pm):
    async with serving(tmp_path, pm, max_nesting=8) as s, s.client() as c:
        await c.send(_nested(8))
        assert (await c.recv())["error"]["code"] in (-32700, -32600)
        await c.send(_nested(5))
        assert (await c.recv())["result"] == {}


NUMBER = {
    "name": "num",
    "inputs": {"type": "object", "properties": {"v": {"type": "number"}}},
    "steps": [{"id": "t", "transform": "${inputs.v}"}],
    "outputs": {"v": "${steps.t.output}"},
}


@pytest.mark.parametrize("subscriber", [False, True], ids=["alone", "with-subscriber"])
@pytest.mark.parametrize("literal", ["1e400", "-1E999"])
async def test_number_literals_that_overflow_to_infinity_are_refused(
    tmp_path, pm, literal, subscriber
):
    async with (
        serving(tmp_path, pm, workflows=(NUMBER,)) as s,
        s.client() as c,
        s.client() as watcher,
    ):
        if subscriber:
            await watcher.call("runs/subscribe", {})
        await c.send(
            '{"jsonrpc":"2.0","method":"runs/start","params":{"workflow":"num",'
            f'"inputs":{{"v":{literal}}}}},"id":1}}'
        )
        reply = await c.recv()
        assert reply["error"]["code"] in (-32700, -32602), reply
        await anyio.sleep(0.1)
        assert s.host.engine.runs == {}
        assert await watcher.ping_time() < 0.5


async def test_long_but_finite_floats_are_accepted(tmp_path, pm):
    async with serving(tmp_path, pm, workflows=(NUMBER,)) as s, s.client() as c:
        await c.send(
            '{"jsonrpc":"2.0","method":"runs/start","params":{"workflow":"num",'
            '"inputs":{"v":1.5e300}},"id":1}'
        )
        run_id = (await c.recv())["result"]["runId"]
        run = (await c.call("runs/wait", {"runId": run_id, "timeout": 5}))["run"]
        assert run["outputs"] == {"v": 1.5e300}


async def test_top_level_nesting_and_brackets_inside_strings(client):
    for text in ("[" * 70 + "]" * 70, "[" * 100_000 + "]" * 100_000):
        await client.send(text)
        reply = await client.recv()
        assert isinstance(reply, dict) and reply["error"]["code"] in (-32700, -32600)
    # brackets inside strings (with escaped quotes) are not nesting
    await client.send(
        '{"jsonrpc":"2.0","method":"ping","params":{"s":"\\"' + "[{" * 500 + '"},"id":3}'
    )
    assert (await client.recv())["result"] == {}


MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


async def test_2026_mcp_requests_on_the_websocket_need_no_handshake(client):
    # The stateless revision: each request carries its era; no initialize on this connection.
    listed = await client.call("tools/list", {"_meta": MODERN_META})
    assert listed["resultType"] == "complete" and listed["ttlMs"] == 0
    assert [t["name"] for t in listed["tools"]] == sorted(
        t["name"] for t in listed["tools"] if not t["name"].startswith("workflow.")
    ) + sorted(t["name"] for t in listed["tools"] if t["name"].startswith("workflow."))
    called = await client.call(
        "tools/call", {"name": "probe.echo", "arguments": {"value": 3}, "_meta": MODERN_META}
    )
    assert called["isError"] is False
    assert called["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "plait"
    # a handshake-era MCP request on the same connection still needs initialize
    legacy = await client.request("tools/list", {})
    assert legacy["error"]["code"] == -32600


async def test_a_2026_batch_is_refused_as_a_whole(client):
    item = {"jsonrpc": "2.0", "method": "tools/list", "params": {"_meta": MODERN_META}}
    await client.send([item | {"id": 1}, item | {"id": 2}])
    reply = await client.recv()
    assert reply["error"]["code"] == -32600
    assert "2026-07-28" in reply["error"]["message"]
