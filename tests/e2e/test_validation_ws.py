"""`workflows/validate` over a real WebSocket: every problem comes back at once, with paths."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.anyio

BROKEN = """\
name: broken
bogus: 1
steps:
  - id: fetch
    tool: math.sm
  - id: add
    tool: math.sum
    with: {values: [1, [2]], extra: 1}
    timeout: -1
outputs:
  total: ${steps.ad.output}
"""


async def test_validate_reports_every_problem_at_once(client):
    verdict = await client.call("workflows/validate", {"source": BROKEN})
    assert verdict["valid"] is False
    errors = {(e["path"], e.get("line")): e["message"] for e in verdict["errors"]}
    assert set(errors) == {
        ("bogus", 2),
        ("steps[0].tool", 5),
        ("steps[1].with", 8),
        ("steps[1].with.values[1]", 8),
        ("steps[1].timeout", 9),
        ("outputs", 10),
    }
    assert "did you mean 'math.sum'?" in errors[("steps[0].tool", 5)]
    assert "'extra' was unexpected" in errors[("steps[1].with", 8)]
    assert "did you mean 'add'?" in errors[("outputs", 10)]


async def test_validate_refuses_an_unconfigured_agent_and_accepts_a_valid_workflow(client):
    definition = {
        "name": "w",
        "steps": [
            {"id": "ask", "agent": "reviewer", "prompt": "hi", "tools": ["math.sum"]},
            {"id": "sum", "tool": "math.sum", "with": {"values": [1, 2]}},
        ],
    }
    verdict = await client.call("workflows/validate", {"definition": definition})
    assert verdict["valid"] is False
    [problem] = verdict["errors"]
    assert problem["path"] == "steps[0].agent"
    assert "unknown agent 'reviewer'" in problem["message"]
    definition["steps"] = definition["steps"][1:]
    assert (await client.call("workflows/validate", {"definition": definition}))["valid"]
