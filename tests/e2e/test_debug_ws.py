"""The debugger over a real WebSocket: ``debug/*``, ``runs/start`` paused, ``runs/stepConfig``.

Every test runs ``plait serve`` as a subprocess on a SQLite data dir of its own and talks to it
as any client would. Breakpoints stop runs before, after and at the failure of steps (nested
ones included); a pause is inspected, evaluated in, edited and stepped through; a run paused at
a breakpoint survives a restart of the host; and each bad request is one -32602 naming the
problem, with the run left as it was.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from .host_process import HostProcess

pytestmark = pytest.mark.anyio

WORKFLOWS = {
    "chain": (
        "name: chain\n"
        "vars: {k: 1}\n"
        "steps:\n"
        "  - {id: a, transform: {x: 1}}\n"
        "  - {id: b, transform: '${steps.a.output.x + vars.k}'}\n"
        "  - id: each\n"
        "    loop: [1, 2, 3]\n"
        "    steps:\n"
        "      - {id: sq, transform: '${item * steps.b.output}'}\n"
        "  - {id: c, transform: '${steps.each.output | sum}'}\n"
        "outputs: {b: '${steps.b.output}', c: '${steps.c.output}'}\n"
    ),
    "flaky": (
        "name: flaky\n"
        "inputs: {type: object, properties: {key: {type: string}}}\n"
        "steps:\n"
        "  - {id: fetch, tool: chaos.fail, with: {key: '${inputs.key}', times: 5}}\n"
        "  - {id: use, transform: 'got ${steps.fetch.output}'}\n"
        "outputs: {use: '${steps.use.output}'}\n"
    ),
    "gate": (
        "name: gate\nsteps:\n  - {id: w, wait: go}\n  - {id: after, transform: 1, needs: [w]}\n"
    ),
    "big": (
        "name: big\n"
        "inputs: {type: object, properties: {text: {type: string}}}\n"
        "steps:\n"
        "  - {id: stats, tool: text.stats, with: {text: '${inputs.text}'}}\n"
    ),
}


@pytest.fixture
def host(tmp_path: Path):
    process = HostProcess(tmp_path, workflows=WORKFLOWS)
    process.start()
    yield process
    process.stop()


async def until(host: HostProcess, run_id: str, check: Any, timeout: float = 10) -> dict[str, Any]:
    """The run (``runs/get``) once ``check(run)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        run = (await host.call("runs/get", {"runId": run_id}))["run"]
        if check(run):
            return dict(run)
        assert time.monotonic() < deadline, run
        await anyio.sleep(0.02)


async def paused_at(host: HostProcess, run_id: str, reason: str) -> dict[str, Any]:
    return await until(
        host, run_id, lambda r: r["status"] == "paused" and r.get("reason") == reason
    )


async def held(host: HostProcess, run_id: str, *steps: str) -> dict[str, Any]:
    """``debug/inspect`` once the pause holds exactly ``steps``."""
    deadline = time.monotonic() + 10
    while True:
        found = await host.call("debug/inspect", {"runId": run_id})
        if [h["step"] for h in found["held"]] == list(steps):
            return dict(found)
        assert time.monotonic() < deadline, found
        await anyio.sleep(0.02)


async def refused(host: HostProcess, method: str, params: dict[str, Any], *needles: str) -> str:
    reply = await host.request(method, params)
    assert "error" in reply, reply
    error = reply["error"]
    assert error["code"] == -32602, error
    for needle in needles:
        assert needle in error["message"], error["message"]
    return str(error["message"])


async def events_of(host: HostProcess, run_id: str) -> list[dict[str, Any]]:
    return list((await host.call("runs/events", {"runId": run_id}))["events"])


