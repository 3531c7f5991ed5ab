"""Templates: ``${ expr }`` strings compiled once per workflow version, rendered in a sandbox.

A string holding ``${ expr }``, ``{{ }}``, ``{% %}`` or ``$root.path`` (``root`` one of
:data:`CONTEXT_ROOTS`) is a template; any other string is static and never touches Jinja. ``$$`` is
a literal ``$``. A string that is exactly one ``${expr}`` or one ``$root.path`` keeps the native
type of its value; anything else renders to a string.

Security (RELIABILITY 34-41). Rendering runs in :class:`PlaitSandbox`, an
``ImmutableSandboxedEnvironment`` with ``StrictUndefined``, no loader, no constant folding, and an
unsafe attribute that *raises* :class:`~plait.TemplateSecurityError` instead of rendering empty.
``include``/``import``/``extends`` raise before any loading. The context holds only what the caller
passes; unknown names are refused at compile time.

Limits are in-process guards, not a worker process: a subprocess per render would cost
milliseconds on the hot path of every step, so we bound the work itself instead.

* Before computing: ``*``, ``+``, ``%`` and ``**`` refuse results over ``max_output`` characters
  (or 32,768 bits for integers); padding/repeating string methods and filters (``center``,
  ``ljust``, ``zfill``, ``expandtabs``, ``replace``, ``join``, ``indent``, ``wordwrap``, format
  widths in ``%`` and ``str.format``) refuse sizes over ``max_output``; ``range`` is capped at
  ``max_range`` and ``lipsum`` at 100 paragraphs of 1,000 words.
* After computing: any string or container built by a call, filter or literal is at most
  ``max_output`` in size (deep, counting shared references once per use); rendered output and
  native results too. Data passed through by a plain path is not copied and not limited.
* Every ``for`` loop is rewritten to count iterations (``max_iterations`` per render) and charge
  its literal text; calls, attribute lookups and iterations check the ``max_seconds`` deadline;
  all characters produced during a render (including inside macros) are capped at 16x
  ``max_output``. Recursion and parse blowups become template errors.

A single built-in filter call on a value already at the size limit can still run past the
deadline by its own duration (we check between operations, never interrupt one).

Cost, measured with ``timeit`` on the development machine: ``render`` of a lone
``${steps.a.output.x}`` takes about 0.5 us (direct dict lookup, no Jinja); ``"pr-${inputs.pr}"``
about 1 us (also without Jinja); a string that needs Jinja (a filter, an operator) about 7 us.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import update_wrapper
from string import Formatter
from types import BuiltinMethodType
from typing import Any, NoReturn

from jinja2 import StrictUndefined, meta, nodes
from jinja2 import Template as JinjaTemplate
from jinja2 import TemplateSyntaxError as JinjaSyntaxError
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.parser import Parser
from jinja2.runtime import LoopContext, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum, object_type_repr
from jinja2.visitor import NodeTransformer

from plait.errors import (
    Issue,
    TemplateError,
    TemplateLimitError,
    TemplateSecurityError,
    TemplateSyntaxError,
)

__all__ = ["CONTEXT_ROOTS", "PlaitSandbox", "Template", "TemplateEngine", "TemplateLimits"]

_ROOT_ORDER = ("inputs", "steps", "vars", "item", "index", "run", "env")
CONTEXT_ROOTS: frozenset[str] = frozenset(_ROOT_ORDER)
"""The names a template may read; the render context holds these and nothing else."""

_NAME = "<template>"  # never derived from input (CVE-2024-56201)
_RESULT = "_plait_result"
_ITER, _CONCAT, _SIZE = "__plait_iter", "__plait_concat", "__plait_size"
_WORK_FACTOR = 16
_MAX_INT_BITS = 14_000  # about 4,200 digits: below Python's int-to-str limit
_MAX_DEPTH = 256
_SCALARS = (str, int, float, bool, type(None))
_ITERATING = frozenset(  # filters that do per-item Python work on their input
    "batch dictsort groupby join map max min reject rejectattr select selectattr slice sort sum"
    " unique".split()
)
_FALLBACK: Any = object()
_BUDGET: ContextVar[_Budget | None] = ContextVar("plait_template_budget", default=None)

_SHORTHAND = re.compile(r"\$([A-Za-z_]\w*)((?:\.[A-Za-z_]\w*|\[\d+\])*)")
_SPECIAL = re.compile(r"[${]")
_PERCENT = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")


@dataclass(frozen=True)
class TemplateLimits:
    """Bounds on one render; every one is configurable so hosts can report and tune them."""

    max_source: int = 64 * 1024
    max_output: int = 1024 * 1024
    max_iterations: int = 100_000
    max_seconds: float = 2.0
    max_range: int = 100_000


class _Budget:
    """What one render may still spend; lives in a contextvar so sandbox hooks can reach it."""

    __slots__ = ("deadline", "seconds", "iterations", "max_iterations", "produced", "max_produced")

    def __init__(self, limits: TemplateLimits) -> None:
        self.seconds = limits.max_seconds
        self.deadline = time.monotonic() + limits.max_seconds
        self.iterations = 0
        self.max_iterations = limits.max_iterations
        self.produced = 0
        self.max_produced = limits.max_output * _WORK_FACTOR

    def tick(self) -> None:
        """Fail once the wall-clock deadline has passed."""
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"template ran past its {self.seconds:g} s time limit")

    def charge(self, amount: int) -> None:
        """Count characters produced anywhere (macros and blocks buffer out of our sight)."""
        self.produced += amount
        if self.produced > self.max_produced:
            raise TemplateLimitError(
                f"template produced over {self.max_produced:,} characters in total"
            )

    def count(self, iterations: int) -> None:
        """Charge ``iterations`` at once (a filter about to walk a sized value)."""
        self.iterations += iterations
        if self.iterations > self.max_iterations:
            raise TemplateLimitError(f"template ran over {self.max_iterations:,} loop iterations")

    def iterate(self, iterable: Iterable[Any], literal: int) -> Iterator[Any]:
        """Yield from ``iterable`` while counting iterations and the loop body's literal text."""
        for item in iterable:
            self.count(1)
            if literal:
                self.charge(literal)
            self.tick()
            yield item


