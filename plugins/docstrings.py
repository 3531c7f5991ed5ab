"""A tool's docstring as MCP clients and models should read it: Markdown, without sections.

A tool made from a Python function is described by its docstring, and MCP clients (IDEs, the
MCP Inspector) and models show that text as it is. Docstrings are written for Sphinx: reST
roles (``:func:`x```), double backticks, directives (``.. note::``) and ``Args:``/``Returns:``
sections would reach them as noise, and the arguments' documentation would sit in the tool's
description instead of beside each argument in its input schema, where clients look for it.

:func:`describe` parses the docstring with ``docstring_parser`` (Google, reST, numpydoc and
epydoc styles) and gives the description (summary, body, deprecation, notes, examples) in
Markdown, and each documented parameter's text apart. Returns and raises are left out: they
describe the Python function, whereas a tool's caller gets JSON back or a failed call. Markup is
converted, never interpreted: nothing is resolved, so the result depends on the text alone.
Inline markup is converted everywhere but in Markdown code fences, reST literal blocks included.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from collections.abc import Callable
from typing import Any

import docstring_parser

__all__ = ["describe", "to_markdown"]

_INLINE = re.compile(
    r"(?<!`)``(?!`)(?P<literal>(?s:.+?))``"  # ``literal`` (three backticks open no literal)
    r"|:(?P<role>[A-Za-z][\w+.-]*(?::[A-Za-z][\w+.-]*)*):`(?P<target>[^`]+)`"  # :py:func:`x`
    r"|`(?P<title>[^`<]*?)\s*<(?P<url>[^`<>]+)>`__?"  # `title <url>`_
    r"|`(?P<ref>[^`]+)`__?(?!\w)"  # `reference`_
    r"|`(?P<code>[^`]+)`"  # `interpreted text` (already Markdown: kept, and skipped over)
)
_FENCED = re.compile(r"(?ms)(^[ \t]*```.*?^[ \t]*```[ \t]*$)")
_PROSE_ROLES = frozenset({"abbr", "doc", "download", "numref", "ref", "term"})
"""Roles whose text is prose (a title, a term), not a name: shown without backticks."""
_TITLED = re.compile(r"(?s)(?P<text>.*?\S)\s*<(?P<target>[^<>]+)>")

_DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\.\s+(?P<name>[\w:+-]+)::(?:\s+(?P<arg>.*))?$")
_COMMENT = re.compile(r"^\s*\.\.(?:\s|$)")
"""Any other explicit markup (a comment, ``.. _target:``, ``.. |sub| replace::``): dropped."""
_OPTION = re.compile(r"^:[\w-]+:(?:\s|$)")
_NOTE_SECTION = re.compile(
    r"^(?P<indent>\s*)(?P<name>Note|Notes|Warning|Warnings|Tip|Hint|Important|Caution"
    r"|Attention|Danger|Todo|See Also):\s*$"
)
"""Google-style admonitions, which ``docstring_parser`` leaves in the long description."""
_CODE_DIRECTIVES = frozenset({"code", "code-block", "sourcecode", "doctest"})
_LABELS = {
    "attention": "Attention",
    "caution": "Caution",
    "danger": "Danger",
    "error": "Error",
    "hint": "Hint",
    "important": "Important",
    "note": "Note",
    "notes": "Note",
    "see also": "See also",
    "seealso": "See also",
    "tip": "Tip",
    "todo": "To do",
    "warning": "Warning",
    "warnings": "Warning",
}
_VERSIONED = {
    "deprecated": "Deprecated since version",
    "versionadded": "New in version",
    "versionchanged": "Changed in version",
}
_SECTIONS = re.compile(
    r"^\s*(?:Args|Arguments|Parameters|Params|Returns?|Yields?|Raises|Attributes):?\s*$",
    re.MULTILINE,
)
"""Where a docstring's sections start, for one the parser could not read."""


