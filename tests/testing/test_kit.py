"""plait.testing, the kit plugin authors test with, against a real host and a real engine.

The fixtures come from the kit's pytest plugin, loaded through its ``pytest11`` entry point as
in any project that installs plait; this module only overrides ``plait_plugins`` and
``plait_workflows`` as a plugin's tests would.
"""

from __future__ import annotations

import json
import subprocess
import sys

import anyio
import pytest

import plait
from plait.errors import (
    AgentFailed,
    AgentNotFound,
    DefinitionError,
    OutputError,
    PluginError,
    ToolFailed,
    ToolNotFound,
    WorkflowNotFound,
)
from plait.plugins import Message, StepConfig, StepContext, StepType
from plait.rpc.errors import (
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    RpcError,
)
from plait.rpc.errors import WorkflowNotFound as RpcWorkflowNotFound
from plait.testing import (
    Client,
    FakeStepContext,
    memory_config,
    run_step,
    started_host,
    step_plugin,
)
from plait.testing.steps import RUN_STEP_WORKFLOW

pytestmark = pytest.mark.anyio


# -- step types of a plugin under test ---------------------------------------------------------


class ShoutConfig(StepConfig):
    shout: str
    times: int = 1


class Shout(StepType[ShoutConfig]):
    """Upper-cases its text, ``times`` times, and says so in an event."""

    key = "shout"
    Config = ShoutConfig

    async def run(self, ctx: StepContext, config: ShoutConfig) -> str:
        await ctx.emit("shout.said", {"text": config.shout})
        return "!".join([config.shout.upper()] * config.times)


class BoomConfig(StepConfig):
    boom: str


class Boom(StepType[BoomConfig]):
    """Always fails, with its config as the message."""

    key = "boom"
    Config = BoomConfig

    async def run(self, ctx: StepContext, config: BoomConfig) -> str:
        raise RuntimeError(config.boom)


class LookupConfig(StepConfig):
    lookup: str


class Lookup(StepType[LookupConfig]):
    """Asks the tool ``kit.define`` for a word's meaning."""

    key = "lookup"
    Config = LookupConfig

    async def run(self, ctx: StepContext, config: LookupConfig) -> object:
        return await ctx.call_tool("kit.define", {"word": config.lookup})


class AskConfig(StepConfig):
    ask: str


class Ask(StepType[AskConfig]):
    """Has a connected client run a completion (MCP sampling)."""

    key = "ask"
    Config = AskConfig

    async def run(self, ctx: StepContext, config: AskConfig) -> object:
        reply = await ctx.sample({"messages": [{"role": "user", "content": config.ask}]}, timeout=5)
        return reply["content"]["text"]


SHOUT = {
    "name": "shout",
    "inputs": {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]},
    "steps": [{"id": "s", "shout": "${inputs.word}", "times": 2}],
    "outputs": {"said": "${steps.s.output}"},
}
ASK = {
    "name": "ask",
    "steps": [{"id": "a", "ask": "hi?"}],
    "outputs": {"answer": "${steps.a.output}"},
}


@pytest.fixture
def plait_plugins():
    return [step_plugin(Shout, Boom, Ask)]


@pytest.fixture
def plait_workflows():
    return [SHOUT, ASK]


# -- plait_host ----------------------------------------------------------------------------------


async def test_plait_host_is_a_started_memory_host_with_the_plugins_and_workflows(plait_host):
    assert isinstance(plait_host, plait.Host)
    assert plait_host.config.memory_only and plait_host.data_dir is None
    assert {e.name for e in plait_host.list_workflows()} == {"shout", "ask"}
    plugins = plait_host.plugins_info()
    assert plugins["failed"] == []
    ours = [p for p in plugins["plugins"] if "shout" in p["step_types"]]
    assert [p["step_types"] for p in ours] == [["ask", "boom", "shout"]]
    assert all(p["builtin"] for p in plugins["plugins"] if p is not ours[0])  # no entry points

    run = await plait_host.wait(await plait_host.start_run("shout", {"word": "hey"}))
    assert run.status == "succeeded", run.error
    assert run.outputs == {"said": "HEY!HEY"}


async def test_started_host_fails_at_once_on_a_plugin_that_does_not_load():
    class Broken:
        __name__ = "broken"

        @plait.hookimpl
        def register_tools(self, register):
            raise RuntimeError("no tools today")

    with pytest.raises(PluginError, match="broken failed at register_tools: RuntimeError"):
        async with started_host(plugins=[Broken()]):
            pass