def _weight(value: Any, cap: int) -> int:
    """Serialized size estimate of ``value``; stops early once over ``cap`` (cost stays bounded)."""
    total, stack = 0, [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is str:
            total += len(item)
        elif kind is list or kind is tuple:
            total += 1
            extend(item)
        elif kind is dict:
            total += 1
            extend(item.keys())
            extend(item.values())
        elif kind is int:
            total += 1 + item.bit_length() // 8
        elif isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, list | tuple | set | frozenset | dict):
            total += 1
            extend(item.items() if isinstance(item, dict) else item)
        else:
            total += 1
        if total > cap:
            return total
    return total


def _describe(value: Any) -> str:
    if isinstance(value, float):
        return f"float {value!r}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"an integer of {value.bit_length():,} bits"
    return type(value).__name__


def _to_json(value: Any, depth: int = 0) -> Any:
    """A JSON copy of ``value`` (tuples become lists), or a TemplateError saying what is not."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int and value.bit_length() <= _MAX_INT_BITS:
        return value
    if kind is float and math.isfinite(value):
        return value
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    if depth > _MAX_DEPTH:
        raise TemplateLimitError(f"value is nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TemplateError(f"dict key {key!r} is not a string, so not a JSON value")
            out[str(key)] = _to_json(item, depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_to_json(item, depth + 1) for item in value]
    if isinstance(value, str):
        return str(value)  # Markup and other str subclasses
    if isinstance(value, int) and value.bit_length() <= _MAX_INT_BITS:
        return int(value)
    if isinstance(value, float) and math.isfinite(value):
        return float(value)
    raise TemplateError(f"template result is not a JSON value (got {_describe(value)})")


def _undefined(obj: Any, key: Any) -> TemplateError:
    what = "attribute" if isinstance(key, str) else "element"
    return TemplateError(f"undefined: {object_type_repr(obj)!r} has no {what} {key!r}")


def _lookup(context: Mapping[str, Any], root: str, keys: tuple[Any, ...]) -> Any:
    """Follow a plain path by dict key / list index; ``_FALLBACK`` when Jinja must decide."""
    try:
        obj = context[root]
    except KeyError:
        raise TemplateError(f"undefined: {root!r} is undefined") from None
    for key in keys:
        kind = type(obj)
        if kind is dict:
            try:
                obj = obj[key]
            except KeyError:
                raise _undefined(obj, key) from None
        elif kind is list and type(key) is int:
            try:
                obj = obj[key]
            except IndexError:
                raise _undefined(obj, key) from None
        else:
            return _FALLBACK
    kind = type(obj)
    return obj if kind in _SCALARS or kind is dict or kind is list else _FALLBACK


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002
    """Jinja's ``lipsum`` with bounded paragraphs and words, so it cannot build gigabytes."""
    if n > 100 or max > 1000 or min > 1000:
        raise TemplateLimitError("lipsum is limited to 100 paragraphs of at most 1,000 words")
    return generate_lorem_ipsum(n, html, min, max)


def _make_range(limit: int) -> Callable[..., range]:
    def range_(*args: int) -> range:
        """``range`` capped at ``max_range`` items."""
        rng = range(*args)
        try:
            size = len(rng)
        except OverflowError:
            size = limit + 1
        if size > limit:
            raise TemplateLimitError(f"range of {size:,} items is over the {limit:,} limit")
        return rng

    return range_


def _literal_len(body: list[nodes.Node]) -> int:
    """Literal text one loop iteration may emit (nested loops charge their own)."""
    total, stack = 0, list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, nodes.TemplateData):
            total += len(node.data)
        elif isinstance(node, nodes.For):
            stack.extend(node.else_)
        elif not isinstance(node, nodes.Macro | nodes.CallBlock):
            stack.extend(node.iter_child_nodes())
    return total


