"""The engine end to end through the public API: scheduling, guards, errors, limits, events."""

from __future__ import annotations

import time
import types

import anyio
import pytest

import plait
from plait.config import HostConfig
from plait.definition.models import RetryPolicy
from plait.plugins import create_plugin_manager

pytestmark = pytest.mark.anyio


def wf(*steps, **extra):
    return {"name": "t", "steps": list(steps), **extra}


async def test_independent_steps_run_in_parallel(pm):
    await plait.run(wf({"id": "warm", "transform": 1}), pm=pm)  # the host's first import
    start = time.monotonic()
    run = await plait.run(
        wf(
            {"id": "a", "tool": "probe.work", "with": {"seconds": 0.3, "label": "a"}},
            {"id": "b", "tool": "probe.work", "with": {"seconds": 0.3, "label": "b"}},
        ),
        pm=pm,
    )
    elapsed = time.monotonic() - start
    assert run.status == "succeeded"
    assert elapsed < 0.55, f"two 0.3 s steps took {elapsed:.2f} s: not parallel"
    a, b = run.steps["a"], run.steps["b"]
    assert abs(a.finished_at - b.finished_at) < 0.15


async def test_slow_branch_never_delays_fast_chain(pm):
    """No superstep barrier: c (after fast a) finishes long before slow b does."""
    run = await plait.run(
        wf(
            {"id": "a", "tool": "probe.work", "with": {"seconds": 0.01}},
            {"id": "b", "tool": "probe.work", "with": {"seconds": 0.4}},
            {"id": "c", "tool": "probe.work", "with": {"seconds": 0.01}, "needs": ["a"]},
        ),
        pm=pm,
    )
    assert run.steps["c"].finished_at < run.steps["b"].finished_at - 0.2


async def test_template_references_imply_dependencies(pm):
    run = await plait.run(
        wf(
            {"id": "sum", "tool": "probe.add", "with": {"a": "${steps.one.output}", "b": 2}},
            {"id": "one", "transform": "${1}"},
        ),
        pm=pm,
    )
    assert run.status == "succeeded"
    assert run.steps["sum"].output == 3


async def test_when_guard_skips_and_skip_propagates(pm):
    run = await plait.run(
        wf(
            {"id": "a", "transform": 1, "when": "inputs.go"},
            {"id": "b", "transform": "${steps.a.output}"},
            {"id": "c", "transform": "after", "needs_any": ["a", "d"]},
            {"id": "d", "transform": "d"},
        ),
        {"go": False},
        pm=pm,
    )
    assert run.status == "succeeded"
    assert run.steps["a"].status == "skipped"
    assert run.steps["b"].status == "skipped"
    assert run.steps["c"].status == "succeeded"


async def test_needs_any_all_skipped_skips(pm):
    run = await plait.run(
        wf(
            {"id": "a", "transform": 1, "when": False},
            {"id": "b", "transform": 2, "when": "false"},
            {"id": "c", "transform": 3, "needs_any": ["a", "b"]},
        ),
        pm=pm,
    )
    assert run.steps["c"].status == "skipped"


async def test_condition_skips_untaken_branch(pm):
    run = await plait.run(
        wf(
            {"id": "check", "if": "inputs.n > 3", "then": ["big"], "else": ["small"]},
            {"id": "big", "transform": "big"},
            {"id": "small", "transform": "small"},
        ),
        {"n": 5},
        pm=pm,
    )
    assert run.steps["check"].output is True
    assert run.steps["big"].status == "succeeded"
    assert run.steps["small"].status == "skipped"


@pytest.mark.parametrize(
    "backoff,expected",
    [
        ("fixed", [0.1, 0.1, 0.1]),
        ("linear", [0.1, 0.2, 0.3]),
        ("exponential", [0.1, 0.2, 0.4]),
    ],
)
def test_backoff_delays(backoff, expected):
    policy = RetryPolicy(attempts=4, backoff=backoff, base=0.1, max=10)
    assert [round(policy.delay(n), 6) for n in (1, 2, 3)] == expected


def test_backoff_max_and_jitter():
    import random

    policy = RetryPolicy(attempts=10, backoff="exponential", base=1, max=5, jitter=0.5)
    rng = random.Random(1)
    delays = [policy.delay(n, rng) for n in range(1, 10)]
    assert all(0 <= d <= 5 for d in delays)
    assert max(delays) > 2.5 and len(set(delays)) > 3  # jittered, capped


