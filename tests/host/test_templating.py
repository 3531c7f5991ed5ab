"""Tests for plait.templates.engine: syntax, native types, references, sandbox and limits."""

from __future__ import annotations

import dataclasses
import json
import resource
import time

import jinja2
import pytest

from plait.errors import (
    TemplateError,
    TemplateLimitError,
    TemplateSecurityError,
    TemplateSyntaxError,
)
from plait.templates.engine import CONTEXT_ROOTS, Template, TemplateEngine, TemplateLimits

CTX = {
    "inputs": {"repo": "octo/cat", "pr": 7, "flag": True, "tags": ["a", "b"], "none": None},
    "steps": {
        "fetch": {"output": {"title": "Fix", "x": "2", "n": 3, "items": [1, 2, 3]}},
        "review": {"output": {"score": 0.9, "meta": {"k": "v"}}, "status": "succeeded"},
    },
    "vars": {"greeting": "hi"},
}


@pytest.fixture
def engine():
    return TemplateEngine()


def render(engine, value, context=CTX, **kw):
    return engine.compile(value, **kw).render(context)


def rss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# -- syntax -----------------------------------------------------------------------------------


def test_static_strings_never_reach_jinja(engine, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("Jinja was used for a static string")

    monkeypatch.setattr(engine.env, "parse", boom)
    monkeypatch.setattr(engine.env, "compile", boom)
    for text in ["plain", "a {b} c", "price: $5", 'json {"a": 1}', "$notaroot.x", "{# x"]:
        template = engine.compile(text)
        assert template.is_static
        assert template.render({}) is text
        assert template.roots == frozenset() and template.references == frozenset()


@pytest.mark.parametrize(
    "text",
    [
        "meta: ${steps.review.output.meta} flag: ${inputs.flag} none: ${inputs.none}",
        "meta: $steps.review.output.meta flag: $inputs.flag none: $inputs.none",
        "meta: {{ steps.review.output.meta }} flag: {{ inputs.flag }} none: {{ inputs.none }}",
        "{% if true %}meta: {{ steps.review.output.meta }}{% endif %} flag: ${inputs.flag} "
        "none: ${inputs.none}",
        "${'meta: ' ~ steps.review.output.meta ~ ' flag: ' ~ inputs.flag ~ ' none: ' ~ "
        "inputs.none}",
    ],
)
def test_values_inside_text_read_as_json_not_python(engine, text):
    """Issue 11: a dict, boolean or null printed into a string is JSON, however it is written."""
    assert render(engine, text) == 'meta: {"k": "v"} flag: true none: null'


def test_a_list_of_dicts_inside_text_is_json_a_program_can_parse(engine):
    text = render(engine, "tags=${inputs.tags} rows=${ [steps.review.output.meta, {'n': none}] }")
    head, rows = text.split(" rows=")
    assert head == 'tags=["a", "b"]'
    assert json.loads(rows) == [{"k": "v"}, {"n": None}]


def test_double_braces_print_like_a_dollar_expression(engine):
    """``{{ expr }}`` is Jinja's own output tag: supported, and it prints what ``${expr}`` does
    inside text (a string, never a native value)."""
    assert render(engine, "{{ inputs.pr + 1 }}") == "8"
    assert render(engine, "PR {{ inputs.pr }} of {{ inputs.repo }}") == "PR 7 of octo/cat"
    assert render(engine, "{{ inputs.tags }}") == '["a", "b"]'


def test_lone_expression_keeps_native_type(engine):
    assert render(engine, "${inputs.tags}") == ["a", "b"]
    assert render(engine, "${steps.review.output.meta}") == {"k": "v"}
    assert render(engine, "${inputs.pr}") == 7
    assert render(engine, "${inputs.flag}") is True
    assert render(engine, "${inputs.none}") is None
    assert render(engine, "${steps.review.output.score}") == 0.9
    assert render(engine, "${steps.fetch.output.n + 1}") == 4
    assert render(engine, "${steps.fetch.output.items | sum}") == 6
    assert render(engine, "${ {'a': 1}['a'] }") == 1
    assert render(engine, "${ (1, 2) }") == [1, 2]  # tuples become lists


def test_plain_path_keeps_json_type_string_stays_string(engine):
    assert render(engine, "${steps.fetch.output.x}") == "2"
    assert render(engine, "${ steps.fetch.output.x }") == "2"
    assert render(engine, "${steps['fetch'].output['x']}") == "2"
    assert render(engine, "${steps.fetch.output.items[1]}") == 2


def test_mixed_strings_render_to_text(engine):
    assert render(engine, "pr-${inputs.pr}") == "pr-7"
    assert render(engine, "${inputs.repo}#${inputs.pr}") == "octo/cat#7"
    assert render(engine, " ${inputs.pr}") == " 7"
    assert render(engine, "tags: ${inputs.tags | join(', ')}") == "tags: a, b"
    assert render(engine, "{{ inputs.repo | upper }}!") == "OCTO/CAT!"
    assert render(engine, "{% for t in inputs.tags %}[{{ t }}]{% endfor %}") == "[a][b]"
    assert render(engine, "{${inputs.pr}}") == "{7}"
    assert render(engine, "line ${inputs.pr}\n") == "line 7\n"  # trailing newline kept


def test_shorthand_only_for_context_roots(engine):
    assert render(engine, "$inputs.repo") == "octo/cat"
    assert render(engine, "$steps.fetch.output.title") == "Fix"
    assert render(engine, "$steps.fetch.output.items") == [1, 2, 3]
    assert render(engine, "$item", {"item": {"id": 1}}) == {"id": 1}
    assert render(engine, "$index", {"index": 3}) == 3
    assert render(engine, "see $inputs.repo.") == "see octo/cat."
    assert render(engine, "$notaroot and $inputs_x and $5") == "$notaroot and $inputs_x and $5"
    assert render(engine, "$vars.greeting, $notaroot") == "hi, $notaroot"


def test_double_dollar_is_a_literal_dollar(engine):
    assert render(engine, "cost $$5") == "cost $5"
    assert render(engine, "$${inputs.pr}") == "${inputs.pr}"
    assert render(engine, "$$inputs.pr is $inputs.pr") == "$inputs.pr is 7"
    assert engine.compile("cost $$5").is_static


def test_braces_and_quotes_inside_expressions(engine):
    assert render(engine, "${ '}' ~ \"{\" }") == "}{"
    assert render(engine, "x=${ {'a': {'b': 1}}['a']['b'] }") == "x=1"
    assert render(engine, "${ [1, [2, 3]][1] }") == [2, 3]


def test_structures_render_recursively_with_fresh_containers(engine):
    value = {
        "repo": "${inputs.repo}",
        "list": [1, "${inputs.pr}", {"k": "$$", "${not_a_key}": "x"}],
        "fixed": {"a": [1, 2]},
        "n": 5,
    }
    template = engine.compile(value, where="steps[0].with")
    assert not template.is_static
    first = template.render(CTX)
    assert first == {
        "repo": "octo/cat",
        "list": [1, 7, {"k": "$", "${not_a_key}": "x"}],
        "fixed": {"a": [1, 2]},
        "n": 5,
    }
    first["fixed"]["a"].append(3)
    assert template.render(CTX)["fixed"] == {"a": [1, 2]}
    assert value["fixed"] == {"a": [1, 2]}
    assert json.loads(json.dumps(first)) == first


def test_references_and_roots(engine):
    template = engine.compile(
        {
            "a": "${steps.fetch.output}",
            "b": ["${steps['review'].status}", "{{ steps.third.error }}"],
            "c": "$steps.four.output and ${inputs.repo}",
            "d": "${steps[inputs.repo]}",
        }
    )
    assert template.references == {"fetch", "review", "third", "four"}
    assert template.roots == {"steps", "inputs"}
    assert engine.compile("${ item.x + index }").roots == {"item", "index"}


def test_check_names_reports_disallowed_roots(engine):
    template = engine.compile("${ item.name } in ${ inputs.repo }")
    assert engine.check_names(template, CONTEXT_ROOTS) == []
    assert engine.check_names(template, ["inputs", "steps"]) == ["item"]


def test_unknown_name_fails_at_compile(engine):
    with pytest.raises(TemplateSyntaxError) as info:
        engine.compile("${foo.bar}", where="steps[1].with.x")
    (issue,) = info.value.issues
    assert issue.path == "steps[1].with.x"
    assert "unknown name 'foo'" in issue.message
    assert "inputs, steps" in issue.message


def test_parse_error_names_path_expression_and_reason(engine):
    with pytest.raises(TemplateSyntaxError) as info:
        engine.compile("hello ${ inputs.a + }", where="steps[2].with.repo")
    (issue,) = info.value.issues
    assert issue.path == "steps[2].with.repo"
    assert "inputs.a +" in issue.message
    assert "unexpected" in issue.message or "expected" in issue.message


def test_all_issues_of_a_structure_are_collected(engine):
    value = {"a": "${foo}", "b": ["ok", "${ (( }", "{% for %}"], "c": "${bar.x}"}
    with pytest.raises(TemplateSyntaxError) as info:
        engine.compile(value, where="steps[0].with")
    paths = [issue.path for issue in info.value.issues]
    assert paths == [
        "steps[0].with.a",
        "steps[0].with.b[1]",
        "steps[0].with.b[2]",
        "steps[0].with.c",
    ]


def test_unterminated_and_oversized_sources_are_syntax_errors(engine):
    with pytest.raises(TemplateSyntaxError, match="unterminated"):
        engine.compile("${ inputs.a")
    with pytest.raises(TemplateSyntaxError, match="over the 65,536-byte limit"):
        engine.compile("${ inputs.a }" + "x" * 70_000)
    small = TemplateEngine(TemplateLimits(max_source=10))
    with pytest.raises(TemplateSyntaxError):
        small.compile("é" * 6 + "${inputs.a}")


def test_unknown_filter_is_a_syntax_error(engine):
    with pytest.raises(TemplateSyntaxError, match="No filter named 'nope'"):
        engine.compile("${ inputs.repo | nope }")


# -- render errors ----------------------------------------------------------------------------


def test_undefined_key_names_field_and_expression(engine):
    template = engine.compile("${steps.nope.output.x}", where="steps[3].with.a")
    with pytest.raises(TemplateError) as info:
        template.render(CTX)
    err = info.value
    assert type(err) is TemplateError
    assert "undefined" in err.message and "'nope'" in err.message
    assert err.field == "steps[3].with.a"
    assert err.expression == "${steps.nope.output.x}"
    err.located(step="s3")
    assert err.step == "s3" and "step 's3'" in str(err)


@pytest.mark.parametrize(
    "source",
    [
        "${ steps.fetch.output.missing }",
        "x ${ steps.fetch.output.missing }",
        "${ steps.fetch.output.missing | upper }",
        "{{ steps.fetch.output.items[10] }}",
        "${ item }",
    ],
)
def test_undefined_everywhere_is_a_template_error(engine, source):
    with pytest.raises(TemplateError, match="undefined"):
        render(engine, source)


@pytest.mark.parametrize(
    ("source", "word"),
    [
        ("${ 1 / 0 }", "ZeroDivisionError"),
        ("${ inputs.pr + 'x' }", "TypeError"),
        ("${ 'x' | int + none }", "TypeError"),
        ("${ inputs.tags['a'] }", "undefined"),
    ],
)
def test_any_failure_inside_jinja_becomes_a_template_error(engine, source, word):
    with pytest.raises(TemplateError, match=word) as info:
        render(engine, source.replace("none", "inputs.none"))
    assert info.value.expression is not None


def test_dict_keys_win_over_dict_methods(engine):
    context = {"inputs": {"items": [1], "d": {"keys": "k"}}}
    assert render(engine, "${ inputs.items }", context) == [1]
    assert render(engine, "${ inputs.items | length }", context) == 1
    assert render(engine, "${ inputs.d.keys }", context) == "k"
    assert render(engine, "${ inputs.d.get('keys') }", context) == "k"
    assert (
        render(engine, "${ 'a' | safe }") == "a" and type(render(engine, "${ 'a' | safe }")) is str
    )


def test_fast_path_falls_back_to_the_sandbox_for_non_json_objects(engine):
    context = {"inputs": {"t": (10, 20)}, "run": {"id": "r1"}}
    assert render(engine, "${ inputs.t[1] }", context) == 20
    assert render(engine, "id=${ run.id } t=${ inputs.t[0] }", context) == "id=r1 t=10"


# -- non-JSON results (docs/reliability.md §40) -------------------------------------------------


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("${ range(3) }", "range"),
        ("${ lipsum }", "function"),
        ("${ cycler(1, 2) }", "Cycler"),
        ("${ inputs.tags | map('upper') }", "generator"),
        ("${ 1e308 * 10 }", "inf"),
        ("${ {1: 2} }", "dict key 1"),
        ("x ${ range(3) }", "range"),
        ("${ [range] }", "function"),
    ],
)
def test_non_json_results_fail(engine, source, kind):
    with pytest.raises(TemplateError, match="JSON") as info:
        render(engine, source)
    assert kind in str(info.value)


