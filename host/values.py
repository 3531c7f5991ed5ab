"""What counts as a JSON value, checked cheaply where plugin results enter run state, and
the one way plait writes JSON text."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

__all__ = ["PLUGIN_ERRORS", "dumps", "json_problem"]

_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def dumps(value: Any) -> str:
    """Compact, standard JSON text: orjson first (an order of magnitude faster), the standard
    library for what orjson declines (integers beyond 64 bits).

    Raises:
        TypeError, ValueError, RecursionError: ``value`` is not JSON (NaN included).
    """
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        pass
    return _ENCODER.encode(value)


PLUGIN_ERRORS: tuple[type[BaseException], ...] = (Exception, SystemExit, KeyboardInterrupt)
"""What plugin code may raise that fails only its own step or call. Cancellation is not in it:
it always propagates."""

_SCALARS = (str, bool, int, type(None))


def json_problem(value: Any, _depth: int = 0) -> str | None:
    """Why ``value`` cannot be stored as JSON, or ``None`` when it can.

    Tuples count as lists; NaN and infinities are refused because the wire never carries them.
    """
    if isinstance(value, _SCALARS):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value} is not a finite number"
    if _depth > 200:
        return "nested more than 200 levels deep"
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"mapping key {k!r} is not a string"
            problem = json_problem(v, _depth + 1)
            if problem is not None:
                return f"{k}: {problem}"
        return None
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            problem = json_problem(v, _depth + 1)
            if problem is not None:
                return f"[{i}]: {problem}"
        return None
    return f"got {type(value).__name__}"
