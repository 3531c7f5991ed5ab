"""Requests are bounded in what they create and return (issue 12, item 4), over a real
WebSocket host: child runs per run tree, runs in flight, replies larger than a connection
takes, and compiled versions kept in memory."""

from __future__ import annotations

import pytest

import plait
from plait.config import HostConfig
from plait.engine.catalog import Catalog
from plait.store.memory import MemoryStore

from .conftest import SLOW, serving

pytestmark = pytest.mark.anyio

LEAF = {"name": "leaf", "steps": [{"id": "x", "transform": 1}]}
FAN = {
    "name": "fan",
    "steps": [
        {
            "id": "each",
            "loop": "${range(50) | list}",
            "concurrency": 5,
            "steps": [{"id": "child", "workflow": "leaf"}],
        }
    ],
}
LONG = {
    "name": "long",
    "steps": [
        {
            "id": "each",
            "loop": "${range(2000) | list}",
            "max_iterations": 2000,
            "concurrency": 50,
            "steps": [{"id": "x", "transform": "${item}"}],
        }
    ],
}
BIG = {"name": "big", "steps": [{"id": "blob", "transform": "${'x' * 300000}"}]}


async def test_a_run_tree_is_bounded_in_the_child_runs_it_makes(tmp_path, pm):
    async with serving(tmp_path, pm, workflows=(LEAF, FAN), max_child_runs=20) as served:
        async with served.client() as client:
            started = await client.call("runs/start", {"workflow": "fan"})
            run = (await client.call("runs/wait", {"runId": started["runId"], "timeout": 30}))[
                "run"
            ]
            assert run["status"] == "failed"
            assert "max_child_runs = 20" in run["error"]["message"]
            listed = await client.call("runs/list", {"limit": 500})
            assert len(listed["runs"]) == 1  # top-level runs only
            assert await client.call("ping") == {}


async def test_runs_in_flight_are_bounded_per_host(tmp_path, pm):
    async with serving(tmp_path, pm, workflows=(SLOW,), max_live_runs=2) as served:
        async with served.client() as client:
            for _ in range(2):
                await client.call("runs/start", {"workflow": SLOW["name"]})
            error = await client.error("runs/start", {"workflow": SLOW["name"]})
            assert error["code"] == -32006 and "max_live_runs = 2" in error["message"]
            info = await client.call("host/info")
            assert info["limits"]["max_live_runs"] == 2 and info["counts"]["liveRuns"] == 2


async def test_a_reply_larger_than_the_connection_takes_is_an_error_not_a_drop(tmp_path, pm):
    async with serving(tmp_path, pm, workflows=(LONG,), send_queue_bytes=1 << 16) as served:
        async with served.client() as client:
            started = await client.call("runs/start", {"workflow": "long"})
            error = await client.error("runs/wait", {"runId": started["runId"], "timeout": 30})
            assert error["code"] == -32006 and "stepsLimit" in error["message"]
            assert error["data"]["bytes"] > error["data"]["limit"]
            assert await client.call("ping") == {}  # still connected
            seen: list[str] = []
            after = None
            while True:
                params = {"runId": started["runId"], "stepsLimit": 200}
                if after is not None:
                    params["stepsAfter"] = after
                page = (await client.call("runs/get", params))["run"]
                seen += list(page["steps"])
                after = page.get("nextStepsAfter")
                if after is None:
                    break
            assert len(seen) == len(set(seen)) == 2001  # the loop and its 2,000 body steps
            bare = await client.call("runs/get", {"runId": started["runId"], "steps": False})
            assert "steps" not in bare["run"] and bare["run"]["status"] == "succeeded"
            events = await client.call("runs/events", {"runId": started["runId"]})
            assert 0 < len(events["events"]) < 4000  # a page the connection can take


async def test_an_oversized_event_goes_out_without_its_data(tmp_path, pm):
    async with serving(tmp_path, pm, workflows=(BIG,), send_queue_bytes=1 << 17) as served:
        async with served.client() as client:
            sub = await client.call("runs/subscribe", {})
            started = await client.call("runs/start", {"workflow": "big"})
            omitted = None
            while True:
                note = await client.notification()
                params = note["params"]
                if params["subscription"] != sub["subscription"]:
                    continue
                if params["type"] == "step.succeeded":
                    omitted = params["data"]
                if params["type"].startswith("run.") and params["type"] != "run.created":
                    if params["type"] != "run.started":
                        break
            assert omitted == {"omitted": True, "bytes": omitted["bytes"], "read": "runs/events"}
            assert omitted["bytes"] > 1 << 17
            run = await client.call("runs/get", {"runId": started["runId"], "steps": False})
            assert run["run"]["status"] == "succeeded"


def test_compiled_versions_are_kept_within_a_step_budget(pm):
    engine = plait.Engine(pm, HostConfig())
    compiles = []

    def compile_counting(source):
        compiles.append(source["name"] if isinstance(source, dict) else source)
        return engine.compile(source)

    catalog = Catalog(compile_counting, MemoryStore(), keep_steps=25)

    def version(n: int, steps: int) -> plait.CompiledWorkflow:
        body = [{"id": f"s{i}", "transform": n} for i in range(steps)]
        return engine.compile({"name": "w", "steps": body})

    catalog.add(version(1, 10))
    catalog.add(version(2, 10))
    assert catalog.entry("w", 1).compiled is not None  # 20 steps: both kept
    catalog.add(version(3, 10))  # 30 > 25: the least recently used goes
    assert catalog.entry("w", 1).compiled is None
    assert catalog.entry("w", 3).compiled is not None
    again = catalog.get("w", 1)  # compiled again on demand
    assert again.version == 1 and compiles == ["w"]
    assert catalog.entry("w", 2).compiled is None  # and it pushed out the next oldest
