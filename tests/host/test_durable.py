"""Durable runs through the public Host API: run control, restarts, deadlines and versions.

A restart is simulated in-process: leaving a :class:`plait.Host` freezes its store first, so the
next Host opened on the same data dir finds the unfinished runs exactly as a crash would leave
them, and resumes them. Everything runs on real SQLite files under ``tmp_path``.
"""

import sqlite3
import time
import types
import uuid

import anyio
import pytest

import plait
from plait.plugins import StepConfig, StepType, create_plugin_manager, hookimpl

pytestmark = pytest.mark.anyio


# -- helpers ---------------------------------------------------------------------------------


def attempt_of(event):
    """A step.started event's data but the configuration it records (tested on its own)."""
    return {k: v for k, v in event.data.items() if k != "config"}


def open_host(tmp_path, pm, **extra):
    """A Host on ``tmp_path/data`` with no entry-point plugins (extra config sections merged)."""
    config = plait.HostConfig.model_validate(
        {
            "host": {"data_dir": str(tmp_path / "data")},
            "plugins": {"entry_points": False},
            **extra,
        }
    )
    return plait.Host(config, pm=pm)


def fresh_pm(probe, *extra):
    """A new plugin manager for a restarted host: built-ins, the same probe, and ``extra``."""
    return create_plugin_manager(entry_points=False, extra=[probe.plugin(), *extra])


def query(tmp_path, sql, *params):
    """Read the store's SQLite file directly (after the host that wrote it has stopped)."""
    conn = sqlite3.connect(tmp_path / "data" / "plait.db")
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


async def until(check, timeout=5.0):
    """Poll ``check`` (sync or async) until it returns something truthy; return that."""
    with anyio.fail_after(timeout):
        while True:
            result = check()
            if hasattr(result, "__await__"):
                result = await result
            if result:
                return result
            await anyio.sleep(0.01)


async def status_of(host, run_id):
    return (await host.get_run(run_id)).status


async def is_status(host, run_id, status):
    return await status_of(host, run_id) == status


def count(probe, label):
    """How many probe.work calls carried ``label``."""
    return sum(1 for name, args in probe.calls if name == "work" and args["label"] == label)


def started(probe, label):
    return lambda: count(probe, label) > 0


def work(step_id, seconds, label=None, **extra):
    return {
        "id": step_id,
        "tool": "probe.work",
        "with": {"seconds": seconds, "label": label or step_id},
        **extra,
    }


def of_type(events, kind, step=None):
    return [e for e in events if e.type == kind and (step is None or e.step == step)]


def assert_gapless(events):
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def finish(host, run_id, timeout=5.0):
    with anyio.fail_after(timeout):
        return await host.wait(run_id)


class Slow(StepType):
    """A step type that must not simply run again after a restart."""

    key = "slow"
    rerunnable = False
    calls: list[str] = []

    class Config(StepConfig):
        slow: float

    async def run(self, ctx, config):
        Slow.calls.append(ctx.step_id)
        await anyio.sleep(config.slow)
        return "slow done"


def slow_plugin():
    return types.SimpleNamespace(
        __name__="slowplug", register_step_types=hookimpl(lambda register: register(Slow))
    )


class Job(StepType):
    """A rerunnable step that submits a "job" once: its token is kept with ``ctx.checkpoint``."""

    key = "job"
    calls: list[tuple[int, str, str]] = []

    class Config(StepConfig):
        job: float
        fail_first: bool = False

    async def run(self, ctx, config):
        token = await ctx.checkpoint("token", uuid.uuid4().hex)
        Job.calls.append((ctx.attempt, token, ctx.idempotency_key))
        if config.fail_first and ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        await anyio.sleep(config.job)
        return token


class OnceJob(Job):
    """The same, but not safe to run again when interrupted."""

    key = "once_job"
    rerunnable = False

    class Config(StepConfig):
        once_job: float
        fail_first: bool = False

    async def run(self, ctx, config):
        return await Job.run(
            self, ctx, Job.Config(job=config.once_job, fail_first=config.fail_first)
        )


def job_plugin():
    def register_step_types(register):
        register(Job)
        register(OnceJob)

    return types.SimpleNamespace(
        __name__="jobplug", register_step_types=hookimpl(register_step_types)
    )


@pytest.fixture(autouse=True)
def _reset_step_types():
    Slow.calls = []
    Job.calls = []


# -- 1. pause, resume, cancel and signal in every state --------------------------------------


async def test_pause_then_resume_a_running_run(tmp_path, pm, probe):
    async with open_host(tmp_path, pm) as host:
        host.register(
            {
                "name": "pr",
                "steps": [work("a", 0.3), work("b", 0.01, needs=["a"])],
                "outputs": {"b": "${steps.b.output}"},
            }
        )
        run_id = await host.start_run("pr")
        await until(started(probe, "a"))
        paused = await host.engine.pause(run_id)
        assert paused.status == "paused"
        assert (await paused.view())["status"] == "paused"
        await until(lambda: paused.steps["a"].status == "succeeded")  # running steps finish
        await anyio.sleep(0.15)
        assert count(probe, "b") == 0, "a paused run started a new step"
        assert await status_of(host, run_id) == "paused"
        resumed = await host.engine.resume(run_id)
        assert resumed.status == "running"
        run = await finish(host, run_id)
    assert run.status == "succeeded"
    assert run.outputs == {"b": "b"}
    assert count(probe, "a") == count(probe, "b") == 1
    kinds = [e.type for e in run.events if e.type.startswith("run.")]
    assert kinds.index("run.paused") < kinds.index("run.resumed") < kinds.index("run.succeeded")


