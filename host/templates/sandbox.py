"""The Jinja sandbox templates render in, and the in-process guards that bound each render.

Security (docs/reliability.md §34-§41): :class:`PlaitSandbox` is an
``ImmutableSandboxedEnvironment`` with ``StrictUndefined``, no loader, no constant folding, and
unsafe attributes that *raise* :class:`~plait.TemplateSecurityError` instead of rendering empty.
``include``/``import``/``extends`` raise before loading anything.

Limits are in-process guards, not a worker process: a subprocess per render would cost
milliseconds on the hot path of every step, so we bound the work itself.

* Before computing: ``*``, ``+``, ``%``, ``**``, ``~``, padding string methods and filters
  (``center``, ``ljust``, ``zfill``, ``expandtabs``, ``replace``, ``join``, ``indent``,
  ``wordwrap``, ``%``/``str.format`` widths) refuse results over ``max_output`` characters (14,000
  bits for integers); ``range`` is capped at ``max_range``, ``lipsum`` at 100 x 1,000 words.
* After computing: a string or container built by a call, filter or literal may not exceed
  ``max_output`` (deep size, shared references counted per use); nor may output or native results.
  Data reached by a plain path (``${steps.a.output}``) is passed through, not copied or limited.
* ``for`` loops are rewritten to count iterations and charge their literal text; filters that walk
  a sized value charge its length. Calls, attribute lookups and iterations check the deadline. All
  text produced in one render, macros included, is capped at 16 x ``max_output``.

What stays possible: one built-in call on a value already near the size limit runs to its end
before the deadline is checked again (about a second at worst: ``urlize`` on 1 MiB of text).

The budget of the render in progress lives in a contextvar (``BUDGET``) so the sandbox hooks can
reach it; :mod:`plait.templates.engine` sets it around each render.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from contextvars import ContextVar
from dataclasses import dataclass
from functools import update_wrapper
from string import Formatter
from types import BuiltinMethodType
from typing import Any, NoReturn

from jinja2 import StrictUndefined, nodes
from jinja2.runtime import LoopContext, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum
from jinja2.visitor import NodeTransformer

from plait.errors import TemplateError, TemplateLimitError, TemplateSecurityError
from plait.values import json_problem, weight

__all__ = [
    "BUDGET",
    "SCALARS",
    "Budget",
    "Guard",
    "PlaitSandbox",
    "TemplateLimits",
    "keep_text",
    "to_json",
    "weight",
]

_ITER, _CONCAT, _SIZE = "__plait_iter", "__plait_concat", "__plait_size"
_WORK_FACTOR = 16
_MAX_INT_BITS = 14_000  # about 4,200 digits: below Python's int-to-str limit
_MAX_DEPTH = 256
SCALARS = (str, int, float, bool, type(None))
"""JSON's scalar types: values that need no walk to weigh or convert."""
_ITERATING = frozenset(  # filters doing per-item Python work on their input
    "batch dictsort groupby join map max min reject rejectattr select selectattr slice sort sum"
    " unique".split()
)
_PADDING = frozenset("center indent wordwrap truncate batch slice".split())
BUDGET: ContextVar[Budget | None] = ContextVar("plait_template_budget", default=None)
"""The budget of the render in progress (set by the template engine around each render)."""

_PERCENT = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")


@dataclass(frozen=True)
class TemplateLimits:
    """Bounds on one render; configurable so hosts can report and tune them."""

    max_source: int = 64 * 1024  # bytes of template source
    max_output: int = 1024 * 1024  # characters of output / of any value an operation builds
    max_iterations: int = 100_000  # loop iterations per render, all loops together
    max_seconds: float = 0.25  # wall time of one render: it holds the event loop that long
    max_range: int = 100_000  # items in one range()