# -- compile_expression -----------------------------------------------------------------------


def test_compile_expression_bare_and_template_forms(engine):
    assert engine.compile_expression("steps.review.output.score >= 0.8").render(CTX) is True
    assert engine.compile_expression("${steps.review.output.score >= 0.8}").render(CTX) is True
    assert engine.compile_expression("  ${ inputs.flag }  ").render(CTX) is True
    assert engine.compile_expression("$inputs.flag").render(CTX) is True
    assert engine.compile_expression("inputs.tags").render(CTX) == ["a", "b"]
    assert engine.compile_expression("inputs.pr > 10").render(CTX) is False
    assert engine.compile_expression("pr ${inputs.pr}").render(CTX) == "pr 7"
    template = engine.compile_expression("steps.fetch.output.n > 1", where="steps[4].if")
    assert template.references == {"fetch"} and template.where == "steps[4].if"
    with pytest.raises(TemplateSyntaxError, match="unknown name 'nope'"):
        engine.compile_expression("nope > 1")
    with pytest.raises(TemplateSyntaxError):
        engine.compile_expression("inputs.pr >")


def test_plugin_filters_and_globals_work_once_added(engine):
    with pytest.raises(TemplateSyntaxError):
        engine.compile("${ inputs.repo | shout }")
    engine.env.filters["shout"] = lambda s: s.upper() + "!"
    engine.env.globals["answer"] = 42
    assert render(engine, "${ inputs.repo | shout }") == "OCTO/CAT!"
    assert render(engine, "${ inputs.tags | map('shout') | list }") == ["A!", "B!"]
    assert render(engine, "${ answer + 1 }") == 43