def describe(source: Callable[..., Any] | str | None) -> tuple[str, dict[str, str]]:
    """A function's (or a docstring's) description and its parameters' descriptions.

    Both in Markdown. The description is the summary and body, then a deprecation, notes and
    examples; parameter sections, returns and raises are left out. ``params`` maps each
    documented parameter (``*args`` as ``args``) to its text. Never raises: a docstring the
    parser cannot read is described by its text up to its first section.
    """
    doc = _docstring(source)
    if not doc:
        return "", {}
    # Roles go first: the reST parser would take a line opening with one for a field.
    doc = _inline(doc)
    try:
        parsed = docstring_parser.parse(doc)
    except Exception:  # a parser bug on an odd docstring must not keep a tool from loading
        return to_markdown(_SECTIONS.split(doc, maxsplit=1)[0], inline=False), {}
    parts = [parsed.description or ""]
    if parsed.deprecation is not None:
        version = f" {parsed.deprecation.version}" if parsed.deprecation.version else ""
        body = textwrap.indent(parsed.deprecation.description or "", "   ")
        parts.append(f".. deprecated::{version}\n{body}")
    parts += [
        ".. note::\n" + textwrap.indent(m.description, "   ")
        for m in parsed.meta
        if m.args == ["notes"] and m.description  # numpydoc's Notes, a section of their own
    ]
    for example in parsed.examples:
        text = "\n".join(t for t in (example.snippet, example.description) if t)
        parts.append(f"Example:\n\n{text}")
    params = {
        p.arg_name.lstrip("*"): to_markdown(p.description, inline=False)
        for p in parsed.params
        if p.args[0] != "attribute" and p.description
    }
    return to_markdown("\n\n".join(p for p in parts if p), inline=False), params


def to_markdown(text: str, *, inline: bool = True) -> str:
    """reST text as Markdown: roles and literals as code, directives and literal blocks too.

    ``:func:`~a.b.c``` and ``:class:`title <target>``` become `` `c` `` and `` `title` ``,
    ``.. note::`` becomes "Note: ...", ``Example::`` and doctests become fenced code.
    ``inline=False`` skips the inline pass, for text that already had it.
    """
    if inline:
        text = _inline(text)
    out = _blocks(text.expandtabs(4).splitlines())
    lines = [line.rstrip() for line in out]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _docstring(source: Callable[..., Any] | str | None) -> str:
    if source is None:
        return ""
    if isinstance(source, str):
        return inspect.cleandoc(source)
    return inspect.getdoc(source) or ""


# -- inline markup ------------------------------------------------------------------------------


def _inline(text: str) -> str:
    """Inline markup converted, except inside Markdown code fences (already Markdown)."""
    parts = _FENCED.split(text)
    return "".join(p if i % 2 else _INLINE.sub(_inline_one, p) for i, p in enumerate(parts))


def _inline_one(match: re.Match[str]) -> str:
    if match["literal"] is not None:
        return _code(match["literal"])
    if match["role"] is not None:
        return _role(match["role"].rsplit(":", 1)[-1], match["target"])
    if match["url"] is not None:
        title, url = _oneline(match["title"]), match["url"].strip()
        if "://" not in url and not url.startswith("mailto:"):
            return title or url  # an internal target: only its title means something here
        return f"[{title}]({url})" if title else f"<{url}>"
    if match["ref"] is not None:
        return _oneline(match["ref"])
    return match[0]


def _role(name: str, target: str) -> str:
    titled = _TITLED.fullmatch(target)
    if titled is not None:
        text = titled["text"]
    else:
        text = target.strip().lstrip("!")
        if text.startswith("~"):
            text = text[1:].rsplit(".", 1)[-1]
    text = _oneline(text)
    return text if name in _PROSE_ROLES else _code(text)


def _code(text: str) -> str:
    text = _oneline(text)
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _oneline(text: str) -> str:
    return " ".join(text.split())


# -- block markup -------------------------------------------------------------------------------


