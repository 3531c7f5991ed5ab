"""Compensation, chaining and the dead-letter queue, in process through JSON-RPC.

The host is ``plait.testing``'s (a memory store, the real engine and dispatcher); the tools are
the built-in ``chaos.fail`` (fails the first N calls for a key) and a recording tool of the
test's own.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

import plait
from plait.rpc.errors import RpcError
from plait.testing import Client, started_host

pytestmark = pytest.mark.anyio

CALLS: list[tuple[str, Any]] = []


def record(what: str, value: Any = None) -> str:
    """Record a call, in order (a charge, a refund...)."""
    CALLS.append((what, value))
    return what


class Recorder:
    @plait.hookimpl
    def register_tools(self, register: plait.RegisterTool) -> None:
        register(record, "test.record", blocking=False)


SAGA = {
    "name": "saga",
    "inputs": {"type": "object", "properties": {"key": {"type": "string"}}},
    "steps": [
        {
            "id": "reserve",
            "tool": "test.record",
            "with": {"what": "reserve"},
            "compensate": {"id": "release", "tool": "test.record", "with": {"what": "release"}},
        },
        {
            "id": "charge",
            "needs": ["reserve"],
            "tool": "test.record",
            "with": {"what": "charge", "value": "${inputs.key}"},
            "compensate": {
                "id": "refund",
                "tool": "test.record",
                "with": {"what": "refund", "value": "${steps.charge.output}"},
            },
        },
        {
            "id": "ship",
            "needs": ["charge"],
            "tool": "chaos.fail",
            "with": {"key": "${inputs.key}", "times": 1},
            "compensate": {"id": "unship", "tool": "test.record", "with": {"what": "unship"}},
        },
    ],
}


async def wait_for(check: Any, timeout: float = 5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        await anyio.sleep(0.01)


async def test_a_failed_run_compensates_what_succeeded_latest_first_then_fails():
    CALLS.clear()
    async with started_host(plugins=[Recorder()], workflows=[SAGA]) as host, Client(host) as c:
        run_id = (await c.call("runs/start", workflow="saga", inputs={"key": "k1"}))["runId"]
        done = (await c.call("runs/wait", runId=run_id))["run"]
        assert done["status"] == "failed"
        assert [w for w, _ in CALLS] == ["reserve", "charge", "refund", "release"]
        assert ("refund", "charge") in CALLS  # the compensation read the step's output
        assert done["steps"]["charge.compensate.refund"]["status"] == "succeeded"
        events = (await c.call("runs/events", runId=run_id))["events"]
        saga = [(e["type"], e["step"]) for e in events if e["type"].startswith("compensation")]
        assert saga == [
            ("compensation.started", "charge"),
            ("compensation.succeeded", "charge"),
            ("compensation.started", "reserve"),
            ("compensation.succeeded", "reserve"),
        ]
        assert [e["type"] for e in events][-1] == "run.failed"


async def test_a_compensation_that_fails_is_reported_and_the_rest_still_run():
    CALLS.clear()
    saga = {
        **SAGA,
        "name": "saga2",
        "steps": [
            {**SAGA["steps"][0]},
            {
                **SAGA["steps"][1],
                "compensate": {
                    "id": "refund",
                    "tool": "chaos.fail",
                    "with": {"key": "refund-${inputs.key}", "times": 9},
                },
            },
            SAGA["steps"][2],
        ],
    }
    async with started_host(plugins=[Recorder()], workflows=[saga]) as host, Client(host) as c:
        run_id = (await c.call("runs/start", workflow="saga2", inputs={"key": "k2"}))["runId"]
        done = (await c.call("runs/wait", runId=run_id))["run"]
        assert done["status"] == "failed"
        assert [w for w, _ in CALLS] == ["reserve", "charge", "release"]
        events = (await c.call("runs/events", runId=run_id))["events"]
        ended = {e["step"]: e["type"] for e in events if e["type"].startswith("compensation.")}
        assert ended == {"charge": "compensation.failed", "reserve": "compensation.succeeded"}


async def test_compensate_is_refused_on_a_nested_step_and_must_name_known_steps():
    async with started_host() as host, Client(host) as c:
        bad = {
            "name": "bad",
            "steps": [
                {
                    "id": "each",
                    "loop": [1],
                    "steps": [
                        {"id": "x", "transform": 1, "compensate": {"id": "u", "transform": 2}}
                    ],
                },
                {
                    "id": "y",
                    "transform": 1,
                    "compensate": {"id": "u", "transform": "${steps.nope.output}"},
                },
            ],
        }
        found = await c.call("workflows/validate", definition=bad)
        messages = {e["path"]: e["message"] for e in found["errors"]}
        assert "not steps inside another step" in messages["steps[0].steps[0].compensate"]
        assert "unknown step 'nope'" in messages["steps[1].compensate"]


CHAIN_SOURCE = {
    "name": "orders",
    "inputs": {"type": "object", "properties": {"n": {"type": "integer"}}},
    "steps": [{"id": "total", "transform": "${inputs.n * 10}"}],
    "outputs": {"total": "${steps.total.output}"},
}
CHAIN_TARGET = {
    "name": "invoice",
    "inputs": {"type": "object", "properties": {"amount": {"type": "integer"}}},
    "on": [
        {
            "workflow": "orders",
            "when": "run.outputs.total > 15",
            "inputs": {"amount": "${run.outputs.total}"},
        }
    ],
    "steps": [{"id": "bill", "transform": "bill ${inputs.amount}"}],
    "outputs": {"bill": "${steps.bill.output}"},
}


async def test_a_run_ending_starts_the_workflows_whose_triggers_watch_it():
    async with started_host(workflows=[CHAIN_SOURCE, CHAIN_TARGET]) as host, Client(host) as c:
        small = (await c.call("runs/start", workflow="orders", inputs={"n": 1}))["runId"]
        big = (await c.call("runs/start", workflow="orders", inputs={"n": 2}))["runId"]
        await c.call("runs/wait", runId=small)
        await c.call("runs/wait", runId=big)

        async def invoices() -> list[dict[str, Any]]:
            return (await c.call("runs/list", workflow="invoice"))["runs"]

        (invoice,) = await wait_for(invoices)
        done = (await c.call("runs/wait", runId=invoice["id"]))["run"]
        assert done["outputs"] == {"bill": "bill 20"}
        assert done["origin"] == {
            "trigger": {"runId": big, "workflow": "orders", "status": "succeeded"},
            "depth": 1,
        }
        await anyio.sleep(0.1)
        assert len(await invoices()) == 1  # the small order's condition was false


async def test_triggers_on_unknown_workflows_or_in_a_loop_are_refused():
    async with started_host(workflows=[CHAIN_SOURCE]) as host, Client(host) as c:
        unknown = {**CHAIN_TARGET, "on": [{"workflow": "ordrs"}]}
        with pytest.raises(RpcError) as refused:
            await c.call("workflows/put", definition=unknown)
        assert "on[0].workflow" in str(refused.value.data)
        assert "no workflow 'ordrs'" in str(refused.value.data)
        await c.call("workflows/put", definition=CHAIN_TARGET)
        loop = {**CHAIN_SOURCE, "on": [{"workflow": "invoice"}]}
        with pytest.raises(RpcError) as refused:
            await c.call("workflows/put", definition=loop)
        assert "loop: orders → invoice → orders" in str(refused.value.data)
        itself = {**CHAIN_SOURCE, "name": "again", "on": [{"workflow": "again"}]}
        with pytest.raises(RpcError, match="invalid workflow"):
            await c.call("workflows/put", definition=itself)


async def test_a_run_that_fails_for_good_is_dead_lettered_and_replays_from_its_step():
    flaky = {
        "name": "flaky",
        "inputs": {"type": "object", "properties": {"key": {"type": "string"}}},
        "steps": [
            {"id": "first", "transform": "ok"},
            {
                "id": "each",
                "loop": [1, 2],
                "needs": ["first"],
                "steps": [
                    {
                        "id": "call",
                        "tool": "chaos.fail",
                        "with": {"key": "${inputs.key}", "times": 2, "value": "${item}"},
                        "retry": {"attempts": 2, "base": 0},
                    }
                ],
            },
        ],
        "outputs": {"each": "${steps.each.output}"},
    }
    async with started_host(workflows=[flaky]) as host, Client(host) as c:
        run_id = (await c.call("runs/start", workflow="flaky", inputs={"key": "dl1"}))["runId"]
        assert (await c.call("runs/wait", runId=run_id))["run"]["status"] == "failed"
        (entry,) = (await c.call("dlq/list", workflow="flaky"))["entries"]
        assert entry["run_id"] == run_id and entry["step"] == "each[0].call"
        assert entry["replay_from"] == "each" and entry["error_type"] == "tool"
        kinds = [a["type"] for a in entry["attempts"]]
        assert kinds == ["step.started", "step.retrying", "step.started", "step.failed"]
        assert (await c.call("dlq/list", errorType="timeout"))["entries"] == []
        replayed = await c.call("dlq/replay", runId=run_id[:8])
        new_id = replayed["replayed"][0]["replayedAs"]
        done = (await c.call("runs/wait", runId=new_id))["run"]
        assert done["status"] == "succeeded" and done["outputs"] == {"each": [1, 2]}
        assert done["steps"]["first"]["reused"] is True
        kept = (await c.call("dlq/get", runId=run_id))["entry"]
        assert kept["state"] == "replayed" and kept["replayed_as"] == new_id
        assert (await c.call("dlq/list"))["entries"] == []  # open ones only, by default
        with pytest.raises(RpcError, match=f"is replayed \\(as run {new_id}\\)"):
            await c.call("dlq/replay", runId=run_id)
        with pytest.raises(RpcError, match="no dead-letter entry") as missing:
            await c.call("dlq/get", runId="nope")
        assert missing.value.code == -32602
