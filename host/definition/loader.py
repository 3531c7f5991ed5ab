"""Reading workflow definitions from files, text and mappings, keeping line numbers for errors.

YAML is read as YAML 1.2 (ruamel.yaml), so ``on``, ``no`` and ``yes`` stay strings; JSON is
YAML 1.2 too, so one reader serves both and every error can point at its line. As in YAML 1.2's
core schema, an unquoted date is a string.

A definition holds JSON values only, ones plait keeps exactly (see :mod:`plait.values`): no
``.inf``/``.nan``, no integer past 4,300 digits, no binary, set or tagged scalar. Each one found
is an issue at its path. Aliases may not make the document much larger than its text.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.constructor import ConstructorError, RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from plait.definition.models import WorkflowDef
from plait.errors import DefinitionError, Issue
from plait.values import MAX_INT_DIGITS, MAX_NESTING, json_location

__all__ = [
    "SourceHook",
    "issues_from_validation",
    "load",
    "parse_text",
    "read_file",
    "value_issues",
]

SourceHook = Callable[[str, str | None], Mapping[str, Any] | None]
"""A plugin's ``load_workflow(source, path)``: another format's text to a mapping, or None."""

MAX_SOURCE_BYTES = 4 * 1024 * 1024
"""Largest workflow source accepted, so a huge file is refused before it is parsed."""
ALIAS_ALLOWANCE = 100_000
"""Values YAML aliases may add beyond what the text itself holds (at most one value per
character): enough for any reuse of anchors, too little for an alias bomb."""
MAX_ISSUES = 50
"""Issues reported about values that are not JSON before the rest are left unsaid."""


class _Constructor(RoundTripConstructor):
    """ruamel's round-trip constructor, with YAML 1.2 core-schema dates (plain strings) and
    integers refused, at their line, past the digits a JSON value may have."""

    def construct_yaml_timestamp(self, node: Any, values: Any = None) -> Any:
        return str(node.value)

    def construct_yaml_int(self, node: Any) -> Any:
        digits = sum(ch.isdigit() for ch in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise ConstructorError(
                None,
                None,
                f"an integer of {digits:,} digits is over the {MAX_INT_DIGITS:,}-digit limit",
                node.start_mark,
            )
        return super().construct_yaml_int(node)


_Constructor.add_constructor("tag:yaml.org,2002:timestamp", _Constructor.construct_yaml_timestamp)
_Constructor.add_constructor("tag:yaml.org,2002:int", _Constructor.construct_yaml_int)

_NON_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)
"""What YAML may not hold raw (C1 controls, DEL, lone surrogates...) or reads as a line break
(U+0085, U+2028, U+2029), though a JSON string may hold it."""
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _yaml_ready(text: str) -> str:
    """JSON text with what YAML may not hold raw written as ``\\u`` escapes; other text as is.

    In valid JSON such a character can only sit inside a string, where the escape means the
    same; a YAML reader would refuse the text instead (JSON is YAML 1.2 only up to that).
    """
    if _NON_PRINTABLE.search(text) is None:
        return text
    try:
        json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return text  # not JSON: YAML says what is wrong with it
    return _NON_PRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _string(value: str) -> str:
    """A YAML string as JSON reads it: YAML reads the escapes ``\\ud83d\\ude00`` (how JSON
    writes characters past U+FFFF) as two lone surrogates, JSON as the one character."""
    text = str(value)
    if _SURROGATE_PAIR.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


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
    yaml.Constructor = _Constructor
    yaml.allow_duplicate_keys = False
    try:
        doc = yaml.load(io.StringIO(_yaml_ready(text)))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise DefinitionError([Issue("", f"YAML: {problem}", line)], source=path) from None
    except YAMLError as exc:
        raise DefinitionError([Issue("", f"YAML: {exc}")], source=path) from None
    except RecursionError:
        raise DefinitionError([Issue("", "YAML: nested too deeply")], source=path) from None
    except Exception as exc:  # noqa: BLE001 - ruamel's own failures on odd input
        # (an integer too long for Python to read, a value a constructor cannot build)
        problem = f"YAML: {type(exc).__name__}: {exc}"[:500]
        raise DefinitionError([Issue("", problem)], source=path) from None
    if not isinstance(doc, CommentedMap):
        kind = "an empty document" if doc is None else _yaml_kind(doc)
        raise DefinitionError([Issue("", f"a workflow is a mapping, got {kind}")], source=path)
    plain = _Plain(len(text) + ALIAS_ALLOWANCE)
    data = plain.convert(doc, "", 0)
    if plain.issues:
        raise DefinitionError(plain.issues, source=path)
    return data, plain.lines


class _Plain:
    """ruamel's round-trip nodes to plain dicts/lists, recording each path's line.

    What is not JSON (a binary, a set, a tagged scalar) becomes an issue; so do nesting past
    :data:`MAX_NESTING` levels and aliases that would expand past ``budget`` values.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.lines: dict[str, int] = {}
        self.issues: list[Issue] = []

    def issue(self, path: str, message: str) -> None:
        self.issues.append(Issue(path, message, _line(self.lines, path)))

    def convert(self, node: Any, path: str, depth: int) -> Any:
        self.budget -= 1
        if self.budget < 0:
            if self.budget == -1:
                self.issue(path, "YAML aliases expand the document far beyond its text")
            return None
        if isinstance(node, CommentedMap | CommentedSeq) and depth >= MAX_NESTING:
            self.issue(path, f"nested more than {MAX_NESTING} levels deep")
            return None
        if isinstance(node, CommentedMap):
            out: dict[str, Any] = {}
            for key, value in node.items():
                child = f"{path}.{key}" if path else str(key)
                try:
                    self.lines[child] = node.lc.key(key)[0] + 1
                except (KeyError, TypeError, AttributeError):
                    pass
                if not isinstance(key, str | int | float | type(None)):
                    self.issue(path, f"a mapping key is a string, not {_yaml_kind(key)}")
                    continue
                out[_string(key) if isinstance(key, str) else str(key)] = self.convert(
                    value, child, depth + 1
                )
            return out
        if isinstance(node, CommentedSeq):
            items = []
            for i, value in enumerate(node):
                child = f"{path}[{i}]"
                try:
                    self.lines[child] = node.lc.item(i)[0] + 1
                except (KeyError, TypeError, AttributeError):
                    pass
                items.append(self.convert(value, child, depth + 1))
            return items
        if isinstance(node, str):
            return _string(node)
        if isinstance(node, bool) or node is None:
            return node
        if isinstance(node, ScalarBoolean):  # an anchored boolean: an int subclass
            return bool(node)
        if isinstance(node, int):
            return int(node)
        if isinstance(node, float):
            return float(node)
        if isinstance(node, TaggedScalar):
            self.issue(path, f"the YAML tag {node.tag!s} is not supported here")
        else:
            self.issue(path, f"not a JSON value (YAML gave {_yaml_kind(node)})")
        return None