async def test_started_host_imports_plugin_modules_given_by_name(tmp_path, monkeypatch):
    (tmp_path / "kit_shouting.py").write_text(
        "import plait\n\n"
        "@plait.hookimpl\n"
        "def register_tools(register):\n"
        "    register(lambda text: text.upper(), 'kit.upper')\n"
    )
    monkeypatch.syspath_prepend(tmp_path)
    async with started_host(plugins=["kit_shouting"]) as host:
        assert await host.call_tool("kit.upper", {"text": "a"}) == "A"


def test_memory_config_lays_tables_over_the_test_defaults():
    config = memory_config(limits={"max_batch": 5}, plugins={"disabled": ["plait.steps.delay"]})
    assert config.memory_only and not config.plugins.entry_points
    assert config.limits.max_batch == 5
    assert config.plugins.disabled == ["plait.steps.delay"]
    with pytest.raises(plait.ConfigError, match="limits.bogus: unknown key"):
        memory_config(limits={"bogus": 1})


# -- plait_client --------------------------------------------------------------------------------


async def test_client_starts_a_run_and_waits_for_it(plait_client):
    started = await plait_client.call("runs/start", workflow="shout", inputs={"word": "yo"})
    assert set(started) == {"runId", "status"}
    done = await plait_client.call("runs/wait", {"runId": started["runId"]}, timeout=5)
    assert done["run"]["status"] == "succeeded"
    assert done["run"]["outputs"] == {"said": "YO!YO"}


async def test_client_unknown_method_raises_the_method_not_found_class(plait_client):
    with pytest.raises(MethodNotFound) as caught:
        await plait_client.call("runs/explode")
    assert isinstance(caught.value, RpcError)
    assert caught.value.code == -32601
    assert caught.value.message == "Method not found: runs/explode"


async def test_client_errors_come_back_as_their_classes_with_data(plait_client):
    with pytest.raises(RpcWorkflowNotFound) as missing:
        await plait_client.call("runs/start", workflow="nope")
    assert missing.value.code == -32001

    with pytest.raises(InvalidParams) as invalid:
        await plait_client.call("runs/start", workflow="shout", inputs={})
    assert invalid.value.code == -32602
    assert "word" in json.dumps(invalid.value.data)

    with pytest.raises(InvalidParams) as unknown:
        await plait_client.call("runs/get", runId="x", bogus=1)
    assert unknown.value.data["problems"] == [{"field": "bogus", "message": "unknown param"}]


async def test_client_session_follows_the_mcp_rules(plait_client):
    with pytest.raises(InvalidRequest, match="tools/list before initialize"):
        await plait_client.call("tools/list")
    result = await plait_client.initialize()
    assert result["serverInfo"]["name"] == "plait"
    tools = await plait_client.call("tools/list")
    assert "workflow.shout" in {t["name"] for t in tools["tools"]}


async def test_client_receives_notifications_of_a_subscription(plait_client):
    started = await plait_client.call("runs/start", workflow="shout", inputs={"word": "a"})
    await plait_client.call("runs/subscribe", runId=started["runId"])
    seen = []
    while not seen or seen[-1] not in {"run.succeeded", "run.failed"}:
        note = await plait_client.notification()
        assert note["method"] == "runs/event"
        assert note["params"]["runId"] == started["runId"]
        seen.append(note["params"]["type"])
    assert seen[0] == "run.created" and seen[-1] == "run.succeeded"
    assert "shout.said" in seen


async def test_client_counts_as_a_connection_until_it_leaves(plait_host):
    async with Client(plait_host) as client:
        info = await client.call("host/info")
        assert info["counts"]["connections"] == 1
    assert plait_host.sessions == set()
    with pytest.raises(RuntimeError, match="not connected"):
        await client.call("host/info")
    with pytest.raises(RuntimeError, match="connects once"):
        async with client:
            pass


async def test_client_answers_the_hosts_requests_with_on_request(plait_host):
    asked = []

    async def on_request(method, params):
        asked.append(method)
        return {"role": "assistant", "content": {"type": "text", "text": "hello back"}}

    async with Client(plait_host, on_request=on_request) as client:
        await client.initialize({"sampling": {}})
        started = await client.call("runs/start", workflow="ask")
        done = await client.call("runs/wait", runId=started["runId"])
    assert done["run"]["status"] == "succeeded", done["run"]["error"]
    assert done["run"]["outputs"] == {"answer": "hello back"}
    assert asked == ["sampling/createMessage"]


