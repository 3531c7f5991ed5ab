"""Compiling workflows: every problem found before a run, each with its path and line."""

from __future__ import annotations

import pytest

import plait
from plait.definition import compiler

BUILTIN_TYPES = (
    "agent",
    "delay",
    "if",
    "loop",
    "parallel",
    "tool",
    "transform",
    "validate",
    "wait",
    "workflow",
)


def compile_text(pm, text, config=None):
    return plait.Engine(pm, config).compile(text)


def problems(pm, text, config=None) -> list[plait.Issue]:
    with pytest.raises(plait.DefinitionError) as info:
        compile_text(pm, text, config)
    return info.value.issues


def one_problem(pm, text, config=None) -> plait.Issue:
    issues = problems(pm, text, config)
    assert len(issues) == 1, issues
    return issues[0]


def wf(steps: str, head: str = "") -> str:
    """A workflow whose steps start on line 3 (line 3 + the lines of ``head``)."""
    return f"name: t\n{head}steps:\n{steps}"


def line_of(text: str, marker: str) -> int:
    """1-based line of the first line containing ``marker``."""
    for number, line in enumerate(text.splitlines(), 1):
        if marker in line:
            return number
    raise AssertionError(f"{marker!r} not in the text")


def step(compiled: plait.CompiledWorkflow, step_id: str) -> compiler.CompiledStep:
    return compiled.scope.steps[compiled.scope.by_id[step_id]]


def deps_of(compiled: plait.CompiledWorkflow, step_id: str) -> set[str]:
    scope = compiled.scope
    return {scope.steps[d].id for d in step(compiled, step_id).deps}


# -- each problem on its own -------------------------------------------------------------------


def test_unknown_step_type_lists_the_known_types(pm):
    issue = one_problem(pm, wf("  - id: a\n    transform: 1\n  - id: b\n    frob: 1\n"))
    assert (issue.path, issue.line) == ("steps[1]", 5)
    assert "unknown step type" in issue.message
    assert "frob" in issue.message
    for key in BUILTIN_TYPES:
        assert key in issue.message.split("known types:")[1]


def test_unknown_field_for_a_step_type(pm):
    issue = one_problem(pm, wf("  - id: a\n    tool: probe.echo\n    bogus: 1\n"))
    assert (issue.path, issue.line) == ("steps[0].bogus", 5)
    assert issue.message == "unknown field for a 'tool' step"


def test_missing_required_field(pm):
    issue = one_problem(pm, wf("  - id: a\n    type: tool\n    with: {value: 1}\n"))
    assert issue.path == "steps[0].tool"
    assert issue.message == "required field is missing"


def test_duplicate_id(pm):
    issue = one_problem(
        pm, wf("  - {id: a, transform: 1}\n  - {id: b, transform: 2}\n  - {id: a, transform: 3}\n")
    )
    assert (issue.path, issue.line) == ("steps[2].id", 5)
    assert "duplicate step id 'a'" in issue.message
    assert "steps[0]" in issue.message


def test_needs_a_missing_step_suggests_a_close_one(pm):
    issue = one_problem(
        pm, wf("  - {id: fetch, transform: 1}\n  - id: use\n    transform: 2\n    needs: [fetc]\n")
    )
    assert (issue.path, issue.line) == ("steps[1].needs", 6)
    assert "unknown step 'fetc'" in issue.message
    assert "did you mean 'fetch'?" in issue.message


def test_needs_a_missing_step_without_a_close_one(pm):
    issue = one_problem(
        pm, wf("  - {id: fetch, transform: 1}\n  - {id: use, transform: 2, needs: zzz}\n")
    )
    assert "unknown step 'zzz'" in issue.message
    assert "did you mean" not in issue.message


def test_needs_any_a_missing_step(pm):
    issue = one_problem(
        pm,
        wf(
            "  - {id: fetch, transform: 1}\n  - {id: use, transform: 2, needs_any: [fetch, ftch]}\n"
        ),
    )
    assert issue.path == "steps[1].needs_any"
    assert "'ftch'" in issue.message and "did you mean 'fetch'?" in issue.message


