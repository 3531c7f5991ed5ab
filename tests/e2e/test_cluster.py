"""Several real ``plait serve`` processes on one real PostgreSQL database (``pg_url``).

Three hosts share 100 runs whose tool steps log every execution (run, step, pid) to a file;
one host is killed with SIGKILL mid-flight. Then, from the database and the log: every run
finished with the outputs an uninterrupted run gives, no step's success is recorded twice, a
step whose success was committed never ran again, every run's events have consecutive
sequence numbers, and the take-over time is measured and printed. A host frozen with SIGSTOP
past its lease, then resumed, writes nothing for the runs it lost. Any host answers about,
follows and controls any run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from websockets.asyncio.client import connect

from .host_process import PLAIT, HostProcess

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

LEASE = 3.0
RUNS = 100

PLUGIN = '''\
"""Test plugin: a tool that logs each execution (its label and pid) to $FX_LOG."""

import os
import time

import plait


def work(label: str, seconds: float) -> str:
    time.sleep(seconds)
    fd = os.open(os.environ["FX_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{label} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)
    return label.split("/")[-1]


@plait.hookimpl
def register_tools(register):
    register(work, "fx.work", cacheable=False)
'''

CHAIN = """\
name: chain
inputs:
  type: object
  properties: {i: {type: integer}, seconds: {type: number, default: 0.3}}
  required: [i]
steps:
  - {id: a, tool: fx.work, with: {label: "${run.id}/a", seconds: "${inputs.seconds}"}}
  - {id: b, tool: fx.work, with: {label: "${run.id}/b", seconds: "${inputs.seconds}"}, needs: [a]}
  - {id: c, tool: fx.work, with: {label: "${run.id}/c", seconds: "${inputs.seconds}"}, needs: [b]}
  - {id: d, tool: fx.work, with: {label: "${run.id}/d", seconds: "${inputs.seconds}"}, needs: [c]}
outputs:
  word: "${steps.a.output ~ steps.b.output ~ steps.c.output ~ steps.d.output}"
  i: "${inputs.i}"
"""

GATE = """\
name: gate
steps:
  - {id: hold, wait: go}
  - {id: after, transform: "${steps.hold.output}"}
