"""The ``plait`` command, called in-process: exit codes, output, and what it prints where."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from plait import Engine, HostConfig
from plait.cli.commands import main
from plait.definition.loader import parse_text

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))

FAILING = """\
name: doomed
steps:
  - id: boom
    tool: chaos.fail
    with: {key: "boom-${run.id}", times: 100}
"""

ECHO_INPUTS = """\
name: echo
steps:
  - {id: same, transform: "${inputs}"}
outputs:
  n: "${inputs.n}"
  s: "${inputs.s}"
  l: "${inputs.l}"
"""

INVALID = """\
name: broken
steps:
  - id: a
    transform: 1
  - id: b
    frob: 2
  - id: c
    transform: "${steps.nope.output}"
"""


@pytest.fixture
def repo(monkeypatch, tmp_path):
    """Run from the repository root (the examples read files relative to it), with a private
    data dir so that nothing is written into the working tree."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PLAIT_HOST_DATA_DIR", str(tmp_path / "data"))
    return REPO


@pytest.fixture
def workdir(monkeypatch, tmp_path):
    """An empty working directory (no plait.toml) with a folder for workflow files."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PLAIT_HOST_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "wf").mkdir()
    return tmp_path / "wf"


def write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- run ---------------------------------------------------------------------------------------


def test_run_json_succeeds(repo, capsys):
    code = main(["run", "examples/retry.yaml", "--config", "examples/plait.toml", "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    run = json.loads(out)
    assert run["status"] == "succeeded"
    assert run["workflow"] == "retry"
    assert run["outputs"] == {
        "report": "third time lucky; primary gave backup",
        "primary_status": "failed",
    }
    assert run["steps"]["flaky"]["attempts"] == 3
    assert run["steps"]["primary"]["status"] == "failed"
    assert run["steps"]["backup"]["status"] == "succeeded"


def test_run_writes_nothing_into_the_working_tree(repo, tmp_path, capsys):
    before = sorted(p.name for p in REPO.iterdir())
    assert main(["run", "examples/retry.yaml", "--config", "examples/plait.toml", "--json"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in REPO.iterdir()) == before
    assert (tmp_path / "data").is_dir()


def test_failing_run_exits_1(workdir, capsys):
    file = write(workdir, "doomed.yaml", FAILING)
    code = main(["run", file, "--json"])
    out, _ = capsys.readouterr()
    assert code == 1
    run = json.loads(out)
    assert run["status"] == "failed"
    assert run["steps"]["boom"]["status"] == "failed"
    assert "chaos.fail" in run["steps"]["boom"]["error"]["message"]


def test_failing_run_without_json_prints_the_outcome(workdir, capsys, monkeypatch):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    file = write(workdir, "doomed.yaml", FAILING)
    code = main(["run", file])
    out, _ = capsys.readouterr()
    assert code == 1
    assert "boom: started (attempt 1)" in out
    assert "boom: failed: tool 'chaos.fail'" in out
    assert re.search(r"^run [0-9a-f]+ failed$", out, re.M)


def test_plain_progress_lines_during_run(repo, capsys, monkeypatch):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    code = main(["run", "examples/retry.yaml", "--config", "examples/plait.toml"])
    out, _ = capsys.readouterr()
    assert code == 0
    lines = out.splitlines()
    assert any(
        re.fullmatch(r"\[\s*\d+\.\d{3}s\] flaky: started \(attempt 1\)", ln) for ln in lines
    ), out
    assert any(re.search(r"flaky: retrying after attempt 1 in \d+\.\d\ds$", ln) for ln in lines), (
        out
    )
    assert any(ln.endswith("flaky: started (attempt 3)") for ln in lines), out
    assert any(ln.endswith("flaky: succeeded") for ln in lines), out
    assert any(ln.endswith("report: succeeded") for ln in lines), out
    # the progress comes before the summary, which ends with the outputs
    first_progress = next(i for i, ln in enumerate(lines) if "flaky: started" in ln)
    summary = next(i for i, ln in enumerate(lines) if re.fullmatch(r"run \w+ succeeded", ln))
    assert first_progress < summary
    assert json.loads("\n".join(lines[summary + 1 :]))["primary_status"] == "failed"


def test_json_run_prints_no_progress_on_stdout(repo, capsys):
    assert main(["run", "examples/retry.yaml", "--config", "examples/plait.toml", "--json"]) == 0
    out, _ = capsys.readouterr()
    assert "started (attempt" not in out
    json.loads(out)  # stdout is exactly one JSON document


def test_input_values_are_parsed_as_json(workdir, capsys):
    file = write(workdir, "echo.yaml", ECHO_INPUTS)
    code = main(
        [
            "run",
            file,
            "--json",
            "--input",
            "n=3",
            "--input",
            "s=abc",
            "-i",
            "l=[1,2]",
            "-i",
            "t=true",
            "-i",
            'q="7"',
            "-i",
            "e=a=b",
        ]
    )
    out, _ = capsys.readouterr()
    assert code == 0
    run = json.loads(out)
    assert run["inputs"] == {"n": 3, "s": "abc", "l": [1, 2], "t": True, "q": "7", "e": "a=b"}
    assert run["outputs"] == {"n": 3, "s": "abc", "l": [1, 2]}


def test_inputs_json_file_then_input_overrides(workdir, tmp_path, capsys):
    file = write(workdir, "echo.yaml", ECHO_INPUTS)
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"n": 1, "s": "from file", "l": ["x"]}), encoding="utf-8")
    code = main(["run", file, "--json", "--inputs-json", str(inputs), "--input", "n=2"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert json.loads(out)["outputs"] == {"n": 2, "s": "from file", "l": ["x"]}


@pytest.mark.parametrize("content", ["[1, 2]", "{not json", None])
def test_bad_inputs_json_exits_2(workdir, tmp_path, capsys, content):
    file = write(workdir, "echo.yaml", ECHO_INPUTS)
    inputs = tmp_path / "inputs.json"
    if content is not None:
        inputs.write_text(content, encoding="utf-8")
    assert main(["run", file, "--inputs-json", str(inputs)]) == 2
    out, err = capsys.readouterr()
    assert "--inputs-json" in err
    assert out == ""


@pytest.mark.parametrize("pair", ["novalue", "=3"])
def test_input_without_key_and_equals_exits_2(workdir, capsys, pair):
    file = write(workdir, "echo.yaml", ECHO_INPUTS)
    assert main(["run", file, "--input", pair]) == 2
    out, err = capsys.readouterr()
    assert f"--input expects KEY=VALUE, got {pair!r}" in err
    assert out == ""


def test_inputs_that_break_the_schema_exit_2(repo, capsys, tmp_path):
    # (--input name=3 is the string "3" for a string field: a number must come as JSON)
    inputs = tmp_path / "inputs.json"
    inputs.write_text('{"name": 3}')
    code = main(
        [
            "run",
            "examples/greet.yaml",
            "--config",
            "examples/plait.toml",
            "--inputs-json",
            str(inputs),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 2
    assert "invalid inputs for workflow 'greet'" in err


def test_invalid_workflow_exits_2_with_the_problems_on_stderr(workdir, capsys):
    file = write(workdir, "broken.yaml", INVALID)
    code = main(["run", file, "--json"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert "2 problem(s)" in err
    assert "steps[1] (line 5): unknown step type" in err
    assert "steps[2].transform (line 8): refers to unknown step 'nope'" in err


# -- validate ----------------------------------------------------------------------------------


def test_validate_ok(repo, capsys):
    code = main(["validate", "examples/retry.yaml", "examples/fanout.yaml"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert out.splitlines() == [
        "examples/retry.yaml: ok (retry, 4 steps)",
        "examples/fanout.yaml: ok (fanout, 7 steps)",
    ]


def test_validate_invalid_prints_file_line_path_message(workdir, capsys):
    bad = write(workdir, "broken.yaml", INVALID)
    good = str(REPO / "examples" / "greet.yaml")
    code = main(["validate", bad, good])
    out, _ = capsys.readouterr()
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"{bad}: invalid"
    # the known types include those of any installed plugin, so only the built-ins are checked
    head, known = lines[1].split("; known types: ")
    assert (
        head == f"  {bad}:5: steps[1]: unknown step type: none of its fields (frob) names a "
        "step type"
    )
    assert set(known.split(", ")) >= {
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
    }
    assert lines[2] == f"  {bad}:8: steps[2].transform: refers to unknown step 'nope'"
    assert lines[3] == f"{good}: ok (greet, 3 steps)"
    assert len(lines) == 4


def test_validate_problem_without_a_line(workdir, capsys):
    empty = write(workdir, "empty.yaml", "")
    assert main(["validate", empty]) == 1
    out, _ = capsys.readouterr()
    assert out.splitlines()[1].startswith(f"  {empty}: <workflow>: a workflow is a mapping, got ")


# -- graph -------------------------------------------------------------------------------------


def test_graph_mermaid(repo, capsys):
    assert main(["graph", "examples/retry.yaml"]) == 0
    out, _ = capsys.readouterr()
    lines = [ln.strip() for ln in out.splitlines()]
    assert lines[0] == "flowchart TD"
    for node in (
        'flaky["flaky (tool)"]',
        'primary["primary (tool)"]',
        'backup["backup (transform)"]',
        'report["report (transform)"]',
    ):
        assert node in lines
    for edge in (
        "primary -->|on failure| backup",
        "flaky --> report",
        "primary --> report",
        "backup --> report",
    ):
        assert edge in lines
    assert sum("-->" in ln for ln in lines) == 4


def test_graph_mermaid_with_a_condition(repo, capsys):
    assert main(["graph", "examples/greet.yaml", "--format", "mermaid"]) == 0
    lines = [ln.strip() for ln in capsys.readouterr()[0].splitlines()]
    assert 'loud{{"loud (if)"}}' in lines
    assert "loud -->|then| shout" in lines
    assert "loud -->|else| say" in lines


def test_graph_dot(repo, capsys):
    assert main(["graph", "examples/fanout.yaml", "--format", "dot"]) == 0
    out, _ = capsys.readouterr()
    lines = [ln.strip() for ln in out.splitlines()]
    assert lines[0] == 'digraph "fanout" {'
    assert lines[-1] == "}"
    for node in (
        'squares [label="squares (loop)"];',
        'checked [label="checked (validate)"];',
        'aggregate [label="aggregate (parallel)"];',
        'squares__steps__square [label="square (transform)"];',
        'aggregate__total__sum [label="sum (tool)"];',
    ):
        assert node in lines
    assert "subgraph cluster_squares__steps {" in lines
    assert "squares -> checked;" in lines
    assert "checked -> aggregate;" in lines
    assert "squares__steps__square -> squares__steps__pause;" not in lines  # independent


def test_graph_of_an_invalid_workflow_exits_2(workdir, capsys):
    file = write(workdir, "broken.yaml", INVALID)
    assert main(["graph", file]) == 2
    assert "unknown step type" in capsys.readouterr()[1]


# -- schema ------------------------------------------------------------------------------------


@pytest.fixture
def schema(workdir, capsys):
    assert main(["schema"]) == 0
    out, _ = capsys.readouterr()
    return json.loads(out)


def test_schema_is_a_valid_json_schema(schema):
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    variants = schema["properties"]["steps"]["items"]["oneOf"]
    assert {v["title"] for v in variants} >= {"tool step", "loop step", "if step", "wait step"}


def test_schema_descriptions_are_markdown_an_editor_shows(schema):
    """Descriptions come from reST docstrings; an editor's hover shows Markdown (issue 11)."""
    text = json.dumps(schema)
    assert "``" not in text and ":class:`" not in text and ":func:`" not in text
    assert "`cache: true`" in text


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_schema_accepts_the_examples(schema, path):
    data, _ = parse_text(path.read_text(encoding="utf-8"))
    errors = [
        f"{list(e.absolute_path)}: {e.message}"
        for e in Draft202012Validator(schema).iter_errors(data)
    ]
    assert errors == []


