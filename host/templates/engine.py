"""Templates: ``${ expr }`` strings compiled once per workflow version, rendered in a sandbox.

A string holding ``${ expr }``, ``{{ }}``, ``{% %}`` or ``$root.path`` (``root`` one of
:data:`CONTEXT_ROOTS`) is a template; any other string is static and never touches Jinja. ``$$`` is
a literal ``$``. A string that is exactly one ``${expr}`` or one ``$root.path`` keeps the native
type of its value; anything else renders to a string, in which a dict, list, boolean or null
reads as JSON (``{"a": true}``, ``null``), never as a Python repr.

Security: templates run in :class:`PlaitSandbox`, under a per-render budget of size, iteration
and time limits (both in :mod:`plait.templates.sandbox`, whose docstring lists the guards). The
context holds only what the caller passes, and names that are neither a root nor a global are
refused at compile time.

Semantics worth knowing: ``a.b`` on a dict prefers the key ``b`` over a dict method of that name
(the data is JSON); everything a template outputs or returns must be a JSON value, so a range, a
function or a generator is an error rather than its Python repr.

Cost (``timeit``, development machine, best of 5): a lone ``${steps.a.output.x}`` renders in
~0.9 us (a dict walk, no Jinja) and ``"pr-${inputs.pr}"`` in ~2 us (also no Jinja); through Jinja,
``${steps.a.output.n + 1}`` takes ~7 us and a string with a filter ~11-18 us. Expressions of the
common subset (paths, arithmetic, comparisons, ``and``/``or``/``not``, ``if``/``else``,
literals) are read by Python's parser and evaluated by closures (:mod:`plait.templates.fast`):
~25 us to compile a distinct one, where Jinja's pipeline takes ~0.5 ms. Anything else compiles
through Jinja (~0.5-2 ms), once per engine for a given source text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from jinja2 import Template as JinjaTemplate
from jinja2 import TemplateSyntaxError as JinjaSyntaxError
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.parser import Parser
from jinja2.utils import object_type_repr

from plait.errors import (
    Issue,
    TemplateError,
    TemplateLimitError,
    TemplateSecurityError,
    TemplateSyntaxError,
)
from plait.templates.fast import Eval, compile_fast, parse_fast
from plait.templates.sandbox import (
    BUDGET,
    SCALARS,
    Budget,
    Guard,
    PlaitSandbox,
    TemplateLimits,
    as_text,
    keep_text,
    to_json,
    weight,
)

__all__ = ["CONTEXT_ROOTS", "PlaitSandbox", "Template", "TemplateEngine", "TemplateLimits"]

_ROOT_ORDER = ("inputs", "steps", "vars", "item", "index", "run", "env", "output", "state")
CONTEXT_ROOTS: frozenset[str] = frozenset(_ROOT_ORDER)
"""The names a template may read; the render context holds these and nothing else."""

_NAME = "<template>"  # never derived from input (CVE-2024-56201)
_RESULT = "_plait_result"
_FALLBACK: Any = object()

JINJA_KEPT = 4096
"""Compiled Jinja templates an engine keeps by source text (a few KB each)."""

_SHORTHAND = re.compile(r"\$([A-Za-z_]\w*)((?:\.[A-Za-z_]\w*|\[\d+\])*)")
_SPECIAL = re.compile(r"[${]")


# -- compiled values ----------------------------------------------------------------------------

_Render = Callable[[Mapping[str, Any]], Any]


class _Node(NamedTuple):
    render: _Render
    roots: frozenset[str] = frozenset()
    references: frozenset[str] = frozenset()
    static: bool = True
    slow: bool = False  # renders through Jinja, so wants a budget
    step_paths: frozenset[tuple[Any, ...]] = frozenset()  # for validation only


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
    return obj if kind in SCALARS or kind is dict or kind is list else _FALLBACK


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
            return _native(ctx.vars[_RESULT], cap)
        parts, total = [], 0
        for chunk in chunks:
            total += len(chunk)
            if total > cap:
                raise TemplateLimitError(f"rendered output is over {cap:,} characters")
            parts.append(chunk)
        return keep_text("".join(parts))

    return _budgeted(source, where, run, limits)


def _native(value: Any, cap: int) -> Any:
    """A lone expression's value as the run keeps it: JSON, within the output limit."""
    if type(value) is str:
        return keep_text(value)
    if type(value) is bool or value is None:
        return value
    if weight(value, cap) > cap:
        raise TemplateLimitError(f"template result is over the {cap:,}-character limit")
    return to_json(value)


