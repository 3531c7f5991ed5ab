"""Expressions of the common subset compiled to Python closures instead of through Jinja.

Compiling ``${ steps.prev.output + 1 }`` through Jinja's pipeline (its code generator, then
Python's ``compile``) costs ~0.5 ms; most expressions in workflows are paths, arithmetic,
comparisons, ``and``/``or``/``not``, ``x if c else y``, ``~`` and literals, which this module
turns into a tree of closures in a few microseconds, and which then evaluate without building
a Jinja context per render.

The closures do what Jinja's generated code does, with the same objects in the same order:
names resolve to the context's value or a ``StrictUndefined``; ``a.b`` and ``a[b]`` go through
the sandbox's ``getattr``/``getitem`` (dict keys first, private names refused, the budget
ticked); the operators the sandbox intercepts (``+ * % **``) go through its ``call_binop`` with
its size checks, the others are Python's; ``~`` and list/tuple/dict literals go through the
sandbox's internal ``_concat``/``_size`` guards, as the ``Guard`` rewrite makes Jinja's code
do. Anything else (filters, tests, calls, slices, globals such as ``range``, an ``if`` without
``else``) is left to Jinja: :func:`compile_fast` returns ``None`` and the caller compiles it
the usual way. ``tests/host/test_templating.py`` checks the two agree on generated
expressions, results and errors alike.
"""

from __future__ import annotations

import ast as py_ast
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes

from plait.templates.sandbox import PlaitSandbox

__all__ = ["Parsed", "compile_fast", "parse_fast"]

Eval = Callable[[Mapping[str, Any]], Any]

_PLAIN_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "-": operator.sub,
    "/": operator.truediv,
    "//": operator.floordiv,
}
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gteq": operator.ge,
    "lt": operator.lt,
    "lteq": operator.le,
    "in": lambda a, b: a in b,
    "notin": lambda a, b: a not in b,
}
_CONST_TYPES = (str, int, float, bool, type(None))


def _binop(env: PlaitSandbox, symbol: str, left: Eval, right: Eval) -> Eval:
    """``left <symbol> right`` as Jinja's code computes it: through the sandbox's
    ``call_binop`` (with its size checks) for the operators it intercepts, else Python's."""
    if symbol in env.intercepted_binops:
        call_binop = env.call_binop
        return lambda context: call_binop(None, symbol, left(context), right(context))
    plain = _PLAIN_BINOPS[symbol]
    return lambda context: plain(left(context), right(context))


def _load(env: PlaitSandbox, name: str) -> Eval:
    """A context root by name, or the ``StrictUndefined`` Jinja's code would make for it."""
    undefined = env.undefined

    def load(context: Mapping[str, Any]) -> Any:
        try:
            return context[name]
        except KeyError:
            return undefined(name=name)

    return load


def _compare(first: Eval, chain: list[tuple[Callable[[Any, Any], Any], Eval]]) -> Eval:
    """A chained comparison, as Python (and so Jinja's code) runs it: ``a < b < c`` evaluates
    each operand once and stops at the first false link, returning that link's result."""

    def compare(context: Mapping[str, Any]) -> Any:
        left = first(context)
        result: Any = True
        for test, operand in chain:
            right = operand(context)
            result = test(left, right)
            if not result:
                return result
            left = right
        return result

    return compare


class _Unsupported(Exception):
    """The expression holds something only Jinja's own code does: compile it there."""


def compile_fast(expr: nodes.Expr, env: PlaitSandbox, roots: frozenset[str]) -> Eval | None:
    """``expr`` as a closure over a render context, or ``None`` when it is outside the subset.

    ``roots`` are the names a context may hold (every other name is a Jinja global).
    """
    try:
        return _Compiler(env, roots).expr(expr)
    except _Unsupported:
        return None


class _Closures:
    """Turns a tree into closures by the node's class name: ``<prefix><ClassName>``; a node
    without a method is outside the subset."""

    prefix = ""

    def expr(self, node: Any) -> Eval:
        method = getattr(self, f"{self.prefix}{type(node).__name__}", None)
        if method is None:
            raise _Unsupported(type(node).__name__)
        result: Eval = method(node)
        return result


