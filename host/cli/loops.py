"""The event loop of ``plait serve`` and ``plait run``: asyncio's own, or uvloop's (``--loop``).

uvloop is optional (``pip install 'plait[fast]'``); ``auto``, the default, takes it when it is
installed. anyio's asyncio backend builds the loop: ``backend_options={"use_uvloop": True}``.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

from plait.errors import ConfigError

__all__ = ["LOOPS", "UVLOOP_MISSING", "backend_options", "running_loop", "uvloop_installed"]

LOOPS = ("auto", "asyncio", "uvloop")
"""The choices of ``--loop``."""
UVLOOP_MISSING = "uvloop is not installed: pip install 'plait[fast]'"


def uvloop_installed() -> bool:
    """Whether uvloop imports (imported for real: a module that is found but fails counts as
    missing)."""
    try:
        importlib.import_module("uvloop")
    except ImportError:
        return False
    return True


def backend_options(choice: str) -> dict[str, Any]:
    """``anyio.run``'s ``backend_options`` for ``--loop choice``.

    Raises :class:`ConfigError` (exit 2, one line) when ``uvloop`` is asked for by name and
    cannot be imported; ``auto`` then falls back to asyncio.
    """
    if choice not in LOOPS:
        raise ConfigError(f"--loop must be one of {', '.join(LOOPS)}, got {choice!r}")
    if choice == "asyncio":
        return {}
    if uvloop_installed():
        return {"use_uvloop": True}
    if choice == "uvloop":
        raise ConfigError(UVLOOP_MISSING)
    return {}


def running_loop() -> str:
    """``"uvloop"`` or ``"asyncio"``: the kind of the event loop this is called in (the
    top-level package of its class; ``"none"`` outside one)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return "none"
    return type(loop).__module__.partition(".")[0]
