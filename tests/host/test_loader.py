"""Loading workflow definitions: YAML 1.2, JSON, mappings and files, with lines on every error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import plait
from plait.definition import loader

REPO = Path(__file__).resolve().parents[2]

HELLO_YAML = """\
name: hello
inputs:
  type: object
  properties: {name: {type: string}}
  required: [name]
steps:
  - id: greet
    tool: hello.greet
    with: {name: "${inputs.name}"}
  - id: shout
    transform: "${steps.greet.output | upper}"
outputs:
  text: "${steps.shout.output}"
"""


def issues_of(source) -> list[plait.Issue]:
    with pytest.raises(plait.DefinitionError) as info:
        plait.load(source)
    return info.value.issues


def only_issue(source) -> plait.Issue:
    issues = issues_of(source)
    assert len(issues) == 1, issues
    return issues[0]


# -- YAML 1.2 ----------------------------------------------------------------------------------


def test_yaml_12_keeps_on_yes_no_as_strings():
    wf = plait.load("""\
name: t
steps:
  - id: a
    tool: x.y
    with: {on: yes, no: no, off: on, y: n}
  - id: b
    transform: yes
""")
    with_ = wf.steps[0].config["with"]
    assert with_ == {"on": "yes", "no": "no", "off": "on", "y": "n"}
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in with_.items())
    assert wf.steps[1].config["transform"] == "yes"


def test_yaml_12_booleans_and_numbers_keep_their_types():
    wf = plait.load(
        "name: t\nsteps:\n  - {id: a, transform: {t: true, f: false, n: 12, x: 1.5, z: null}}\n"
    )
    assert wf.steps[0].config["transform"] == {"t": True, "f": False, "n": 12, "x": 1.5, "z": None}
    value = wf.steps[0].config["transform"]
    assert type(value["n"]) is int and type(value["t"]) is bool and type(value["x"]) is float


# -- sources: JSON text, mappings, paths -------------------------------------------------------


def test_json_text():
    text = json.dumps({"name": "t", "steps": [{"id": "a", "transform": 1}]})
    wf = plait.load(text)
    assert wf.name == "t"
    assert wf.steps[0].id == "a"
    assert wf.steps[0].config == {"transform": 1}


def test_json_text_errors_have_lines():
    text = '{"name": "t",\n "bogus": 1,\n "steps": [{"id": "a", "transform": 1}]}'
    issue = only_issue(text)
    assert (issue.path, issue.line, issue.message) == ("bogus", 2, "unknown field")


def test_mapping():
    wf = plait.load({"name": "t", "steps": [{"id": "a", "tool": "x.y", "with": {"k": 1}}]})
    assert wf.steps[0].config == {"tool": "x.y", "with": {"k": 1}}
    assert wf.source_lines == {}
    assert wf.origin is None


def test_mapping_errors_have_paths_but_no_lines():
    issue = only_issue({"name": "t", "steps": [{"id": "a", "transform": 1, "retry": 3}]})
    assert issue.path == "steps[0].retry"
    assert issue.line is None


def test_model_is_returned_unchanged():
    wf = plait.load({"name": "t", "steps": [{"id": "a", "transform": 1}]})
    assert plait.load(wf) is wf


def test_path_as_str_and_as_path(tmp_path):
    file = tmp_path / "wf.yaml"
    file.write_text(HELLO_YAML, encoding="utf-8")
    from_str = plait.load(str(file))
    from_path = plait.load(file)
    assert from_str.to_dict() == from_path.to_dict() == plait.load(HELLO_YAML).to_dict()
    assert from_path.origin == str(file)
    assert from_path.source_lines["steps[1]"] == 10


def test_file_errors_name_the_file_and_line(tmp_path):
    file = tmp_path / "bad.yaml"
    file.write_text("name: t\ncolour: red\nsteps:\n  - {id: a, transform: 1}\n", encoding="utf-8")
    with pytest.raises(plait.DefinitionError) as info:
        plait.load(file)
    assert info.value.source == str(file)
    assert str(file) in str(info.value)
    assert [(i.path, i.line) for i in info.value.issues] == [("colour", 2)]
    assert "line 2" in str(info.value)


def test_step_type_fields_are_left_to_the_compiler():
    """A step's own fields belong to its step type: the loader keeps them as written."""
    wf = plait.load("name: t\nsteps:\n  - id: a\n    transform: 1\n    colour: red\n")
    assert wf.steps[0].config == {"transform": 1, "colour": "red"}
    assert wf.line_of("steps[0].colour") == 5


