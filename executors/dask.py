"""The ``dask`` executor: tool calls run on a Dask cluster's workers (``distributed``).

Configured by ``[executors.dask]`` (or any ``[executors.<name>]`` with ``provider = "dask"``)::

    [executors.dask]
    address = "tcp://scheduler:8786"   # the scheduler; or local_cluster = true (development)
    connect_timeout = 10               # seconds to reach it
    resources = {GPU = 1}              # what each call needs of a worker (worker resources)

A call is submitted with the Dask key plait derives from the step attempt and the arguments
(``ToolJob.key``), and kept alive on the scheduler if the host goes away
(``fire_and_forget``): the host that resumes the run submits the same key and finds the task
still running (or runs it again when it had ended meanwhile). Cancelling the step (its run
cancelled, its timeout) cancels the task on the scheduler; a Python function already running
on a worker runs to its end there (a thread cannot be stopped) and its value is dropped. A
worker that dies while it runs the call makes the step fail with ``ExecutorFailed`` (error
type ``executor``), which its retry policy retries; note that the scheduler itself first runs
a task again on another worker up to ``distributed.scheduler.allowed-failures`` times (3 by
default) before it gives up with ``KilledWorker``.

``distributed`` is imported when the first call runs, off the event loop: a host that never
sends a call to Dask never loads it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from plait.errors import ExecutorFailed
from plait.plugins import hookimpl
from plait.plugins.types import RegisterExecutor, ToolJob, validation_problems

__all__ = ["DaskExecutor", "DaskProvider", "DaskSettings"]

log = logging.getLogger("plait.executors.dask")

CANCEL_SECONDS = 5.0
"""How long cancelling a call waits for the scheduler to hear of it."""
CLOSE_SECONDS = 10.0
"""How long closing waits for the client (and a local cluster) to close."""


class DaskSettings(BaseModel):
    """The keys of an ``[executors.<name>]`` table of the ``dask`` provider."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(None, min_length=1)
    """The scheduler's address: ``tcp://host:8786``, ``tls://...``, ``ws://...``."""
    local_cluster: bool = False
    """Start a cluster of worker processes on this machine (when the first call runs) instead
    of connecting to one: for development only."""
    n_workers: int = Field(2, ge=1)
    """Worker processes of the local cluster."""
    threads_per_worker: int = Field(1, ge=1)
    """Threads of each worker of the local cluster."""
    connect_timeout: float = Field(10.0, gt=0)
    """Seconds to reach the scheduler (or start the local cluster) before a call fails with a
    retryable ``ExecutorFailed``."""
    resources: dict[str, float] = Field(default_factory=dict)
    """Abstract resources each call holds on a worker (``{GPU = 1}``): only workers started
    with them run the calls."""

    @model_validator(mode="after")
    def _one_cluster(self) -> DaskSettings:
        if self.address is None and not self.local_cluster:
            raise ValueError(
                'no scheduler address: set address = "tcp://<scheduler>:8786" '
                "(or local_cluster = true to start a local cluster, for development only)"
            )
        if self.address is not None and self.local_cluster:
            raise ValueError("set address or local_cluster = true, not both")
        return self


class DaskProvider:
    """Makes ``dask`` executors from their tables."""

    name = "dask"

    def create(self, name: str, config: Mapping[str, Any]) -> DaskExecutor:
        """Check the table (nothing connects, nothing is imported)."""
        try:
            settings = DaskSettings.model_validate(dict(config))
        except ValidationError as exc:
            problems = [p.removeprefix("<table>: ") for p in validation_problems(exc)]
            raise ValueError("; ".join(problems)) from None
        return DaskExecutor(name, settings)