async def test_client_without_on_request_refuses_the_hosts_requests(plait_client):
    await plait_client.initialize({"sampling": {}})
    started = await plait_client.call("runs/start", workflow="ask")
    done = await plait_client.call("runs/wait", runId=started["runId"])
    assert done["run"]["status"] == "failed"
    assert "refused sampling/createMessage" in done["run"]["error"]["message"]


# -- run_step ------------------------------------------------------------------------------------


async def test_run_step_runs_a_step_type_class_through_the_engine():
    run = await run_step(Shout, {"shout": "${inputs.word}", "times": 3}, {"word": "ok"})
    assert run.workflow == RUN_STEP_WORKFLOW
    assert run.status == "succeeded", run.error
    assert run.steps["step"].output == "OK!OK!OK"
    said = [e for e in run.events if e.type == "shout.said"]
    assert [(e.step, e.data) for e in said] == [("step", {"text": "ok"})]


async def test_run_step_runs_a_step_type_by_key():
    run = await run_step("transform", {"transform": "${inputs.x * 2}"}, {"x": 21}, step_id="t")
    assert run.steps["t"].output == 42


async def test_run_step_takes_tools_and_the_step_type_from_plugins():
    def define(word: str) -> str:
        return f"{word}: a word"

    run = await run_step(Lookup, {"lookup": "kit"}, tools={"kit.define": define})
    assert run.steps["step"].output == "kit: a word"

    # the plugin under test registers the class already: it is not registered twice
    run = await run_step(Shout, {"shout": "x"}, plugins=[step_plugin(Shout)])
    assert run.steps["step"].output == "X"


async def test_run_step_shows_a_failing_step_type_in_the_run():
    run = await run_step(Boom, {"boom": "it broke", "retry": {"attempts": 2, "base": 0}})
    assert run.status == "failed"
    step = run.steps["step"]
    assert step.status == "failed" and step.attempts == 2
    assert "it broke" in step.error["message"]
    assert "it broke" in run.error["message"]
    assert [e.type for e in run.events].count("step.retrying") == 1


async def test_run_step_failing_tool_fails_the_step():
    def define(word: str) -> str:
        raise LookupError(f"no {word}")

    run = await run_step(Lookup, {"lookup": "zz"}, tools={"kit.define": define})
    assert run.status == "failed"
    assert "LookupError: no zz" in run.steps["step"].error["message"]


async def test_run_step_invalid_config_and_broken_plugins_raise():
    with pytest.raises(DefinitionError, match="times"):
        await run_step(Shout, {"shout": "x", "times": "many"})
    with pytest.raises(DefinitionError, match="unknown step type 'nosuch'"):
        await run_step("nosuch", {})
    with pytest.raises(PluginError, match="register_tools"):
        await run_step(Lookup, {"lookup": "x"}, tools={"kit.define": 42})


# -- FakeStepContext -----------------------------------------------------------------------------


async def test_fake_context_runs_a_step_type_and_records_its_events():
    ctx = FakeStepContext(run_id="r1", step_id="s")
    assert await Shout().run(ctx, ShoutConfig(shout="hi", times=2)) == "HI!HI"
    assert ctx.events == [("shout.said", {"text": "hi"})]
    assert ctx.events_of("shout.said") == [{"text": "hi"}]
    assert ctx.idempotency_key == "r1/s" and ctx.attempt == 1
    with pytest.raises(OutputError, match="not JSON"):
        await ctx.emit("bad", {"value": {1, 2}})