def _budgeted(source: str, where: str, run: _Render, limits: TemplateLimits) -> _Render:
    """``run`` under a render budget (the caller's, else one of its own), its failures made
    TemplateErrors naming the expression and the field."""

    def render(context: Mapping[str, Any]) -> Any:
        try:
            if BUDGET.get() is not None:
                return run(context)
            token = BUDGET.set(Budget(limits))
            try:
                return run(context)
            finally:
                BUDGET.reset(token)
        except Exception as exc:
            if (err := _translate(exc, source, where)) is exc:
                raise
            raise err from exc

    return render


def _fast_leaf(source: str, where: str, evaluate: Eval, limits: TemplateLimits) -> _Render:
    """A lone expression compiled to closures (:mod:`plait.templates.fast`): what Jinja's
    code for it would compute, without a Jinja context per render."""
    cap = limits.max_output
    return _budgeted(source, where, lambda context: _native(evaluate(context), cap), limits)


def _path_leaf(
    source: str, where: str, path: tuple[str, tuple[Any, ...]], slow: _Render
) -> _Render:
    """A lone plain path: a dict walk returning the context's own value; Jinja as fallback."""
    root, keys = path
    if not keys:  # a whole root (``${steps}``): a copy, never the run's own live mapping

        def whole(context: Mapping[str, Any]) -> Any:
            try:
                return to_json(context[root])
            except KeyError:
                raise TemplateError(f"undefined: {root!r} is undefined") from None
            except Exception as exc:
                raise _translate(exc, source, where) from None

        return whole

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
                elif kind in SCALARS and (kind is not float or math.isfinite(value)):
                    out.append(as_text(value))
                else:
                    return slow(context)
            if sum(map(len, out)) > cap:
                raise TemplateLimitError(f"rendered output is over {cap:,} characters")
            text = keep_text("".join(out))
        except Exception as exc:  # also str() of a huge int, an odd Mapping, ...
            raise _translate(exc, source, where) from None
        return text

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


def _step_paths(paths: list[tuple[str, tuple[Any, ...]]]) -> frozenset[tuple[Any, ...]]:
    """The key chains plain paths read under ``steps`` past a step id (see ``Template``)."""
    return frozenset(
        keys for root, keys in paths if root == "steps" and len(keys) > 1 and type(keys[0]) is str
    )


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

    @property
    def step_paths(self) -> frozenset[tuple[Any, ...]]:
        """Constant key chains read under ``steps``, from the step id on: ``(id, field,
        key, ...)``. ``${steps.fetch.output.items[0].title}`` reads ``('fetch', 'output',
        'items', 0, 'title')``. For validation: a chain a template only tests (``is defined``,
        ``| default``), calls (``.get(...)``) or guards (``'x' in ...``) is left out, and so is
        a chain holding a computed key, from that key on."""
        return self._node.step_paths

    def render(self, context: Mapping[str, Any]) -> Any:
        """Evaluate every template in the value against ``context`` (root name to value).

        Returns fresh containers, except that a lone plain path returns the context's own value.

        Raises:
            TemplateError: a name or key is undefined, or evaluation failed.
            TemplateSecurityError: the template reached for something the sandbox forbids.
            TemplateLimitError: an output, size, loop or time limit was hit.
        """
        node = self._node
        if not node.slow or BUDGET.get() is not None:
            return node.render(context)
        token = BUDGET.set(Budget(self._limits))  # one budget shared by the whole structure
        try:
            return node.render(context)
        finally:
            BUDGET.reset(token)


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


_TOLERANT_FILTERS = frozenset({"default", "d"})
"""Filters that accept an undefined value: the key they are given may be missing."""
_GUARD_TESTS = frozenset({"defined", "undefined"})


def _all_nodes(root: nodes.Node) -> list[nodes.Node]:
    """Every node of a tree, parents before children, each once: one walk that the checks
    below share (Jinja's ``find_all`` is a recursive generator per call)."""
    out: list[nodes.Node] = []
    stack = [root]
    while stack:
        node = stack.pop()
        out.append(node)
        children = []
        for name in node.fields:
            value = getattr(node, name, None)
            if isinstance(value, nodes.Node):
                children.append(value)
            elif type(value) is list:
                children.extend(item for item in value if isinstance(item, nodes.Node))
        stack.extend(reversed(children))
    return out