async def test_cancel_a_running_run(tmp_path, pm, probe):
    async with open_host(tmp_path, pm) as host:
        host.register({"name": "long", "steps": [work("a", 5), work("b", 0.01, needs=["a"])]})
        run_id = await host.start_run("long")
        await until(started(probe, "a"))
        start = time.monotonic()
        run = await host.engine.cancel(run_id)
        assert time.monotonic() - start < 2
        assert run.status == "cancelled"
        run = await finish(host, run_id)
        assert run.steps["a"].status == "cancelled"
        stored = await host.get_run(run_id)
    assert count(probe, "b") == 0
    assert stored.status == "cancelled"
    assert stored.error["type"] == "cancelled"


async def test_paused_run_can_be_cancelled_but_not_paused_again(tmp_path, pm, probe):
    async with open_host(tmp_path, pm) as host:
        host.register({"name": "pc", "steps": [work("a", 0.2), work("b", 0.01, needs=["a"])]})
        run_id = await host.start_run("pc")
        await until(started(probe, "a"))
        await host.engine.pause(run_id)
        with pytest.raises(plait.InvalidRunState) as info:
            await host.engine.pause(run_id)
        assert info.value.status == "paused"
        await anyio.sleep(0.3)  # a finishes; b is held by the pause
        run = await host.engine.cancel(run_id)
        run = await finish(host, run_id)
    assert run.status == "cancelled"
    assert run.steps["a"].status == "succeeded"
    assert count(probe, "b") == 0


async def test_waiting_run_pause_resume_then_signal(tmp_path, pm):
    async with open_host(tmp_path, pm) as host:
        host.register(
            {
                "name": "w",
                "steps": [{"id": "w", "wait": "go"}],
                "outputs": {"got": "${steps.w.output}"},
            }
        )
        run_id = await host.start_run("w")
        await until(lambda: is_status(host, run_id, "waiting"))
        with pytest.raises(plait.InvalidRunState) as info:
            await host.engine.resume(run_id)
        assert info.value.status == "waiting"
        assert (await host.engine.pause(run_id)).status == "paused"
        assert await status_of(host, run_id) == "paused"
        resumed = await host.engine.resume(run_id)
        assert resumed.status == "waiting", "a resumed run whose step waits is waiting again"
        await host.engine.signal(run_id, "go", {"ok": 1})
        run = await finish(host, run_id)
        events = await host.events(run_id)  # run.events is empty once read back
    assert run.status == "succeeded"
    assert run.outputs == {"got": {"ok": 1}}
    kinds = [e.type for e in events if e.type.startswith("run.")]
    assert kinds == [
        "run.created",
        "run.started",
        "run.waiting",
        "run.paused",
        "run.waiting",
        "run.signal",
        "run.resumed",
        "run.succeeded",
    ]


async def finished_run(host, probe, status):
    """A run of workflow ``fin`` that ended with ``status``."""
    if status == "succeeded":
        run_id = await host.start_run("fin", {"fail": False})
    elif status == "failed":
        run_id = await host.start_run("fin", {"fail": True})
    else:
        run_id = await host.start_run("fin", {"fail": False, "seconds": 5})
        await until(lambda: probe.count("work") > 0)
        await host.engine.cancel(run_id)
    run = await finish(host, run_id)
    assert run.status == status
    return run_id


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
async def test_finished_runs_refuse_every_control(tmp_path, pm, probe, status):
    async with open_host(tmp_path, pm) as host:
        host.register(
            {
                "name": "fin",
                "steps": [
                    {
                        "id": "f",
                        "tool": "probe.fail",
                        "with": {"key": "${run.id}", "times": "${1 if inputs.fail else 0}"},
                    },
                    {
                        "id": "t",
                        "tool": "probe.work",
                        "needs": ["f"],
                        "with": {"seconds": "${inputs.seconds | default(0)}", "label": "t"},
                    },
                ],
            }
        )
        run_id = await finished_run(host, probe, status)
        calls = len(probe.calls)
        for action, args in (("pause", ()), ("resume", ()), ("cancel", ()), ("signal", ("go", 1))):
            with pytest.raises(plait.InvalidRunState) as info:
                await getattr(host.engine, action)(run_id, *args)
            assert info.value.status == status, action
            assert info.value.run_id == run_id
            assert status in str(info.value) and action in str(info.value)
        assert (await host.get_run(run_id)).status == status
        assert len(probe.calls) == calls, "a refused control ran something"


async def test_unknown_run_id_raises_run_not_found(tmp_path, pm):
    async with open_host(tmp_path, pm) as host:
        engine = host.engine
        for call in (
            lambda: engine.pause("nope"),
            lambda: engine.resume("nope"),
            lambda: engine.cancel("nope"),
            lambda: engine.signal("nope", "go", 1),
            lambda: host.get_run("nope"),
            lambda: engine.events("nope"),
        ):
            with pytest.raises(plait.RunNotFound) as info:
                await call()
            assert info.value.run_id == "nope"


# -- 2. paused, waiting and signalled runs across a restart ------------------------------------


