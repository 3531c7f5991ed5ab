"""Values the wire or the store cannot keep exactly are refused where they enter a real host.

A tool result that is NaN, an infinity, an integer past 4,300 digits or a mapping with a
non-string key used to be accepted: the run "succeeded", then ``runs/wait`` broke on it (or a
restart read it back as ``null``). Now the step fails, saying why, and the host goes on serving.
A definition holding such a value is invalid, with its path; so are such run inputs.
"""

from __future__ import annotations

import math
import types

import pytest

import plait
from plait.config import HostConfig
from plait.plugins import create_plugin_manager

from .conftest import websocket_of

pytestmark = pytest.mark.anyio

HUGE = 10**5000
LONGEST = -(10**4300 - 1)
"""The longest negative integer a JSON value may be: 4,300 digits and a sign."""

RETURNS = {
    "huge": lambda: HUGE,
    "nan": lambda: math.nan,
    "inf_inside": lambda: {"a": [1, -math.inf]},
    "int_key": lambda: {"ok": {1: "one"}},
    "longest": lambda: LONGEST,
    "surrogate": lambda: {"s\udc80": "\ud800 and \U0001f600"},
}


def _tool(make):
    def tool() -> object:
        return make()

    return tool


def _values_plugin() -> object:
    @plait.hookimpl
    def register_tools(register):
        for name, make in RETURNS.items():
            register(_tool(make), f"values.{name}", blocking=False)

    return types.SimpleNamespace(__name__="values", register_tools=register_tools)


@pytest.fixture
def pm(probe):
    return create_plugin_manager(entry_points=False, extra=[probe.plugin(), _values_plugin()])


def _workflow(tool: str) -> dict:
    return {
        "name": f"v-{tool.replace('_', '-')}",
        "steps": [{"id": "t", "tool": f"values.{tool}"}],
        "outputs": {"value": "${steps.t.output}"},
    }


async def _run(client, tool: str) -> dict:
    await client.call("workflows/put", {"definition": _workflow(tool)})
    started = await client.call("runs/start", {"workflow": _workflow(tool)["name"]})
    run = (await client.call("runs/wait", {"runId": started["runId"], "timeout": 5}))["run"]
    assert (await client.call("runs/get", {"runId": started["runId"]}))["run"] == run
    return run


@pytest.mark.parametrize(
    ("tool", "reason"),
    [
        ("huge", "4,300-digit limit"),
        ("nan", "nan is not a finite number"),
        ("inf_inside", "a[1]: -inf is not a finite number"),
        ("int_key", "ok: mapping key 1 is not a string"),
    ],
)
async def test_a_tool_result_not_kept_fails_its_step(client, tool, reason):
    run = await _run(client, tool)
    assert run["status"] == "failed"
    message = run["steps"]["t"]["error"]["message"]
    assert f"tool 'values.{tool}' returned a value that is not JSON" in message
    assert reason in message
    assert run["outputs"] is None
    assert await client.call("ping") == {}  # the host goes on serving
    done = await client.call("runs/start", {"workflow": "quick", "inputs": {"x": 4}})
    run = (await client.call("runs/wait", {"runId": done["runId"], "timeout": 5}))["run"]
    assert run["outputs"] == {"y": 8}


@pytest.mark.parametrize(
    ("tool", "value"),
    [("longest", LONGEST), ("surrogate", {"s\udc80": "\ud800 and \U0001f600"})],
)
async def test_a_tool_result_at_the_edge_is_kept_exactly(client, tool, value):
    """What the wire can carry comes back exactly, over the WebSocket too (the lone
    surrogates as JSON escapes, which UTF-8 could not carry raw)."""
    run = await _run(client, tool)
    assert run["status"] == "succeeded", run
    assert run["outputs"] == {"value": value}
    assert run["steps"]["t"]["output"] == value