outputs: {got: "${steps.after.output}"}
"""


def hosts(tmp: Path, url: str, count: int, log: Path) -> list[HostProcess]:
    config = f'[store]\nurl = "{url}"\n[cluster]\nlease_seconds = {LEASE}\ndrain_seconds = 2\n'
    made = []
    for n in range(count):
        folder = tmp / f"h{n}"
        folder.mkdir()
        made.append(
            HostProcess(
                folder,
                plugin=PLUGIN,
                workflows={"chain": CHAIN, "gate": GATE},
                config=config,
                env={"FX_LOG": str(log)},
            )
        )
    return made


@pytest.fixture
def cluster(tmp_path, pg_url):
    log = tmp_path / "fx.log"
    started = hosts(tmp_path, pg_url, 3, log)
    for host in started:
        host.start()
    try:
        yield started, pg_url, log
    finally:
        for host in started:
            if host.alive():
                os.kill(host.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
            host.stop()


async def start_runs(host: HostProcess, first: int, count: int, seconds: float) -> list[str]:
    ids = []
    async with connect(
        host.url, additional_headers={"Authorization": f"Bearer {host.token}"}, proxy=None
    ) as ws:
        for i in range(first, first + count):
            message = {
                "jsonrpc": "2.0",
                "id": i,
                "method": "runs/start",
                "params": {"workflow": "chain", "inputs": {"i": i, "seconds": seconds}},
            }
            await ws.send(json.dumps(message))
        for _ in range(count):
            reply = json.loads(await ws.recv())
            assert "result" in reply, reply
            ids.append(reply["result"]["runId"])
    return ids


async def scrape(host: HostProcess) -> str:
    """``GET /metrics`` of a host, with its token."""
    import httpx

    async with httpx.AsyncClient(timeout=10) as http:
        reply = await http.get(
            f"http://127.0.0.1:{host.port}/metrics",
            headers={"Authorization": f"Bearer {host.token}"},
        )
    assert reply.status_code == 200
    return reply.text


def query(url: str, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


async def wait_all_finished(url: str, count: int, timeout: float) -> None:
    with anyio.fail_after(timeout):
        while True:
            done = query(url, "SELECT count(*) FROM runs WHERE finished_at IS NOT NULL")[0][0]
            if done >= count:
                return
            await anyio.sleep(0.2)


def executions(log: Path) -> dict[tuple[str, str], list[int]]:
    ran: dict[tuple[str, str], list[int]] = defaultdict(list)
    for line in log.read_text().splitlines():
        label, pid = line.split()
        run_id, step = label.split("/")
        ran[(run_id, step)].append(int(pid))
    return ran


async def test_a_host_killed_mid_flight_loses_nothing_and_runs_nothing_twice(cluster):
    started, url, log = cluster
    per_host = RUNS // 3
    ids: list[str] = []
    for n, host in enumerate(started):
        count = per_host if n < 2 else RUNS - 2 * per_host
        ids += await start_runs(host, n * per_host, count, 0.3)
    victim = started[0]
    owned = {
        run_id
        for (run_id,) in query(
            url,
            "SELECT id FROM runs WHERE owner = (SELECT id FROM hosts WHERE name LIKE %s)",
            (f"%:{victim.process.pid}",),
        )  # type: ignore[union-attr]
    }
    await anyio.sleep(0.8)  # the runs are between their steps
    killed_at = time.time()
    victim.kill()
    await wait_all_finished(url, RUNS, 90)

    statuses = Counter(status for (status,) in query(url, "SELECT status FROM runs"))
    assert statuses == {"succeeded": RUNS}, statuses
    outputs = dict(query(url, "SELECT id, outputs FROM runs"))
    for run_id in ids:
        assert json.loads(outputs[run_id])["word"] == "abcd"
    recovered = query(
        url, "SELECT run_id, min(ts) FROM events WHERE type = 'run.recovered' GROUP BY run_id"
    )
    unfinished_at_kill = {run_id for run_id, _ in recovered}
    assert unfinished_at_kill and unfinished_at_kill <= owned
    takeover = max(ts for _, ts in recovered) - killed_at
    first = min(ts for _, ts in recovered) - killed_at
    taken = 0.0
    for survivor in started[1:]:
        metrics = await scrape(survivor)
        taken += sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith('plait_cluster_runs_taken_over_total{how="crashed"}')
        )
        assert "plait_cluster_hosts 2.0" in metrics  # the dead host no longer counted
    assert taken == len(recovered)
    print(
        f"\ntake-over: {len(recovered)} run(s) of the killed host resumed elsewhere "
        f"{first:.2f}s to {takeover:.2f}s after the kill (lease {LEASE:g}s)"
    )
    assert takeover < LEASE + 5

    # no step's success recorded twice; sequences without gaps
    succeeded = Counter(query(url, "SELECT run_id, step FROM events WHERE type = 'step.succeeded'"))
    assert set(succeeded.values()) == {1}
    assert len(succeeded) == 4 * RUNS
    for run_id, seqs in query(
        url, "SELECT run_id, array_agg(seq ORDER BY seq) FROM events GROUP BY run_id"
    ):
        assert seqs == list(range(1, len(seqs) + 1)), run_id
    # a step ran again only if the killed host was running it when it died
    ran = executions(log)
    victim_pid = victim.process.pid  # type: ignore[union-attr]
    for (run_id, step), pids in ran.items():
        assert len(pids) <= 2, (run_id, step, pids)
        if len(pids) == 2:
            assert pids[0] == victim_pid and run_id in unfinished_at_kill, (run_id, step, pids)
    assert len({(run_id, step) for run_id, step in ran}) == 4 * RUNS


async def test_a_frozen_host_that_lost_its_lease_writes_nothing_for_its_runs(cluster):
    started, url, log = cluster
    frozen = started[0]
    ids = await start_runs(frozen, 0, 6, 1.0)
    await anyio.sleep(0.5)  # first steps are running on the frozen host
    os.kill(frozen.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
    await anyio.sleep(LEASE + 3)  # the others take its runs over
    os.kill(frozen.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
    await wait_all_finished(url, len(ids), 60)
    await anyio.sleep(1.5)  # what the resumed host would write, it has tried to by now
    assert Counter(s for (s,) in query(url, "SELECT status FROM runs")) == {"succeeded": 6}
    succeeded = Counter(query(url, "SELECT run_id, step FROM events WHERE type = 'step.succeeded'"))
    assert set(succeeded.values()) == {1} and len(succeeded) == 4 * len(ids)
    for run_id, seqs in query(
        url, "SELECT run_id, array_agg(seq ORDER BY seq) FROM events GROUP BY run_id"
    ):
        assert seqs == list(range(1, len(seqs) + 1)), run_id
    text = frozen.stderr()
    assert "owned by another host now" in text or "taken over by another host" in text, text[-3000:]


async def test_any_host_answers_follows_and_controls_any_run(cluster):
    started, url, _ = cluster
    owner, other = started[0], started[1]
    run_id = (await owner.call("runs/start", {"workflow": "gate"}))["runId"]
    seen = await other.call("runs/get", {"runId": run_id})
    assert seen["run"]["status"] in ("pending", "running", "waiting")
    async with connect(
        other.url, additional_headers={"Authorization": f"Bearer {other.token}"}, proxy=None
    ) as ws:
        await ws.send(
            json.dumps(
                {"jsonrpc": "2.0", "id": 1, "method": "runs/subscribe", "params": {"runId": run_id}}
            )
        )
        await other.call("runs/signal", {"runId": run_id, "event": "go", "data": "yes"})
        types: list[str] = []
        with anyio.fail_after(20):
            while "run.succeeded" not in types:
                message = json.loads(await ws.recv())
                if message.get("method") == "runs/event":
                    types.append(message["params"]["type"])
    assert types[0] == "run.created" and types.count("run.created") == 1
    done = await owner.wait_run(run_id)
    assert done["status"] == "succeeded" and done["outputs"] == {"got": "yes"}
    # control from a host that does not own the run: refused as the owner refuses it
    refused = await other.request("runs/signal", {"runId": run_id, "event": "go"})
    assert "error" in refused and "succeeded" in refused["error"]["message"]
    info = (await other.call("host/info"))["cluster"]
    assert len(info["hosts"]) == 3 and info["leaseSeconds"] == LEASE
    assert all(host["silent"] < LEASE for host in info["hosts"])
    second = (await owner.call("runs/start", {"workflow": "gate"}))["runId"]
    await other.call("runs/cancel", {"runId": second})
    cancelled = await owner.wait_run(second)
    assert cancelled["status"] == "cancelled"


async def test_sigterm_drains_a_host_finishing_short_runs_and_handing_long_ones_over(cluster):
    started, url, _ = cluster
    draining = started[0]
    short = await start_runs(draining, 0, 1, 0.1)
    long = await start_runs(draining, 1, 1, 1.5)
    await anyio.sleep(0.2)
    stopped_at = time.time()
    draining.signal(signal.SIGTERM)
    assert draining.wait_exit(30) == 0
    await wait_all_finished(url, 2, 30)
    recovered = dict(
        query(url, "SELECT run_id, min(ts) FROM events WHERE type = 'run.recovered' GROUP BY 1")
    )
    assert short[0] not in recovered  # it ended while the host drained
    assert long[0] in recovered  # handed over when the drain ran out
    handed = recovered[long[0]] - stopped_at
    print(f"\nhand-over after SIGTERM: resumed elsewhere {handed:.2f}s after the signal")
    assert handed < 2 + LEASE - 0.5  # at the end of the drain, not a lease after it
    statuses = dict(query(url, "SELECT id, status FROM runs"))
    assert statuses == {short[0]: "succeeded", long[0]: "succeeded"}
    assert "draining" in draining.stderr()


async def test_new_runs_are_spread_over_the_live_hosts(cluster):
    started, url, _ = cluster
    await anyio.sleep(LEASE / 2)  # a heartbeat of each host has read the others
    ids = await start_runs(started[0], 0, 60, 0.5)
    owners = Counter(owner for (owner,) in query(url, "SELECT owner FROM runs"))
    assert len(owners) == 3 and min(owners.values()) >= 5, owners
    await wait_all_finished(url, len(ids), 60)
    assert Counter(s for (s,) in query(url, "SELECT status FROM runs")) == {"succeeded": 60}


async def test_a_host_restarted_on_its_data_dir_after_a_kill_resumes_its_runs_at_once(
    tmp_path, pg_url
):
    (host,) = hosts(tmp_path, pg_url, 1, tmp_path / "fx.log")
    host.start()
    try:
        ids = await start_runs(host, 0, 5, 0.5)
        await anyio.sleep(0.3)
        host.kill()
        host.start()  # the same data dir: the same host id, its runs are still its own
        listening_at = time.time()
        await wait_all_finished(pg_url, len(ids), 30)
        recovered = query(pg_url, "SELECT max(ts) FROM events WHERE type = 'run.recovered'")
        assert recovered[0][0] <= listening_at  # at its start, before it listened: no lease
        assert Counter(s for (s,) in query(pg_url, "SELECT status FROM runs")) == {"succeeded": 5}
    finally:
        host.stop()


def plait_runs(host: HostProcess, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``plait runs ...`` on the shared store, from a data dir no host uses."""
    data_dir.mkdir(exist_ok=True)
    return subprocess.run(
        [
            *PLAIT,
            "runs",
            *args,
            "--data-dir",
            str(data_dir),
            "--config",
            str(host.tmp / "plait.toml"),
        ],
        capture_output=True,
        text=True,
        cwd=host.tmp,
        env=host.environment(),
        timeout=60,
    )


