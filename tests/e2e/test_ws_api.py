"""Every plait method over a real WebSocket, happy paths and error codes."""

from __future__ import annotations

import time

import anyio
import pytest

from .conftest import GATE, QUICK, SLOW, serving

pytestmark = pytest.mark.anyio

BROKEN_YAML = """\
name: broken
steps:
  - id: a
    tool: probe.echo
    with: {value: 1}
  - id: b
    transform: "${steps.nope.output}"
  - id: c
    transform: 1
    bogus_field: 1
  - id: d
    transform: "${ 1 + }"
"""

GOOD_YAML = """\
name: yamlflow
description: from YAML text
inputs:
  type: object
  properties: {word: {type: string}}
steps:
  - id: shout
    transform: "${inputs.word | upper}"
  - {id: said, tool: probe.echo, with: {value: "${steps.shout.output}"}}
outputs:
  said: "${steps.said.output}"
"""


async def start(client, workflow: str, inputs: dict | None = None, **extra) -> str:
    params = {"workflow": workflow, "inputs": inputs or {}, **extra}
    return (await client.call("runs/start", params))["runId"]


async def wait_status(client, run_id: str, *statuses: str) -> dict:
    with anyio.fail_after(5):
        while True:
            run = (await client.call("runs/get", {"runId": run_id}))["run"]
            if run["status"] in statuses:
                return run
            await anyio.sleep(0.01)


# -- workflows -----------------------------------------------------------------------------------


async def test_put_yaml_source_and_run_it(client):
    assert await client.call("workflows/put", {"source": GOOD_YAML}) == {
        "name": "yamlflow",
        "version": 1,
    }
    run_id = await start(client, "yamlflow", {"word": "on"})  # YAML 1.2: "on" stays a string
    done = await client.call("runs/wait", {"runId": run_id, "timeout": 5})
    assert done["run"]["status"] == "succeeded"
    assert done["run"]["outputs"] == {"said": "ON"}
    listed = {w["name"]: w for w in (await client.call("workflows/list"))["workflows"]}
    assert listed["yamlflow"] == {"name": "yamlflow", "version": 1, "description": "from YAML text"}


async def test_put_identical_keeps_the_version_and_a_change_bumps_it(client):
    definition = {"name": "ver", "steps": [{"id": "a", "transform": 1}]}
    assert (await client.call("workflows/put", {"definition": definition}))["version"] == 1
    assert (await client.call("workflows/put", {"definition": definition}))["version"] == 1
    changed = {"name": "ver", "steps": [{"id": "a", "transform": 2}]}
    assert (await client.call("workflows/put", {"definition": changed}))["version"] == 2
    assert (await client.call("workflows/put", {"definition": changed}))["version"] == 2
    versions = (await client.call("workflows/versions", {"name": "ver"}))["versions"]
    assert [(v["version"], v["current"]) for v in versions] == [(1, False), (2, True)]
    assert all(isinstance(v["created_at"], float) for v in versions)
    got = (await client.call("workflows/get", {"name": "ver"}))["workflow"]
    assert got["version"] == 2 and got["steps"][0]["transform"] == 2
    old = (await client.call("workflows/get", {"name": "ver", "version": 1}))["workflow"]
    assert old["version"] == 1 and old["steps"][0]["transform"] == 1
    # rollback: version 1 is current again, and new runs use it
    assert await client.call("workflows/rollback", {"name": "ver", "version": 1}) == {
        "name": "ver",
        "version": 1,
    }
    versions = (await client.call("workflows/versions", {"name": "ver"}))["versions"]
    assert [(v["version"], v["current"]) for v in versions] == [(1, True), (2, False)]
    run_id = await start(client, "ver")
    run = (await client.call("runs/wait", {"runId": run_id, "timeout": 5}))["run"]
    assert run["version"] == 1 and run["steps"]["a"]["output"] == 1
    # an explicit version still works
    run_id = await start(client, "ver", version=2)
    run = (await client.call("runs/wait", {"runId": run_id, "timeout": 5}))["run"]
    assert run["version"] == 2 and run["steps"]["a"]["output"] == 2


