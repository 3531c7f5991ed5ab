"""The ``stats`` measurement: ``runs/stats`` over a store of many finished runs.

A real host registers ``etl`` (extract → transform_a and transform_b in parallel → load) and
``notify`` (one agent step), and stops. The store is then filled by bulk SQL straight into its
tables (``runs``, ``steps``, ``agent_usage``), with the columns the store's own projection of
events writes (schema version 4; see ``plait.store.schema``): running 100,000 runs through the
engine would take minutes and measure the engine, not the query. No ``events`` rows are
written: ``runs/stats`` never reads them. The host then starts again on that data dir and
``runs/stats`` is timed through its real dispatcher (``plait.testing.Client``): once for every
workflow, once for ``etl`` with its bottleneck report.
"""

from __future__ import annotations

import json
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import plait
from plait.config import HostConfig
from plait.store.schema import DB_FILE
from plait.testing import Client

ETL = {
    "name": "etl",
    "steps": [
        {"id": "extract", "transform": 1},
        {"id": "transform_a", "needs": ["extract"], "transform": 2},
        {"id": "transform_b", "needs": ["extract"], "transform": 3},
        {"id": "load", "needs": ["transform_a", "transform_b"], "transform": 4},
    ],
}
NOTIFY = {
    "name": "notify",
    "steps": [{"id": "tell", "transform": 1}],
}
# (step, its dependencies, mean seconds): transform_b is the slow branch
SHAPE = (
    ("extract", (), 0.05),
    ("transform_a", ("extract",), 0.10),
    ("transform_b", ("extract",), 0.40),
    ("load", ("transform_a", "transform_b"), 0.05),
)


def _config(data_dir: str) -> HostConfig:
    return HostConfig.model_validate(
        {"host": {"data_dir": data_dir, "port": 0}, "plugins": {"entry_points": False}}
    )


def fill(db: Path, runs: int, digests: dict[str, str], seed: int = 7) -> None:
    """Write ``runs`` finished runs (90 % ``etl``, 10 % ``notify``; 5 % of them failed) with
    their step rows and, for ``notify``, an ``agent_usage`` row each, in one transaction."""
    rng = random.Random(seed)
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        run_rows, step_rows, usage_rows = [], [], []
        t0 = time.time() - runs * 2.0
        for i in range(runs):
            run_id = f"{i:032x}"
            created = t0 + i * 2.0
            started = created + 0.001
            failed = rng.random() < 0.05
            if i % 10 == 9:
                workflow = "notify"
                took = rng.uniform(0.2, 1.5)
                step_rows.append(
                    _step(run_id, "tell", "succeeded", started, started + took, workflow, created)
                )
                usage = json.dumps({"input_tokens": rng.randint(100, 900), "output_tokens": 50})
                usage_rows.append((run_id, 5, workflow, created, "writer", 1, usage))
                finished = started + took
            else:
                workflow = "etl"
                ends: dict[str, float] = {}
                for step, needs, mean in SHAPE:
                    begin = max((ends[n] for n in needs), default=started) + 0.001
                    ends[step] = begin + rng.expovariate(1 / mean)
                    status = "failed" if failed and step == "load" else "succeeded"
                    waited = rng.uniform(0, 0.01) if step.startswith("transform") else 0.0
                    step_rows.append(
                        _step(run_id, step, status, begin, ends[step], workflow, created, waited)
                    )
                finished = ends["load"]
            status = "failed" if failed and workflow == "etl" else "succeeded"
            run_rows.append(
                (
                    run_id,
                    workflow,
                    1,
                    digests[workflow],
                    status,
                    "{}",
                    4,
                    created,
                    started,
                    finished,
                )
            )
        conn.executemany(
            "INSERT INTO runs (id, workflow, version, digest, status, inputs, total_steps, "
            "created_at, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            run_rows,
        )
        conn.executemany(
            "INSERT INTO steps (run_id, path, status, output, error, attempts, started_at, "
            "finished_at, workflow, base, run_created, duration, waited, cached) "
            "VALUES (?, ?, ?, ?, NULL, 1, ?, ?, ?, ?, ?, ?, ?, 0)",
            step_rows,
        )
        conn.executemany(
            "INSERT INTO agent_usage (run_id, seq, workflow, run_created, agent, turns, usage) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            usage_rows,
        )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")  # what a long-lived store's optimize would have gathered
    finally:
        conn.close()


def _step(
    run_id: str,
    step: str,
    status: str,
    started: float,
    finished: float,
    workflow: str,
    created: float,
    waited: float = 0.0,
) -> tuple[Any, ...]:
    return (
        run_id,
        step,
        status,
        "1",
        started,
        finished,
        workflow,
        step,
        created,
        finished - started,
        waited,
    )


async def stats(runs: int, repeats: int = 5) -> dict[str, Any]:
    """Median milliseconds of ``runs/stats`` over ``runs`` stored runs: all workflows, and
    ``etl`` with its bottleneck report."""
    with tempfile.TemporaryDirectory() as tmp:
        async with plait.Host(_config(tmp)) as host:
            digests = {wf["name"]: host.register(wf).digest for wf in (ETL, NOTIFY)}
        began = time.perf_counter()
        fill(Path(tmp) / DB_FILE, runs, digests)
        fill_s = time.perf_counter() - began
        async with plait.Host(_config(tmp)) as host, Client(host, timeout=60) as client:
            timings: dict[str, list[float]] = {"all": [], "bottleneck": []}
            answers: dict[str, Any] = {}
            for _ in range(repeats):
                for key, params in (("all", {}), ("bottleneck", {"workflow": "etl"})):
                    began = time.perf_counter()
                    answers[key] = await client.call("runs/stats", **params)
                    timings[key].append((time.perf_counter() - began) * 1000)
    etl = answers["bottleneck"]["workflows"][0]
    assert etl["runs"] == runs - runs // 10, etl
    top = answers["bottleneck"]["bottleneck"]["steps"][0]
    return {
        "runs": runs,
        "fill_s": fill_s,
        "all_ms": statistics.median(timings["all"]),
        "bottleneck_ms": statistics.median(timings["bottleneck"]),
        "critical_step": top["step"],
    }
