"""The README is run, so it cannot drift from the code (issue 11).

Every code block of README.md is found by its heading and language and exercised as a user
would: the quick start's commands against a real ``plait serve`` started by the Makefile's own
``make run`` command line, the Python API script and the "From a script" client as subprocesses,
the plugin and its tests as a plugin module and a pytest run, the YAML examples validated
against a host that provides the tools and agents they name, the TOML and JSON snippets parsed
by what reads them, and the command-line synopsis against each command's own parser.

The one liberty taken: the host listens on a free port (``PLAIT_HOST_PORT=0``) rather than 8765,
so the suite never fights a host the developer is running; the commands find it through the
data dir as they would on 8765, and the "From a script" client is pointed at that URL.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from ruamel.yaml import YAML

import plait
from plait.templates.engine import TemplateEngine
from plait.testing import memory_config, started_host

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent
TIMEOUT = 60


@dataclass(frozen=True)
class Block:
    heading: str
    lang: str
    text: str
    line: int


def _blocks() -> list[Block]:
    blocks, heading = [], ""
    lines = README.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            heading = line.lstrip("#").strip()
        elif line.startswith("```"):
            lang, start, body = line[3:].strip(), i + 1, []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append(Block(heading, lang, "\n".join(body) + "\n", start + 1))
        i += 1
    return blocks


BLOCKS = _blocks()


def blocks(heading: str, lang: str | None = None) -> list[Block]:
    found = [b for b in BLOCKS if b.heading == heading and (lang is None or b.lang == lang)]
    assert found, f"README has no {lang or ''} block under {heading!r}"
    return found


def _yaml(text: str) -> Any:
    return YAML(typ="safe", pure=True).load(text)


def _sh(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done


# -- the project a user has cloned -------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory that looks like the repository to the README's commands: its
    ``examples`` and a ``.venv`` (this interpreter's), and nothing else of the developer's."""
    root = tmp_path_factory.mktemp("clone")
    shutil.copytree(REPO / "examples", root / "examples")  # a copy: the file tools stay inside
    (root / ".venv").symlink_to(BIN.parent)
    return root


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return {**os.environ, "PLAIT_HOST_PORT": "0", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def served(project: Path, env: dict[str, str]) -> Iterator[str]:
    """``make run``'s command line, as the Makefile has it, started in the project; its URL."""
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^run:.*\n\t(.+)$", makefile, re.MULTILINE)
    assert recipe is not None, "the Makefile has no run target"
    command = recipe.group(1).replace("$(BIN)", ".venv/bin")
    log = (project / "serve.log").open("w+b")
    process = subprocess.Popen(
        shlex.split(command), cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline, url = time.monotonic() + TIMEOUT, None
        while url is None:
            assert process.poll() is None, (project / "serve.log").read_text()
            assert time.monotonic() < deadline, "the host did not start listening"
            found = re.search(r"listening on (ws://\S+)", (project / "serve.log").read_text())
            url = found.group(1) if found else None
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


# -- Quick start -------------------------------------------------------------------------------


def test_the_quick_start_is_the_two_make_targets_and_what_make_run_starts() -> None:
    first, _ = blocks("Quick start", "sh")
    commands = [line.split("#")[0].strip() for line in first.text.splitlines()]
    assert [c for c in commands if c] == ["make run", "make test"]
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    for target in ("run", "test"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target
    said = re.search(r"`make run` starts `([^`]+)`", README)
    assert said is not None
    recipe = re.search(r"^run:.*\n\t(.+)$", makefile, re.MULTILINE)
    assert recipe is not None
    assert recipe.group(1).replace("$(BIN)/", "") == said.group(1)
    assert (REPO / ".ci" / "run").read_text(encoding="utf-8").strip().endswith("make test")


def test_the_quick_start_commands_run_as_written(
    served: str, project: Path, env: dict[str, str]
) -> None:
    _, second = blocks("Quick start", "sh")
    run_id = None
    for line in filter(None, (raw.strip() for raw in second.text.splitlines())):
        if "<the id>" in line:
            assert run_id is not None, "the README waits for a run before starting one"
            line = line.replace("<the id>", run_id)
        out = _sh(line, project, env).stdout
        if "runs/start" in line:
            run_id = json.loads(out)["runId"]
        if "runs/wait" in line:
            assert json.loads(out)["run"]["status"] == "succeeded", out
        if "workflows/list" in line:
            names = {w["name"] for w in json.loads(out)["workflows"]}
            assert {"onboard", "fanout"} <= names
        if line.startswith(".venv/bin/plait run "):
            outputs = json.loads(out[out.index("\n{") :])  # after a line per step event
            assert outputs["decision"] and outputs["files"] > 0, out


def test_the_script_client_runs_as_written(served: str, project: Path, env: dict[str, str]) -> None:
    (script,) = blocks("From a script", "python")
    assert "ws://127.0.0.1:8765/rpc" in script.text
    (project / "client.py").write_text(
        script.text.replace("ws://127.0.0.1:8765/rpc", served), encoding="utf-8"
    )
    out = _sh(".venv/bin/python client.py", project, env).stdout.splitlines()
    assert out[0].startswith("1 run.created"), out
    assert out[-1].split()[1] == "run.succeeded", out


# -- Python API and plugins --------------------------------------------------------------------


def test_the_python_api_script_runs_as_written(project: Path, env: dict[str, str]) -> None:
    (script,) = blocks("Python API", "python")
    (project / "script.py").write_text(script.text, encoding="utf-8")
    out = _sh(".venv/bin/python script.py", project, env).stdout.splitlines()
    assert out[0] == "succeeded {'text': 'HELLO, ADA'} hello, ada None"
    assert out[-1] == "{'text': 'HELLO, ADA'}"
    assert "succeeded {'text': 'HELLO, ADA'}" in out[1:-1]
    assert (project / "hello-data").is_dir()  # the durable host kept its runs there


def test_the_plugin_example_is_a_working_plugin(tmp_path: Path, env: dict[str, str]) -> None:
    plugin = blocks("Writing a plugin", "python")[0]
    (tmp_path / "readme_plugin.py").write_text(plugin.text, encoding="utf-8")
    script = (
        "import plait, readme_plugin\n"
        "run = plait.run_sync('hello.yaml', {'name': 'ada'}, plugins=[readme_plugin])\n"
        "print(run.status, run.outputs)\n"
    )
    (tmp_path / "hello.yaml").write_text(
        (REPO / "examples" / "plugin-hello" / "hello.yaml").read_text(encoding="utf-8")
    )
    (tmp_path / "check.py").write_text(script, encoding="utf-8")
    out = _sh(f"{BIN / 'python'} check.py", tmp_path, env).stdout
    assert out.startswith("succeeded"), out
    wrote = re.search(r'`- (\{id: hi, greet: "\$\{inputs.name\}", times: 2\})`', plugin.text)
    assert wrote is not None  # the step the comment shows runs too
    step = _yaml(wrote.group(1))
    done = plait.run_sync(
        {"name": "hi", "steps": [step]}, {"name": "ada"}, plugins=[_module(tmp_path)]
    )
    assert done.steps["hi"].output == "hi ada, hi ada"


def _module(folder: Path) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_plugin", folder / "readme_plugin.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_plugin_tests_example_passes(tmp_path: Path, env: dict[str, str]) -> None:
    (tests,) = blocks("Testing a plugin", "python")
    (tmp_path / "test_readme_example.py").write_text(tests.text, encoding="utf-8")
    hello = REPO / "examples" / "plugin-hello"
    (tmp_path / "conftest.py").write_text(  # the fixture the README's comment names
        "import pytest\n\n\n@pytest.fixture\ndef plait_workflows():\n"
        f"    return [{str(hello / 'hello.yaml')!r}]\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [str(BIN / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(hello)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


# -- workflows, templates, step paths ----------------------------------------------------------


def _stand_in_tools() -> object:
    """The tools the README's workflows name, so validation checks everything else."""

    def changed_files(repo: str, pr: int) -> list[str]:
        return []

    def approve(pr: int) -> str:
        return "approved"

    def comment(pr: int, body: str) -> str:
        return "commented"

    def get(url: str) -> str:
        return url

    def status(job: str) -> dict[str, str]:
        return {"status": "done"}

    class Tools:
        @plait.hookimpl
        def register_tools(self, register: plait.RegisterTool) -> None:
            for name, fn in [
                ("git.changed_files", changed_files),
                ("git.approve", approve),
                ("git.comment", comment),
                ("http.get", get),
                ("jobs.status", status),
            ]:
                register(fn, name)

    return Tools()


def _validate(workflows: list[dict[str, Any]]) -> list[str]:
    async def check() -> list[str]:
        config = memory_config(agents={"reviewer": {"provider": "scripted", "script": []}})
        greet = {"name": "greet", "steps": [{"id": "hi", "transform": "${inputs.name}"}]}
        async with started_host(
            config=config, plugins=[_stand_in_tools()], workflows=[greet]
        ) as host:
            problems = []
            for wf in workflows:
                problems += [str(i) for i in await host.validate_workflow(wf)]
            return problems

    return anyio.run(check)


def test_the_workflow_examples_are_valid() -> None:
    (workflow,) = blocks("Workflows", "yaml")
    (snippets,) = blocks("Step types", "yaml")
    steps = _yaml(snippets.text)
    assert [s["id"] for s in steps] == [
        "squares",
        "poll",
        "fetch",
        "checked",
        "greeting",
        "approval",
    ]
    assert _validate([_yaml(workflow.text), {"name": "snippets", "steps": steps}]) == []


def test_the_state_machine_example_is_valid() -> None:
    (example,) = blocks("State machines", "yaml")
    machine = _yaml(example.text)
    assert machine["initial"] == "draft" and set(machine["states"]) == {"draft", "review", "done"}
    assert _validate([machine]) == []


def test_the_template_examples_render_what_their_comments_say() -> None:
    (example,) = blocks("Templates", "yaml")
    values = _yaml(example.text)["with"]
    context = {
        "steps": {"fetch": {"output": {"title": "fix the build", "tags": ["ci", "bug"]}}},
        "inputs": {"user": "ada", "pr": 7, "amount": 12},
    }
    engine = TemplateEngine()
    rendered = {key: engine.compile(value).render(context) for key, value in values.items()}
    assert rendered == {
        "title": "Fix The Build",
        "tags": ["ci", "bug"],
        "line": "ada opened #7",
        "price": "$12",
    }
    said = dict(re.findall(r'^\s*(\w+): .*# "(.*)"$', example.text, re.MULTILINE))
    assert said == {"price": "$12"} and rendered["price"] == said["price"]


def test_the_step_paths_the_readme_gives_are_the_ones_plait_prints() -> None:
    said = re.search(
        r"\*\*Step paths\*\*: .*?`([^`]+)` \(loop iteration 2\),\s+`([^`]+)` \(parallel",
        README,
        re.S,
    )
    assert said is not None
    loop_path, branch_path = said.group(1), said.group(2)
    workflow = {
        "name": "paths",
        "steps": [
            {"id": "each", "loop": [0, 1, 2], "steps": [{"id": "fetch", "transform": "${item}"}]},
            {
                "id": "fetch",
                "parallel": {
                    "primary": [{"id": "a", "transform": 1}],
                    "mirror": [{"id": "b", "transform": 2}],
                },
            },
        ],
    }
    run = plait.run_sync(workflow)
    printed = {event.step for event in run.events if event.step}
    assert loop_path in printed and branch_path in printed, sorted(printed)


# -- configuration, IDE snippets, the command line ---------------------------------------------


def test_the_configuration_examples_load() -> None:
    for block in (b for b in BLOCKS if b.lang == "toml"):
        data = tomllib.loads(block.text)
        if "project" in data:  # a plugin package's pyproject.toml
            assert data["project"]["entry-points"]["plait"]
            continue
        plait.load_config(environ={}, overrides=_flatten(data))


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{section}.{key}": value for section, table in data.items() for key, value in table.items()
    }


def test_the_ide_snippets_launch_real_plait_commands() -> None:
    for block in blocks("Connecting from an IDE (MCP)", "json"):
        launch = json.loads(block.text)
        if launch.get("type") == "http":  # the host's own /mcp, on its default port
            assert launch["url"] == "http://127.0.0.1:8765/mcp"
            assert launch["headers"]["Authorization"].startswith("Bearer ")
            continue
        assert launch["command"].endswith("/.venv/bin/plait")
        done = subprocess.run(
            [str(BIN / "plait"), launch["args"][0], "--help"], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        flags = [arg for arg in launch["args"] if arg.startswith("--")]
        assert [f for f in flags if f not in done.stdout] == []


def test_the_command_line_synopsis_matches_every_parser() -> None:
    (synopsis,) = blocks("Command line", "")
    for line in synopsis.text.splitlines():
        words = line.split()
        assert words[0] == "plait", line
        done = subprocess.run(
            [str(BIN / "plait"), words[1].split("|")[0], "--help"], capture_output=True, text=True
        )
        assert done.returncode == 0, f"{line}\n{done.stderr}"
        flags = {f.rstrip("]") for f in re.findall(r"--[a-z-]+", line)}
        assert sorted(f for f in flags if f not in done.stdout) == [], line
        if words[1] in ("runs", "dlq", "schedules"):
            actions = words[2].split("|")
            listed = re.search(r"\{([a-z,]+)\}", done.stdout)
            assert listed is not None and sorted(actions) == sorted(listed.group(1).split(","))


def test_the_debugging_example_runs_as_written(
    served: str, project: Path, env: dict[str, str]
) -> None:
    (example,) = blocks("Debugging a run", "")
    lines = [line.removeprefix("$ ").split("  #")[0] for line in example.text.splitlines()]
    run_id = json.loads(_sh(f".venv/bin/{lines[0]}", project, env).stdout)["runId"]
    assert json.loads(_sh(_call(lines[1], run_id), project, env).stdout)["breakpoint"]["step"]
    _sh(_call(lines[2], run_id), project, env)
    deadline = time.monotonic() + TIMEOUT
    while True:  # the run goes on to its breakpoint
        shown = _sh(f'.venv/bin/plait call runs/get \'{{"runId": "{run_id}"}}\'', project, env)
        run = json.loads(shown.stdout)["run"]
        if run.get("reason") == "breakpoint before long_enough":
            break
        assert time.monotonic() < deadline, run
        time.sleep(0.05)
    inspected = json.loads(_sh(_call(lines[3], run_id), project, env).stdout)
    assert inspected["held"][0]["step"] == "long_enough" and inspected["step"]["config"]
    stepped = json.loads(_sh(_call(lines[4], run_id), project, env).stdout)
    assert stepped == {"step": "long_enough"}


def _call(line: str, run_id: str) -> str:
    """A README command with the run id it abbreviates (``3f2a``) made this run's prefix."""
    return ".venv/bin/" + line.replace('"3f2a"', f'"{run_id[:8]}"').strip()
