"""``runs/stats`` over a real WebSocket from a real ``plait serve``, and ``plait stats``, the real
command, against that host and, once it stopped, on its data dir (SQLite) alone."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from plait.cli.stats import parse_since
from plait.errors import ConfigError

from .host_process import PLAIT, HostProcess

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

WORKFLOWS = {
    "pipeline": """\
name: pipeline
steps:
  - {id: fetch, delay: 0.02}
  - {id: slow, needs: [fetch], delay: 0.3}
  - {id: quick, needs: [fetch], delay: 0.02}
  - {id: done, needs: [slow, quick], transform: ok}
""",
}


def plait_stats(host: HostProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *PLAIT,
            "stats",
            *args,
            "--config",
            str(host.tmp / "plait.toml"),
            "--data-dir",
            str(host.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env=host.environment(),
        cwd=str(host.tmp),
    )


async def test_stats_over_websocket_and_the_command_against_a_host_and_a_data_dir(
    tmp_path: Path,
):
    host = HostProcess(tmp_path, workflows=WORKFLOWS)
    host.start()
    try:
        for _ in range(3):
            run_id = (await host.call("runs/start", {"workflow": "pipeline"}))["runId"]
            assert (await host.wait_run(run_id))["status"] == "succeeded"

        reply = await host.call("runs/stats", {"workflow": "pipeline"})
        (wf,) = reply["workflows"]
        assert (wf["workflow"], wf["runs"], wf["successRate"]) == ("pipeline", 3, 1.0)
        assert 0.3 <= wf["duration"]["p50"] <= wf["duration"]["p95"] <= wf["duration"]["p99"]
        steps = {s["step"]: s for s in reply["steps"]}
        assert steps["slow"]["duration"]["p50"] >= 0.3 and steps["slow"]["executions"] == 3
        neck = reply["bottleneck"]
        assert neck["runs"] == 3 and neck["steps"][0]["step"] == "slow"
        assert neck["steps"][0]["onPath"] == 1.0

        unknown = await host.request("runs/stats", {"workflow": "pipelin"})
        assert unknown["error"]["code"] == -32602
        assert "unknown workflow 'pipelin'" in unknown["error"]["message"]
        assert unknown["error"]["data"]["closeMatches"] == ["pipeline"]

        # the command, against the running host (found through the data dir)
        shown = plait_stats(host, "pipeline", "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["bottleneck"]["steps"][0]["step"] == "slow"
        table = plait_stats(host, "pipeline", "--since", "1h")
        assert table.returncode == 0, table.stderr
        for text in ("workflows", "pipeline", "critical path of pipeline", "slow", "100%"):
            assert text in table.stdout, table.stdout
        assert "what would shorten the runs" in table.stdout
        everything = plait_stats(host)
        assert everything.returncode == 0 and "critical path" not in everything.stdout
        none_yet = plait_stats(host, "--since", "2099-01-01T00:00:00+00:00", "--json")
        assert none_yet.returncode == 0 and json.loads(none_yet.stdout)["workflows"] == []
        typo = plait_stats(host, "pipelin")
        assert typo.returncode == 2 and "did you mean 'pipeline'" in typo.stderr
        bad = plait_stats(host, "--since", "yesterday")
        assert bad.returncode == 2 and "--since 'yesterday'" in bad.stderr
        assert "Traceback" not in typo.stderr + bad.stderr
    finally:
        host.stop()

    # no host: the command reads the data dir's store itself, with the same figures
    offline = plait_stats(host, "pipeline", "--json")
    assert offline.returncode == 0, offline.stderr
    kept = json.loads(offline.stdout)
    assert kept["workflows"] == reply["workflows"]
    assert [p["step"] for p in kept["bottleneck"]["steps"]] == [
        p["step"] for p in reply["bottleneck"]["steps"]
    ]
    typo = plait_stats(host, "pipelin")
    assert typo.returncode == 2 and "did you mean 'pipeline'" in typo.stderr


def test_since_takes_a_duration_or_an_iso_time():
    now = 1_800_000_000.0
    assert parse_since("30m", now) == now - 1800
    assert parse_since("1h", now) == now - 3600
    assert parse_since("7d", now) == now - 7 * 86400
    assert parse_since("2w", now) == now - 14 * 86400
    assert parse_since("1.5h", now) == now - 5400
    assert parse_since("2026-03-01T00:00:00+00:00", now) == 1772323200.0
    assert abs(parse_since("2026-03-01", now) - time.mktime((2026, 3, 1, 0, 0, 0, 0, 0, -1))) < 1
    for bad in ("yesterday", "7x", "-1h", ""):
        with pytest.raises(ConfigError, match="neither a duration"):
            parse_since(bad, now)