async def test_source_and_definition_put_the_same_content(client):
    await client.call("workflows/put", {"source": GOOD_YAML})
    got = (await client.call("workflows/get", {"name": "yamlflow"}))["workflow"]
    got.pop("version")
    again = await client.call("workflows/put", {"definition": got})
    assert again == {"name": "yamlflow", "version": 1}


async def test_invalid_workflow_gets_32003_with_every_problem_and_lines(client):
    error = await client.error("workflows/put", {"source": BROKEN_YAML})
    assert error["code"] == -32003
    problems = error["data"]
    assert isinstance(problems, list) and len(problems) >= 3
    for problem in problems:
        assert set(problem) >= {"path", "message"}
        assert isinstance(problem["line"], int) and problem["line"] >= 1
    by_path = {p["path"]: p for p in problems}
    assert "nope" in by_path["steps[1].transform"]["message"]
    assert by_path["steps[1].transform"]["line"] == 7
    assert by_path["steps[2].bogus_field"]["line"] == 10
    assert by_path["steps[3].transform"]["line"] == 12
    assert "broken" not in [w["name"] for w in (await client.call("workflows/list"))["workflows"]]
    # as an object: paths, no lines needed
    error = await client.error(
        "workflows/put",
        {"definition": {"name": "bad", "steps": [{"id": "x", "nosuchsteptype": 1}]}},
    )
    assert error["code"] == -32003 and error["data"][0]["path"].startswith("steps[0]")
    # a duplicate id names the first one
    error = await client.error(
        "workflows/put",
        {"source": ("name: dup\nsteps:\n  - {id: a, transform: 1}\n  - {id: a, transform: 2}\n")},
    )
    assert error["code"] == -32003
    assert error["data"] == [
        {"path": "steps[1].id", "line": 4, "message": "duplicate step id 'a' (first at steps[0])"}
    ]
    # not even YAML
    error = await client.error("workflows/put", {"source": "name: [unclosed\n  steps: -"})
    assert error["code"] == -32003 and error["data"]


async def test_validate_reports_without_registering(client):
    assert await client.call("workflows/validate", {"source": GOOD_YAML}) == {
        "valid": True,
        "errors": [],
    }
    result = await client.call("workflows/validate", {"source": BROKEN_YAML})
    assert result["valid"] is False
    assert len(result["errors"]) >= 3
    assert all("line" in e and "path" in e and "message" in e for e in result["errors"])
    names = [w["name"] for w in (await client.call("workflows/list"))["workflows"]]
    assert "yamlflow" not in names and "broken" not in names
    cycle = {
        "name": "cyc",
        "steps": [
            {"id": "a", "transform": "${steps.b.output}"},
            {"id": "b", "transform": "${steps.a.output}"},
        ],
    }
    result = await client.call("workflows/validate", {"definition": cycle})
    assert result["valid"] is False
    assert "a" in str(result["errors"]) and "b" in str(result["errors"])


async def test_definition_params_need_exactly_one_of_the_two(client):
    for params in (
        {},
        {"definition": QUICK, "source": GOOD_YAML},
        {"definition": None},
        {"source": 5},
    ):
        for method in ("workflows/put", "workflows/validate"):
            assert (await client.error(method, params))["code"] == -32602, (method, params)


async def test_unknown_workflow_errors(client):
    for method, params in [
        ("workflows/get", {"name": "nope"}),
        ("workflows/get", {"name": "quick", "version": 9}),
        ("workflows/delete", {"name": "nope"}),
        ("workflows/versions", {"name": "nope"}),
        ("workflows/rollback", {"name": "nope", "version": 1}),
        ("workflows/rollback", {"name": "quick", "version": 9}),
        ("runs/start", {"workflow": "nope"}),
        ("runs/start", {"workflow": "quick", "version": 9, "inputs": {"x": 1}}),
    ]:
        error = await client.error(method, params)
        assert error["code"] == -32001, (method, error)
        assert error["message"]


async def test_delete_workflow(client):
    assert await client.call("workflows/delete", {"name": "quick"}) == {}
    assert (await client.error("workflows/get", {"name": "quick"}))["code"] == -32001
    assert (await client.error("workflows/delete", {"name": "quick"}))["code"] == -32001
    names = [w["name"] for w in (await client.call("workflows/list"))["workflows"]]
    assert names == ["gate", "slow"]