def test_template_is_immutable_and_reusable(engine):
    template = engine.compile("${inputs.pr}")
    assert isinstance(template, Template)
    with pytest.raises(dataclasses.FrozenInstanceError):
        template.where = "x"  # type: ignore[misc]
    assert [template.render({"inputs": {"pr": n}}) for n in range(3)] == [0, 1, 2]


# -- sandbox (docs/reliability.md §34, §35, §39, §41) -------------------------------------------


def _escape_payloads(path):
    cmd = f"touch {path}"
    return [
        "{{ ''.__class__ }}",
        "${ ''.__class__ }",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ ''['__class__'] }}",
        f"{{{{ cycler.__init__.__globals__.os.popen('{cmd}').read() }}}}",
        f"{{{{ joiner.__init__.__globals__.os.popen('{cmd}').read() }}}}",
        f"{{{{ namespace.__init__.__globals__.os.popen('{cmd}').read() }}}}",
        f"{{{{ lipsum.__globals__['os'].popen('{cmd}').read() }}}}",
        f"{{{{ lipsum.__globals__.os.system('{cmd}') }}}}",
        "{{ ''|attr('__class__') }}",
        "{{ (''|attr('__class__')|attr('__mro__'))[1]|attr('__subclasses__')() }}",
        "{{ '{0.__class__}'.format('') }}",
        "{{ '{x.__class__.__mro__}'.format_map({'x': ''}) }}",
        "{{ ('{0.__class__}'|safe).format('') }}",
        # CVE-2024-56326: a stored str.format reached through a filter that calls it
        "{% set f = '{0.__init__.__globals__[os]}'.format %}{{ f | call(cycler) }}",
        # CVE-2025-27516: str.format fetched through |attr
        '{{ "{0.__init__.__globals__[__builtins__]}" | attr("format")(cycler) }}',
        "{{ [].append(1) }}",
        "{{ inputs.pop('repo') }}",
        "{{ dict.__subclasses__() }}",
        "{{ dict.mro() }}",
        "{{ inputs.__class__ }}",
        "${ inputs.__class__ }",
        "$inputs.__class__",
        "{{ inputs.items.__self__ }}",
        "{% for x in [1] %}{{ loop.__class__ }}{% endfor %}",
        "{{ range.__globals__ }}",
        "{{ namespace(a=1).__dict__ }}",
    ]


