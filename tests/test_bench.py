"""The benchmark harness still works: ``bench/run.py --quick`` (tiny sizes) measures every
workload and writes its JSON. It checks that figures come out, not how fast they are."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from plait.cli.loops import uvloop_installed

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run.py"


def test_quick_bench_measures_every_workload(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "W1 chain" in done.stdout and "W4 ping" in done.stdout
    results = json.loads(out.read_text())["results"]
    for kind in ("W1", "W2"):
        for side in ("asyncio", "memory", "durable"):
            assert results[f"{kind}/{side}"]["us_per_step"] > 0
    for side in ("asyncio", "memory", "durable"):
        assert results[f"W3/{side}"]["runs_per_s"] > 0
    assert results["W3-many/memory"]["peak_rss_mb"] > 0
    for side in ("raw", "memory", "durable"):
        assert results[f"W4/{side}"]["requests_per_s"] > 0
    if uvloop_installed():  # plait[fast] (and .[dev]): W3 and W4 on uvloop too
        for mode in ("memory", "durable"):
            assert results[f"W3/{mode}-uvloop"]["runs_per_s"] > 0
            assert results[f"W4/{mode}-uvloop"]["requests_per_s"] > 0
        assert "memory, uvloop" in done.stdout
    else:
        assert "uvloop is not installed" in done.stderr
    for mode in ("memory", "durable"):
        assert 0 < results[f"latency/{mode}"]["p50_ms"] <= results[f"latency/{mode}"]["p99_ms"]
    for how in ("host", "run"):
        assert results[f"oneshot/{how}"]["runs_per_s"] > 0
        assert results[f"oneshot/{how}"]["ms_per_run"] > 0
    assert "one-shot plait.run" in done.stdout


def test_quick_bench_measures_the_peers(tmp_path):
    """``--peers`` (W1 and W3 in LangGraph and pydantic-graph) when the ``peers`` extra is
    installed (``pip install -e '.[peers]'``); skipped otherwise, as ``make test`` installs only
    ``dev``."""
    missing = [m for m in ("langgraph", "pydantic_graph") if importlib.util.find_spec(m) is None]
    if missing:
        reason = f"{' and '.join(missing)} not installed (pip install -e '.[peers]')"
        print(reason)
        pytest.skip(reason)
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--peers", "--only", "W1,W3", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for label in ("LangGraph", "pydantic-graph"):
        assert f"W1 chain of 50, {label}" in done.stdout
        assert f"W3 200 runs, {label}" in done.stdout
        assert f"W3 200 runs, peak RSS, {label}" in done.stdout
    data = json.loads(out.read_text())
    results = data["results"]
    for peer in ("langgraph", "pydantic-graph"):
        assert results[f"W1/{peer}"]["us_per_step"] > 0
        assert results[f"W3/{peer}"]["runs_per_s"] > 0
        assert results[f"W3/{peer}"]["peak_rss_mb"] > 0
    assert set(data["machine"]["peers"]) == {"langgraph", "pydantic-graph"}
    assert "W2" not in done.stdout and "W4" not in done.stdout
