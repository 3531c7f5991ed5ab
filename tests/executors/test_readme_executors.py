"""The README's "Running heavy steps on Dask" section is run, so it cannot drift from the code:
its configuration makes an engine, its workflow steps validate, its tool is an executor's, and
its executor plugin (a pool of local processes) runs a step's call in another process. The Ray
executor of docs/executors.md is compiled (Ray is no dependency of plait)."""

from __future__ import annotations

import ast
import os
import re
import tomllib
from pathlib import Path

import pytest
from ruamel.yaml import YAML

import plait
from plait.plugins import create_plugin_manager
from plait.testing import memory_config, started_host

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")


def blocks(text: str, heading: str, lang: str) -> list[str]:
    """The ``lang`` code blocks under the heading ``heading`` (up to the next heading)."""
    found, current, lines = [], "", text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            current = line.lstrip("#").strip()
        elif line.startswith("```"):
            kind, body = line[3:].strip(), []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if current == heading and kind == lang:
                found.append("\n".join(body) + "\n")
        i += 1
    assert found, f"no {lang} block under {heading!r}"
    return found


SECTION = "Running heavy steps on Dask"


def fit(data: list[float]) -> dict:
    return {"n": len(data)}


def test_the_configuration_makes_an_engine_and_the_steps_validate():
    (toml,) = blocks(README, SECTION, "toml")
    tables = tomllib.loads(toml)
    config = memory_config(**tables)
    assert config.executors["dask"]["address"].startswith("tcp://")

    @plait.hookimpl
    def register_tools(register):
        register(fit, "ml.fit")

    pm = create_plugin_manager(
        entry_points=False,
        extra=[type("p", (), {"register_tools": staticmethod(register_tools)})],
    )
    engine = plait.Engine(pm, config)  # the table is checked here; nothing connects
    (yaml,) = blocks(README, SECTION, "yaml")
    steps = YAML(typ="safe").load(yaml)["steps"]
    assert steps[0]["executor"] == "dask"
    engine.compile({"name": "fit", "inputs": {"type": "object"}, "steps": steps})


def test_the_tool_example_names_its_executor():
    (tool,) = blocks(README, SECTION, "python")
    namespace: dict = {"plait": plait}
    exec(compile(tool, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    made = plait.Tool.from_function(namespace["fit"])
    assert (made.name, made.executor) == ("ml.fit", "dask")


async def test_the_executor_plugin_runs_a_steps_call_in_another_process(tmp_path, monkeypatch):
    (plugin,) = blocks(README, "Executors of your own", "python")
    (tmp_path / "readme_executor.py").write_text(plugin, encoding="utf-8")
    (tmp_path / "readme_tools.py").write_text(
        "import os\n\nimport plait\n\n\n"
        "def pid() -> int:\n    return os.getpid()\n\n\n"
        "@plait.hookimpl\ndef register_tools(register):\n    register(pid, 'os.pid')\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # the pool's processes import readme_tools
    config = memory_config(
        executors={"processes": {"workers": 1}},
        plugins={"modules": ["readme_executor", "readme_tools"]},
    )
    workflow = {
        "name": "pool",
        "steps": [
            {"id": "there", "tool": "os.pid", "executor": "processes"},
            {"id": "here", "tool": "os.pid"},
        ],
    }
    async with started_host(config=config, workflows=[workflow]) as host:
        run = await host.wait(await host.start_run("pool"))
    assert run.status == "succeeded", run.error
    assert run.steps["here"].output == os.getpid()
    assert run.steps["there"].output != os.getpid()


def test_the_ray_executor_of_the_docs_compiles():
    docs = (REPO / "docs" / "executors.md").read_text(encoding="utf-8")
    (code,) = blocks(docs, "A Ray executor, the same way", "python")
    tree = ast.parse(code)
    names = {n.name for n in tree.body if isinstance(n, ast.ClassDef | ast.FunctionDef)}
    assert {"RayExecutor", "RayProvider", "register_executors"} <= names
    assert not re.search(r"^import ray|^from ray", code, re.M), "ray imported at module level"