@pytest.mark.parametrize(
    ("step", "valid"),
    [
        ({"id": "a", "tool": "x", "with": {"on": "yes"}}, True),
        ({"id": "a", "type": "loop", "while": "index < 2", "steps": []}, True),
        ({"id": "p", "wait": "any", "parallel": {"l": []}}, True),
        ({"id": "a", "tool": "x", "bogus": 1}, False),
        ({"id": "a", "frob": 1}, False),
        ({"id": "1a", "transform": 1}, False),
        ({"id": "a", "transform": 1, "retry": {"attempts": 0}}, False),
    ],
)
def test_schema_agrees_with_the_compiler_on_steps(schema, step, valid):
    workflow = {"name": "t", "steps": [step]}
    assert Draft202012Validator(schema).is_valid(workflow) is valid


@pytest.mark.parametrize(
    "step",
    [
        {"id": "a", "delay": "${inputs.seconds}"},
        {"id": "a", "tool": "probe.echo", "with": "${inputs.args}"},
        {"id": "a", "agent": "x", "prompt": "p", "max_turns": "${inputs.turns}"},
    ],
    ids=["delay", "with", "max_turns"],
)
def test_schema_accepts_templates_in_typed_fields(schema, pm, step):
    workflow = {"name": "t", "steps": [step]}
    # (tools and agents a workflow names must exist here: agent x is configured)
    config = HostConfig.model_validate({"agents": {"x": {"provider": "scripted"}}})
    Engine(pm, config).compile(workflow)  # valid for plait
    assert Draft202012Validator(schema).is_valid(workflow)


