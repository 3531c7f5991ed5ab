"""Tool calls on a real Dask cluster: a ``distributed.LocalCluster`` of two worker processes,
started once for the module, and plait hosts sending calls to it through ``[executors.dask]``.

Nothing is mocked: the workers are processes of their own (their pids are not the host's), a
worker is killed with SIGKILL while it runs a call, runs are cancelled and time out while their
call runs on the cluster, and a host stops and another resumes its run on the same data dir.
The scheduler runs a task again on another worker ``allowed-failures`` times before it gives
up; the cluster here allows none, so that a killed worker reaches plait at once.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from plait.testing import memory_config, started_host

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes of one thread each; this folder on their path (for dask_tools)."""
    dask = pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    sys.path.insert(0, str(HERE))  # inherited by the workers, which import dask_tools by name
    try:
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            cluster = distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
            )
        admin = distributed.Client(cluster, set_as_default=False)
        try:
            yield Cluster(cluster, admin)
        finally:
            admin.close()
            cluster.close()
    finally:
        sys.path.remove(str(HERE))


class Cluster:
    """The cluster and a client of the test's own, to look at the scheduler and workers."""

    def __init__(self, cluster, admin):
        self.cluster = cluster
        self.admin = admin
        self.address = cluster.scheduler_address

    async def worker_pids(self) -> set[int]:
        pids = await anyio.to_thread.run_sync(self.admin.run, os.getpid)
        return set(pids.values())

    async def tasks(self, prefix: str = "plait-") -> dict[str, str]:
        """The scheduler's tasks (key: state) whose key starts with ``prefix``."""

        def states(dask_scheduler):
            return {k: ts.state for k, ts in dask_scheduler.tasks.items() if k.startswith(prefix)}

        return await anyio.to_thread.run_sync(self.admin.run_on_scheduler, states)

    async def workers_ready(self, n: int = 2) -> None:
        await anyio.to_thread.run_sync(lambda: self.admin.wait_for_workers(n, timeout=30))


@pytest.fixture
def tools():
    return importlib.import_module("dask_tools")


def config(cluster, **tables):
    return memory_config(executors={"dask": {"address": cluster.address}}, **tables)


async def until(check, timeout=20.0, every=0.05):
    """Poll ``check`` (sync or async) until it returns something truthy; return that."""
    with anyio.fail_after(timeout):
        while True:
            result = check()
            if hasattr(result, "__await__"):
                result = await result
            if result:
                return result
            await anyio.sleep(every)


def errors_of(run, kind):
    return [e.data for e in run.events if e.type == kind]


async def test_tool_steps_run_on_the_workers(cluster, tools):
    workflow = {
        "name": "where",
        "steps": [
            {"id": "tool_says", "tool": "dask.pid"},
            {"id": "step_says", "tool": "local.pid", "executor": "dask"},
            {"id": "host", "tool": "local.pid"},
            {"id": "coroutine", "tool": "dask.async_pid", "with": {"x": 21}},
        ],
    }
    async with started_host(config=config(cluster), plugins=[tools], workflows=[workflow]) as host:
        run = await host.wait(await host.start_run("where"))
    assert run.status == "succeeded", run.error
    workers = await cluster.worker_pids()
    assert os.getpid() not in workers
    assert run.steps["tool_says"].output in workers
    assert run.steps["step_says"].output in workers
    assert run.steps["host"].output == os.getpid()
    assert run.steps["coroutine"].output["double"] == 42
    assert run.steps["coroutine"].output["pid"] in workers