def test_template_reference_to_a_missing_step(pm):
    issue = one_problem(
        pm, wf('  - {id: a, transform: 1}\n  - id: b\n    transform: "${steps.nope.output.x}"\n')
    )
    assert (issue.path, issue.line) == ("steps[1].transform", 5)
    assert issue.message == "refers to unknown step 'nope'"


def test_template_reference_to_a_missing_step_has_the_field_path(pm):
    """The path of a reference error is the field holding it."""
    issue = one_problem(
        pm,
        wf(
            "  - id: a\n    description: a mapping of values\n    transform:\n"
            '      keep: 1\n      repo: "${steps.nope.output}"\n'
        ),
    )
    assert (issue.path, issue.line) == ("steps[0].transform.repo", 7)


def test_a_bad_template_does_not_hide_a_missing_reference_beside_it(pm):
    issues = problems(
        pm,
        wf(
            "  - id: a\n    description: a mapping of values\n    transform:\n"
            '      bad: "${ 1 + }"\n      ref: "${steps.nope.output}"\n'
        ),
    )
    assert [(i.path, i.line) for i in issues] == [
        ("steps[0].transform.bad", 6),
        ("steps[0].transform.ref", 7),
    ]
    assert "parse" in issues[0].message
    assert issues[1].message == "refers to unknown step 'nope'"


def test_template_reference_to_a_close_name_suggests_it(pm):
    issue = one_problem(
        pm, wf('  - {id: fetch, transform: 1}\n  - {id: b, transform: "${steps.fecth.output}"}\n')
    )
    assert "'fecth'" in issue.message and "did you mean 'fetch'?" in issue.message


@pytest.mark.parametrize("field", ["when", "with"])
def test_references_in_any_field_are_checked(pm, field):
    value = '"steps.gone.output"' if field == "when" else '{value: "${steps.gone.output}"}'
    issue = one_problem(pm, wf(f"  - id: a\n    tool: probe.echo\n    {field}: {value}\n"))
    assert issue.path == ("steps[0].when" if field == "when" else "steps[0].with.value")
    assert issue.line == 5
    assert "'gone'" in issue.message


def test_missing_step_reference_fails_before_the_run_starts(pm, probe):
    """docs/reliability.md §36: nothing runs; the error names the step."""
    definition = {
        "name": "t",
        "steps": [
            {"id": "first", "tool": "probe.echo", "with": {"value": 1}},
            {"id": "second", "transform": "${steps.nope.output.x}", "needs": ["first"]},
        ],
    }
    with pytest.raises(plait.DefinitionError) as info:
        plait.run_sync(definition, pm=pm, config=plait.HostConfig())
    assert "'nope'" in str(info.value)
    assert probe.calls == []


def test_template_with_an_unknown_root(pm):
    issue = one_problem(pm, wf('  - id: a\n    transform: "${foo.x}"\n'))
    assert (issue.path, issue.line) == ("steps[0].transform", 4)
    assert "'foo'" in issue.message


def test_unknown_root_in_a_nested_field_has_the_nested_path(pm):
    issue = one_problem(
        pm, wf('  - id: a\n    tool: probe.echo\n    with:\n      value: "${foo.x}"\n')
    )
    assert (issue.path, issue.line) == ("steps[0].with.value", 6)


def test_cycle_of_three_names_every_step_in_order(pm):
    text = wf(
        '  - {id: a, transform: "${steps.c.output}"}\n'
        '  - {id: b, transform: "${steps.a.output}"}\n'
        "  - {id: c, needs: [b], transform: 1}\n"
        "  - {id: free, transform: 1}\n"
    )
    issue = one_problem(pm, text)
    assert "dependency cycle" in issue.message
    names = issue.message.split(":", 1)[1].strip().split(" → ")
    assert names[0] == names[-1]
    ring = names[:-1]
    assert sorted(ring) == ["a", "b", "c"]
    start = ring.index("a")
    assert ring[start:] + ring[:start] == ["a", "b", "c"]  # in the order the steps would run
    assert issue.path in {"steps[0]", "steps[1]", "steps[2]"}
    assert issue.line == 3 + int(issue.path[6])


