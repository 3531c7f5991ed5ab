"""``make bench``: plait's workloads beside their baselines, measured in the same run.

Every measurement runs in a fresh subprocess (peak RSS then belongs to it alone) and prints one
JSON line; this driver collects them, prints a table with plait's figure, the baseline's, the
ratio and plait's goal for it, and writes everything as JSON to ``bench/results/`` so runs can
be compared across commits. ``--quick`` uses tiny sizes: it checks the harness, not the speed.
``--peers`` adds W1 and W3 in LangGraph and pydantic-graph (``bench/peers.py``), installed by
``pip install -e '.[peers]'`` (or ``make bench-peers``), beside plait's memory mode.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SIZES = {
    "full": {
        "graph": 1000,
        "repeats": 5,
        "runs": 10_000,
        "many": 100_000,
        "conns": 8,
        "requests": 5000,
        "inflight": 8,
        "samples": 500,
        "oneshot": 500,
        "stats": 100_000,
    },
    "quick": {
        "graph": 50,
        "repeats": 1,
        "runs": 200,
        "many": 500,
        "conns": 2,
        "requests": 200,
        "inflight": 8,
        "samples": 20,
        "oneshot": 50,
        "stats": 2_000,
    },
}


# -- one measurement, in this (child) process ---------------------------------------------------


def loop_options(args: dict[str, Any]) -> dict[str, Any]:
    """``anyio.run``'s backend_options for a measurement's ``loop``: asyncio's unless uvloop."""
    return {"use_uvloop": True} if args.get("loop") == "uvloop" else {}


