"""``--loop``: the real ``plait serve`` (and ``plait run``) on uvloop, on asyncio, and without
uvloop.

uvloop is hidden from a command by a ``uvloop.py`` of the test's first on its ``PYTHONPATH``
that raises ImportError, as an interpreter without ``plait[fast]`` would.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from plait.cli.loops import uvloop_installed

from .host_process import PLAIT, HostProcess

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

HIDE_UVLOOP = 'raise ImportError("uvloop hidden by the test")\n'
QUICK = """\
name: quick
steps:
  - {id: a, transform: '${inputs.n + 1}'}
outputs: {v: '${steps.a.output}'}
"""


def needs_uvloop() -> None:
    if not uvloop_installed():  # as `--loop auto` decides: it imports
        pytest.skip("uvloop is not installed (pip install 'plait[fast]', or '.[dev]')")


async def serves_ping(host: HostProcess, *extra: str, loop: str) -> None:
    host.popen("--port", "0", *extra)
    try:
        host.wait_listening()
        assert f"(event loop: {loop})" in host.stderr(), host.stderr()
        assert await host.call("ping") == {}
    finally:
        host.stop()
    assert host.wait_exit() == 0, host.stderr()


async def test_serve_on_uvloop_answers_a_ping(tmp_path: Path):
    needs_uvloop()
    await serves_ping(HostProcess(tmp_path), "--loop", "uvloop", loop="uvloop")


async def test_serve_on_asyncio_answers_a_ping(tmp_path: Path):
    await serves_ping(HostProcess(tmp_path), "--loop", "asyncio", loop="asyncio")


async def test_serve_auto_without_uvloop_runs_on_asyncio(tmp_path: Path):
    (tmp_path / "uvloop.py").write_text(HIDE_UVLOOP)  # the folder is on its PYTHONPATH
    await serves_ping(HostProcess(tmp_path), loop="asyncio")


def hidden(tmp: Path) -> dict[str, str]:
    (tmp / "hide").mkdir()
    (tmp / "hide" / "uvloop.py").write_text(HIDE_UVLOOP)
    env = {k: v for k, v in os.environ.items() if k != "PLAIT_TOKEN"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp / "hide"), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize("command", ["serve", "run"])
def test_loop_uvloop_without_it_is_one_line_and_exit_2(tmp_path: Path, command: str):
    (tmp_path / "quick.yaml").write_text(QUICK)
    args = ["--port", "0", "--data-dir", ":memory:"] if command == "serve" else ["quick.yaml"]
    done = subprocess.run(
        [*PLAIT, command, *args, "--loop", "uvloop"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
        env=hidden(tmp_path),
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr == "error: uvloop is not installed: pip install 'plait[fast]'\n"
    assert "listening" not in done.stderr


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_run_on_either_loop(tmp_path: Path, loop: str):
    if loop == "uvloop":
        needs_uvloop()
    (tmp_path / "quick.yaml").write_text(QUICK)
    done = subprocess.run(
        [*PLAIT, "run", "quick.yaml", "-i", "n=41", "--json", "--loop", loop],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert run["status"] == "succeeded" and run["outputs"] == {"v": 42}, run