async def test_paused_run_stays_paused_across_restart(tmp_path, pm, probe):
    definition = {
        "name": "pp",
        "steps": [work("a", 0.3), work("b", 0.01, needs=["a"])],
        "outputs": {"b": "${steps.b.output}"},
    }
    async with open_host(tmp_path, pm) as host:
        host.register(definition)
        run_id = await host.start_run("pp")
        await until(started(probe, "a"))
        run = await host.engine.pause(run_id)
        await until(lambda: run.steps["a"].status == "succeeded")
        await run.committed()
    async with open_host(tmp_path, fresh_pm(probe)) as host:
        assert [(r.id, r.status) for r in host.recovered] == [(run_id, "paused")]
        await anyio.sleep(0.3)
        assert count(probe, "b") == 0, "a paused run started a step after the restart"
        assert await status_of(host, run_id) == "paused"
        assert (await host.engine.resume(run_id)).status == "running"
        run = await finish(host, run_id)
        events = await host.engine.events(run_id)
    assert run.status == "succeeded"
    assert run.outputs == {"b": "b"}
    assert count(probe, "a") == 1 and count(probe, "b") == 1
    assert_gapless(events)
    recovered = of_type(events, "run.recovered")
    # a clean stop: the restart is not one after a crash
    assert [e.data for e in recovered] == [{"status": "paused", "interrupted": [], "crash": False}]


async def test_waiting_run_keeps_waiting_across_restart(tmp_path, pm, probe):
    async with open_host(tmp_path, pm) as host:
        host.register(
            {
                "name": "ww",
                "steps": [
                    {"id": "w", "wait": "go"},
                    {"id": "e", "tool": "probe.echo", "with": {"value": "${steps.w.output.n}"}},
                ],
                "outputs": {"n": "${steps.e.output}"},
            }
        )
        run_id = await host.start_run("ww")
        await until(lambda: is_status(host, run_id, "waiting"))
        await host.engine.committed()
    async with open_host(tmp_path, fresh_pm(probe)) as host:
        assert [(r.id, r.status) for r in host.recovered] == [(run_id, "waiting")]
        await anyio.sleep(0.2)
        assert await status_of(host, run_id) == "waiting"
        assert (await host.get_run(run_id)).steps["w"].status == "waiting"
        assert probe.count("echo") == 0
        await host.engine.signal(run_id, "go", {"n": 42})
        run = await finish(host, run_id)
        events = await host.engine.events(run_id)
    assert run.status == "succeeded"
    assert run.outputs == {"n": 42}
    assert probe.calls == [("echo", {"value": 42})]
    assert_gapless(events)


async def paused_waiting_run(tmp_path, pm):
    """Start a run whose only step waits for ``go``, pause it, stop the host; its id."""
    async with open_host(tmp_path, pm) as host:
        host.register(
            {
                "name": "pw",
                "steps": [{"id": "w", "wait": "go"}],
                "outputs": {"got": "${steps.w.output}"},
            }
        )
        run_id = await host.start_run("pw")
        await until(lambda: is_status(host, run_id, "waiting"))
        await host.engine.pause(run_id)
        await host.engine.committed()
    return run_id


def run_kinds_after_restart(events):
    kinds = [e.type for e in events if e.type.startswith("run.")]
    return kinds[kinds.index("run.recovered") :]


async def test_paused_waiting_run_resumes_to_waiting_after_restart(tmp_path, pm, probe):
    run_id = await paused_waiting_run(tmp_path, pm)
    async with open_host(tmp_path, fresh_pm(probe)) as host:
        assert [(r.id, r.status) for r in host.recovered] == [(run_id, "paused")]
        await anyio.sleep(0.2)  # the recovered run settles: still paused, its step waiting
        run = await host.get_run(run_id)
        assert (run.status, run.steps["w"].status) == ("paused", "waiting")
        reply = await (await host.engine.resume(run_id)).view()  # what runs/resume answers
        assert reply["status"] == "waiting"
        await host.engine.signal(run_id, "go", 7)
        run = await finish(host, run_id)
        events = await host.engine.events(run_id)
    assert run.outputs == {"got": 7}
    assert run_kinds_after_restart(events) == [
        "run.recovered",
        "run.waiting",
        "run.signal",
        "run.resumed",
        "run.succeeded",
    ]
    assert_gapless(events)


async def test_resume_right_after_restart_returns_a_waiting_run_to_waiting(tmp_path, pm, probe):
    run_id = await paused_waiting_run(tmp_path, pm)
    async with open_host(tmp_path, fresh_pm(probe)) as host:
        assert (await host.get_run(run_id)).steps["w"].status == "waiting"
        reply = await (await host.engine.resume(run_id)).view()  # at once after the start
        await host.engine.signal(run_id, "go", 7)
        run = await finish(host, run_id)
        events = await host.engine.events(run_id)
    assert run.outputs == {"got": 7}  # this part holds today
    assert reply["status"] == "waiting", "resuming a paused waiting run must return it to waiting"
    assert run_kinds_after_restart(events)[:3] == ["run.recovered", "run.waiting", "run.signal"]