def uvloop_installed() -> bool:
    """Whether uvloop imports here (plait[fast]), as ``plait serve --loop auto`` decides."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def measure(name: str, args: dict[str, Any]) -> dict[str, Any]:
    import rpc
    import workloads

    if name == "plait-graph":
        return anyio.run(
            lambda: workloads.plait_graph(args["kind"], args["n"], args["mode"], args["repeats"])
        )
    if name == "plait-expressions":
        return anyio.run(lambda: workloads.plait_expressions(args["n"], args["repeats"]))
    if name == "asyncio-graph":
        return anyio.run(lambda: workloads.asyncio_graph(args["kind"], args["n"], args["repeats"]))
    if name == "plait-runs":
        return anyio.run(
            lambda: workloads.plait_runs(
                args["n"],
                args["mode"],
                args.get("operations", False),
                args.get("metrics", True),
                args.get("traces", False),
            ),
            backend_options=loop_options(args),
        )
    if name == "pg-runs":
        import cluster

        return anyio.run(lambda: cluster.in_process(args["n"]))
    if name == "pg-served":
        import cluster

        return anyio.run(lambda: cluster.served(args["n"], args["hosts"]))
    if name == "asyncio-runs":
        return anyio.run(lambda: workloads.asyncio_runs(args["n"]))
    if name == "peer-graph":
        import peers

        return anyio.run(lambda: peers.GRAPH[args["peer"]](args["n"], args["repeats"]))
    if name == "peer-runs":
        import peers

        return anyio.run(lambda: peers.RUNS[args["peer"]](args["n"]))
    if name == "oneshot":
        return anyio.run(lambda: workloads.oneshot(args["n"], args["how"]))
    if name == "latency":
        return anyio.run(lambda: rpc.first_step_latency(args["mode"], args["samples"]))
    if name == "load":
        return anyio.run(
            lambda: rpc.load(
                args["url"], args["token"], args["conns"], args["requests"], args["inflight"]
            )
        )
    if name == "stats":
        import stats

        return anyio.run(lambda: stats.stats(args["runs"]))
    if name == "raw-server":
        anyio.run(rpc.raw_server)
    elif name == "plait-server":
        anyio.run(lambda: rpc.plait_server(args["mode"]), backend_options=loop_options(args))
    raise SystemExit(f"unknown measurement {name}")


# -- the driver --------------------------------------------------------------------------------


def child(name: str, **args: Any) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its last stdout line is the JSON result."""
    done = subprocess.run(
        [sys.executable, __file__, "--one", name, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name} {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def w4(server: str, size: dict[str, int], **args: Any) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--one", server, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"{server} did not start: {line!r}")
        _, url, token = line.split()
        return child(
            "load",
            url=url,
            token=token,
            conns=size["conns"],
            requests=size["requests"],
            inflight=size["inflight"],
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


PEERS = {"langgraph": "LangGraph", "pydantic-graph": "pydantic-graph"}
"""The peers ``--peers`` measures (bench/peers.py), by key and by name in the table."""


def missing_peers() -> list[str]:
    """The peers' modules that cannot be imported here."""
    import importlib.util

    return [m for m in ("langgraph", "pydantic_graph") if importlib.util.find_spec(m) is None]


def peer_versions() -> dict[str, str]:
    """The installed version of each peer (written to the results beside the machine)."""
    from importlib.metadata import version

    return {peer: version(peer) for peer in PEERS}


def collect(
    size: dict[str, int], only: set[str] | None, say: Any, peers: bool = False
) -> dict[str, Any]:
    results: dict[str, Any] = {}

    def want(key: str) -> bool:
        return only is None or key.split("/")[0] in only

    def put(key: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if want(key):
            say(f"measuring {key} …")
            results[key] = fn(*args, **kwargs)

    for kind in ("W1", "W2"):
        put(
            f"{kind}/asyncio",
            child,
            "asyncio-graph",
            kind=kind,
            n=size["graph"],
            repeats=size["repeats"],
        )
        for mode in ("memory", "durable"):
            put(
                f"{kind}/{mode}",
                child,
                "plait-graph",
                kind=kind,
                n=size["graph"],
                mode=mode,
                repeats=size["repeats"],
            )
    # W3 and W4 on uvloop too (plait[fast]; `plait serve --loop auto` takes it when installed),
    # each beside its asyncio twin, which is its baseline.
    uvloop = uvloop_installed()
    if not uvloop and (want("W3") or want("W4")):
        say("uvloop is not installed (pip install 'plait\\[fast]'): W3 and W4 on uvloop left out")
    put("W1-expr/memory", child, "plait-expressions", n=size["graph"], repeats=size["repeats"])
    put("W3/asyncio", child, "asyncio-runs", n=size["runs"])
    for mode in ("memory", "durable"):
        put(f"W3/{mode}", child, "plait-runs", n=size["runs"], mode=mode)
        if uvloop:
            put(f"W3/{mode}-uvloop", child, "plait-runs", n=size["runs"], mode=mode, loop="uvloop")
    for peer in PEERS if peers else ():
        put(f"W1/{peer}", child, "peer-graph", peer=peer, n=size["graph"], repeats=size["repeats"])
        put(f"W3/{peer}", child, "peer-runs", peer=peer, n=size["runs"])
    # Interleaved with a second plain durable W3, so the machine's drift shows beside the cost.
    put("W3-ops/durable", child, "plait-runs", n=size["runs"], mode="durable", operations=True)
    put("W3-ops/plain", child, "plait-runs", n=size["runs"], mode="durable")
    # Telemetry's cost: nothing, metrics (the default), traces; interleaved twice.
    for rep in (1, 2):
        for name, flags in (
            ("off", {"metrics": False}),
            ("metrics", {}),
            ("traces", {"metrics": False, "traces": True}),
        ):
            put(
                f"W3-telemetry/{name}-{rep}",
                child,
                "plait-runs",
                n=size["runs"],
                mode="durable",
                **flags,
            )
    # W3 with its store on PostgreSQL: in process beside SQLite's W3 durable, then through one
    # and three real hosts on one database (the same driver), and a take-over after kill -9.
    put("W3-pg/in-process", child, "pg-runs", n=size["runs"])
    put("W3-pg/1-host", child, "pg-served", n=size["runs"], hosts=1)
    put("W3-pg/3-hosts", child, "pg-served", n=size["runs"], hosts=3)
    put("W3-many/asyncio", child, "asyncio-runs", n=size["many"])
    put("W3-many/memory", child, "plait-runs", n=size["many"], mode="memory")
    for how in ("host", "run"):
        put(f"oneshot/{how}", child, "oneshot", n=size["oneshot"], how=how)
    put("stats/sqlite", child, "stats", runs=size["stats"])
    put("W4/raw", w4, "raw-server", size)
    for mode in ("memory", "durable"):
        put(f"W4/{mode}", w4, "plait-server", size, mode=mode)
        if uvloop:  # the server on uvloop; the load stays on asyncio
            put(f"W4/{mode}-uvloop", w4, "plait-server", size, mode=mode, loop="uvloop")
        put(f"latency/{mode}", child, "latency", mode=mode, samples=size["samples"])
    return results


def rows(r: dict[str, Any], size: dict[str, int]) -> list[tuple[str, ...]]:
    """(workload, plait, baseline, ratio, goal, met) for the table."""
    from workloads import IDLE_SCHEDULES, QUIET_WEBHOOKS

    out: list[tuple[str, ...]] = []

    def row(
        name: str,
        ours: float | None,
        base: float | None,
        unit: str,
        goal: str,
        met: bool | None,
        ratio: float | None = None,
    ) -> None:
        def fmt(v: float | None) -> str:
            return "—" if v is None else f"{v:,.1f} {unit}"

        if ratio is None and ours is not None and base:
            ratio = ours / base
        out.append(
            (
                name,
                fmt(ours),
                fmt(base),
                "—" if ratio is None else f"{ratio:.2f}×",
                goal,
                "—" if met is None else ("yes" if met else "NO"),
            )
        )

    def get(key: str, field: str) -> float | None:
        return r[key][field] if key in r else None

    n = size["graph"]
    for kind, label in (("W1", f"W1 chain of {n}"), ("W2", f"W2 fan-out of {n} + join")):
        base = get(f"{kind}/asyncio", "us_per_step")
        mem = get(f"{kind}/memory", "us_per_step")
        dur = get(f"{kind}/durable", "us_per_step")
        row(
            f"{label}, memory",
            mem,
            base,
            "µs/step",
            "≤ 2× baseline",
            None if mem is None or base is None else mem <= 2 * base,
        )
        row(
            f"{label}, durable",
            dur,
            base,
            "µs/step",
            "≤ 150 µs",
            None if dur is None else dur <= 150,
        )
    compile_us = get("W1-expr/memory", "compile_us_per_expression")
    row(
        "template compile, one distinct expression (${ steps.x.output + 1 }; baseline: "
        "through Jinja's pipeline)",
        compile_us,
        get("W1-expr/memory", "jinja_compile_us_per_expression"),
        "µs/expr",
        "≤ 50 µs",
        None if compile_us is None else compile_us <= 50,
    )
    row(
        f"W1 chain of {n}, an expression per step: register (baseline: plain chain)",
        get("W1-expr/memory", "register_us_per_step"),
        get("W1-expr/memory", "register_plain_us_per_step"),
        "µs/step",
        "—",
        None,
    )
    row(
        f"W1 chain of {n}, an expression per step, memory",
        get("W1-expr/memory", "us_per_step"),
        get("W1/asyncio", "us_per_step"),
        "µs/step",
        "—",
        None,
    )
    row(
        f"W1 chain of {n}, an expression per step: one-shot plait.run",
        get("W1-expr/memory", "oneshot_us_per_step"),
        get("W1/asyncio", "us_per_step"),
        "µs/step",
        "—",
        None,
    )
    runs = size["runs"]
    base_rps, base_rss = get("W3/asyncio", "runs_per_s"), get("W3/asyncio", "peak_rss_mb")
    mem_rps, mem_rss = get("W3/memory", "runs_per_s"), get("W3/memory", "peak_rss_mb")
    dur_rps, dur_rss = get("W3/durable", "runs_per_s"), get("W3/durable", "peak_rss_mb")
    row(
        f"W3 {runs:,} runs, memory",
        mem_rps,
        base_rps,
        "runs/s",
        "≥ 0.5× baseline",
        None if mem_rps is None or base_rps is None else mem_rps >= 0.5 * base_rps,
    )
    row(
        f"W3 {runs:,} runs, memory, peak RSS",
        mem_rss,
        base_rss,
        "MB",
        "≤ 2× baseline",
        None if mem_rss is None or base_rss is None else mem_rss <= 2 * base_rss,
    )
    row(
        f"W3 {runs:,} runs, durable",
        dur_rps,
        base_rps,
        "runs/s",
        "≥ 1,500 runs/s",
        None if dur_rps is None else dur_rps >= 1500,
    )
    row(f"W3 {runs:,} runs, durable, peak RSS", dur_rss, base_rss, "MB", "—", None)
    for mode in ("memory", "durable"):
        if f"W3/{mode}-uvloop" in r:
            row(
                f"W3 {runs:,} runs, {mode}, uvloop",
                get(f"W3/{mode}-uvloop", "runs_per_s"),
                get(f"W3/{mode}", "runs_per_s"),
                "runs/s",
                "— (baseline: asyncio)",
                None,
            )
    ops_rps = get("W3-ops/durable", "runs_per_s")
    plain = [v for v in (dur_rps, get("W3-ops/plain", "runs_per_s")) if v is not None]
    plain_rps = sum(plain) / len(plain) if plain else None
    row(
        f"W3 durable + {IDLE_SCHEDULES:,} schedules, "
        f"{QUIET_WEBHOOKS} webhooks (baseline: W3 durable)",
        ops_rps,
        plain_rps,
        "runs/s",
        "≥ 0.95× W3",
        None if ops_rps is None or plain_rps is None else ops_rps >= 0.95 * plain_rps,
    )

    def both(name: str) -> float | None:
        found = [get(f"W3-telemetry/{name}-{rep}", "runs_per_s") for rep in (1, 2)]
        kept = [v for v in found if v is not None]
        return sum(kept) / len(kept) if kept else None

    off, with_metrics, with_traces = both("off"), both("metrics"), both("traces")
    row(
        "W3 durable, metrics on (baseline: metrics and traces off)",
        with_metrics,
        off,
        "runs/s",
        "< 5% slower",
        None if with_metrics is None or off is None else with_metrics >= 0.95 * off,
    )
    row(
        "W3 durable, traces on, batched (baseline: both off)",
        with_traces,
        off,
        "runs/s",
        "— (cost shown)",
        None,
    )
    row(
        f"W3 {runs:,} runs, PostgreSQL, in process (baseline: W3 durable, SQLite)",
        get("W3-pg/in-process", "runs_per_s"),
        dur_rps,
        "runs/s",
        "— (cost shown)",
        None,
    )
    row(
        f"W3 {runs:,} runs via 1 host on PostgreSQL",
        get("W3-pg/1-host", "runs_per_s"),
        None,
        "runs/s",
        "—",
        None,
    )
    row(
        f"W3 {runs:,} runs via 3 hosts on PostgreSQL (baseline: 1 host)",
        get("W3-pg/3-hosts", "runs_per_s"),
        get("W3-pg/1-host", "runs_per_s"),
        "runs/s",
        "— (scaling shown)",
        None,
    )
    takeover = get("W3-pg/3-hosts", "takeover_s")
    row(
        "take-over after kill -9 of 1 of 3 hosts (lease 5 s)",
        takeover,
        None,
        "s",
        "≤ 10 s",
        None if takeover is None else takeover <= 10,
    )
    many = size["many"]
    many_rss = get("W3-many/memory", "peak_rss_mb")
    row(
        f"W3 {many:,} runs, memory",
        get("W3-many/memory", "runs_per_s"),
        get("W3-many/asyncio", "runs_per_s"),
        "runs/s",
        "completes",
        "W3-many/memory" in r,
    )
    row(
        f"W3 {many:,} runs, memory, peak RSS",
        many_rss,
        get("W3-many/asyncio", "peak_rss_mb"),
        "MB",
        "≤ 1,000 MB",
        None if many_rss is None else many_rss <= 1000,
    )
    row(
        "W3 memory per in-flight run",
        get("W3/memory", "kb_per_run"),
        get("W3/asyncio", "kb_per_run"),
        "KB",
        "—",
        None,
    )
    raw_rps, raw_p99 = get("W4/raw", "requests_per_s"), get("W4/raw", "p99_ms")
    for mode in ("memory", "durable"):
        rps, p99 = get(f"W4/{mode}", "requests_per_s"), get(f"W4/{mode}", "p99_ms")
        row(
            f"W4 ping ×{size['conns'] * size['requests']:,}, {mode}",
            rps,
            raw_rps,
            "req/s",
            "≥ 0.7× raw",
            None if rps is None or raw_rps is None else rps >= 0.7 * raw_rps,
        )
        row(
            f"W4 p99, {mode}",
            p99,
            raw_p99,
            "ms",
            "≤ 2× raw",
            None if p99 is None or raw_p99 is None else p99 <= 2 * raw_p99,
        )
        if f"W4/{mode}-uvloop" in r:
            for field, what, unit in (("requests_per_s", "ping", "req/s"), ("p99_ms", "p99", "ms")):
                row(
                    f"W4 {what}, {mode}, uvloop",
                    get(f"W4/{mode}-uvloop", field),
                    get(f"W4/{mode}", field),
                    unit,
                    "— (baseline: asyncio)",
                    None,
                )
    for mode in ("memory", "durable"):
        p50 = get(f"latency/{mode}", "p50_ms")
        row(
            f"runs/start → first step p50, {mode}",
            p50,
            None,
            "ms",
            "< 1 ms",
            None if p50 is None else p50 < 1,
        )
        row(
            f"runs/start → first step p99, {mode}",
            get(f"latency/{mode}", "p99_ms"),
            None,
            "ms",
            "—",
            None,
        )
    shots = size["oneshot"]
    host_rps, run_rps = get("oneshot/host", "runs_per_s"), get("oneshot/run", "runs_per_s")
    row(
        f"one-shot plait.run ×{shots} at once (baseline: a Host)",
        run_rps,
        host_rps,
        "runs/s",
        "≥ 0.25× Host",
        None if run_rps is None or host_rps is None else run_rps >= 0.25 * host_rps,
    )
    host_ms, run_ms = get("oneshot/host", "ms_per_run"), get("oneshot/run", "ms_per_run")
    row(
        "one-shot plait.run, one at a time (baseline: a Host)",
        run_ms,
        host_ms,
        "ms/run",
        "≤ 4× Host",
        None if run_ms is None or host_ms is None else run_ms <= 4 * host_ms,
    )
    stored = size["stats"]
    for key, what in (("all_ms", "all workflows"), ("bottleneck_ms", "one, + bottleneck report")):
        took = get("stats/sqlite", key)
        row(
            f"runs/stats over {stored:,} stored runs, {what}",
            took,
            None,
            "ms",
            "< 1 s",
            None if took is None else took < 1000,
        )
    return out


def peer_rows(r: dict[str, Any], size: dict[str, int]) -> list[tuple[str, ...]]:
    """(workload, peer, plait memory, asyncio, ratio peer / plait) for --peers' table."""
    out: list[tuple[str, ...]] = []

    def get(key: str, field: str) -> float | None:
        return r[key][field] if key in r else None

    def fmt(v: float | None, unit: str) -> str:
        return "—" if v is None else f"{v:,.1f} {unit}"

    for peer, label in PEERS.items():
        for name, kind, field, unit in (
            (f"W1 chain of {size['graph']:,}", "W1", "us_per_step", "µs/step"),
            (f"W3 {size['runs']:,} runs", "W3", "runs_per_s", "runs/s"),
            (f"W3 {size['runs']:,} runs, peak RSS", "W3", "peak_rss_mb", "MB"),
        ):
            if f"{kind}/{peer}" not in r:
                continue
            theirs, ours = get(f"{kind}/{peer}", field), get(f"{kind}/memory", field)
            out.append(
                (
                    f"{name}, {label}",
                    fmt(theirs, unit),
                    fmt(ours, unit),
                    fmt(get(f"{kind}/asyncio", field), unit),
                    "—" if theirs is None or not ours else f"{theirs / ours:.2f}×",
                )
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (harness check)")
    parser.add_argument(
        "--only",
        help="comma-separated workloads: "
        "W1,W2,W3,W3-ops,W3-telemetry,W3-many,W4,latency,oneshot,stats",
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="where to write the results (default: bench/results/<time>.json)",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also W1 and W3 in LangGraph and pydantic-graph (pip install -e '.[peers]')",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="?", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.one:
        print(json.dumps(measure(opts.one, json.loads(opts.args or "{}"))), flush=True)
        return 0
    size = SIZES["quick" if opts.quick else "full"]
    only = set(opts.only.split(",")) if opts.only else None
    console = Console(stderr=True)
    if opts.peers and (missing := missing_peers()):
        print(
            f"--peers: {' and '.join(missing)} not installed: "
            "pip install -e '.[peers]' (or make bench-peers)",
            file=sys.stderr,
        )
        return 2
    started = time.monotonic()
    results = collect(size, only, lambda m: console.print(m, style="dim"), opts.peers)
    machine = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "commit": _commit(),
    }
    if opts.peers:
        machine["peers"] = peer_versions()
    table = Table(
        title=f"plait benchmarks ({'quick' if opts.quick else 'full'}; "
        f"{machine['cpus']} CPUs, Python {machine['python']})"
    )
    for col in ("workload", "plait", "baseline", "ratio", "goal", "met"):
        table.add_column(col, justify="left" if col in ("workload", "goal") else "right")
    for line in rows(results, size):
        if only is None or line[1] != "—":
            table.add_row(*line)
    Console(width=max(120, Console().width)).print(table)
    if opts.peers:
        peers = Table(title="plait's peers, same sitting (ratio: peer / plait memory)")
        for col in ("workload", "peer", "plait memory", "asyncio", "ratio"):
            peers.add_column(col, justify="left" if col == "workload" else "right")
        for line in peer_rows(results, size):
            peers.add_row(*line)
        Console(width=max(120, Console().width)).print(peers)
    path = Path(opts.json) if opts.json else HERE / "results" / time.strftime("%Y%m%d-%H%M%S.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "machine": machine,
                "size": size,
                "results": results,
                "seconds": time.monotonic() - started,
            },
            indent=2,
        )
    )
    console.print(f"results: {path} ({time.monotonic() - started:.0f} s)")
    return 0


def _commit() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=HERE,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
