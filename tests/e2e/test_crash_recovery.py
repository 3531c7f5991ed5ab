"""Crash recovery with a real host process killed by SIGKILL (docs/reliability.md §49-§51).

A host subprocess runs 100 runs whose tool steps log every execution (with the pid and the
idempotency key the tool received) to a file. The host is killed with SIGKILL while they run,
at different moments, and started again on the same data dir. Then, from the store and the log:

* every run finished with the outputs an uninterrupted run gives;
* a step whose success was committed before a crash never ran in a later host process;
* a step in flight at a crash ran again in the next process with the same idempotency key
  (the log is grouped by the key the tool received, so a re-run under another key would show
  as a step that never ran in the process that committed it);
* every run's events have consecutive sequence numbers.

"Incarnation" below is the index of the host process: the run's ``run.recovered`` events mark
where one incarnation's events end and the next one's begin.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect

pytestmark = pytest.mark.anyio

PLAIT = [sys.executable, "-m", "plait.cli"]
LISTENING = re.compile(r"listening on (ws://\S+)")
TOKEN = re.compile(r"^token: (\S+)$", re.MULTILINE)
RUNS = 100

PLUGIN = '''\
"""Test plugin: a tool that logs each execution with its pid and idempotency key."""

import json
import os
import time

import plait


def count(label: str, seconds: float, context: plait.ToolContext) -> str:
    line = {"key": context.idempotency_key, "pid": os.getpid(), "attempt": context.attempt}
    fd = os.open(os.environ["CRASH_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(line) + "\\n").encode())
    finally:
        os.close(fd)
    time.sleep(seconds)
    return label


@plait.hookimpl
def register_tools(register):
    register(count, "crash.count")
'''

WORKFLOW = """\
name: crashy
inputs:
  type: object
  properties: {i: {type: integer}}
  required: [i]
steps:
  - {id: first, tool: crash.count, with: {label: "a${inputs.i}", seconds: 0.3}}
  - id: each
    loop: "${range(3) | list}"
    needs: [first]
    steps:
      - {id: work, tool: crash.count, with: {label: "b${item}", seconds: 0.25}}
    output: "${steps.work.output}"
  - {id: side, tool: crash.count, with: {label: "s", seconds: 0.5}}
  - id: last
    tool: crash.count
    with: {label: "${steps.first.output}-${steps.each.output | join('')}-${steps.side.output}",
           seconds: 0.1}
outputs:
  result: "${steps.last.output}"
  n: "${inputs.i * 2}"