@pytest.mark.parametrize("backoff", ["fixed", "linear", "exponential"])
async def test_retry_until_success(pm, probe, backoff):
    run = await plait.run(
        wf(
            {
                "id": "f",
                "tool": "probe.fail",
                "with": {"key": backoff, "times": 2, "value": "done"},
                "retry": {"attempts": 3, "backoff": backoff, "base": 0.01},
            }
        ),
        pm=pm,
    )
    assert run.status == "succeeded"
    assert run.steps["f"].output == "done"
    assert run.steps["f"].attempts == 3
    retrying = [e for e in run.events if e.type == "step.retrying"]
    assert [e.data["attempt"] for e in retrying] == [1, 2]


async def test_retry_on_filters_errors(pm, probe):
    run = await plait.run(
        wf(
            {
                "id": "f",
                "tool": "probe.fail",
                "with": {"key": "k", "times": 5},
                "retry": {"attempts": 3, "base": 0.01, "retry_on": ["timeout"]},
            }
        ),
        pm=pm,
    )
    assert run.status == "failed"
    assert probe.count("fail") == 1  # a tool error is not a timeout: no retry


async def test_timeout_per_attempt(pm):
    start = time.monotonic()
    run = await plait.run(
        wf(
            {
                "id": "slow",
                "tool": "probe.work",
                "with": {"seconds": 5},
                "timeout": 0.2,
                "retry": {"attempts": 2, "base": 0.01},
            }
        ),
        pm=pm,
    )
    assert run.status == "failed"
    assert run.steps["slow"].attempts == 2
    assert run.steps["slow"].error["type"] == "timeout"
    assert time.monotonic() - start < 2


async def test_on_error_continue(pm):
    run = await plait.run(
        wf(
            {
                "id": "f",
                "tool": "probe.fail",
                "with": {"key": "c", "times": 9},
                "on_error": "continue",
            },
            {"id": "after", "transform": "${steps.f.status}"},
        ),
        pm=pm,
    )
    assert run.status == "succeeded"
    assert run.steps["f"].status == "failed"
    assert run.steps["after"].output == "failed"


async def test_fallback_runs_only_on_failure_and_dependents_see_it(pm):
    run = await plait.run(
        wf(
            {
                "id": "main",
                "tool": "probe.fail",
                "with": {"key": "m", "times": 9},
                "on_error": "backup",
            },
            {"id": "backup", "transform": "from backup"},
            {"id": "use", "transform": "${steps.main.output}"},
            {"id": "ok", "transform": "fine", "on_error": "spare"},
            {"id": "spare", "transform": "unused"},
            {"id": "use_ok", "transform": "${steps.ok.output}"},
        ),
        pm=pm,
    )
    assert run.status == "succeeded"
    assert run.steps["backup"].status == "succeeded"
    assert run.steps["use"].output == "from backup"
    assert run.steps["spare"].status == "skipped"
    assert run.steps["use_ok"].output == "fine"


async def test_failure_fails_run_and_cancels_the_rest(pm):
    run = await plait.run(
        wf(
            {"id": "f", "tool": "probe.fail", "with": {"key": "x", "times": 9}},
            {"id": "slow", "tool": "probe.work", "with": {"seconds": 5}},
            {"id": "later", "transform": 1, "needs": ["f"]},
        ),
        pm=pm,
    )
    assert run.status == "failed"
    assert run.error["type"] == "tool"
    assert "probe.fail" in run.error["message"]
    assert run.steps["slow"].status == "cancelled"
    assert "later" not in run.steps or run.steps["later"].status != "succeeded"


async def test_cancel_a_run(pm):
    engine = plait.Engine(pm)
    compiled = engine.register(wf({"id": "slow", "tool": "probe.work", "with": {"seconds": 5}}))
    async with engine:
        run = await engine.start(compiled)
        await anyio.sleep(0.1)
        await engine.cancel(run.id)
        with anyio.fail_after(2):
            await run.wait()
    assert run.status == "cancelled"
    assert run.steps["slow"].status == "cancelled"


