"""The ``input`` step alone: its configuration, and its run with a fake context (the engine's
side, ``runs/respond``, is tested over a real host in tests/e2e/test_input_ws.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError
from ruamel.yaml import YAML

from plait.plugins import create_plugin_manager
from plait.steps.input import InputStep, InputTimeout
from plait.testing import FakeStepContext

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def config(**raw):
    return InputStep.Config.model_validate({"input": "ok?", **raw})


def test_it_registers_through_the_hooks():
    pm = create_plugin_manager(entry_points=False)
    assert pm.failures == []
    assert pm.registries.step_types.get("input") is InputStep


def test_the_configuration_and_its_defaults():
    c = config()
    assert (c.schema_, c.answerers, c.within, c.on_timeout) == (
        {},
        ["api", "mcp", "web"],
        None,
        "fail",
    )
    assert config(within=5, default=1).on_timeout == "default"
    assert config(answerers=["web", "web"]).answerers == ["web"]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"default": 1}, "need(s) `within`"),
        ({"on_timeout": "default"}, "need(s) `within`"),
        ({"schema": {"type": "integr"}}, "not a valid JSON Schema: $.type:"),
        ({"answerers": ["email"]}, "answerers"),
        ({"answerers": []}, "answerers"),
        ({"within": 0}, "within"),
    ],
)
def test_bad_configurations_are_refused(raw, fragment):
    with pytest.raises(ValidationError) as info:
        config(**raw)
    assert fragment in str(info.value)


async def test_it_asks_then_outputs_the_answer_and_records_who_gave_it():
    answer = {"answer": {"ok": True}, "by": "ana", "channel": "web"}
    ctx = FakeStepContext(step_id="approve", signals={"input:approve": answer})
    schema = {"type": "object"}
    out = await InputStep().run(ctx, config(schema=schema, answerers=["web"]))
    assert out == {"ok": True}
    assert ctx.events == [
        (
            "input.requested",
            {"message": "ok?", "schema": schema, "answerers": ["web"], "deadline": None},
        ),
        ("input.answered", {"by": "ana", "channel": "web"}),
    ]


async def test_a_timeout_fails_or_gives_the_default_and_the_deadline_is_kept():
    ctx = FakeStepContext(step_id="q", checkpoints={"deadline": 123.0})
    assert await InputStep().run(ctx, config(within=5, default="no")) == "no"
    assert ctx.events[0][1]["deadline"] == 123.0  # a restart keeps the first deadline
    with pytest.raises(InputTimeout, match="step 'q' was not answered within 5s"):
        await InputStep().run(FakeStepContext(step_id="q"), config(within=5))


def test_the_readme_example_is_a_valid_input_step():
    text = README.read_text(encoding="utf-8")
    section = text.split("### Human input", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    (step,) = YAML(typ="safe", pure=True).load(block.group(1))
    raw = {k: v for k, v in step.items() if k != "id"}
    c = InputStep.Config.model_validate(raw)
    assert c.on_timeout == "default" and c.answerers == ["api", "web"]
