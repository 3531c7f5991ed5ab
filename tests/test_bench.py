"""The benchmark harness still works: ``bench/run.py --quick`` (tiny sizes) measures every
workload and writes its JSON. It checks that figures come out, not how fast they are."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    for mode in ("memory", "durable"):
        assert 0 < results[f"latency/{mode}"]["p50_ms"] <= results[f"latency/{mode}"]["p99_ms"]
    for how in ("host", "run"):
        assert results[f"oneshot/{how}"]["runs_per_s"] > 0
        assert results[f"oneshot/{how}"]["ms_per_run"] > 0
    assert "one-shot plait.run" in done.stdout
