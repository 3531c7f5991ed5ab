"""A fluent builder that produces the same :class:`WorkflowDef` a YAML file does."""

from __future__ import annotations

from typing import Any

from plait.definition.loader import load
from plait.definition.models import WorkflowDef

__all__ = ["Workflow"]

_JSON_TYPES: dict[type, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
}


class Workflow:
    """Build a workflow in Python.

    Example::

        wf = (plait.Workflow("hello")
              .input("name", str)
              .tool("greet", "hello.greet", name="${inputs.name}")
              .transform("shout", "${steps.greet.output | upper}")
              .output("text", "${steps.shout.output}")
              .build())
    """

    def __init__(self, name: str, *, description: str = "") -> None:
        self._data: dict[str, Any] = {
            "name": name,
            "description": description,
            "inputs": {"type": "object", "properties": {}, "required": []},
            "steps": [],
            "outputs": {},
        }

    def input(
        self,
        name: str,
        type: type | str | dict[str, Any] = str,
        *,
        required: bool = True,
        default: Any = None,
        description: str = "",
    ) -> Workflow:
        """Declare an input; ``type`` is a Python type, a JSON type name or a schema."""
        if isinstance(type, dict):
            schema = dict(type)
        else:
            schema = {"type": type if isinstance(type, str) else _JSON_TYPES.get(type, "string")}
        if description:
            schema["description"] = description
        if default is not None:
            schema["default"] = default
            required = False
        self._data["inputs"]["properties"][name] = schema
        if required:
            self._data["inputs"]["required"].append(name)
        return self

    def step(self, id: str, **fields: Any) -> Workflow:
        """Add a step of any type; fields are as in YAML (``with_`` for ``with``, ``if_`` for
        ``if``: a trailing underscore is dropped)."""
        self._data["steps"].append({"id": id, **{k.rstrip("_"): v for k, v in fields.items()}})
        return self

    def tool(
        self, id: str, tool: str, /, _step: dict[str, Any] | None = None, **args: Any
    ) -> Workflow:
        """A ``tool`` step; keyword arguments are the tool's arguments (``with``)."""
        return self.step(id, tool=tool, with_=args, **(_step or {}))

    def agent(self, id: str, agent: str, prompt: str, **fields: Any) -> Workflow:
        """An ``agent`` step."""
        return self.step(id, agent=agent, prompt=prompt, **fields)

    def transform(self, id: str, value: Any, **fields: Any) -> Workflow:
        """A ``transform`` step."""
        return self.step(id, transform=value, **fields)

    def condition(
        self,
        id: str,
        expression: str,
        then: list[str] | None = None,
        else_: list[str] | None = None,
        **fields: Any,
    ) -> Workflow:
        """An ``if`` step gating ``then`` and ``else`` steps."""
        return self.step(id, if_=expression, then=then or [], else_=else_ or [], **fields)

    def output(self, name: str, value: Any) -> Workflow:
        """Add an output (a template over steps and inputs)."""
        self._data["outputs"][name] = value
        return self

    def defaults(self, **values: Any) -> Workflow:
        """Set ``defaults`` (retry, timeout, on_error)."""
        self._data["defaults"] = values
        return self

    def build(self) -> WorkflowDef:
        """Validate and return the model; raises ``DefinitionError`` like loading a file."""
        data = dict(self._data)
        if not data["inputs"]["required"]:
            data["inputs"] = {k: v for k, v in data["inputs"].items() if k != "required"}
        return load(data)