def test_escape_payloads_raise_security_errors_and_touch_nothing(engine, tmp_path):
    engine.env.filters["call"] = lambda func, *args: func(*args)  # a plugin-style filter
    sentinel = tmp_path / "pwned"
    for payload in _escape_payloads(sentinel):
        with pytest.raises(TemplateSecurityError) as info:
            render(engine, payload)
        assert "unsafe" in str(info.value)
        assert info.value.expression == payload
        assert not sentinel.exists(), payload


def test_escape_payloads_cannot_read_files(engine, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    payloads = [
        f"{{{{ cycler.__init__.__globals__.__builtins__.open('{secret}').read() }}}}",
        f"{{{{ lipsum.__globals__.__builtins__.open('{secret}').read() }}}}",
        f"{{{{ '{{0.__init__.__globals__[__builtins__][open]}}'.format(cycler)('{secret}') }}}}",
    ]
    for payload in payloads:
        with pytest.raises(TemplateSecurityError) as info:
            render(engine, payload)
        assert "TOPSECRET" not in str(info.value)


def test_payload_is_real_outside_the_sandbox(tmp_path):
    sentinel = tmp_path / "pwned"
    payload = f"{{{{ cycler.__init__.__globals__.os.system('touch {sentinel}') }}}}"
    jinja2.Environment().from_string(payload).render()  # stock Jinja runs it
    assert sentinel.exists()
    sentinel.unlink()
    with pytest.raises(TemplateSecurityError):
        render(TemplateEngine(), payload)
    assert not sentinel.exists()


def test_unsafe_attribute_names_the_attribute(engine):
    with pytest.raises(TemplateSecurityError, match="'__class__' of 'str'") as info:
        render(engine, "{{ ''.__class__ }}", where="steps[0].with.x")
    assert info.value.field == "steps[0].with.x"


@pytest.mark.parametrize("name", ["self", "config", "request", "os", "__builtins__", "cycler2"])
def test_context_holds_only_roots(engine, name):
    with pytest.raises(TemplateSyntaxError, match=f"unknown name '{name}'"):
        engine.compile(f"{{{{ {name} }}}}")


def test_context_values_not_passed_are_undefined(engine):
    with pytest.raises(TemplateError, match="undefined"):
        render(engine, "${ inputs.config }")
    with pytest.raises(TemplateError, match="'env' is undefined"):
        render(engine, "${ env.HOME }")


@pytest.mark.parametrize(
    "source",
    [
        "{% include 'data.txt' %}",
        "{% import 'data.txt' as d %}{{ d }}",
        "{% from 'data.txt' import x %}{{ x }}",
        "{% extends 'data.txt' %}",
        "{% include ['data.txt'] %}",
        "{% extends inputs.repo %}",
    ],
)
def test_templates_cannot_load_files(engine, tmp_path, monkeypatch, source):
    (tmp_path / "data.txt").write_text("FILECONTENT {% set x = 1 %}")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TemplateSecurityError, match="not available") as info:
        render(engine, source)
    assert "FILECONTENT" not in str(info.value)