class DaskExecutor:
    """One Dask cluster: an asynchronous ``distributed.Client`` on the host's event loop,
    opened by the first call."""

    def __init__(self, name: str, settings: DaskSettings) -> None:
        self.name = name
        self.settings = settings
        self._client: Any = None
        self._cluster: Any = None
        self._opening: anyio.Lock | None = None
        self._detached = False

    @property
    def where(self) -> str:
        """The scheduler, as an error names it."""
        return self.settings.address or "the local cluster"

    async def run(self, job: ToolJob) -> Any:
        """Submit ``job`` under its key, wait for its value; cancel it if cancelled."""
        try:
            client = await self._connect()
        except (OSError, TimeoutError) as exc:
            raise ExecutorFailed(
                job.tool,
                self.name,
                f"cannot reach the Dask scheduler at {self.where}: {type(exc).__name__}: {exc}",
            ) from exc
        distributed = importlib.import_module("distributed")  # imported by _connect
        future = client.submit(
            job, key=job.key, pure=False, retries=0, resources=self.settings.resources or None
        )
        # The task outlives this host (a crash, a stop to resume later): the next host submits
        # the same key and finds it. Cancelling the step cancels it, hold included (force).
        distributed.fire_and_forget(future)
        try:
            return await future
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._drop(client, future)
            raise
        except Exception as exc:
            status = future.status
            if status == "error" and not isinstance(exc, distributed.KilledWorker):
                raise  # the function's own exception: the tool failed
            if status == "error":
                lost = f"every worker that ran it died ({exc})"
            elif status == "cancelled":
                lost = f"the cluster cancelled it ({exc})"
            else:
                lost = f"its result was lost: {type(exc).__name__}: {exc}"
            raise ExecutorFailed(job.tool, self.name, f"task {job.key}: {lost}") from exc
        finally:
            if future.status != "pending":
                future.release()

    async def _drop(self, client: Any, future: Any) -> None:
        """The step was cancelled: cancel its task on the scheduler, or only let go of it when
        the host is stopping to resume its runs (the next host finds the task by its key)."""
        if self._detached:
            future.release()
            return
        with anyio.move_on_after(CANCEL_SECONDS):
            try:
                await client.cancel([future], force=True, reason="plait: the step was cancelled")
            except Exception as exc:  # noqa: BLE001 - the scheduler gone: nothing left to do
                log.warning("could not cancel task %s on %s: %s", future.key, self.where, exc)

    async def _connect(self) -> Any:
        client = self._client
        if client is not None and client.status not in ("closing", "closed"):
            return client
        if self._opening is None:
            self._opening = anyio.Lock()
        async with self._opening:
            if self._client is None or self._client.status in ("closing", "closed"):
                self._client = await self._open()
            return self._client

    async def _open(self) -> Any:
        """A connected client (and the local cluster it connects to, if configured)."""
        # distributed takes a while to import: not on the event loop, and only now
        distributed = await anyio.to_thread.run_sync(importlib.import_module, "distributed")
        timeout = self.settings.connect_timeout
        address: Any = self.settings.address
        if self.settings.local_cluster:
            if self._cluster is None:
                cluster = distributed.LocalCluster(
                    asynchronous=True,
                    processes=True,
                    n_workers=self.settings.n_workers,
                    threads_per_worker=self.settings.threads_per_worker,
                    dashboard_address=":0",  # a free port: two hosts on a machine both start
                )
                await _started(cluster, timeout)
                self._cluster = cluster
                log.info(
                    "executor %r started a local Dask cluster of %d workers (dashboard: %s)",
                    self.name,
                    self.settings.n_workers,
                    cluster.dashboard_link,
                )
            address = self._cluster
        client = distributed.Client(
            address, asynchronous=True, timeout=timeout, set_as_default=False
        )
        await _started(client, timeout)
        log.info("executor %r connected to the Dask scheduler at %s", self.name, self.where)
        return client

    def detach(self) -> None:
        """From now on a cancelled call's task is left running (the host resumes later)."""
        self._detached = True

    async def aclose(self) -> None:
        """Close the client, then the local cluster if this executor started one."""
        client, self._client = self._client, None
        cluster, self._cluster = self._cluster, None
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_SECONDS):
            if client is not None:
                await client.close()
            if cluster is not None:
                await cluster.close()


async def _started(thing: Any, timeout: float) -> None:
    """Await a client or cluster starting, within ``timeout``; close it if that fails."""
    try:
        with anyio.fail_after(timeout):
            await thing
    except BaseException:
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_SECONDS):
            await thing.close()
        raise


@hookimpl
def register_executors(register: RegisterExecutor) -> None:
    """Register the ``dask`` executor provider."""
    register(DaskProvider())
