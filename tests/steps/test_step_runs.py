"""Step types run against a fake context: agent turns, loops, branches, waits."""

from __future__ import annotations

import anyio
import pytest

from plait.agents.scripted import ScriptedProvider
from plait.errors import AgentFailed, AgentNotFound, ToolFailed
from plait.plugins import AgentReply, Message
from plait.steps.agent import AgentStep, extract_json
from plait.steps.loop import LoopError, LoopLimitExceeded, LoopStep
from plait.steps.parallel import BranchesFailed, ParallelStep
from plait.steps.tool import ToolStep
from plait.steps.wait import SignalTimeout, WaitStep
from plait.steps.workflow import WorkflowStep

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def scripted(*script):
    return ScriptedProvider().create("bot", {"provider": "scripted", "script": list(script)})


def agent_config(**fields):
    return AgentStep.Config.model_validate({"agent": "bot", "prompt": "go", **fields})


# -- tool, workflow --------------------------------------------------------------------------


async def test_tool_calls_the_tool(make_ctx):
    ctx = make_ctx(tools={"math.add": lambda a: a["x"] + a["y"]})
    config = ToolStep.Config.model_validate({"tool": "math.add", "with": {"x": 1, "y": 2}})
    assert await ToolStep().run(ctx, config) == 3
    assert ctx.tool_calls == [("math.add", {"x": 1, "y": 2})]


async def test_workflow_runs_the_child(make_ctx):
    ctx = make_ctx(workflows={"child": lambda inputs, version: {"got": inputs, "v": version}})
    config = WorkflowStep.Config.model_validate(
        {"workflow": "child", "version": 2, "inputs": {"a": 1}}
    )
    assert await WorkflowStep().run(ctx, config) == {"got": {"a": 1}, "v": 2}


# -- agent -----------------------------------------------------------------------------------


async def test_agent_plain_answer_is_stored_in_the_conversation(make_ctx):
    ctx = make_ctx(agents={"bot": scripted({"say": "hello"})})
    out = await AgentStep().run(ctx, agent_config(system="be brief"))
    assert out == "hello"
    stored = ctx.conversations["agent:bot"]
    assert [(m.role, m.content) for m in stored] == [
        ("system", "be brief"),
        ("user", "go"),
        ("assistant", "hello"),
    ]
    assert ctx.events_of("agent.message")[0]["message"] == {"role": "assistant", "content": "hello"}
    assert ctx.events_of("agent.usage") == [
        {
            "agent": "bot",
            "conversation": "agent:bot",
            "turns": 1,
            "usage": {"prompt_tokens": 2, "completion_tokens": 1},
        }
    ]