async def test_the_functions_own_errors_come_back_as_tool_errors(cluster, tools):
    workflow = {
        "name": "errors",
        "defaults": {"retry": {"attempts": 3, "base": 0.01}},
        "steps": [
            {"id": "raises", "tool": "dask.boom", "with": {"message": "bad input"}},
            {"id": "refuses", "tool": "dask.refuse"},
        ],
        "outputs": {},
    }
    for step in workflow["steps"]:
        step["on_error"] = "continue"
    async with started_host(config=config(cluster), plugins=[tools], workflows=[workflow]) as host:
        run = await host.wait(await host.start_run("errors"))
    raised, refused = run.steps["raises"], run.steps["refuses"]
    assert raised.status == refused.status == "failed"
    assert raised.attempts == 3  # a plain exception is retryable, as in the host
    assert raised.error["type"] == "tool"
    assert raised.error["message"] == (
        "tool 'dask.boom': ValueError: bad input (plugin 'dask_tools') (on executor 'dask')"
    )
    assert refused.attempts == 1  # the plait error crossed the pickle as it was: not retryable
    assert refused.error == {"type": "tool", "message": "tool 'dask.refuse': not today"}


async def test_a_cached_result_never_goes_to_the_cluster(cluster, tools, tmp_path):
    folder = tmp_path / "calls"
    folder.mkdir()
    step = {
        "tool": "dask.counted",
        "with": {"folder": str(folder), "seconds": 0},
        "cache": True,
    }
    workflow = {
        "name": "cached",
        "steps": [{"id": "a", **step}, {"id": "b", **step, "needs": ["a"]}],
    }
    cached = memory_config(
        host={"data_dir": str(tmp_path / "data")},
        store={"durable": False},
        executors={"dask": {"address": cluster.address}},
    )
    async with started_host(config=cached, plugins=[tools], workflows=[workflow]) as host:
        run = await host.wait(await host.start_run("cached"))
    assert run.status == "succeeded", run.error
    assert run.steps["a"].output == run.steps["b"].output in await cluster.worker_pids()
    assert [e.step for e in run.events if e.type == "step.cached"] == ["b"]
    assert len((folder / "runs").read_text().splitlines()) == 1


async def kill_attempt(folder: Path, attempt: int) -> int:
    """Kill (SIGKILL) the worker process running ``attempt`` once it has started; its pid."""
    marker = folder / f"attempt-{attempt}.pid"
    pid = int(await until(lambda: marker.is_file() and marker.read_text()))
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.mark.parametrize("attempts", [2, 1])
async def test_a_worker_killed_mid_call_is_retried_per_the_policy(
    cluster, tools, tmp_path, attempts
):
    await cluster.workers_ready()
    workflow = {
        "name": "killed",
        "steps": [
            {
                "id": "heavy",
                "tool": "dask.attempt_pid",
                "with": {"folder": str(tmp_path), "seconds": 1.5},
                "retry": {"attempts": attempts, "base": 0.05},
            }
        ],
        "outputs": {"pid": "${steps.heavy.output}"},
    }
    async with started_host(config=config(cluster), plugins=[tools], workflows=[workflow]) as host:
        run_id = await host.start_run("killed")
        killed = await kill_attempt(tmp_path, 1)
        with anyio.fail_after(30):
            run = await host.wait(run_id)
    retries = errors_of(run, "step.retrying")
    if attempts == 1:
        assert run.status == "failed"
        assert run.error["type"] == "executor"
        message = run.error["message"]
        assert message.startswith("tool 'dask.attempt_pid': executor 'dask': task plait-")
        assert "every worker that ran it died" in message and "KilledWorker" not in message
        assert retries == []
        return
    assert run.status == "succeeded", run.error
    assert run.steps["heavy"].attempts == 2
    assert [r["error"]["type"] for r in retries] == ["executor"]
    assert "died" in retries[0]["error"]["message"]
    assert run.outputs["pid"] != killed
    assert int((tmp_path / "attempt-2.pid").read_text()) == run.outputs["pid"]
    await cluster.workers_ready()  # the nanny starts a new worker in place of the killed one
    assert run.outputs["pid"] in await cluster.worker_pids() - {killed}


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_cancelling_the_step_cancels_its_task_on_the_cluster(cluster, tools, tmp_path, how):
    step = {"id": "heavy", "tool": "dask.counted", "with": {"folder": str(tmp_path), "seconds": 30}}
    if how == "timeout":
        step["timeout"] = 1
    workflow = {"name": "stopped", "steps": [step]}
    try:
        async with started_host(
            config=config(cluster), plugins=[tools], workflows=[workflow]
        ) as host:
            run_id = await host.start_run("stopped")
            await until(lambda: (tmp_path / "runs").is_file())  # it runs on a worker
            (key, state), *more = (await cluster.tasks("plait-dask.counted-")).items()
            assert more == [] and state == "processing"
            began = time.monotonic()
            if how == "cancel":
                await host.cancel_run(run_id)
            with anyio.fail_after(10):
                run = await host.wait(run_id)
            # the host let go of it at once, and the scheduler forgot the task
            await until(lambda: _without(cluster, key), timeout=5)
            assert time.monotonic() - began < (3 if how == "cancel" else 4)
    finally:
        (tmp_path / "stop").write_text("")  # the thread on the worker: end it for the next test
    if how == "cancel":
        assert run.status == "cancelled"
        assert run.steps["heavy"].status == "cancelled"
    else:
        assert run.status == "failed"
        assert run.error["type"] == "timeout"


