"""Validation reports what will certainly fail at run time, every problem at once."""

from __future__ import annotations

import pytest

import plait


def problems(pm, text, config=None) -> list[plait.Issue]:
    with pytest.raises(plait.DefinitionError) as info:
        plait.Engine(pm, config).compile(text)
    return info.value.issues


def paths(issues: list[plait.Issue]) -> list[str]:
    return [i.path for i in issues]


def by_path(issues: list[plait.Issue]) -> dict[str, str]:
    return {i.path: i.message for i in issues}


def config(**sections) -> plait.HostConfig:
    return plait.HostConfig.model_validate({"plugins": {"entry_points": False}, **sections})


# -- tools ---------------------------------------------------------------------------------------


def test_an_unknown_tool_is_an_error_with_a_suggestion(pm):
    [issue] = problems(pm, "name: t\nsteps:\n  - id: a\n    tool: math.sm\n")
    assert (issue.path, issue.line) == ("steps[0].tool", 4)
    assert "unknown tool 'math.sm'" in issue.message
    assert "did you mean 'math.sum'?" in issue.message


def test_a_templated_tool_name_is_not_checked(pm):
    plait.Engine(pm).compile(
        "name: t\ninputs: {type: object}\nsteps:\n  - id: a\n    tool: '${inputs.tool}'\n"
    )


def test_a_tool_of_a_configured_mcp_server_is_not_checked(pm):
    cfg = config(mcp_servers={"git": {"command": "git-mcp"}})
    plait.Engine(pm, cfg).compile("name: t\nsteps:\n  - id: a\n    tool: git.diff\n")
    # Another namespace is still checked.
    [issue] = problems(pm, "name: t\nsteps:\n  - id: a\n    tool: gti.diff\n", cfg)
    assert issue.path == "steps[0].tool"


def test_unknown_tools_in_nested_bodies_are_found(pm):
    text = (
        "name: t\nsteps:\n  - id: each\n    loop: [1, 2]\n    steps:\n"
        "      - id: x\n        tool: probe.ech\n"
    )
    [issue] = problems(pm, text)
    assert issue.path == "steps[0].steps[0].tool"
    assert "did you mean 'probe.echo'?" in issue.message


# -- tool arguments ------------------------------------------------------------------------------


def test_literal_arguments_are_checked_against_the_input_schema(pm):
    text = (
        "name: t\nsteps:\n  - id: a\n    tool: math.sum\n    with:\n"
        "      values: [1, [2]]\n      extra: 1\n"
    )
    issues = by_path(problems(pm, text))
    assert set(issues) == {"steps[0].with", "steps[0].with.values[1]"}
    assert "'extra' was unexpected" in issues["steps[0].with"]
    assert "input schema of tool 'math.sum'" in issues["steps[0].with.values[1]"]


def test_a_missing_required_argument_is_an_error(pm):
    [issue] = problems(pm, "name: t\nsteps:\n  - id: a\n    tool: math.sum\n")
    assert issue.path == "steps[0].with"
    assert "'values' is a required property" in issue.message


def test_templated_arguments_are_left_to_the_run(pm):
    plait.Engine(pm).compile(
        "name: t\ninputs: {type: object}\nsteps:\n"
        "  - id: a\n    tool: math.sum\n    with: {values: '${inputs.values}'}\n"
        "  - id: b\n    tool: math.sum\n    with: {values: [1, '${inputs.x}']}\n"
        "  - id: c\n    tool: math.sum\n    with: '${inputs.args}'\n"
    )


def test_a_templated_value_does_not_excuse_an_unexpected_key(pm):
    text = (
        "name: t\ninputs: {type: object}\nsteps:\n"
        "  - id: a\n    tool: math.sum\n    with: {values: '${inputs.v}', vals: 1}\n"
    )
    [issue] = problems(pm, text)
    assert issue.path == "steps[0].with"
    assert "'vals' was unexpected" in issue.message