# -- runs ----------------------------------------------------------------------------------------


async def test_start_get_wait(client):
    started = await client.call("runs/start", {"workflow": "quick", "inputs": {"x": 21}})
    assert set(started) == {"runId", "status"}
    assert started["status"] in ("pending", "running", "succeeded")
    run = (await client.call("runs/wait", {"runId": started["runId"], "timeout": 5}))["run"]
    assert run["status"] == "succeeded" and run["outputs"] == {"y": 42}
    got = (await client.call("runs/get", {"runId": started["runId"]}))["run"]
    assert got["id"] == started["runId"] and got["workflow"] == "quick"
    assert got["steps"]["double"]["status"] == "succeeded"
    assert got["steps"]["double"]["output"] == 42
    assert got["progress"]["done"] == got["progress"]["total"] == 1
    assert got["progress"]["percent"] == 100
    assert got["error"] is None


async def test_unknown_run_errors(client):
    for method, params in [
        ("runs/get", {"runId": "nope"}),
        ("runs/wait", {"runId": "nope", "timeout": 1}),
        ("runs/cancel", {"runId": "nope"}),
        ("runs/pause", {"runId": "nope"}),
        ("runs/resume", {"runId": "nope"}),
        ("runs/signal", {"runId": "nope", "event": "go"}),
        ("runs/events", {"runId": "nope"}),
        ("runs/subscribe", {"runId": "nope"}),
    ]:
        error = await client.error(method, params)
        assert error["code"] == -32002, (method, error)


async def test_invalid_inputs_get_32602_and_start_nothing(served, client):
    for inputs in ({}, {"x": "one"}, {"x": 1.5}):
        error = await client.error("runs/start", {"workflow": "quick", "inputs": inputs})
        assert error["code"] == -32602, (inputs, error)
        assert error["data"]["problems"]
    assert (await client.call("runs/list"))["runs"] == []


async def test_idempotency_key_returns_the_same_run(client):
    first = await start(client, "quick", {"x": 1}, idempotencyKey="order-7")
    again = await start(client, "quick", {"x": 1}, idempotencyKey="order-7")
    # issue 11: the same key with other inputs is an error, not the old run
    error = await client.error(
        "runs/start",
        {"workflow": "quick", "inputs": {"x": 2}, "idempotencyKey": "order-7"},
    )
    assert error["code"] == -32602 and "order-7" in error["message"]
    different = await start(client, "quick", {"x": 1}, idempotencyKey="order-8")
    assert first == again
    assert different != first
    assert len((await client.call("runs/list"))["runs"]) == 2


async def test_list_filters_and_cursor_pagination(client):
    quick = [await start(client, "quick", {"x": i}) for i in range(7)]
    gate = await start(client, "gate")
    for run_id in quick:
        await client.call("runs/wait", {"runId": run_id, "timeout": 5})
    await wait_status(client, gate, "waiting")
    everything = await client.call("runs/list")
    assert len(everything["runs"]) == 8 and everything["nextCursor"] is None
    assert [r["id"] for r in everything["runs"]][0] == gate  # newest first
    pages, cursor = [], None
    while True:
        params = {"workflow": "quick", "limit": 3} | ({"cursor": cursor} if cursor else {})
        page = await client.call("runs/list", params)
        pages.append([r["id"] for r in page["runs"]])
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    flat = [i for p in pages for i in p]
    assert flat == list(reversed(quick))  # newest first, no gap, no repeat
    summary = (await client.call("runs/list", {"limit": 1}))["runs"][0]
    assert {"id", "workflow", "version", "status", "created_at"} <= set(summary)
    waiting = (await client.call("runs/list", {"status": "waiting"}))["runs"]
    assert [r["id"] for r in waiting] == [gate]
    succeeded = await client.call("runs/list", {"status": "succeeded", "workflow": "gate"})
    assert succeeded["runs"] == []
    assert len((await client.call("runs/list", {"status": "succeeded"}))["runs"]) == 7
    bad = await client.error("runs/list", {"cursor": "not-a-cursor"})
    assert bad["code"] == -32602
    await client.call("runs/cancel", {"runId": gate})