async def test_paused_run_in_flight_step_carries_on_after_restart(tmp_path, pm, probe):
    async with open_host(tmp_path, pm) as host:
        host.register({"name": "held", "steps": [work("a", 0.4), work("b", 0.01, needs=["a"])]})
        run_id = await host.start_run("held")
        await until(started(probe, "a"))
        await host.engine.pause(run_id)  # a is still running when the host stops
        await host.engine.committed()
    async with open_host(tmp_path, fresh_pm(probe)) as host:
        assert [(r.id, r.status) for r in host.recovered] == [(run_id, "paused")]
        run = await host.get_run(run_id)
        await until(lambda: run.steps["a"].status == "succeeded")  # not new: not held
        await anyio.sleep(0.15)
        assert count(probe, "b") == 0, "a paused run started a new step after the restart"
        assert await status_of(host, run_id) == "paused"
        await host.engine.cancel(run_id)
        run = await finish(host, run_id)
        events = await host.engine.events(run_id)
    assert run.status == "cancelled"
    assert run.steps["a"].status == "succeeded" and run.steps["a"].output == "a"
    assert count(probe, "a") == 2 and count(probe, "b") == 0
    assert [attempt_of(e) for e in of_type(events, "step.started", "a")] == [
        {"attempt": 1},
        {"attempt": 1, "recovered": True},
    ]
    assert [e.data for e in of_type(events, "run.recovered")] == [
        {"status": "paused", "interrupted": ["a"], "crash": False}
    ]
    assert not of_type(events, "step.started", "b"), "a cancelled run recorded a start of b"
    assert run.steps["b"].status == "cancelled"  # the rest, never started, are cancelled
    assert_gapless(events)


async def test_signal_sent_before_the_wait_is_kept_across_restart(tmp_path, pm, probe):
    async with open_host(tmp_path, pm) as host:
        host.register(
            {
                "name": "early",
                "steps": [
                    {"id": "d", "delay": 0.6},
                    {"id": "w", "wait": "go", "needs": ["d"]},
                ],
                "outputs": {"got": "${steps.w.output}"},
            }
        )
        run_id = await host.start_run("early")
        run = await host.get_run(run_id)
        await until(lambda: run.steps.get("d") and run.steps["d"].status == "running")
        await host.engine.signal(run_id, "go", {"early": True})
        assert run.status == "running"  # nothing waits yet: the signal is queued
        assert "w" not in run.steps or run.steps["w"].status == "pending"
    async with open_host(tmp_path, fresh_pm(probe)) as host:
        run = await finish(host, run_id)
        events = await host.engine.events(run_id)
    assert run.status == "succeeded"
    assert run.outputs == {"got": {"early": True}}
    assert len(of_type(events, "run.signal")) == 1
    assert len(of_type(events, "signal.taken", "w")) == 1
    assert_gapless(events)


# -- 3 and 4. deadlines that pass while the host is down ---------------------------------------


async def test_wait_deadline_is_kept_across_restart(tmp_path, pm, probe):
    async with open_host(tmp_path, pm) as host:
        host.register(
            {
                "name": "dl",
                "steps": [
                    {"id": "w", "wait": "go", "within": 1.0, "default": {"timed_out": True}},
                ],
                "outputs": {"got": "${steps.w.output}"},
            }
        )
        begun = time.monotonic()
        run_id = await host.start_run("dl")
        await until(lambda: is_status(host, run_id, "waiting"))
        await anyio.sleep(max(0.0, 0.2 - (time.monotonic() - begun)))
    await anyio.sleep(1.2)  # the host is down past the deadline
    async with open_host(tmp_path, fresh_pm(probe)) as host:
        restarted = time.monotonic()
        run = await finish(host, run_id)
        elapsed = time.monotonic() - restarted
        events = await host.engine.events(run_id)
    assert run.status == "succeeded"
    assert run.outputs == {"got": {"timed_out": True}}
    assert elapsed < 0.5, f"the wait restarted its deadline: {elapsed:.2f} s after restart"
    assert len(of_type(events, "step.checkpoint", "w")) == 1  # the deadline recorded once
    assert_gapless(events)


async def test_delay_deadline_passed_while_down(tmp_path, pm, probe):
    async with open_host(tmp_path, pm) as host:
        host.register(
            {
                "name": "dd",
                "steps": [{"id": "d", "delay": 1.0}],
                "outputs": {"d": "${steps.d.output}"},
            }
        )
        begun = time.monotonic()
        run_id = await host.start_run("dd")
        run = await host.get_run(run_id)
        await until(lambda: of_type(run.events[: run.published], "delay.scheduled"))
        await anyio.sleep(max(0.0, 0.2 - (time.monotonic() - begun)))
    await anyio.sleep(1.1)
    async with open_host(tmp_path, fresh_pm(probe)) as host:
        restarted = time.monotonic()
        run = await finish(host, run_id)
        elapsed = time.monotonic() - restarted
        events = await host.engine.events(run_id)
    assert run.status == "succeeded"
    assert elapsed < 0.5, f"a passed delay deadline still slept {elapsed:.2f} s"
    assert run.steps["d"].output is None
    assert run.outputs == {"d": None}
    scheduled = of_type(events, "delay.scheduled", "d")
    assert len(scheduled) == 2
    assert scheduled[0].data["until"] == scheduled[1].data["until"]
    assert scheduled[0].data["until"] < time.time()
    assert_gapless(events)


# -- 5. committed steps are never run again --------------------------------------------------