def test_missing_file(tmp_path):
    issue = only_issue(str(tmp_path / "absent.yaml"))
    assert "cannot read" in issue.message


# -- errors and their lines -------------------------------------------------------------------


def test_unknown_top_level_field_at_its_line():
    issue = only_issue("name: t\ndescription: d\nauthor: me\nsteps:\n  - {id: a, transform: 1}\n")
    assert (issue.path, issue.line, issue.message) == ("author", 3, "unknown field")


def test_bad_step_id_pattern_at_its_line():
    issue = only_issue(
        "name: t\nsteps:\n  - id: ok\n    transform: 1\n  - id: 2bad\n    transform: 2\n"
    )
    assert issue.path == "steps[1].id"
    assert issue.line == 5
    assert "'2bad'" in issue.message


def test_bad_workflow_name_names_the_value():
    issue = only_issue("name: Not Valid\nsteps:\n  - {id: a, transform: 1}\n")
    assert (issue.path, issue.line) == ("name", 1)
    assert "'Not Valid'" in issue.message


def test_retry_attempts_zero_at_its_line():
    issue = only_issue("""\
name: t
steps:
  - id: a
    transform: 1
    retry:
      backoff: fixed
      attempts: 0
""")
    assert issue.path == "steps[0].retry.attempts"
    assert issue.line == 7
    assert "greater than or equal to 1" in issue.message


def test_every_problem_is_reported_at_once():
    issues = issues_of("""\
name: t
bogus: 1
steps:
  - id: 1a
    transform: 1
  - id: b
    transform: 1
    retry: {attempts: 0}
""")
    assert sorted((i.path, i.line) for i in issues) == [
        ("bogus", 2),
        ("steps[0].id", 4),
        ("steps[1].retry.attempts", 8),
    ]


def test_yaml_syntax_error_reports_its_line():
    issue = only_issue('name: t\ndescription: "abc" extra\nsteps:\n  - {id: a, transform: 1}\n')
    assert issue.line == 2
    assert issue.message.startswith("YAML:")
    assert issue.path == ""


def test_tab_indentation_reports_its_line():
    issue = only_issue("name: t\nsteps:\n  - id: a\n\ttransform: 1\n")
    assert issue.line == 4
    assert "YAML" in issue.message


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("name: t\nname: u\nsteps:\n  - {id: a, transform: 1}\n", "name", 2),
        ("name: t\nsteps:\n  - id: a\n    transform: 1\n    transform: 2\n", "transform", 5),
        ('{"name": "t",\n "steps": [{"id": "a", "transform": 1}],\n "name": "u"}', "name", 3),
    ],
)
def test_duplicate_keys_are_reported(text, key, line):
    issue = only_issue(text)
    assert "duplicate key" in issue.message
    assert f'"{key}"' in issue.message
    assert issue.line == line


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n", "", "# only a comment\n"])
def test_non_mapping_document(text):
    issue = only_issue(text)
    assert "a workflow is a mapping" in issue.message


@pytest.mark.parametrize(
    ("text", "kind"),
    [("- a\n- b\n", "list"), ("just text\n", "string"), ("42\n", "number"), ("", "empty")],
)
def test_non_mapping_document_names_the_yaml_kind(text, kind):
    message = only_issue(text).message
    assert kind in message
    assert "Commented" not in message  # not ruamel's class name


def test_needs_as_a_string_is_a_list():
    wf = plait.load(
        "name: t\nsteps:\n  - {id: a, transform: 1}\n"
        "  - {id: b, transform: 2, needs: a, needs_any: a}\n"
    )
    assert wf.steps[1].needs == ["a"]
    assert wf.steps[1].needs_any == ["a"]
    assert wf.to_dict()["steps"][1]["needs"] == ["a"]


def test_steps_must_not_be_empty():
    issue = only_issue("name: t\nsteps: []\n")
    assert (issue.path, issue.line) == ("steps", 2)


# -- round trips and the builder --------------------------------------------------------------

