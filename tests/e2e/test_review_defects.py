"""Regression tests of the defects found in review (issue 10), through a real host and socket."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

import plait
from plait.definition.graph import render_graph

# Timing-sensitive (pings under 500 ms) or CPU-heavy: `make test` runs these after the rest,
# on their own, so nothing else loads the machine while they measure.
pytestmark = [pytest.mark.anyio, pytest.mark.timing]


async def test_a_source_naming_a_file_is_text_not_a_path_to_read(served, client, tmp_path):
    """workflows/put and workflows/validate never read a file a client names."""
    secret = tmp_path / "secret.yaml"
    secret.write_text("name: secret\nsteps:\n  - {id: a, transform: 1}\n")
    error = await client.error("workflows/put", {"source": str(secret)})
    assert error["code"] == -32003
    verdict = await client.call("workflows/validate", {"source": str(secret)})
    assert verdict["valid"] is False
    listed = await client.call("workflows/list")
    assert "secret" not in {w["name"] for w in listed["workflows"]}
    # the same text sent as text registers as usual
    put = await client.call("workflows/put", {"source": secret.read_text()})
    assert put["name"] == "secret"


async def test_a_new_version_with_another_concurrency_limit_takes_effect(served, probe):
    host = served.host
    steps = [{"id": f"s{i}", "tool": "probe.work", "with": {"seconds": 0.05}} for i in range(6)]
    host.register({"name": "limited", "concurrency": 1, "steps": steps})
    await host.wait(await host.start_run("limited"))
    assert probe.peak == 1
    host.register({"name": "limited", "concurrency": 3, "steps": steps})
    probe.peak = 0
    await host.wait(await host.start_run("limited"))
    assert probe.peak == 3


@pytest.mark.parametrize(
    "step",
    [
        {"id": "a", "transform": "${item}"},
        {"id": "a", "transform": {"n": "${index + 1}"}},
        {"id": "a", "transform": 1, "when": "${item > 0}"},
    ],
)
async def test_item_and_index_outside_a_loop_fail_validation(client, step):
    verdict = await client.call(
        "workflows/validate", {"definition": {"name": "w", "steps": [step]}}
    )
    assert verdict["valid"] is False
    [problem] = verdict["errors"]
    assert problem["path"].startswith("steps[0].")
    assert "loop" in problem["message"]


async def test_item_and_index_inside_a_loop_body_are_valid(client):
    definition = {
        "name": "w",
        "steps": [
            {
                "id": "each",
                "loop": [1, 2],
                "steps": [{"id": "x", "transform": "${item * 10 + index}"}],
            }
        ],
        "outputs": {"all": "${steps.each.output}"},
    }
    assert (await client.call("workflows/validate", {"definition": definition}))["valid"]


def _big_workflow(n: int) -> dict[str, Any]:
    steps = [{"id": "s0", "transform": 1}]
    steps += [
        {"id": f"s{i}", "transform": f"${{ steps.s{i - 1}.output + 1 }}"} for i in range(1, n)
    ]
    return {"name": "big", "steps": steps}


async def test_compiling_a_large_workflow_leaves_the_host_serving(served):
    """A workflow of thousands of steps compiles for seconds: pings go on being answered."""
    definition = _big_workflow(3000)
    answered_during = 0
    done = anyio.Event()

    async def put() -> None:
        async with served.client() as writer:
            result = await writer.call("workflows/put", {"definition": definition}, timeout=120)
            assert result["name"] == "big"
        done.set()

    async with served.client() as pinger, anyio.create_task_group() as tg:
        tg.start_soon(put)
        await anyio.sleep(0.05)
        started = time.monotonic()
        while not done.is_set():
            await pinger.ping_time()
            if not done.is_set():
                answered_during += 1
            await anyio.sleep(0.02)
        took = time.monotonic() - started
    assert took > 0.2, "the compile was too quick to tell anything; make the workflow bigger"
    assert answered_during >= 3, f"only {answered_during} pings answered in {took:.1f} s"


def test_a_third_party_branching_step_draws_like_if(pm):
    class Choose(plait.StepType):
        key = "choose"

        class Config(plait.StepConfig):
            choose: str
            paths: dict[str, list[str]]

        def branches(self, config):
            return dict(config.get("paths") or {})

        async def run(self, ctx, config):
            ctx.select_branch(config.choose)
            return config.choose

    @plait.hookimpl
    def register_step_types(register):
        register(Choose)

    pm.register(type("chooser", (), {"register_step_types": staticmethod(register_step_types)}))
    compiled = plait.Engine(pm).compile(
        {
            "name": "w",
            "steps": [
                {"id": "pick", "choose": "left", "paths": {"left": ["l"], "right": ["r"]}},
                {"id": "l", "transform": 1},
                {"id": "r", "transform": 2},
                {"id": "plain", "transform": 3},
            ],
        }
    )
    mermaid = render_graph(compiled, "mermaid")
    assert 'pick{{"pick (choose)"}}' in mermaid
    assert 'plain["plain (transform)"]' in mermaid
    assert "pick -->|left| l" in mermaid
    dot = render_graph(compiled, "dot")
    assert 'pick [label="pick (choose)", shape=diamond];' in dot
    assert 'plain [label="plain (transform)"];' in dot
