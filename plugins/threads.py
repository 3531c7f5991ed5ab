"""Blocking plugin code on threads of its own, which a timeout can abandon and a stop ignores.

anyio's worker threads are not daemons: a blocking tool that never returns (a hung socket,
an endless loop) keeps one forever, and the interpreter waits for it at exit, so the host
could never stop. A blocking call here runs on a daemon thread of its own: the awaiting step
can be cancelled (its timeout, its run cancelled, the host stopping) and simply stops
waiting; the thread is abandoned, counted, and dies with the process.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

__all__ = ["abandoned_threads", "run_blocking"]

T = TypeVar("T")

_abandoned = 0
_abandoned_lock = threading.Lock()


def abandoned_threads() -> int:
    """Blocking calls given up on (cancelled or timed out) whose thread has not ended yet."""
    return _abandoned


async def run_blocking(fn: Callable[[], T], *, name: str = "plait blocking call") -> T:
    """Run ``fn`` on a daemon thread and return its result (or raise what it raised).

    Threads at once are bounded by anyio's default thread limiter, as ``to_thread`` would.
    Cancelling the caller stops the wait at once; the thread runs on, abandoned.
    """
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    outcome: list[Any] = []
    abandoned = False
    context = contextvars.copy_context()

    def work() -> None:
        global _abandoned
        try:
            outcome.append((True, context.run(fn)))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller as is
            outcome.append((False, exc))
        finally:
            with _abandoned_lock:
                if abandoned:
                    _abandoned -= 1
            try:
                loop.call_soon_threadsafe(done.set)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    async with anyio.to_thread.current_default_thread_limiter():
        threading.Thread(target=work, name=name, daemon=True).start()
        try:
            await done.wait()
        except BaseException:
            with _abandoned_lock:
                if not outcome:
                    global _abandoned
                    abandoned = True
                    _abandoned += 1
            raise
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value