RICH_YAML = """\
name: rich.wf-1
version: 2
description: everything
inputs: {type: object, properties: {n: {type: integer}}}
defaults: {retry: {attempts: 3, backoff: linear, base: 0.1}, timeout: 5, on_error: continue}
vars: {double: "${inputs.n * 2}"}
concurrency: 4
steps:
  - id: a
    tool: x.y
    with: {on: yes}
    cache: {ttl: 60, key: "${inputs.n}"}
    retry: {attempts: 2, jitter: 0.5, retry_on: [tool]}
    timeout: 3
    description: first
  - id: b
    transform: "${steps.a.output}"
    cache: true
    when: "inputs.n > 1"
    on_error: c
  - {id: c, type: transform, transform: 1, needs: a}
  - {id: d, transform: 2, needs_any: [b, c], cache: false}
  - id: l
    loop: [1, 2]
    steps: [{id: x, transform: "${item}"}]
outputs: {r: "${steps.d.output}"}
"""


@pytest.mark.parametrize("source", [RICH_YAML, HELLO_YAML], ids=["rich", "hello"])
def test_to_dict_round_trips(source):
    wf = plait.load(source)
    data = wf.to_dict()
    json.dumps(data)  # plain JSON data
    again = plait.load(data)
    assert again.to_dict() == data
    assert again.model_dump() == wf.model_dump()
    assert plait.load(json.dumps(data)).to_dict() == data


def test_to_dict_is_the_form_it_is_written_in():
    data = plait.load(RICH_YAML).to_dict()
    assert data["steps"][0] == {
        "id": "a",
        "tool": "x.y",
        "with": {"on": "yes"},
        "timeout": 3.0,
        "description": "first",
        "retry": {"attempts": 2, "jitter": 0.5, "retry_on": ["tool"]},
        "cache": {"ttl": 60.0, "key": "${inputs.n}"},
    }
    assert data["steps"][1]["cache"] is True
    assert data["steps"][3]["cache"] is False
    assert data["steps"][2] == {"id": "c", "type": "transform", "transform": 1, "needs": ["a"]}
    assert "config" not in json.dumps(data)


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_round_trip(path):
    wf = plait.load(path)
    assert plait.load(wf.to_dict()).to_dict() == wf.to_dict()


def test_builder_equals_yaml():
    built = (
        plait.Workflow("hello")
        .input("name", str)
        .tool("greet", "hello.greet", name="${inputs.name}")
        .transform("shout", "${steps.greet.output | upper}")
        .output("text", "${steps.shout.output}")
        .build()
    )
    assert isinstance(built, plait.WorkflowDef)
    assert built.to_dict() == plait.load(HELLO_YAML).to_dict()


def test_builder_errors_like_a_file():
    with pytest.raises(plait.DefinitionError) as info:
        plait.Workflow("hello").step("1bad", transform=1).build()
    assert [i.path for i in info.value.issues] == ["steps[0].id"]


# -- size limit --------------------------------------------------------------------------------


def test_file_over_the_size_limit_is_refused(tmp_path):
    file = tmp_path / "huge.yaml"
    head = "name: t\nsteps:\n  - {id: a, transform: 1}\n"
    file.write_text(head + "#" * (loader.MAX_SOURCE_BYTES - len(head) + 1), encoding="utf-8")
    assert file.stat().st_size == loader.MAX_SOURCE_BYTES + 1
    with pytest.raises(plait.DefinitionError) as info:
        plait.load(file)
    assert str(loader.MAX_SOURCE_BYTES) in str(info.value)
    assert info.value.source == str(file)


def test_file_at_the_size_limit_is_read(tmp_path):
    file = tmp_path / "big.yaml"
    head = "name: t\nsteps:\n  - {id: a, transform: 1}\n"
    file.write_text(head + "#" * (loader.MAX_SOURCE_BYTES - len(head)), encoding="utf-8")
    assert plait.load(file).name == "t"


def test_text_over_the_size_limit_is_refused():
    text = "name: t\nsteps:\n  - {id: a, transform: 1}\n" + "#" * loader.MAX_SOURCE_BYTES
    with pytest.raises(plait.DefinitionError) as info:
        plait.load(text)
    assert "limit" in str(info.value)