async def test_plait_runs_without_a_host_controls_runs_through_their_owner(cluster, tmp_path):
    started, url, _ = cluster
    owner = started[1]
    run_id = (await owner.call("runs/start", {"workflow": "gate"}))["runId"]
    elsewhere = tmp_path / "cli"
    listed = await anyio.to_thread.run_sync(lambda: plait_runs(owner, elsewhere, "list", "--json"))
    assert listed.returncode == 0, listed.stderr
    (shown,) = json.loads(listed.stdout)["runs"]
    assert shown["id"] == run_id and "host" not in shown  # its host is live: not "stopped"
    signalled = await anyio.to_thread.run_sync(
        lambda: plait_runs(owner, elsewhere, "signal", run_id, "go", "--data", '"cli"')
    )
    assert signalled.returncode == 0, signalled.stderr
    done = await owner.wait_run(run_id)
    assert done["outputs"] == {"got": "cli"}
    rerun = await anyio.to_thread.run_sync(
        lambda: plait_runs(owner, elsewhere, "rerun", run_id, "after", "--json")
    )
    assert rerun.returncode == 0, rerun.stderr
    new_id = json.loads(rerun.stdout)["run"]["id"]
    assert new_id != run_id
    again = await owner.wait_run(new_id)  # made and run by a host, not by the command
    assert again["status"] == "succeeded" and again["outputs"] == {"got": "cli"}
    names = {name for (name,) in query(url, "SELECT name FROM hosts")}
    assert len(names) == 3  # the command took no place among the hosts
    left = (await owner.call("runs/start", {"workflow": "gate"}))["runId"]
    for host in started:
        host.stop()  # every host gone: nobody to do what the command asks
    refused = await anyio.to_thread.run_sync(lambda: plait_runs(owner, elsewhere, "cancel", left))
    assert refused.returncode != 0
    assert f"no running host owns run {left}" in refused.stderr
    assert "Traceback" not in refused.stderr