async def test_start_paused_step_break_inspect_edit_and_continue(host: HostProcess):
    run_id = (await host.call("runs/start", {"workflow": "chain", "paused": True}))["runId"]
    await paused_at(host, run_id, "started paused")
    before_b = await host.call("debug/break", {"runId": run_id[:8], "at": "before", "step": "b"})
    assert before_b["breakpoint"]["runId"] == run_id
    await host.call(
        "debug/break",
        {"runId": run_id, "at": "after", "step": "each.sq", "condition": "item == 2"},
    )
    await held(host, run_id, "a")
    assert (await host.call("debug/step", {"runId": run_id}))["step"] == "a"
    run = await until(host, run_id, lambda r: r["steps"].get("a", {}).get("status") == "succeeded")
    assert run["status"] == "paused" and "b" not in run["steps"]  # stepped: one step only
    await host.call("debug/continue", {"runId": run_id})
    await paused_at(host, run_id, "breakpoint before b")
    inspected = await host.call("debug/inspect", {"runId": run_id, "step": "b"})
    assert inspected["step"]["config"] == {"transform": 2}
    assert inspected["step"]["context"]["steps"]["a"]["output"] == {"x": 1}
    assert inspected["step"]["context"]["vars"] == {"k": 1}
    value = await host.call(
        "debug/eval", {"runId": run_id, "expression": "steps.a.output.x + 10", "step": "b"}
    )
    assert value == {"value": 11}
    await host.call("debug/setOutput", {"runId": run_id, "step": "a", "output": {"x": 100}})
    await host.call("debug/setVar", {"runId": run_id, "name": "k", "value": 5})
    await host.call("debug/continue", {"runId": run_id})
    await paused_at(host, run_id, "breakpoint after each[1].sq")  # item == 2: iteration 1
    assert (await host.call("debug/clear", {"runId": run_id}))["cleared"] == 2
    await host.call("debug/continue", {"runId": run_id})
    done = await host.wait_run(run_id)
    assert done["status"] == "succeeded"
    assert done["outputs"] == {"b": 105, "c": 105 * 6}  # the edited output and variable
    events = await events_of(host, run_id)
    kinds = [e["type"] for e in events if e["type"].startswith(("debug.", "run.breakpoint"))]
    assert kinds == [
        "debug.break",
        "debug.break",
        "debug.step",
        "run.breakpoint",
        "debug.output",
        "debug.var",
        "run.breakpoint",
        "debug.clear",
    ]
    edit = next(e for e in events if e["type"] == "debug.output")
    assert edit["data"]["previous"] == {"x": 1} and "websocket session" in edit["data"]["by"]
    assert (await host.call("runs/stepConfig", {"runId": run_id, "step": "b"})) == {
        "config": {"transform": 105}
    }
    host.stop()
    host.start()  # read back from the store: the edited output is the kept one
    kept = (await host.call("runs/get", {"runId": run_id}))["run"]
    assert kept["steps"]["a"]["output"] == {"x": 100} and kept["outputs"]["b"] == 105


async def test_a_workflow_breakpoint_on_failure_lets_a_fixed_output_go_on(host: HostProcess):
    bp = await host.call("debug/break", {"workflow": "flaky", "at": "failure"})
    listed = await host.call("debug/breakpoints", {"workflow": "flaky"})
    assert listed["breakpoints"] == [bp["breakpoint"]]
    run_id = (await host.call("runs/start", {"workflow": "flaky", "inputs": {"key": "f1"}}))[
        "runId"
    ]
    await paused_at(host, run_id, "breakpoint on the failure of fetch")
    found = await held(host, run_id, "fetch")
    assert found["held"][0]["at"] == "failure"
    assert "planned failure" in found["held"][0]["error"]["message"]
    await host.call("debug/setOutput", {"runId": run_id, "step": "fetch", "output": "fixed"})
    await host.call("debug/continue", {"runId": run_id})
    done = await host.wait_run(run_id)
    assert done["status"] == "succeeded" and done["outputs"] == {"use": "got fixed"}
    # Without a fix, continuing lets the failure take its course.
    other = (await host.call("runs/start", {"workflow": "flaky", "inputs": {"key": "f2"}}))["runId"]
    await paused_at(host, other, "breakpoint on the failure of fetch")
    assert (await host.call("debug/clear", {"workflow": "flaky"}))["cleared"] == 1
    await host.call("debug/continue", {"runId": other})
    assert (await host.wait_run(other))["status"] == "failed"