def _read_paths(every: list[nodes.Node]) -> frozenset[tuple[Any, ...]]:
    """The constant key chains a Jinja template reads under ``steps``, past a step id.

    A chain that is called (``steps.a.output.get('x')``: a method), tested (``... is none``)
    or given to ``default`` is not a read of its last key; a template that asks whether a
    key exists (``is defined``, ``'x' in ...``) reads nothing certain, so it gives none.
    """
    spared: set[int] = set()
    for node in every:
        if not isinstance(node, (nodes.Call, nodes.Filter, nodes.Test, nodes.Compare)):
            continue
        if isinstance(node, nodes.Compare):
            if any(op.op in ("in", "notin") for op in node.ops):
                return frozenset()
        elif isinstance(node, nodes.Test) and node.name in _GUARD_TESTS:
            return frozenset()
        elif isinstance(node, nodes.Call | nodes.Test) or (
            isinstance(node, nodes.Filter) and node.name in _TOLERANT_FILTERS
        ):
            spared.add(id(node.node))  # a filter block's node is None: never a chain
    reads = set()
    for node in every:
        if not isinstance(node, (nodes.Getattr, nodes.Getitem)) or id(node) in spared:
            continue
        path = _plain_path(node)
        if path is not None and path[0] == "steps":
            keys = path[1]
            if len(keys) > 1 and type(keys[0]) is str:
                reads.add(keys)
    return frozenset(reads)


def _short(source: str) -> str:
    return repr(source if len(source) <= 200 else source[:200] + "…")