def test_a_string_where_pydantic_reads_a_number_is_not_refused(pm):
    """Function tools validate with pydantic, which reads "3" as 3: not certain to fail."""
    plait.Engine(pm).compile(
        "name: t\nsteps:\n  - id: a\n    tool: math.sum\n    with: {values: ['1', 2]}\n"
    )


# -- agents --------------------------------------------------------------------------------------


AGENT = "name: t\nsteps:\n  - id: a\n    agent: {agent}\n    prompt: hi\n    tools: [{tools}]\n"


def test_an_unconfigured_agent_and_its_unknown_tools_are_errors(pm):
    cfg = config(agents={"reviewer": {"provider": "scripted"}})
    issues = by_path(problems(pm, AGENT.format(agent="reviwer", tools="math.sum, mth.sum"), cfg))
    assert set(issues) == {"steps[0].agent", "steps[0].tools[1]"}
    assert "unknown agent 'reviwer'" in issues["steps[0].agent"]
    assert "did you mean 'reviewer'?" in issues["steps[0].agent"]
    assert "did you mean 'math.sum'?" in issues["steps[0].tools[1]"]


def test_a_configured_agent_is_valid(pm):
    cfg = config(agents={"reviewer": {"provider": "scripted"}})
    plait.Engine(pm, cfg).compile(AGENT.format(agent="reviewer", tools="math.sum"))


def test_with_no_agents_configured_the_message_says_so(pm):
    [issue] = problems(pm, AGENT.format(agent="reviewer", tools=""))
    assert "no agents are configured" in issue.message


# -- step references -----------------------------------------------------------------------------


def test_a_misspelled_step_reference_suggests_the_step(pm):
    text = "name: t\nsteps:\n  - {id: fetch, transform: 1}\n"
    text += "outputs: {o: '${steps.fecth.output}'}\n"
    [issue] = problems(pm, text)
    assert issue.path == "outputs"
    assert "did you mean 'fetch'?" in issue.message


# -- every problem at once -----------------------------------------------------------------------


def test_a_step_with_two_bad_fields_reports_both(pm):
    text = "name: t\nsteps:\n  - id: a\n    tool: math.sum\n    with: {values: [[1]]}\n"
    text += "    bogus: 1\n"
    assert set(paths(problems(pm, text))) == {"steps[0].bogus", "steps[0].with.values[0]"}


def test_a_bad_common_field_does_not_hide_the_other_problems(pm):
    """A field the loader refuses (`timeout: -1`) used to stop validation there."""
    text = (
        "name: t\nsteps:\n"
        "  - id: a\n    tool: math.sm\n"
        "  - id: b\n    transform: '${steps.aa.output}'\n    timeout: -1\n"
        "  - id: c\n    transform: 1\n    retry: {attempts: 0}\n"
    )
    issues = problems(pm, text)
    assert paths(issues) == [
        "steps[0].tool",
        "steps[1].transform",
        "steps[1].timeout",
        "steps[2].retry.attempts",
    ]
    assert [i.line for i in issues] == [4, 6, 7, 10]
    assert "did you mean 'a'?" in issues[1].message


def test_an_unknown_top_level_field_does_not_hide_the_steps_problems(pm):
    issues = problems(pm, "name: t\nbogus: 1\nsteps:\n  - id: a\n    tool: math.sm\n")
    assert paths(issues) == ["bogus", "steps[0].tool"]


def test_a_bad_step_id_does_not_hide_the_other_steps(pm):
    issues = problems(pm, "name: t\nsteps:\n  - {id: 1-a, transform: 1}\n  - {id: b, tool: x.y}\n")
    assert paths(issues) == ["steps[0].id", "steps[1].tool"]


def test_a_step_that_is_not_a_mapping_still_reports_the_loader_problem(pm):
    [issue] = problems(pm, "name: t\nsteps:\n  - 3\n  - {id: b, tool: x.y}\n")
    assert issue.path == "steps[0]"
