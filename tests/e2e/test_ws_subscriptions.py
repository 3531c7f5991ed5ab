"""Live run events over WebSocket (runs/subscribe); a disconnect cancels no run.

See docs/reliability.md §23.
"""

from __future__ import annotations

import anyio
import pytest

from plait.rpc.methods.api import MAX_SUBSCRIPTIONS

from .conftest import Client, serving, ticker

pytestmark = pytest.mark.anyio

NOTE_KEYS = {"subscription", "runId", "seq", "type", "step", "data", "ts"}
TERMINAL = ("run.succeeded", "run.failed", "run.cancelled")


async def events_until_terminal(
    client: Client, subscription: str, run_id: str, timeout: float = 10
) -> list[dict]:
    """``runs/event`` params of one run, read until its terminal event."""
    out = []
    with anyio.fail_after(timeout):
        while True:
            note = await client.notification()
            assert note["method"] == "runs/event"
            params = note["params"]
            assert set(params) == NOTE_KEYS
            assert params["subscription"] == subscription
            if params["runId"] != run_id:
                continue
            out.append(params)
            if params["type"] in TERMINAL:
                return out


async def test_reply_comes_first_then_the_backlog_with_consecutive_seq(served, client):
    run_id = (await client.call("runs/start", {"workflow": "quick", "inputs": {"x": 2}}))["runId"]
    await client.call("runs/wait", {"runId": run_id, "timeout": 5})
    await client.send(
        {
            "jsonrpc": "2.0",
            "method": "runs/subscribe",
            "id": "s",
            "params": {"runId": run_id, "since": 0},
        }
    )
    first = await client.recv()
    assert first["id"] == "s", "the subscribe response comes before any event"
    subscription = first["result"]["subscription"]
    assert isinstance(subscription, str) and subscription
    events = await events_until_terminal(client, subscription, run_id)
    stored = (await client.call("runs/events", {"runId": run_id}))["events"]
    assert [e["seq"] for e in events] == list(range(1, len(stored) + 1))
    assert [(e["type"], e["step"], e["data"]) for e in events] == [
        (e["type"], e["step"], e["data"]) for e in stored
    ]
    await client.silent(0.2)  # nothing after the terminal event


async def test_live_events_follow_the_reply_in_order(served, client):
    served.host.register(ticker(10, 0.02))
    run_id = (await client.call("runs/start", {"workflow": "ticker10"}))["runId"]
    await client.send(
        {"jsonrpc": "2.0", "method": "runs/subscribe", "id": 1, "params": {"runId": run_id}}
    )
    reply = await client.recv()
    assert reply["id"] == 1
    events = await events_until_terminal(client, reply["result"]["subscription"], run_id)
    assert [e["seq"] for e in events] == list(range(1, events[-1]["seq"] + 1))
    assert events[-1]["type"] == "run.succeeded"
    assert events[0]["type"] == "run.created"
    steps = {e["step"] for e in events if e["type"] == "step.succeeded"}
    assert {"each", "each[0].w", "each[9].t"} <= steps


async def test_disconnect_mid_run_then_resume_from_the_last_seq(served, probe):
    """Item 23: the run goes on while nobody listens; since= resumes without gap or repeat."""
    served.host.register(ticker(25, 0.03))
    seen: list[int] = []
    async with served.client() as first:
        run_id = (await first.call("runs/start", {"workflow": "ticker25"}))["runId"]
        sub = (await first.call("runs/subscribe", {"runId": run_id, "since": 0}))["subscription"]
        with anyio.fail_after(5):
            while len(seen) < 12:
                params = (await first.notification())["params"]
                assert params["subscription"] == sub
                seen.append(params["seq"])
        work_before = probe.count("work")
    # disconnected: the run keeps going
    await anyio.sleep(0.3)
    assert probe.count("work") > work_before
    async with served.client() as second:
        run = (await second.call("runs/get", {"runId": run_id}))["run"]
        assert run["status"] in ("running", "succeeded")
        gap_events = (await second.call("runs/events", {"runId": run_id, "since": seen[-1]}))[
            "events"
        ]
        assert gap_events, "events happened while disconnected"
        sub2 = (await second.call("runs/subscribe", {"runId": run_id, "since": seen[-1]}))[
            "subscription"
        ]
        rest = await events_until_terminal(second, sub2, run_id)
        seen += [e["seq"] for e in rest]
        total = len((await second.call("runs/events", {"runId": run_id, "limit": 10000}))["events"])
        assert seen == list(range(1, total + 1)), "every event exactly once"
        done = (await second.call("runs/wait", {"runId": run_id, "timeout": 5}))["run"]
        assert done["status"] == "succeeded" and done["outputs"] == {"n": 25}


async def test_disconnect_during_runs_wait_does_not_cancel_the_run(served):
    async with served.client() as first:
        run_id = (await first.call("runs/start", {"workflow": "slow", "inputs": {"seconds": 0.5}}))[
            "runId"
        ]
        await first.send(
            {
                "jsonrpc": "2.0",
                "method": "runs/wait",
                "id": 9,
                "params": {"runId": run_id, "timeout": 10},
            }
        )
        await anyio.sleep(0.1)
    async with served.client() as second:
        run = (await second.call("runs/wait", {"runId": run_id, "timeout": 5}))["run"]
        assert run["status"] == "succeeded"
        assert run["outputs"] == {"label": "done"}


