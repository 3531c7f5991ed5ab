"""The ``input`` step and ``runs/respond`` over a real WebSocket: typed answers checked against
the step's schema, who answered recorded, timeouts, channels, the reserved signal name, and a
question that outlives its host."""

from __future__ import annotations

import subprocess

import anyio
import pytest

import plait

from .conftest import WAIT, make_config, serving, websocket_of
from .host_process import PLAIT

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

SCHEMA = {
    "type": "object",
    "required": ["ok", "count"],
    "properties": {"ok": {"type": "boolean"}, "count": {"type": "integer", "minimum": 1}},
}

ASK = {
    "name": "ask",
    "inputs": {
        "type": "object",
        "properties": {"version": {"type": "string", "default": "0.1"}},
    },
    "steps": [
        {"id": "approve", "input": "Ship ${inputs.version}?", "schema": SCHEMA},
        {"id": "after", "transform": "${steps.approve.output.count * 2}"},
    ],
    "outputs": {"answer": "${steps.approve.output}", "double": "${steps.after.output}"},
}

TIMED = {
    "name": "timed",
    "steps": [{"id": "q", "input": "anyone?", "within": 1.5}],
}

DEFAULTED = {
    "name": "defaulted",
    "steps": [{"id": "q", "input": "anyone?", "within": 0.3, "default": {"ok": False}}],
    "outputs": {"got": "${steps.q.output}"},
}

WEB_ONLY = {
    "name": "webonly",
    "steps": [{"id": "q", "input": "from the page only", "answerers": ["web"]}],
}

MIXED = {
    "name": "mixed",
    "steps": [{"id": "hold", "wait": "go"}, {"id": "q", "input": "then?", "needs": ["hold"]}],
}

WORKFLOWS = (ASK, TIMED, DEFAULTED, WEB_ONLY, MIXED)


async def asked(client, run_id: str, step: str) -> dict:
    """The run's view once ``step`` waits for input."""
    with anyio.fail_after(WAIT):
        while True:
            run = (await client.call("runs/get", {"runId": run_id}))["run"]
            state = run["steps"].get(step) or {}
            if state.get("status") == "waiting" and any(
                q["step"] == step for q in run.get("questions", ())
            ):
                return run
            await anyio.sleep(0.02)


async def test_a_right_answer_is_the_output_and_who_gave_it_is_recorded(tmp_path, pm):
    async with serving(tmp_path, pm, workflows=WORKFLOWS) as served:
        async with served.client() as client:
            params = {"workflow": "ask", "inputs": {"version": "1.2"}}
            run_id = (await client.call("runs/start", params))["runId"]
            run = await asked(client, run_id, "approve")
            assert run["status"] == "waiting"
            assert run["steps"]["approve"]["reason"] == "input"
            (question,) = run["questions"]
            assert question == {
                "step": "approve",
                "message": "Ship 1.2?",
                "schema": SCHEMA,
                "answerers": ["api", "mcp", "web"],
                "deadline": None,
            }
            answer = {"ok": True, "count": 3}
            send = {"runId": run_id, "step": "approve", "answer": answer, "by": "ana"}
            await client.call("runs/respond", send)
            done = (await client.call("runs/wait", {"runId": run_id, "timeout": WAIT}))["run"]
            assert done["status"] == "succeeded", done
            assert done["outputs"] == {"answer": answer, "double": 6}
            assert "questions" not in done
            events = (await client.call("runs/events", {"runId": run_id}))["events"]
            (requested,) = [e for e in events if e["type"] == "input.requested"]
            assert requested["step"] == "approve"
            assert requested["data"]["message"] == "Ship 1.2?"
            (answered,) = [e for e in events if e["type"] == "input.answered"]
            assert answered["step"] == "approve"
            assert answered["data"] == {"by": "ana", "channel": "api"}
            # answered: asking again is refused, clearly
            error = await client.error("runs/respond", send)
            assert error["code"] == -32004
            assert "cannot answer a question of run" in error["message"]


async def test_a_wrong_answer_lists_its_problems_and_the_step_keeps_waiting(tmp_path, pm):
    async with serving(tmp_path, pm, workflows=WORKFLOWS) as served:
        async with served.client() as client:
            run_id = (await client.call("runs/start", {"workflow": "ask"}))["runId"]
            await asked(client, run_id, "approve")
            wrong = {"runId": run_id, "step": "approve", "answer": {"ok": "yes", "count": 0}}
            error = await client.error("runs/respond", wrong)
            assert error["code"] == -32602
            assert error["data"]["problems"] == [
                "$.count: 0 is less than the minimum of 1",
                "$.ok: 'yes' is not of type 'boolean'",
            ]
            assert "the answer does not fit the schema of step 'approve'" in error["message"]
            missing = {"runId": run_id, "step": "approve", "answer": {"ok": True}}
            error = await client.error("runs/respond", missing)
            assert error["data"]["problems"] == ["$: 'count' is a required property"]
            # nothing was kept: the step still waits, and a right answer then works
            run = await asked(client, run_id, "approve")
            assert run["steps"]["approve"]["status"] == "waiting"
            events = (await client.call("runs/events", {"runId": run_id}))["events"]
            assert not any(e["type"] in ("run.signal", "input.answered") for e in events)
            right = {"runId": run_id, "step": "approve", "answer": {"ok": True, "count": 1}}
            await client.call("runs/respond", right)
            done = (await client.call("runs/wait", {"runId": run_id, "timeout": WAIT}))["run"]
            assert done["status"] == "succeeded"
            assert done["outputs"]["double"] == 2


