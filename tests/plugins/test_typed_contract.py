"""The plugin contract is one a type checker follows (issue 10): mypy, from this project's
environment, checks a plugin's step type against the config it declares."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

GOOD = """
import plait
from plait.plugins import RegisterStepType, StepConfig, StepContext, StepType


class ShoutConfig(StepConfig):
    shout: str


class Shout(StepType[ShoutConfig]):
    key = "shout"
    Config = ShoutConfig

    async def run(self, ctx: StepContext, config: ShoutConfig) -> str:
        ctx.log.info("shouting")
        return config.shout.upper()


@plait.hookimpl
def register_step_types(register: RegisterStepType) -> None:
    register(Shout)
"""

BAD = (
    GOOD.replace("return config.shout.upper()", "return config.whisper")
    + """

async def misuse(ctx: StepContext) -> None:
    ctx.step_id = "elsewhere"
"""
)


def _mypy(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(folder)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=folder,
    )


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    root = tmp_path_factory.mktemp("typed")
    (root / "good").mkdir()
    (root / "good" / "shout.py").write_text(GOOD)
    (root / "bad").mkdir()
    (root / "bad" / "shout.py").write_text(BAD)
    return {name: _mypy(root / name) for name in ("good", "bad")}


def test_a_typed_plugin_checks_clean_under_strict(checked):
    assert checked["good"].returncode == 0, checked["good"].stdout


def test_mypy_finds_a_plugin_reading_a_field_its_config_lacks(checked):
    out = checked["bad"].stdout
    assert checked["bad"].returncode == 1, out
    assert '"ShoutConfig" has no attribute "whisper"' in out
    assert "step_id" in out  # the step context's identity is read-only


def test_the_example_plugin_package_checks_clean_under_strict():
    done = _mypy(REPO / "examples" / "plugin-hello" / "plait_hello")
    assert done.returncode == 0, done.stdout
