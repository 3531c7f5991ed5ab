"""Tools the Dask tests send to a cluster's workers.

The workers import this module by its top-level name: the tests put this folder on
``sys.path`` before the cluster starts, and worker processes inherit the path. A plugin in
production is an installed package, importable on its workers the same way.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio

import plait


def pid(delay: float = 0.0) -> int:
    """The process running the call."""
    time.sleep(delay)
    return os.getpid()


async def async_pid(x: int) -> dict[str, int]:
    """An ``async`` tool: run to its end on an event loop of the worker's own."""
    await anyio.sleep(0.01)
    return {"pid": os.getpid(), "double": 2 * x}


def attempt_pid(folder: str, seconds: float, context: plait.ToolContext) -> int:
    """Write ``attempt-<n>.pid`` when it starts (for the test to kill), sleep, return the pid."""
    Path(folder, f"attempt-{context.attempt}.pid").write_text(str(os.getpid()))
    _sleep(folder, seconds)
    return os.getpid()


def counted(folder: str, seconds: float) -> int:
    """Append a line to ``runs`` when it starts, sleep, return the pid."""
    with Path(folder, "runs").open("a") as f:
        f.write(f"{os.getpid()}\n")
    _sleep(folder, seconds)
    return os.getpid()


def boom(message: str) -> None:
    """A tool whose function raises."""
    raise ValueError(message)


def refuse() -> None:
    """A tool that fails for good: a plait error, pickled back to the host as it is."""
    raise plait.ToolFailed("dask.refuse", "not today", retryable=False)


def _sleep(folder: str, seconds: float) -> None:
    """Sleep, but stop early once the test writes ``stop`` (a thread on a worker cannot be
    stopped from outside: a cancelled call's function runs on, so the tests end theirs)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and not Path(folder, "stop").exists():
        time.sleep(0.02)


@plait.hookimpl
def register_tools(register):
    register(pid, "dask.pid", executor="dask", blocking=False)
    register(pid, "local.pid", blocking=False)
    register(async_pid, "dask.async_pid", executor="dask")
    register(attempt_pid, "dask.attempt_pid", executor="dask")
    register(counted, "dask.counted", executor="dask")
    register(boom, "dask.boom", executor="dask")
    register(refuse, "dask.refuse", executor="dask")
