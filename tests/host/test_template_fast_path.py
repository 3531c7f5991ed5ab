"""The fast path of templates (``plait.templates.fast``) against Jinja itself.

Expressions of the common subset are read by Python's parser and evaluated by closures; every
other expression goes through Jinja. For generated expressions of the subset (and a few past
its edges), an engine with the fast path and one without it must agree exactly: the same
value of the same type, or the same error with the same message, and the same validation facts
(roots, referenced steps, read paths).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plait.errors import TemplateError, TemplateSyntaxError
from plait.templates.engine import TemplateEngine
from plait.templates.fast import parse_fast

pytestmark = pytest.mark.timeout(120)

FAST = TemplateEngine()
JINJA = TemplateEngine(fast=False)
CONTEXT: dict[str, Any] = {
    "inputs": {"x": 3, "neg": -2, "l": [1, 2, 3], "s": "ab", "big": 10**12, "f": 1.5},
    "steps": {
        "a": {"output": {"n": 2, "s": "hi", "l": [1, 2], "d": {"k": 1.5}, "z": 0, "t": True}},
        "b": {"output": None, "status": "succeeded"},
    },
    "vars": {"v": 10, "name": "ada"},
    "run": {"id": "r1"},
}

ATOMS = [
    "0",
    "1",
    "2",
    "7",
    "1.5",
    "0.0",
    "1e3",
    "1_000",
    "0x1f",
    "'a'",
    '"b"',
    "''",
    "'x' 'y'",
    "true",
    "false",
    "none",
    "True",
    "None",
    "inputs.x",
    "inputs.neg",
    "inputs.l",
    "inputs.l[0]",
    "inputs.l[5]",
    "inputs.s",
    "inputs.big",
    "inputs.f",
    "inputs.missing",
    "steps.a.output.n",
    "steps.a.output.s",
    "steps.a.output.l",
    "steps.a.output.d.k",
    "steps.a.output.z",
    "steps.a.output.t",
    "steps['a'].output.n",
    "steps.a['output']['l'][1]",
    "steps.b.output",
    "steps.b.output.x",
    "steps.nope.output",
    "vars.v",
    "vars.name",
    "run.id",
    "steps.a.output.d[inputs.s]",
    "inputs.l[steps.a.output.z]",
    "steps.a.output.__class__",
    "steps.__dict__",
    "steps._private.output",
    "steps['_x'].output",
    "inputs.keys",
]
BINARY = ["+", "-", "*", "/", "//", "%", "**", "==", "!=", "<", "<=", ">", ">=", "in", "not in"]
BINARY += ["and", "or"]


def expressions() -> st.SearchStrategy[str]:
    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.tuples(inner, st.sampled_from(BINARY), inner).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
            st.tuples(st.sampled_from(["-", "not ", "+"]), inner).map("".join),
            inner.map(lambda e: f"({e})"),
            st.tuples(inner, inner, inner).map(lambda t: f"{t[0]} if {t[1]} else {t[2]}"),
            st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
            st.lists(inner, min_size=2, max_size=3).map(lambda items: "(" + ", ".join(items) + ")"),
            st.tuples(inner, inner, inner).map(lambda t: f"{t[0]} < {t[1]} < {t[2]}"),
        )

    return st.recursive(st.sampled_from(ATOMS), extend, max_leaves=6)


def outcome(engine: TemplateEngine, text: str) -> tuple[str, Any]:
    """What compiling and rendering ``text`` gives: ("value", type and repr), or the error."""
    try:
        template = engine.compile(text, where="with.x")
    except TemplateSyntaxError as exc:
        return "syntax", str(exc)
    facts = (sorted(template.roots), sorted(template.references), sorted(template.step_paths))
    try:
        value = template.render(CONTEXT)
    except TemplateError as exc:
        return "error", (type(exc).__name__, str(exc), facts)
    return "value", (type(value).__name__, repr(value), facts)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions())
def test_the_fast_path_agrees_with_jinja(expression):
    text = "${ " + expression + " }"
    assert outcome(FAST, text) == outcome(JINJA, text)


@settings(max_examples=200, deadline=None)
@given(expressions())
def test_inside_text_the_fast_path_agrees_with_jinja(expression):
    text = "n=${ " + expression + " }!"
    assert outcome(FAST, text) == outcome(JINJA, text)


@pytest.mark.parametrize(
    "expression",
    [
        "2 ** 3 ** 2",  # Jinja's power is left-associative
        "-2 ** 2",  # and a sign binds tighter than it
        "2 ** -1",
        "inputs.x is defined",
        "inputs.l | length",
        "inputs.l[1:]",
        ".5 + 1",
        "1. + 1",
        "1.e3",
        "inputs.x, 1",
        "range(3)",
        "unknown.x + 1",
        "inputs.x ~ 'a'",
        "{'a': inputs.x}",
        "inputs.x if true",
        "'a\\nb'",
        "r'a'",
        "1j",
        "inputs.x\n+ 1",
        "inputs.x +",
        "'a' * 10000000",
        "inputs.big ** inputs.big",
        "inputs.l * 100000000",
        "steps.a.output.n / steps.a.output.z",
        "'%s' % inputs.x",
    ],
)
def test_the_edges_of_the_subset_agree_with_jinja(expression):
    text = "${ " + expression + " }"
    assert outcome(FAST, text) == outcome(JINJA, text)


@pytest.mark.parametrize(
    "expression",
    ["2 ** 3 ** 2", "-2 ** 2", "inputs.x is defined", "inputs.l[1:]", ".5", "1.", "a, b", "r'x'"],
)
def test_where_the_grammars_differ_python_does_not_read_it(expression):
    assert parse_fast(expression, FAST.env, frozenset({"inputs", "a", "b"})) is None


def test_the_common_subset_is_read_by_python():
    for expression in ["steps.a.output + 1", "inputs.x > 2 and not vars.flag", "[inputs.x, 1]"]:
        assert parse_fast(expression, FAST.env, frozenset({"steps", "inputs", "vars"}))