# -- plugins -----------------------------------------------------------------------------------


def test_plugins_json_lists_the_builtins(workdir, capsys):
    assert main(["plugins", "--json"]) == 0
    listing = json.loads(capsys.readouterr()[0])
    assert listing["failed"] == []
    by_name = {p["name"]: p for p in listing["plugins"]}
    for module in (
        "plait.steps.tool",
        "plait.steps.agent",
        "plait.steps.loop",
        "plait.agents.scripted",
        "plait.steps.stdtools",
    ):
        assert by_name[module]["builtin"] is True
    step_types = {t for p in listing["plugins"] for t in p["step_types"]}
    assert step_types >= {
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
    }
    assert by_name["plait.steps.tool"]["step_types"] == ["tool"]
    assert "chaos.fail" in by_name["plait.steps.stdtools"]["tools"]
    assert by_name["plait.agents.scripted"]["agent_providers"] == ["scripted"]


def test_plugins_table(workdir, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["plugins"]) == 0
    out = capsys.readouterr()[0]
    assert "plait.steps.tool (built-in)" in out


def test_disabled_builtin_is_not_listed(workdir, tmp_path, capsys):
    config = tmp_path / "plait.toml"
    config.write_text('[plugins]\ndisabled = ["plait.steps.delay"]\n', encoding="utf-8")
    assert main(["plugins", "--json", "--config", str(config)]) == 0
    names = {p["name"] for p in json.loads(capsys.readouterr()[0])["plugins"]}
    assert "plait.steps.delay" not in names
    assert "plait.steps.tool" in names


# -- usage -------------------------------------------------------------------------------------


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage: plait" in capsys.readouterr()[1]


def test_bad_config_exits_2(workdir, tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("[limits]\nmax_batch = 0\n", encoding="utf-8")
    assert main(["schema", "--config", str(config)]) == 2
    assert "limits.max_batch" in capsys.readouterr()[1]


def test_input_values_follow_the_schema_for_strings(workdir, capsys):
    """Issue 11: --input pr=0042 stays the string "0042" where the schema says string."""
    file = write(
        workdir,
        "typed.yaml",
        "name: typed\n"
        "inputs: {type: object, properties: {pr: {type: string}, n: {type: integer}}}\n"
        "steps:\n  - {id: a, transform: {pr: '${inputs.pr}', n: '${inputs.n}'}}\n"
        "outputs: {got: '${steps.a.output}'}\n",
    )
    code = main(["run", file, "--json", "--input", "pr=0042", "--input", "n=7"])
    out, _ = capsys.readouterr()
    assert code == 0, out
    assert json.loads(out)["outputs"] == {"got": {"pr": "0042", "n": 7}}
