"""``runs/rerun`` and ``runs/diff`` through a real ``plait serve`` (docs/debugging.md, "Re-running
from a step").

The host loads a plugin module of this test's: ``t.count`` appends its name to a calls file and
returns its value; ``t.flaky`` does the same but fails the first time it is called for a name
(keyed on a marker file), so a run fails at it and a rerun from it succeeds. The calls file is
how the tests see that a reused step did not run again, also across a host killed with SIGKILL
in the middle of a rerun.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from .host_process import PLAIT, HostProcess

pytestmark = pytest.mark.anyio

PLUGIN = '''\
"""Tools that log each call to a file (the calls a host process made survive it)."""

import os
import pathlib

import plait

FOLDER = pathlib.Path(os.environ["RERUN_DIR"])


def _note(name):
    with open(FOLDER / "calls.log", "a", encoding="utf-8") as log:
        log.write(name + "\\n")


def count(name: str, value: object = None) -> object:
    _note(name)
    return name if value is None else value


def flaky(name: str, value: object = None) -> object:
    _note(name)
    marker = FOLDER / f"{name}.failed"
    if not marker.exists():
        marker.write_text("once", encoding="utf-8")
        raise RuntimeError(f"{name} fails the first time")
    return name if value is None else value


@plait.hookimpl
def register_tools(register):
    register(count, "t.count")
    register(flaky, "t.flaky")
'''

PIPELINE = """\
name: pipeline
inputs:
  type: object
  properties: {n: {type: integer, default: 1}}
steps:
  - {id: fetch, tool: t.count, with: {name: fetch, value: "${inputs.n}"}}
  - {id: side, tool: t.count, with: {name: side, value: 7}}
  - {id: flaky, tool: t.flaky, with: {name: flaky, value: "${steps.fetch.output * 10}"}}
  - id: last
    tool: t.count
    with: {name: last, value: "${steps.flaky.output + steps.side.output}"}
outputs:
  result: "${steps.last.output}"
"""

GATED = """\
name: gated
steps:
  - {id: fetch, tool: t.count, with: {name: g-fetch}}
  - {id: flaky, tool: t.flaky, with: {name: g-flaky}, needs: [fetch]}
  - {id: gate, wait: go, needs: [flaky]}
  - {id: last, tool: t.count, with: {name: g-last, value: "${steps.gate.output}"}}
outputs:
  last: "${steps.last.output}"
