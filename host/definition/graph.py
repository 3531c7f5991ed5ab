"""Drawing a compiled workflow's step graph as Mermaid or Graphviz dot."""

from __future__ import annotations

import re
from typing import Any

from plait.definition.compiler import MACHINE_TYPE, CompiledStep, CompiledWorkflow, Scope
from plait.plugins.types import StepType

__all__ = ["render_graph"]


def render_graph(compiled: CompiledWorkflow, fmt: str = "mermaid") -> str:
    """The step graph: nodes labelled ``id (type)``, edges from dependency to dependent,
    branch edges labelled, nested bodies as subgraphs. A state machine (``states:``) is drawn
    as its states (final ones circled twice), a start marker, its transitions labelled with
    their condition or signal, and each state's steps as a subgraph."""
    if fmt == "mermaid":
        lines = ["flowchart TD"]
        _mermaid(compiled.scope, "", lines, "  ")
    elif fmt == "dot":
        lines = [f'digraph "{compiled.name}" {{', "  rankdir=TB;", "  node [shape=box];"]
        _dot(compiled.scope, "", lines, "  ")
        lines.append("}")
    else:
        raise ValueError(f"unknown graph format {fmt!r} (mermaid or dot)")
    return "\n".join(lines)


def _branching(step: CompiledStep) -> bool:
    """Whether the step chooses between branches: its type declares ``branches`` (as ``if``
    does), or this step gates others. Drawn as a decision, whichever plugin it comes from."""
    declares = type(step.step_type).branches is not StepType.branches
    return declares or bool(step.gated)


def _node(prefix: str, step_id: str) -> str:
    return (prefix + step_id).replace(".", "__").replace("[", "_").replace("]", "_")


def _edges(scope: Scope) -> list[tuple[str, str, str]]:
    edges = []
    for s in scope.steps:
        for d in (*s.deps, *s.any_deps):
            dep = scope.steps[d]
            label = ""
            if s.gate is not None and s.gate[0] == d:
                label = s.gate[1]
            elif s.fallback_for == d:
                label = "on failure"
            elif d in s.any_deps:
                label = "any"
            edges.append((dep.id, s.id, label))
    return edges


def _states(step: CompiledStep) -> dict[str, dict[str, Any]]:
    """A machine step's states as written (``states:`` of its workflow)."""
    states = step.definition.get("states")
    return states if isinstance(states, dict) else {}


_WRAPPED = re.compile(r"^\s*\$\{(.*)\}\s*$", re.DOTALL)


def _transition_label(t: dict[str, Any]) -> str:
    """``output.ok``, ``on approved``, ``on approved if output.ok``, or empty (always)."""
    when = t.get("when")
    if when is None or when is True:
        cond = ""
    else:
        text = str(when)
        found = _WRAPPED.match(text)
        cond = (found.group(1) if found and "${" not in found.group(1) else text).strip()
    on = t.get("on")
    if on is None:
        return cond
    return f"on {on}" + (f" if {cond}" if cond else "")


def _machine_mermaid(s: CompiledStep, prefix: str, lines: list[str], indent: str) -> None:
    node = _node(prefix, s.id)
    initial = s.definition.get("initial")

    def label(text: str) -> str:
        return text.replace('"', "#quot;").replace("|", "#124;")

    lines.append(f'{indent}{node}__start(("start"))')
    for name, state in _states(s).items():
        shape = '((("%s")))' if state.get("final") else '(["%s"])'
        lines.append(f"{indent}{node}__state_{name}{shape % label(name)}")
        body = s.bodies.get(name)
        if body is not None:
            lines.append(f'{indent}subgraph {node}__body_{name}["{label(name)}: steps"]')
            _mermaid(body, f"{prefix}{s.id}.{name}.", lines, indent + "  ")
            lines.append(f"{indent}end")
            lines.append(f"{indent}{node}__state_{name} -.-> {node}__body_{name}")
    if isinstance(initial, str):
        lines.append(f"{indent}{node}__start --> {node}__state_{initial}")
    for name, state in _states(s).items():
        for t in state.get("transitions") or ():
            text = _transition_label(t)
            arrow = f'-->|"{label(text)}"|' if text else "-->"
            lines.append(f"{indent}{node}__state_{name} {arrow} {node}__state_{t.get('to')}")


def _machine_dot(s: CompiledStep, prefix: str, lines: list[str], indent: str) -> None:
    node = _node(prefix, s.id)
    initial = s.definition.get("initial")

    def label(text: str) -> str:
        return text.replace("\\", "\\\\").replace('"', '\\"')

    lines.append(f'{indent}{node}__start [label="start", shape=point];')
    for name, state in _states(s).items():
        shape = "doublecircle" if state.get("final") else "ellipse"
        lines.append(f'{indent}{node}__state_{name} [label="{label(name)}", shape={shape}];')
        body = s.bodies.get(name)
        if body is not None:
            lines.append(f"{indent}subgraph cluster_{node}__body_{name} {{")
            lines.append(f'{indent}  label="{label(name)}: steps";')
            _dot(body, f"{prefix}{s.id}.{name}.", lines, indent + "  ")
            lines.append(f"{indent}}}")
    if isinstance(initial, str):
        lines.append(f"{indent}{node}__start -> {node}__state_{initial};")
    for name, state in _states(s).items():
        for t in state.get("transitions") or ():
            text = _transition_label(t)
            attr = f' [label="{label(text)}"]' if text else ""
            lines.append(f"{indent}{node}__state_{name} -> {node}__state_{t.get('to')}{attr};")


def _mermaid(scope: Scope, prefix: str, lines: list[str], indent: str) -> None:
    for s in scope.steps:
        if s.key == MACHINE_TYPE:
            _machine_mermaid(s, prefix, lines, indent)
            continue
        node = _node(prefix, s.id)
        shape = ('{{"%s"}}' if _branching(s) else '["%s"]') % f"{s.id} ({s.key})"
        lines.append(f"{indent}{node}{shape}")
        for label, body in s.bodies.items():
            lines.append(f'{indent}subgraph {node}__{label}["{s.id}: {label}"]')
            _mermaid(body, f"{prefix}{s.id}.{label}.", lines, indent + "  ")
            lines.append(f"{indent}end")
            lines.append(f"{indent}{node} -.-> {node}__{label}")
    for a, b, label in _edges(scope):
        arrow = f"-->|{label}|" if label else "-->"
        lines.append(f"{indent}{_node(prefix, a)} {arrow} {_node(prefix, b)}")


def _dot(scope: Scope, prefix: str, lines: list[str], indent: str) -> None:
    for s in scope.steps:
        if s.key == MACHINE_TYPE:
            _machine_dot(s, prefix, lines, indent)
            continue
        node = _node(prefix, s.id)
        shape = ", shape=diamond" if _branching(s) else ""
        lines.append(f'{indent}{node} [label="{s.id} ({s.key})"{shape}];')
        for label, body in s.bodies.items():
            lines.append(f"{indent}subgraph cluster_{node}__{label} {{")
            lines.append(f'{indent}  label="{s.id}: {label}";')
            _dot(body, f"{prefix}{s.id}.{label}.", lines, indent + "  ")
            lines.append(f"{indent}}}")
    for a, b, label in _edges(scope):
        attr = f' [label="{label}"]' if label else ""
        lines.append(f"{indent}{_node(prefix, a)} -> {_node(prefix, b)}{attr};")