# -- limits (docs/reliability.md §37, §38) ------------------------------------------------------

BIG = "x" * 900_000
LIMIT_CTX = {"inputs": {"big": BIG, "nl": "\n" * 900_000, "tabs": "\t" * 1000}}
LIMIT_PAYLOADS = [
    "{{ 'a'*10**9 }}",
    "${ 'a' * 10**9 }",
    "${ [1] * 10**9 }",
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    "${ '%400000000d' % 1 }",
    "${ '%.400000000f' % 1 }",
    "${ '%*d' % (10**9, 1) }",
    "${ '%400000000d' | format(1) }",
    "${ lipsum(n=10**6) }",
    "${ lipsum(1, max=10**9) }",
    "${ 'a' | center(10**9) }",
    "${ 'a'.center(10**9) }",
    "${ 'a'.ljust(10**9) }",
    "${ '1'.zfill(10**9) }",
    "${ inputs.tabs.expandtabs(10**6) }",
    "${ '{:>1000000000}'.format(1) }",
    "${ '{:{}}'.format(1, 10**9) }",
    "${ 2 ** (10**9) }",
    "${ (1).to_bytes(10**9, 'big') }",
    "${ (1).to_bytes(length=10**9, byteorder='big') }",
    "${ inputs.tabs.expandtabs(tabsize=10**6) }",
    "${ range(10**10) }",
    "${ inputs.big ~ inputs.big }",
    "${ inputs.big + inputs.big }",
    "${ inputs.big.replace('x', inputs.big) }",
    "${ inputs.big | replace('x', 'yy') }",
    "${ inputs.nl | indent(100) }",
    "${ inputs.big | wordwrap(1) }",
    "${ [inputs.big, inputs.big] }",
    "${ ['ab'] | join(inputs.big) ~ (range(3) | map('string') | join(inputs.big)) }",
    "${ dict.fromkeys(range(100000), inputs.big) | tojson }",
    "${ [1] | batch(10**6) | list }",
    "{% for i in range(100000) %}{{ inputs.big }}{% endfor %}",
    "{% set ns = namespace(x=2) %}{% for i in range(64) %}{% set ns.x = ns.x * ns.x %}"
    "{% endfor %}{{ ns.x > 0 }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s | length }}",
    "{% set ns = namespace(x=[1]) %}{% for i in range(64) %}{% set ns.x = [ns.x, ns.x] %}"
    "{% endfor %}{{ ns.x }}",
    "{% macro f() %}{% for i in range(100000) %}" + "y" * 60_000 + "{% endfor %}{% endmacro %}"
    "{{ f() | length }}",
    "{% set x %}{% for i in range(100000) %}" + "z" * 1000 + "{% endfor %}{% endset %}"
    "{{ x | length }}",
    "{% for i in range(99999) %}{% set x = range(50) | list %}{% endfor %}{{ 1 }}"
    "{% for i in range(10) %}{% endfor %}",
    "${ inputs.big | list | sort }",
]


