"""The public front door: ``plait.__all__`` and the facade module that holds it."""

from __future__ import annotations

import ast
from pathlib import Path

import plait
import plait.errors

REPO = Path(__file__).resolve().parents[1]


def test_all_is_sorted_and_unique():
    assert plait.__all__ == sorted(plait.__all__)
    assert len(plait.__all__) == len(set(plait.__all__))


def test_every_name_resolves():
    for name in plait.__all__:
        assert getattr(plait, name, None) is not None, name


def test_every_public_exception_is_exported_from_plait():
    exceptions = [
        name
        for name in plait.errors.__all__
        if isinstance(getattr(plait.errors, name), type)
        and issubclass(getattr(plait.errors, name), BaseException)
    ]
    assert "PlaitError" in exceptions and "DefinitionError" in exceptions
    for name in exceptions:
        cls = getattr(plait.errors, name)
        assert name in plait.__all__, f"{name} is not exported from plait"
        assert getattr(plait, name) is cls
        assert cls.__module__ == "plait", f"{name}.__module__ is {cls.__module__!r}"
        assert issubclass(cls, plait.PlaitError)


def test_errors_all_lists_every_public_name():
    assert set(plait.errors.__all__) <= set(plait.__all__)
    assert len(plait.errors.__all__) == len(set(plait.errors.__all__))


def test_facade_holds_only_imports_docstring_and_all():
    tree = ast.parse((REPO / "host" / "__init__.py").read_text(encoding="utf-8"))
    body = tree.body
    assert isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    assert isinstance(body[0].value.value, str), "the module starts with its docstring"
    assigned = []
    for node in body[1:]:
        if isinstance(node, ast.Import | ast.ImportFrom):
            continue
        assert isinstance(node, ast.Assign), ast.dump(node)
        assert [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__all__"]
        assert isinstance(node.value, ast.List)
        assert all(isinstance(e, ast.Constant) for e in node.value.elts)
        assigned.append(node)
    assert len(assigned) == 1


def test_facade_imports_are_exactly_all():
    tree = ast.parse((REPO / "host" / "__init__.py").read_text(encoding="utf-8"))
    imported = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert imported == set(plait.__all__)
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module is not None
            assert node.module.startswith("plait.")
