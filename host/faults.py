"""Telling a plugin's failure from plait's own cancellation.

Plugin code (a step type's ``run``, a tool, an agent, an observer) may raise anything,
``BaseException`` subclasses included: a custom one, ``GeneratorExit``, even an
``asyncio.CancelledError`` of its own. Any of those fails only the step or call that ran the
code. The one exception that must go on propagating is the cancellation plait itself
delivered (a cancel scope: a run cancelled, a timeout, the host stopping); on asyncio that is
a ``CancelledError`` while the current task is being cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

__all__ = ["is_plugin_failure", "log_plugin_failure", "new_correlation_id"]

failure_log = logging.getLogger("plait.failures")
"""Where the tracebacks of plugin code's unexpected exceptions go (ERROR, with ``exc_info``)."""


def is_plugin_failure(exc: BaseException) -> bool:
    """Whether ``exc``, raised out of plugin code, is the plugin's own failure (fail its step)
    rather than a cancellation plait delivered (let it propagate)."""
    if isinstance(exc, asyncio.CancelledError):
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no running loop: nothing of plait's can be cancelling it
            return True
        return task is None or task.cancelling() == 0
    return True


def new_correlation_id() -> str:
    """A short random id tying an error a client sees to the log line that explains it."""
    return uuid.uuid4().hex[:16]


def log_plugin_failure(
    exc: BaseException,
    what: str,
    *,
    plugin: str | None = None,
    run_id: str | None = None,
    step: str | None = None,
) -> str:
    """Log the full traceback of ``exc``, raised by plugin code, and return its correlation id.

    The error a client reads says only ``ValueError: boom``; the traceback is what a plugin's
    author needs, and it must not reach the client (it may hold paths and values). So it goes to
    the host's log with the run, the step and the plugin, under an id the caller puts into the
    step error (``correlationId``), and one finds the other. For unexpected exceptions only: a
    plait error (a timeout, a tool's own error result, bad arguments) has its message and needs
    no traceback.

    Args:
        what: the code that raised, as the message names it (``tool 'git.diff'``).
    """
    correlation = new_correlation_id()
    failure_log.error(
        "%s raised %s: %s (run %s, step %s, plugin %s) [correlation %s]",
        what,
        type(exc).__name__,
        exc,
        run_id or "-",
        step or "-",
        plugin or "-",
        correlation,
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={"run_id": run_id, "step": step, "plugin": plugin, "correlation_id": correlation},
    )
    return correlation
