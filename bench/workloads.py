"""The engine workloads (W1-W3 of `make bench`), for plait and for the plain-asyncio baseline.

Each function runs one measurement in this process and returns a dict of figures; the driver
(``bench/run.py``) runs each in a fresh subprocess so that peak RSS belongs to that workload
alone. Both sides run with the garbage-collector settings ``plait serve`` uses
(``plait.host.app.tune_gc``).
"""

from __future__ import annotations

import asyncio
import gc
import resource
import statistics
import tempfile
import time
import types
from typing import Any

import anyio

import plait
from plait.config import HostConfig
from plait.host.app import tune_gc


def peak_rss_mb() -> float:
    """This process's peak resident set size, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- plait -------------------------------------------------------------------------------------


def _plugin() -> Any:
    async def noop(i: int = 0) -> int:
        return i

    @plait.hookimpl
    def register_tools(register):
        register(noop, "bench.noop")

    return types.SimpleNamespace(__name__="bench", register_tools=register_tools)


def config(mode: str, data_dir: str, **limits: int) -> HostConfig:
    """The host of every measurement: runs in memory or in the durable store (synchronous
    FULL), no third-party plugins, no limit on steps at once; ``limits`` adds to it."""
    return HostConfig.model_validate(
        {
            "host": {"data_dir": data_dir if mode == "durable" else ":memory:", "port": 0},
            "plugins": {"entry_points": False},
            "limits": {"max_concurrent_steps": 1_000_000, "max_live_runs": 1_000_000, **limits},
            "store": {"synchronous": "FULL"},
        }
    )


def chain(n: int) -> dict[str, Any]:
    """W1: ``n`` trivial steps, each needing the one before."""
    steps = [{"id": "s0", "transform": 1}]
    steps += [{"id": f"s{i}", "transform": 1, "needs": [f"s{i - 1}"]} for i in range(1, n)]
    return {"name": "chain", "steps": steps}


def fanout(n: int) -> dict[str, Any]:
    """W2: ``n`` independent trivial steps and a join needing them all."""
    steps: list[dict[str, Any]] = [{"id": f"s{i}", "transform": 1} for i in range(n)]
    steps.append({"id": "join", "transform": 1, "needs": [f"s{i}" for i in range(n)]})
    return {"name": "fanout", "steps": steps}


THREE_STEPS = {
    "name": "three",
    "inputs": {"type": "object", "properties": {"i": {"type": "integer"}}},
    "steps": [
        {"id": "t", "tool": "bench.noop", "with": {"i": "${inputs.i}"}},
        {"id": "d", "delay": 0.01, "needs": ["t"]},
        {"id": "f", "transform": "${steps.t.output + 1}", "needs": ["d"]},
    ],
    "outputs": {"v": "${steps.f.output}"},
}
"""W3's run: a tool, a 10 ms delay, a transform."""


async def plait_graph(kind: str, n: int, mode: str, repeats: int) -> dict[str, Any]:
    """W1 or W2 on plait: median µs per step over ``repeats`` runs."""
    definition = chain(n) if kind == "W1" else fanout(n)
    with tempfile.TemporaryDirectory() as tmp:
        async with plait.Host(config(mode, tmp), plugins=[_plugin()]) as host:
            tune_gc()  # as plait serve does
            host.register(definition)
            per_step = []
            for _ in range(repeats + 1):  # the first run warms up
                gc.collect()
                started = time.perf_counter()
                run_id = await host.start_run(definition["name"])
                run = await host.wait(run_id)
                per_step.append((time.perf_counter() - started) / (n + (kind == "W2")) * 1e6)
                assert run.status == "succeeded", run.error
            if host.store is not None:
                await host.store.sync()
    return {"us_per_step": statistics.median(per_step[1:]), "peak_rss_mb": peak_rss_mb()}