def test_cycle_of_two_through_needs(pm):
    issue = one_problem(
        pm, wf("  - {id: a, transform: 1, needs: b}\n  - {id: b, transform: 1, needs: a}\n")
    )
    assert "dependency cycle" in issue.message
    assert set(issue.message.split(":", 1)[1].strip().split(" → ")) == {"a", "b"}


def test_self_reference_in_a_template(pm):
    issue = one_problem(
        pm, wf('  - {id: a, transform: 1}\n  - {id: me, transform: "${steps.me.output}"}\n')
    )
    assert (issue.path, issue.line) == ("steps[1].transform", 4)
    assert "'me' refers to its own output" in issue.message


def test_self_reference_in_needs(pm):
    issue = one_problem(pm, wf("  - {id: me, transform: 1, needs: [me]}\n"))
    assert issue.path == "steps[0].needs"
    assert "'me' cannot need itself" in issue.message


def test_unparsable_expression(pm):
    issue = one_problem(pm, wf('  - id: a\n    transform: "${ 1 + }"\n'))
    assert (issue.path, issue.line) == ("steps[0].transform", 4)
    assert "parse" in issue.message
    assert "${ 1 + }" in issue.message


def test_unparsable_condition(pm):
    issue = one_problem(pm, wf('  - {id: c, if: "1 +", then: [x]}\n  - {id: x, transform: 1}\n'))
    assert issue.path == "steps[0].if"
    assert "parse" in issue.message


def test_then_names_a_missing_step(pm):
    issue = one_problem(
        pm,
        wf(
            '  - id: c\n    if: "true"\n    then: [approve]\n'
            "    else: [coment]\n  - {id: approve, transform: 1}\n"
            "  - {id: comment, transform: 2}\n"
        ),
    )
    assert (issue.path, issue.line) == ("steps[0].else", 6)
    assert "unknown step 'coment'" in issue.message
    assert "did you mean 'comment'?" in issue.message


def test_a_step_is_the_branch_of_one_condition_only(pm):
    issue = one_problem(
        pm,
        wf(
            '  - {id: c1, if: "true", then: [x]}\n'
            '  - {id: c2, if: "true", then: [x]}\n'
            "  - {id: x, transform: 1}\n"
        ),
    )
    assert issue.path == "steps[1].then"
    assert "already a branch of step 'c1'" in issue.message


def test_condition_naming_itself(pm):
    issue = one_problem(pm, wf('  - {id: c, if: "true", then: [c]}\n'))
    assert issue.path == "steps[0].then"
    assert issue.message == "step 'c' cannot be its own branch"


def test_on_error_names_a_missing_step(pm):
    issue = one_problem(
        pm,
        wf(
            "  - id: a\n    tool: probe.echo\n    on_error: backpu\n"
            "  - {id: backup, transform: 1}\n"
        ),
    )
    assert (issue.path, issue.line) == ("steps[0].on_error", 5)
    assert "'backpu'" in issue.message


def test_step_naming_itself_as_its_fallback(pm):
    issue = one_problem(pm, wf("  - {id: a, tool: probe.echo, on_error: a}\n"))
    assert issue.path == "steps[0].on_error"
    assert "expected fail, continue" not in issue.message
    assert "own fallback" in issue.message


def test_fallback_used_twice(pm):
    issue = one_problem(
        pm,
        wf(
            "  - {id: a, tool: probe.echo, on_error: backup}\n"
            "  - {id: b, tool: probe.echo, on_error: backup}\n"
            "  - {id: backup, transform: 1}\n"
        ),
    )
    assert (issue.path, issue.line) == ("steps[1].on_error", 4)
    assert "'backup' is already the fallback of another step" in issue.message


