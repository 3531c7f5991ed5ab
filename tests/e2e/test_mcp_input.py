"""Human input through MCP, with the official SDK client against a real ``plait serve
--stdio``: an ``input`` step's question goes to the client that called the workflow, as an
"input required" result under 2026-07-28 (the SDK answers it with its elicitation callback and
retries the call) or as ``elicitation/create`` under 2025-11-25, and the answer, checked
against the step's schema, is recorded with who gave it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp_types import ElicitResult

from .mcp_helpers import sdk_client, stdio_command, write_workflows

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

ASK = """\
name: ask
description: Ask a person whether to ship.
steps:
  - id: approve
    input: "Ship version 2?"
    schema:
      type: object
      required: [ok]
      properties: {ok: {type: boolean}, note: {type: string}}
outputs: {ok: "${steps.approve.output.ok}", note: "${steps.approve.output.note}"}
"""


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    folder = write_workflows(tmp_path / "wf")
    (folder / "ask.yaml").write_text(ASK, encoding="utf-8")
    return tmp_path


def answering(answer: dict[str, Any], asked: list[Any]):
    async def elicit(context: Any, params: Any) -> ElicitResult:
        asked.append(params)
        return ElicitResult(action="accept", content=answer)

    return elicit


@pytest.mark.parametrize("mode", ["2026-07-28", "legacy"])
async def test_the_calling_client_answers_the_question_of_an_input_step(tmp, mode):
    asked: list[Any] = []
    callback = answering({"ok": True, "note": "go"}, asked)
    with anyio.fail_after(30):
        async with sdk_client(
            stdio_command(tmp), tmp, mode=mode, elicitation_callback=callback
        ) as client:
            result = await client.call_tool("workflow.ask", {})
    assert result.is_error is False, result
    assert result.structured_content == {"ok": True, "note": "go"}
    assert len(asked) == 1
    assert asked[0].message == "Ship version 2?"
    assert asked[0].requested_schema["required"] == ["ok"]


async def test_a_wrong_answer_leaves_the_question_open_and_a_right_one_ends_it(tmp):
    asked: list[Any] = []
    answers = iter([{"note": "no ok given"}, {"ok": False, "note": "later"}])

    async def elicit(context: Any, params: Any) -> ElicitResult:
        asked.append(params)
        return ElicitResult(action="accept", content=next(answers))

    with anyio.fail_after(30):
        async with sdk_client(
            stdio_command(tmp), tmp, mode="2026-07-28", elicitation_callback=elicit
        ) as client:
            result = await client.call_tool("workflow.ask", {})
    assert result.structured_content == {"ok": False, "note": "later"}
    assert len(asked) == 2  # the wrong answer was refused and the question asked again
    assert "The last answer was refused" in asked[1].message and "ok" in asked[1].message
