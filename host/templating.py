"""Templates: ``${ expr }`` strings compiled once per workflow version, rendered in a sandbox.

A string holding ``${ expr }``, ``{{ }}``, ``{% %}`` or ``$root.path`` (``root`` one of
:data:`CONTEXT_ROOTS`) is a template; any other string is static and never touches Jinja. ``$$`` is
a literal ``$``. A string that is exactly one ``${expr}`` or one ``$root.path`` keeps the native
type of its value; anything else renders to a string.

Security (RELIABILITY 34-41): templates run in :class:`PlaitSandbox`, an
``ImmutableSandboxedEnvironment`` with ``StrictUndefined``, no loader, no constant folding, and
unsafe attributes that *raise* :class:`~plait.TemplateSecurityError` instead of rendering empty.
``include``/``import``/``extends`` raise before loading anything. The context holds only what the
caller passes, and names that are neither a root nor a global are refused at compile time.

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

Semantics worth knowing: ``a.b`` on a dict prefers the key ``b`` over a dict method of that name
(the data is JSON); everything a template outputs or returns must be a JSON value, so a range, a
function or a generator is an error rather than its Python repr.

Cost (``timeit``, development machine, best of 5): a lone ``${steps.a.output.x}`` renders in
~0.9 us (a dict walk, no Jinja) and ``"pr-${inputs.pr}"`` in ~2 us (also no Jinja); through Jinja,
``${steps.a.output.n + 1}`` takes ~7 us and a string with a filter ~11-18 us. Compiling costs
~0.1-0.3 ms for plain paths (their Jinja fallback compiles lazily) and ~1.5-2 ms otherwise.
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
from typing import Any, NamedTuple, NoReturn

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
_ITERATING = frozenset(  # filters doing per-item Python work on their input
    "batch dictsort groupby join map max min reject rejectattr select selectattr slice sort sum"
    " unique".split()
)
_PADDING = frozenset("center indent wordwrap truncate batch slice".split())
_FALLBACK: Any = object()
_BUDGET: ContextVar[_Budget | None] = ContextVar("plait_template_budget", default=None)

_SHORTHAND = re.compile(r"\$([A-Za-z_]\w*)((?:\.[A-Za-z_]\w*|\[\d+\])*)")
_SPECIAL = re.compile(r"[${]")
_PERCENT = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")


@dataclass(frozen=True)
class TemplateLimits:
    """Bounds on one render; configurable so hosts can report and tune them."""

    max_source: int = 64 * 1024  # bytes of template source
    max_output: int = 1024 * 1024  # characters of output / of any value an operation builds
    max_iterations: int = 100_000  # loop iterations per render, all loops together
    max_seconds: float = 2.0  # wall time of one render
    max_range: int = 100_000  # items in one range()


class _Budget:
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


def _weight(value: Any, cap: int) -> int:
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


def _to_json(value: Any, depth: int = 0) -> Any:
    """A JSON copy of ``value`` (tuples become lists), or a TemplateError saying what is not."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
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
        return {str(key): _to_json(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(item, depth + 1) for item in value]
    if isinstance(value, str):
        return str(value)  # Markup and other str subclasses
    if isinstance(value, int) and not isinstance(value, bool):
        got = f"an integer of {value.bit_length():,} bits"
    elif isinstance(value, float):
        got = f"float {value!r}"
    else:
        got = type(value).__name__
    raise TemplateError(f"template result is not a JSON value (got {got})")


def _lookup(context: Mapping[str, Any], root: str, keys: tuple[Any, ...]) -> Any:
    """Follow a plain path by dict key / list index; ``_FALLBACK`` when Jinja must decide."""
    try:
        obj = context[root]
    except KeyError:
        raise TemplateError(f"undefined: {root!r} is undefined") from None
    for key in keys:
        kind = type(obj)
        if kind is not dict and (kind is not list or type(key) is not int):
            return _FALLBACK
        try:
            obj = obj[key]
        except LookupError:
            what = "attribute" if isinstance(key, str) else "element"
            raise TemplateError(
                f"undefined: {object_type_repr(obj)!r} has no {what} {key!r}"
            ) from None
    kind = type(obj)
    return obj if kind in _SCALARS or kind is dict or kind is list else _FALLBACK


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


class _Guard(NodeTransformer):
    """Rewrites loops, ``~`` and container literals into the budgeted internal filters."""

    def _filter(self, node: nodes.Expr, name: str, args: list[nodes.Expr]) -> nodes.Filter:
        return nodes.Filter(node, name, args, [], None, None, lineno=node.lineno)

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = self._filter(node.iter, _ITER, [nodes.Const(_literal_len(node.body))])
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return self._filter(node.nodes[0], _CONCAT, node.nodes[1:])

    def visit_container(self, node: nodes.Expr) -> nodes.Node:
        self.generic_visit(node)
        return node if getattr(node, "ctx", "load") != "load" else self._filter(node, _SIZE, [])

    visit_List = visit_Tuple = visit_Dict = visit_container


class _GuardedFilters(dict):  # type: ignore[type-arg]
    """``env.filters`` handing Jinja a size-guarded wrapper of each filter, plugins' included."""

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
        budget = _BUDGET.get()
        if isinstance(result, str):
            self._check_size(what, len(result))
        elif isinstance(result, list | tuple | dict):
            self._check_size(what, _weight(result, self.limits.max_output))
        else:
            return result
        if budget is not None:
            budget.charge(len(result))
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
        self._check_size("join", _weight(items, cap) + len(str(sep)) * max(len(items) - 1, 0))

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
        budget = _BUDGET.get()
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
            if (budget := _BUDGET.get()) is not None:
                budget.tick()
            args = self._precheck_filter(name, offset, args, kwargs)
            return self._check_result(what, func(*args, **kwargs))

        guarded.__name__ = getattr(func, "__name__", name)
        if pass_arg is not None:
            guarded.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]
        return guarded

    # -- internal filters the _Guard rewrite inserts -----------------------------------------------

    def _iter(self, iterable: Iterable[Any], literal: int) -> Iterable[Any]:
        budget = _BUDGET.get()
        return iterable if budget is None else budget.iterate(iterable, literal)

    def _concat(self, *values: Any) -> str:
        parts, total = [], 0
        for value in values:
            if not isinstance(value, str):
                self._check_size("'~' operand", _weight(value, self.limits.max_output))
            parts.append(str(value))
            total += len(parts[-1])
            self._check_size("'~' concatenation", total)
        return self._check_result("'~' concatenation", "".join(parts))

    def _size(self, value: Any) -> Any:
        self._check_size("literal", _weight(value, self.limits.max_output))
        return value

    def _finalize_output(self, value: Any) -> Any:
        """Every ``{{ }}`` output passes here: JSON values only, bounded, counted."""
        budget = _BUDGET.get()
        size = len(value) if isinstance(value, str) else 0
        if not isinstance(value, _SCALARS) or isinstance(value, float):
            size = _weight(value, self.limits.max_output)
            self._check_size("output value", size)
            _to_json(value)
        if budget is not None:
            budget.tick()
            budget.charge(size)
        return value

    # -- sandbox hooks ---------------------------------------------------------------------------

    def getattr(self, obj: Any, attribute: str) -> Any:
        """Dict keys first (JSON data); ``_private`` names refused before they are touched."""
        if (budget := _BUDGET.get()) is not None:
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
            return self._check_result(what, wrapped(*args, **kwargs))

        return update_wrapper(guarded, wrapped)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Tick the deadline, precheck builtin methods' size arguments, check the result."""
        if (budget := _BUDGET.get()) is not None:
            budget.tick()
        if type(obj) is BuiltinMethodType and isinstance(obj.__self__, str | int | float):
            args = self._check_method(obj.__self__, obj.__name__, args, kwargs)
        elif isinstance(obj, LoopContext) and args and budget is not None:
            args = (budget.iterate(args[0], 0), *args[1:])  # a recursive loop's next level
        return self._check_result("call result", super().call(context, obj, *args, **kwargs))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """Refuse ``*``, ``+``, ``%`` and ``**`` whose result would be oversized, up front."""
        if (budget := _BUDGET.get()) is not None:
            budget.tick()
        cap = self.limits.max_output
        if operator == "*" and isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                raise TemplateLimitError(f"integer product is over {_MAX_INT_BITS:,} bits")
        elif operator == "*":
            seq, times = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(times, int) and times > 0 and isinstance(seq, str | list | tuple):
                self._check_size("'*' repetition", _weight(seq, cap // times + 1) * times)
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if right > 0 and abs(left) > 1 and right * math.log2(abs(left)) > _MAX_INT_BITS:
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


# -- compiled values ----------------------------------------------------------------------------

_Render = Callable[[Mapping[str, Any]], Any]


class _Node(NamedTuple):
    render: _Render
    roots: frozenset[str] = frozenset()
    references: frozenset[str] = frozenset()
    static: bool = True
    slow: bool = False  # renders through Jinja, so wants a budget


def _translate(exc: Exception, expression: str, field: str) -> TemplateError:
    """Turn anything raised while rendering into a TemplateError naming the expression."""
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


def _static(value: Any) -> _Node:
    return _Node(lambda context: value)


def _jinja_leaf(
    source: str, where: str, template: JinjaTemplate, native: bool, limits: TemplateLimits
) -> _Render:
    """Render through Jinja: ``native`` reads the assigned result, otherwise collects text."""
    env, root, blocks = template.environment, template.root_render_func, template.blocks
    cap = limits.max_output

    def run(context: Mapping[str, Any]) -> Any:
        # A Context built directly: Template.new_context copies the globals ChainMap slowly.
        ctx = env.context_class(env, {**env.globals, **context}, _NAME, blocks)
        chunks = root(ctx)
        if native:
            for _ in chunks:
                pass
            value = ctx.vars[_RESULT]
            if type(value) is str or type(value) is bool or value is None:
                return value
            if _weight(value, cap) > cap:
                raise TemplateLimitError(f"template result is over the {cap:,}-character limit")
            return _to_json(value)
        parts, total = [], 0
        for chunk in chunks:
            total += len(chunk)
            if total > cap:
                raise TemplateLimitError(f"rendered output is over {cap:,} characters")
            parts.append(chunk)
        return "".join(parts)

    def render(context: Mapping[str, Any]) -> Any:
        try:
            if _BUDGET.get() is not None:
                return run(context)
            token = _BUDGET.set(_Budget(limits))
            try:
                return run(context)
            finally:
                _BUDGET.reset(token)
        except Exception as exc:
            if (err := _translate(exc, source, where)) is exc:
                raise
            raise err from exc

    return render


def _path_leaf(
    source: str, where: str, path: tuple[str, tuple[Any, ...]], slow: _Render
) -> _Render:
    """A lone plain path: a dict walk returning the context's own value; Jinja as fallback."""
    root, keys = path

    def render(context: Mapping[str, Any]) -> Any:
        try:
            value = _lookup(context, root, keys)
        except Exception as exc:
            raise _translate(exc, source, where) from None
        return slow(context) if value is _FALLBACK else value

    return render


def _text_leaf(source: str, where: str, parts: list[Any], slow: _Render, cap: int) -> _Render:
    """Literal text and plain paths joined directly, as Jinja would print them; Jinja fallback."""

    def render(context: Mapping[str, Any]) -> Any:
        out: list[str] = []
        try:
            for part in parts:
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
                    return slow(context)
            if sum(map(len, out)) > cap:
                raise TemplateLimitError(f"rendered output is over {cap:,} characters")
        except Exception as exc:  # also str() of a huge int, an odd Mapping, ...
            raise _translate(exc, source, where) from None
        return "".join(out)

    return render


def _lazy(
    source: str,
    where: str,
    build: Callable[[], JinjaTemplate],
    native: bool,
    limits: TemplateLimits,
) -> _Render:
    """The Jinja fallback of a fast leaf, compiled on first use: most never need it."""
    built: list[_Render] = []

    def render(context: Mapping[str, Any]) -> Any:
        if not built:
            try:
                built.append(_jinja_leaf(source, where, build(), native, limits))
            except Exception as exc:  # a fallback that cannot compile (deep nesting)
                raise TemplateError(
                    f"cannot compile: {exc}", expression=source, field=where
                ) from exc
        return built[0](context)

    return render


def _path_names(paths: list[tuple[str, tuple[Any, ...]]]) -> tuple[frozenset[str], frozenset[str]]:
    """Roots and referenced step ids of plain paths, without asking Jinja."""
    refs = {keys[0] for root, keys in paths if root == "steps" and keys and type(keys[0]) is str}
    return frozenset(root for root, _ in paths), frozenset(refs)


@dataclass(frozen=True, eq=False)
class Template:
    """A compiled value: immutable, safe to share between runs, tasks and threads.

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
        """Evaluate every template in the value against ``context`` (root name to value).

        Returns fresh containers, except that a lone plain path returns the context's own value.

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


# -- compiling ----------------------------------------------------------------------------------


class _CompileIssue(ValueError):
    pass


def _find_close(text: str, start: int, closer: str) -> int:
    """Index of ``closer`` at or after ``start`` outside brackets and quoted strings, or -1."""
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
    """Split ``text`` into (is_expression, text) parts, and say whether Jinja tags appear.

    ``$$`` becomes ``$``; Jinja tags in literal text are copied verbatim (``$`` inside them too).
    """
    parts: list[tuple[bool, str]] = []
    buf: list[str] = []
    jinja, i = False, 0
    while match := _SPECIAL.search(text, i):
        j = match.start()
        buf.append(text[i:j])
        nxt = text[j + 1 : j + 2]
        expr, i = None, j + 1
        if text[j] == "{" and nxt in ("{", "%", "#"):
            closer = {"{": "}}", "%": "%}", "#": "#}"}[nxt]
            end = text.find(closer, j + 2) if nxt == "#" else _find_close(text, j + 2, closer)
            i = len(text) if end < 0 else end + 2
            buf.append(text[j:i])
            jinja = jinja or nxt != "#"
        elif text[j] == "{" or nxt == "$":
            buf.append(text[j])
            i = j + 1 if text[j] == "{" else j + 2
        elif nxt == "{":
            end = _find_close(text, j + 2, "}")
            if end < 0:
                raise _CompileIssue(f"unterminated '${{' at offset {j}")
            expr, i = text[j + 2 : end], end + 1
        elif (short := _SHORTHAND.match(text, j)) and short.group(1) in CONTEXT_ROOTS:
            expr, i = short.group(0)[1:], short.end()
        else:
            buf.append("$")
        if expr is not None:
            parts += [(False, "".join(buf)), (True, expr)]
            buf = []
    parts.append((False, "".join(buf) + text[i:]))
    return [(is_expr, s) for is_expr, s in parts if is_expr or s], jinja


def _plain_path(expr: nodes.Node) -> tuple[str, tuple[Any, ...]] | None:
    """``(root, keys)`` when ``expr`` is only attribute/constant-index steps from a root."""
    keys: list[Any] = []
    while True:
        if isinstance(expr, nodes.Getattr) and not expr.attr.startswith("_"):
            keys.append(expr.attr)
        elif (
            isinstance(expr, nodes.Getitem)
            and isinstance(expr.arg, nodes.Const)
            and type(expr.arg.value) in (str, int)
        ):
            keys.append(expr.arg.value)
        elif isinstance(expr, nodes.Name) and expr.ctx == "load" and expr.name in CONTEXT_ROOTS:
            return expr.name, tuple(reversed(keys))
        else:
            return None
        expr = expr.node


def _short(source: str) -> str:
    return repr(source if len(source) <= 200 else source[:200] + "…")


class TemplateEngine:
    """Compiles workflow values into :class:`Template` objects over one :class:`PlaitSandbox`."""

    def __init__(self, limits: TemplateLimits | None = None) -> None:
        self.limits = limits or TemplateLimits()
        self.env = PlaitSandbox(self.limits)

    def compile(self, value: Any, *, where: str = "") -> Template:
        """Compile a JSON-like value; every template string inside it is compiled.

        Dict keys are not templated. Problems in the whole value are collected before raising.

        Raises:
            TemplateSyntaxError: one Issue per string that does not parse, is too long, or names
                something that is neither a context root nor a global.
        """
        issues: list[Issue] = []
        return self._finish(value, where, self._value(value, where, issues), issues)

    def compile_expression(self, source: str, *, where: str = "") -> Template:
        """Compile an expression field (``if:``, ``when:``, ``while:``).

        A source containing ``${`` is a template (a lone ``${...}`` keeps its type); otherwise
        the whole string is one bare Jinja expression, evaluated to its native value.

        Raises:
            TemplateSyntaxError: as :meth:`compile`.
        """
        issues: list[Issue] = []
        text = source.strip()
        bare = "${" not in text and not _SHORTHAND.fullmatch(text)
        return self._finish(source, where, self._string(text, where, issues, bare), issues)

    def check_names(self, template: Template, allowed_roots: Iterable[str]) -> list[str]:
        """The roots ``template`` reads that are not allowed where it is used (sorted).

        For validation: ``item`` and ``index`` exist only inside loops, ``env`` only when the
        host configuration passes variables.
        """
        return sorted(template.roots - frozenset(allowed_roots))

    # -- internals -------------------------------------------------------------------------------

    def _finish(self, value: Any, where: str, node: _Node, issues: list[Issue]) -> Template:
        if issues:
            raise TemplateSyntaxError(issues)
        return Template(value, where, node.references, node.roots, node.static, node, self.limits)

    def _value(self, value: Any, where: str, issues: list[Issue]) -> _Node:
        if isinstance(value, str):
            return self._string(value, where, issues)
        if isinstance(value, dict):
            keys = list(value)
            kids = [
                self._value(value[k], f"{where}.{k}" if where else str(k), issues) for k in keys
            ]
            items = list(zip(keys, (kid.render for kid in kids), strict=True))

            def render(context: Mapping[str, Any]) -> Any:
                return {key: child(context) for key, child in items}
        elif isinstance(value, list | tuple):
            kids = [self._value(v, f"{where}[{i}]", issues) for i, v in enumerate(value)]
            renders = [kid.render for kid in kids]

            def render(context: Mapping[str, Any]) -> Any:
                return [child(context) for child in renders]
        else:
            return _static(value)
        return _Node(  # containers are rebuilt on every render, so callers may mutate results
            render,
            frozenset().union(*(kid.roots for kid in kids)),
            frozenset().union(*(kid.references for kid in kids)),
            all(kid.static for kid in kids),
            any(kid.slow for kid in kids),
        )

    def _string(self, text: str, where: str, issues: list[Issue], bare: bool = False) -> _Node:
        if len(text) * 4 > self.limits.max_source:
            size = len(text.encode("utf-8", "surrogatepass"))
            if size > self.limits.max_source:
                limit = self.limits.max_source
                issues.append(
                    Issue(where, f"template is {size:,} bytes, over the {limit:,}-byte limit")
                )
                return _static(text)
        if bare:
            return self._compile(text, where, issues, [(True, text)], jinja=False)
        if "$" not in text and "{" not in text:
            return _static(text)
        try:
            parts, jinja = _scan(text)
        except _CompileIssue as exc:
            issues.append(Issue(where, f"cannot parse {_short(text)}: {exc}"))
            return _static(text)
        if not jinja and not any(is_expr for is_expr, _ in parts):
            literal = "".join(s for _, s in parts)  # only '$$' escapes changed anything
            return _static(text if literal == text else literal)
        return self._compile(text, where, issues, parts, jinja)

    def _compile(
        self, text: str, where: str, issues: list[Issue], parts: list[tuple[bool, str]], jinja: bool
    ) -> _Node:
        """Compile one template string, turning every failure into an Issue."""
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
        return _static(text)

    def _compile_parts(
        self, text: str, where: str, parts: list[tuple[bool, str]], jinja: bool
    ) -> _Node:
        env, limits = self.env, self.limits
        if len(parts) == 1 and parts[0][0] and not jinja:  # a lone expression: native value
            expr = self._parse_expression(parts[0][1])
            ast = nodes.Template([nodes.Assign(nodes.Name(_RESULT, "store"), expr, lineno=1)])
            ast.set_environment(env)
            if (path := _plain_path(expr)) is None:
                roots, refs = self._analyse(ast, text)
                render = _jinja_leaf(text, where, self._build(ast), True, limits)
                return _Node(render, roots, refs, static=False, slow=True)
            fallback = _lazy(text, where, lambda: self._build(ast), True, limits)
            return _Node(_path_leaf(text, where, path, fallback), *_path_names([path]), False)
        chunks: list[str] = []
        fast: list[Any] = []
        for is_expr, chunk in parts:
            if not is_expr:
                chunks.append(chunk)
                fast.append(chunk)
                continue
            if chunks and chunks[-1].endswith("{"):  # keep '{' + '{{' from reading as '{{{'
                chunks[-1] = chunks[-1][:-1] + "{{ '{' }}"
            chunks.append("{{ " + chunk + " }}")
            fast.append(None if jinja else _plain_path(self._parse_expression(chunk)))
        source = "".join(chunks)
        if jinja or None in fast:
            ast = env.parse(source, name=_NAME)
            roots, refs = self._analyse(ast, text)
            render = _jinja_leaf(text, where, self._build(ast), False, limits)
            return _Node(render, roots, refs, static=False, slow=True)
        fallback = _lazy(
            text, where, lambda: self._build(env.parse(source, name=_NAME)), False, limits
        )
        paths = [part for part in fast if type(part) is tuple]
        render = _text_leaf(text, where, fast, fallback, limits.max_output)
        return _Node(render, *_path_names(paths), False)

    def _parse_expression(self, source: str) -> nodes.Expr:
        parser = Parser(self.env, source, name=_NAME, state="variable")
        expr = parser.parse_expression()
        if not parser.stream.eos:
            token = parser.stream.current
            raise JinjaSyntaxError(f"unexpected {token.value!r} after the expression", token.lineno)
        return expr

    def _analyse(self, ast: nodes.Template, text: str) -> tuple[frozenset[str], frozenset[str]]:
        """Refuse unknown names; return the roots and the step ids the template references."""
        names = set(meta.find_undeclared_variables(ast))
        if any(n.name == "self" and n.ctx == "load" for n in ast.find_all(nodes.Name)):
            names.add("self")  # Jinja resolves it to the template itself; never ours to expose
        usable = {name for name in self.env.globals if not name.startswith("__plait")}
        if unknown := sorted(names - CONTEXT_ROOTS - usable):
            raise _CompileIssue(
                f"unknown name {unknown[0]!r} in {_short(text)} "
                f"(expected one of {', '.join(_ROOT_ORDER)})"
            )
        refs = set()
        for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
            if not (isinstance(node.node, nodes.Name) and node.node.name == "steps"):
                continue
            if isinstance(node, nodes.Getattr):
                refs.add(node.attr)
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                refs.add(node.arg.value)
        return frozenset(names & CONTEXT_ROOTS), frozenset(refs)

    def _build(self, ast: nodes.Template) -> JinjaTemplate:
        """Rewrite ``ast`` with the guards and compile it under a fixed name."""
        ast = _Guard().visit(ast)
        ast.set_environment(self.env)
        code = self.env.compile(ast, name=_NAME, filename=_NAME)
        return self.env.template_class.from_code(self.env, code, self.env.make_globals(None))