class _Compiler(_Closures):
    """Jinja's tree of an expression → closures."""

    prefix = "visit_"

    def __init__(self, env: PlaitSandbox, roots: frozenset[str]) -> None:
        self.env = env
        self.roots = roots

    # -- leaves ------------------------------------------------------------------------------

    def visit_Const(self, node: nodes.Const) -> Eval:
        value = node.value
        if type(value) not in _CONST_TYPES:
            raise _Unsupported("constant")
        return lambda context: value

    def visit_Name(self, node: nodes.Name) -> Eval:
        name = node.name
        if node.ctx != "load" or name not in self.roots:
            raise _Unsupported("name")  # a global (range, lipsum, ...), or self
        return _load(self.env, name)

    # -- access --------------------------------------------------------------------------------

    def visit_Getattr(self, node: nodes.Getattr) -> Eval:
        inner, attr, getattr_ = self.expr(node.node), node.attr, self.env.getattr
        return lambda context: getattr_(inner(context), attr)

    def visit_Getitem(self, node: nodes.Getitem) -> Eval:
        if isinstance(node.arg, nodes.Slice):
            raise _Unsupported("slice")
        inner, key, getitem = self.expr(node.node), self.expr(node.arg), self.env.getitem
        return lambda context: getitem(inner(context), key(context))

    # -- operators -------------------------------------------------------------------------------

    def _binop(self, node: nodes.BinExpr) -> Eval:
        return _binop(self.env, node.operator, self.expr(node.left), self.expr(node.right))

    visit_Add = visit_Sub = visit_Mul = visit_Div = visit_FloorDiv = _binop
    visit_Mod = visit_Pow = _binop

    def visit_Neg(self, node: nodes.Neg) -> Eval:
        inner = self.expr(node.node)
        return lambda context: -inner(context)

    def visit_Pos(self, node: nodes.Pos) -> Eval:
        inner = self.expr(node.node)
        return lambda context: +inner(context)

    def visit_Not(self, node: nodes.Not) -> Eval:
        inner = self.expr(node.node)
        return lambda context: not inner(context)

    def visit_And(self, node: nodes.And) -> Eval:
        left, right = self.expr(node.left), self.expr(node.right)
        return lambda context: left(context) and right(context)

    def visit_Or(self, node: nodes.Or) -> Eval:
        left, right = self.expr(node.left), self.expr(node.right)
        return lambda context: left(context) or right(context)

    def visit_Compare(self, node: nodes.Compare) -> Eval:
        first = self.expr(node.expr)
        return _compare(first, [(_COMPARE[op.op], self.expr(op.expr)) for op in node.ops])

    def visit_CondExpr(self, node: nodes.CondExpr) -> Eval:
        if node.expr2 is None:
            raise _Unsupported("if without else")  # Jinja makes a located undefined
        then, test, other = self.expr(node.expr1), self.expr(node.test), self.expr(node.expr2)
        return lambda context: then(context) if test(context) else other(context)

    def visit_Concat(self, node: nodes.Concat) -> Eval:
        parts, concat = [self.expr(n) for n in node.nodes], self.env._concat
        return lambda context: concat(*[part(context) for part in parts])

    # -- literals (bounded by the sandbox's size guard, as the Guard rewrite does) ------------

    def visit_List(self, node: nodes.List) -> Eval:
        items, size = [self.expr(n) for n in node.items], self.env._size
        return lambda context: size([item(context) for item in items])

    def visit_Tuple(self, node: nodes.Tuple) -> Eval:
        if node.ctx != "load":
            raise _Unsupported("tuple target")
        items, size = [self.expr(n) for n in node.items], self.env._size
        return lambda context: size(tuple([item(context) for item in items]))

    def visit_Dict(self, node: nodes.Dict) -> Eval:
        pairs = [(self.expr(pair.key), self.expr(pair.value)) for pair in node.items]
        size = self.env._size
        return lambda context: size({key(context): value(context) for key, value in pairs})


# -- parsing the common subset with Python's own parser -----------------------------------------
#
# Jinja's lexer and parser cost ~40 us per expression; Python's parser (in C) ~4 us. For the
# subset, Jinja's expression grammar is Python's, so a source that only uses it (by a
# conservative test of its characters and of the tree Python makes) is read by Python and
# turned into closures directly. Where the two grammars differ, the source is left to Jinja:
# ``**`` next to a unary sign or another ``**`` (Jinja's power is left-associative and binds
# looser than a sign), ``is``, bare tuples, slices, literals Jinja does not read (``.5``,
# ``1.``, prefixed or escaped strings, complex numbers), and any name that is not a context
# root or one of Jinja's constants.