@pytest.mark.parametrize(
    ("fields", "keys"),
    [
        ("tool: probe.echo, transform: 1", "tool and transform"),
        ("tool: x, wait: e", "tool and wait"),
        (
            "loop: [1], parallel: {a: [{id: q, transform: 1}]}, steps: [{id: z, transform: 1}]",
            "loop and parallel",
        ),
    ],
)
def test_ambiguous_type_keys(pm, fields, keys):
    issue = one_problem(pm, wf(f"  - {{id: a, {fields}}}\n"))
    assert (issue.path, issue.line) == ("steps[0]", 3)
    assert issue.message.startswith(f"ambiguous step type: fields {keys} each name a step type")
    assert "type:" in issue.message  # says how to choose


def test_type_naming_an_unknown_type(pm):
    issue = one_problem(pm, wf("  - id: a\n    type: nosuch\n"))
    assert (issue.path, issue.line) == ("steps[0].type", 4)
    assert "unknown step type 'nosuch'" in issue.message
    assert "transform" in issue.message  # the known types are listed


def test_explicit_type_loop_with_while(pm):
    compiled = compile_text(
        pm,
        wf(
            '  - id: w\n    type: loop\n    while: "index < 3"\n'
            '    steps: [{id: x, transform: "${index}"}]\n'
        ),
    )
    w = step(compiled, "w")
    assert w.key == "loop"
    assert set(w.bodies) == {"steps"}
    assert "while" in w.deferred


def test_explicit_type_overrides_type_keys(pm):
    compiled = compile_text(pm, wf("  - {id: a, type: transform, transform: 1}\n"))
    assert step(compiled, "a").key == "transform"


def test_parallel_with_wait_any_is_a_parallel_step(pm):
    compiled = compile_text(
        pm,
        wf(
            "  - id: p\n    wait: any\n    parallel:\n"
            "      left: [{id: l, transform: 1}]\n"
            "      right: [{id: r, transform: 2}]\n"
        ),
    )
    p = step(compiled, "p")
    assert p.key == "parallel"
    assert set(p.bodies) == {"left", "right"}


def test_body_step_referring_to_its_enclosing_loop(pm):
    text = wf(
        "  - id: l\n    loop: [1, 2]\n    steps:\n"
        "      - {id: x, transform: 1}\n"
        '      - {id: y, transform: "${steps.l.output}"}\n'
    )
    issue = one_problem(pm, text)
    assert (issue.path, issue.line) == ("steps[0].steps[1].transform", 7)
    assert "enclosing step 'l'" in issue.message


def test_branch_step_referring_to_its_enclosing_parallel(pm):
    issue = one_problem(
        pm,
        wf(
            "  - id: p\n    parallel:\n      x:\n"
            '        - id: e\n          transform: "${steps.p.output}"\n'
        ),
    )
    assert (issue.path, issue.line) == ("steps[0].parallel.x[0].transform", 7)
    assert "enclosing step 'p'" in issue.message


def test_errors_inside_a_loop_body_have_paths_and_lines(pm):
    text = wf(
        "  - id: l\n    loop: [1]\n    steps:\n      - id: x\n        transform: 1\n"
        "        retry: {attempts: 0}\n      - id: y\n        transform: 1\n"
        "        bogus: 2\n"
    )
    issues = problems(pm, text)
    assert [(i.path, i.line) for i in issues] == [
        ("steps[0].steps[0].retry.attempts", 8),
        ("steps[0].steps[1].bogus", 11),
    ]


def test_errors_inside_a_parallel_branch_have_paths_and_lines(pm):
    text = wf(
        "  - id: p\n    parallel:\n      left:\n        - id: x\n          transform: 1\n"
        "          bogus: 2\n      right:\n        - id: r\n          frob: 1\n"
    )
    issues = problems(pm, text)
    assert [(i.path, i.line) for i in issues] == [
        ("steps[0].parallel.left[0].bogus", 8),
        ("steps[0].parallel.right[0]", 10),
    ]