"""


@pytest.fixture
def host(tmp_path: Path):
    served = HostProcess(
        tmp_path,
        plugin=PLUGIN,
        workflows={"pipeline": PIPELINE, "gated": GATED},
        env={"RERUN_DIR": str(tmp_path)},
    )
    served.start()
    yield served
    served.stop()


def calls(tmp_path: Path) -> dict[str, int]:
    log = tmp_path / "calls.log"
    names = log.read_text(encoding="utf-8").split() if log.exists() else []
    return {name: names.count(name) for name in sorted(set(names))}


async def run_to_end(host: HostProcess, workflow: str, **params: Any) -> dict[str, Any]:
    run_id = (await host.call("runs/start", {"workflow": workflow, **params}))["runId"]
    return await host.wait_run(run_id)


async def rerun(host: HostProcess, run_id: str, step: str, **params: Any) -> dict[str, Any]:
    reply = await host.call("runs/rerun", {"runId": run_id, "step": step, **params})
    assert list(reply) == ["runId"]
    return await host.wait_run(reply["runId"])


def reused(run: dict[str, Any]) -> list[str]:
    return sorted(path for path, step in run["steps"].items() if step.get("reused"))


async def refused(host: HostProcess, params: dict[str, Any]) -> dict[str, Any]:
    reply = await host.request("runs/rerun", params)
    assert "error" in reply, reply
    return dict(reply["error"])


async def test_a_failed_run_rerun_from_its_failed_step_reuses_what_succeeded(host, tmp_path):
    source = await run_to_end(host, "pipeline")
    assert source["status"] == "failed"
    assert "RuntimeError: flaky fails the first time" in source["error"]["message"]
    assert calls(tmp_path) == {"fetch": 1, "flaky": 1, "side": 1}

    run = await rerun(host, source["id"][:8], "flaky")  # a prefix of the id will do
    assert run["status"] == "succeeded"
    assert run["outputs"] == {"result": 17}
    assert calls(tmp_path) == {"fetch": 1, "flaky": 2, "last": 1, "side": 1}
    assert reused(run) == ["fetch", "side"]
    assert run["steps"]["fetch"]["from"] == source["id"]
    assert run["steps"]["fetch"]["output"] == 1

    shown = (await host.call("runs/get", {"runId": run["id"]}))["run"]
    assert shown["origin"] == {"runId": source["id"], "step": "flaky"}
    assert "origin" not in (await host.call("runs/get", {"runId": source["id"]}))["run"]
    events = (await host.call("runs/events", {"runId": run["id"]}))["events"]
    # what it takes over is recorded first, before anything runs
    assert [e["type"] for e in events[:4]] == [
        "run.created",
        "step.reused",
        "step.reused",
        "run.started",
    ]
    assert {e["step"] for e in events[1:3]} == {"fetch", "side"}
    assert events[1]["data"]["from"] == source["id"]
    assert events[0]["data"]["origin"] == {"runId": source["id"], "step": "flaky"}

    diff = await host.call("runs/diff", {"runId": source["id"], "otherRunId": run["id"][:6]})
    assert diff["first"] == "flaky"
    changes = {(d["path"], d["field"]): (d["a"], d["b"]) for d in diff["steps"]}
    assert changes["flaky", "status"] == ("failed", "succeeded")
    assert changes["flaky", "output"] == (None, 10)
    assert changes["last", "status"] == ("cancelled", "succeeded")
    assert not any(path in ("fetch", "side") for path, _ in changes)
    same = await host.call("runs/diff", {"runId": run["id"], "otherRunId": run["id"]})
    assert same == {"first": None, "steps": []}


async def test_rerun_with_other_inputs_another_version_and_a_config_override(host, tmp_path):
    source = await run_to_end(host, "pipeline")
    first = await rerun(host, source["id"], "flaky")
    assert calls(tmp_path) == {"fetch": 1, "flaky": 2, "last": 1, "side": 1}

    # inputs: fetch runs again with them, side keeps its result
    run = await rerun(host, first["id"], "fetch", inputs={"n": 2})
    assert run["outputs"] == {"result": 27} and run["inputs"] == {"n": 2}
    assert reused(run) == ["side"]
    assert run["origin"] == {"runId": first["id"], "step": "fetch"}
    assert calls(tmp_path) == {"fetch": 2, "flaky": 3, "last": 2, "side": 1}

    # version: a step written differently there runs again, with what depends on it
    v2 = PIPELINE.replace("name: side, value: 7", "name: side, value: 8")
    assert (await host.call("workflows/put", {"source": v2}))["version"] == 2
    run = await rerun(host, first["id"], "last", version=2)
    assert run["version"] == 2 and run["outputs"] == {"result": 18}
    assert reused(run) == ["fetch", "flaky"]
    assert calls(tmp_path) == {"fetch": 2, "flaky": 3, "last": 3, "side": 2}

    # config: laid over the step for this run only; the catalog does not change
    versions = await host.call("workflows/versions", {"name": "pipeline"})
    config = {"with": {"name": "side", "value": 70}}
    run = await rerun(host, first["id"], "side", config=config)
    assert run["outputs"] == {"result": 80} and run["version"] == 1
    assert run["origin"] == {"runId": first["id"], "step": "side", "config": config}
    assert reused(run) == ["fetch", "flaky"]
    assert await host.call("workflows/versions", {"name": "pipeline"}) == versions
    current = await host.call("workflows/get", {"name": "pipeline"})
    assert current["workflow"]["version"] == 2
    assert "70" not in json.dumps(current)
    assert (await run_to_end(host, "pipeline"))["outputs"] == {"result": 18}
    diff = await host.call("runs/diff", {"runId": first["id"], "otherRunId": run["id"]})
    assert diff["first"] == "side"
    changes = {(d["path"], d["field"]): (d["a"], d["b"]) for d in diff["steps"]}
    last = {"tool": "t.count", "with": {"name": "last", "value": 17}}
    assert changes == {
        ("side", "output"): (7, 70),
        ("last", "output"): (17, 80),
        ("last", "config"): (last, {"tool": "t.count", "with": {"name": "last", "value": 80}}),
    }
    # side was reused in `first`: no attempt there to compare configurations with; the
    # source ran it
    diff = await host.call("runs/diff", {"runId": source["id"], "otherRunId": run["id"]})
    changes = {(d["path"], d["field"]): (d["a"], d["b"]) for d in diff["steps"]}
    was = {"tool": "t.count", "with": {"name": "side", "value": 7}}
    assert changes["side", "config"] == (was, {"tool": "t.count", **config})


async def test_a_refused_rerun_names_the_problem_and_creates_nothing(host, tmp_path):
    source = await run_to_end(host, "pipeline")
    run_id = source["id"]
    cases = [
        (
            {"step": "flakey"},
            "workflow 'pipeline' version 1 has no step 'flakey' (did you mean 'flaky'?); "
            "its steps: fetch, side, flaky, last",
        ),
        (
            {"step": "flaky.inner"},
            "'flaky.inner' is a step inside step 'flaky': a run re-runs from a top-level "
            "step; give 'flaky' (it runs again as a whole)",
        ),
        (
            {"step": "flaky", "inputs": {"n": "two"}},
            "invalid inputs for workflow 'pipeline': $.n: 'two' is not of type 'integer'",
        ),
        (
            {"step": "flaky", "version": 9},
            "workflow 'pipeline' has no version 9; its versions: 1",
        ),
        (
            {"step": "flaky", "config": {"tool": "t.nope"}},
            "the config given for step 'flaky' does not make a valid workflow: ",
        ),
        ({"step": "flaky", "config": {"id": "other"}}, "config cannot change the id of step"),
    ]
    for params, message in cases:
        error = await refused(host, {"runId": run_id, **params})
        assert error["code"] == -32602, (params, error)
        assert error["message"].startswith(message), (params, error)
    error = await refused(host, {"runId": run_id, "step": "flaky", "config": {"tool": "t.nope"}})
    assert error["message"].endswith("steps[2].tool: unknown tool 't.nope': no plugin registers it")
    assert error["data"] == {
        "problems": ["steps[2].tool: unknown tool 't.nope': no plugin registers it"]
    }
    error = await refused(host, {"runId": "0123456789abcdef" * 2, "step": "flaky"})
    assert error["code"] == -32002
    error = await refused(host, {"runId": run_id})
    assert error["code"] == -32602  # no step
    listed = (await host.call("runs/list", {}))["runs"]
    assert [r["id"] for r in listed] == [run_id]
    assert calls(tmp_path) == {"fetch": 1, "flaky": 1, "side": 1}


async def until_status(host: HostProcess, run_id: str, status: str) -> dict[str, Any]:
    with anyio.fail_after(20):
        while True:
            run = (await host.call("runs/get", {"runId": run_id}))["run"]
            if run["status"] == status:
                return dict(run)
            await anyio.sleep(0.05)


async def test_a_host_killed_during_a_rerun_resumes_it_without_running_reused_steps(host, tmp_path):
    source = await run_to_end(host, "gated")
    assert source["status"] == "failed"
    reply = await host.call("runs/rerun", {"runId": source["id"], "step": "flaky"})
    new = reply["runId"]
    await until_status(host, new, "waiting")  # flaky succeeded, the gate waits for "go"
    assert calls(tmp_path) == {"g-fetch": 1, "g-flaky": 2}

    host.signal(signal.SIGKILL)
    host.wait_exit()
    host.start()
    run = await until_status(host, new, "waiting")
    assert run["origin"] == {"runId": source["id"], "step": "flaky"}
    assert run["steps"]["fetch"]["reused"] is True
    assert run["steps"]["flaky"]["status"] == "succeeded"
    await host.call("runs/signal", {"runId": new, "event": "go", "data": "done"})
    run = await host.wait_run(new)
    assert run["status"] == "succeeded" and run["outputs"] == {"last": "done"}
    assert calls(tmp_path) == {"g-fetch": 1, "g-flaky": 2, "g-last": 1}
    assert reused(run) == ["fetch"]  # read back from the store, finished
    events = (await host.call("runs/events", {"runId": new}))["events"]
    assert [e["type"] for e in events].count("run.recovered") == 1
    assert not [e for e in events if e["type"] == "step.started" and e["step"] == "fetch"]


def plait_runs(host: HostProcess, *args: str) -> subprocess.CompletedProcess[str]:
    command = [*PLAIT, "runs", *args, "--config", str(host.tmp / "plait.toml")]
    command += ["--data-dir", str(host.data_dir)]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=host.tmp,
        env=host.environment(),
    )


async def test_plait_runs_rerun_and_diff_through_the_host_and_on_the_data_dir(host, tmp_path):
    source = await run_to_end(host, "pipeline")
    done = plait_runs(host, "rerun", source["id"][:8], "flaky", "--version", "1", "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)["run"]
    assert shown["origin"] == {"runId": source["id"], "step": "flaky"}
    online = await host.wait_run(shown["id"])
    assert online["outputs"] == {"result": 17}

    done = plait_runs(host, "diff", source["id"], online["id"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "first difference: step flaky"

    host.stop()  # no host: the command makes the run and runs it here, to its end
    done = plait_runs(host, "rerun", online["id"], "fetch", "--input", "n=3")
    assert done.returncode == 0, done.stderr
    assert f"re-run of run {online['id']} from step fetch" in done.stdout
    assert "succeeded (reused)" in done.stdout  # side
    done = plait_runs(host, "list", "--json")
    offline = json.loads(done.stdout)["runs"][0]
    done = plait_runs(host, "show", offline["id"], "--json")
    run = json.loads(done.stdout)["run"]
    assert run["status"] == "succeeded" and run["outputs"] == {"result": 37}
    assert run["inputs"] == {"n": 3} and reused(run) == ["side"]
    assert calls(tmp_path) == {"fetch": 2, "flaky": 3, "last": 2, "side": 1}
    done = plait_runs(host, "diff", online["id"], offline["id"], "--json")
    diff = json.loads(done.stdout)
    assert diff["first"] == "fetch"
    assert diff["steps"][0] == {"path": "", "field": "inputs", "a": {"n": 1}, "b": {"n": 3}}
    done = plait_runs(host, "rerun", online["id"], "nope")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: workflow 'pipeline' version 1 has no step 'nope'; "
        "its steps: fetch, side, flaky, last"
    ]
