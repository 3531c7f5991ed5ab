"""plait-hello's tests, written with plait.testing: no mocks, no sockets, no files.

``plait.testing`` comes with plait; its fixtures (``plait_host``, ``plait_client``) are in every
pytest session once plait is installed. This module hands them the plugin (``plait_plugins``)
and the example workflow (``plait_workflows``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import plait
import plait_hello
from plait.testing import Client, FakeStepContext, run_step

pytestmark = pytest.mark.anyio

WORKFLOW = Path(__file__).resolve().parents[1] / "hello.yaml"


@pytest.fixture
def plait_plugins() -> list[object]:
    return [plait_hello]


@pytest.fixture
def plait_workflows() -> list[Path]:
    return [WORKFLOW]


async def test_greet_step_renders_its_config_and_repeats_the_greeting() -> None:
    run = await run_step(
        plait_hello.Greet,
        {"greet": "${inputs.name}", "times": 2},
        {"name": "ada"},
        plugins=[plait_hello],
    )
    assert run.status == "succeeded", run.error
    assert run.steps["step"].output == "hi ada, hi ada"
    assert [e.data for e in run.events if e.type == "hello.greeting"] == [{"name": "ada"}]


async def test_greet_step_config_is_checked_at_load() -> None:
    with pytest.raises(plait.DefinitionError, match="tiems"):
        await run_step(plait_hello.Greet, {"greet": "ada", "tiems": 2})


async def test_greet_step_alone_with_a_fake_context() -> None:
    ctx = FakeStepContext()
    output = await plait_hello.Greet().run(ctx, plait_hello.Greet.Config(greet="bo"))
    assert output == "hi bo"
    assert ctx.events == [("hello.greeting", {"name": "bo"})]


async def test_the_host_offers_the_tool(plait_host: plait.Host) -> None:
    greeting = await plait_host.call_tool("hello.greet", {"name": "bo", "punctuation": "?"})
    assert greeting == "hello, bo?"


async def test_the_example_workflow_runs_over_json_rpc(plait_client: Client) -> None:
    started = await plait_client.call("runs/start", workflow="hello-plugin", inputs={"name": "ada"})
    done = await plait_client.call("runs/wait", runId=started["runId"])
    assert done["run"]["status"] == "succeeded", done["run"]["error"]
    assert done["run"]["outputs"] == {"tool": "hello, ada!", "step": "hi ada, hi ada"}
