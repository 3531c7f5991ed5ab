"""STYLE section 4, guard 1: every package folder is in the wheel; guard 2: tests are no package."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def setuptools_table() -> dict:
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def packages_on_disk(package_dir: dict[str, str]) -> set[str]:
    found = set()
    for package, folder in package_dir.items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            relative = init.parent.relative_to(root).parts
            found.add(".".join((package, *relative)))
    return found


def test_package_dir_maps_the_five_folders():
    assert setuptools_table()["package-dir"] == {
        "plait": "host",
        "plait.plugins": "plugins",
        "plait.steps": "steps",
        "plait.agents": "agents",
        "plait.executors": "executors",
    }


def test_packages_match_every_folder_with_an_init():
    table = setuptools_table()
    declared = table["packages"]
    assert len(declared) == len(set(declared)), "a package is listed twice"
    assert set(declared) == packages_on_disk(table["package-dir"])


def test_every_package_folder_has_an_init():
    """A folder of modules without __init__.py would be left out silently."""
    table = setuptools_table()
    for folder in table["package-dir"].values():
        for sub in [REPO / folder, *(REPO / folder).rglob("*")]:
            if sub.is_dir() and sub.name != "__pycache__" and any(sub.glob("*.py")):
                assert (sub / "__init__.py").is_file(), f"{sub} has modules but no __init__.py"


def test_py_typed_is_package_data():
    table = setuptools_table()
    assert "py.typed" in table["package-data"]["plait"]
    assert (REPO / table["package-dir"]["plait"] / "py.typed").is_file()


def test_no_init_under_tests():
    inits = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("__init__.py"))
    assert inits == []


def test_the_web_views_files_are_package_data():
    """Every file of the page (HTML, CSS, JavaScript) goes into the wheel: the package-data
    globs, taken as setuptools takes them, cover the whole static folder."""
    table = setuptools_table()
    assert "plait.rpc.web" in table["packages"]
    folder = REPO / table["package-dir"]["plait"] / "rpc" / "web"
    static = {p for p in (folder / "static").rglob("*") if p.is_file()}
    assert {p.suffix for p in static} >= {".html", ".css", ".js"}
    packaged = {
        p for pattern in table["package-data"]["plait.rpc.web"] for p in folder.glob(pattern)
    }
    assert sorted(str(p.relative_to(folder)) for p in static - packaged) == []