async def test_wait_with_timeout_returns_the_run_unfinished(client):
    run_id = await start(client, "gate")
    began = time.perf_counter()
    run = (await client.call("runs/wait", {"runId": run_id, "timeout": 0.3}))["run"]
    elapsed = time.perf_counter() - began
    assert 0.25 < elapsed < 1.5
    assert run["status"] in ("running", "waiting")
    await client.call("runs/cancel", {"runId": run_id})


async def test_signal_reaches_a_wait_step(client):
    run_id = await start(client, "gate")
    waiting = await wait_status(client, run_id, "waiting")
    assert waiting["steps"]["hold"]["status"] == "waiting"
    assert (
        await client.call("runs/signal", {"runId": run_id, "event": "go", "data": {"ok": [1, 2]}})
        == {}
    )
    run = (await client.call("runs/wait", {"runId": run_id, "timeout": 5}))["run"]
    assert run["status"] == "succeeded"
    assert run["outputs"] == {"got": {"ok": [1, 2]}}
    error = await client.error("runs/signal", {"runId": run_id, "event": "go"})
    assert error["code"] == -32004
    assert (await client.error("runs/signal", {"runId": run_id, "event": ""}))["code"] == -32602


async def test_cancel(client, probe):
    run_id = await start(client, "slow", {"seconds": 30})
    await wait_status(client, run_id, "running")
    with anyio.fail_after(5):
        while probe.active == 0:
            await anyio.sleep(0.01)
    await client.call("runs/cancel", {"runId": run_id})
    run = (await client.call("runs/wait", {"runId": run_id, "timeout": 5}))["run"]
    assert run["status"] == "cancelled"
    assert run["steps"]["work"]["status"] == "cancelled"
    assert probe.active == 0  # the running step was stopped
    error = await client.error("runs/cancel", {"runId": run_id})
    assert error["code"] == -32004


async def test_pause_and_resume(client, probe):
    two = {
        "name": "two",
        "steps": [
            {"id": "first", "tool": "probe.work", "with": {"seconds": 0.3, "label": "1"}},
            {
                "id": "second",
                "tool": "probe.work",
                "with": {"seconds": 0.0, "label": "2"},
                "needs": ["first"],
            },
        ],
        "outputs": {"last": "${steps.second.output}"},
    }
    await client.call("workflows/put", {"definition": two})
    run_id = await start(client, "two")
    with anyio.fail_after(5):
        while probe.active == 0:
            await anyio.sleep(0.01)
    paused = (await client.call("runs/pause", {"runId": run_id}))["run"]
    assert paused["status"] == "paused"
    assert (await client.error("runs/pause", {"runId": run_id}))["code"] == -32004
    await anyio.sleep(0.5)  # first finishes; second must not start while paused
    run = (await client.call("runs/get", {"runId": run_id}))["run"]
    assert run["status"] == "paused"
    assert run["steps"]["first"]["status"] == "succeeded"
    assert run["steps"].get("second", {"status": "pending"})["status"] == "pending"
    resumed = (await client.call("runs/resume", {"runId": run_id}))["run"]
    assert resumed["status"] == "running"
    done = (await client.call("runs/wait", {"runId": run_id, "timeout": 5}))["run"]
    assert done["status"] == "succeeded" and done["outputs"] == {"last": "2"}
    for method in ("runs/pause", "runs/resume", "runs/cancel"):
        error = await client.error(method, {"runId": run_id})
        assert error["code"] == -32004, method
        assert error["data"]["status"] == "succeeded"


async def test_resume_a_running_run_is_not_allowed(client):
    run_id = await start(client, "slow", {"seconds": 0.5})
    await wait_status(client, run_id, "running")
    error = await client.error("runs/resume", {"runId": run_id})
    assert error["code"] == -32004
    assert error["data"]["status"] == "running"
    await client.call("runs/cancel", {"runId": run_id})


