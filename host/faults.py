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

__all__ = ["is_plugin_failure"]


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