async def test_committed_steps_are_not_rerun(tmp_path, pm, probe):
    async with open_host(tmp_path, pm) as host:
        host.register(
            {
                "name": "chain",
                "steps": [
                    work("s1", 0.3, "one"),
                    work("s2", 0.3, "two", needs=["s1"]),
                    work("s3", 0.3, "three", needs=["s2"]),
                    work("s4", 0.3, "four", needs=["s3"]),
                ],
                "outputs": {
                    "all": "${[steps.s1.output, steps.s2.output, steps.s3.output, steps.s4.output]}"
                },
            }
        )
        run_id = await host.start_run("chain")
        await until(started(probe, "two"))
        await anyio.sleep(0.1)  # in the middle of s2
    assert count(probe, "one") == 1 and count(probe, "two") == 1
    async with open_host(tmp_path, fresh_pm(probe)) as host:
        assert [r.id for r in host.recovered] == [run_id]
        run = await finish(host, run_id)
        events = await host.engine.events(run_id)
    assert run.status == "succeeded"
    assert run.outputs == {"all": ["one", "two", "three", "four"]}
    assert [count(probe, x) for x in ("one", "two", "three", "four")] == [1, 2, 1, 1]
    assert {p: run.steps[p].output for p in ("s1", "s2", "s3", "s4")} == {
        "s1": "one",
        "s2": "two",
        "s3": "three",
        "s4": "four",
    }
    assert run.steps["s2"].attempts == 1
    s2 = of_type(events, "step.started", "s2")
    assert [attempt_of(e) for e in s2] == [{"attempt": 1}, {"attempt": 1, "recovered": True}]
    assert len(of_type(events, "step.started", "s1")) == 1
    assert len(of_type(events, "step.succeeded", "s1")) == 1
    assert [e.data for e in of_type(events, "run.recovered")] == [
        {"status": "running", "interrupted": ["s2"], "crash": False}
    ]
    assert_gapless(events)


async def test_finished_loop_iterations_are_not_rerun(tmp_path, pm, probe):
    async with open_host(tmp_path, pm) as host:
        host.register(
            {
                "name": "lp",
                "steps": [
                    {
                        "id": "l",
                        "loop": "${range(5) | list}",
                        "steps": [work("x", 0.25, "it${index}")],
                        "output": "${steps.x.output}",
                    }
                ],
                "outputs": {"l": "${steps.l.output}"},
            }
        )
        run_id = await host.start_run("lp")
        await until(started(probe, "it2"))
        await anyio.sleep(0.05)
    assert [count(probe, f"it{i}") for i in range(5)] == [1, 1, 1, 0, 0]
    async with open_host(tmp_path, fresh_pm(probe)) as host:
        run = await finish(host, run_id)
        events = await host.engine.events(run_id)
    assert run.status == "succeeded"
    assert run.outputs == {"l": ["it0", "it1", "it2", "it3", "it4"]}
    assert [count(probe, f"it{i}") for i in range(5)] == [1, 1, 2, 1, 1]
    assert run.steps["l[2].x"].attempts == 1
    assert len(of_type(events, "step.started", "l[0].x")) == 1
    assert [e.data for e in of_type(events, "run.recovered")] == [
        {"status": "running", "interrupted": ["l", "l[2].x"], "crash": False}
    ]
    assert_gapless(events)


async def test_settled_branch_choice_is_replayed(tmp_path, pm, probe):
    async with open_host(tmp_path, pm) as host:
        host.register(
            {
                "name": "br",
                "steps": [
                    {"id": "check", "if": "inputs.n > 3", "then": ["big"], "else": ["small"]},
                    work("big", 0.4),
                    work("small", 0.01),
                    work("after", 0.01, needs_any=["big", "small"]),
                ],
            }
        )
        run_id = await host.start_run("br", {"n": 5})
        await until(started(probe, "big"))
        await anyio.sleep(0.1)
    async with open_host(tmp_path, fresh_pm(probe)) as host:
        run = await finish(host, run_id)
        events = await host.engine.events(run_id)
    assert run.status == "succeeded"
    assert {p: s.status for p, s in run.steps.items()} == {
        "check": "succeeded",
        "big": "succeeded",
        "small": "skipped",
        "after": "succeeded",
    }
    assert [count(probe, x) for x in ("big", "small", "after")] == [2, 0, 1]
    assert len(of_type(events, "step.succeeded", "check")) == 1
    assert len(of_type(events, "step.skipped", "small")) == 1
    assert_gapless(events)


async def test_retry_waiting_for_its_backoff_resumes_with_the_next_attempt(tmp_path, pm, probe):
    async with open_host(tmp_path, pm) as host:
        host.register(
            {
                "name": "rt",
                "steps": [
                    {
                        "id": "f",
                        "tool": "probe.fail",
                        "with": {"key": "k", "times": 1, "value": "ok"},
                        "retry": {"attempts": 3, "backoff": "fixed", "base": 1.0},
                    }
                ],
            }
        )
        run_id = await host.start_run("rt")
        run = await host.get_run(run_id)
        await until(lambda: of_type(run.events[: run.published], "step.retrying"))
    async with open_host(tmp_path, fresh_pm(probe)) as host:
        run = await finish(host, run_id)
        events = await host.engine.events(run_id)
    assert run.status == "succeeded"
    assert run.steps["f"].output == "ok"
    assert run.steps["f"].attempts == 2
    assert probe.count("fail") == 2, "the failed attempt was repeated instead of retried"
    assert [attempt_of(e) for e in of_type(events, "step.started", "f")] == [
        {"attempt": 1},
        {"attempt": 2, "recovered": True},
    ]
    (retrying,) = of_type(events, "step.retrying", "f")
    second = of_type(events, "step.started", "f")[1]
    assert second.ts >= retrying.ts + retrying.data["delay"] - 0.01, "the backoff was cut short"
    assert_gapless(events)


