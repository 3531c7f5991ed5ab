"""Built-in tools: small, safe, general-purpose, registered through ``register_tools``.

They load exactly like a third-party plugin (this module is named in ``DEFAULT_PLUGINS`` and
can be disabled as ``plait.steps.stdtools``). File tools only read below the working directory.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from plait.plugins.hookspecs import hookimpl
from plait.plugins.types import RegisterTool

__all__ = ["register_tools"]

MAX_READ = 1 << 20
"""Largest file ``files.read`` returns, in bytes."""


def _inside_cwd(path: str) -> Path:
    root = Path.cwd().resolve()
    target = (root / path).resolve()
    if target != root and root not in target.parents:
        raise PermissionError(f"{path!r} is outside the working directory")
    return target


def files_list(pattern: str = "*", root: str = ".") -> list[str]:
    """Paths matching a glob pattern below ``root`` (relative to the working directory)."""
    base = _inside_cwd(root)
    cwd = Path.cwd().resolve()
    found = [p.resolve() for p in base.glob(pattern)]
    return sorted(str(p.relative_to(cwd)) for p in found if p == cwd or cwd in p.parents)


def files_read(path: str, max_bytes: int = 65536) -> str:
    """The text of a file below the working directory (at most ``max_bytes``)."""
    target = _inside_cwd(path)
    with target.open("rb") as fh:
        return fh.read(min(max_bytes, MAX_READ)).decode("utf-8", errors="replace")


def text_stats(text: str) -> dict[str, int]:
    """Characters, words and lines of a text."""
    return {"chars": len(text), "words": len(text.split()), "lines": text.count("\n") + 1}


def json_parse(text: str) -> Any:
    """Parse JSON text into a value."""
    return json.loads(text)


def math_sum(values: list[float]) -> float:
    """The sum of a list of numbers."""
    return float(sum(values))


def time_now() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(UTC).isoformat()


async def time_sleep(seconds: float) -> float:
    """Wait ``seconds`` (at most 3600) without blocking; returns the seconds slept."""
    seconds = max(0.0, min(float(seconds), 3600.0))
    start = time.monotonic()
    await anyio.sleep(seconds)
    return round(time.monotonic() - start, 3)


_failures: dict[str, int] = {}


def chaos_fail(key: str, times: int = 1, value: Any = "ok") -> Any:
    """Fail the first ``times`` calls for ``key`` in this process, then return ``value``.

    For demonstrating and testing retries and fallbacks.
    """
    seen = _failures.get(key, 0)
    _failures[key] = seen + 1
    if seen < times:
        raise RuntimeError(f"planned failure {seen + 1} of {times} for {key!r}")
    return value


@hookimpl
def register_tools(register: RegisterTool) -> None:
    """Register the built-in tools."""
    register(files_list, "files.list", blocking=True)
    register(files_read, "files.read", blocking=True)
    register(text_stats, "text.stats", cacheable=True, blocking=False)
    register(json_parse, "json.parse", cacheable=True, blocking=False)
    register(math_sum, "math.sum", cacheable=True, blocking=False)
    register(time_now, "time.now", cacheable=False, blocking=False)
    register(time_sleep, "time.sleep", cacheable=False)
    register(chaos_fail, "chaos.fail", cacheable=False, blocking=False)
