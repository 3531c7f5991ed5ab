"""The JSON Schema of workflow files, built from the step types actually installed."""

from __future__ import annotations

from typing import Any

from plait.definition.compiler import MACHINE_TYPE
from plait.definition.models import WorkflowDef
from plait.plugins.docstrings import to_markdown
from plait.plugins.registry import Registry
from plait.plugins.types import StepType

__all__ = ["workflow_schema"]

_COMMON = {
    "id": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
    "type": {"type": "string"},
    "needs": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    "needs_any": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    "when": {"description": "guard expression: the step is skipped when false"},
    "retry": {"$ref": "#/$defs/RetryPolicy"},
    "timeout": {"type": "number", "exclusiveMinimum": 0},
    "on_error": {"type": "string", "description": "fail, continue, or a fallback step id"},
    "cache": {"oneOf": [{"type": "boolean"}, {"$ref": "#/$defs/CachePolicy"}]},
    "description": {"type": "string"},
}


TEMPLATE = {
    "type": "string",
    "pattern": r"\$\{|\{\{|\{%|\$[A-Za-z_]",
    "description": "a template, checked against the field's type once rendered",
}
"""Any step field may hold a template instead of a value of its type."""


def _or_template(prop: dict[str, Any]) -> dict[str, Any]:
    if prop.get("type") == "string" or not prop:
        return prop
    return {"anyOf": [prop, TEMPLATE]}


def workflow_schema(step_types: Registry[type[StepType]]) -> dict[str, Any]:
    """JSON Schema (2020-12) for workflow files, one step variant per installed step type."""
    schema = WorkflowDef.model_json_schema(mode="validation")
    defs = schema.setdefault("$defs", {})
    variants = []
    for key in step_types.names():
        if key == MACHINE_TYPE:
            continue  # written as the workflow's `states:`, never as a step
        cls = step_types[key]
        config = cls.Config.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
        defs.update(config.pop("$defs", {}))
        props = {**_COMMON, **{k: _or_template(v) for k, v in config.get("properties", {}).items()}}
        variants.append(
            {
                "title": f"{key} step",
                "description": cls.description or _summary(cls.__doc__),
                "type": "object",
                "properties": props,
                # The type key may be left out when `type:` names the step type instead.
                "required": sorted({"id", *config.get("required", ())} - {key}),
                "anyOf": [
                    {"required": [key]},
                    {"required": ["type"], "properties": {"type": {"const": key}}},
                ],
                "additionalProperties": False,
            }
        )
    schema["properties"]["steps"] = {"type": "array", "minItems": 1, "items": {"oneOf": variants}}
    if "StateDef" in defs:  # a state's steps are steps like the workflow's
        defs["StateDef"]["properties"]["steps"] = {
            "type": "array",
            "items": {"$ref": "#/properties/steps/items"},
        }
    # A graph of steps, or a state machine: one of the two.
    schema["anyOf"] = [{"required": ["steps"]}, {"required": ["states"]}]
    schema["not"] = {"required": ["steps", "states"]}
    defs.pop("StepDef", None)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "plait workflow"
    _plain_descriptions(schema)
    return schema


def _plain_descriptions(node: Any) -> None:
    """Descriptions come from docstrings written in reStructuredText; editors show Markdown."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                node[key] = to_markdown(value)
            else:
                _plain_descriptions(value)
    elif isinstance(node, list):
        for item in node:
            _plain_descriptions(item)


def _summary(doc: str | None) -> str:
    """A docstring's first line: what an editor shows beside a step type."""
    return (doc or "").strip().split("\n")[0]
