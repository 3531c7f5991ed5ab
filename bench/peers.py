"""W1 and W3 of ``make bench`` in two peers of plait: LangGraph and pydantic-graph.

The same workloads as ``workloads.plait_graph`` and ``workloads.plait_runs``, each written the
way the peer's own documentation writes a graph:

- W1: a chain of ``n`` nodes, each incrementing a counter in the graph's state; median µs per
  step over ``repeats`` runs after one warm-up run.
- W3: ``n`` concurrent runs of a three-node graph (the input returned as a no-op tool would,
  a 10 ms ``asyncio.sleep``, the value plus 1), after a warm-up batch of 200; runs/s and
  peak RSS.

Neither peer keeps its runs anywhere (no checkpointer, no persistence), so the fair plait
figure beside them is its memory mode. Both sides run with the garbage-collector settings
``plait serve`` uses, as the asyncio baseline does. Imported lazily by ``bench/run.py
--peers``: the peers are an optional extra (``pip install -e '.[peers]'``).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypedDict

from workloads import peak_rss_mb

from plait.host.app import tune_gc


async def _per_step(run: Callable[[], Awaitable[int]], n: int, repeats: int) -> dict[str, Any]:
    """Median µs per step of ``run`` (one chain of ``n`` steps) over ``repeats`` runs after a
    warm-up run, as ``workloads.plait_graph`` measures."""
    tune_gc()  # the same collector settings as plait's side
    per_step = []
    for _ in range(repeats + 1):  # the first run warms up
        gc.collect()
        started = time.perf_counter()
        count = await run()
        per_step.append((time.perf_counter() - started) / n * 1e6)
        assert count == n, count
    return {"us_per_step": statistics.median(per_step[1:]), "peak_rss_mb": peak_rss_mb()}


async def _runs(one: Callable[[int], Awaitable[int]], n: int) -> dict[str, Any]:
    """``n`` concurrent runs of ``one`` after a warm-up batch of 200, as
    ``workloads.plait_runs`` measures: runs/s, peak RSS, KB per run in flight."""
    tune_gc()  # the same collector settings as plait's side
    assert await asyncio.gather(*(one(i) for i in range(200))) == [i + 1 for i in range(200)]
    gc.collect()
    base = peak_rss_mb()
    started = time.perf_counter()
    results = await asyncio.gather(*(asyncio.create_task(one(i)) for i in range(n)))
    elapsed = time.perf_counter() - started
    assert results == [i + 1 for i in range(n)], "a run returned the wrong value"
    peak = peak_rss_mb()
    return {
        "runs_per_s": n / elapsed,
        "seconds": elapsed,
        "peak_rss_mb": peak,
        "kb_per_run": max(0.0, peak - base) * 1024 / n,
    }


# -- LangGraph -------------------------------------------------------------------------------


class Counter(TypedDict):
    count: int


class Three(TypedDict, total=False):
    i: int
    v: int


async def langgraph_graph(n: int, repeats: int) -> dict[str, Any]:
    """W1 on LangGraph: a StateGraph of ``n`` nodes joined by edges, START → s0 → … → END."""
    from langgraph.graph import END, START, StateGraph

    def increment(state: Counter) -> dict[str, int]:
        return {"count": state["count"] + 1}

    builder = StateGraph(Counter)
    for i in range(n):
        builder.add_node(f"s{i}", increment)
    builder.add_edge(START, "s0")
    for i in range(1, n):
        builder.add_edge(f"s{i - 1}", f"s{i}")
    builder.add_edge(f"s{n - 1}", END)
    graph = builder.compile()
    # Every node of the chain is one superstep, and LangGraph stops a run after
    # `recursion_limit` supersteps: LangGraph long defaulted to 25 (langchain-core's
    # RunnableConfig still says so), which a 1,000-step chain exceeds. The pinned 1.2 defaults
    # to 10,007; the limit is given explicitly so the chain runs whatever the default is.
    config = {"recursion_limit": n + 10}

    async def run() -> int:
        return (await graph.ainvoke({"count": 0}, config=config))["count"]

    return await _per_step(run, n, repeats)


async def langgraph_runs(n: int) -> dict[str, Any]:
    """W3 on LangGraph: ``n`` concurrent ``ainvoke``s of START → tool → delay → transform."""
    from langgraph.graph import END, START, StateGraph

    async def tool(state: Three) -> Three:
        return {"v": state["i"]}  # a no-op tool: its input back

    async def delay(state: Three) -> None:
        await asyncio.sleep(0.01)  # no update to the state

    async def transform(state: Three) -> Three:
        return {"v": state["v"] + 1}

    builder = StateGraph(Three)
    builder.add_node("tool", tool)
    builder.add_node("delay", delay)
    builder.add_node("transform", transform)
    builder.add_edge(START, "tool")
    builder.add_edge("tool", "delay")
    builder.add_edge("delay", "transform")
    builder.add_edge("transform", END)
    graph = builder.compile()

    async def one(i: int) -> int:
        return (await graph.ainvoke({"i": i}))["v"]

    return await _runs(one, n)


# -- pydantic-graph --------------------------------------------------------------------------


@dataclass
class Count:
    count: int = 0


@dataclass
class Value:
    v: int = 0


def _pydantic_chain(n: int) -> Any:
    """A graph of ``n`` BaseNode classes, each returning an instance of the next (the last
    ``End``): pydantic-graph reads a graph's edges from the return annotation of each node's
    ``run``, so the chain's classes are made here, last first, each annotated with the next."""
    from pydantic_graph import BaseNode, End, GraphBuilder, GraphRunContext

    following: type[Any] | None = None  # after the last node: End
    classes: list[type[Any]] = []
    for i in reversed(range(n)):

        async def run(self: Any, ctx: Any, nxt: type[Any] | None = following) -> Any:
            ctx.state.count += 1
            return End(ctx.state.count) if nxt is None else nxt()

        run.__annotations__ = {
            "ctx": GraphRunContext[Count],
            "return": End[int] if following is None else following,
        }
        base = (BaseNode[Count, None, int],)
        following = dataclass(
            types.new_class(f"S{i}", base, exec_body=lambda ns: ns.update(run=run))
        )
        classes.append(following)
    classes.reverse()
    g = GraphBuilder(state_type=Count, input_type=classes[0], output_type=int)
    g.add(g.edge_from(g.start_node).to(classes[0]), *(g.node(c) for c in classes))
    return g.build(), classes[0]