@pytest.mark.parametrize("source", LIMIT_PAYLOADS)
def test_limits_fail_fast_without_memory_growth(engine, source):
    before = rss_kib()
    started = time.monotonic()
    with pytest.raises(TemplateLimitError) as info:
        render(engine, source, LIMIT_CTX)
    assert time.monotonic() - started < 3.0
    assert (rss_kib() - before) / 1024 < 100
    assert info.value.expression == source


def test_ordinary_padding_and_formatting_still_work(engine):
    assert render(engine, "${ '{:>5}|{:0>3}|{:1}{:1}'.format('a', 7, 1, 2) }") == "    a|007|12"
    assert render(engine, "${ '%5d|%-3s|' % (3, 'x') }") == "    3|x  |"
    assert render(engine, "${ 'ab' | center(6) }") == "  ab  "
    assert render(engine, "${ 'a\tb'.expandtabs(4) }") == "a   b"
    assert render(engine, "${ ['a', 'b'] | join('-') }") == "a-b"
    assert render(engine, "${ 'x'.join(['a', 'b']) }") == "axb"
    assert render(engine, "${ 'aaa'.replace('a', 'bb') }") == "bbbbbb"
    assert render(engine, "${ 'a\nb' | indent(2, first=True) }") == "  a\n  b"
    assert render(engine, "${ [1, 2] * 2 }") == [1, 2, 1, 2]
    assert render(engine, "${ 2 ** 100 }") == 2**100
    assert render(engine, "${ lipsum(2, html=False) | length > 10 }") is True