async def test_agent_continues_a_named_conversation(make_ctx):
    ctx = make_ctx(agents={"bot": scripted({"say": "one"}, {"say": "two: {last}"})})
    await AgentStep().run(ctx, agent_config(conversation="c", system="sys", prompt="first"))
    out = await AgentStep().run(ctx, agent_config(conversation="c", system="sys", prompt="second"))
    assert out == "two: second"
    assert [m.role for m in ctx.conversations["c"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]


async def test_agent_system_prompt_goes_first_in_requests(make_ctx):
    seen = []

    class Spy:
        name, max_concurrency = "bot", None

        async def complete(self, request):
            seen.append([m.role for m in request.messages])
            return AgentReply(Message(role="assistant", content="ok"))

    ctx = make_ctx(agents={"bot": Spy()})
    ctx.conversations["agent:bot"] = [
        Message(role="user", content="earlier"),
        Message(role="assistant", content="reply"),
    ]
    await AgentStep().run(ctx, agent_config(system="sys"))
    assert seen == [["system", "user", "assistant", "user"]]


async def test_agent_calls_tools_and_feeds_back_results(make_ctx):
    agent = scripted(
        {
            "calls": [
                {"tool": "files.list", "args": {"dir": "src"}},
                {"tool": "files.boom"},
                {"tool": "shell.rm", "args": {"path": "/"}},
            ]
        },
        {"say": "done: {last}"},
    )

    def boom(args):
        raise OSError("disk on fire")

    ctx = make_ctx(
        agents={"bot": agent},
        tools={"files.list": lambda a: ["a.py"], "files.boom": boom, "shell.rm": lambda a: "never"},
    )
    out = await AgentStep().run(ctx, agent_config(tools=["files.list", "files.boom"]))
    assert ctx.tool_calls == [("files.list", {"dir": "src"}), ("files.boom", {})]
    tool_messages = [m for m in ctx.conversations["agent:bot"] if m.role == "tool"]
    assert [(m.tool_call_id, m.name) for m in tool_messages] == [
        ("call_1", "files.list"),
        ("call_2", "files.boom"),
        ("call_3", "shell.rm"),
    ]
    assert tool_messages[0].content == '["a.py"]'
    assert tool_messages[1].content == "error: tool 'files.boom': disk on fire"
    assert tool_messages[2].content.startswith("error: tool 'shell.rm' is not available")
    assert out.startswith("done: error: tool 'shell.rm' is not available")
    events = ctx.events_of("agent.tool_call")
    assert events[0] == {
        "id": "call_1",
        "tool": "files.list",
        "arguments": {"dir": "src"},
        "result": ["a.py"],
    }
    assert "error" in events[1] and "error" in events[2]
    # one append per complete turn: the prompt with the tool round, then the answer
    assert [len(batch) for _, batch in ctx.appends] == [5, 1]


async def test_agent_structured_output_from_a_fenced_block(make_ctx):
    agent = scripted({"say": 'Here:\n```json\n{"score": 0.9}\n```\nbye'})
    ctx = make_ctx(agents={"bot": agent})
    schema = {"type": "object", "required": ["score"], "properties": {"score": {"type": "number"}}}
    assert await AgentStep().run(ctx, agent_config(output_schema=schema)) == {"score": 0.9}


async def test_agent_repairs_a_non_matching_answer(make_ctx):
    agent = scripted({"say": "no json here"}, {"json": {"score": "high"}}, {"json": {"score": 1}})
    ctx = make_ctx(agents={"bot": agent})
    schema = {"type": "object", "properties": {"score": {"type": "number"}}}
    assert await AgentStep().run(ctx, agent_config(output_schema=schema)) == {"score": 1}
    repairs = [m.content for m in ctx.conversations["agent:bot"] if m.role == "user"][1:]
    assert "- the reply contains no JSON value" in repairs[0]
    assert "- $.score: 'high' is not of type 'number'" in repairs[1]


async def test_agent_fails_when_repairs_run_out(make_ctx):
    ctx = make_ctx(agents={"bot": scripted({"json": [1]}, {"json": [2]})})
    with pytest.raises(AgentFailed, match=r"after 1 repair turn\(s\): \$: \[2\] is not of type"):
        await AgentStep().run(ctx, agent_config(output_schema={"type": "object"}, repair_turns=1))
    assert [m.role for m in ctx.conversations["agent:bot"]] == [
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert ctx.events_of("agent.usage")[0]["turns"] == 2


async def test_agent_gives_up_after_max_turns(make_ctx):
    agent = scripted(*[{"call": "t.x"}] * 3)
    ctx = make_ctx(agents={"bot": agent}, tools={"t.x": lambda a: 1})
    with pytest.raises(AgentFailed, match="did not finish within max_turns=2"):
        await AgentStep().run(ctx, agent_config(tools=["t.x"], max_turns=2))
    assert len(ctx.tool_calls) == 2


async def test_agent_rejects_an_invalid_output_schema(make_ctx):
    ctx = make_ctx(agents={"bot": scripted({"say": "x"})})
    with pytest.raises(AgentFailed, match="output_schema is not a valid JSON Schema"):
        await AgentStep().run(ctx, agent_config(output_schema={"type": 5}))


async def test_agent_wraps_provider_errors_and_unknown_agents(make_ctx):
    class Broken:
        name, max_concurrency = "bot", None

        async def complete(self, request):
            raise ConnectionError("refused")

    ctx = make_ctx(agents={"bot": Broken()})
    with pytest.raises(AgentFailed, match="provider error: ConnectionError: refused"):
        await AgentStep().run(ctx, agent_config())
    assert ctx.conversations == {}
    with pytest.raises(AgentNotFound):
        await AgentStep().run(ctx, agent_config(agent="nobody"))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": 1}', {"a": 1}),
        ("  [1, 2] ", [1, 2]),
        ('Sure! ```json\n{"a": [1]}\n``` hope it helps', {"a": [1]}),
        ('```\n"plain"\n```', "plain"),
        ('The answer is {"a": {"b": 2}} and more {"c": 3}', {"a": {"b": 2}}),
    ],
)
def test_extract_json(text, value):
    assert extract_json(text) == value


