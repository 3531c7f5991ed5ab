"""A real third-party package, installed with pip, found through its entry point by the CLI.

``examples/plugin-hello`` is copied to a temporary folder (so the build leaves nothing in the
repository) and pip-installed once for this module into a private ``--target`` folder, not the
shared venv's site-packages: the CLI runs in a child process with that folder on ``PYTHONPATH``,
so it finds the plugin exactly as an installed one (metadata, entry point, import), while no
other test, and no other pytest session using the same venv, ever sees it. Removing the folder
is the uninstall. The example's own tests (written with ``plait.testing``) run there too, in a
pytest of their own, as the plugin's author would run them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "plugin-hello"


@pytest.fixture(scope="module")
def hello_site(tmp_path_factory):
    """A folder holding ``plait-hello`` as pip installs it, removed after this module."""
    root = tmp_path_factory.mktemp("plugin-hello")
    source = root / "plugin-hello"
    shutil.copytree(
        EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    site = root / "site"
    # The venv's setuptools cannot build without `wheel`, so pip builds in isolation.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--target",
            str(site),
            "-q",
            "--disable-pip-version-check",
            str(source),
        ],
        check=True,
        timeout=180,
    )
    assert (site / "plait_hello-0.1.0.dist-info" / "entry_points.txt").is_file()
    yield site
    shutil.rmtree(root, ignore_errors=True)


def plait_cli(*argv, site, cwd):
    """``plait ARGV`` in a child process that has ``site`` on its path: (code, stdout, stderr)."""
    code = f"from plait.cli.commands import main; raise SystemExit(main({list(argv)!r}))"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_installed_plugin_passes_its_own_tests_written_with_plait_testing(hello_site):
    """The example's tests/ in a pytest of its own, as its author would run them: the plugin
    installed, plait.testing's fixtures found through plait's ``pytest11`` entry point."""
    source = hello_site.parent / "plugin-hello"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(hello_site), os.environ.get("PYTHONPATH")])
        ),
    }
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        + ["--import-mode=importlib", "tests"],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout


def test_installed_plugin_runs_the_example_workflow(hello_site, tmp_path):
    code, out, err = plait_cli(
        "run",
        str(EXAMPLE / "hello.yaml"),
        "--input",
        "name=ada",
        "--json",
        "--no-cache",
        site=hello_site,
        cwd=tmp_path,
    )
    assert code == 0, err
    run = json.loads(out)
    assert run["status"] == "succeeded", run.get("error")
    assert run["workflow"] == "hello-plugin"
    assert run["outputs"] == {"tool": "hello, ada!", "step": "hi ada, hi ada"}
    assert run["steps"]["tool_hi"]["output"] == "hello, ada!"
    assert run["steps"]["step_hi"]["output"] == "hi ada, hi ada"


def test_installed_plugin_is_listed_with_its_version_and_contributions(hello_site, tmp_path):
    code, out, err = plait_cli("plugins", "--json", site=hello_site, cwd=tmp_path)
    listing = json.loads(out)
    assert code == 0, listing["failed"] or err
    assert listing["failed"] == []
    plugins = {p["name"]: p for p in listing["plugins"]}
    hello = plugins["hello"]
    assert hello == {
        "name": "hello",
        "version": "0.1.0",
        "builtin": False,
        "step_types": ["greet"],
        "tools": ["hello.greet"],
        "agent_providers": [],
        "executor_providers": [],
    }
    assert plugins["plait.steps.tool"]["builtin"]


def test_installed_plugin_can_be_disabled_by_name_in_config(hello_site, tmp_path):
    (tmp_path / "plait.toml").write_text('[plugins]\ndisabled = ["hello"]\n')
    code, out, err = plait_cli("plugins", "--json", site=hello_site, cwd=tmp_path)
    assert code == 0, err
    names = {p["name"] for p in json.loads(out)["plugins"]}
    assert "hello" not in names
    assert "plait.steps.tool" in names

    code, out, err = plait_cli(
        "run",
        str(EXAMPLE / "hello.yaml"),
        "--input",
        "name=ada",
        "--json",
        "--no-cache",
        site=hello_site,
        cwd=tmp_path,
    )
    assert code == 2
    assert "unknown step type" in err
