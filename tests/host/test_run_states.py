"""Every transition of a run's state machine, and the events each one records."""

import time

import anyio
import pytest

import plait

pytestmark = pytest.mark.anyio


def wf(*steps, **extra):
    return {"name": "states", "steps": list(steps), **extra}


def work(step_id, seconds, **extra):
    return {
        "id": step_id,
        "tool": "probe.work",
        "with": {"seconds": seconds, "label": step_id},
        **extra,
    }


def kinds(run):
    return [e.type for e in run.events if e.type.startswith("run.")]


async def until(check, timeout=5.0):
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.01)


def step_is(run, step, status):
    return lambda: run.steps.get(step) is not None and run.steps[step].status == status


async def finish(run):
    with anyio.fail_after(5):
        await run.wait()
    return run


async def test_pending_to_running_to_succeeded(pm):
    engine = plait.Engine(pm)
    compiled = engine.register(wf(work("a", 0.05)))
    async with engine:
        run = await engine.start(compiled)
        assert run.status in ("pending", "running")
        await until(step_is(run, "a", "running"))
        assert run.status == "running"
        await finish(run)
    assert run.status == "succeeded"
    assert kinds(run) == ["run.created", "run.started", "run.succeeded"]


async def test_failed(pm):
    engine = plait.Engine(pm)
    compiled = engine.register(
        wf({"id": "x", "tool": "probe.fail", "with": {"key": "x", "times": 9}})
    )
    async with engine:
        run = await engine.start(compiled)
        with anyio.fail_after(5):
            await run.wait()
    assert run.status == "failed"
    assert kinds(run) == ["run.created", "run.started", "run.failed"]


async def test_pause_and_resume(pm, probe):
    engine = plait.Engine(pm)
    compiled = engine.register(wf(work("a", 0.2), work("b", 0.01, needs=["a"])))
    async with engine:
        run = await engine.start(compiled)
        await until(step_is(run, "a", "running"))
        assert (await engine.pause(run.id)).status == "paused"
        await until(step_is(run, "a", "succeeded"))
        await anyio.sleep(0.05)
        assert run.status == "paused"
        assert "b" not in run.steps or run.steps["b"].status == "pending"
        assert (await engine.resume(run.id)).status == "running"
        await finish(run)
    assert run.status == "succeeded"
    assert kinds(run) == [
        "run.created",
        "run.started",
        "run.paused",
        "run.resumed",
        "run.succeeded",
    ]


async def test_waiting_for_a_signal_then_running_again(pm):
    engine = plait.Engine(pm)
    compiled = engine.register(wf({"id": "w", "wait": "go"}, work("after", 0.1, needs=["w"])))
    async with engine:
        run = await engine.start(compiled)
        await until(lambda: run.status == "waiting")
        assert run.steps["w"].status == "waiting"
        await engine.signal(run.id, "go", 1)
        await until(step_is(run, "after", "running"))
        assert run.status == "running"
        await finish(run)
    assert run.status == "succeeded"
    assert kinds(run) == [
        "run.created",
        "run.started",
        "run.waiting",
        "run.signal",
        "run.resumed",
        "run.succeeded",
    ]
    waiting = next(e for e in run.events if e.type == "run.waiting")
    assert waiting.data == {"event": "go"}


async def test_one_branch_waits_while_another_runs(pm):
    engine = plait.Engine(pm)
    compiled = engine.register(
        wf(
            {"id": "w", "wait": "go"},
            work("busy", 0.4),
            work("next", 0.01, needs=["busy"]),
        )
    )
    async with engine:
        run = await engine.start(compiled)
        await until(step_is(run, "w", "waiting"))
        await anyio.sleep(0.1)
        assert run.status == "running", "a step still runs: the run is not waiting"
        await until(step_is(run, "next", "succeeded"))
        await until(lambda: run.status == "waiting")  # only the wait is left
        await engine.signal(run.id, "go")
        await finish(run)
    assert run.status == "succeeded"
    assert kinds(run) == [
        "run.created",
        "run.started",
        "run.waiting",
        "run.signal",
        "run.resumed",
        "run.succeeded",
    ]


