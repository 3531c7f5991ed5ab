"""The public front door: ``plait.__all__`` and the facade module that holds it."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
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


def _facade() -> ast.Module:
    return ast.parse((REPO / "host" / "__init__.py").read_text(encoding="utf-8"))


def _type_checking_imports(tree: ast.Module) -> dict[str, str]:
    """name -> module of the imports under ``if TYPE_CHECKING:``."""
    block = next(n for n in tree.body if isinstance(n, ast.If))
    assert isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
    found = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
        assert node.module.startswith("plait.")
        for alias in node.names:
            found[alias.asname or alias.name] = node.module
    return found


def test_facade_holds_only_its_lazy_table():
    """The facade: docstring, the names for type checkers, the owner table, __all__ and the
    two module hooks of PEP 562; nothing that runs at import but the table."""
    body = _facade().body
    assert isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    assert isinstance(body[0].value.value, str), "the module starts with its docstring"
    assigned = []
    functions = []
    for node in body[1:]:
        if isinstance(node, ast.Import | ast.ImportFrom | ast.If | ast.Expr):
            continue
        if isinstance(node, ast.FunctionDef):
            functions.append(node.name)
            continue
        target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0]
        assert isinstance(target, ast.Name), ast.dump(node)
        assigned.append(target.id)
    assert sorted(assigned) == ["_OWNERS", "__all__"]
    assert sorted(functions) == ["__dir__", "__getattr__"]


def test_facade_names_are_exactly_all_and_each_owner_is_right():
    typed = _type_checking_imports(_facade())
    assert set(typed) == set(plait.__all__)
    assert typed == plait._OWNERS
    for name, module in plait._OWNERS.items():
        assert getattr(importlib.import_module(module), name) is getattr(plait, name)


def test_a_plugin_import_stays_light():
    """Issue 10: ``import plait.plugins`` loads the plugin contract, not the host."""
    code = (
        "import sys, plait.plugins, plait.errors; "
        "print(sorted(m for m in ('websockets', 'sqlite3', 'diskcache', "
        "'jinja2', 'mcp', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_unknown_name_is_an_attribute_error():
    try:
        plait.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("plait.NoSuchThing resolved")