async def pydantic_graph_graph(n: int, repeats: int) -> dict[str, Any]:
    """W1 on pydantic-graph: a chain of ``n`` BaseNode subclasses."""
    graph, first = _pydantic_chain(n)

    async def run() -> int:
        state = Count()
        count = await graph.run(state=state, inputs=first())
        assert count == state.count
        return count

    return await _per_step(run, n, repeats)


async def pydantic_graph_runs(n: int) -> dict[str, Any]:
    """W3 on pydantic-graph: ``n`` concurrent runs of Tool → Delay → Transform → End."""
    from pydantic_graph import BaseNode, End, GraphBuilder, GraphRunContext

    @dataclass
    class Transform(BaseNode[Value, None, int]):
        async def run(self, ctx: GraphRunContext[Value]) -> End[int]:
            return End(ctx.state.v + 1)

    @dataclass
    class Delay(BaseNode[Value, None, int]):
        async def run(self, ctx: GraphRunContext[Value]) -> Transform:
            await asyncio.sleep(0.01)
            return Transform()

    @dataclass
    class Tool(BaseNode[Value, None, int]):
        i: int

        async def run(self, ctx: GraphRunContext[Value]) -> Delay:
            ctx.state.v = self.i  # a no-op tool: its input back
            return Delay()

    g = GraphBuilder(state_type=Value, input_type=Tool, output_type=int)
    g.add(g.edge_from(g.start_node).to(Tool), g.node(Tool), g.node(Delay), g.node(Transform))
    graph = g.build()

    async def one(i: int) -> int:
        return await graph.run(state=Value(), inputs=Tool(i))

    return await _runs(one, n)


GRAPH = {"langgraph": langgraph_graph, "pydantic-graph": pydantic_graph_graph}
RUNS = {"langgraph": langgraph_runs, "pydantic-graph": pydantic_graph_runs}