class Budget:
    """What one render may still spend; a contextvar lets the sandbox hooks reach it."""

    __slots__ = ("deadline", "seconds", "iterations", "max_iterations", "produced", "max_produced")

    def __init__(self, limits: TemplateLimits) -> None:
        self.seconds = limits.max_seconds
        self.deadline = time.monotonic() + limits.max_seconds
        self.iterations, self.max_iterations = 0, limits.max_iterations
        self.produced, self.max_produced = 0, limits.max_output * _WORK_FACTOR

    def tick(self) -> None:
        """Fail once the wall-clock deadline has passed."""
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"template ran past its {self.seconds:g} s time limit")

    def charge(self, amount: int) -> None:
        """Count characters produced anywhere (macros and blocks buffer out of our sight)."""
        self.produced += amount
        if self.produced > self.max_produced:
            raise TemplateLimitError(f"template produced over {self.max_produced:,} characters")

    def count(self, iterations: int) -> None:
        """Charge loop iterations (or the items a filter is about to walk)."""
        self.iterations += iterations
        if self.iterations > self.max_iterations:
            raise TemplateLimitError(f"template ran over {self.max_iterations:,} loop iterations")

    def iterate(self, iterable: Iterable[Any], literal: int) -> Iterator[Any]:
        """Yield from ``iterable``, charging one iteration and the body's literal text each."""
        for item in iterable:
            self.count(1)
            if literal:
                self.charge(literal)
            self.tick()
            yield item


def keep_text(text: str) -> str:
    """``text``, if JSON keeps it exactly; else a TemplateError. Two lone surrogates put side
    by side (``'\\ud83d' ~ '\\ude00'``) make a pair that JSON reads back as one character."""
    if not text.isascii() and (problem := json_problem(text)) is not None:
        raise TemplateError(f"template result is not a JSON value plait keeps: {problem}")
    return text


