"""Drawing a compiled workflow's step graph as Mermaid or Graphviz dot."""

from __future__ import annotations

from plait.definition.compiler import CompiledStep, CompiledWorkflow, Scope
from plait.plugins.types import StepType

__all__ = ["render_graph"]


def render_graph(compiled: CompiledWorkflow, fmt: str = "mermaid") -> str:
    """The step graph: nodes labelled ``id (type)``, edges from dependency to dependent,
    branch edges labelled, nested bodies as subgraphs."""
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


def _mermaid(scope: Scope, prefix: str, lines: list[str], indent: str) -> None:
    for s in scope.steps:
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