async def test_pause_holds_new_steps_and_resume_continues(pm):
    engine = plait.Engine(pm)
    compiled = engine.register(
        wf(
            {"id": "a", "tool": "probe.work", "with": {"seconds": 0.2}},
            {"id": "b", "transform": 1, "needs": ["a"]},
        )
    )
    async with engine:
        run = await engine.start(compiled)
        await anyio.sleep(0.05)
        await engine.pause(run.id)
        await anyio.sleep(0.3)
        assert run.status == "paused"
        assert run.steps["a"].status == "succeeded"  # running steps finish
        assert "b" not in run.steps or run.steps["b"].status == "pending"
        await engine.resume(run.id)
        with anyio.fail_after(2):
            await run.wait()
    assert run.status == "succeeded"


async def test_host_wide_concurrency_limit(probe, pm):
    config = HostConfig.model_validate({"limits": {"max_concurrent_steps": 2}})
    steps = [{"id": f"s{i}", "tool": "probe.work", "with": {"seconds": 0.05}} for i in range(8)]
    run = await plait.run(wf(*steps), pm=pm, config=config)
    assert run.status == "succeeded"
    assert probe.peak == 2


async def test_per_tool_concurrency_limit(probe, pm):
    config = HostConfig.model_validate({"tools": {"probe.work": {"max_concurrency": 3}}})
    steps = [{"id": f"s{i}", "tool": "probe.work", "with": {"seconds": 0.05}} for i in range(9)]
    await plait.run(wf(*steps), pm=pm, config=config)
    assert probe.peak == 3


async def test_per_workflow_concurrency_limit(probe, pm):
    steps = [{"id": f"s{i}", "tool": "probe.work", "with": {"seconds": 0.05}} for i in range(6)]
    await plait.run(wf(*steps, concurrency=1), pm=pm)
    assert probe.peak == 1


async def test_per_agent_concurrency_limit(probe):
    class SlowAgent:
        def __init__(self):
            self.name, self.max_concurrency = "slow", None

        async def complete(self, request):
            probe.active += 1
            probe.peak = max(probe.peak, probe.active)
            await anyio.sleep(0.05)
            probe.active -= 1
            return plait.AgentReply(plait.Message(role="assistant", content="ok"))

    class Provider:
        name = "slow"

        def create(self, name, config):
            return SlowAgent()

    plugin = types.SimpleNamespace(
        __name__="slowagents", register_agents=plait.hookimpl(lambda register: register(Provider()))
    )
    pm = create_plugin_manager(entry_points=False, extra=[plugin])
    config = HostConfig.model_validate(
        {"agents": {"bot": {"provider": "slow", "max_concurrency": 2}}}
    )
    steps = [{"id": f"a{i}", "agent": "bot", "prompt": "go"} for i in range(6)]
    run = await plait.run(wf(*steps), pm=pm, config=config)
    assert run.status == "succeeded", run.error
    assert probe.peak == 2


async def test_events_are_numbered_without_gaps(pm):
    run = await plait.run(
        wf(
            {"id": "a", "transform": 1},
            {"id": "b", "transform": "${steps.a.output + 1}"},
        ),
        pm=pm,
    )
    seqs = [e.seq for e in run.events]
    assert seqs == list(range(1, len(seqs) + 1))
    types = [e.type for e in run.events]
    assert types[0] == "run.created" and types[-1] == "run.succeeded"
    assert types.index("step.succeeded") < types.index("run.succeeded")


async def test_stream_yields_every_event_live(pm):
    seen = []
    async for event in plait.stream(wf({"id": "a", "transform": 1}), pm=pm):
        seen.append(event)
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert seen[-1].type == "run.succeeded"


async def test_outputs_and_native_types(pm):
    run = await plait.run(
        wf(
            {"id": "a", "transform": {"n": "${inputs.n}", "s": "${inputs.s}", "l": [1, 2]}},
            outputs={
                "n": "${steps.a.output.n}",
                "s": "${steps.a.output.s}",
                "text": "n=${steps.a.output.n}",
            },
        ),
        {"n": 2, "s": "2"},
        pm=pm,
    )
    assert run.outputs == {"n": 2, "s": "2", "text": "n=2"}