async def test_checkpoint_keeps_the_first_value_across_restart(tmp_path, probe):
    async with open_host(tmp_path, fresh_pm(probe, job_plugin())) as host:
        host.register(
            {
                "name": "cp",
                "steps": [{"id": "j", "job": 0.6}],
                "outputs": {"token": "${steps.j.output}"},
            }
        )
        run_id = await host.start_run("cp")
        await until(lambda: Job.calls)
        await anyio.sleep(0.1)
    async with open_host(tmp_path, fresh_pm(probe, job_plugin())) as host:
        run = await finish(host, run_id)
        events = await host.engine.events(run_id)
    assert run.status == "succeeded"
    (a1, token1, key1), (a2, token2, key2) = Job.calls
    assert (a1, a2) == (1, 1)
    assert token1 == token2, "the checkpoint was not kept across the restart"
    assert key1 == key2 == f"{run_id}/j"
    assert run.outputs == {"token": token1}
    assert [e.data for e in of_type(events, "step.checkpoint", "j")] == [
        {"key": "token", "value": token1}
    ]


# -- 6 and 7. step types that cannot simply run again, or are gone ----------------------------


async def test_non_rerunnable_step_is_interrupted(tmp_path, probe):
    async with open_host(tmp_path, fresh_pm(probe, slow_plugin())) as host:
        host.register(
            {"name": "nr", "steps": [{"id": "s", "slow": 1.0}, work("after", 0.01, needs=["s"])]}
        )
        run_id = await host.start_run("nr")
        await until(lambda: Slow.calls)
        await anyio.sleep(0.1)
    async with open_host(tmp_path, fresh_pm(probe, slow_plugin())) as host:
        run = await finish(host, run_id)
        events = await host.engine.events(run_id)
    assert Slow.calls == ["s"], "a rerunnable=False step ran again"
    assert run.status == "failed"
    assert run.error["type"] == "interrupted"
    assert "'s'" in run.error["message"] and "rerunnable" in run.error["message"]
    assert run.steps["s"].status == "failed"
    assert run.steps["s"].error["type"] == "interrupted"
    assert count(probe, "after") == 0
    assert [e.data for e in of_type(events, "step.interrupted", "s")] == [{"attempt": 1}]
    assert_gapless(events)


async def test_interrupted_step_falls_back(tmp_path, probe):
    async with open_host(tmp_path, fresh_pm(probe, slow_plugin())) as host:
        host.register(
            {
                "name": "fb",
                "steps": [
                    {"id": "s", "slow": 1.0, "on_error": "plan_b"},
                    {"id": "plan_b", "transform": "fallback"},
                    {"id": "use", "transform": "${steps.s.output}", "needs": ["s"]},
                ],
                "outputs": {"used": "${steps.use.output}"},
            }
        )
        run_id = await host.start_run("fb")
        await until(lambda: Slow.calls)
        await anyio.sleep(0.1)
    async with open_host(tmp_path, fresh_pm(probe, slow_plugin())) as host:
        run = await finish(host, run_id)
        events = await host.engine.events(run_id)
    assert Slow.calls == ["s"]
    assert run.status == "succeeded", run.error
    assert run.steps["s"].status == "failed"
    assert run.steps["s"].error["type"] == "interrupted"
    assert run.steps["plan_b"].status == "succeeded"
    assert run.outputs == {"used": "fallback"}
    assert len(of_type(events, "step.interrupted", "s")) == 1
    assert_gapless(events)


async def test_non_rerunnable_step_between_attempts_is_not_interrupted(tmp_path, probe):
    """Stopped during a retry's backoff, nothing of the step was in flight: it just retries
    (after the rest of the backoff)."""
    async with open_host(tmp_path, fresh_pm(probe, job_plugin())) as host:
        host.register(
            {
                "name": "bo",
                "steps": [
                    {
                        "id": "j",
                        "once_job": 0.01,
                        "fail_first": True,
                        "retry": {"attempts": 2, "backoff": "fixed", "base": 1.0},
                    }
                ],
            }
        )
        run_id = await host.start_run("bo")
        run = await host.get_run(run_id)
        await until(lambda: of_type(run.events[: run.published], "step.retrying"))
    async with open_host(tmp_path, fresh_pm(probe, job_plugin())) as host:
        run = await finish(host, run_id)
        events = await host.engine.events(run_id)
    assert run.status == "succeeded", run.error
    assert [attempt for attempt, _, _ in Job.calls] == [1, 2]
    assert Job.calls[0][1] != Job.calls[1][1], "a new attempt must start without checkpoints"
    assert run.steps["j"].output == Job.calls[1][1]
    assert of_type(events, "step.interrupted") == []
    assert [e.data for e in of_type(events, "run.recovered")] == [
        {"status": "running", "interrupted": ["j"], "crash": False}
    ]


async def test_missing_step_type_after_restart_fails_the_run(tmp_path, probe):
    async with open_host(tmp_path, fresh_pm(probe, slow_plugin())) as host:
        host.register({"name": "gone", "steps": [{"id": "s", "slow": 1.0}]})
        run_id = await host.start_run("gone")
        await until(lambda: Slow.calls)
    async with open_host(tmp_path, fresh_pm(probe)) as host:
        assert [r.id for r in host.recovered] == [run_id]
        assert host.recovered[0].status == "failed"
        run = await finish(host, run_id)
        stored = await host.get_run(run_id)
        events = await host.engine.events(run_id)
    for seen in (run, stored):
        assert seen.status == "failed"
        assert seen.error["type"] == "definition"
        assert "unknown step type" in seen.error["message"]
        assert "slow" in seen.error["message"]
    assert Slow.calls == ["s"]
    assert events[-1].type == "run.failed"
    assert_gapless(events)