async def test_unknown_runs_and_steps_and_steps_not_asking_are_clear_errors(tmp_path, pm):
    async with serving(tmp_path, pm, workflows=WORKFLOWS) as served:
        async with served.client() as client:
            run_id = (await client.call("runs/start", {"workflow": "ask"}))["runId"]
            await asked(client, run_id, "approve")
            error = await client.error(
                "runs/respond", {"runId": "f" * 32, "step": "approve", "answer": 1}
            )
            assert error["code"] == -32002
            error = await client.error(
                "runs/respond", {"runId": run_id, "step": "aprove", "answer": 1}
            )
            assert error["code"] == -32602
            assert error["message"] == (
                f"run {run_id} has no step 'aprove'; waiting for input: approve"
            )
            error = await client.error("runs/respond", {"runId": run_id, "step": "approve"})
            assert error["code"] == -32602  # the answer is required (null is an answer)
            await client.call("runs/cancel", {"runId": run_id})
            error = await client.error(
                "runs/respond", {"runId": run_id, "step": "approve", "answer": {}}
            )
            assert error["code"] == -32004
            assert error["message"] == (
                f"cannot answer a question of run {run_id}: it is cancelled"
            )


async def test_a_step_that_asks_nothing_now_is_not_allowed(tmp_path, pm):
    async with serving(tmp_path, pm, workflows=WORKFLOWS) as served:
        async with served.client() as client:
            run_id = (await client.call("runs/start", {"workflow": "mixed"}))["runId"]
            with anyio.fail_after(WAIT):
                while (await client.call("runs/get", {"runId": run_id}))["run"]["status"] != (
                    "waiting"
                ):
                    await anyio.sleep(0.02)
            error = await client.error(
                "runs/respond", {"runId": run_id, "step": "hold", "answer": 1}
            )
            assert error["code"] == -32004
            assert error["message"] == (
                f"step 'hold' of run {run_id} is not waiting for input: it is waiting"
            )
            await client.call("runs/signal", {"runId": run_id, "event": "go"})
            await asked(client, run_id, "q")
            await client.call("runs/respond", {"runId": run_id, "step": "q", "answer": "x"})
            done = (await client.call("runs/wait", {"runId": run_id, "timeout": WAIT}))["run"]
            assert done["status"] == "succeeded"


async def test_on_timeout_fail_and_default(tmp_path, pm):
    async with serving(tmp_path, pm, workflows=WORKFLOWS) as served:
        async with served.client() as client:
            failed = (await client.call("runs/start", {"workflow": "timed"}))["runId"]
            defaulted = (await client.call("runs/start", {"workflow": "defaulted"}))["runId"]
            run = await asked(client, failed, "q")
            assert run["questions"][0]["deadline"] is not None
            done = (await client.call("runs/wait", {"runId": failed, "timeout": WAIT}))["run"]
            assert done["status"] == "failed"
            assert done["steps"]["q"]["error"]["type"] == "input_timeout"
            assert "was not answered within 1.5s" in done["steps"]["q"]["error"]["message"]
            done = (await client.call("runs/wait", {"runId": defaulted, "timeout": WAIT}))["run"]
            assert done["status"] == "succeeded"
            assert done["outputs"] == {"got": {"ok": False}}


async def test_a_channel_not_among_the_answerers_is_refused(tmp_path, pm):
    async with serving(tmp_path, pm, workflows=WORKFLOWS) as served:
        async with served.client() as client:
            run_id = (await client.call("runs/start", {"workflow": "webonly"}))["runId"]
            run = await asked(client, run_id, "q")
            assert run["questions"][0]["answerers"] == ["web"]
            error = await client.error("runs/respond", {"runId": run_id, "step": "q", "answer": 1})
            assert error["code"] == -32004
            assert error["message"] == "step 'q' takes answers through web only, not api"
            # the web view's route, through the same host method
            await served.host.respond(run_id, "q", 7, by="page", channel="web")
            done = (await client.call("runs/wait", {"runId": run_id, "timeout": WAIT}))["run"]
            assert done["status"] == "succeeded"
            assert done["steps"]["q"]["output"] == 7


async def test_a_plain_signal_on_the_reserved_name_is_refused(tmp_path, pm):
    async with serving(tmp_path, pm, workflows=WORKFLOWS) as served:
        async with served.client() as client:
            run_id = (await client.call("runs/start", {"workflow": "ask"}))["runId"]
            await asked(client, run_id, "approve")
            send = {"runId": run_id, "event": "input:approve", "data": {"answer": "anything"}}
            error = await client.error("runs/signal", send)
            assert error["code"] == -32602
            assert "reserved for the answers of input steps" in error["message"]
            run = await asked(client, run_id, "approve")
            assert run["status"] == "waiting"
            await client.call("runs/cancel", {"runId": run_id})