def _blocks(lines: list[str]) -> list[str]:
    """Directives, literal blocks and doctests of ``lines`` as Markdown lines."""
    out: list[str] = []
    fenced = False
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("```"):  # already Markdown: left alone
            fenced = not fenced
        if fenced or stripped.startswith("```"):
            out.append(line)
            i += 1
            continue
        directive = _DIRECTIVE.match(line)
        note = _NOTE_SECTION.match(line)
        if directive is not None or _COMMENT.match(line):
            body, i = _indented(lines, i + 1, indent)
            if directive is not None:
                name, arg = directive["name"].lower(), directive["arg"] or ""
                out += ["", *_directive(name, arg.strip(), body, indent), ""]
            continue
        if note is not None and _is_indented_after(lines, i + 1, indent):
            body, i = _indented(lines, i + 1, indent)
            out += ["", *_admonition(_LABELS[note["name"].lower()], body, indent), ""]
            continue
        if stripped.endswith("::"):
            head = stripped[:-2]
            if head:
                out.append(" " * indent + (head.rstrip() if head[-1].isspace() else head + ":"))
            body, i = _indented(lines, i + 1, indent)
            if body:
                out += ["", *_fence(body, indent), ""]
            continue
        if stripped.startswith(">>>") and (not out or not out[-1].strip()):
            end = i
            while end < len(lines) and lines[end].strip():
                end += 1
            out += _fence(textwrap.dedent("\n".join(lines[i:end])).splitlines(), indent, "pycon")
            i = end
            continue
        out.append(line)
        i += 1
    return out


def _indented(lines: list[str], start: int, indent: int) -> tuple[list[str], int]:
    """The block from ``start`` indented deeper than ``indent``, dedented; and where it ends."""
    end = last = start
    while end < len(lines):
        line = lines[end]
        if line.strip():
            if len(line) - len(line.lstrip()) <= indent:
                break
            last = end + 1
        end += 1
    body = textwrap.dedent("\n".join(lines[start:last])).splitlines()
    while body and not body[0].strip():
        body.pop(0)
    return body, last


def _is_indented_after(lines: list[str], start: int, indent: int) -> bool:
    following = next((line for line in lines[start:] if line.strip()), "")
    return len(following) - len(following.lstrip()) > indent


def _directive(name: str, arg: str, body: list[str], indent: int) -> list[str]:
    while body and _OPTION.match(body[0]):  # a directive's options (``:linenos:``) show nothing
        body.pop(0)
    if name in _CODE_DIRECTIVES:
        return _fence(body, indent, arg)
    if name in _VERSIONED:
        version, _, rest = arg.partition(" ")
        return _admonition(f"{_VERSIONED[name]} {version}".strip(), [rest, *body], indent)
    if name == "admonition":  # a titled one: the title is its argument
        return _admonition(arg, body, indent)
    text = [arg, *body] if arg else body
    if name in _LABELS:
        return _admonition(_LABELS[name], text, indent)
    return [" " * indent + line for line in _blocks(text)]  # any other: its text


def _admonition(label: str, body: list[str], indent: int) -> list[str]:
    """``Label: text``, the label leading the body's first line."""
    lines = _blocks(body)
    while lines and not lines[0].strip():
        lines.pop(0)
    if label and not lines:
        lines = [f"{label}."]
    elif label and lines[0].lstrip().startswith("```"):
        lines = [f"{label}:", "", *lines]
    elif label:
        lines[0] = f"{label}: {lines[0].lstrip()}"
    return [" " * indent + line if line else "" for line in lines]


def _fence(body: list[str], indent: int, language: str = "") -> list[str]:
    body = [line.rstrip() for line in body]
    while body and not body[-1]:
        body.pop()
    while body and not body[0]:
        body.pop(0)
    pad = " " * indent
    return [pad + "```" + language, *(pad + line if line else "" for line in body), pad + "```"]