_SUBSET_CHARS = re.compile(r"[\w\s.\[\]()+\-*/%<>=!,:'\"]*")
_NOT_JINJA_NUMBER = re.compile(r"(?<![\w.])\.\d|(?<![\w.])\d[\d_]*\.(?!\d)")
"""Numbers Python reads and Jinja does not: ``.5``, ``1.`` and ``1.e3`` (Jinja wants digits on
both sides of a decimal point; a number that is part of a name, ``s0.output``, is no number)."""
_STRING_PREFIX = re.compile(r"(?<![\w'\"])[rRbBfFuU]{1,2}['\"]|'''|\"\"\"")
_JINJA_CONSTANTS = {"true": True, "false": False, "none": None, "True": True, "False": False}
_JINJA_CONSTANTS["None"] = None

_PY_BINOPS = {
    py_ast.Add: "+",
    py_ast.Sub: "-",
    py_ast.Mult: "*",
    py_ast.Div: "/",
    py_ast.FloorDiv: "//",
    py_ast.Mod: "%",
    py_ast.Pow: "**",
}
_PY_COMPARE = {
    py_ast.Eq: "eq",
    py_ast.NotEq: "ne",
    py_ast.Gt: "gt",
    py_ast.GtE: "gteq",
    py_ast.Lt: "lt",
    py_ast.LtE: "lteq",
    py_ast.In: "in",
    py_ast.NotIn: "notin",
}


@dataclass(frozen=True, slots=True)
class Parsed:
    """An expression of the subset, read by Python: how to evaluate it, and what a
    ``TemplateEngine`` needs to know of it without Jinja's tree."""

    evaluate: Eval
    roots: frozenset[str]
    references: frozenset[str]
    """Step ids read as ``steps.<id>`` or ``steps['<id>']``."""
    reads: frozenset[tuple[Any, ...]]
    """Constant key chains read under ``steps`` past a step id (``Template.step_paths``)."""
    path: tuple[str, tuple[Any, ...]] | None
    """``(root, keys)`` when the expression is nothing but a path."""


def parse_fast(source: str, env: PlaitSandbox, roots: frozenset[str]) -> Parsed | None:
    """``source`` (the inside of ``${ }``) read with Python's parser when it is in the subset
    and means the same to Jinja; ``None`` otherwise (Jinja then reads it)."""
    text = source.strip()
    if (
        not text
        or "\n" in text
        or not _SUBSET_CHARS.fullmatch(text)
        or _NOT_JINJA_NUMBER.search(text)
        or _STRING_PREFIX.search(text)
    ):
        return None
    try:
        tree = py_ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if isinstance(tree, py_ast.Tuple):
        return None  # ``a, b`` is a tuple to Python and an error to Jinja
    reader = _PyReader(env, roots)
    try:
        evaluate = reader.expr(tree)
    except (_Unsupported, RecursionError):
        return None
    reads = frozenset() if reader.membership else frozenset(reader.reads)
    return Parsed(
        evaluate,
        frozenset(reader.names),
        frozenset(reader.refs),
        reads,
        _py_path(tree),
    )


def _py_path(node: py_ast.AST) -> tuple[str, tuple[Any, ...]] | None:
    """``(root, keys)`` when ``node`` is only attribute/constant-index steps from a name."""
    keys: list[Any] = []
    while True:
        if isinstance(node, py_ast.Attribute) and not node.attr.startswith("_"):
            keys.append(node.attr)
        elif (
            isinstance(node, py_ast.Subscript)
            and isinstance(node.slice, py_ast.Constant)
            and type(node.slice.value) in (str, int)
        ):
            keys.append(node.slice.value)
        elif isinstance(node, py_ast.Name) and node.id not in _JINJA_CONSTANTS:
            return node.id, tuple(reversed(keys))
        else:
            return None
        node = node.value