async def test_fake_context_calls_tools_from_a_dict_of_functions():
    async def define(word: str) -> str:
        await anyio.sleep(0)
        return f"{word}!"

    def fail(word: str) -> str:
        raise ValueError("nope")

    ctx = FakeStepContext(tools={"kit.define": define, "kit.fail": fail})
    assert await Lookup().run(ctx, LookupConfig(lookup="w")) == "w!"
    assert await ctx.call_tool("kit.define", {"word": "z"}) == "z!"
    with pytest.raises(ToolFailed, match="ValueError: nope"):
        await ctx.call_tool("kit.fail", {"word": "z"})
    with pytest.raises(ToolFailed, match="invalid arguments"):
        await ctx.call_tool("kit.define", {"wrong": 1})
    with pytest.raises(ToolNotFound):
        await ctx.call_tool("kit.other", {})
    assert [name for name, _ in ctx.tool_calls] == [
        "kit.define",
        "kit.define",
        "kit.fail",
        "kit.define",
        "kit.other",
    ]
    specs = ctx.tool_specs(["kit.define"])
    assert specs[0]["input_schema"]["properties"] == {"word": {"type": "string"}}
    with pytest.raises(ToolNotFound):
        ctx.tool_specs(["kit.other"])


async def test_fake_context_renders_templates_with_a_template_engine():
    ctx = FakeStepContext(roots={"inputs": {"n": 4}})
    assert ctx.render("${item * inputs.n}", item=3) == 12
    assert ctx.render({"x": "${item}", "y": 1}, item="a") == {"x": "a", "y": 1}
    assert ctx.render("plain") == "plain"
    compiled = ctx.template("item > 1", expression=True)
    assert ctx.render(compiled, item=2) is True
    with pytest.raises(plait.TemplateError):
        ctx.render("${item.missing}", item={})


async def test_fake_context_bodies_branches_workflows_and_checkpoints():
    ctx = FakeStepContext(
        bodies={"body": lambda vars: {"inner": {"output": vars["item"] * 10}}},
        workflows={"child": lambda inputs: {"got": inputs["x"]}},
        checkpoints={"kept": "before"},
    )
    result = await ctx.run_body("body", vars={"item": 2}, output="${steps.inner.output + 1}")
    assert result == 21
    assert await ctx.run_body("body", vars={"item": 1}, key="1") == {"inner": {"output": 10}}
    assert [label for label, _, _ in ctx.body_runs] == ["body", "body"]
    with pytest.raises(LookupError, match="no body 'else'"):
        await ctx.run_body("else")

    ctx.select_branch("then")
    assert ctx.selected == ["then"]

    assert await ctx.run_workflow("child", {"x": 5}) == {"got": 5}
    with pytest.raises(WorkflowNotFound):
        await ctx.run_workflow("other", {})

    assert await ctx.checkpoint("kept", "after") == "before"
    assert await ctx.checkpoint("new", 1) == 1 and await ctx.checkpoint("new", 2) == 1
    assert ctx.events_of("step.checkpoint") == [{"key": "new", "value": 1}]


async def test_fake_context_waits_agents_conversations_and_sampling():
    ctx = FakeStepContext(signals={"go": {"ok": True}})
    assert await ctx.wait_signal("go", timeout=None) == {"ok": True}
    with pytest.raises(TimeoutError):
        await ctx.wait_signal("other", timeout=1)
    with pytest.raises(LookupError, match="would wait forever|no timeout"):
        await ctx.wait_signal("other", timeout=None)

    await ctx.sleep_until(123.0)
    assert ctx.slept_until == [123.0]
    await ctx.waiting("budget")
    await ctx.waiting(None)
    assert ctx.waiting_reasons == ["budget", None]

    with pytest.raises(AgentNotFound):
        ctx.agent("helper")
    await ctx.append_messages("chat", [Message("user", "hi")])
    assert [m.content for m in await ctx.conversation("chat")] == ["hi"]
    assert ctx.events_of("conversation.appended")[0]["conversation"] == "chat"

    with pytest.raises(AgentFailed, match="no sampler"):
        await ctx.sample({"messages": []}, timeout=1)
    sampled = FakeStepContext(sampler=lambda params: {"content": {"text": "yes"}})
    assert await Ask().run(sampled, AskConfig(ask="?")) == "yes"
    assert sampled.samples[0]["messages"][0]["content"] == "?"


# -- loading -------------------------------------------------------------------------------------


def test_loading_the_pytest_plugin_imports_nothing_of_the_host():
    code = (
        "import sys, plait.testing.pytest_plugin as p;"
        "heavy = [m for m in ('websockets', 'sqlite3', 'diskcache',"
        " 'plait.host', 'plait.engine') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_the_pytest_plugin_is_registered_by_entry_point(pytestconfig):
    plugin = pytestconfig.pluginmanager.get_plugin("plait")
    assert plugin is not None and plugin.__name__ == "plait.testing.pytest_plugin"