async def test_inputs_are_validated_against_schema(pm):
    definition = wf(
        {"id": "a", "transform": 1},
        inputs={"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
    )
    with pytest.raises(plait.InputsInvalid) as info:
        await plait.run(definition, {"n": "x"}, pm=pm)
    assert "$.n" in str(info.value)


async def test_non_json_tool_result_fails_step(pm):
    run = await plait.run(wf({"id": "b", "tool": "probe.bad"}), pm=pm)
    assert run.status == "failed"
    assert run.steps["b"].error["type"] == "output"
    assert "not JSON" in run.steps["b"].error["message"]


async def test_unknown_tool_is_a_clear_error_at_validation_or_at_the_step(pm):
    # a literal name: refused before anything runs (issue 11: validation catches it)
    with pytest.raises(plait.DefinitionError) as info:
        await plait.run(wf({"id": "b", "tool": "nope.tool"}), pm=pm)
    assert "nope.tool" in str(info.value)
    # a name only known at run time: the step fails, listing what exists
    run = await plait.run(
        {
            "name": "t",
            "inputs": {"type": "object", "properties": {"t": {"type": "string"}}},
            "steps": [{"id": "b", "tool": "${inputs.t}"}],
        },
        {"t": "nope.tool"},
        pm=pm,
    )
    assert run.status == "failed"
    assert "nope.tool" in run.error["message"]
    assert "probe.echo" in run.error["message"]  # lists what exists


async def test_template_error_names_step_field_and_expression(pm):
    run = await plait.run(wf({"id": "t", "transform": "${inputs.missing.deeper}"}), pm=pm)
    assert run.status == "failed"
    message = run.error["message"]
    assert "'t'" in message and "transform" in message and "inputs.missing.deeper" in message


async def test_template_security_error_fails_step_not_host(pm):
    run = await plait.run(wf({"id": "t", "transform": "${ ''.__class__ }"}), pm=pm)
    assert run.status == "failed"
    assert run.error["type"] == "template_security"


async def test_tool_arguments_are_validated_before_the_call(pm, probe):
    run = await plait.run(wf({"id": "a", "tool": "probe.add", "with": {"a": "x", "b": 1}}), pm=pm)
    assert run.status == "failed"
    assert "invalid arguments" in run.error["message"] and "a:" in run.error["message"]
    assert probe.count("add") == 0


async def test_sub_workflow_runs_as_child(pm):
    child = {
        "name": "child",
        "inputs": {"type": "object", "properties": {"x": {}}},
        "steps": [{"id": "double", "transform": "${inputs.x * 2}"}],
        "outputs": {"y": "${steps.double.output}"},
    }
    run = await plait.run(
        wf(
            {"id": "c", "workflow": "child", "inputs": {"x": 21}},
            outputs={"y": "${steps.c.output.y}"},
        ),
        pm=pm,
        workflows=[child],
    )
    assert run.status == "succeeded", run.error
    assert run.outputs == {"y": 42}
    assert any(e.type == "run.child" for e in run.events)


async def test_recursive_sub_workflow_stops_at_depth_limit(pm):
    loop = {"name": "t", "steps": [{"id": "again", "workflow": "t"}]}
    config = HostConfig.model_validate({"limits": {"max_run_depth": 3}})
    run = await plait.run(loop, pm=pm, config=config)
    assert run.status == "failed"
    assert "max_run_depth" in run.error["message"]


async def test_loop_over_with_concurrency(pm, probe):
    run = await plait.run(
        wf(
            {
                "id": "each",
                "loop": "${inputs.items}",
                "concurrency": 2,
                "steps": [
                    {"id": "w", "tool": "probe.work", "with": {"seconds": 0.05, "label": "${item}"}}
                ],
            }
        ),
        {"items": ["a", "b", "c", "d", "e"]},
        pm=pm,
    )
    assert run.status == "succeeded", run.error
    assert run.steps["each"].output == ["a", "b", "c", "d", "e"]
    assert probe.peak == 2
    assert run.steps["each[3].w"].output == "d"


async def test_loop_while_with_max_iterations(pm):
    run = await plait.run(
        wf(
            {
                "id": "count",
                "type": "loop",
                "while": "index < 4",
                "steps": [{"id": "i", "transform": "${index}"}],
            }
        ),
        pm=pm,
    )
    assert run.status == "succeeded", run.error
    assert run.steps["count"].output == [0, 1, 2, 3]
    run = await plait.run(
        wf(
            {
                "id": "forever",
                "type": "loop",
                "while": "true",
                "max_iterations": 3,
                "steps": [{"id": "i", "transform": 1}],
            }
        ),
        pm=pm,
    )
    assert run.status == "failed"
    assert run.error["type"] == "loop_limit"


async def test_loop_body_reads_outer_steps(pm):
    run = await plait.run(
        wf(
            {"id": "base", "transform": 10},
            {
                "id": "each",
                "loop": [1, 2],
                "steps": [{"id": "plus", "transform": "${item + steps.base.output}"}],
            },
        ),
        pm=pm,
    )
    assert run.steps["each"].output == [11, 12]
    assert run.steps["each"].started_at >= run.steps["base"].finished_at


async def test_parallel_all_and_any(pm):
    run = await plait.run(
        wf(
            {
                "id": "p",
                "parallel": {
                    "fast": [
                        {"id": "f", "tool": "probe.work", "with": {"seconds": 0.01, "label": "f"}}
                    ],
                    "slow": [
                        {"id": "s", "tool": "probe.work", "with": {"seconds": 0.2, "label": "s"}}
                    ],
                },
            }
        ),
        pm=pm,
    )
    assert run.steps["p"].output == {"fast": "f", "slow": "s"}
    run = await plait.run(
        wf(
            {
                "id": "p",
                "wait": "any",
                "parallel": {
                    "fast": [
                        {"id": "f", "tool": "probe.work", "with": {"seconds": 0.01, "label": "f"}}
                    ],
                    "slow": [
                        {"id": "s", "tool": "probe.work", "with": {"seconds": 2, "label": "s"}}
                    ],
                },
            }
        ),
        pm=pm,
    )
    assert run.steps["p"].output == {"fast": "f"}
    assert run.steps["p.slow.s"].status == "cancelled" if "p.slow.s" in run.steps else True


async def test_delay_and_wait_signal(pm):
    engine = plait.Engine(pm)
    compiled = engine.register(
        wf(
            {"id": "nap", "delay": 0.1},
            {"id": "approval", "wait": "approve", "within": 5, "needs": ["nap"]},
            outputs={"by": "${steps.approval.output.by}"},
        )
    )
    async with engine:
        run = await engine.start(compiled)
        await anyio.sleep(0.3)
        assert run.steps["approval"].status == "waiting"
        assert run.status == "waiting"
        await engine.signal(run.id, "approve", {"by": "ada"})
        with anyio.fail_after(2):
            await run.wait()
    assert run.status == "succeeded"
    assert run.outputs == {"by": "ada"}


async def test_wait_timeout(pm):
    run = await plait.run(wf({"id": "w", "wait": "never", "within": 0.1}), pm=pm)
    assert run.status == "failed"
    assert run.error["type"] == "signal_timeout"


async def test_validate_lists_every_violation(pm):
    run = await plait.run(
        wf(
            {
                "id": "v",
                "validate": {"a": "x", "b": -1},
                "schema": {
                    "type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"minimum": 0}},
                },
                "assert": ["steps | length > 100"],
            }
        ),
        pm=pm,
    )
    assert run.status == "failed"
    message = run.error["message"]
    assert "$.a" in message and "$.b" in message and "steps | length > 100" in message


async def test_agent_conversation_carries_across_steps(pm):
    config = HostConfig.model_validate(
        {
            "agents": {
                "bot": {
                    "provider": "scripted",
                    "script": [
                        {"call": "probe.add", "args": {"a": 2, "b": 3}},
                        {"say": "sum is {last}"},
                        {"json": {"ok": True}},
                    ],
                }
            }
        }
    )
    run = await plait.run(
        wf(
            {
                "id": "one",
                "agent": "bot",
                "prompt": "add",
                "tools": ["probe.add"],
                "conversation": "c",
            },
            {
                "id": "two",
                "agent": "bot",
                "prompt": "verdict?",
                "conversation": "c",
                "needs": ["one"],
                "output_schema": {"type": "object", "required": ["ok"]},
            },
        ),
        pm=pm,
        config=config,
    )
    assert run.status == "succeeded", run.error
    assert run.steps["one"].output == "sum is 5"
    assert run.steps["two"].output == {"ok": True}
    history = run.conversations["c"]
    assert [m.role for m in history] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
    ]