async def test_parallel_branch_waits_while_the_other_runs(pm):
    engine = plait.Engine(pm)
    compiled = engine.register(
        wf(
            {
                "id": "p",
                "parallel": {
                    "hold": [{"id": "w", "wait": "go"}],
                    "work": [work("s", 0.3)],
                },
            }
        )
    )
    async with engine:
        run = await engine.start(compiled)
        await until(step_is(run, "p[hold].w", "waiting"))
        await anyio.sleep(0.05)
        assert run.status == "running"
        await until(step_is(run, "p[work].s", "succeeded"))
        await until(lambda: run.status == "waiting")
        await engine.signal(run.id, "go", 2)
        await finish(run)
    assert run.status == "succeeded"
    assert "run.waiting" in kinds(run)
    assert kinds(run).index("run.waiting") > kinds(run).index("run.started")


async def start_in(engine, compiled, state):
    run = await engine.start(compiled)
    if state == "running":
        await until(step_is(run, "a", "running"))
    elif state == "paused":
        await until(step_is(run, "a", "running"))
        await engine.pause(run.id)
    else:
        await until(lambda: run.status == "waiting")
    assert run.status == state
    return run


@pytest.mark.parametrize("state", ["running", "paused", "waiting"])
async def test_cancel(pm, state):
    engine = plait.Engine(pm)
    steps = (
        [{"id": "a", "wait": "go"}, work("b", 0.01, needs=["a"])]
        if state == "waiting"
        else [work("a", 0.3), work("b", 0.01, needs=["a"])]
    )
    compiled = engine.register(wf(*steps))
    async with engine:
        run = await start_in(engine, compiled, state)
        run = await engine.cancel(run.id)
        await finish(run)
    assert run.status == "cancelled"
    assert run.steps["b"].status == "cancelled"
    run_kinds = kinds(run)
    assert run_kinds[-1] == "run.cancelled"
    assert "run.resumed" not in run_kinds, run_kinds
    assert (
        run_kinds[-2]
        == {"running": "run.started", "paused": "run.paused", "waiting": "run.waiting"}[state]
    )


async def test_cancel_a_paused_run_whose_step_waits(pm):
    engine = plait.Engine(pm)
    compiled = engine.register(wf({"id": "a", "wait": "go"}))
    async with engine:
        run = await engine.start(compiled)
        await until(lambda: run.status == "waiting")
        await engine.pause(run.id)
        await engine.cancel(run.id)
        await finish(run)
    assert kinds(run) == [
        "run.created",
        "run.started",
        "run.waiting",
        "run.paused",
        "run.cancelled",
    ]


async def test_eta_does_not_grow_while_paused(pm):
    engine = plait.Engine(pm)
    compiled = engine.register(
        wf(work("a", 0.05), work("b", 0.05, needs=["a"]), work("c", 0.05, needs=["b"]))
    )
    async with engine:
        run = await engine.start(compiled)
        await until(step_is(run, "b", "running"))
        await engine.pause(run.id)
        await until(step_is(run, "b", "succeeded"))
        first = run.progress()
        assert first["done"] == 2 and first["eta"] is not None
        await anyio.sleep(0.3)
        later = run.progress()
        assert later["eta"] == pytest.approx(first["eta"], abs=0.02), (first, later)
        await engine.resume(run.id)
        await finish(run)
    assert run.progress()["eta"] is None


def test_eta_counts_only_time_not_paused():
    from plait.state import Run

    run = Run("r", "w", 1, {}, total_steps=4, settled_steps=2)
    now = time.time()
    run.started_at = now - 10
    run.status = "paused"
    run.record("run.paused").ts = now - 8  # paused 2 s after the start, paused since
    assert run.progress()["eta"] == pytest.approx(2.0, abs=0.05)
    run.record("run.resumed").ts = now - 1  # 7 s paused, then 1 s of work: 3 s worked
    run.status = "running"
    assert run.progress()["eta"] == pytest.approx(3.0, abs=0.05)
