"""Re-running from a step (``runs/rerun``) and comparing runs (``runs/diff``), in process.

Which steps a rerun takes over is a question about the compiled graph: a step is reused when it
does not depend on the step re-run from (through references, ``needs``, branches and
fallbacks), it succeeded in the source run, and the scheduler will settle it from its record
(its own dependencies are reused too). Each case runs a real source run, re-runs it, and looks
at what the new run shows as reused and at what the tools really executed.

The durable part runs on real SQLite files: a finished rerun read back from the store still
shows its origin and its reused steps, and a host stopped during a rerun resumes it without
running a reused step.
"""

from __future__ import annotations

import json
import sqlite3
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

import plait
from plait.definition.compiler import CompiledWorkflow
from plait.engine.engine import Engine
from plait.engine.lineage import plan_reuse
from plait.plugins import create_plugin_manager
from plait.rpc.errors import InvalidParams, RunNotFound
from plait.state.recovery import StepRecord
from plait.testing import Client, memory_config, started_host

pytestmark = pytest.mark.anyio


class Tools:
    """``t.run`` records each call by name and returns its ``value`` (or its name);
    ``t.flaky`` does the same but fails while its name is in :attr:`broken`."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.broken: set[str] = set()

    def plugin(self) -> Any:
        tools = self

        def run(name: str, value: Any = None) -> Any:
            tools.calls.append(name)
            return name if value is None else value

        def flaky(name: str, value: Any = None) -> Any:
            tools.calls.append(name)
            if name in tools.broken:
                raise RuntimeError(f"{name} is broken")
            return name if value is None else value

        @plait.hookimpl
        def register_tools(register: Any) -> None:
            register(run, "t.run", blocking=False)
            register(flaky, "t.flaky", blocking=False)

        return types.SimpleNamespace(__name__="lineage_tools", register_tools=register_tools)

    def ran(self, *names: str) -> dict[str, int]:
        return {name: self.calls.count(name) for name in names}


@pytest.fixture
def tools() -> Tools:
    return Tools()


def run_(step_id: str, tool: str = "t.run", **extra: Any) -> dict[str, Any]:
    """A tool step calling ``tool`` with its own id as the name."""
    with_ = {"name": step_id, **extra.pop("with_", {})}
    return {"id": step_id, "tool": tool, "with": with_, **extra}


@asynccontextmanager
async def hosted(tools: Tools, *workflows: dict[str, Any]) -> AsyncIterator[Client]:
    async with started_host(plugins=[tools.plugin()], workflows=workflows) as host:
        async with Client(host) as client:
            yield client


async def finished(client: Client, run_id: str) -> dict[str, Any]:
    return (await client.call("runs/wait", runId=run_id, timeout=10))["run"]


async def start(client: Client, workflow: str, **params: Any) -> dict[str, Any]:
    run_id = (await client.call("runs/start", workflow=workflow, **params))["runId"]
    return await finished(client, run_id)


async def rerun(client: Client, run_id: str, step: str, **params: Any) -> dict[str, Any]:
    new = (await client.call("runs/rerun", runId=run_id, step=step, **params))["runId"]
    return await finished(client, new)


def reused(run: dict[str, Any]) -> list[str]:
    return sorted(path for path, s in run["steps"].items() if s.get("reused"))


# -- which steps are reused ------------------------------------------------------------------

CHAIN = {
    "name": "chain",
    "steps": [
        run_("a"),
        run_("b", with_={"value": "${steps.a.output}-b"}),
        run_("c", with_={"value": "${steps.b.output}-c"}),
        run_("d"),
        run_("e", needs=["a"]),
    ],
    "outputs": {"c": "${steps.c.output}", "d": "${steps.d.output}"},
}


async def test_the_step_and_what_depends_on_it_run_again_the_rest_is_reused(tools):
    async with hosted(tools, CHAIN) as client:
        source = await start(client, "chain")
        tools.calls.clear()
        run = await rerun(client, source["id"], "b")
    assert run["status"] == "succeeded"
    assert reused(run) == ["a", "d", "e"]
    assert sorted(tools.calls) == ["b", "c"]
    assert run["outputs"] == source["outputs"] == {"c": "a-b-c", "d": "d"}
    assert run["origin"] == {"runId": source["id"], "step": "b"}
    assert run["steps"]["a"]["from"] == source["id"]
    assert "reused" not in run["steps"]["b"] and "origin" not in source


BRANCHES = {
    "name": "branches",
    "steps": [
        {"id": "gate", "if": "${inputs.go}", "then": ["yes"], "else": ["no"]},
        run_("yes"),
        run_("no"),
        run_("join", needs_any=["yes", "no"], with_={"value": "${steps.yes.output}"}),
        run_("after", with_={"value": "${steps.join.output}!"}),
    ],
    "outputs": {"after": "${steps.after.output}"},
}


async def test_a_branch_taken_is_reused_with_its_choice_and_the_other_stays_skipped(tools):
    async with hosted(tools, BRANCHES) as client:
        source = await start(client, "branches", inputs={"go": True})
        tools.calls.clear()
        run = await rerun(client, source["id"], "after")
        assert reused(run) == ["gate", "join", "yes"]
        assert run["steps"]["no"]["status"] == "skipped"  # the choice replayed, not re-made
        assert tools.calls == ["after"]
        assert run["outputs"] == {"after": "yes!"}

        # From the untaken branch: the join that waits for it runs again, the gate does not.
        tools.calls.clear()
        run = await rerun(client, source["id"], "no")
        assert reused(run) == ["gate", "yes"]
        assert run["steps"]["no"]["status"] == "skipped"
        assert sorted(tools.calls) == ["after", "join"]

        # From the gate: everything depends on it.
        tools.calls.clear()
        run = await rerun(client, source["id"], "gate", inputs={"go": False})
        assert reused(run) == []
        assert run["outputs"] == {"after": "join!"}  # join's value: no step yes
        assert sorted(tools.calls) == ["after", "join", "no"]


def fallback_workflow() -> dict[str, Any]:
    return {
        "name": "fallback",
        "steps": [
            run_("primary", "t.flaky", on_error="backup"),
            run_("backup", with_={"value": "from backup"}),
            run_("uses", with_={"value": "${steps.primary.output}"}),
            run_("other"),
        ],
        "outputs": {"uses": "${steps.uses.output}"},
    }


async def test_a_fallback_not_needed_is_skipped_again_and_its_dependents_reused(tools):
    async with hosted(tools, fallback_workflow()) as client:
        source = await start(client, "fallback")
        assert source["steps"]["backup"]["status"] == "skipped"
        tools.calls.clear()
        run = await rerun(client, source["id"], "other")
        assert reused(run) == ["primary", "uses"]
        assert run["steps"]["backup"]["status"] == "skipped"
        assert tools.calls == ["other"]
        assert run["outputs"] == {"uses": "primary"}

        # Re-running the primary re-runs its fallback's decision and its dependents.
        tools.calls.clear()
        run = await rerun(client, source["id"], "primary")
        assert reused(run) == ["other"]
        assert sorted(tools.calls) == ["primary", "uses"]


async def test_a_failure_a_fallback_handled_is_not_reused_nor_what_followed_it(tools):
    tools.broken.add("primary")
    async with hosted(tools, fallback_workflow()) as client:
        source = await start(client, "fallback")
        assert source["outputs"] == {"uses": "from backup"}
        tools.broken.clear()
        tools.calls.clear()
        # The primary failed there: it runs again, and its fallback and dependents with it
        # (taken over, they could show a result the primary's new outcome contradicts).
        run = await rerun(client, source["id"], "other")
        assert reused(run) == []
        assert run["steps"]["backup"]["status"] == "skipped"
        assert sorted(tools.calls) == ["other", "primary", "uses"]
        assert run["outputs"] == {"uses": "primary"}


LOOPS = {
    "name": "loops",
    "inputs": {"type": "object", "properties": {"n": {"type": "integer", "default": 3}}},
    "steps": [
        run_("first"),
        {
            "id": "each",
            "loop": "${range(inputs.n) | list}",
            "needs": ["first"],
            "steps": [run_("work", with_={"value": "${item * 10}"})],
            "output": "${steps.work.output}",
        },
        {
            "id": "par",
            "parallel": {
                "left": [run_("l")],
                "right": [run_("r"), run_("r2", needs=["r"])],
            },
        },
        run_("total", with_={"value": "${steps.each.output | sum}"}),
    ],
    "outputs": {"total": "${steps.total.output}", "par": "${steps.par.output}"},
}


async def test_loops_and_parallel_bodies_are_reused_whole_with_the_steps_inside_them(tools):
    async with hosted(tools, LOOPS) as client:
        source = await start(client, "loops")
        tools.calls.clear()
        run = await rerun(client, source["id"][:8], "total")
        assert tools.calls == ["total"]
        inside = [p for p in source["steps"] if p not in ("first", "each", "par", "total")]
        assert len(inside) == 3 + 3  # three iterations, three steps in the branches
        assert reused(run) == sorted(["first", "each", "par", *inside])
        for path in inside:
            assert run["steps"][path]["output"] == source["steps"][path]["output"]
        assert (
            run["outputs"]
            == source["outputs"]
            == {
                "total": 30,
                "par": {"left": "l", "right": "r2"},
            }
        )
        diff = await client.call("runs/diff", runId=source["id"], otherRunId=run["id"])
        assert diff == {"first": None, "steps": []}

        # From the loop itself: every iteration runs again, with the new inputs.
        tools.calls.clear()
        run = await rerun(client, source["id"], "each", inputs={"n": 2})
        assert reused(run) == sorted(["first", "par", *(p for p in inside if p.startswith("par"))])
        assert sorted(tools.calls) == ["total", "work", "work"]
        assert run["outputs"]["total"] == 10


NEEDS_ANY = {
    "name": "needs_any",
    "steps": [
        run_("x", when="${false}"),
        run_("y", "t.flaky", on_error="continue"),
        run_("z"),
        run_("j", needs_any=["x", "y", "z"]),
        run_("k", needs_any=["x", "y"]),
        run_("other"),
    ],
}


async def test_needs_any_is_reused_when_one_of_its_steps_is(tools):
    tools.broken.add("y")
    async with hosted(tools, NEEDS_ANY) as client:
        source = await start(client, "needs_any")
        assert source["status"] == "succeeded"
        assert [source["steps"][s]["status"] for s in "xyjk"] == [
            "skipped",
            "failed",
            "succeeded",
            "succeeded",
        ]
        tools.calls.clear()
        run = await rerun(client, source["id"], "other")
    # j is taken over (z is); k's steps were skipped and failed there, none is taken over,
    # so it runs again after y, which failed (continue) and runs again too.
    assert reused(run) == ["j", "z"]
    assert sorted(tools.calls) == ["k", "other", "y"]
    assert run["steps"]["x"]["status"] == "skipped"


def compiled(definition: dict[str, Any]) -> CompiledWorkflow:
    engine = Engine(create_plugin_manager(entry_points=False))
    return engine.compile(definition, check_plugins=False)


def test_a_step_another_version_changed_runs_again_with_what_depends_on_it():
    v1 = compiled(CHAIN)
    changed = [dict(s) for s in CHAIN["steps"]]
    changed[0] = run_("a", with_={"value": "A"})
    v2 = compiled({**CHAIN, "steps": [*changed, run_("new", needs=["d"])]})
    done = {s: StepRecord(status="succeeded", output=s) for s in "abcde"}
    # From d: a changed (so b, c and e depend on a changed step), new is not in v1.
    assert plan_reuse(v1.scope, v2.scope, done, "d") == []
    assert plan_reuse(v1.scope, v1.scope, done, "d") == ["a", "b", "c", "e"]
    failed = {**done, "a": StepRecord(status="failed")}
    assert plan_reuse(v1.scope, v1.scope, failed, "d") == []


# -- options and errors ----------------------------------------------------------------------


async def test_a_config_override_is_for_this_run_only(tools):
    async with hosted(tools, CHAIN) as client:
        source = await start(client, "chain")
        before = await client.call("workflows/versions", name="chain")
        run = await rerun(client, source["id"], "b", config={"with": {"name": "b", "value": "B"}})
        assert run["outputs"] == {"c": "B-c", "d": "d"}
        assert await client.call("workflows/versions", name="chain") == before
        again = await start(client, "chain")
        assert again["outputs"] == {"c": "a-b-c", "d": "d"}

        with pytest.raises(InvalidParams) as refused:
            await client.call(
                "runs/rerun", runId=source["id"], step="b", config={"with": {"nme": "b"}}
            )
        assert "the config given for step 'b' does not make a valid workflow" in str(refused.value)
        assert "nme" in str(refused.value)


async def test_refused_reruns_name_the_problem_and_create_nothing(tools):
    async with hosted(tools, CHAIN, LOOPS) as client:
        source = await start(client, "chain")
        loops = await start(client, "loops")
        cases = [
            ({"step": "bb"}, "workflow 'chain' version 1 has no step 'bb' (did you mean 'b'?)"),
            (
                {"runId": loops["id"], "step": "each[1].work"},
                "'each[1].work' is a step inside step 'each'",
            ),
            ({"step": "b", "version": 7}, "workflow 'chain' has no version 7; its versions: 1"),
            ({"step": "b", "config": {"id": "bee"}}, "config cannot change the id of step 'b'"),
        ]
        for params, message in cases:
            with pytest.raises(InvalidParams) as refused:
                await client.call("runs/rerun", {"runId": source["id"], **params})
            assert message in refused.value.message
        with pytest.raises(InvalidParams) as refused:
            await client.call("runs/rerun", runId=loops["id"], step="each", inputs={"n": "3"})
        assert refused.value.message.startswith("invalid inputs for workflow 'loops'")
        with pytest.raises(RunNotFound):
            await client.call("runs/rerun", runId="f" * 32, step="b")
        listed = (await client.call("runs/list"))["runs"]
        assert len(listed) == 2


async def test_diff_names_the_first_differing_step_and_cuts_large_values(tools):
    big = "x" * 10_000
    workflow = {
        "name": "diffed",
        "inputs": {"type": "object"},
        "steps": [
            run_("same"),
            run_("size", with_={"value": "${inputs.text}"}),
            run_("tail", with_={"value": "${steps.size.output | length}"}),
        ],
    }
    async with hosted(tools, workflow, CHAIN) as client:
        a = await start(client, "diffed", inputs={"text": "short"})
        b = await start(client, "diffed", inputs={"text": big})
        diff = await client.call("runs/diff", runId=a["id"][:6], otherRunId=b["id"])
        other = await start(client, "chain")
        against = await client.call("runs/diff", runId=a["id"], otherRunId=other["id"])
        events = (await client.call("runs/events", runId=a["id"]))["events"]
    assert diff["first"] == "size"
    by_field = {(d["path"], d["field"]): (d["a"], d["b"]) for d in diff["steps"]}
    assert list(by_field) == [
        ("", "inputs"),
        ("size", "output"),
        ("size", "config"),
        ("tail", "output"),
        ("tail", "config"),
    ]
    cut = by_field["size", "output"][1]
    assert cut["$truncated"] is True and cut["size"] == 10_002 and len(cut["preview"]) == 200
    assert by_field["tail", "output"] == (5, 10_000)
    # Another workflow: each step of either run, absent on one side; the first is the one
    # the first run started first.
    assert against["first"] == next(e["step"] for e in events if e["type"] == "step.started")
    assert {d["path"] for d in against["steps"]} >= {"same", "a", "b"}


# -- durable ---------------------------------------------------------------------------------


def sqlite_host(tmp_path: Any, tools: Tools) -> plait.Host:
    config = plait.HostConfig.model_validate(
        {"host": {"data_dir": str(tmp_path / "data")}, "plugins": {"entry_points": False}}
    )
    return plait.Host(config, pm=create_plugin_manager(entry_points=False, extra=[tools.plugin()]))


GATED = {
    "name": "gated",
    "steps": [
        run_("a"),
        run_("flaky", "t.flaky", with_={"value": "${steps.a.output}!"}),
        {"id": "gate", "wait": "go", "needs": ["flaky"]},
        run_("last", with_={"value": "${steps.flaky.output}${steps.gate.output}"}),
    ],
    "outputs": {"last": "${steps.last.output}"},
}


async def test_a_rerun_kept_in_the_store_resumes_after_a_stop_without_reused_steps(tmp_path, tools):
    tools.broken.add("flaky")
    async with sqlite_host(tmp_path, tools) as host:
        host.register(GATED)
        async with Client(host) as client:
            source_id = (await client.call("runs/start", workflow="gated"))["runId"]
            source = await finished(client, source_id)
            assert source["status"] == "failed"
            tools.broken.clear()
            config = {"with": {"name": "flaky", "value": "${steps.a.output}?"}}
            params = {"runId": source_id, "step": "flaky", "config": config}
            new = (await client.call("runs/rerun", params))["runId"]
            with anyio.fail_after(5):
                while (await host.get_run(new)).status != "waiting":
                    await anyio.sleep(0.01)
    assert tools.ran("a", "flaky", "last") == {"a": 1, "flaky": 2, "last": 0}

    # A new host on the data dir resumes the rerun: `a` (reused) and `flaky` (succeeded
    # before the stop) are settled from the events, and the overridden definition is found
    # by its digest.
    async with sqlite_host(tmp_path, tools) as host:
        async with Client(host) as client:
            waiting = (await client.call("runs/get", runId=new))["run"]
            origin = {"runId": source_id, "step": "flaky", "config": config}
            assert waiting["origin"] == origin
            assert waiting["steps"]["a"]["reused"] is True
            await client.call("runs/signal", runId=new, event="go", data="!")
            run = await finished(client, new)
            assert run["status"] == "succeeded"
            assert run["outputs"] == {"last": "a?!"}
            assert tools.ran("a", "flaky", "last") == {"a": 1, "flaky": 2, "last": 1}
            # Finished, it is read back from the store: origin and reused steps still show.
            assert host.engine is not None and new not in host.engine.runs
            assert run["origin"] == origin
            assert reused(run) == ["a"]
            assert run["progress"]["done"] == 4
            diff = await client.call("runs/diff", runId=source_id, otherRunId=new)
            assert diff["first"] == "flaky"
            assert {d["path"] for d in diff["steps"]} == {"flaky", "gate", "last"}
            versions = await client.call("workflows/versions", name="gated")
            assert [v["version"] for v in versions["versions"]] == [1]
            assert versions["versions"][0]["current"] is True
            fresh = await client.call("runs/start", workflow="gated")
            await client.call("runs/signal", runId=fresh["runId"], event="go", data=".")
            assert (await finished(client, fresh["runId"]))["outputs"] == {"last": "a!."}


async def test_a_failed_run_rerun_from_its_failed_step_in_a_memory_host(tools):
    tools.broken.add("flaky")
    async with started_host(config=memory_config(), plugins=[tools.plugin()]) as host:
        host.register(GATED)
        async with Client(host) as client:
            source = await start(client, "gated")
            tools.broken.clear()
            new = (await client.call("runs/rerun", runId=source["id"], step="flaky"))["runId"]
            await client.call("runs/signal", runId=new, event="go", data="")
            run = await finished(client, new)
    assert run["status"] == "succeeded"
    assert run["outputs"] == {"last": "a!"}
    assert tools.ran("a", "flaky") == {"a": 1, "flaky": 2}


async def test_a_reused_agent_step_brings_its_conversation_along(tmp_path, tools):
    config = plait.HostConfig.model_validate(
        {
            "host": {"data_dir": str(tmp_path / "data")},
            "plugins": {"entry_points": False},
            "agents": {
                "bot": {"provider": "scripted", "script": [{"say": "one"}, {"say": "two: {last}"}]}
            },
        }
    )
    chat = {
        "name": "chat",
        "steps": [
            {"id": "g1", "agent": "bot", "prompt": "hello", "conversation": "c1"},
            {"id": "g2", "agent": "bot", "prompt": "again", "conversation": "c1", "needs": ["g1"]},
        ],
        "outputs": {"second": "${steps.g2.output}"},
    }
    pm = create_plugin_manager(entry_points=False, extra=[tools.plugin()])
    async with plait.Host(config, pm=pm) as host:
        host.register(chat)
        async with Client(host) as client:
            source = await start(client, "chat")
            run = await rerun(client, source["id"], "g2")
    # g2 continues the history g1 left (the k-th assistant turn takes the k-th reply)
    assert run["outputs"] == source["outputs"] == {"second": "two: again"}
    assert reused(run) == ["g1"]
    conn = sqlite3.connect(tmp_path / "data" / "plait.db")
    try:
        rows = conn.execute(
            "SELECT idx, message FROM conversations WHERE run_id = ? ORDER BY idx", (run["id"],)
        ).fetchall()
    finally:
        conn.close()
    assert [(idx, json.loads(m)["content"]) for idx, m in rows] == [
        (0, "hello"),
        (1, "one"),
        (2, "again"),
        (3, "two: again"),
    ]
