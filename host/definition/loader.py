"""Reading workflow definitions from files, text and mappings, keeping line numbers for errors.

YAML is read as YAML 1.2 (ruamel.yaml), so ``on``, ``no`` and ``yes`` stay strings; JSON is
YAML 1.2 too, so one reader serves both and every error can point at its line.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from plait.definition.models import WorkflowDef
from plait.errors import DefinitionError, Issue

__all__ = ["SourceHook", "issues_from_validation", "load", "parse_text", "read_file"]

SourceHook = Callable[[str, str | None], Mapping[str, Any] | None]
"""A plugin's ``load_workflow(source, path)``: another format's text to a mapping, or None."""

MAX_SOURCE_BYTES = 4 * 1024 * 1024
"""Largest workflow source accepted, so a huge file is refused before it is parsed."""


def load(
    source: WorkflowDef | Mapping[str, Any] | str | os.PathLike[str],
    *,
    hook: SourceHook | None = None,
    text_only: bool = False,
) -> WorkflowDef:
    """A workflow from a model, a mapping, YAML/JSON text or a file path.

    A string is read as a path when a file of that name exists or it ends in ``.yaml``,
    ``.yml`` or ``.json`` and has no newline; otherwise it is the text itself. With
    ``text_only`` (a source from a client of the API) a string is always the text: a client
    must not make the host read a file it names.

    Raises:
        DefinitionError: with every problem found, each with its path and (for text) line.
    """
    if isinstance(source, WorkflowDef):
        return source
    if isinstance(source, Mapping):
        return _validate(dict(source), {}, None)
    if not isinstance(source, str):
        if text_only:
            raise DefinitionError("a definition over the API is text or an object, not a path")
        return read_file(source, hook=hook)
    if not text_only and _looks_like_path(source):
        return read_file(source, hook=hook)
    data, lines = parse_text(source, hook=hook)
    return _validate(data, lines, None)


def read_file(path: str | os.PathLike[str], *, hook: SourceHook | None = None) -> WorkflowDef:
    """Read and validate one workflow file."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_SOURCE_BYTES:
            raise DefinitionError(
                f"file is {size} bytes; the limit is {MAX_SOURCE_BYTES}", source=str(p)
            )
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionError(f"cannot read {p}: {exc}", source=str(p)) from None
    data, lines = parse_text(text, path=str(p), hook=hook)
    return _validate(data, lines, str(p))


def parse_text(
    text: str, *, path: str | None = None, hook: SourceHook | None = None
) -> tuple[dict[str, Any], dict[str, int]]:
    """Parse YAML or JSON text into plain data and a map of path → line."""
    if len(text) > MAX_SOURCE_BYTES:
        raise DefinitionError(
            f"source is {len(text)} characters; the limit is {MAX_SOURCE_BYTES}", source=path
        )
    if hook is not None:
        converted = hook(text, path)
        if converted is not None:
            return dict(converted), {}
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        doc = yaml.load(io.StringIO(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise DefinitionError([Issue("", f"YAML: {problem}", line)], source=path) from None
    except YAMLError as exc:
        raise DefinitionError([Issue("", f"YAML: {exc}")], source=path) from None
    except RecursionError:
        raise DefinitionError([Issue("", "YAML: nested too deeply")], source=path) from None
    if not isinstance(doc, CommentedMap):
        kind = "an empty document" if doc is None else _yaml_kind(doc)
        raise DefinitionError([Issue("", f"a workflow is a mapping, got {kind}")], source=path)
    lines: dict[str, int] = {}
    return _plain(doc, "", lines), lines


def _plain(node: Any, path: str, lines: dict[str, int]) -> Any:
    """ruamel's round-trip nodes to plain dicts/lists, recording each path's line."""
    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            try:
                lines[child] = node.lc.key(key)[0] + 1
            except (KeyError, TypeError, AttributeError):
                pass
            out[str(key)] = _plain(value, child, lines)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for i, value in enumerate(node):
            child = f"{path}[{i}]"
            try:
                lines[child] = node.lc.item(i)[0] + 1
            except (KeyError, TypeError, AttributeError):
                pass
            items.append(_plain(value, child, lines))
        return items
    if isinstance(node, str):
        return str(node)
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


def _validate(data: dict[str, Any], lines: dict[str, int], origin: str | None) -> WorkflowDef:
    try:
        wf = WorkflowDef.model_validate(data)
    except ValidationError as exc:
        issues = issues_from_validation(exc, lines, data)
        raise DefinitionError(issues, source=origin) from None
    wf._lines = lines
    wf._origin = origin
    return wf


def issues_from_validation(
    exc: ValidationError, lines: Mapping[str, int], data: Any = None, prefix: str = ""
) -> list[Issue]:
    """pydantic's errors as issues with paths like ``steps[2].retry.attempts`` and lines."""
    issues = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        # StepDef keeps a step type's fields under "config"; users never wrote that word.
        if len(loc) >= 3 and loc[0] == "steps" and loc[2] == "config":
            del loc[2]
        path = prefix
        for part in loc:
            path = (
                f"{path}[{part}]"
                if isinstance(part, int)
                else (f"{path}.{part}" if path else str(part))
            )
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] == "missing":
            message = "required field is missing"
        elif err["type"] == "string_pattern_mismatch" and loc and loc[-1] in ("id", "name"):
            message = f"{message} (got {err.get('input')!r})"
        issues.append(Issue(path, message, _line(lines, path)))
    return issues


def _line(lines: Mapping[str, int], path: str) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        if cut <= 0:
            return None
        path = path[:cut]
    return None


def _yaml_kind(node: Any) -> str:
    if isinstance(node, list):
        return "a list"
    if isinstance(node, str):
        return "a string"
    if isinstance(node, bool):
        return "a boolean"
    if isinstance(node, int | float):
        return "a number"
    return type(node).__name__


def _looks_like_path(text: str) -> bool:
    if "\n" in text or len(text) > 4096:
        return False
    if text.endswith((".yaml", ".yml", ".json")):
        return True
    try:
        return Path(text).is_file()
    except OSError:
        return False