async def test_cache_hits_emit_step_cached(tmp_path, pm, probe):
    definition = wf({"id": "a", "tool": "probe.add", "with": {"a": 1, "b": 2}, "cache": True})
    first = await plait.run(definition, pm=pm, cache_dir=str(tmp_path / "c"))
    second = await plait.run(definition, pm=pm, cache_dir=str(tmp_path / "c"))
    assert first.steps["a"].output == second.steps["a"].output == 3
    assert probe.count("add") == 1
    assert any(e.type == "step.cached" for e in second.events)
    assert not any(e.type == "step.cached" for e in first.events)


async def test_errors_and_side_effecting_tools_are_not_cached(tmp_path, pm, probe):
    definition = wf(
        {
            "id": "f",
            "tool": "probe.fail",
            "with": {"key": "nc", "times": 1},
            "cache": True,
            "retry": {"attempts": 2, "base": 0.01},
        }
    )
    run = await plait.run(definition, pm=pm, cache_dir=str(tmp_path / "c"))
    assert run.status == "succeeded"
    assert probe.count("fail") == 2  # the failure was not cached


async def test_cache_false_on_step_disables_tool_default(tmp_path, pm, probe):
    definition = wf({"id": "a", "tool": "probe.add", "with": {"a": 1, "b": 1}, "cache": False})
    await plait.run(definition, pm=pm, cache_dir=str(tmp_path / "c"))
    await plait.run(definition, pm=pm, cache_dir=str(tmp_path / "c"))
    assert probe.count("add") == 2


