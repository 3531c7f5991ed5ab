"""What counts as a JSON value, checked cheaply where plugin results enter run state, and
the one way plait writes JSON text.

"A JSON value" here means one that plait can keep *exactly*: written by :func:`dumps` (the
store) or by the wire's codec and read back, it is equal to what went in. So besides the types,
non-finite numbers (orjson would write ``null``), integers past :data:`MAX_INT_DIGITS` digits
(Python refuses to write them as text, and the wire refuses to read them), non-string mapping
keys, nesting past :data:`MAX_NESTING` levels and strings holding a UTF-16 surrogate pair as two
code units (JSON text writes it ``\\ud83d\\ude00``, which every reader joins into one
character) are refused. A lone surrogate is kept: it is written as its escape.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
from typing import Any

import orjson

__all__ = [
    "BOUND",
    "MAX_INT_DIGITS",
    "MAX_NESTING",
    "bounded",
    "dumps",
    "json_location",
    "json_problem",
    "weight",
]

MAX_INT_DIGITS = 4300
"""Most digits of an integer that is a JSON value (Python's default int-to-string limit; the
wire's codec reads no longer number)."""
MAX_NESTING = 200
"""Deepest nesting of lists and mappings in a JSON value."""

_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))
_SURROGATE = re.compile("[\ud800-\udfff]")
"""A lone surrogate: a valid JSON string escape (``\\ud800``), but not encodable as UTF-8."""
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")