def test_loop_body_may_reference_outer_steps(pm):
    compiled = compile_text(
        pm,
        wf(
            "  - {id: first, transform: 1}\n"
            "  - {id: base, transform: 10}\n"
            "  - id: l\n    loop: [1, 2]\n    steps:\n"
            '      - {id: x, transform: "${steps.base.output + item}"}\n'
            '      - {id: y, transform: "${steps.x.output * 2}"}\n'
        ),
    )
    loop = step(compiled, "l")
    assert deps_of(compiled, "l") == {"base"}
    body = loop.bodies["steps"]
    assert body.outer_refs == {"base"}
    assert body.steps[body.by_id["x"]].deps == ()
    assert body.steps[body.by_id["y"]].deps == (body.by_id["x"],)
    assert compiled.scope.roots == (0, 1)


def test_implied_dependencies_from_templates(pm):
    compiled = compile_text(
        pm,
        wf(
            '  - {id: total, tool: probe.add, with: {a: "${steps.one.output}",'
            ' b: "${steps.two.output}"}}\n'
            "  - {id: one, transform: 1}\n"
            '  - {id: two, transform: 2, when: "steps.one.output > 0"}\n'
            "  - {id: last, transform: 3, needs: [total]}\n"
            "  - {id: either, transform: 4, needs_any: [one, two]}\n"
        ),
    )
    assert deps_of(compiled, "total") == {"one", "two"}
    assert deps_of(compiled, "two") == {"one"}  # from `when`
    assert deps_of(compiled, "last") == {"total"}
    assert deps_of(compiled, "one") == set()
    either = step(compiled, "either")
    assert either.deps == () and set(either.any_deps) == {1, 2}
    assert compiled.scope.roots == (1,)
    assert set(step(compiled, "one").dependents) == {0, 2, 4}


def test_condition_targets_wait_for_the_condition(pm):
    compiled = compile_text(
        pm,
        wf(
            '  - {id: c, if: "true", then: [yes_], else: [no_]}\n'
            "  - {id: yes_, transform: 1}\n  - {id: no_, transform: 2}\n"
        ),
    )
    assert deps_of(compiled, "yes_") == deps_of(compiled, "no_") == {"c"}
    assert step(compiled, "yes_").gate == (0, "then")
    assert step(compiled, "c").gated == {"then": [1], "else": [2]}


def test_fallback_waits_and_dependents_see_both(pm):
    compiled = compile_text(
        pm,
        wf(
            "  - {id: primary, tool: probe.echo, on_error: backup}\n"
            "  - {id: backup, transform: 1}\n"
            '  - {id: report, transform: "${steps.primary.output}"}\n'
        ),
    )
    primary = step(compiled, "primary")
    assert primary.on_error == "fallback"
    assert primary.fallback == 1 and step(compiled, "backup").fallback_for == 0
    assert deps_of(compiled, "backup") == {"primary"}
    assert deps_of(compiled, "report") == {"primary", "backup"}


def test_timeout_above_the_host_maximum(pm):
    text = wf("  - id: a\n    tool: probe.echo\n    timeout: 100000\n")
    issue = one_problem(pm, text)
    assert (issue.path, issue.line) == ("steps[0].timeout", 5)
    assert "86400" in issue.message
    config = plait.HostConfig.model_validate({"limits": {"max_step_timeout": 10}})
    issue = one_problem(pm, wf("  - {id: a, tool: probe.echo, timeout: 11}\n"), config)
    assert issue.path == "steps[0].timeout"
    compile_text(pm, wf("  - {id: a, tool: probe.echo, timeout: 10}\n"), config)


def test_workflow_larger_than_the_step_limit(pm):
    config = plait.HostConfig.model_validate({"limits": {"max_workflow_steps": 3}})
    text = wf(
        "  - {id: a, transform: 1}\n  - id: l\n    loop: [1]\n"
        "    steps: [{id: x, transform: 1}, {id: y, transform: 2}]\n"
    )
    issue = one_problem(pm, text, config)
    assert (issue.path, issue.line) == ("steps", 2)
    assert "4 steps; the limit is 3" in issue.message  # nested bodies count
    small = compile_text(
        pm,
        wf(
            "  - {id: a, transform: 1}\n  - id: l\n    loop: [1]\n"
            "    steps: [{id: x, transform: 1}]\n"
        ),
        config,
    )
    assert small.size == 3


