"""Every example workflow runs offline to success through the real ``plait`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
PLAIT = [sys.executable, "-c",
         "import sys; from plait.cli import main; sys.exit(main(sys.argv[1:]))"]


def check_review(out: dict[str, Any]) -> None:
    assert out["decision"].startswith("approved:")
    assert out["files"] >= 4
    assert "Steps are small and named well" in out["review"]


def check_fanout(out: dict[str, Any]) -> None:
    assert out["squares"] == [1, 4, 9, 16, 25, 36, 49, 64]
    assert out["total"] == 204
    assert out["largest"] == 64


def check_retry(out: dict[str, Any]) -> None:
    assert out == {"report": "third time lucky; primary gave backup", "primary_status": "failed"}


def check_onboard(out: dict[str, Any]) -> None:
    assert out == {"message": "HELLO, ADA!"}


def check_greet(out: dict[str, Any]) -> None:
    assert out == {"greeting": "hello, bob"}


# Each example: extra arguments for `plait run`, and what its outputs must be. A new example
# needs an entry here (test_every_example_has_an_expectation fails until it has one).
EXPECTATIONS: dict[str, tuple[list[str], Any]] = {
    "review.yaml": ([], check_review),
    "fanout.yaml": ([], check_fanout),
    "retry.yaml": ([], check_retry),
    "onboard.yaml": ([], check_onboard),
    "greet.yaml": (["--input", "name=bob"], check_greet),
}


def plait_run(path: Path, extra: list[str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PLAIT_HOST_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [*PLAIT, "run", str(path.relative_to(REPO)), "--config", "examples/plait.toml", "--json",
         *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


def test_every_example_has_an_expectation():
    assert EXAMPLES, "no examples found"
    assert {p.name for p in EXAMPLES} == set(EXPECTATIONS)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_offline_to_success(path, tmp_path):
    assert path.name in EXPECTATIONS, f"add an expectation for {path.name} to EXPECTATIONS"
    extra, check = EXPECTATIONS[path.name]
    done = plait_run(path, extra, tmp_path / "data")
    assert done.returncode == 0, done.stderr or done.stdout
    run = json.loads(done.stdout)
    assert run["status"] == "succeeded"
    assert run["error"] is None
    assert run["workflow"] == path.stem
    assert run["progress"]["done"] == run["progress"]["total"]
    check(run["outputs"])
    assert (tmp_path / "data").is_dir()  # the data dir came from the environment
