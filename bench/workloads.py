"""The engine workloads (W1-W3 of `make bench`), for plait and for the plain-asyncio baseline.

Each function runs one measurement in this process and returns a dict of figures; the driver
(``bench/run.py``) runs each in a fresh subprocess so that peak RSS belongs to that workload
alone. Both sides run with the garbage-collector settings ``plait serve`` uses
(``plait.host.app.tune_gc``).
"""

from __future__ import annotations

import asyncio
import base64
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
from plait.templates.engine import TemplateEngine


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


def chain_of_expressions(n: int, name: str = "exprs") -> dict[str, Any]:
    """W1 with an expression per step: each step adds one to the one before (``${ steps.
    s<i-1>.output + 1 }``), so every step has a distinct template to compile."""
    steps: list[dict[str, Any]] = [{"id": "s0", "transform": 1}]
    steps += [
        {"id": f"s{i}", "transform": f"${{ steps.s{i - 1}.output + 1 }}"} for i in range(1, n)
    ]
    return {"name": name, "steps": steps, "outputs": {"last": f"${{ steps.s{n - 1}.output }}"}}


async def plait_expressions(n: int, repeats: int) -> dict[str, Any]:
    """W1 with an expression per step: µs to compile one distinct expression, µs per step to
    register the workflow (beside the plain chain's), µs per step of a run in a started host,
    and µs per step of a one-shot ``plait.run`` of a workflow it has not seen (compile
    included)."""
    settings = config("memory", "")
    async with plait.Host(settings, plugins=[_plugin()]) as host:
        tune_gc()
        assert host.engine is not None
        templates = host.engine.templates
        jinja = TemplateEngine(templates.limits, fast=False)  # the baseline: Jinja's pipeline
        compile_us, jinja_us, register_us, plain_us = [], [], [], []
        for k in range(repeats + 1):
            sources = [f"${{ steps.s{i}.output + {k} }}" for i in range(n)]
            for engine, times in ((templates, compile_us), (jinja, jinja_us)):
                started = time.perf_counter()
                for source in sources:
                    engine.compile(source, where="transform")
                times.append((time.perf_counter() - started) / n * 1e6)
            definition = chain_of_expressions(n, f"exprs{k}")
            gc.collect()
            started = time.perf_counter()
            host.register(definition)
            register_us.append((time.perf_counter() - started) / n * 1e6)
            plain = chain(n) | {"name": f"plain{k}"}
            started = time.perf_counter()
            host.register(plain)
            plain_us.append((time.perf_counter() - started) / n * 1e6)
        per_step = []
        for _ in range(repeats + 1):
            started = time.perf_counter()
            run = await host.wait(await host.start_run("exprs0"))
            per_step.append((time.perf_counter() - started) / n * 1e6)
            assert run.status == "succeeded" and run.outputs == {"last": n}, run.error
    oneshot = []
    for k in range(repeats + 1):
        definition = chain_of_expressions(n, f"oneshot{k}")
        started = time.perf_counter()
        run = await plait.run(definition, config=settings, plugins=[])
        oneshot.append((time.perf_counter() - started) / n * 1e6)
        assert run.status == "succeeded", run.error
    return {
        "compile_us_per_expression": statistics.median(compile_us[1:]),
        "jinja_compile_us_per_expression": statistics.median(jinja_us[1:]),
        "register_us_per_step": statistics.median(register_us[1:]),
        "register_plain_us_per_step": statistics.median(plain_us[1:]),
        "us_per_step": statistics.median(per_step[1:]),
        "oneshot_us_per_step": statistics.median(oneshot[1:]),
    }


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


IDLE_SCHEDULES = 1000
QUIET_WEBHOOKS = 100


def _with_operations(settings: HostConfig) -> HostConfig:
    """``settings`` with QUIET_WEBHOOKS subscriptions to every run and step event of other
    workflows (routed per event, never delivered: W3's own runs match none)."""
    secret = "whsec_" + base64.b64encode(bytes(32)).decode()
    hooks = [
        {
            "id": f"hook-{i}",
            "url": f"http://127.0.0.1:9/hook-{i}",
            "events": ["run.*", "step.*"],
            "workflows": [f"other-{i}"],
            "secret": secret,
        }
        for i in range(QUIET_WEBHOOKS)
    ]
    data = settings.model_dump(exclude_unset=True)
    data["webhooks"] = hooks
    data["webhooks_policy"] = {"allow_private": True}
    return HostConfig.model_validate(data)


async def _idle_schedules(host: plait.Host) -> None:
    """IDLE_SCHEDULES schedules of another workflow, each due once a year (none fires during
    the measurement; the scheduler keeps them all in its heap)."""
    from plait.definition.models import ScheduleDef

    host.register({"name": "yearly", "steps": [{"id": "s", "transform": 1}]})
    assert host.schedules is not None
    for i in range(IDLE_SCHEDULES):
        spec = ScheduleDef(name=f"yearly-{i}", cron=f"{i % 60} {i // 60 % 24} 1 1 *")
        await host.schedules.put(spec, workflow="yearly")


class _DroppedSpans:
    """A span exporter that keeps nothing: traces cost what making and batching spans costs,
    without a collector's speed in the figure."""

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def _tracing() -> Any:
    """Tracing as ``[tracing]`` sets it up (batched export off the event loop), to nowhere."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from plait.telemetry.tracing import Tracing

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_DroppedSpans()))  # type: ignore[arg-type]
    return Tracing(provider)


async def plait_runs(
    n: int, mode: str, operations: bool = False, metrics: bool = True, traces: bool = False
) -> dict[str, Any]:
    """W3 on plait: ``n`` concurrent runs of THREE_STEPS; runs/s and peak RSS. With
    ``operations``, on a host that also keeps IDLE_SCHEDULES schedules and QUIET_WEBHOOKS
    webhook subscriptions (what they cost a host that runs something else). ``metrics`` (on by
    default, as in ``plait serve``) and ``traces`` (off by default) measure what each costs."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = config(mode, tmp)
        if operations:
            settings = _with_operations(settings)
        settings.metrics.enabled = metrics
        tracing = _tracing() if traces else None
        async with plait.Host(settings, plugins=[_plugin()], tracing=tracing) as host:
            tune_gc()  # as plait serve does
            if operations:
                await _idle_schedules(host)
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
