"""Reading and writing JSON-RPC messages: strict JSON in, standard JSON out.

Python's ``json`` accepts ``NaN`` and ``Infinity`` and parses integers of any length; the wire
must not. Nesting is bounded before parsing, so a deeply nested message costs a scan, not a
recursion.

orjson is the fast path both ways. It is strict where the wire must be (no ``NaN``, no
``Infinity``, no overflowing floats), but it turns integers beyond 64 bits into floats and
declines what the standard library takes (lone surrogates, integers beyond 64 bits on the way
out): texts with a long digit run, and anything orjson declines, go through the strict
standard-library path, so the answer is always the same as without orjson.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from plait.rpc.errors import InternalError, ParseError
from plait.values import MAX_INT_DIGITS, dumps

__all__ = ["MAX_DEPTH", "MAX_DIGITS", "decode", "encode"]

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in a message."""
MAX_DIGITS = MAX_INT_DIGITS
"""Most digits of an integer literal accepted, its sign aside (Python's own int-to-string
limit): exactly the integers :func:`plait.values.json_problem` lets out, so what the host
writes it also reads."""


def _refuse_constant(name: str) -> Any:
    raise ValueError("non-finite number constants are not JSON")


def _parse_int(text: str) -> int:
    if len(text) - text.startswith("-") > MAX_DIGITS:
        raise ValueError("number too long")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 overflows to infinity
        raise ValueError("number out of range")
    return value


_DECODER = json.JSONDecoder(
    parse_constant=_refuse_constant, parse_int=_parse_int, parse_float=_parse_float
)
_LONG_NUMBER = re.compile(r"\d{19}")
"""A digit run orjson might read as a float (integers beyond 64 bits)."""
_RAW_SURROGATE = re.compile("[\ud800-\udfff]")
"""A surrogate code unit in the text itself (not as an escape): no UTF-8 text holds one."""


def _too_deep(text: str, limit: int) -> bool:
    """Bracket depth outside strings, in one pass without recursion."""
    depth = 0
    in_string = False
    escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def decode(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse one message; raise :class:`ParseError` for anything that is not strict JSON."""
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError(data={"reason": "not UTF-8"}) from None
    # Cheap pre-check: only texts with many brackets can be too deep.
    if text.count("[") + text.count("{") > max_depth and _too_deep(text, max_depth):
        raise ParseError(data={"reason": f"nested deeper than {max_depth}"})
    if _LONG_NUMBER.search(text) is None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # the standard library decides, and says why
    if _RAW_SURROGATE.search(text) is not None:  # (orjson refuses such text as well)
        # As bytes that are not UTF-8 would be: a transport never hands over such text, and
        # read as is, a pair of them would make a string JSON cannot keep.
        raise ParseError(data={"reason": "not UTF-8: a surrogate outside a \\u escape"})
    try:
        return _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise ParseError(data={"reason": reason[:200]}) from None


def encode(message: Any) -> str:
    """Serialize a message as standard JSON; raise :class:`InternalError` if it cannot be.

    Results are checked for non-finite numbers before they get here (orjson would write
    ``null`` for them).
    """
    try:
        return dumps(message)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InternalError(data={"reason": f"result is not JSON: {type(exc).__name__}"}) from None