async def test_a_run_paused_at_a_breakpoint_survives_a_restart(host: HostProcess):
    run_id = (await host.call("runs/start", {"workflow": "chain", "paused": True}))["runId"]
    await host.call("debug/break", {"runId": run_id, "at": "before", "step": "c"})
    await host.call("debug/continue", {"runId": run_id})
    await paused_at(host, run_id, "breakpoint before c")
    host.kill()  # SIGKILL at the pause
    host.start()
    run = await paused_at(host, run_id, "breakpoint before c")
    assert run["steps"]["each"]["status"] == "succeeded"
    breakpoints = (await host.call("debug/breakpoints", {"runId": run_id}))["breakpoints"]
    assert [b["step"] for b in breakpoints] == ["c"]
    await held(host, run_id, "c")
    inspected = await host.call("debug/inspect", {"runId": run_id, "step": "c"})
    assert inspected["step"]["config"] == {"transform": 12}
    await host.call("debug/continue", {"runId": run_id})  # not stopped at c a second time
    done = await host.wait_run(run_id)
    assert done["status"] == "succeeded" and done["outputs"] == {"b": 2, "c": 12}


async def test_a_large_argument_is_cut_in_the_event_and_whole_on_request(host: HostProcess):
    text = "word " * 5000
    run_id = (await host.call("runs/start", {"workflow": "big", "inputs": {"text": text}}))["runId"]
    assert (await host.wait_run(run_id))["status"] == "succeeded"
    (started,) = [e for e in await events_of(host, run_id) if e["type"] == "step.started"]
    cut = started["data"]["config"]["with"]
    assert cut["$truncated"] is True and cut["size"] > 8192 and len(cut["preview"]) == 200
    whole = await host.call("runs/stepConfig", {"runId": run_id, "step": "stats", "attempt": 1})
    assert whole == {"config": {"tool": "text.stats", "with": {"text": text}}}


async def test_bad_debug_requests_are_refused_and_change_nothing(host: HostProcess):
    run_id = (await host.call("runs/start", {"workflow": "chain", "paused": True}))["runId"]
    await paused_at(host, run_id, "started paused")
    await refused(
        host,
        "debug/break",
        {"runId": run_id, "at": "before", "step": "bb"},
        "no step 'bb'",
        "did you mean 'b'",
    )
    await refused(
        host,
        "debug/break",
        {"runId": run_id, "at": "before", "step": "b", "condition": "steps.a.output +"},
        "condition does not parse",
    )
    await refused(host, "debug/break", {"runId": run_id, "at": "after"}, "needs the step")
    await refused(
        host, "debug/break", {"at": "before", "step": "b"}, "exactly one of runId or workflow"
    )
    await refused(host, "debug/clear", {"runId": run_id, "id": "nope"}, "no breakpoint 'nope'")
    await refused(host, "debug/eval", {"runId": run_id, "expression": "1 +"}, "does not parse")
    await refused(
        host, "debug/setOutput", {"runId": run_id, "step": "b", "output": 1}, "has not run yet"
    )
    await refused(host, "debug/step", {"runId": run_id, "step": "c"}, "is not held")
    await refused(host, "debug/inspect", {"runId": run_id, "step": "c"}, "is not held")
    await refused(host, "runs/stepConfig", {"runId": run_id, "step": "a"}, "no step 'a'")
    await host.call("debug/step", {"runId": run_id})  # a
    await host.call("debug/break", {"runId": run_id, "at": "before", "step": "c"})
    await host.call("debug/continue", {"runId": run_id})
    await paused_at(host, run_id, "breakpoint before c")
    await refused(
        host,
        "debug/setOutput",
        {"runId": run_id, "step": "a", "output": {"x": 9}},
        "already read by b",
    )
    await refused(
        host, "debug/setVar", {"runId": run_id, "name": "k", "value": 2}, "already read by b"
    )
    await held(host, run_id, "c")
    assert (await host.call("debug/step", {"runId": run_id}))["step"] == "c"
    done = await host.wait_run(run_id)  # c was the last step: the run ends, paused or not
    assert done["status"] == "succeeded" and done["outputs"] == {"b": 2, "c": 12}
    assert [e["type"] for e in await events_of(host, run_id) if e["type"] == "debug.output"] == []
    gate = (await host.call("runs/start", {"workflow": "gate"}))["runId"]
    await until(host, gate, lambda r: r["status"] == "waiting")
    await host.call("runs/pause", {"runId": gate})
    await refused(host, "debug/step", {"runId": gate}, "no step is held")
    await host.call("runs/signal", {"runId": gate, "event": "go"})
    await host.call("runs/resume", {"runId": gate})
    assert (await host.wait_run(gate))["status"] == "succeeded"
    ended = await host.request("debug/setOutput", {"runId": run_id, "step": "a", "output": 1})
    assert ended["error"]["code"] == -32004  # the run is over: not allowed in its state