def value_issues(data: Any, lines: Mapping[str, int], prefix: str = "") -> list[Issue]:
    """An issue for each value in ``data`` that is not a JSON value plait keeps exactly.

    ``data`` is a definition as plain data (pydantic models in it are read as their
    ``model_dump()``); paths start at ``prefix``. At most :data:`MAX_ISSUES` are returned.
    """
    issues: list[Issue] = []
    stack: list[tuple[Any, str, int]] = [(data, prefix, 0)]
    while stack and len(issues) < MAX_ISSUES:
        value, path, depth = stack.pop()
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if isinstance(value, dict | list | tuple):
            if depth >= MAX_NESTING:
                message = f"nested more than {MAX_NESTING} levels deep"
                issues.append(Issue(path, message, _line(lines, path)))
                continue
            if isinstance(value, dict):
                children = []
                for key, item in value.items():
                    problem = (
                        "is not a string"
                        if not isinstance(key, str)
                        else (found[1] if (found := json_location(key)) else None)
                    )
                    if problem is not None:
                        message = f"mapping key {key!r} {problem.removeprefix('a string ')}"
                        issues.append(Issue(path, message, _line(lines, path)))
                        continue
                    children.append((item, f"{path}.{key}" if path else key, depth + 1))
            else:
                children = [(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
            stack.extend(reversed(children))
            continue
        found = json_location(value)
        if found is not None:
            issues.append(Issue(path, found[1], _line(lines, path)))
    return issues


def _validate(data: dict[str, Any], lines: dict[str, int], origin: str | None) -> WorkflowDef:
    issues = value_issues(data, lines)
    if issues:
        raise DefinitionError(issues, source=origin)
    try:
        wf = WorkflowDef.model_validate(data)
    except ValidationError as exc:
        issues = issues_from_validation(exc, lines, data)
        error = DefinitionError(issues, source=origin)
        partial = _salvage(data, exc)
        if partial is not None:
            partial._lines = lines
            partial._origin = origin
        # What could be read of the refused definition: compiling it reports the problems of
        # the rest of the workflow with these, at once (see ``compiler.with_compile_issues``).
        error.partial = partial  # type: ignore[attr-defined]
        raise error from None
    wf._lines = lines
    wf._origin = origin
    return wf


def _salvage(data: dict[str, Any], exc: ValidationError) -> WorkflowDef | None:
    """``data`` without the fields ``exc`` refuses, as a model, when that much can be kept.

    A refused top-level field falls back to its default, a refused common field of a step
    (``timeout``, ``retry``...) is left out, and a refused step id is replaced, so every step
    keeps its index and every issue found later its path. ``None`` when no such repair
    validates (a step that is not a mapping, no steps at all).
    """
    fixed = dict(data)
    steps = fixed.get("steps")
    if isinstance(steps, list):
        steps = fixed["steps"] = [dict(s) if isinstance(s, dict) else s for s in steps]
    for _ in range(3):
        for err in exc.errors(include_url=False):
            loc = err["loc"]
            if not loc:
                return None
            top = loc[0]
            if top == "steps" and len(loc) >= 3 and isinstance(steps, list):
                index, name = loc[1], loc[2]
                if not (isinstance(index, int) and 0 <= index < len(steps)):
                    return None
                step = steps[index]
                if not isinstance(step, dict) or name == "config":
                    return None
                if name == "id":
                    step["id"] = f"_step_{index}"
                else:
                    step.pop(str(name), None)
            elif top == "name":
                fixed["name"] = "_"
            elif top != "steps" and top in fixed:
                fixed.pop(str(top))
            else:
                return None
        try:
            return WorkflowDef.model_validate(fixed)
        except ValidationError as again:
            exc = again
    return None


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
    if isinstance(node, list | tuple):
        return "a list"
    if isinstance(node, Mapping):
        return "a mapping"
    if isinstance(node, bytes):
        return "binary data"
    if isinstance(node, AbstractSet):
        return "a set"
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