def test_extract_json_says_why():
    with pytest.raises(ValueError, match="fenced block is not valid JSON"):
        extract_json("```json\n{oops}\n```")
    with pytest.raises(ValueError, match="not valid JSON"):
        extract_json("result: {a: 1}")


# -- loop ------------------------------------------------------------------------------------


def loop_config(**fields):
    return LoopStep.Config.model_validate({"steps": [{"id": "a"}], **fields})


async def test_loop_for_each_keeps_order_under_concurrency(make_ctx):
    running, peak = 0, 0

    async def body(vars):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.001 * (10 - vars["index"]))
        running -= 1
        return vars["item"] * 10

    ctx = make_ctx(bodies={"steps": body})
    out = await LoopStep().run(ctx, loop_config(loop=list(range(10)), concurrency=3))
    assert out == [i * 10 for i in range(10)]
    assert peak == 3
    assert sorted(key for _, _, key in ctx.body_runs) == sorted(str(i) for i in range(10))


async def test_loop_output_template_is_passed_to_the_body(make_ctx):
    async def body(vars):
        return {"n": vars["item"]}

    ctx = make_ctx(bodies={"steps": body})
    config = loop_config(loop=["a", "b"], output=lambda last, item, index: f"{index}:{last['n']}")
    assert await LoopStep().run(ctx, config) == ["0:a", "1:b"]


async def test_loop_first_failure_cancels_the_rest(make_ctx):
    finished = []

    async def body(vars):
        if vars["index"] == 1:
            raise ToolFailed("t", "bad item")
        await anyio.sleep(1)
        finished.append(vars["index"])

    ctx = make_ctx(bodies={"steps": body})
    with anyio.fail_after(0.5), pytest.raises(ToolFailed, match="bad item"):
        await LoopStep().run(ctx, loop_config(loop=[0, 1, 2, 3], concurrency=4))
    assert finished == []


async def test_loop_rejects_non_lists_and_too_many_items(make_ctx):
    ctx = make_ctx(bodies={"steps": lambda vars: None})
    with pytest.raises(LoopError, match="loop expects a list, got an object"):
        await LoopStep().run(ctx, loop_config(loop={"a": 1}))
    with pytest.raises(LoopError, match="got null"):
        await LoopStep().run(ctx, loop_config(loop=None))
    with pytest.raises(LoopLimitExceeded, match="3 items exceeds max_iterations=2"):
        await LoopStep().run(ctx, loop_config(loop=[1, 2, 3], max_iterations=2))
    assert ctx.body_runs == []


async def test_while_loop_sees_index_and_previous_output(make_ctx):
    async def body(vars):
        return {"state": "done" if vars["index"] == 2 else "running"}

    ctx = make_ctx(bodies={"steps": body})
    config = loop_config(**{"while": lambda index, item: item is None or item["state"] != "done"})
    out = await LoopStep().run(ctx, config)
    assert [o["state"] for o in out] == ["running", "running", "done"]
    assert [vars for _, vars, _ in ctx.body_runs] == [
        {"index": 0, "item": None},
        {"index": 1, "item": {"state": "running"}},
        {"index": 2, "item": {"state": "running"}},
    ]


