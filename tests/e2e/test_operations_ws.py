"""Chaining, compensation and the dead-letter queue on a real host, across restarts and kills.

``plait serve`` runs as a subprocess on a SQLite data dir of the test's; a kill is SIGKILL.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from .host_process import HostProcess

pytestmark = pytest.mark.anyio

ORDERS = (
    "name: orders\n"
    "inputs: {type: object, properties: {n: {type: integer}}}\n"
    "steps:\n  - {id: total, transform: '${inputs.n * 10}'}\n"
    "outputs: {total: '${steps.total.output}'}\n"
)
INVOICE = (
    "name: invoice\n"
    "inputs: {type: object, properties: {amount: {type: integer}}}\n"
    "on:\n  - {workflow: orders, inputs: {amount: '${run.outputs.total}'}}\n"
    "steps:\n  - {id: bill, transform: 'bill ${inputs.amount}'}\n"
)
SAGA = (
    "name: saga\n"
    "steps:\n"
    "  - id: one\n    transform: 1\n"
    "    compensate: {id: undo_one, delay: 0.05}\n"
    "  - id: two\n    needs: [one]\n    transform: 2\n"
    "    compensate: {id: undo_two, delay: 1.5}\n"
    "  - {id: boom, needs: [two], tool: chaos.fail, with: {key: boom, times: 99}}\n"
)
FLAKY = (
    "name: flaky\n"
    "steps:\n"
    "  - {id: ok, transform: 1}\n"
    "  - {id: call, needs: [ok], tool: chaos.fail, with: {key: flaky, times: 1}}\n"
)


async def until(check: Any, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        await anyio.sleep(0.05)


async def runs_of(host: HostProcess, workflow: str) -> list[dict[str, Any]]:
    return list((await host.call("runs/list", {"workflow": workflow}))["runs"])


async def test_a_trigger_a_restart_came_between_still_fires_once(tmp_path: Path):
    host = HostProcess(tmp_path, workflows={"orders": ORDERS})
    host.start()
    order = (await host.call("runs/start", {"workflow": "orders", "inputs": {"n": 3}}))["runId"]
    assert (await host.wait_run(order))["status"] == "succeeded"
    host.kill()  # the order ended; nothing it triggers has started
    (tmp_path / "wf" / "invoice.yaml").write_text(INVOICE, encoding="utf-8")
    host.start()  # looks again at the runs that ended lately
    try:
        (invoice,) = await until(lambda: runs_of(host, "invoice"))
        done = await host.wait_run(invoice["id"])
        assert done["outputs"] == {} and done["steps"]["bill"]["output"] == "bill 30"
        assert done["origin"]["trigger"] == {
            "runId": order,
            "workflow": "orders",
            "status": "succeeded",
        }
        host.stop()
        host.start()  # and again: the trigger has its run, so nothing new starts
        await anyio.sleep(0.5)
        assert [r["id"] for r in await runs_of(host, "invoice")] == [invoice["id"]]
    finally:
        host.stop()


async def test_compensation_goes_on_after_a_kill_without_repeating_itself(tmp_path: Path):
    host = HostProcess(tmp_path, workflows={"saga": SAGA})
    host.start()
    run_id = (await host.call("runs/start", {"workflow": "saga"}))["runId"]

    async def compensating() -> bool:
        events = (await host.call("runs/events", {"runId": run_id}))["events"]
        return any(
            e["type"] == "step.started" and e["step"] == "two.compensate.undo_two" for e in events
        )

    await until(compensating)
    host.kill()  # in the middle of the first compensation (a 1.5 s delay)
    host.start()
    try:
        done = await host.wait_run(run_id)
        assert done["status"] == "failed"
        events = (await host.call("runs/events", {"runId": run_id}))["events"]
        saga = [(e["type"], e["step"]) for e in events if e["type"].startswith("compensation")]
        assert saga == [
            ("compensation.started", "two"),
            ("compensation.succeeded", "two"),
            ("compensation.started", "one"),
            ("compensation.succeeded", "one"),
        ]
        assert done["steps"]["one.compensate.undo_one"]["status"] == "succeeded"
    finally:
        host.stop()


def plait(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plait.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_dead_letter_queue_is_kept_and_replayed_through_the_command(tmp_path: Path):
    host = HostProcess(tmp_path, workflows={"flaky": FLAKY})
    host.start()
    try:
        run_id = (await host.call("runs/start", {"workflow": "flaky"}))["runId"]
        assert (await host.wait_run(run_id))["status"] == "failed"
        host.stop()
        host.start()  # the entry is in the store
        common = ("--url", host.url, "--token", host.token)
        listed = plait("dlq", "list", *common, cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert run_id in listed.stdout and "call" in listed.stdout
        shown = json.loads(plait("dlq", "show", run_id[:8], *common, cwd=tmp_path).stdout)
        assert shown["entry"]["step"] == "call" and shown["entry"]["replay_from"] == "call"
        # chaos.fail fails once per host process: this run takes the new process's failure
        second = (await host.call("runs/start", {"workflow": "flaky"}))["runId"]
        assert (await host.wait_run(second))["status"] == "failed"
        replayed = plait("dlq", "replay", run_id[:8], *common, cwd=tmp_path)
        assert replayed.returncode == 0, replayed.stderr
        new_id = json.loads(replayed.stdout)["replayed"][0]["replayedAs"]
        done = await host.wait_run(new_id)
        assert done["status"] == "succeeded" and done["steps"]["ok"]["reused"] is True
        again = plait("dlq", "replay", run_id, *common, cwd=tmp_path)
        assert again.returncode == 1 and "is replayed" in again.stderr
        assert "Traceback" not in again.stderr
        none = plait("dlq", "replay", *common, cwd=tmp_path)
        assert none.returncode == 2 and "give RUN, --workflow or --error-type" in none.stderr
    finally:
        host.stop()


async def test_replaying_a_run_of_a_deleted_workflow_says_why(tmp_path: Path):
    host = HostProcess(tmp_path, workflows={"flaky": FLAKY})
    host.start()
    try:
        run_id = (await host.call("runs/start", {"workflow": "flaky"}))["runId"]
        assert (await host.wait_run(run_id))["status"] == "failed"
        await host.call("workflows/delete", {"name": "flaky"})
        reply = await host.request("dlq/replay", {"runId": run_id})
        assert reply["error"]["code"] == -32602
        assert f"cannot replay run {run_id}" in reply["error"]["message"]
        entry = (await host.call("dlq/get", {"runId": run_id}))["entry"]
        assert entry["state"] == "open"  # nothing changed
    finally:
        host.stop()
