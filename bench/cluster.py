"""W3 on PostgreSQL: one host in process, then one and three real ``plait serve`` processes
sharing one database, and the take-over time when one of three is killed.

The server is a throwaway cluster of the machine's PostgreSQL (``tests/postgres_cluster.py``,
the one the tests use: ``make test`` installs Debian's package when it is missing), started for
the measurement and removed after it. A measurement that cannot have one says so and is left
out of the table; it never stands in a figure of its own.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
from websockets.asyncio.client import connect

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

PLAIT = [sys.executable, "-m", "plait.cli"]
LISTENING = re.compile(r"listening on (ws://\S+)")
TOKEN = re.compile(r"^token: (\S+)$", re.MULTILINE)
LEASE = 5.0
"""The lease of the take-over measurement (plait's default)."""

PLUGIN = """\
import time

import plait


async def noop(i: int = 0) -> int:
    return i


def hold(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@plait.hookimpl
def register_tools(register):
    register(noop, "bench.noop")
    register(hold, "bench.hold", cacheable=False)
"""

THREE = """\
name: three
inputs: {type: object, properties: {i: {type: integer}}}
steps:
  - {id: t, tool: bench.noop, with: {i: "${inputs.i}"}}
  - {id: d, delay: 0.01, needs: [t]}
  - {id: f, transform: "${steps.t.output + 1}", needs: [d]}
outputs: {v: "${steps.f.output}"}
"""

HOLD = """\
name: hold
steps:
  - {id: a, tool: bench.hold, with: {seconds: 1.0}}
  - {id: b, tool: bench.hold, with: {seconds: 1.0}, needs: [a]}
"""


@contextmanager
def database() -> Iterator[str]:
    """A fresh database on a throwaway cluster: its URL."""
    from postgres_cluster import PgCluster, ensure_bindir

    cluster = PgCluster(ensure_bindir(), name="bench")
    try:
        cluster.start()
        yield cluster.create_database(f"bench_{uuid.uuid4().hex[:8]}")
    finally:
        cluster.close()


async def in_process(n: int) -> dict[str, Any]:
    """W3 on one host in this process, its store on PostgreSQL."""
    import workloads

    import plait
    from plait.host.app import tune_gc

    with database() as url, tempfile.TemporaryDirectory() as tmp:
        settings = workloads.config("durable", tmp)
        settings.store.url = url
        async with plait.Host(settings, plugins=[workloads._plugin()]) as host:
            tune_gc()
            host.register(workloads.THREE_STEPS)
            await workloads._plait_batch(host, 200)
            started = time.perf_counter()
            await workloads._plait_batch(host, n)
            elapsed = time.perf_counter() - started
    return {"runs_per_s": n / elapsed, "seconds": elapsed}


class Served:
    """``plait serve`` processes on one database."""

    def __init__(self, url: str, tmp: Path, count: int) -> None:
        self.url = url
        self.processes: list[subprocess.Popen[bytes]] = []
        self.endpoints: list[tuple[str, str]] = []
        (tmp / "benchplugin.py").write_text(PLUGIN)
        (tmp / "wf").mkdir()
        (tmp / "wf" / "three.yaml").write_text(THREE)
        (tmp / "wf" / "hold.yaml").write_text(HOLD)
        config = tmp / "plait.toml"
        config.write_text(
            '[plugins]\nentry_points = false\nmodules = ["benchplugin"]\n'
            f'[store]\nurl = "{url}"\nsynchronous = "FULL"\n'
            f"[cluster]\nlease_seconds = {LEASE}\n"
            "[limits]\nmax_concurrent_steps = 1000000\nmax_live_runs = 1000000\n"
            "max_inflight = 100000\nsend_queue_messages = 1000000\n"
        )
        for i in range(count):
            log = (tmp / f"serve-{i}.log").open("wb")
            self.processes.append(
                subprocess.Popen(
                    [
                        *PLAIT,
                        "serve",
                        "--port",
                        "0",
                        "--config",
                        str(config),
                        "--data-dir",
                        str(tmp / f"data-{i}"),
                        "--workflows",
                        str(tmp / "wf"),
                        "--log-level",
                        "warning",
                    ],
                    cwd=tmp,
                    env={**__import__("os").environ, "PYTHONPATH": str(tmp)},
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )
        for i in range(count):
            deadline = time.monotonic() + 60
            while True:
                text = (tmp / f"serve-{i}.log").read_text(errors="replace")
                url_found, token = LISTENING.search(text), TOKEN.search(text)
                if url_found and token:
                    self.endpoints.append((url_found.group(1), token.group(1)))
                    break
                if time.monotonic() > deadline or self.processes[i].poll() is not None:
                    raise RuntimeError(f"plait serve did not start:\n{text[-2000:]}")
                time.sleep(0.05)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(2)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()

    async def start(self, workflow: str, count: int, first: int = 0) -> list[str]:
        """Start ``count`` runs spread round-robin over the hosts; their ids."""
        ids: list[str] = []

        async def through(k: int, url: str, token: str) -> None:
            mine = list(range(first + k, first + count, len(self.endpoints)))
            async with connect(
                url,
                additional_headers={"Authorization": f"Bearer {token}"},
                proxy=None,
                max_size=None,
            ) as ws:
                for i in mine:
                    params = {
                        "workflow": workflow,
                        "inputs": {"i": i} if workflow == "three" else {},
                    }
                    await ws.send(
                        json.dumps(
                            {"jsonrpc": "2.0", "id": i, "method": "runs/start", "params": params}
                        )
                    )
                for _ in mine:
                    reply = json.loads(await ws.recv())
                    ids.append(reply["result"]["runId"])

        async with anyio.create_task_group() as tg:
            for k, (url, token) in enumerate(self.endpoints):
                tg.start_soon(through, k, url, token)
        return ids

    def query(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url) as conn:
            return conn.execute(sql, params).fetchall()

    async def finished(self, count: int, timeout: float = 600) -> None:
        with anyio.fail_after(timeout):
            while (
                self.query("SELECT count(*) FROM runs WHERE finished_at IS NOT NULL")[0][0] < count
            ):
                await anyio.sleep(0.02)


async def served(n: int, hosts: int) -> dict[str, Any]:
    """W3 through ``hosts`` real hosts on one database; with three, the take-over time too."""
    with database() as url, tempfile.TemporaryDirectory() as tmp:
        group = Served(url, Path(tmp), hosts)
        try:
            await group.start("three", 200)
            await group.finished(200)
            started = time.perf_counter()
            await group.start("three", n, first=1000)
            await group.finished(200 + n)
            elapsed = time.perf_counter() - started
            bad = group.query("SELECT count(*) FROM runs WHERE status != 'succeeded'")[0][0]
            if bad:
                raise RuntimeError(f"{bad} run(s) did not succeed")
            out: dict[str, Any] = {"runs_per_s": n / elapsed, "seconds": elapsed}
            if hosts > 1:
                out["takeover_s"] = await _takeover(group, 60)
            return out
        finally:
            group.close()


async def _takeover(group: Served, runs: int) -> float:
    """Kill one host with runs in flight: seconds from the kill until the last of its
    unfinished runs was resumed by another host."""
    done_before = group.query("SELECT count(*) FROM runs")[0][0]
    await group.start("hold", runs)
    await anyio.sleep(0.5)
    victim = group.processes[0]
    killed = time.time()
    victim.kill()
    victim.wait()
    await group.finished(done_before + runs, timeout=120)
    rows = group.query(
        "SELECT max(ts) FROM events WHERE type = 'run.recovered' AND ts > %s", (killed,)
    )
    if rows[0][0] is None:
        raise RuntimeError("no run was taken over")
    return float(rows[0][0]) - killed