async def test_events_since_and_limit(client):
    run_id = await start(client, "quick", {"x": 3})
    await client.call("runs/wait", {"runId": run_id, "timeout": 5})
    events = (await client.call("runs/events", {"runId": run_id}))["events"]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1)) and len(events) >= 5
    assert events[0]["type"] == "run.created" and events[-1]["type"] == "run.succeeded"
    assert {"runId", "seq", "type", "step", "data", "ts"} <= set(events[0])
    window = await client.call("runs/events", {"runId": run_id, "since": 2, "limit": 2})
    assert [e["seq"] for e in window["events"]] == [3, 4]
    assert window["events"] == events[2:4]
    tail = await client.call("runs/events", {"runId": run_id, "since": len(events)})
    assert tail["events"] == []


async def test_plugins_list(client):
    result = await client.call("plugins/list")
    assert isinstance(result["plugins"], list) and result["plugins"]
    text = str(result["plugins"])
    for name in ("probe.work", "transform", "wait", "loop"):
        assert name in text
    assert result.get("failed", []) == []


async def test_host_info_reports_limits_and_counts(served, client):
    await start(client, "quick", {"x": 1})
    info = await client.call("host/info")
    assert info["name"] == "plait" and info["version"]
    assert info["uptime"] >= 0
    assert info["limits"] == served.host.config.limits.model_dump()
    for key in (
        "max_message_bytes",
        "max_batch",
        "max_connections",
        "max_inflight",
        "batch_concurrency",
        "max_nesting",
        "send_queue_messages",
        "send_queue_bytes",
    ):
        assert key in info["limits"]
    counts = info["counts"]
    assert counts["workflows"] == 3
    assert counts["runs"] == 1
    assert counts["connections"] == 1
    async with served.client() as other:
        assert (await other.call("host/info"))["counts"]["connections"] == 2


async def test_limits_from_config_are_reported(tmp_path, pm):
    async with (
        serving(tmp_path, pm, max_batch=7, max_inflight=3, max_connections=5) as s,
        s.client() as c,
    ):
        limits = (await c.call("host/info"))["limits"]
        assert (limits["max_batch"], limits["max_inflight"], limits["max_connections"]) == (7, 3, 5)


async def test_tool_not_found_is_32005(client):
    await client.call(
        "initialize",
        {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "e2e", "version": "1"},
        },
    )
    error = await client.error("tools/call", {"name": "no.such.tool", "arguments": {}})
    assert error["code"] == -32005


# -- busy ----------------------------------------------------------------------------------------


async def test_more_than_max_inflight_requests_get_busy(tmp_path, pm):
    async with serving(tmp_path, pm, max_inflight=2) as s, s.client() as c:
        run_id = (await c.call("runs/start", {"workflow": "gate"}))["runId"]
        for i in range(5):
            await c.send(
                {
                    "jsonrpc": "2.0",
                    "method": "runs/wait",
                    "id": f"w{i}",
                    "params": {"runId": run_id, "timeout": 3},
                }
            )
        busy = []
        with anyio.fail_after(1):
            while len(busy) < 3:
                busy.append(await c.recv())
        assert sorted(r["id"] for r in busy) == ["w2", "w3", "w4"]
        for reply in busy:
            assert reply["error"]["code"] == -32006
            assert reply["error"]["message"]
        # the two admitted requests complete normally once the run ends
        async with s.client() as other:
            await other.call("runs/signal", {"runId": run_id, "event": "go", "data": 1})
            done = [await c.recv(), await c.recv()]
        assert sorted(r["id"] for r in done) == ["w0", "w1"]
        assert all(r["result"]["run"]["status"] == "succeeded" for r in done)
        assert await c.ping_time() < 0.5  # slots are free again


async def test_busy_is_per_connection(tmp_path, pm):
    async with serving(tmp_path, pm, max_inflight=1) as s, s.client() as a, s.client() as b:
        run_id = (await a.call("runs/start", {"workflow": "gate"}))["runId"]
        await a.send(
            {
                "jsonrpc": "2.0",
                "method": "runs/wait",
                "id": "held",
                "params": {"runId": run_id, "timeout": 3},
            }
        )
        await anyio.sleep(0.05)
        assert (await a.error("ping"))["code"] == -32006
        assert await b.ping_time() < 0.5
        await b.call("runs/cancel", {"runId": run_id})
        reply = await a.recv()
        assert reply["id"] == "held"


def test_workflow_fixtures_are_valid():
    assert SLOW["name"] == "slow" and GATE["name"] == "gate"
