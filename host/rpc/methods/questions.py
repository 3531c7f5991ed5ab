"""Questions of ``input`` steps put to an MCP client, as elicitation requests.

One shape for every way MCP asks: ``elicitation/create`` sent by the host (2025-11-25), an
``inputRequests`` entry of an "input required" result (2026-07-28) or of an ``input_required``
task. A form can show an object of plain fields; any other answer schema is asked as one
field, ``answer``, and unwrapped when the answer comes back.
"""

from __future__ import annotations

from typing import Any

__all__ = ["answer_of", "asks_mcp", "elicitation_request", "form_schema"]

_PLAIN = ("string", "number", "integer", "boolean")


def asks_mcp(question: dict[str, Any]) -> bool:
    """Whether an MCP client may answer the question (its step's ``answerers``)."""
    return "mcp" in (question.get("answerers") or ())


def form_schema(schema: Any) -> dict[str, Any]:
    """The elicitation form of an answer schema: the schema itself when it is an object of
    plain fields, else one field ``answer`` holding the whole answer."""
    if isinstance(schema, dict) and schema.get("type") == "object":
        props = schema.get("properties")
        if isinstance(props, dict) and all(
            isinstance(v, dict) and v.get("type") in _PLAIN for v in props.values()
        ):
            return schema
    inner = schema if isinstance(schema, dict) and schema else {"type": "string"}
    return {"type": "object", "properties": {"answer": inner}, "required": ["answer"]}


def answer_of(question: dict[str, Any], content: Any) -> Any:
    """The answer an elicitation's content carries (see :func:`form_schema`)."""
    if form_schema(question.get("schema")) is question.get("schema"):
        return content
    return content.get("answer") if isinstance(content, dict) else content


def elicitation_request(question: dict[str, Any], refused: str | None = None) -> dict[str, Any]:
    """The ``elicitation/create`` request (form mode) asking ``question``; ``refused``: why
    the last answer was not taken, told with the question asked again."""
    message = question.get("message") or f"step {question['step']} asks"
    if refused:
        message = f"{message}\n(The last answer was refused: {refused})"
    return {
        "method": "elicitation/create",
        "params": {
            "mode": "form",
            "message": message,
            "requestedSchema": form_schema(question.get("schema")),
        },
    }