async def plait_runs(n: int, mode: str) -> dict[str, Any]:
    """W3 on plait: ``n`` concurrent runs of THREE_STEPS; runs/s and peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        async with plait.Host(config(mode, tmp), plugins=[_plugin()]) as host:
            tune_gc()  # as plait serve does
            host.register(THREE_STEPS)
            await _plait_batch(host, 200)  # warm up
            gc.collect()
            base = peak_rss_mb()
            started = time.perf_counter()
            await _plait_batch(host, n)
            elapsed = time.perf_counter() - started
            peak = peak_rss_mb()
    return {
        "runs_per_s": n / elapsed,
        "seconds": elapsed,
        "peak_rss_mb": peak,
        "kb_per_run": max(0.0, peak - base) * 1024 / n,
    }


async def _plait_batch(host: plait.Host, n: int) -> None:
    failures = []

    async def one(i: int) -> None:
        run = await host.wait(await host.start_run("three", {"i": i}))
        if run.status != "succeeded" or run.outputs != {"v": i + 1}:
            failures.append((run.status, run.error))

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    assert not failures, failures[:3]


# -- one-shot runs ---------------------------------------------------------------------------------

INSTANT = {
    "name": "instant",
    "inputs": {"type": "object", "properties": {"i": {"type": "integer"}}},
    "steps": [
        {"id": "t", "tool": "bench.noop", "with": {"i": "${inputs.i}"}},
        {"id": "a", "transform": "${steps.t.output + 1}"},
        {"id": "b", "transform": "${steps.a.output * 2}"},
    ],
    "outputs": {"v": "${steps.b.output}"},
}
"""The one-shot workload's run: a tool and two expressions, nothing that waits."""


async def oneshot(n: int, how: str) -> dict[str, Any]:
    """``INSTANT`` run ``n`` times at once and 100 times one after the other, either with
    ``plait.run`` per call (``how="run"``) or through one started ``Host`` (``how="host"``)."""
    plugin = _plugin()
    settings = config("memory", "")
    tune_gc()
    if how == "run":

        async def one(i: int) -> plait.Run:
            return await plait.run(INSTANT, {"i": i}, config=settings, plugins=[plugin])

        return await _oneshot_figures(one, n)
    async with plait.Host(settings, plugins=[plugin]) as host:
        host.register(INSTANT)

        async def through_host(i: int) -> plait.Run:
            return await host.wait(await host.start_run("instant", {"i": i}))

        return await _oneshot_figures(through_host, n)


async def _oneshot_figures(one: Any, n: int) -> dict[str, Any]:
    run = await one(0)  # warms up: plugins loaded, workflow compiled
    assert run.status == "succeeded" and run.outputs == {"v": 2}, run.error
    sequential = []
    for i in range(100):
        started = time.perf_counter()
        await one(i)
        sequential.append((time.perf_counter() - started) * 1e3)
    gc.collect()
    results: list[Any] = []
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(lambda i=i: _keep(results, one(i)))
    elapsed = time.perf_counter() - started
    assert all(r.status == "succeeded" for r in results) and len(results) == n
    return {"runs_per_s": n / elapsed, "ms_per_run": statistics.median(sequential)}


async def _keep(results: list[Any], awaitable: Any) -> None:
    results.append(await awaitable)


# -- the plain asyncio baseline ------------------------------------------------------------------


async def asyncio_graph(kind: str, n: int, repeats: int) -> dict[str, Any]:
    """W1/W2 with a task per step: what running ``n`` trivial coroutines costs, no engine."""

    async def step(*before: asyncio.Task[int]) -> int:
        for task in before:
            await task
        return 1

    tune_gc()  # the same collector settings as plait's side
    per_step = []
    for _ in range(repeats + 1):
        gc.collect()
        started = time.perf_counter()
        if kind == "W1":
            prev = asyncio.create_task(step())
            for _ in range(1, n):
                prev = asyncio.create_task(step(prev))
            await prev
        else:
            tasks = [asyncio.create_task(step()) for _ in range(n)]
            await asyncio.create_task(step(*tasks))
        per_step.append((time.perf_counter() - started) / (n + (kind == "W2")) * 1e6)
    return {"us_per_step": statistics.median(per_step[1:]), "peak_rss_mb": peak_rss_mb()}


async def asyncio_runs(n: int) -> dict[str, Any]:
    """W3 as plain coroutines: a call, a 10 ms sleep, an addition, per run."""

    async def noop(i: int) -> int:
        return i

    async def one(i: int) -> int:
        value = await noop(i)
        await asyncio.sleep(0.01)
        return value + 1

    tune_gc()  # the same collector settings as plait's side
    await asyncio.gather(*(one(i) for i in range(200)))
    gc.collect()
    base = peak_rss_mb()
    started = time.perf_counter()
    results = await asyncio.gather(*(asyncio.create_task(one(i)) for i in range(n)))
    elapsed = time.perf_counter() - started
    assert results == [i + 1 for i in range(n)]
    peak = peak_rss_mb()
    return {
        "runs_per_s": n / elapsed,
        "seconds": elapsed,
        "peak_rss_mb": peak,
        "kb_per_run": max(0.0, peak - base) * 1024 / n,
    }