def to_json(value: Any, depth: int = 0) -> Any:
    """A JSON copy of ``value`` (tuples become lists), or a TemplateError saying what is not."""
    kind = type(value)
    if kind is str:
        return keep_text(value)
    if kind is bool or value is None:
        return value
    if (kind is int and value.bit_length() <= _MAX_INT_BITS) or (
        kind is float and math.isfinite(value)
    ):
        return value
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    if depth > _MAX_DEPTH:
        raise TemplateLimitError(f"value is nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, dict):
        if bad := [key for key in value if not isinstance(key, str)]:
            raise TemplateError(f"dict key {bad[0]!r} is not a string, so not a JSON value")
        return {keep_text(str(key)): to_json(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item, depth + 1) for item in value]
    if isinstance(value, str):
        return keep_text(str(value))  # Markup and other str subclasses
    if isinstance(value, int) and not isinstance(value, bool):
        got = f"an integer of {value.bit_length():,} bits"
    elif isinstance(value, float):
        got = f"float {value!r}"
    else:
        got = type(value).__name__
    raise TemplateError(f"template result is not a JSON value (got {got})")


def as_text(value: Any) -> str:
    """How a value reads inside a string: JSON text for everything but a string.

    A dict, list, boolean or null printed into text comes out as JSON (``{"a": true}``,
    ``null``), never as a Python repr (``{'a': True}``, ``None``): the text is read by other
    programs, agents and people who know JSON, not Python.
    """
    kind = type(value)
    if kind is str:
        return value
    if kind is bool:
        return "true" if value else "false"
    if value is None:
        return "null"
    if kind is int or kind is float:
        return str(value)
    if isinstance(value, dict | list | tuple):
        return json.dumps(to_json(value), ensure_ascii=False)
    return str(value)


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
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
    """Literal text one loop iteration may emit (nested loops and macros charge their own)."""
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


class Guard(NodeTransformer):
    """Rewrites loops, ``~`` and container literals into the budgeted internal filters."""

    def _filter(self, node: nodes.Node, name: str, args: list[nodes.Expr]) -> nodes.Filter:
        return nodes.Filter(node, name, args, [], None, None, lineno=node.lineno)

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = self._filter(node.iter, _ITER, [nodes.Const(_literal_len(node.body))])
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        first, *rest = node.nodes
        assert isinstance(first, nodes.Expr)
        return self._filter(first, _CONCAT, [n for n in rest if isinstance(n, nodes.Expr)])

    def visit_container(self, node: nodes.Expr) -> nodes.Node:
        self.generic_visit(node)
        return node if getattr(node, "ctx", "load") != "load" else self._filter(node, _SIZE, [])

    visit_List = visit_Tuple = visit_Dict = visit_container


class _GuardedFilters(dict[str, Any]):
    """``env.filters`` handing Jinja a size-guarded wrapper of each filter, plugins' included."""

    def __init__(self, env: PlaitSandbox, base: Mapping[str, Callable[..., Any]]) -> None:
        super().__init__(base)
        self._env = env
        self._wrapped: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {}
        self._internal: dict[str, Callable[..., Any]] = {
            _ITER: env._iter,
            _CONCAT: env._concat,
            _SIZE: env._size,
        }

    def __getitem__(self, name: str) -> Callable[..., Any]:
        if name in self._internal:
            return self._internal[name]
        func = dict.__getitem__(self, name)
        cached = self._wrapped.get(name)
        if cached is None or cached[0] is not func:
            cached = self._wrapped[name] = (func, self._env._guard_filter(name, func))
        return cached[1]

    def get(self, name: str, default: Any = None) -> Any:
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
            optimized=False,  # no constant folding of 'a' * 10**9 at compile time
            loader=None,
            cache_size=0,
            keep_trailing_newline=True,
            finalize=self._finalize_output,
        )
        self.limits = limits
        self.filters = _GuardedFilters(self, self.filters)
        self.globals["range"] = _make_range(limits.max_range)
        self.globals["lipsum"] = _lipsum

    # -- size checks, all raising TemplateLimitError --------------------------------------------

    def _check_size(self, what: str, size: int) -> None:
        if size > self.limits.max_output:
            raise TemplateLimitError(
                f"{what} would be {size:,} characters, over the {self.limits.max_output:,} limit"
            )

    def _check_ints(self, what: str, args: Iterable[Any]) -> None:
        cap = self.limits.max_output
        for arg in args:
            if isinstance(arg, int) and arg > cap:
                raise TemplateLimitError(f"{what}: argument {arg:,} is over the {cap:,} limit")

    def _check_result(self, what: str, result: Any) -> Any:
        budget = BUDGET.get()
        if isinstance(result, str):
            self._check_size(what, len(result))
        elif isinstance(result, list | tuple | dict):
            self._check_size(what, weight(result, self.limits.max_output))
        else:
            return result
        if budget is not None:
            budget.charge(
                len(result) if isinstance(result, str) else weight(result, self.limits.max_output)
            )
        return result

    def _check_widths(self, widths: Iterable[str]) -> None:
        for width in widths:
            if width and width.isdigit() and int(width[:20]) > self.limits.max_output:
                raise TemplateLimitError(f"format width {width[:20]} is over the size limit")

    def _check_percent(self, fmt: str, operand: Any) -> None:
        specs = [group for match in _PERCENT.finditer(fmt) for group in match.groups()]
        self._check_widths(specs)
        if "*" in specs:
            self._check_ints("'%' formatting", operand if isinstance(operand, tuple) else [operand])

    def _check_format(self, fmt: str, args: Iterable[Any]) -> None:
        try:
            specs = [spec for _, _, spec, _ in Formatter().parse(fmt) if spec]
        except ValueError:
            return  # str.format raises the same error, with a better message
        self._check_widths(re.findall(r"\d+", " ".join(specs)))
        if any("{" in spec for spec in specs):  # nested widths come from the arguments
            self._check_ints("str.format", args)

    def _check_replace(self, text: Any, old: Any = "", new: Any = "", count: Any = -1) -> None:
        if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
            hits = text.count(old) if old else len(text) + 1
            hits = min(hits, count) if isinstance(count, int) and count >= 0 else hits
            self._check_size("replace", len(text) + hits * max(len(new) - len(old), 0))

    def _check_join(self, sep: Any, items: list[Any]) -> None:
        cap = self.limits.max_output
        self._check_size("join", weight(items, cap) + len(str(sep)) * max(len(items) - 1, 0))

    def _check_method(
        self, owner: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, ...]:
        """Refuse str/int/float method calls whose result would be oversized."""
        self._check_ints(f"{type(owner).__name__}.{name}()", [*args, *kwargs.values()])
        if not isinstance(owner, str):
            return args
        if name == "expandtabs":
            tabsize = args[0] if args else kwargs.get("tabsize", 8)
            self._check_size("str.expandtabs()", len(owner) + owner.count("\t") * tabsize)
        elif name == "replace":
            self._check_replace(owner, *args)
        elif name == "join" and args:
            items = list(args[0])
            self._check_join(owner, items)
            return (items, *args[1:])
        elif name == "translate" and args and isinstance(args[0], Mapping):
            longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
            self._check_size("str.translate()", len(owner) * max(longest, 1))
        return args

    def _precheck_filter(
        self, name: str, offset: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, ...]:
        """Name-specific checks before a filter runs; may materialize its input (``join``)."""
        if len(args) <= offset:
            return args
        value, rest = args[offset], args[offset + 1 :]
        budget = BUDGET.get()
        if name in _ITERATING and budget is not None and isinstance(value, Sized):
            budget.count(len(value))  # lazy inputs were charged by the filter that made them
        if name in _PADDING:
            self._check_ints(f"filter {name!r}", [*rest, *kwargs.values()])

        def arg(key: str, position: int, default: Any) -> Any:
            return kwargs.get(key, rest[position] if len(rest) > position else default)

        if name in ("batch", "slice"):
            size = arg("linecount" if name == "batch" else "slices", 0, 0)
            if isinstance(size, int) and size > self.limits.max_range:
                raise TemplateLimitError(f"filter {name!r}: {size:,} is over the range limit")
        elif name == "indent" and isinstance(value, str):
            width = arg("width", 0, 4)
            width = width if isinstance(width, int) else len(str(width))
            self._check_size("filter 'indent'", len(value) + (value.count("\n") + 1) * width)
        elif name == "wordwrap" and isinstance(value, str):
            lines = len(value) // 2 + value.count("\n") + 1
            wrap = len(str(arg("wrapstring", 2, None) or ""))
            self._check_size("filter 'wordwrap'", len(value) + lines * wrap)
            width = arg("width", 0, 79)
            width = max(width, 1) if isinstance(width, int) else 1
            if len(value) > self.limits.max_output // 4 or len(value) ** 2 > 10**10 * width:
                raise TemplateLimitError("filter 'wordwrap': text too long for this width")
        elif name == "replace":
            self._check_replace(value, *rest[:3], **kwargs)
        elif name == "format" and isinstance(value, str):
            self._check_percent(value, rest or tuple(kwargs.values()))
        elif name == "join":
            items = list(value)
            self._check_join(arg("d", 0, ""), items)
            return (*args[:offset], items, *rest)
        return args

    def _guard_filter(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap one filter with the deadline, name-specific prechecks and a result check."""
        pass_arg = getattr(func, "jinja_pass_arg", None)
        offset, what = (0 if pass_arg is None else 1), f"filter {name!r}"

        def guarded(*args: Any, **kwargs: Any) -> Any:
            if (budget := BUDGET.get()) is not None:
                budget.tick()
            args = self._precheck_filter(name, offset, args, kwargs)
            return self._check_result(what, func(*args, **kwargs))

        guarded.__name__ = getattr(func, "__name__", name)
        if pass_arg is not None:
            guarded.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]
        return guarded

    # -- internal filters the Guard rewrite inserts -----------------------------------------------

    def _iter(self, iterable: Iterable[Any], literal: int) -> Iterable[Any]:
        budget = BUDGET.get()
        return iterable if budget is None else budget.iterate(iterable, literal)

    def _concat(self, *values: Any) -> str:
        parts, total = [], 0
        for value in values:
            if not isinstance(value, str):
                self._check_size("'~' operand", weight(value, self.limits.max_output))
            parts.append(as_text(value))
            total += len(parts[-1])
            self._check_size("'~' concatenation", total)
        joined: str = self._check_result("'~' concatenation", "".join(parts))
        return joined

    def _size(self, value: Any) -> Any:
        self._check_size("literal", weight(value, self.limits.max_output))
        return value

    def _finalize_output(self, value: Any) -> Any:
        """Every ``{{ }}`` output passes here: JSON values only, bounded, counted."""
        budget = BUDGET.get()
        size = len(value) if isinstance(value, str) else 0
        if not isinstance(value, SCALARS) or isinstance(value, float):
            size = weight(value, self.limits.max_output)
            self._check_size("output value", size)
            to_json(value)
        if budget is not None:
            budget.tick()
            budget.charge(size)
        return as_text(value) if type(value) is not str else value

    # -- sandbox hooks ---------------------------------------------------------------------------

    def getattr(self, obj: Any, attribute: str) -> Any:
        """Dict keys first (JSON data); ``_private`` names refused before they are touched."""
        if (budget := BUDGET.get()) is not None:
            budget.tick()
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        if attribute.startswith("_"):
            self.unsafe_undefined(obj, attribute)
        return super().getattr(obj, attribute)

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        """Raise, where stock Jinja would render an unsafe attribute as an empty string."""
        raise TemplateSecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """Jinja's sandboxed ``str.format``/``format_map``, plus width and result-size checks."""
        if (wrapped := super().wrap_str_format(value)) is None:
            return None
        fmt, what = value.__self__, f"str.{value.__name__}()"

        def guarded(*args: Any, **kwargs: Any) -> str:
            if value.__name__ == "format_map" and args and isinstance(args[0], Mapping):
                self._check_format(fmt, args[0].values())
            else:
                self._check_format(fmt, [*args, *kwargs.values()])
            return str(self._check_result(what, wrapped(*args, **kwargs)))

        wrapper: Callable[..., str] = update_wrapper(guarded, wrapped)
        return wrapper

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Tick the deadline, precheck builtin methods' size arguments, check the result."""
        if (budget := BUDGET.get()) is not None:
            budget.tick()
        if type(obj) is BuiltinMethodType and isinstance(obj.__self__, str | int | float):
            args = self._check_method(obj.__self__, obj.__name__, args, kwargs)
        elif isinstance(obj, LoopContext) and args and budget is not None:
            args = (budget.iterate(args[0], 0), *args[1:])  # a recursive loop's next level
        return self._check_result("call result", super().call(context, obj, *args, **kwargs))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """Refuse ``*``, ``+``, ``%`` and ``**`` whose result would be oversized, up front."""
        if (budget := BUDGET.get()) is not None:
            budget.tick()
        cap = self.limits.max_output
        if operator == "*" and isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                raise TemplateLimitError(f"integer product is over {_MAX_INT_BITS:,} bits")
        elif operator == "*":
            seq, times = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(times, int) and times > 0 and isinstance(seq, str | list | tuple):
                self._check_size("'*' repetition", weight(seq, cap // times + 1) * times)
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if right > 0 and abs(left) > 1 and right * math.log2(abs(left)) > _MAX_INT_BITS:
                raise TemplateLimitError(f"integer power is over {_MAX_INT_BITS:,} bits")
        elif operator == "%" and isinstance(left, str):
            self._check_percent(left, right)
        elif operator == "+" and isinstance(left, str | list | tuple):
            if isinstance(right, str | list | tuple):
                self._check_size("'+' result", weight(left, cap) + weight(right, cap))
        result = self.binop_table[operator](left, right)
        # What an operator builds counts against the render's budget, as output does: values
        # kept alive together (``{% set %}`` after ``{% set %}``) cannot grow past it.
        return self._check_result(f"'{operator}' result", result)

    def getitem(self, obj: Any, argument: Any) -> Any:
        """Indexing and slicing, with the deadline checked and a slice's result charged: a
        loop of slices is otherwise work the budget never sees."""
        if (budget := BUDGET.get()) is not None:
            budget.tick()
        result = super().getitem(obj, argument)
        if isinstance(argument, slice) and isinstance(result, str | list | tuple):
            return self._check_result("slice", result)
        return result

    def get_template(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Templates never load other templates: no filesystem, no names from input."""
        raise TemplateSecurityError("include, import and extends are not available in templates")

    select_template = get_or_select_template = get_template
