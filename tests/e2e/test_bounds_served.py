"""Bounds and value boundaries through a real ``plait serve`` process (issue 12, items 4-5):
the limits come from its config file, the tools from a plugin loaded by ``[plugins] modules``,
and restarting it shows nothing unkeepable was kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from .host_process import HostProcess

pytestmark = pytest.mark.anyio

PLUGIN = """\
import math

import plait


def huge() -> int:
    return 10 ** 5000


def nan() -> float:
    return math.nan


@plait.hookimpl
def register_tools(register):
    register(huge, "odd.huge", blocking=False)
    register(nan, "odd.nan", blocking=False)
"""

WORKFLOWS = {
    "leaf": "name: leaf\nsteps:\n  - {id: x, transform: 1}\n",
    "fan": """\
name: fan
steps:
  - id: each
    loop: "${range(40) | list}"
    concurrency: 4
    steps:
      - {id: child, workflow: leaf}
""",
    "long": """\
name: long
steps:
  - id: each
    loop: "${range(1500) | list}"
    max_iterations: 1500
    concurrency: 50
    steps:
      - {id: x, transform: "${item}"}
""",
    "odd": """\
name: odd
steps:
  - {id: huge, tool: odd.huge, on_error: continue}
  - {id: nan, tool: odd.nan, on_error: continue}
""",
}

CONFIG = "[limits]\nmax_child_runs = 10\nsend_queue_bytes = 65536\n"


@pytest.fixture
def host(tmp_path: Path):
    process = HostProcess(tmp_path, plugin=PLUGIN, workflows=WORKFLOWS, config=CONFIG)
    process.start()
    yield process
    process.stop()


async def test_limits_from_the_config_file_hold(host):
    fan = await host.call("runs/start", {"workflow": "fan"})
    run = await host.wait_run(fan["runId"])
    assert run["status"] == "failed" and "max_child_runs = 10" in run["error"]["message"]

    long = await host.call("runs/start", {"workflow": "long"})
    reply = await host.request("runs/wait", {"runId": long["runId"], "timeout": 30})
    assert reply["error"]["code"] == -32006 and "stepsLimit" in reply["error"]["message"]
    page = await host.call("runs/get", {"runId": long["runId"], "stepsLimit": 100})
    assert len(page["run"]["steps"]) == 100 and page["run"]["nextStepsAfter"]
    assert page["run"]["status"] == "succeeded"
    info = await host.call("host/info")
    assert info["limits"]["max_child_runs"] == 10
    assert await host.call("ping") == {}


async def test_unkeepable_values_fail_their_step_and_are_not_kept(host):
    started = await host.call("runs/start", {"workflow": "odd"})
    run = await host.wait_run(started["runId"])
    steps = run["steps"]
    assert steps["huge"]["status"] == "failed" and "digits" in steps["huge"]["error"]["message"]
    assert steps["nan"]["status"] == "failed" and "finite" in steps["nan"]["error"]["message"]
    host.stop()
    host.start()  # read back from the store: the same failures, no value turned into null
    again = (await host.call("runs/get", {"runId": started["runId"]}))["run"]
    assert again["steps"]["huge"]["status"] == "failed"
    assert again["steps"]["nan"]["status"] == "failed"
    assert again["steps"]["huge"]["output"] is None and again["steps"]["nan"]["output"] is None
