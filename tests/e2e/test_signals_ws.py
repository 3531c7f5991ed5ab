"""`runs/signal` over a real WebSocket refuses an event no step waits for, with "did you mean";
`plait validate` refuses a misspelled field of a step's output."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import GATE, SLOW, serving
from .host_process import PLAIT

pytestmark = pytest.mark.anyio

APPROVALS = {
    "name": "approvals",
    "steps": [
        {"id": "first", "wait": "approve"},
        {"id": "second", "wait": "publish", "needs": ["first"]},
    ],
    "outputs": {"got": "${[steps.first.output, steps.second.output]}"},
}


async def test_a_misspelled_signal_is_invalid_params_with_a_suggestion(tmp_path, pm):
    async with serving(tmp_path, pm, workflows=(GATE, APPROVALS)) as served:
        async with served.client() as client:
            run_id = (await client.call("runs/start", {"workflow": "approvals"}))["runId"]
            error = await client.error(
                "runs/signal", {"runId": run_id, "event": "aprove", "data": 1}
            )
            assert error["code"] == -32602
            message = (
                "no step of workflow 'approvals' waits for the signal 'aprove' "
                "(did you mean 'approve'?); it waits for: approve, publish"
            )
            assert error["message"] == message
            assert error["data"] == {"problems": [message]}
            # the refused signal was not kept: the run shows no trace of it
            events = (await client.call("runs/events", {"runId": run_id}))["events"]
            assert not any(e["type"] == "run.signal" for e in events)

            # the right events still work
            for event, data in (("approve", 1), ("publish", 2)):
                send = {"runId": run_id, "event": event, "data": data}
                assert await client.call("runs/signal", send) == {}
            run = (await client.call("runs/wait", {"runId": run_id, "timeout": 5}))["run"]
            assert run["status"] == "succeeded"
            assert run["outputs"] == {"got": [1, 2]}


async def test_a_signal_sent_before_its_wait_step_starts_is_kept(tmp_path, pm):
    async with serving(tmp_path, pm, workflows=(APPROVALS,)) as served:
        async with served.client() as client:
            run_id = (await client.call("runs/start", {"workflow": "approvals"}))["runId"]
            # `second` needs `first`, which waits for "approve": it has not started yet
            send = {"runId": run_id, "event": "publish", "data": 2}
            assert await client.call("runs/signal", send) == {}
            steps = (await client.call("runs/get", {"runId": run_id}))["run"]["steps"]
            assert "second" not in steps or steps["second"]["status"] == "pending"
            send = {"runId": run_id, "event": "approve", "data": 1}
            assert await client.call("runs/signal", send) == {}
            run = (await client.call("runs/wait", {"runId": run_id, "timeout": 5}))["run"]
            assert run["status"] == "succeeded"
            assert run["outputs"] == {"got": [1, 2]}


async def test_a_workflow_without_wait_steps_refuses_every_signal(tmp_path, pm):
    async with serving(tmp_path, pm, workflows=(SLOW,)) as served:
        async with served.client() as client:
            params = {"workflow": "slow", "inputs": {"seconds": 30}}
            run_id = (await client.call("runs/start", params))["runId"]
            error = await client.error("runs/signal", {"runId": run_id, "event": "go"})
            assert error["code"] == -32602
            assert error["message"] == (
                "no step of workflow 'slow' waits for the signal 'go'; it waits for no signal"
            )
            await client.call("runs/cancel", {"runId": run_id})


async def test_plait_runs_signal_on_a_data_dir_refuses_in_one_line(tmp_path, pm):
    async with serving(tmp_path, pm, workflows=(GATE,)) as served:
        async with served.client() as client:
            run_id = (await client.call("runs/start", {"workflow": "gate"}))["runId"]
    # The host is gone; the run waits in its data dir, where the command signals it itself.
    (tmp_path / "plait.toml").write_text("[plugins]\nentry_points = false\n", encoding="utf-8")
    command = [*PLAIT, "runs", "signal", run_id, "goo", "--data-dir", str(tmp_path / "data")]
    command += ["--config", str(tmp_path / "plait.toml")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.splitlines() == [
        "error: no step of workflow 'gate' waits for the signal 'goo' (did you mean 'go'?); "
        "it waits for: go"
    ]


MISSPELLED = """\
name: checked
inputs: {type: object}
steps:
  - id: page
    validate: "${inputs.page}"
    schema: {type: object, properties: {title: {type: string}, url: {type: string}}}
  - id: show
    transform:
      heading: "${steps.page.output.titel}"
"""


def test_plait_validate_prints_a_misspelled_output_field_and_exits_1(tmp_path: Path):
    (tmp_path / "plait.toml").write_text("[plugins]\nentry_points = false\n", encoding="utf-8")
    (tmp_path / "bad.yaml").write_text(MISSPELLED, encoding="utf-8")
    good = tmp_path / "good.yaml"
    good.write_text(MISSPELLED.replace("titel", "title"), encoding="utf-8")
    done = subprocess.run(
        [*PLAIT, "validate", "bad.yaml", str(good), "--config", "plait.toml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert done.stdout.splitlines() == [
        "bad.yaml: invalid",
        "  bad.yaml:9: steps[1].transform.heading: step 'page' has no output field 'titel' "
        "(did you mean 'title'?); its output has: title, url",
        f"{good}: ok (checked, 2 steps)",
    ]