class _Guard(NodeTransformer):
    """Rewrites loops, ``~`` and container literals into calls of the budgeted internal filters."""

    def _filter(self, node: nodes.Expr, name: str, args: list[nodes.Expr]) -> nodes.Filter:
        return nodes.Filter(node, name, args, [], None, None, lineno=node.lineno)

    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: D102
        self.generic_visit(node)
        node.iter = self._filter(node.iter, _ITER, [nodes.Const(_literal_len(node.body))])
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:  # noqa: D102
        self.generic_visit(node)
        return self._filter(node.nodes[0], _CONCAT, node.nodes[1:])

    def visit_container(self, node: nodes.Expr) -> nodes.Node:  # noqa: D102
        self.generic_visit(node)
        if getattr(node, "ctx", "load") != "load":
            return node
        return self._filter(node, _SIZE, [])

    visit_List = visit_Tuple = visit_Dict = visit_container


class _GuardedFilters(dict):  # type: ignore[type-arg]
    """``env.filters`` that hands Jinja a size-guarded wrapper of each filter, plugins' included."""

    def __init__(self, env: PlaitSandbox, base: Mapping[str, Callable[..., Any]]) -> None:
        super().__init__(base)
        self._env = env
        self._wrapped: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {}
        self._internal = {_ITER: env._iter, _CONCAT: env._concat, _SIZE: env._size}

    def __getitem__(self, name: str) -> Callable[..., Any]:
        if name in self._internal:
            return self._internal[name]
        func = dict.__getitem__(self, name)
        cached = self._wrapped.get(name)
        if cached is None or cached[0] is not func:
            cached = (func, self._env._guard_filter(name, func))
            self._wrapped[name] = cached
        return cached[1]

    def get(self, name: str, default: Any = None) -> Any:  # noqa: D102
        try:
            return self[name]
        except KeyError:
            return default