"""

TOOL_STEPS = ("first", "each[0].work", "each[1].work", "each[2].work", "side", "last")


def expected_outputs(i: int) -> dict[str, Any]:
    """What an uninterrupted run of ``crashy`` with input ``i`` returns."""
    return {"result": f"a{i}-b0b1b2-s", "n": i * 2}


class HostProcess:
    """``plait serve`` on one data dir; each start is a new incarnation."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pids: list[int] = []
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.token = ""

    def start(self) -> None:
        stderr = self.tmp / f"host-{len(self.pids)}.stderr"
        env = dict(
            os.environ,
            CRASH_LOG=str(self.tmp / "executions.jsonl"),
            PYTHONPATH=os.pathsep.join([str(self.tmp), os.environ.get("PYTHONPATH", "")]),
        )
        with stderr.open("wb") as errfile:
            self.process = subprocess.Popen(
                [
                    *PLAIT,
                    "serve",
                    "--port",
                    "0",
                    "--config",
                    str(self.tmp / "plait.toml"),
                    "--data-dir",
                    str(self.tmp / "data"),
                    "--workflows",
                    str(self.tmp / "wf"),
                ],
                cwd=str(self.tmp),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errfile,
            )
        self.pids.append(self.process.pid)
        deadline = time.monotonic() + 30
        while True:
            text = stderr.read_text(encoding="utf-8", errors="replace")
            url, token = LISTENING.search(text), TOKEN.search(text)
            if url and token:
                self.url, self.token = url.group(1), token.group(1)
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"plait serve did not start:\n{text[-4000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    async def calls(self, requests: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        """Send requests on one connection, 32 in flight at a time; results in order."""
        async with connect(
            self.url, additional_headers={"Authorization": f"Bearer {self.token}"}, max_size=None
        ) as ws:
            results: list[Any] = [None] * len(requests)
            for start in range(0, len(requests), 32):
                chunk = requests[start : start + 32]
                for n, (method, params) in enumerate(chunk, start):
                    await ws.send(
                        json.dumps({"jsonrpc": "2.0", "id": n, "method": method, "params": params})
                    )
                pending = set(range(start, start + len(chunk)))
                with anyio.fail_after(60):
                    while pending:
                        reply = json.loads(await ws.recv())
                        if reply.get("id") in pending:
                            assert "result" in reply, reply
                            results[reply["id"]] = reply["result"]
                            pending.discard(reply["id"])
            return results


@pytest.fixture
def crash_dir(tmp_path: Path) -> Path:
    (tmp_path / "crashprobe.py").write_text(PLUGIN, encoding="utf-8")
    (tmp_path / "wf").mkdir()
    (tmp_path / "wf" / "crashy.yaml").write_text(WORKFLOW, encoding="utf-8")
    (tmp_path / "plait.toml").write_text(
        '[plugins]\nentry_points = false\nmodules = ["crashprobe"]\n', encoding="utf-8"
    )
    return tmp_path


def read_store(
    data_dir: Path,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[tuple[int, str, str | None, Any]]]]:
    conn = sqlite3.connect(data_dir / "plait.db")
    try:
        runs = {
            row[0]: {"status": row[1], "outputs": json.loads(row[2] or "null")}
            for row in conn.execute("SELECT id, status, outputs FROM runs WHERE parent_id IS NULL")
        }
        events: dict[str, list[tuple[int, str, str | None, Any]]] = defaultdict(list)
        for run_id, seq, kind, step, data in conn.execute(
            "SELECT run_id, seq, type, step, data FROM events ORDER BY run_id, seq"
        ):
            events[run_id].append((seq, kind, step, json.loads(data)))
    finally:
        conn.close()
    return runs, events


def check_recovery(host: HostProcess, run_ids: list[str], crashes: int) -> dict[str, int]:
    """Assert the invariants of the module docstring; returns counts for the caller."""
    runs, events = read_store(host.tmp / "data")
    incarnation_of_pid = {pid: n for n, pid in enumerate(host.pids)}
    executions: dict[str, list[int]] = defaultdict(list)  # key -> incarnations that ran it
    for line in (host.tmp / "executions.jsonl").read_text().splitlines():
        entry = json.loads(line)
        executions[entry["key"]].append(incarnation_of_pid[entry["pid"]])
    counts = {"rerun_in_flight": 0, "replayed_committed": 0, "recovered_runs": 0}
    for i, run_id in enumerate(run_ids):
        assert runs[run_id]["status"] == "succeeded", (run_id, events[run_id][-3:])
        assert runs[run_id]["outputs"] == expected_outputs(i)
        seqs = [e[0] for e in events[run_id]]
        assert seqs == list(range(1, len(seqs) + 1)), f"gap or repeat in {run_id}: {seqs}"
        recovered_at = [seq for seq, kind, _, _ in events[run_id] if kind == "run.recovered"]
        assert len(recovered_at) <= crashes
        counts["recovered_runs"] += bool(recovered_at)

        def incarnation(seq: int, recovered_at: list[int] = recovered_at) -> int:
            return sum(1 for r in recovered_at if r < seq)

        interrupted = {
            path
            for seq, kind, _, data in events[run_id]
            if kind == "run.recovered"
            for path in data["interrupted"]
        }
        for path in TOOL_STEPS:
            succeeded = [
                seq
                for seq, kind, step, _ in events[run_id]
                if kind == "step.succeeded" and step == path
            ]
            assert len(succeeded) == 1, (run_id, path, succeeded)
            done_in = incarnation(succeeded[0])
            ran_in = executions[f"{run_id}/{path}"]
            # Committed in incarnation `done_in`: no later process ran it again, and the
            # process that committed it ran it exactly once (no retries in this workflow).
            assert max(ran_in) == done_in, (run_id, path, ran_in, done_in)
            assert ran_in.count(done_in) == 1, (run_id, path, ran_in)
            assert len(ran_in) == len(set(ran_in)), (run_id, path, ran_in)
            if path in interrupted:
                # In flight at a crash (its start was committed, its end was not): it ran
                # again in a later process, under the same idempotency key.
                assert done_in > 0 and ran_in[-1] == done_in, (run_id, path, ran_in)
            if len(ran_in) > 1:
                # Ran before a crash and again after it (whether or not its start had been
                # committed: the engine may run ahead of the disk), always with the same key.
                counts["rerun_in_flight"] += 1
            if done_in < len(recovered_at):
                counts["replayed_committed"] += 1  # a later process reused its output
    return counts


async def start_runs(host: HostProcess) -> list[str]:
    replies = await host.calls(
        [("runs/start", {"workflow": "crashy", "inputs": {"i": i}}) for i in range(RUNS)]
    )
    return [r["runId"] for r in replies]


async def wait_all(host: HostProcess, run_ids: list[str]) -> None:
    replies = await host.calls([("runs/wait", {"runId": r, "timeout": 60}) for r in run_ids])
    assert all(r["run"]["status"] == "succeeded" for r in replies), [
        r["run"]["error"] for r in replies if r["run"]["status"] != "succeeded"
    ][:3]


@pytest.mark.parametrize("kill_after", [0.0, 0.4, 1.0], ids=["at-start", "early", "late"])
async def test_sigkill_while_runs_are_in_flight(crash_dir, kill_after):
    host = HostProcess(crash_dir)
    try:
        host.start()
        run_ids = await start_runs(host)
        await anyio.sleep(kill_after)
        host.kill()
        host.start()
        await wait_all(host, run_ids)
    finally:
        host.stop()
    counts = check_recovery(host, run_ids, crashes=1)
    assert counts["recovered_runs"] > 0, "the kill came after every run had finished"
    if kill_after > 0:
        assert counts["rerun_in_flight"] > 0, counts
        assert counts["replayed_committed"] > 0, counts


async def test_two_crashes_in_a_row(crash_dir):
    host = HostProcess(crash_dir)
    try:
        host.start()
        run_ids = await start_runs(host)
        await anyio.sleep(0.3)
        host.kill()
        host.start()
        await anyio.sleep(0.3)
        host.kill()
        host.start()
        await wait_all(host, run_ids)
    finally:
        host.stop()
    counts = check_recovery(host, run_ids, crashes=2)
    assert counts["recovered_runs"] > 0 and counts["rerun_in_flight"] > 0, counts
