"""Step configuration models, registration, the scripted agent and validate's violation list."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from plait.agents.scripted import ScriptedProvider
from plait.errors import AgentFailed
from plait.plugins import AgentRequest, Message, create_plugin_manager
from plait.steps.agent import AgentStep
from plait.steps.condition import IfStep
from plait.steps.delay import DelayStep
from plait.steps.input import InputStep
from plait.steps.loop import LoopStep
from plait.steps.machine import MachineStep
from plait.steps.parallel import ParallelStep
from plait.steps.tool import ToolStep
from plait.steps.transform import TransformStep
from plait.steps.validate import ValidateStep, ValidationFailed
from plait.steps.wait import WaitStep
from plait.steps.workflow import WorkflowStep

pytestmark = pytest.mark.anyio

STEP_TYPES = [
    ToolStep,
    AgentStep,
    IfStep,
    TransformStep,
    ValidateStep,
    LoopStep,
    DelayStep,
    ParallelStep,
    WorkflowStep,
    WaitStep,
    InputStep,
    MachineStep,
]


@pytest.fixture
def anyio_backend():
    return "asyncio"


def invalid(step_type, raw, *fragments):
    """Assert that ``raw`` is rejected with every fragment in the message."""
    with pytest.raises(ValidationError) as info:
        step_type.Config.model_validate(raw)
    text = str(info.value)
    for fragment in fragments:
        assert fragment in text, text
    return text


# -- registration ----------------------------------------------------------------------------


def test_builtins_register_through_the_hooks():
    pm = create_plugin_manager(entry_points=False)
    regs = pm.registries
    assert pm.failures == []
    for step_type in STEP_TYPES:
        assert regs.step_types.get(step_type.key) is step_type
    assert sorted(regs.step_types.names()) == sorted(t.key for t in STEP_TYPES)
    assert regs.agent_providers.names() == ["openai", "sampling", "scripted"]


def test_capacity_and_rerun_flags():
    assert {t.key for t in STEP_TYPES if t.uses_capacity} == {"tool", "agent"}
    assert all(t.rerunnable for t in STEP_TYPES)
    assert all(t.__doc__ and "Example" in t.__doc__ for t in STEP_TYPES)


@pytest.mark.parametrize("step_type", STEP_TYPES, ids=lambda t: t.key)
def test_unknown_fields_are_rejected(step_type):
    invalid(step_type, {step_type.key: "x", "bogus": 1}, "bogus", "Extra inputs")


# -- tool ------------------------------------------------------------------------------------


def test_tool_config():
    config = ToolStep.Config.model_validate({"tool": "git.diff", "with": {"pr": 7}})
    assert (config.tool, config.with_) == ("git.diff", {"pr": 7})
    assert ToolStep.Config.model_validate({"tool": "a.b"}).with_ == {}
    invalid(ToolStep, {"with": {}}, "tool", "Field required")
    invalid(ToolStep, {"tool": ""}, "tool")
    invalid(ToolStep, {"tool": "a", "with": [1]}, "with", "dictionary")


# -- agent -----------------------------------------------------------------------------------


def test_agent_config_defaults_and_bounds():
    config = AgentStep.Config.model_validate({"agent": "r", "prompt": "hi"})
    assert config.max_turns == 8 and config.repair_turns == 2
    assert config.tools == [] and config.conversation is None and config.output_schema is None
    invalid(AgentStep, {"agent": "r"}, "prompt", "Field required")
    invalid(AgentStep, {"agent": "r", "prompt": "p", "max_turns": 0}, "max_turns")
    invalid(AgentStep, {"agent": "r", "prompt": "p", "max_turns": 101}, "max_turns")
    invalid(AgentStep, {"agent": "r", "prompt": "p", "repair_turns": 6}, "repair_turns")
    invalid(AgentStep, {"agent": "r", "prompt": "p", "tools": "git.diff"}, "tools")


# -- if --------------------------------------------------------------------------------------


def test_if_config_and_branches():
    config = IfStep.Config.model_validate({"if": True, "then": "a", "else": ["b", "c"]})
    assert (config.if_, config.then, config.else_) == (True, ["a"], ["b", "c"])
    assert IfStep.expressions == frozenset({"if"})
    assert IfStep().branches({"if": "x", "then": ["a"]}) == {"then": ["a"], "else": []}
    assert IfStep().branches({"if": "x", "then": "a", "else": "b"}) == {
        "then": ["a"],
        "else": ["b"],
    }
    invalid(IfStep, {"then": ["a"]}, "if", "Field required")
    invalid(IfStep, {"if": 1, "then": ["a", "b"], "else": ["b"]}, "both `then` and `else`: b")


async def test_if_selects_the_branch(make_ctx):
    ctx = make_ctx()
    assert await IfStep().run(ctx, IfStep.Config.model_validate({"if": 0})) is False
    assert await IfStep().run(ctx, IfStep.Config.model_validate({"if": [1]})) is True
    assert ctx.selected == ["else", "then"]


# -- transform -------------------------------------------------------------------------------


def test_transform_config():
    assert TransformStep.Config.model_validate({"transform": {"a": [1]}}).transform == {"a": [1]}
    assert TransformStep.Config.model_validate({"transform": None}).transform is None
    invalid(TransformStep, {}, "transform", "Field required")


# -- validate --------------------------------------------------------------------------------


def test_validate_config():
    config = ValidateStep.Config.model_validate(
        {"validate": 3, "schema": {"type": "integer"}, "assert": "value > 1"}
    )
    assert (config.value, config.schema_, config.assert_) == (3, {"type": "integer"}, ["value > 1"])
    assert ValidateStep.expressions == frozenset({"assert"})
    invalid(ValidateStep, {"validate": 1}, "nothing to check")
    invalid(ValidateStep, {"schema": {}}, "validate", "Field required")
    invalid(ValidateStep, {"validate": 1, "schema": "integer"}, "schema")


async def test_validate_lists_every_violation(make_ctx):
    definition = {
        "validate": "${x}",
        "schema": {},
        "assert": ["steps.a.output > 3", "${ok}", "true"],
    }
    ctx = make_ctx(definition=definition)
    config = ValidateStep.Config.model_validate(
        {
            "validate": {"a": [{"b": "x"}], "c": 5},
            "schema": {
                "type": "object",
                "required": ["d"],
                "properties": {
                    "a": {
                        "type": "array",
                        "items": {"type": "object", "properties": {"b": {"type": "integer"}}},
                    },
                    "c": {"maximum": 4},
                },
            },
            "assert": [False, None, True],
            "message": "review output is off",
        }
    )
    with pytest.raises(ValidationFailed) as info:
        await ValidateStep().run(ctx, config)
    exc = info.value
    assert sorted(exc.violations) == sorted(
        [
            "$: 'd' is a required property",
            "$.a[0].b: 'x' is not of type 'integer'",
            "$.c: 5 is greater than the maximum of 4",
            "assertion failed: steps.a.output > 3",
            "assertion failed: ${ok}",
        ]
    )
    assert str(exc).startswith("review output is off: 5 violation(s)\n")
    assert all(v in str(exc) for v in exc.violations)
    assert exc.kind == "validation" and exc.retryable is False
    assert exc.to_dict()["violations"] == exc.violations


async def test_validate_passes_the_value_through(make_ctx):
    config = ValidateStep.Config.model_validate(
        {"validate": {"n": 1}, "schema": {"type": "object"}, "assert": [True]}
    )
    assert await ValidateStep().run(make_ctx(), config) == {"n": 1}


async def test_validate_reports_an_invalid_schema(make_ctx):
    config = ValidateStep.Config.model_validate({"validate": 1, "schema": {"type": "integr"}})
    with pytest.raises(ValidationFailed) as info:
        await ValidateStep().run(make_ctx(), config)
    assert info.value.violations[0].startswith("the schema is invalid: $.type:")
    assert "'integr'" in info.value.violations[0]


async def test_validate_checks_formats(make_ctx):
    config = ValidateStep.Config.model_validate(
        {"validate": "not a date", "schema": {"type": "string", "format": "date"}}
    )
    with pytest.raises(ValidationFailed, match="is not a 'date'"):
        await ValidateStep().run(make_ctx(), config)


# -- loop ------------------------------------------------------------------------------------


def test_loop_config_modes():
    over = LoopStep.Config.model_validate(
        {"loop": [1, 2], "steps": [{"id": "a"}], "concurrency": 4}
    )
    assert over.loop == [1, 2] and over.concurrency == 4 and over.max_iterations == 1000
    assert "loop" in over.model_fields_set
    cond = LoopStep.Config.model_validate({"while": "index < 3", "steps": [{"id": "a"}]})
    assert cond.while_ == "index < 3" and "loop" not in cond.model_fields_set
    assert LoopStep.deferred == frozenset({"while", "output", "steps"})
    assert LoopStep.expressions == frozenset({"while"})
    assert LoopStep().bodies({"loop": [], "steps": [{"id": "a"}]}) == {"steps": [{"id": "a"}]}
    # the engine reports an empty body; at run time the body is not part of the config
    assert LoopStep().bodies({"loop": []}) == {"steps": []}
    assert LoopStep().bodies({"loop": [], "steps": "x"}) == {"steps": []}
    assert LoopStep.Config.model_validate({"loop": [1]}).steps is None


def test_loop_config_errors():
    body = [{"id": "a"}]
    invalid(LoopStep, {"steps": body}, "needs `loop: <list>` (for each) or `while")
    invalid(LoopStep, {"loop": [1], "while": "x", "steps": body}, "not both")
    invalid(LoopStep, {"while": "x", "concurrency": 2, "steps": body}, "for-each loops only")
    invalid(LoopStep, {"loop": [1], "steps": body, "concurrency": 0}, "concurrency")
    invalid(LoopStep, {"loop": [1], "steps": body, "concurrency": 1001}, "concurrency")
    invalid(LoopStep, {"loop": [1], "steps": body, "max_iterations": 100_001}, "max_iterations")


# -- delay -----------------------------------------------------------------------------------


def test_delay_config():
    assert DelayStep.Config.model_validate({"delay": 2.5}).deadline(100.0) == 102.5
    until = DelayStep.Config.model_validate({"until": "2025-01-01T00:00:00Z"})
    assert until.deadline(0.0) == 1735689600.0
    assert DelayStep.Config.model_validate({"until": "2025-01-01T02:00:00+02:00"}).until == (
        1735689600.0
    )
    assert DelayStep.Config.model_validate({"until": 1735689600}).until == 1735689600.0
    assert DelayStep.Config.model_validate({"until": "1735689600"}).until == 1735689600.0


def test_delay_config_errors():
    invalid(DelayStep, {}, "exactly one of `delay`")
    invalid(DelayStep, {"delay": 1, "until": 5}, "exactly one of `delay`")
    invalid(DelayStep, {"delay": -1}, "greater than or equal to 0")
    invalid(DelayStep, {"delay": 32 * 86400}, "less than or equal")
    invalid(DelayStep, {"until": "2025-01-01T00:00:00"}, "has no timezone")
    invalid(DelayStep, {"until": "next tuesday"}, "not an ISO-8601 timestamp")
    invalid(DelayStep, {"until": "inf"}, "finite number")


async def test_delay_records_the_deadline_then_sleeps(make_ctx):
    ctx = make_ctx()
    config = DelayStep.Config.model_validate({"until": 1234.0})
    assert await DelayStep().run(ctx, config) is None
    assert ctx.events == [("delay.scheduled", {"until": 1234.0})]
    assert ctx.slept_until == 1234.0


# -- parallel --------------------------------------------------------------------------------


def test_parallel_config():
    branches = {"a": [{"id": "x"}], "b": [{"id": "y"}]}
    config = ParallelStep.Config.model_validate({"parallel": branches, "wait": "any"})
    assert config.wait == "any"
    assert ParallelStep().bodies({"parallel": branches}) == branches
    assert ParallelStep.deferred == frozenset({"parallel"})
    invalid(ParallelStep, {"parallel": branches, "wait": "some"}, "wait", "'all' or 'any'")
    invalid(ParallelStep, {"parallel": {}}, "at least one branch")
    invalid(ParallelStep, {"parallel": {"a": []}}, "branch 'a' must be a non-empty list")
    invalid(ParallelStep, {"parallel": [[{"id": "x"}]]}, "must map branch names")
    assert ParallelStep().bodies({"type": "parallel"}) == {"parallel": []}
    assert ParallelStep().bodies({"parallel": [{"id": "x"}]}) == {}
    assert ParallelStep.Config.model_validate({"wait": "any"}).parallel is None


# -- workflow --------------------------------------------------------------------------------


def test_workflow_config():
    config = WorkflowStep.Config.model_validate({"workflow": "child", "inputs": {"a": 1}})
    assert (config.workflow, config.version, config.inputs) == ("child", None, {"a": 1})
    invalid(WorkflowStep, {"workflow": "child", "version": 0}, "version")
    invalid(WorkflowStep, {"workflow": "child", "inputs": [1]}, "inputs")


# -- wait ------------------------------------------------------------------------------------


def test_wait_config():
    config = WaitStep.Config.model_validate({"wait": "approved"})
    assert (config.within, config.on_timeout) == (None, "fail")
    implied = WaitStep.Config.model_validate({"wait": "go", "within": 5, "default": {"x": 1}})
    assert implied.on_timeout == "default" and implied.default == {"x": 1}
    explicit = WaitStep.Config.model_validate(
        {"wait": "go", "within": 5, "default": 1, "on_timeout": "fail"}
    )
    assert explicit.on_timeout == "fail"
    invalid(WaitStep, {"wait": "go", "default": 1}, "need(s) `within`")
    invalid(WaitStep, {"wait": "go", "within": 0}, "within")
    invalid(WaitStep, {"wait": "go", "within": 1, "on_timeout": "skip"}, "on_timeout")
    invalid(WaitStep, {"wait": ""}, "wait")


# -- the scripted agent ----------------------------------------------------------------------


def scripted(*script, **extra):
    return ScriptedProvider().create(
        "bot", {"provider": "scripted", "script": list(script), **extra}
    )


async def test_scripted_agent_plays_its_script_in_turns():
    agent = scripted(
        {"call": "files.list", "args": {"dir": "src"}},
        {"calls": [{"tool": "a.one"}, {"tool": "a.two", "args": {"n": 2}}]},
        {"say": "Saw {last}!", "when": r"two"},
        {"json": {"score": 0.5, "tags": ["x"]}},
        max_concurrency=2,
        system="be nice",
        model="m",
    )
    assert (agent.name, agent.max_concurrency, agent.system) == ("bot", 2, "be nice")
    messages = [Message(role="system", content="sys"), Message(role="user", content="go")]

    first = await agent.complete(AgentRequest(messages=list(messages)))
    assert first.message.role == "assistant" and first.message.content == ""
    assert [c.to_dict() for c in first.message.tool_calls] == [
        {"id": "call_1", "name": "files.list", "arguments": {"dir": "src"}}
    ]
    assert first.usage == {"prompt_tokens": len("sysgo") // 4, "completion_tokens": 0}
    messages += [
        first.message,
        Message(role="tool", content='["a.py"]', tool_call_id="call_1", name="files.list"),
    ]

    second = await agent.complete(AgentRequest(messages=list(messages)))
    assert [(c.id, c.name, c.arguments) for c in second.message.tool_calls] == [
        ("call_2", "a.one", {}),
        ("call_3", "a.two", {"n": 2}),
    ]
    messages += [
        second.message,
        Message(role="tool", content="1", tool_call_id="call_2"),
        Message(role="tool", content="two", tool_call_id="call_3"),
    ]

    third = await agent.complete(AgentRequest(messages=list(messages)))
    assert third.message.content == "Saw two!" and not third.message.tool_calls
    assert third.usage["completion_tokens"] == len("Saw two!") // 4
    messages += [third.message, Message(role="user", content="now json")]

    fourth = await agent.complete(AgentRequest(messages=list(messages)))
    assert fourth.message.content == '{"score": 0.5, "tags": ["x"]}'
    messages.append(fourth.message)

    with pytest.raises(AgentFailed, match="script exhausted after 4 replies") as info:
        await agent.complete(AgentRequest(messages=messages))
    assert info.value.retryable is False


async def test_scripted_agent_counts_turns_per_conversation():
    agent = scripted({"say": "one"}, {"say": "two"})
    fresh = [Message(role="user", content="hi")]
    assert (await agent.complete(AgentRequest(messages=fresh))).message.content == "one"
    assert (await agent.complete(AgentRequest(messages=fresh))).message.content == "one"
    later = fresh + [Message(role="assistant", content="one"), Message(role="user", content="?")]
    assert (await agent.complete(AgentRequest(messages=later))).message.content == "two"


async def test_scripted_last_is_replaced_literally():
    agent = scripted({"say": "{last} and {other} {0}"})
    reply = await agent.complete(AgentRequest(messages=[Message(role="user", content="{x}")]))
    assert reply.message.content == "{x} and {other} {0}"


async def test_scripted_when_mismatch_fails():
    agent = scripted({"say": "ok", "when": "^approve"})
    with pytest.raises(AgentFailed) as info:
        await agent.complete(AgentRequest(messages=[Message(role="user", content="reject it")]))
    assert "script[0] expects the last message to match /^approve/" in str(info.value)
    assert "'reject it'" in str(info.value)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"provider": "scripted"}, "script: Field required"),
        ({"script": []}, "script: List should have at least 1 item"),
        ({"script": [{"say": "a"}], "temperature": 1}, "temperature: unknown key"),
        (
            {"script": [{"say": "a", "json": 1}]},
            "script[0]: give exactly one of say, json, call, calls (got say, json)",
        ),
        ({"script": [{"when": "x"}]}, "script[0]: give exactly one"),
        ({"script": [{"say": "a"}, {"call": "t", "bogus": 1}]}, "script[1].bogus: unknown key"),
        ({"script": [{"calls": [{"args": {}}]}]}, "script[0].calls[0].tool: Field required"),
        ({"script": [{"calls": [{"tool": "t"}], "args": {}}]}, "`args` goes with `call`"),
        ({"script": [{"say": "a", "when": "("}]}, "script[0].when: `when` is not a valid regular"),
        ({"script": [{"say": "a"}], "max_concurrency": 0}, "max_concurrency"),
    ],
)
def test_scripted_config_errors(config, fragment):
    with pytest.raises(ValueError) as info:
        ScriptedProvider().create("bot", config)
    assert str(info.value).startswith("agent 'bot' (scripted): invalid configuration: ")
    assert fragment in str(info.value)