class PlaitSandbox(ImmutableSandboxedEnvironment):
    """The Jinja environment templates run in; plugins may add to ``filters`` and ``globals``."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, limits: TemplateLimits) -> None:
        super().__init__(
            undefined=StrictUndefined,
            autoescape=False,
            optimized=False,
            loader=None,
            cache_size=0,
            keep_trailing_newline=True,
            finalize=self._finalize_output,
        )
        self.limits = limits
        self.filters = _GuardedFilters(self, self.filters)
        self.globals["range"] = _make_range(limits.max_range)
        self.globals["lipsum"] = _lipsum

    # -- size checks -------------------------------------------------------------------------

    def _refuse(self, what: str, size: int) -> NoReturn:
        raise TemplateLimitError(
            f"{what} would be {size:,} characters, over the {self.limits.max_output:,} limit"
        )

    def _check_size(self, what: str, size: int) -> None:
        if size > self.limits.max_output:
            self._refuse(what, size)

    def _check_ints(self, what: str, args: Iterable[Any]) -> None:
        for arg in args:
            if isinstance(arg, int) and arg > self.limits.max_output:
                raise TemplateLimitError(
                    f"{what}: argument {arg:,} is over the {self.limits.max_output:,} size limit"
                )

    def _check_result(self, what: str, result: Any) -> Any:
        budget = _BUDGET.get()
        if isinstance(result, str):
            self._check_size(what, len(result))
            if budget is not None:
                budget.charge(len(result))
        elif isinstance(result, list | tuple | dict):
            self._check_size(what, _weight(result, self.limits.max_output))
            if budget is not None:
                budget.charge(len(result))
        return result

    def _check_percent(self, fmt: str, operand: Any) -> None:
        star = False
        digits = len(str(self.limits.max_output))
        for match in _PERCENT.finditer(fmt):
            for group in match.groups():
                if group == "*":
                    star = True
                elif group and (len(group) > digits or int(group) > self.limits.max_output):
                    raise TemplateLimitError(f"format width {group[:20]} is over the size limit")
        if star:
            self._check_ints("'%' formatting", operand if isinstance(operand, tuple) else [operand])

    def _check_format(self, fmt: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        try:
            specs = [spec for _, _, spec, _ in Formatter().parse(fmt) if spec]
        except ValueError:
            return  # str.format raises the same error with a better message
        for spec in specs:
            for number in re.findall(r"\d+", spec):
                if int(number[:20]) > self.limits.max_output:
                    raise TemplateLimitError(f"format width {number[:20]} is over the size limit")
            if "{" in spec:
                self._check_ints("str.format", [*args, *kwargs.values()])

    def _check_str_method(self, owner: Any, name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """Refuse calls of str/int methods whose result would be oversized; returns the args."""
        self._check_ints(f"{type(owner).__name__}.{name}()", args)
        if not isinstance(owner, str):
            return args
        if name == "expandtabs":
            size = args[0] if args else 8
            self._check_size("str.expandtabs()", len(owner) + owner.count("\t") * size)
        elif name == "replace" and len(args) >= 2:
            self._check_replace(owner, *args)
        elif name == "join" and args:
            items = list(args[0])
            self._check_join(owner, items)
            return (items, *args[1:])
        elif name == "translate" and args and isinstance(args[0], Mapping):
            longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
            self._check_size("str.translate()", len(owner) * max(longest, 1))
        return args

    def _check_replace(self, text: Any, old: Any, new: Any, count: Any = -1) -> None:
        if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
            hits = text.count(old) if old else len(text) + 1
            if isinstance(count, int) and count >= 0:
                hits = min(hits, count)
            self._check_size("replace", len(text) + hits * max(len(new) - len(old), 0))

    def _check_join(self, sep: Any, items: list[Any]) -> None:
        cap = self.limits.max_output
        size = _weight(items, cap) + len(str(sep)) * max(len(items) - 1, 0)
        self._check_size("join", size)

    # -- filters -----------------------------------------------------------------------------

    def _guard_filter(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap one filter with the budget tick, name-specific prechecks and a result check."""
        pass_arg = getattr(func, "jinja_pass_arg", None)
        offset = 1 if pass_arg is not None else 0
        what = f"filter {name!r}"

        def guarded(*args: Any, **kwargs: Any) -> Any:
            budget = _BUDGET.get()
            if budget is not None:
                budget.tick()
            args = self._precheck_filter(name, offset, args, kwargs)
            return self._check_result(what, func(*args, **kwargs))

        guarded.__name__ = getattr(func, "__name__", name)
        if pass_arg is not None:
            guarded.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]
        return guarded

    def _precheck_filter(
        self, name: str, offset: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, ...]:
        if len(args) <= offset:
            return args
        value, rest = args[offset], args[offset + 1 :]
        budget = _BUDGET.get()
        if name in _ITERATING and budget is not None and isinstance(value, Sized):
            budget.count(len(value))  # per-item Python work counts as loop iterations; lazy
            # inputs (map/select generators) were charged by the filter that made them
        if name in ("center", "indent", "wordwrap", "truncate", "batch", "slice"):
            self._check_ints(f"filter {name!r}", [*rest, *kwargs.values()])
        if name in ("batch", "slice"):
            size = (rest or (kwargs.get("linecount") or kwargs.get("slices") or 0,))[0]
            if isinstance(size, int) and size > self.limits.max_range:
                raise TemplateLimitError(f"filter {name!r}: {size:,} is over the range limit")
        elif name == "indent" and isinstance(value, str):
            width = (rest or (kwargs.get("width", 4),))[0]
            width = width if isinstance(width, int) else len(str(width))
            self._check_size("filter 'indent'", len(value) + (value.count("\n") + 1) * width)
        elif name == "wordwrap" and isinstance(value, str):
            wrap = kwargs.get("wrapstring", rest[2] if len(rest) > 2 else None) or ""
            lines = len(value) // 2 + value.count("\n") + 1
            self._check_size("filter 'wordwrap'", len(value) + lines * len(str(wrap)))
            width = (rest or (kwargs.get("width", 79),))[0]
            if len(value) > self.limits.max_output // 4 or len(value) ** 2 > 10**10 * max(
                width if isinstance(width, int) else 1, 1
            ):  # textwrap is quadratic on long words and long runs of spaces
                raise TemplateLimitError("filter 'wordwrap': text too long for this width")
        elif name == "replace":
            self._check_replace(value, *rest[:3], **kwargs)
        elif name == "format" and isinstance(value, str):
            self._check_percent(value, rest or tuple(kwargs.values()))
        elif name == "join":
            items = list(value)
            self._check_join(kwargs.get("d", rest[0] if rest else ""), items)
            return (*args[:offset], items, *rest)
        return args

    def _iter(self, iterable: Iterable[Any], literal: int) -> Iterable[Any]:
        budget = _BUDGET.get()
        return iterable if budget is None else budget.iterate(iterable, literal)

    def _concat(self, *values: Any) -> str:
        parts, total = [], 0
        for value in values:
            if not isinstance(value, str):
                self._check_size("'~' operand", _weight(value, self.limits.max_output))
            part = str(value)
            total += len(part)
            self._check_size("'~' concatenation", total)
            parts.append(part)
        return self._check_result("'~' concatenation", "".join(parts))

    def _size(self, value: Any) -> Any:
        self._check_size("literal", _weight(value, self.limits.max_output))
        return value

    def _finalize_output(self, value: Any) -> Any:
        """Every ``{{ }}`` output passes here: JSON values only, bounded, counted."""
        budget = _BUDGET.get()
        if budget is not None:
            budget.tick()
        if isinstance(value, str):
            if budget is not None:
                budget.charge(len(value))
            return value
        if not isinstance(value, _SCALARS):
            size = _weight(value, self.limits.max_output)
            self._check_size("output value", size)
            _to_json(value)
            if budget is not None:
                budget.charge(size)
        elif isinstance(value, float) and not math.isfinite(value):
            _to_json(value)
        return value

    # -- sandbox hooks -----------------------------------------------------------------------

    def getattr(self, obj: Any, attribute: str) -> Any:
        """Dict keys first (JSON data), refuse ``_private`` names before touching them."""
        budget = _BUDGET.get()
        if budget is not None:
            budget.tick()
        if isinstance(obj, dict):
            try:
                return obj[attribute]
            except (KeyError, TypeError):
                pass
        if attribute.startswith("_"):
            self.unsafe_undefined(obj, attribute)
        return super().getattr(obj, attribute)

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        """Raise, where stock Jinja would render an unsafe attribute as an empty string."""
        raise TemplateSecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """Jinja's sandboxed ``str.format``, plus width checks and a result-size check."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__
        is_map = value.__name__ == "format_map"

        def guarded(*args: Any, **kwargs: Any) -> str:
            mapping = args[0] if is_map and args and isinstance(args[0], Mapping) else kwargs
            self._check_format(fmt, () if is_map else args, mapping)
            return self._check_result(f"str.{value.__name__}()", wrapped(*args, **kwargs))

        return update_wrapper(guarded, wrapped)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Tick the deadline, precheck size arguments of builtin methods, check the result."""
        budget = _BUDGET.get()
        if budget is not None:
            budget.tick()
        if type(obj) is BuiltinMethodType and isinstance(obj.__self__, str | int | float):
            args = self._check_str_method(obj.__self__, obj.__name__, args)
        elif isinstance(obj, LoopContext) and args and budget is not None:
            args = (budget.iterate(args[0], 0), *args[1:])
        return self._check_result("call result", super().call(context, obj, *args, **kwargs))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """Refuse ``*``, ``+``, ``%`` and ``**`` whose result would be oversized, up front."""
        budget = _BUDGET.get()
        if budget is not None:
            budget.tick()
        cap = self.limits.max_output
        if operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                    raise TemplateLimitError(f"integer product is over {_MAX_INT_BITS:,} bits")
            else:
                seq, times = (left, right) if isinstance(right, int) else (right, left)
                if isinstance(times, int) and times > 0 and isinstance(seq, str | list | tuple):
                    unit = _weight(seq, cap // times + 1)
                    self._check_size("'*' repetition", unit * times)
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                if right * math.log2(abs(left)) > _MAX_INT_BITS:
                    raise TemplateLimitError(f"integer power is over {_MAX_INT_BITS:,} bits")
        elif operator == "%" and isinstance(left, str):
            self._check_percent(left, right)
        elif operator == "+" and isinstance(left, str | list | tuple):
            if isinstance(right, str | list | tuple):
                self._check_size("'+' result", _weight(left, cap) + _weight(right, cap))
        result = self.binop_table[operator](left, right)
        return self._check_result(f"'{operator}' result", result) if operator == "%" else result

    def get_template(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Templates never load other templates: no filesystem, no names from input."""
        raise TemplateSecurityError("include, import and extends are not available in templates")

    select_template = get_or_select_template = get_template


# -- compiled leaves ---------------------------------------------------------------------------


def _translate(exc: Exception, expression: str, field: str) -> TemplateError:
    """Turn anything raised while rendering into a TemplateError that names the expression."""
    if isinstance(exc, TemplateError):
        err = exc
    elif isinstance(exc, SecurityError):
        err = TemplateSecurityError(str(exc))
    elif isinstance(exc, UndefinedError):
        err = TemplateError(f"undefined: {exc}")
    elif isinstance(exc, RecursionError):
        err = TemplateError("recursion too deep (a macro calling itself, or nesting too deep)")
    elif isinstance(exc, MemoryError):
        err = TemplateLimitError("template ran out of memory")
    else:
        err = TemplateError(f"{type(exc).__name__}: {exc}")
    if err.expression is None:
        err.expression = expression
    return err.located(field=field)


class _Node:
    """One compiled value: a leaf string, a container of nodes, or a static value."""

    __slots__ = ("roots", "references", "static", "slow")

    def __init__(self) -> None:
        self.roots: frozenset[str] = frozenset()
        self.references: frozenset[str] = frozenset()
        self.static = True
        self.slow = False

    def render(self, context: Mapping[str, Any]) -> Any:  # pragma: no cover - abstract
        """The value of this node in ``context``."""
        raise NotImplementedError


class _Static(_Node):
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value

    def render(self, context: Mapping[str, Any]) -> Any:  # noqa: D102
        return self.value


class _Jinja(_Node):
    """A leaf Jinja must evaluate: native (lone expression) or string (mixed text)."""

    __slots__ = ("source", "where", "template", "native", "limits")

    def __init__(self, source: str, where: str, template: JinjaTemplate, native: bool,
                 limits: TemplateLimits) -> None:
        super().__init__()
        self.source, self.where, self.template = source, where, template
        self.native, self.limits = native, limits
        self.static, self.slow = False, True

    def render(self, context: Mapping[str, Any]) -> Any:  # noqa: D102
        if _BUDGET.get() is not None:
            return self._render(context)
        token = _BUDGET.set(_Budget(self.limits))
        try:
            return self._render(context)
        finally:
            _BUDGET.reset(token)

    def _render(self, context: Mapping[str, Any]) -> Any:
        try:
            env = self.template.environment  # Context built directly: new_context copies slowly
            ctx = env.context_class(env, {**env.globals, **context}, _NAME, self.template.blocks)
            gen = self.template.root_render_func(ctx)
            if self.native:
                for _ in gen:
                    pass
                value = ctx.vars[_RESULT]
                if type(value) is str or type(value) is bool or value is None:
                    return value
                cap = self.limits.max_output
                size = _weight(value, cap)
                if size > cap:
                    raise TemplateLimitError(
                        f"template result is over the {cap:,}-character size limit"
                    )
                return _to_json(value)
            parts: list[str] = []
            total, cap = 0, self.limits.max_output
            for chunk in gen:
                total += len(chunk)
                if total > cap:
                    raise TemplateLimitError(f"rendered output is over {cap:,} characters")
                parts.append(chunk)
            return "".join(parts)
        except Exception as exc:
            raise _translate(exc, self.source, self.where) from exc


class _Path(_Node):
    """A lone plain path (``${steps.a.output.x}``): a dict walk, Jinja only as a fallback."""

    __slots__ = ("source", "where", "root", "keys", "fallback")

    def __init__(self, source: str, where: str, root: str, keys: tuple[Any, ...],
                 fallback: _Jinja) -> None:
        super().__init__()
        self.source, self.where, self.root, self.keys = source, where, root, keys
        self.fallback = fallback
        self.static = False

    def render(self, context: Mapping[str, Any]) -> Any:  # noqa: D102
        try:
            value = _lookup(context, self.root, self.keys)
        except Exception as exc:
            raise _translate(exc, self.source, self.where) from None
        return self.fallback.render(context) if value is _FALLBACK else value


class _Text(_Node):
    """Text mixing literal parts and plain paths: concatenated directly, Jinja as a fallback."""

    __slots__ = ("source", "where", "parts", "fallback", "limit")

    def __init__(self, source: str, where: str, parts: list[Any], fallback: _Jinja) -> None:
        super().__init__()
        self.source, self.where, self.parts, self.fallback = source, where, parts, fallback
        self.limit = fallback.limits.max_output
        self.static = False

    def render(self, context: Mapping[str, Any]) -> Any:  # noqa: D102
        out: list[str] = []
        try:
            for part in self.parts:
                if type(part) is str:
                    out.append(part)
                    continue
                value = _lookup(context, *part)
                kind = type(value)
                if kind is str:
                    out.append(value)
                elif kind in _SCALARS and (kind is not float or math.isfinite(value)):
                    out.append(str(value))
                else:
                    return self.fallback.render(context)
        except Exception as exc:  # str() of a huge int, an odd Mapping, ...
            raise _translate(exc, self.source, self.where) from None
        text = "".join(out)
        if len(text) > self.limit:
            exc = TemplateLimitError(f"rendered output is over {self.limit:,} characters")
            raise _translate(exc, self.source, self.where)
        return text


class _Dict(_Node):
    __slots__ = ("items",)

    def __init__(self, items: list[tuple[Any, _Node]]) -> None:
        super().__init__()
        self.items = items

    def render(self, context: Mapping[str, Any]) -> Any:  # noqa: D102
        return {key: node.render(context) for key, node in self.items}


class _List(_Node):
    __slots__ = ("items",)

    def __init__(self, items: list[_Node]) -> None:
        super().__init__()
        self.items = items

    def render(self, context: Mapping[str, Any]) -> Any:  # noqa: D102
        return [node.render(context) for node in self.items]


@dataclass(frozen=True, eq=False)
class Template:
    """A compiled value: immutable, thread- and task-safe, reusable across runs.

    Compile once per workflow version; ``render`` is the hot path.
    """

    source: Any
    """The value as written."""
    where: str
    """Field path it came from, e.g. ``steps[2].with.repo``."""
    references: frozenset[str]
    """Step ids referenced as ``steps.<id>`` or ``steps['<id>']``: implied dependencies."""
    roots: frozenset[str]
    """Context roots it reads."""
    is_static: bool
    """True when rendering needs no context (no template anywhere in it)."""
    _node: _Node = field(repr=False)
    _limits: TemplateLimits = field(repr=False)

    def render(self, context: Mapping[str, Any]) -> Any:
        """Evaluate every template in the value against ``context`` (roots to values).

        Returns fresh containers; values reached by a lone plain path are the context's own.

        Raises:
            TemplateError: a name or key is undefined, or evaluation failed.
            TemplateSecurityError: the template reached for something the sandbox forbids.
            TemplateLimitError: an output, size, loop or time limit was hit.
        """
        node = self._node
        if not node.slow or _BUDGET.get() is not None:
            return node.render(context)
        token = _BUDGET.set(_Budget(self._limits))  # one budget shared by the whole structure
        try:
            return node.render(context)
        finally:
            _BUDGET.reset(token)


# -- compiling ---------------------------------------------------------------------------------


class _ScanError(ValueError):
    pass


def _find_close(text: str, start: int, closer: str) -> int:
    """Index of ``closer`` after ``start`` outside brackets and quoted strings, or -1."""
    depth, quote, i, n = 0, "", start, len(text)
    while i < n:
        char = text[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif depth == 0 and text.startswith(closer, i):
            return i
        elif char in ")]}" and depth:
            depth -= 1
        i += 1
    return -1


def _scan(text: str) -> tuple[list[tuple[bool, str]], bool]:
    """Split ``text`` into (is_expression, text) parts; also say whether Jinja tags appear."""
    parts: list[tuple[bool, str]] = []
    buf: list[str] = []
    jinja, i = False, 0
    while True:
        match = _SPECIAL.search(text, i)
        if match is None:
            buf.append(text[i:])
            break
        j = match.start()
        buf.append(text[i:j])
        nxt = text[j + 1 : j + 2]
        if text[j] == "{":
            if nxt in ("{", "%", "#"):
                closer = {"{": "}}", "%": "%}", "#": "#}"}[nxt]
                end = text.find("#}", j + 2) if nxt == "#" else _find_close(text, j + 2, closer)
                i = len(text) if end < 0 else end + 2
                buf.append(text[j:i])
                jinja = jinja or nxt != "#"
            else:
                buf.append("{")
                i = j + 1
        elif nxt == "$":
            buf.append("$")
            i = j + 2
        elif nxt == "{":
            end = _find_close(text, j + 2, "}")
            if end < 0:
                raise _ScanError(f"unterminated '${{' at offset {j}")
            parts.append((False, "".join(buf)))
            parts.append((True, text[j + 2 : end]))
            buf, i = [], end + 1
        else:
            short = _SHORTHAND.match(text, j)
            if short and short.group(1) in CONTEXT_ROOTS:
                parts.append((False, "".join(buf)))
                parts.append((True, short.group(0)[1:]))
                buf, i = [], short.end()
            else:
                buf.append("$")
                i = j + 1
    parts.append((False, "".join(buf)))
    return [(is_expr, s) for is_expr, s in parts if is_expr or s], jinja


def _plain_path(expr: nodes.Node) -> tuple[str, tuple[Any, ...]] | None:
    """``(root, keys)`` when ``expr`` is only attribute/constant-index steps from a root."""
    keys: list[Any] = []
    while True:
        if isinstance(expr, nodes.Getattr) and not expr.attr.startswith("_"):
            keys.append(expr.attr)
            expr = expr.node
        elif (isinstance(expr, nodes.Getitem) and isinstance(expr.arg, nodes.Const)
              and type(expr.arg.value) in (str, int)):
            keys.append(expr.arg.value)
            expr = expr.node
        elif isinstance(expr, nodes.Name) and expr.ctx == "load" and expr.name in CONTEXT_ROOTS:
            return expr.name, tuple(reversed(keys))
        else:
            return None


def _short(source: str) -> str:
    return repr(source if len(source) <= 200 else source[:200] + "…")


class TemplateEngine:
    """Compiles workflow values into :class:`Template` objects over one sandbox."""

    def __init__(self, limits: TemplateLimits | None = None) -> None:
        self.limits = limits or TemplateLimits()
        self.env = PlaitSandbox(self.limits)

    def compile(self, value: Any, *, where: str = "") -> Template:
        """Compile a JSON-like value; every template string inside it is compiled.

        Dict keys are not templated. All problems of the whole value are collected first.

        Raises:
            TemplateSyntaxError: with one Issue per string that does not parse, is too long or
                names something that is neither a context root nor a global.
        """
        issues: list[Issue] = []
        node = self._value(value, where, issues, expression=False)
        return self._finish(value, where, node, issues)

    def compile_expression(self, source: str, *, where: str = "") -> Template:
        """Compile an expression field (``if:``, ``when:``, ``while:``), always native.

        A source containing ``${`` is a template (a lone ``${...}`` keeps its type); otherwise
        the whole string is one bare Jinja expression.

        Raises:
            TemplateSyntaxError: as :meth:`compile`.
        """
        issues: list[Issue] = []
        node = self._value(source, where, issues, expression=True)
        return self._finish(source, where, node, issues)

    def check_names(self, template: Template, allowed_roots: Iterable[str]) -> list[str]:
        """The roots ``template`` reads that are not allowed here, sorted; empty when fine.

        For validation: ``item`` and ``index`` exist only inside loops, ``env`` only when the
        host config allows variables.
        """
        return sorted(template.roots - frozenset(allowed_roots))

    # -- internals ---------------------------------------------------------------------------

    def _finish(self, value: Any, where: str, node: _Node, issues: list[Issue]) -> Template:
        if issues:
            raise TemplateSyntaxError(issues)
        return Template(value, where, node.references, node.roots, node.static, node,
                        self.limits)

    def _value(self, value: Any, where: str, issues: list[Issue], *, expression: bool) -> _Node:
        if isinstance(value, str):
            return self._string(value, where, issues, expression)
        if isinstance(value, dict):
            children = [(k, self._value(v, f"{where}.{k}" if where else str(k), issues,
                                        expression=False)) for k, v in value.items()]
            node: _Node = _Dict(children)
            kids = [child for _, child in children]
        elif isinstance(value, list | tuple):
            kids = [self._value(v, f"{where}[{i}]", issues, expression=False)
                    for i, v in enumerate(value)]
            node = _List(kids)
        else:
            return _Static(value)
        node.roots = frozenset().union(*(kid.roots for kid in kids))
        node.references = frozenset().union(*(kid.references for kid in kids))
        node.static = all(kid.static for kid in kids)
        node.slow = any(kid.slow for kid in kids)
        return node

    def _string(self, text: str, where: str, issues: list[Issue], expression: bool) -> _Node:
        if len(text) * 4 > self.limits.max_source:
            size = len(text.encode("utf-8", "surrogatepass"))
            if size > self.limits.max_source:
                issues.append(Issue(where, f"template is {size:,} bytes, over the "
                                           f"{self.limits.max_source:,}-byte limit"))
                return _Static(text)
        if expression:
            text = text.strip()
            if "${" not in text and _SHORTHAND.fullmatch(text) is None:
                return self._compile_guarded(text, where, issues, [(True, text)])
        if "$" not in text and "{" not in text:
            return _Static(text)
        try:
            parts, jinja = _scan(text)
        except _ScanError as exc:
            issues.append(Issue(where, f"cannot parse {_short(text)}: {exc}"))
            return _Static(text)
        if not jinja and not any(is_expr for is_expr, _ in parts):
            literal = "".join(s for _, s in parts)  # only '$$' escapes changed anything
            return _Static(text if literal == text else literal)
        return self._compile_guarded(text, where, issues, parts, jinja)

    def _compile_guarded(self, text: str, where: str, issues: list[Issue],
                         parts: list[tuple[bool, str]], jinja: bool = False) -> _Node:
        try:
            return self._compile_parts(text, where, parts, jinja)
        except _CompileIssue as exc:
            issues.append(Issue(where, str(exc)))
        except JinjaSyntaxError as exc:
            issues.append(Issue(where, f"cannot parse {_short(text)}: {exc.message}"))
        except RecursionError:
            issues.append(Issue(where, f"cannot parse {_short(text)}: nested too deeply"))
        except Exception as exc:  # the Python compiler's own limits, MemoryError, ...
            issues.append(Issue(where, f"cannot parse {_short(text)}: {exc}"))
        return _Static(text)

    def _compile_parts(self, text: str, where: str, parts: list[tuple[bool, str]],
                       jinja: bool) -> _Node:
        env = self.env
        if len(parts) == 1 and parts[0][0] and not jinja:  # a lone expression: native value
            expr = self._parse_expression(parts[0][1])
            body = [nodes.Assign(nodes.Name(_RESULT, "store"), expr, lineno=1)]
            ast = nodes.Template(body, lineno=1)
            ast.set_environment(env)
            roots, refs = self._analyse(ast, text)
            leaf = _Jinja(text, where, self._build(ast), True, self.limits)
            path = _plain_path(expr)
            node: _Node = leaf if path is None else _Path(text, where, *path, leaf)
        else:
            source, fast = [], []
            for is_expr, chunk in parts:
                if not is_expr:
                    source.append(chunk)
                    fast.append(chunk)
                    continue
                if source and source[-1].endswith("{"):  # keep '{' + '{{' from reading as '{{{'
                    source[-1] = source[-1][:-1] + "{{ '{' }}"
                source.append("{{ " + chunk + " }}")
                path = None if jinja else _plain_path(self._parse_expression(chunk))
                fast.append(path)
            ast = env.parse("".join(source), name=_NAME)
            roots, refs = self._analyse(ast, text)
            leaf = _Jinja(text, where, self._build(ast), False, self.limits)
            usable = not jinja and all(p is not None for p in fast)
            node = _Text(text, where, fast, leaf) if usable else leaf
        node.roots, node.references = roots, refs
        return node

    def _parse_expression(self, source: str) -> nodes.Expr:
        parser = Parser(self.env, source, name=_NAME, state="variable")
        expr = parser.parse_expression()
        if not parser.stream.eos:
            raise JinjaSyntaxError(
                f"unexpected {parser.stream.current.value!r} after the expression",
                parser.stream.current.lineno, _NAME,
            )
        return expr

    def _analyse(self, ast: nodes.Template, text: str) -> tuple[frozenset[str], frozenset[str]]:
        names = set(meta.find_undeclared_variables(ast))
        if any(n.name == "self" and n.ctx == "load" for n in ast.find_all(nodes.Name)):
            names.add("self")
        usable = {name for name in self.env.globals if not name.startswith("__plait")}
        unknown = sorted(names - CONTEXT_ROOTS - usable)
        if unknown:
            listed = ", ".join(_ROOT_ORDER)
            raise _CompileIssue(
                f"unknown name {unknown[0]!r} in {_short(text)} (expected one of {listed})"
            )
        refs: set[str] = set()
        for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
            base = node.node
            if not (isinstance(base, nodes.Name) and base.name == "steps"):
                continue
            if isinstance(node, nodes.Getattr):
                refs.add(node.attr)
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                refs.add(node.arg.value)
        return frozenset(names & CONTEXT_ROOTS), frozenset(refs)

    def _build(self, ast: nodes.Template) -> JinjaTemplate:
        ast = _Guard().visit(ast)
        ast.set_environment(self.env)
        code = self.env.compile(ast, name=_NAME, filename=_NAME)
        return self.env.template_class.from_code(self.env, code, self.env.make_globals(None))


class _CompileIssue(ValueError):
    pass