async def test_disconnect_during_an_mcp_workflow_call_does_not_cancel_the_run(served):
    async with served.client() as first:
        await first.call(
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "e2e", "version": "1"},
            },
        )
        await first.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        await first.send(
            {
                "jsonrpc": "2.0",
                "method": "tools/call",
                "id": 1,
                "params": {"name": "workflow.slow", "arguments": {"seconds": 0.5}},
            }
        )
        with anyio.fail_after(5):
            while not served.host.engine.runs:
                await anyio.sleep(0.01)
    async with served.client() as second:
        runs = (await second.call("runs/list", {"workflow": "slow"}))["runs"]
        assert len(runs) == 1
        run = (await second.call("runs/wait", {"runId": runs[0]["id"], "timeout": 5}))["run"]
        assert run["status"] == "succeeded" and run["outputs"] == {"label": "done"}


async def test_unsubscribe_stops_notifications(served, client):
    run_id = (await client.call("runs/start", {"workflow": "gate"}))["runId"]
    sub = (await client.call("runs/subscribe", {"runId": run_id}))["subscription"]
    with anyio.fail_after(5):  # the backlog up to the wait step
        while True:
            params = (await client.notification())["params"]
            if params["type"] == "step.waiting" or params["type"] == "run.waiting":
                break
    await anyio.sleep(0.05)
    assert await client.call("runs/unsubscribe", {"subscription": sub}) == {}
    client.notifications.clear()
    async with served.client() as other:
        await other.call("runs/signal", {"runId": run_id, "event": "go"})
        await other.call("runs/wait", {"runId": run_id, "timeout": 5})
    await client.silent(0.3)
    assert client.notifications == []
    error = await client.error("runs/unsubscribe", {"subscription": sub})
    assert error["code"] == -32602


async def test_subscription_is_per_connection(served, client):
    run_id = (await client.call("runs/start", {"workflow": "gate"}))["runId"]
    sub = (await client.call("runs/subscribe", {"runId": run_id}))["subscription"]
    async with served.client() as other:
        error = await other.error("runs/unsubscribe", {"subscription": sub})
        assert error["code"] == -32602
    await client.call("runs/cancel", {"runId": run_id})


async def test_subscribe_to_all_runs(served, client):
    sub = (await client.call("runs/subscribe", {}))["subscription"]
    async with served.client() as other:
        a = (await other.call("runs/start", {"workflow": "quick", "inputs": {"x": 1}}))["runId"]
        b = (await other.call("runs/start", {"workflow": "quick", "inputs": {"x": 2}}))["runId"]
        await other.call("runs/wait", {"runId": a, "timeout": 5})
        await other.call("runs/wait", {"runId": b, "timeout": 5})
    by_run: dict[str, list[int]] = {a: [], b: []}
    finished = set()
    with anyio.fail_after(5):
        while finished != {a, b}:
            params = (await client.notification())["params"]
            assert params["subscription"] == sub
            by_run[params["runId"]].append(params["seq"])
            if params["type"] in TERMINAL:
                finished.add(params["runId"])
    for run_id, seqs in by_run.items():
        stored = (await client.call("runs/events", {"runId": run_id}))["events"]
        assert seqs == list(range(1, len(stored) + 1))
    error = await client.error("runs/subscribe", {"since": 3})  # seq is per run
    assert error["code"] == -32602
    assert await client.call("runs/unsubscribe", {"subscription": sub}) == {}


async def test_subscriptions_per_connection_are_bounded(tmp_path, pm):
    async with serving(tmp_path, pm) as s, s.client() as c:
        own = len(s.host.engine.listeners)  # the host's own (its scheduler hears run ends)
        for _ in range(MAX_SUBSCRIPTIONS):
            await c.call("runs/subscribe", {})
        error = await c.error("runs/subscribe", {})
        assert error["code"] == -32006
        assert await c.ping_time() < 0.5
        assert len(s.host.engine.listeners) == own + MAX_SUBSCRIPTIONS
    # a closed connection leaves no listener behind
    with anyio.fail_after(5):
        while len(s.host.engine.listeners) > own:
            await anyio.sleep(0.01)


async def test_subscribe_since_beyond_the_end_waits_for_new_events(served, client):
    run_id = (await client.call("runs/start", {"workflow": "gate"}))["runId"]
    with anyio.fail_after(5):
        while (await client.call("runs/get", {"runId": run_id}))["run"]["status"] != "waiting":
            await anyio.sleep(0.01)
    last = len((await client.call("runs/events", {"runId": run_id}))["events"])
    sub = (await client.call("runs/subscribe", {"runId": run_id, "since": last}))["subscription"]
    await client.silent(0.2)
    async with served.client() as other:
        await other.call("runs/signal", {"runId": run_id, "event": "go"})
    events = await events_until_terminal(client, sub, run_id)
    assert events[0]["seq"] == last + 1
    assert [e["seq"] for e in events] == list(range(last + 1, events[-1]["seq"] + 1))


async def test_subscribe_inside_a_batch_answers_the_batch_first(served, client):
    run_id = (await client.call("runs/start", {"workflow": "quick", "inputs": {"x": 5}}))["runId"]
    await client.call("runs/wait", {"runId": run_id, "timeout": 5})
    await client.send(
        [
            {
                "jsonrpc": "2.0",
                "method": "runs/subscribe",
                "id": "s",
                "params": {"runId": run_id, "since": 0},
            },
            {"jsonrpc": "2.0", "method": "ping", "id": "p"},
        ]
    )
    batch = await client.recv()
    assert isinstance(batch, list), "the batch reply comes before any event"
    replies = {r["id"]: r for r in batch}
    assert replies["p"]["result"] == {}
    events = await events_until_terminal(client, replies["s"]["result"]["subscription"], run_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