def test_wall_time_limit():
    engine = TemplateEngine(TemplateLimits(max_seconds=0.2, max_iterations=10**9))
    started = time.monotonic()
    source = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    with pytest.raises(TemplateLimitError, match="time limit"):
        render(engine, source)
    assert time.monotonic() - started < 1.5


def test_limits_are_configurable():
    engine = TemplateEngine(TemplateLimits(max_output=10, max_iterations=5, max_range=3))
    assert render(engine, "${ 'a' * 10 }") == "a" * 10
    with pytest.raises(TemplateLimitError):
        render(engine, "${ 'a' * 11 }")
    with pytest.raises(TemplateLimitError, match="over 10 characters"):
        render(engine, "{{ 'abcdef' }}{{ 'ghijkl' }}")
    with pytest.raises(TemplateLimitError, match="loop iterations"):
        render(engine, "{% for i in inputs.six %}{% endfor %}", {"inputs": {"six": [1] * 6}})
    with pytest.raises(TemplateLimitError, match="range"):
        render(engine, "${ range(4) | list }")


def test_budget_is_shared_by_a_structure():
    engine = TemplateEngine(TemplateLimits(max_iterations=5))
    loop = "{% for i in [1, 2, 3] %}{% endfor %}"
    assert render(engine, loop) == ""
    with pytest.raises(TemplateLimitError, match="loop iterations"):
        render(engine, {"a": loop, "b": loop})


def test_output_limit_applies_to_fast_path_text():
    engine = TemplateEngine(TemplateLimits(max_output=5))
    with pytest.raises(TemplateLimitError, match="over 5 characters"):
        render(engine, "repo=${inputs.repo}")
    assert render(engine, "${inputs.repo}") == "octo/cat"  # a plain path is passed through


@pytest.mark.parametrize(
    "source",
    [
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}",
    ],
)
def test_recursion_is_a_template_error(engine, source):
    with pytest.raises(TemplateError, match="recursion"):
        render(engine, source)


@pytest.mark.parametrize(
    "source",
    [
        "${" + "(" * 2000 + "1" + ")" * 2000 + "}",
        "{{ " + "(" * 2000 + "1" + ")" * 2000 + " }}",
        "${" + "[" * 2000 + "]" * 2000 + "}",
        "${ inputs.a" + "[0]" * 5000 + " | length }",
        "{% if 1 %}" * 2000 + "{% endif %}" * 2000,
    ],
)
def test_deep_nesting_is_a_syntax_error(engine, source):
    with pytest.raises(TemplateSyntaxError, match="nested too deeply|cannot parse"):
        engine.compile(source)


def test_moderate_nesting_still_works(engine):
    assert render(engine, "${" + "(" * 30 + "1" + ")" * 30 + "}") == 1
    assert render(engine, "${ 1" + " + 1" * 60 + " }") == 61


def test_engine_keeps_serving_after_failures(engine):
    for source in LIMIT_PAYLOADS[:5] + ["{{ ''.__class__ }}", "${ 1/0 }"]:
        with pytest.raises(TemplateError):
            render(engine, source, LIMIT_CTX)
    assert render(engine, "pr-${ inputs.pr * 2 }") == "pr-14"