# -- 8. sub-workflows ------------------------------------------------------------------------


async def test_sub_workflow_continues_the_same_child_after_restart(tmp_path, pm, probe):
    async with open_host(tmp_path, pm) as host:
        host.register(
            {
                "name": "child",
                "steps": [
                    {"id": "d", "delay": 1.0},
                    {"id": "r", "transform": "${inputs.x * 2}", "needs": ["d"]},
                ],
                "outputs": {"y": "${steps.r.output}"},
            }
        )
        host.register(
            {
                "name": "parent",
                "steps": [
                    {"id": "c", "workflow": "child", "inputs": {"x": "${inputs.x}"}},
                ],
                "outputs": {"y": "${steps.c.output.y}"},
            }
        )
        run_id = await host.start_run("parent", {"x": 21})
        parent = await host.get_run(run_id)
        await until(lambda: of_type(parent.events[: parent.published], "run.child"))
        await anyio.sleep(0.2)
    children = query(tmp_path, "SELECT id, status FROM runs WHERE parent_id = ?", run_id)
    assert len(children) == 1 and children[0][1] in ("running", "pending")
    async with open_host(tmp_path, fresh_pm(probe)) as host:
        assert [r.id for r in host.recovered] == [run_id]  # the child resumes via its parent
        restarted = time.monotonic()
        run = await finish(host, run_id)
        elapsed = time.monotonic() - restarted
        events = await host.engine.events(run_id)
        child = await host.get_run(children[0][0])
        child_events = await host.engine.events(child.id)
    assert run.status == "succeeded", run.error
    assert run.outputs == {"y": 42}
    assert run.steps["c"].output == {"y": 42}
    assert elapsed < 0.95, "the child's delay started over"
    assert child.status == "succeeded" and child.outputs == {"y": 42}
    assert child.parent_id == run_id
    assert query(tmp_path, "SELECT count(*) FROM runs WHERE parent_id = ?", run_id) == [(1,)]
    assert len(of_type(events, "run.child", "c")) == 1
    assert of_type(events, "run.child", "c")[0].data["child"] == child.id
    assert_gapless(events)
    assert_gapless(child_events)
    assert [e.data for e in of_type(child_events, "run.recovered")] == [
        {"status": "running", "interrupted": ["d"], "crash": False}
    ]


# -- 9. conversations ------------------------------------------------------------------------


async def test_conversation_history_survives_restart(tmp_path, pm, probe):
    agents = {
        "agents": {
            "bot": {"provider": "scripted", "script": [{"say": "one"}, {"say": "two: {last}"}]}
        }
    }
    async with open_host(tmp_path, pm, **agents) as host:
        host.register(
            {
                "name": "chat",
                "steps": [
                    {"id": "g1", "agent": "bot", "prompt": "hello", "conversation": "c1"},
                    {"id": "d", "delay": 0.6, "needs": ["g1"]},
                    {
                        "id": "g2",
                        "agent": "bot",
                        "prompt": "again",
                        "conversation": "c1",
                        "needs": ["d"],
                    },
                ],
                "outputs": {"first": "${steps.g1.output}", "second": "${steps.g2.output}"},
            }
        )
        run_id = await host.start_run("chat")
        run = await host.get_run(run_id)
        await until(lambda: of_type(run.events[: run.published], "delay.scheduled"))
    async with open_host(tmp_path, fresh_pm(probe), **agents) as host:
        run = await finish(host, run_id)
        events = await host.engine.events(run_id)
    assert run.status == "succeeded", run.error
    assert run.outputs == {"first": "one", "second": "two: again"}
    history = [(m.role, m.content) for m in run.conversations["c1"]]
    assert history == [
        ("user", "hello"),
        ("assistant", "one"),
        ("user", "again"),
        ("assistant", "two: again"),
    ]
    stored = query(
        tmp_path,
        "SELECT idx, message FROM conversations WHERE run_id = ? AND name = 'c1' ORDER BY idx",
        run_id,
    )
    assert [idx for idx, _ in stored] == [0, 1, 2, 3]
    assert '"two: again"' in stored[3][1]
    assert len(of_type(events, "agent.message", "g1")) == 1  # g1 was not asked again
    assert_gapless(events)


# -- 10. workflow versions -------------------------------------------------------------------


def versioned(text):
    return {
        "name": "ver",
        "steps": [{"id": "a", "transform": text}],
        "outputs": {"text": "${steps.a.output}"},
    }


async def test_versions_identical_content_and_rollback_survive_restart(tmp_path, pm, probe):
    async with open_host(tmp_path, pm) as host:
        catalog = host.engine.catalog
        assert host.register(versioned("v1")).version == 1
        assert host.register(versioned("v2")).version == 2
        assert host.register(versioned("v1")).version == 1  # same content: same version
        await host.engine.committed()
        listed = catalog.versions("ver")
        assert [(v["version"], v["current"]) for v in listed] == [(1, True), (2, False)]
        assert all(isinstance(v["created_at"], float) for v in listed)
        assert listed[0]["created_at"] <= listed[1]["created_at"]
        assert catalog.rollback("ver", 2).version == 2
        assert [v["current"] for v in catalog.versions("ver")] == [False, True]
        with pytest.raises(plait.WorkflowNotFound):
            catalog.rollback("ver", 3)
        await host.engine.committed()
    assert query(tmp_path, "SELECT count(*) FROM workflow_versions WHERE name = 'ver'") == [(2,)]
    async with open_host(tmp_path, fresh_pm(probe)) as host:
        catalog = host.engine.catalog
        after = catalog.versions("ver")
        assert after == [{**listed[0], "current": False}, {**listed[1], "current": True}]
        assert catalog.get("ver").version == 2
        old = await finish(host, await host.start_run("ver", version=1))
        new = await finish(host, await host.start_run("ver"))
        assert host.register(versioned("v2")).version == 2
        assert host.register(versioned("v3")).version == 3
    assert (old.version, old.outputs) == (1, {"text": "v1"})
    assert (new.version, new.outputs) == (2, {"text": "v2"})


