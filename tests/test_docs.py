"""The project's docs stand alone and match the code (issue 10)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("host", "plugins", "steps", "agents", "bench", "examples", "tests", "docs")


def _texts():
    yield REPO / "README.md"
    for folder in SOURCES:
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".md", ".toml", ".yaml") and "build" not in path.parts:
                yield path


def test_no_doc_cites_a_file_outside_the_repository():
    here = Path(__file__).name
    cited = [
        str(path.relative_to(REPO))
        for path in _texts()
        if path.name != here
        and re.search(r"\b(DESIGN|RELIABILITY)\.md\b|\.\./shared", path.read_text())
    ]
    assert cited == []


def test_the_architecture_names_every_layer_of_the_code():
    architecture = (REPO / "docs" / "architecture.md").read_text()
    layers = sorted(p.parent.name for p in (REPO / "host").glob("*/__init__.py"))
    assert layers, "no subpackages found under host/"
    missing = [name for name in layers if f"plait.{name}" not in architecture]
    assert missing == []


def test_every_docs_link_in_the_readme_exists():
    readme = (REPO / "README.md").read_text()
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (REPO / target).is_file(), target


def test_every_test_the_reliability_guarantees_cite_exists():
    """docs/reliability.md names, under each guarantee, the tests that show it: each must be
    a test function of that file, or the document drifts from the suite."""
    text = (REPO / "docs" / "reliability.md").read_text()
    cited = set(re.findall(r"`(tests/[\w/]+\.py)::(\w+)", text))
    assert cited
    missing = []
    for path, name in sorted(cited):
        source = REPO / path
        if not source.is_file() or not re.search(rf"def {name}\(", source.read_text()):
            missing.append(f"{path}::{name}")
    assert missing == []