async def test_while_loop_limit(make_ctx):
    async def body(vars):
        return vars["index"]

    ctx = make_ctx(bodies={"steps": body})
    with pytest.raises(LoopLimitExceeded, match="still true after max_iterations=3") as info:
        await LoopStep().run(
            ctx, loop_config(max_iterations=3, **{"while": lambda index, item: True})
        )
    assert len(ctx.body_runs) == 3 and info.value.kind == "loop_limit"
    exact = loop_config(max_iterations=3, **{"while": lambda index, item: index < 3})
    assert await LoopStep().run(make_ctx(bodies={"steps": body}), exact) == [0, 1, 2]


# -- parallel --------------------------------------------------------------------------------


def branches(**delays):
    """Bodies by name: sleep ``delay`` then return the name upper-cased; ``None`` fails."""

    def body(name, delay):
        async def run(vars):
            if delay is None:
                raise ToolFailed(name, "broken")
            await anyio.sleep(delay)
            return name.upper()

        return run

    return {name: body(name, delay) for name, delay in delays.items()}


def parallel_config(names, wait="all"):
    return {"parallel": {n: [{"id": f"{n}1"}] for n in names}, "wait": wait}


async def test_parallel_all_joins_every_branch(make_ctx):
    raw = parallel_config(["b", "a"])
    ctx = make_ctx(definition=raw, bodies=branches(a=0.01, b=0.0))
    out = await ParallelStep().run(ctx, ParallelStep.Config.model_validate(raw))
    assert out == {"b": "B", "a": "A"} and list(out) == ["b", "a"]
    assert sorted(key for _, _, key in ctx.body_runs) == ["a", "b"]


async def test_parallel_all_fails_on_the_first_failure(make_ctx):
    raw = parallel_config(["a", "b"])
    ctx = make_ctx(definition=raw, bodies=branches(a=None, b=5.0))
    with anyio.fail_after(1), pytest.raises(ToolFailed, match="broken"):
        await ParallelStep().run(ctx, ParallelStep.Config.model_validate(raw))


async def test_parallel_any_takes_the_first_success(make_ctx):
    raw = parallel_config(["slow", "broken", "fast"], wait="any")
    ctx = make_ctx(definition=raw, bodies=branches(slow=5.0, broken=None, fast=0.01))
    with anyio.fail_after(1):
        out = await ParallelStep().run(ctx, ParallelStep.Config.model_validate(raw))
    assert out == {"fast": "FAST"}


async def test_parallel_any_fails_when_every_branch_fails(make_ctx):
    raw = parallel_config(["a", "b"], wait="any")
    ctx = make_ctx(definition=raw, bodies=branches(a=None, b=None))
    with pytest.raises(BranchesFailed) as info:
        await ParallelStep().run(ctx, ParallelStep.Config.model_validate(raw))
    assert str(info.value).startswith("all 2 branches failed\n  - a: tool 'a': broken\n")
    assert info.value.to_dict()["branches"] == {"a": "tool 'a': broken", "b": "tool 'b': broken"}


# -- wait ------------------------------------------------------------------------------------


async def test_wait_returns_the_signal(make_ctx):
    config = WaitStep.Config.model_validate({"wait": "approved"})
    assert await WaitStep().run(make_ctx(signal={"ok": True}), config) == {"ok": True}


async def test_wait_timeout(make_ctx):
    fallback = WaitStep.Config.model_validate({"wait": "go", "within": 1, "default": "nope"})
    assert await WaitStep().run(make_ctx(), fallback) == "nope"
    strict = WaitStep.Config.model_validate({"wait": "go", "within": 1.5})
    with pytest.raises(SignalTimeout, match="signal 'go' did not arrive within 1.5s") as info:
        await WaitStep().run(make_ctx(), strict)
    assert (info.value.kind, info.value.retryable) == ("signal_timeout", False)