INF_YAML = """\
name: infinite
steps:
  - id: a
    transform: .inf
  - id: b
    tool: probe.echo
    with:
      value: [1, -.inf, .nan]
outputs:
  o: ${steps.a.output}
"""


async def test_yaml_non_finite_numbers_are_invalid_over_the_api(client):
    result = await client.call("workflows/validate", {"source": INF_YAML})
    assert result["valid"] is False
    errors = {(e["path"], e["line"]): e["message"] for e in result["errors"]}
    assert set(errors) == {
        ("steps[0].transform", 4),
        ("steps[1].with.value[1]", 8),
        ("steps[1].with.value[2]", 8),
    }
    assert all("not a finite number" in message for message in errors.values())
    error = await client.error("workflows/put", {"source": INF_YAML})
    assert error["code"] == -32003
    assert await client.call("workflows/list") != []  # nothing else changed
    names = [w["name"] for w in (await client.call("workflows/list"))["workflows"]]
    assert "infinite" not in names


async def test_yaml_integer_past_the_limit_is_invalid_over_the_api(client):
    source = "name: big\nsteps:\n  - id: a\n    transform: " + "9" * 5000 + "\n"
    result = await client.call("workflows/validate", {"source": source})
    assert result["valid"] is False
    assert result["errors"][0]["line"] == 4
    assert "5,000 digits" in result["errors"][0]["message"]


async def test_run_inputs_past_the_limits_are_refused_at_the_wire(client):
    """The codec refuses NaN and over-long integers before any method sees them."""
    for literal in ("NaN", "Infinity", "1" + "0" * 4300, "1e400"):
        await client.send(
            '{"jsonrpc":"2.0","id":7,"method":"runs/start","params":{"workflow":"quick",'
            f'"inputs":{{"x":{literal}}}}}}}'
        )
        reply = await client.recv()
        assert reply["id"] is None and reply["error"]["code"] == -32700, (literal, reply)
    assert await client.call("ping") == {}


async def test_run_inputs_at_the_limit_round_trip(client):
    await client.call(
        "workflows/put",
        {
            "definition": {
                "name": "echo-in",
                "steps": [{"id": "e", "tool": "probe.echo", "with": {"value": "${inputs.v}"}}],
                "outputs": {"v": "${steps.e.output}"},
            }
        },
    )
    inputs = {"v": [LONGEST, -0.0, 1e308, "\ud800"]}
    started = await client.call("runs/start", {"workflow": "echo-in", "inputs": inputs})
    run = (await client.call("runs/wait", {"runId": started["runId"], "timeout": 5}))["run"]
    assert run["status"] == "succeeded", run
    assert run["inputs"] == inputs and run["outputs"] == inputs


async def test_an_agent_reply_not_kept_fails_its_step(tmp_path, pm):
    """A model answering NaN: Python's json reads it, the step's output would be NaN."""
    config = HostConfig.model_validate(
        {
            "host": {"data_dir": str(tmp_path / "data"), "port": 0},
            "plugins": {"entry_points": False},
            "agents": {"bot": {"provider": "scripted", "script": [{"say": '{"score": NaN}'}]}},
        }
    )
    workflow = {
        "name": "judge",
        "steps": [
            {
                "id": "ask",
                "agent": "bot",
                "prompt": "score it",
                "output_schema": {"type": "object"},
                "repair_turns": 0,
            }
        ],
    }
    async with plait.Host(config, pm=pm) as host, websocket_of(host) as served:
        async with served.client() as client:
            await client.call("workflows/put", {"definition": workflow})
            started = await client.call("runs/start", {"workflow": "judge"})
            wait = {"runId": started["runId"], "timeout": 5}
            run = (await client.call("runs/wait", wait))["run"]
            assert run["status"] == "failed"
            message = run["steps"]["ask"]["error"]["message"]
            assert "score: nan is not a finite number" in message, message
            assert (await client.call("runs/get", {"runId": started["runId"]}))["run"] == run