async def test_host_runs_registered_workflow(tmp_path, pm):
    host = plait.Host(data_dir=tmp_path / "data", pm=pm)
    async with host:
        host.register(
            wf(
                {"id": "a", "transform": "${inputs.name | upper}"},
                outputs={"x": "${steps.a.output}"},
            )
        )
        run_id = await host.start_run("t", {"name": "ada"})
        run = await host.wait(run_id)
    assert run.outputs == {"x": "ADA"}
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700


async def test_cache_key_template_and_when(tmp_path, pm, probe):
    def definition(day, use_cache):
        return wf(
            {
                "id": "a",
                "tool": "probe.add",
                "with": {"a": 1, "b": 2},
                "cache": {"key": "${inputs.day}", "when": "inputs.use"},
            }
        )

    cache_dir = str(tmp_path / "c")
    for day in ("mon", "mon", "tue"):
        await plait.run(
            definition(day, True), {"day": day, "use": True}, pm=pm, cache_dir=cache_dir
        )
    assert probe.count("add") == 2  # "mon" hit once; "tue" is another key
    await plait.run(
        definition("mon", False), {"day": "mon", "use": False}, pm=pm, cache_dir=cache_dir
    )
    assert probe.count("add") == 3  # when false: neither looked up nor stored


async def test_cache_ttl_expires(tmp_path, pm, probe):
    definition = wf(
        {"id": "a", "tool": "probe.add", "with": {"a": 5, "b": 5}, "cache": {"ttl": 0.2}}
    )
    cache_dir = str(tmp_path / "c")
    await plait.run(definition, pm=pm, cache_dir=cache_dir)
    await plait.run(definition, pm=pm, cache_dir=cache_dir)
    assert probe.count("add") == 1
    await anyio.sleep(0.4)
    await plait.run(definition, pm=pm, cache_dir=cache_dir)
    assert probe.count("add") == 2


async def test_delay_until_timestamp(pm):
    from datetime import UTC, datetime, timedelta

    until = (datetime.now(UTC) + timedelta(seconds=0.3)).isoformat()
    start = time.monotonic()
    run = await plait.run(wf({"id": "d", "delay": None, "until": until, "type": "delay"}), pm=pm)
    assert run.status == "succeeded", run.error
    assert 0.2 < time.monotonic() - start < 2


async def test_agent_max_turns_and_output_schema_repair(pm):
    config = HostConfig.model_validate(
        {
            "agents": {
                "looper": {
                    "provider": "scripted",
                    "script": [{"call": "probe.echo", "args": {"value": i}} for i in range(5)],
                },
                "fixer": {
                    "provider": "scripted",
                    "script": [{"say": "not json"}, {"json": {"wrong": 1}}, {"json": {"ok": 1}}],
                },
            }
        }
    )
    run = await plait.run(
        wf({"id": "a", "agent": "looper", "prompt": "go", "max_turns": 3, "tools": ["probe.echo"]}),
        pm=pm,
        config=config,
    )
    assert run.status == "failed"
    assert "max_turns" in run.error["message"]
    run = await plait.run(
        wf(
            {
                "id": "a",
                "agent": "fixer",
                "prompt": "go",
                "output_schema": {"type": "object", "required": ["ok"]},
            }
        ),
        pm=pm,
        config=config,
    )
    assert run.status == "succeeded", run.error
    assert run.steps["a"].output == {"ok": 1}