def test_invalid_inputs_schema(pm):
    issue = one_problem(
        pm,
        wf(
            "  - {id: a, transform: 1}\n",
            head="inputs:\n  type: object\n  properties: {n: {type: bogus}}\n",
        ),
    )
    assert (issue.path, issue.line) == ("inputs", 2)
    assert "JSON Schema" in issue.message


def test_vars_referencing_steps(pm):
    issue = one_problem(
        pm,
        wf(
            "  - {id: a, transform: 1}\n", head='vars: {v: "${steps.a.output}", w: "${inputs.x}"}\n'
        ),
    )
    assert (issue.path, issue.line) == ("vars", 2)
    assert "only inputs" in issue.message


def test_outputs_referencing_a_missing_step(pm):
    text = wf("  - {id: a, transform: 1}\n") + 'outputs: {r: "${steps.b.output}"}\n'
    issue = one_problem(pm, text)
    assert (issue.path, issue.line) == ("outputs", 4)
    assert "'b'" in issue.message


def test_valid_workflow_compiles(pm):
    compiled = compile_text(
        pm,
        wf(
            "  - {id: a, tool: probe.add, with: {a: 1, b: 2}}\n"
            '  - {id: b, transform: "${steps.a.output}"}\n'
        ),
    )
    assert isinstance(compiled, plait.CompiledWorkflow)
    assert (compiled.name, compiled.version, compiled.size) == ("t", 1, 2)
    assert [s.id for s in compiled.scope.steps] == ["a", "b"]


# -- every problem at once ---------------------------------------------------------------------

EVERYTHING = """\
name: t
inputs:
  type: object
  properties: {n: {type: bogus}}
vars: {v: "${steps.fetch.output}"}
steps:
  - id: fetch
    transform: 1
  - id: untyped
    frob: 1
  - id: dup
    tool: probe.echo
    bogus: 1
  - id: dup
    transform: 2
  - id: needy
    transform: 3
    needs: [fetc]
  - id: ghost
    transform: "${steps.nope.output}"
  - id: rooted
    transform: "${foo.x}"
  - {id: c1, transform: "${steps.c3.output}"}
  - {id: c2, transform: "${steps.c1.output}"}
  - {id: c3, transform: "${steps.c2.output}"}
  - id: selfish
    transform: "${steps.selfish.output}"
  - id: broken
    transform: "${ 1 + }"
  - id: cond
    if: "true"
    then: [nowhere]
  - id: risky
    tool: probe.echo
    on_error: nobody
  - {id: r1, tool: probe.echo, on_error: spare}
  - {id: r2, tool: probe.echo, on_error: spare}
  - {id: spare, transform: 0}
  - {id: both, tool: probe.echo, transform: 1}
  - id: typed
    type: nosuch
  - id: whiles
    type: loop
    while: "index < 2"
    steps: [{id: w, transform: 1}]
  - id: para
    wait: any
    parallel: {left: [{id: pl, transform: 1}]}
  - id: outer
    loop: [1]
    steps:
      - {id: inner, transform: "${steps.outer.output}"}
  - id: slow
    tool: probe.echo
    timeout: 100000
outputs: {r: "${steps.missing.output}"}
"""