def _escape_surrogate(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def dumps(value: Any) -> str:
    """Compact, standard JSON text: orjson first (an order of magnitude faster), the standard
    library for what orjson declines (integers beyond 64 bits, lone surrogates).

    The text is always encodable as UTF-8: a lone surrogate in a string (which JSON text may
    carry as ``\\ud800``) is written as that escape, so it reads back as it was.

    Non-finite floats are written as ``null`` by orjson: callers check values with
    :func:`json_problem` where they enter, before they are written.

    Raises:
        TypeError, ValueError, RecursionError: ``value`` is not JSON.
    """
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        pass
    text = _ENCODER.encode(value)
    # A surrogate can only appear inside a string literal, so escaping it there is exact.
    return _SURROGATE.sub(_escape_surrogate, text) if _SURROGATE.search(text) else text


_FAST_INT = 1 << 63
"""Integers below this in magnitude need no digit count."""


@functools.lru_cache(maxsize=4)
def _int_bound(digits: int) -> int:
    return 10**digits


def _int_problem(value: int) -> str | None:
    if -_FAST_INT < value < _FAST_INT:
        return None
    # Python's own limit, if a program set it lower (0 means none), is the one str() obeys.
    limit = min(MAX_INT_DIGITS, sys.get_int_max_str_digits() or MAX_INT_DIGITS)
    if -_int_bound(limit) < value < _int_bound(limit):
        return None
    digits = int(value.bit_length() * math.log10(2)) + 1
    return f"an integer of about {digits:,} digits is over the {limit:,}-digit limit"


def json_location(value: Any) -> tuple[str, str] | None:
    """Where and why ``value`` is not a JSON value plait can keep exactly, or ``None``.

    The place is a path relative to ``value`` in the notation of workflow paths (``.a[0].b``;
    empty for ``value`` itself), the reason a short phrase.
    """
    return _locate(value, 0)


def json_problem(value: Any) -> str | None:
    """Why ``value`` cannot be stored as JSON and read back unchanged, or ``None`` when it can.

    Tuples count as lists; NaN and infinities are refused because the wire never carries them,
    integers past :data:`MAX_INT_DIGITS` digits because they cannot be written as text.
    """
    found = _locate(value, 0)
    if found is None:
        return None
    path, problem = found
    return f"{path.removeprefix('.')}: {problem}" if path else problem


def _pair_problem(text: str) -> str | None:
    """Why a non-ASCII ``text`` cannot be kept (a surrogate pair in it), or ``None``."""
    pair = _SURROGATE_PAIR.search(text)
    if pair is None:
        return None
    joined = pair.group().encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    escapes = "".join(f"\\u{ord(c):04x}" for c in pair.group())
    return (
        f"holds the surrogate pair {escapes} as two code units, which JSON reads back as "
        f"one character (U+{ord(joined):04X})"
    )


def _scalar_ok(value: Any, kind: type) -> bool:
    """The common scalars, decided without a call: True when ``value`` is surely fine."""
    if kind is str:
        return value.isascii() or _SURROGATE_PAIR.search(value) is None
    if kind is bool or value is None:
        return True
    if kind is int:
        return -_FAST_INT < value < _FAST_INT
    if kind is float:
        return math.isfinite(value)
    return False


def _locate(value: Any, depth: int) -> tuple[str, str] | None:
    # Hot: every step output and tool result passes here. Scalars inside containers are
    # settled inline; only what is not surely fine takes the slow path below.
    kind = type(value)
    if _scalar_ok(value, kind):
        return None
    if kind is dict or (kind is not str and isinstance(value, dict)):
        if depth >= MAX_NESTING:
            return "", f"nested more than {MAX_NESTING} levels deep"
        for k, v in value.items():
            if type(k) is not str or not k.isascii():
                if not isinstance(k, str):
                    return "", f"mapping key {k!r} is not a string"
                if (problem := _pair_problem(k)) is not None:
                    return "", f"mapping key {k!r} {problem}"
            if _scalar_ok(v, type(v)):
                continue
            found = _locate(v, depth + 1)
            if found is not None:
                return f".{k}{found[0]}", found[1]
        return None
    if kind is list or kind is tuple or isinstance(value, list | tuple):
        if depth >= MAX_NESTING:
            return "", f"nested more than {MAX_NESTING} levels deep"
        for i, v in enumerate(value):
            if _scalar_ok(v, type(v)):
                continue
            found = _locate(v, depth + 1)
            if found is not None:
                return f"[{i}]{found[0]}", found[1]
        return None
    return _scalar_problem(value)


def _scalar_problem(value: Any) -> tuple[str, str] | None:
    """The slow path of a scalar: long integers, non-finite floats, strings with a surrogate
    pair, subclasses of the scalar types (an IntEnum, a str subclass: written as their value),
    and what is no JSON at all."""
    if isinstance(value, str):
        problem = _pair_problem(value) if not value.isascii() else None
        return None if problem is None else ("", f"a string {problem}")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        problem = _int_problem(value)
        return None if problem is None else ("", problem)
    if isinstance(value, float):
        return None if math.isfinite(value) else ("", f"{value} is not a finite number")
    return "", f"got {type(value).__name__}"


def weight(value: Any, cap: int) -> int:
    """Serialized size estimate: characters, plus one per container item; stops once over ``cap``.

    Shared references count once per use, as serializing would; the walk stays bounded by cap.
    """
    total, stack = 0, [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is str:
            total += len(item)
        elif kind is list or kind is tuple:
            total += 1 + len(item)
            extend(item)
        elif kind is dict:
            total += 1 + len(item)
            extend(item.keys())
            extend(item.values())
        elif kind is int:
            total += 1 + item.bit_length() // 8
        elif isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, list | tuple | set | frozenset | dict):
            total += 1 + len(item)
            extend(item.items() if isinstance(item, dict) else item)
        else:
            total += 1
        if total > cap:
            return total
    return total


BOUND = 8192
"""Characters of JSON a value may take where it is shown rather than kept: in an event that
records what a step received, in a diff of two runs."""
PREVIEW = 200


def bounded(value: Any, limit: int = BOUND) -> Any:
    """``value``, or where it is too large to show, a stand-in saying so.

    A mapping is bounded field by field (a tool's arguments: one huge document among small
    fields keeps the small ones readable); anything else whole. The stand-in is
    ``{"$truncated": true, "size": <characters of its JSON>, "preview": <the first 200>}``.
    Cheap when nothing is large: sizes are estimated, and only a value over the limit is
    written out.
    """
    if type(value) is dict:
        if weight(value, limit) <= limit:
            return value
        return {key: _bounded_one(item, limit) for key, item in value.items()}
    return _bounded_one(value, limit)


def _bounded_one(value: Any, limit: int) -> Any:
    if weight(value, limit) <= limit:
        return value
    text = dumps(value)
    if len(text) <= limit:
        return value
    return {"$truncated": True, "size": len(text), "preview": text[:PREVIEW]}