async def test_run_keeps_its_version_after_update_delete_and_restart(tmp_path, pm, probe):
    def definition(which):
        return {
            "name": "pin",
            "steps": [work("a", 0.3, "a"), {"id": "b", "transform": which, "needs": ["a"]}],
            "outputs": {"which": "${steps.b.output}"},
        }

    async with open_host(tmp_path, pm) as host:
        assert host.register(definition("from-v1")).version == 1
        run_id = await host.start_run("pin")
        await until(started(probe, "a"))
        run = await host.engine.pause(run_id)
        await until(lambda: run.steps["a"].status == "succeeded")
        assert host.register(definition("from-v2")).version == 2
        host.engine.catalog.remove("pin")
        await host.engine.committed()
    async with open_host(tmp_path, fresh_pm(probe)) as host:
        assert "pin" not in host.engine.catalog
        with pytest.raises(plait.WorkflowNotFound):
            await host.start_run("pin")
        assert [(r.id, r.status) for r in host.recovered] == [(run_id, "paused")]
        await host.engine.resume(run_id)
        run = await finish(host, run_id)
    assert run.status == "succeeded", run.error
    assert run.version == 1
    assert run.outputs == {"which": "from-v1"}
    assert count(probe, "a") == 1


# -- 11 and 12. idempotency keys -------------------------------------------------------------


async def test_idempotency_key_returns_the_same_run(tmp_path, pm, probe):
    async with open_host(tmp_path, pm) as host:
        host.register(
            {"name": "once", "steps": [work("a", 0.6, "a")], "outputs": {"a": "${steps.a.output}"}}
        )
        ids = []

        async def start():
            ids.append(await host.start_run("once", idempotency_key="k1"))

        async with anyio.create_task_group() as tg:  # concurrent starts with one key
            for _ in range(4):
                tg.start_soon(start)
        first = ids[0]
        assert ids == [first] * 4
        assert await host.start_run("once", idempotency_key="k1") == first
        await until(started(probe, "a"))
        assert await host.start_run("once", idempotency_key="k1") == first  # still running
        other = await host.start_run("once", idempotency_key="k2")
        assert other != first
        await until(lambda: count(probe, "a") == 2)
    async with open_host(tmp_path, fresh_pm(probe)) as host:
        assert sorted(r.id for r in host.recovered) == sorted([first, other])
        assert await host.start_run("once", idempotency_key="k1") == first  # resumed, running
        run = await finish(host, first)
        assert await host.start_run("once", idempotency_key="k1") == first  # finished
        await finish(host, other)
    async with open_host(tmp_path, fresh_pm(probe)) as host:
        assert host.recovered == []
        assert await host.start_run("once", idempotency_key="k1") == first
        assert await host.start_run("once", idempotency_key="k2") == other
    assert run.status == "succeeded"
    assert run.idempotency_key == "k1"
    assert count(probe, "a") == 4  # two runs, each started once and resumed once
    assert query(tmp_path, "SELECT count(*) FROM runs") == [(2,)]


async def test_tools_see_a_stable_idempotency_key(tmp_path, probe):
    seen = []

    async def keyed(
        step: str, fail: bool = False, seconds: float = 0.0, context: plait.ToolContext = None
    ):
        seen.append((step, context.idempotency_key, context.attempt))
        if fail and sum(1 for s, _, _ in seen if s == step) == 1:
            raise RuntimeError("first call fails")
        await anyio.sleep(seconds)
        return context.idempotency_key

    plugin = types.SimpleNamespace(
        __name__="keyplug", register_tools=hookimpl(lambda register: register(keyed, "t.key"))
    )
    async with open_host(tmp_path, fresh_pm(probe, plugin)) as host:
        host.register(
            {
                "name": "keys",
                "steps": [
                    {
                        "id": "r",
                        "tool": "t.key",
                        "with": {"step": "r", "fail": True},
                        "retry": {"attempts": 3, "backoff": "fixed", "base": 0.05},
                    },
                    {
                        "id": "s",
                        "tool": "t.key",
                        "with": {"step": "s", "seconds": 0.8},
                        "needs": ["r"],
                    },
                ],
                "outputs": {"r": "${steps.r.output}", "s": "${steps.s.output}"},
            }
        )
        run_id = await host.start_run("keys")
        await until(lambda: any(step == "s" for step, _, _ in seen))
        await anyio.sleep(0.1)
    async with open_host(tmp_path, fresh_pm(probe, plugin)) as host:
        run = await finish(host, run_id)
    assert run.status == "succeeded", run.error
    assert seen == [
        ("r", f"{run_id}/r", 1),
        ("r", f"{run_id}/r", 2),
        ("s", f"{run_id}/s", 1),
        ("s", f"{run_id}/s", 1),
    ]
    assert run.outputs == {"r": f"{run_id}/r", "s": f"{run_id}/s"}
    assert run.steps["r"].attempts == 2 and run.steps["s"].attempts == 1