async def test_an_invalid_answer_schema_is_a_definition_error_naming_the_field(tmp_path, pm):
    bad = {"name": "bad", "steps": [{"id": "q", "input": "?", "schema": {"type": "integr"}}]}
    async with serving(tmp_path, pm, workflows=()) as served:
        async with served.client() as client:
            error = await client.error("workflows/put", {"definition": bad})
            assert error["code"] == -32003
            (issue,) = error["data"]
            assert issue["path"] == "steps[0].schema"
            assert "not a valid JSON Schema" in issue["message"]
    with pytest.raises(plait.DefinitionError, match=r"steps\[0\]\.schema"):
        async with plait.Host(make_config(tmp_path / "again"), pm=pm) as host:
            host.register(bad)


async def test_the_question_survives_a_restart_and_is_answered_after_it(tmp_path, pm):
    timed = {
        "name": "later",
        "steps": [{"id": "q", "input": "still there?", "schema": {"type": "string"}}],
        "outputs": {"got": "${steps.q.output}"},
    }
    config = make_config(tmp_path)
    async with plait.Host(config, pm=pm) as host:
        host.register(timed)
        async with websocket_of(host) as served, served.client() as client:
            run_id = (await client.call("runs/start", {"workflow": "later"}))["runId"]
            first = await asked(client, run_id, "q")
    # a second host on the same data dir
    async with plait.Host(config, pm=pm) as host:
        async with websocket_of(host) as served, served.client() as client:
            run = await asked(client, run_id, "q")
            assert run["status"] == "waiting"
            assert run["questions"] == first["questions"]
            error = await client.error("runs/respond", {"runId": run_id, "step": "q", "answer": 1})
            assert error["data"]["problems"] == ["$: 1 is not of type 'string'"]
            send = {"runId": run_id, "step": "q", "answer": "yes", "by": "bo"}
            await client.call("runs/respond", send)
            done = (await client.call("runs/wait", {"runId": run_id, "timeout": WAIT}))["run"]
            assert done["status"] == "succeeded", done
            assert done["outputs"] == {"got": "yes"}
            events = (await client.call("runs/events", {"runId": run_id}))["events"]
            (answered,) = [e for e in events if e["type"] == "input.answered"]
            assert answered["data"] == {"by": "bo", "channel": "api"}


async def test_the_deadline_survives_a_restart(tmp_path, pm):
    timed = {"name": "timed", "steps": [{"id": "q", "input": "?", "within": 60}]}
    config = make_config(tmp_path)
    async with plait.Host(config, pm=pm) as host:
        host.register(timed)
        async with websocket_of(host) as served, served.client() as client:
            run_id = (await client.call("runs/start", {"workflow": "timed"}))["runId"]
            deadline = (await asked(client, run_id, "q"))["questions"][0]["deadline"]
    async with plait.Host(config, pm=pm) as host:
        async with websocket_of(host) as served, served.client() as client:
            run = await asked(client, run_id, "q")
            assert run["questions"][0]["deadline"] == deadline
            await client.call("runs/cancel", {"runId": run_id})


async def test_plait_runs_respond_answers_offline_for_the_next_start(tmp_path, pm):
    config = make_config(tmp_path)
    async with plait.Host(config, pm=pm) as host:
        host.register(ASK)
        async with websocket_of(host) as served, served.client() as client:
            run_id = (await client.call("runs/start", {"workflow": "ask"}))["runId"]
            await asked(client, run_id, "approve")
    (tmp_path / "plait.toml").write_text("[plugins]\nentry_points = false\n", encoding="utf-8")
    where = ["--data-dir", str(tmp_path / "data"), "--config", str(tmp_path / "plait.toml")]
    shown = subprocess.run([*PLAIT, "runs", "show", run_id, *where], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "step approve asks: Ship 0.1?" in shown.stdout  # read offline, from the store
    base = [*PLAIT, "runs", "respond", run_id, "approve", *where]
    done = subprocess.run([*base, "--answer", '{"ok": 1}'], capture_output=True, text=True)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "$.ok: 1 is not of type 'boolean'" in done.stderr
    answer = '{"ok": true, "count": 2}'
    done = subprocess.run(
        [*base, "--answer", answer, "--by", "cli", "--json"], capture_output=True, text=True
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    async with plait.Host(config, pm=pm) as host:
        async with websocket_of(host) as served, served.client() as client:
            done_run = (await client.call("runs/wait", {"runId": run_id, "timeout": WAIT}))["run"]
            assert done_run["status"] == "succeeded", done_run
            assert done_run["outputs"]["double"] == 4
            events = (await client.call("runs/events", {"runId": run_id}))["events"]
            (answered,) = [e for e in events if e["type"] == "input.answered"]
            assert answered["data"] == {"by": "cli", "channel": "api"}