EXPECTED = [  # (path, marker of the line, words of the message)
    ("inputs", "inputs:", "JSON Schema"),
    ("vars", "vars:", "only inputs"),
    ("steps[1]", "id: untyped", "unknown step type"),
    ("steps[2].bogus", "bogus: 1", "unknown field for a 'tool' step"),
    ("steps[3].id", "id: dup\n    transform: 2", "duplicate step id 'dup'"),
    ("steps[4].needs", "needs: [fetc]", "did you mean 'fetch'?"),
    ("steps[5].transform", "${steps.nope.output}", "'nope'"),
    ("steps[6].transform", "${foo.x}", "'foo'"),
    (None, None, "dependency cycle"),
    ("steps[10].transform", "${steps.selfish.output}", "refers to its own output"),
    ("steps[11].transform", "${ 1 + }", "parse"),
    ("steps[12].then", "then: [nowhere]", "unknown step 'nowhere'"),
    ("steps[13].on_error", "on_error: nobody", "'nobody'"),
    ("steps[15].on_error", "id: r2", "already the fallback"),
    ("steps[17]", "id: both", "ambiguous step type"),
    ("steps[18].type", "type: nosuch", "unknown step type 'nosuch'"),
    ("steps[21].steps[0].transform", "id: inner", "enclosing step 'outer'"),
    ("steps[22].timeout", "timeout: 100000", "maximum"),
    ("outputs", "outputs:", "'missing'"),
]


def marker_line(text: str, marker: str) -> int:
    if "\n" in marker:
        return text[: text.index(marker)].count("\n") + 1
    return line_of(text, marker)


def test_every_problem_at_once_with_its_line(pm):
    issues = problems(pm, EVERYTHING)
    assert len(issues) == len(EXPECTED), "\n".join(map(str, issues))
    remaining = list(issues)
    for path, marker, words in EXPECTED:
        if path is None:  # the cycle is named at one of its steps
            found = [i for i in remaining if words in i.message]
            assert len(found) == 1, (words, issues)
            issue = found[0]
            assert issue.path in {"steps[7]", "steps[8]", "steps[9]"}
            assert issue.line == line_of(EVERYTHING, "id: c" + str(int(issue.path[6]) - 6))
            assert sorted(issue.message.split(": ", 1)[1].split(" → ")[:-1]) == ["c1", "c2", "c3"]
        else:
            found = [i for i in remaining if i.path == path]
            assert len(found) == 1, (path, issues)
            issue = found[0]
            assert words in issue.message, issue
            assert issue.line == marker_line(EVERYTHING, marker), issue
        remaining.remove(issue)
    assert remaining == []
    lines = [i.line for i in issues]
    assert lines == sorted(lines), "issues are listed in the order of the file"


def test_every_problem_at_once_names_the_file(pm, tmp_path):
    file = tmp_path / "everything.yaml"
    file.write_text(EVERYTHING, encoding="utf-8")
    with pytest.raises(plait.DefinitionError) as info:
        plait.Engine(pm).compile(str(file))
    assert info.value.source == str(file)
    assert len(info.value.issues) == len(EXPECTED)
    for issue in info.value.issues:
        assert f"  - {issue.path or '<workflow>'} (line {issue.line}): " in str(info.value)
    assert f"invalid workflow {file}: {len(EXPECTED)} problem(s)" in str(info.value)


def test_the_valid_steps_of_everything_compile(pm):
    """The steps meant to be valid in EVERYTHING are valid on their own."""
    compiled = compile_text(
        pm,
        wf(
            '  - id: whiles\n    type: loop\n    while: "index < 2"\n'
            "    steps: [{id: w, transform: 1}]\n"
            "  - id: para\n    wait: any\n    parallel: {left: [{id: pl, transform: 1}]}\n"
        ),
    )
    assert [s.key for s in compiled.scope.steps] == ["loop", "parallel"]


# -- the public function -----------------------------------------------------------------------


def test_compile_workflow_is_re_exported(pm):
    assert plait.compile_workflow is compiler.compile_workflow
    engine = plait.Engine(pm)
    definition = plait.load({"name": "t", "steps": [{"id": "a", "transform": 1}]})
    compiled = plait.compile_workflow(definition, engine.registries.step_types, engine.templates)
    assert isinstance(compiled, plait.CompiledWorkflow)
    assert compiled.digest == engine.compile(definition).digest
    with pytest.raises(plait.DefinitionError):
        plait.compile_workflow(
            plait.load({"name": "t", "steps": [{"id": "a", "frob": 1}]}),
            engine.registries.step_types,
            engine.templates,
        )