class _PyReader(_Closures):
    """Python's tree of a subset expression → the closures :class:`_Compiler` would make from
    Jinja's tree of it (the same sandbox calls, in the same order)."""

    prefix = "read_"

    def __init__(self, env: PlaitSandbox, roots: frozenset[str]) -> None:
        self.env = env
        self.roots = roots
        self.names: set[str] = set()
        self.refs: set[str] = set()
        self.reads: set[tuple[Any, ...]] = set()
        self.membership = False
        """An ``in``/``not in`` test: whether a key exists is asked, so no read is certain."""

    def _note_path(self, node: py_ast.AST) -> None:
        # A step reference is any ``steps.<x>`` or ``steps['<x>']`` (``steps.__dict__`` too:
        # validation then names it an unknown step), as Jinja's reading counts them; a read
        # path is a plain chain of public names and constant keys.
        inner = node.value if isinstance(node, py_ast.Attribute | py_ast.Subscript) else None
        if isinstance(inner, py_ast.Name) and inner.id == "steps":
            if isinstance(node, py_ast.Attribute):
                self.refs.add(node.attr)
            elif isinstance(node, py_ast.Subscript) and isinstance(node.slice, py_ast.Constant):
                if isinstance(node.slice.value, str):
                    self.refs.add(node.slice.value)
        path = _py_path(node)
        if path is not None and path[0] == "steps" and len(path[1]) > 1:
            if type(path[1][0]) is str:
                self.reads.add(path[1])

    def read_Constant(self, node: py_ast.Constant) -> Eval:
        value = node.value
        if type(value) not in _CONST_TYPES:
            raise _Unsupported("constant")
        return lambda context: value

    def read_Name(self, node: py_ast.Name) -> Eval:
        if node.id in _JINJA_CONSTANTS:
            value = _JINJA_CONSTANTS[node.id]
            return lambda context: value
        if node.id not in self.roots:
            raise _Unsupported("name")  # a global, or unknown: Jinja's reading reports it
        self.names.add(node.id)
        return _load(self.env, node.id)

    def read_Attribute(self, node: py_ast.Attribute) -> Eval:
        self._note_path(node)
        inner, attr, getattr_ = self.expr(node.value), node.attr, self.env.getattr
        return lambda context: getattr_(inner(context), attr)

    def read_Subscript(self, node: py_ast.Subscript) -> Eval:
        if isinstance(node.slice, py_ast.Slice):
            raise _Unsupported("slice")
        self._note_path(node)
        inner, key, getitem = self.expr(node.value), self.expr(node.slice), self.env.getitem
        return lambda context: getitem(inner(context), key(context))

    def read_BinOp(self, node: py_ast.BinOp) -> Eval:
        symbol = _PY_BINOPS.get(type(node.op))
        if symbol is None:
            raise _Unsupported("operator")
        if symbol == "**" and any(
            isinstance(side, py_ast.UnaryOp | py_ast.BinOp) and _is_pow_or_sign(side)
            for side in (node.left, node.right)
        ):
            raise _Unsupported("power next to a sign or a power")
        return _binop(self.env, symbol, self.expr(node.left), self.expr(node.right))

    def read_UnaryOp(self, node: py_ast.UnaryOp) -> Eval:
        if isinstance(node.operand, py_ast.BinOp) and isinstance(node.operand.op, py_ast.Pow):
            raise _Unsupported("sign before a power")  # Jinja: (-a) ** b; Python: -(a ** b)
        inner = self.expr(node.operand)
        if isinstance(node.op, py_ast.USub):
            return lambda context: -inner(context)
        if isinstance(node.op, py_ast.UAdd):
            return lambda context: +inner(context)
        if isinstance(node.op, py_ast.Not):
            return lambda context: not inner(context)
        raise _Unsupported("~")

    def read_BoolOp(self, node: py_ast.BoolOp) -> Eval:
        # Jinja folds ``a and b and c`` to the left; the values and short-circuits agree.
        first, *rest = [self.expr(v) for v in node.values]
        if isinstance(node.op, py_ast.And):

            def all_(context: Mapping[str, Any]) -> Any:
                value = first(context)
                for item in rest:
                    if not value:
                        return value
                    value = item(context)
                return value

            return all_

        def any_(context: Mapping[str, Any]) -> Any:
            value = first(context)
            for item in rest:
                if value:
                    return value
                value = item(context)
            return value

        return any_

    def read_Compare(self, node: py_ast.Compare) -> Eval:
        tests = []
        for op in node.ops:
            name = _PY_COMPARE.get(type(op))
            if name is None:
                raise _Unsupported("is")  # a Jinja test, not a comparison
            self.membership = self.membership or name in ("in", "notin")
            tests.append(_COMPARE[name])
        first = self.expr(node.left)
        return _compare(first, list(zip(tests, map(self.expr, node.comparators), strict=True)))

    def read_IfExp(self, node: py_ast.IfExp) -> Eval:
        then, test, other = self.expr(node.body), self.expr(node.test), self.expr(node.orelse)
        return lambda context: then(context) if test(context) else other(context)

    def read_List(self, node: py_ast.List) -> Eval:
        items, size = [self.expr(n) for n in node.elts], self.env._size
        return lambda context: size([item(context) for item in items])

    def read_Tuple(self, node: py_ast.Tuple) -> Eval:
        items, size = [self.expr(n) for n in node.elts], self.env._size
        return lambda context: size(tuple([item(context) for item in items]))


def _is_pow_or_sign(node: py_ast.AST) -> bool:
    return isinstance(node, py_ast.UnaryOp) or (
        isinstance(node, py_ast.BinOp) and isinstance(node.op, py_ast.Pow)
    )