class TemplateEngine:
    """Compiles workflow values into :class:`Template` objects over one :class:`PlaitSandbox`."""

    def __init__(self, limits: TemplateLimits | None = None, *, fast: bool = True) -> None:
        """``fast``: read and evaluate expressions of the common subset without Jinja's
        pipeline (:mod:`plait.templates.fast`); off, everything goes through Jinja, which is
        what the differential tests compare the fast path with."""
        self.limits = limits or TemplateLimits()
        self.env = PlaitSandbox(self.limits)
        self.fast = fast
        self._jinja: dict[tuple[str, str], JinjaTemplate] = {}
        """Compiled Jinja templates by (mode, source), oldest first (see ``_built``)."""

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
            frozenset().union(*(kid.step_paths for kid in kids)),
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
            inside = parts[0][1]
            parsed = parse_fast(inside, env, CONTEXT_ROOTS) if self.fast else None
            if parsed is not None:  # read by Python's parser (plait.templates.fast)
                if parsed.path is not None:
                    fallback = _lazy(
                        text, where, lambda: self._build(self._native_ast(inside)), True, limits
                    )
                    return _Node(
                        _path_leaf(text, where, parsed.path, fallback),
                        *_path_names([parsed.path]),
                        False,
                        step_paths=_step_paths([parsed.path]),
                    )
                render = _fast_leaf(text, where, parsed.evaluate, limits)
                return _Node(
                    render,
                    parsed.roots,
                    parsed.references,
                    static=False,
                    slow=True,
                    step_paths=parsed.reads,
                )
            expr = self._parse_expression(inside)
            ast = nodes.Template([nodes.Assign(nodes.Name(_RESULT, "store"), expr, lineno=1)])
            if (path := _plain_path(expr)) is None:
                roots, refs, reads = self._analyse(ast, text, expression=True)
                evaluate = compile_fast(expr, env, CONTEXT_ROOTS) if self.fast else None
                if evaluate is not None:
                    render = _fast_leaf(text, where, evaluate, limits)
                else:
                    built = self._built(("native", parts[0][1]), lambda: self._build(ast))
                    render = _jinja_leaf(text, where, built, True, limits)
                return _Node(render, roots, refs, static=False, slow=True, step_paths=reads)
            fallback = _lazy(text, where, lambda: self._build(ast), True, limits)
            return _Node(
                _path_leaf(text, where, path, fallback),
                *_path_names([path]),
                False,
                step_paths=_step_paths([path]),
            )
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
            fast.append(None if jinja else self._path_of(chunk))
        source = "".join(chunks)
        if jinja or None in fast:
            ast = env.parse(source, name=_NAME)
            roots, refs, reads = self._analyse(ast, text, expression=not jinja)
            built = self._built(("text", source), lambda: self._build(ast))
            render = _jinja_leaf(text, where, built, False, limits)
            return _Node(render, roots, refs, static=False, slow=True, step_paths=reads)
        fallback = _lazy(
            text, where, lambda: self._build(env.parse(source, name=_NAME)), False, limits
        )
        paths = [part for part in fast if type(part) is tuple]
        render = _text_leaf(text, where, fast, fallback, limits.max_output)
        return _Node(render, *_path_names(paths), False, step_paths=_step_paths(paths))

    def _path_of(self, source: str) -> tuple[str, tuple[Any, ...]] | None:
        """The plain path an expression is, if it is one (Python's parser first)."""
        parsed = parse_fast(source, self.env, CONTEXT_ROOTS) if self.fast else None
        if parsed is not None:
            return parsed.path
        return _plain_path(self._parse_expression(source))

    def _native_ast(self, source: str) -> nodes.Template:
        """Jinja's tree of a lone expression: its value assigned to the result name."""
        expr = self._parse_expression(source)
        return nodes.Template([nodes.Assign(nodes.Name(_RESULT, "store"), expr, lineno=1)])

    def _parse_expression(self, source: str) -> nodes.Expr:
        parser = Parser(self.env, source, name=_NAME, state="variable")
        expr = parser.parse_expression()
        if not parser.stream.eos:
            token = parser.stream.current
            raise JinjaSyntaxError(f"unexpected {token.value!r} after the expression", token.lineno)
        return expr

    def _analyse(
        self, ast: nodes.Template, text: str, *, expression: bool = False
    ) -> tuple[frozenset[str], frozenset[str], frozenset[tuple[Any, ...]]]:
        """Refuse unknown names; return the roots, the step ids the template references and
        the key chains it reads under ``steps`` (see ``Template.step_paths``).

        ``expression``: the template is expressions only (no ``{% %}`` tags), which cannot
        bind a name, so every name it loads is undeclared: found by a walk of the tree rather
        than by Jinja's ``find_undeclared_variables``, which runs its code generator.
        """
        every = _all_nodes(ast)
        loaded = {n.name for n in every if type(n) is nodes.Name and n.ctx == "load"}
        names = loaded if expression else set(meta.find_undeclared_variables(ast))
        if "self" in loaded:
            names.add("self")  # Jinja resolves it to the template itself; never ours to expose
        usable = {name for name in self.env.globals if not name.startswith("__plait")}
        if unknown := sorted(names - CONTEXT_ROOTS - usable):
            raise _CompileIssue(
                f"unknown name {unknown[0]!r} in {_short(text)} "
                f"(expected one of {', '.join(_ROOT_ORDER)})"
            )
        refs = set()
        for node in every:
            if not isinstance(node, (nodes.Getattr, nodes.Getitem)):
                continue
            if not (isinstance(node.node, nodes.Name) and node.node.name == "steps"):
                continue
            if isinstance(node, nodes.Getattr):
                refs.add(node.attr)
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                refs.add(node.arg.value)
        reads = _read_paths(every) if refs else frozenset()
        return frozenset(names & CONTEXT_ROOTS), frozenset(refs), reads

    def _built(self, key: tuple[str, str], build: Callable[[], JinjaTemplate]) -> JinjaTemplate:
        """The Jinja template of a source, made once per engine: the same expression in
        another field, workflow or version reuses it (its code depends on the text alone)."""
        found = self._jinja.get(key)
        if found is None:
            found = build()
            if len(self._jinja) >= JINJA_KEPT:
                self._jinja.pop(next(iter(self._jinja)))
            self._jinja[key] = found
        return found

    def _build(self, ast: nodes.Template) -> JinjaTemplate:
        """Rewrite ``ast`` with the guards and compile it under a fixed name."""
        ast = Guard().visit(ast)
        ast.set_environment(self.env)
        code = self.env.compile(ast, name=_NAME, filename=_NAME)
        return self.env.template_class.from_code(self.env, code, self.env.make_globals(None))