async def test_unknown_agent_is_a_clear_error_at_validation_or_at_the_step(pm):
    with pytest.raises(plait.DefinitionError) as info:
        await plait.run(wf({"id": "a", "agent": "ghost", "prompt": "hi"}), pm=pm)
    assert "ghost" in str(info.value)
    run = await plait.run(
        {
            "name": "t",
            "inputs": {"type": "object", "properties": {"a": {"type": "string"}}},
            "steps": [{"id": "a", "agent": "${inputs.a}", "prompt": "hi"}],
        },
        {"a": "ghost"},
        pm=pm,
    )
    assert run.status == "failed"
    assert "ghost" in run.error["message"]


async def test_memory_mode_forgets_the_longest_finished_runs_beyond_its_bound(pm):
    config = HostConfig.model_validate({"store": {"keep_finished": 2}})
    engine = plait.Engine(pm, config)
    quick = engine.register(wf({"id": "a", "transform": "${inputs.n}"}))
    held = engine.register({"name": "held", "steps": [{"id": "w", "wait": "go"}]})
    async with engine:
        waiting = await engine.start(held, idempotency_key="held-1")
        runs = []
        for n in range(4):
            run = await engine.start(quick, {"n": n}, idempotency_key=f"quick-{n}")
            runs.append(await run.wait())
        for forgotten in runs[:2]:
            with pytest.raises(plait.RunNotFound):
                await engine.load_run(forgotten.id)
        assert [(await engine.load_run(r.id)).steps["a"].output for r in runs[2:]] == [2, 3]
        # unfinished runs always stay
        assert (await engine.load_run(waiting.id)).status == "waiting"
        page = await engine.list_runs()
        assert {r["id"] for r in page.runs} == {waiting.id, runs[2].id, runs[3].id}
        # A forgotten run's idempotency key is free again; a kept one still names its run.
        again = await engine.start(quick, {"n": 0}, idempotency_key="quick-0")
        assert again.id != runs[0].id
        assert (await engine.start(quick, {"n": 3}, idempotency_key="quick-3")).id == runs[3].id
        await engine.cancel(waiting.id)


async def test_an_idempotency_key_reused_with_other_inputs_is_an_error(pm):
    """Issue 11: the same key with other inputs is a mistake, not a repeat of the request."""
    engine = plait.Engine(pm)
    compiled = engine.register(
        {
            "name": "k",
            "inputs": {"type": "object", "properties": {"n": {"type": "integer", "default": 1}}},
            "steps": [{"id": "a", "transform": "${inputs.n}"}],
        }
    )
    async with engine:
        first = await engine.start(compiled, {"n": 1}, idempotency_key="key-1")
        assert (await engine.start(compiled, {}, idempotency_key="key-1")).id == first.id
        with pytest.raises(plait.InputsInvalid) as info:
            await engine.start(compiled, {"n": 2}, idempotency_key="key-1")
        assert "key-1" in str(info.value) and first.id in str(info.value)


async def test_a_loop_in_a_run_with_a_concurrency_limit_leaves_the_slots_to_its_body(pm, probe):
    """The loop step only waits for its body: it holds no slot of the run's limit, so its
    body's steps run (two at a time), where holding one made the first of them fail."""
    run = await plait.run(
        wf(
            {
                "id": "each",
                "loop": ["a", "b", "c", "d"],
                "concurrency": 4,
                "steps": [
                    {"id": "w", "tool": "probe.work", "with": {"seconds": 0.05, "label": "${item}"}}
                ],
            },
            concurrency=2,
        ),
        pm=pm,
    )
    assert run.status == "succeeded", run.error
    assert run.steps["each"].output == ["a", "b", "c", "d"]
    assert probe.peak == 2


async def test_a_run_limited_to_one_step_can_still_loop(pm, probe):
    body = [{"id": "w", "tool": "probe.work", "with": {"seconds": 0.01, "label": "${item}"}}]
    run = await plait.run(
        wf({"id": "each", "loop": ["a", "b"], "steps": body}, concurrency=1), pm=pm
    )
    assert run.status == "succeeded", run.error
    assert probe.peak == 1