async def _without(cluster, key):
    return key not in await cluster.tasks()


async def test_the_host_resuming_a_run_finds_its_task_still_running(cluster, tools, tmp_path):
    """The key of a call is the step attempt's (and its arguments'): a host that stops leaves
    its task running on the cluster, and the next host, resuming the run as the same attempt,
    submits the same key and gets that task's value; the function ran once."""
    folder = tmp_path / "calls"
    folder.mkdir()
    durable = memory_config(
        host={"data_dir": str(tmp_path / "data")},
        executors={"dask": {"address": cluster.address}},
    )
    step = {"id": "heavy", "tool": "dask.counted", "with": {"folder": str(folder), "seconds": 2}}
    async with started_host(
        config=durable, plugins=[tools], workflows=[{"name": "resumed", "steps": [step]}]
    ) as host:
        run_id = await host.start_run("resumed")
        await until(lambda: (folder / "runs").is_file())
        ((key, state),) = (await cluster.tasks("plait-dask.counted-")).items()
        assert state == "processing"
    assert (await cluster.tasks()).get(key) == "processing", "the stopped host's task was cancelled"
    async with started_host(config=durable, plugins=[tools]) as host:
        assert [r.id for r in host.recovered] == [run_id]
        with anyio.fail_after(20):
            run = await host.wait(run_id)
    assert run.status == "succeeded", run.error
    assert (folder / "runs").read_text().splitlines() == [str(run.steps["heavy"].output)]
    started = [e.data for e in run.events if e.type == "step.started"]
    assert [(s["attempt"], s.get("recovered")) for s in started] == [(1, None), (1, True)]
    await until(lambda: _without(cluster, key), timeout=5)  # released once it was handed back


async def test_a_local_cluster_is_started_only_when_asked_and_stopped_with_the_host(cluster, tools):
    """``local_cluster = true`` (development): the first call starts worker processes on this
    machine, and the host's stop closes them."""
    local = memory_config(executors={"dask": {"local_cluster": True, "n_workers": 1}})
    workflow = {"name": "local", "steps": [{"id": "a", "tool": "local.pid", "executor": "dask"}]}
    async with started_host(config=local, plugins=[tools], workflows=[workflow]) as host:
        executor = host.engine.tools.executors.get("dask", "local.pid")
        assert executor._cluster is None  # nothing started before a call needs it
        run = await host.wait(await host.start_run("local"))
        assert run.status == "succeeded", run.error
        worker = run.steps["a"].output
        assert worker != os.getpid() and worker not in await cluster.worker_pids()
        assert executor._cluster is not None
    assert executor._cluster is None and executor._client is None
    await until(lambda: not _alive(worker), timeout=10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
