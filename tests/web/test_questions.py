"""The web view answers input steps: a form made from the answer's schema, sent with
``runs/respond`` through the ``web`` channel, and the host's refusals shown beside the form
(docs/debugging.md, "The web view")."""

from __future__ import annotations

import pytest

from .conftest import new_link, start_run

playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

ASKS = """\
name: asks
description: Asks for a release decision, then for a list of tags.
steps:
  - id: decide
    input: "Ship version ${inputs.version}?"
    schema:
      type: object
      required: [ok, count, channel]
      properties:
        ok: {type: boolean}
        count: {type: integer, minimum: 1}
        note: {type: string}
        channel: {enum: [stable, beta]}
  - id: tags
    input: "Which tags?"
    schema: {type: array, items: {type: string}, minItems: 1}
    needs: [decide]
  - id: api_only
    input: "Not for the page"
    answerers: [api]
    needs: [tags]
inputs:
  type: object
  properties: {version: {type: string, default: "2.0"}}
outputs:
  decision: "${steps.decide.output}"
  tags: "${steps.tags.output}"
  last: "${steps.api_only.output}"
"""


def question(page, step: str):
    return page.locator(f'form.question[data-step="{step}"]')


def run_status(page):
    return page.locator('[data-role="run-status"]')


async def test_a_form_from_the_schema_answers_and_shows_what_the_host_refuses(served, page):
    await served.call("workflows/put", {"source": ASKS})
    run_id = await start_run(served, "asks")
    await page.goto(await new_link(served, run_id))
    await expect(page.locator(".run-title .run-id")).to_have_text(run_id)
    form = question(page, "decide")
    await expect(form.locator(".question-message")).to_have_text("Ship version 2.0?")
    # one field per property: a checkbox, a number, a text field, a select
    await expect(form.locator('input[type="checkbox"][name="ok"]')).to_have_count(1)
    await expect(form.locator('input[type="number"][name="count"]')).to_have_count(1)
    await expect(form.locator('input[type="text"][name="note"]')).to_have_count(1)
    await expect(form.locator('select[name="channel"] option')).to_have_text(["stable", "beta"])
    # an answer the schema refuses: the host's problems appear beside the form
    await form.locator('input[name="count"]').fill("0")
    await form.locator('button[data-action="respond"]').click()
    problems = form.locator('[data-role="question-error"]')
    await expect(problems).to_contain_text("$.count: 0 is less than the minimum of 1")
    await expect(problems).to_contain_text("(-32602)")
    assert (await served.call("runs/get", {"runId": run_id}))["run"]["status"] == "waiting"
    # corrected, it is taken; the next question is a JSON text area (an array schema)
    await form.locator('input[name="count"]').fill("2")
    await form.locator('input[name="ok"]').check()
    await form.locator('select[name="channel"]').select_option(label="beta")
    await form.locator('input[name="by"]').fill("page user")
    await form.locator('button[data-action="respond"]').click()
    tags = question(page, "tags")
    await expect(tags.locator('textarea[name="answer"]')).to_have_count(1)
    await expect(question(page, "decide")).to_have_count(0)
    await tags.locator("textarea").fill("[]")
    await tags.locator('button[data-action="respond"]').click()
    await expect(tags.locator('[data-role="question-error"]')).to_contain_text(
        "$: [] should be non-empty"
    )
    await tags.locator("textarea").fill('["a", "b"]')
    await tags.locator('button[data-action="respond"]').click()
    # a question the web may not answer gets no form
    await expect(page.locator(".banner")).to_contain_text("Waiting for input: api_only")
    await expect(page.locator("form.question")).to_have_count(0)
    run = (await served.call("runs/get", {"runId": run_id}))["run"]
    assert [q["step"] for q in run["questions"]] == ["api_only"]
    await served.call("runs/respond", {"runId": run_id, "step": "api_only", "answer": None})
    await expect(run_status(page)).to_have_text("succeeded")
    done = await served.wait_run(run_id)
    assert done["outputs"] == {
        "decision": {"ok": True, "count": 2, "channel": "beta"},
        "tags": ["a", "b"],
        "last": None,
    }
    events = (await served.call("runs/events", {"runId": run_id}))["events"]
    answered = [(e["step"], e["data"]) for e in events if e["type"] == "input.answered"]
    assert answered == [
        ("decide", {"by": "page user", "channel": "web"}),
        ("tags", {"by": None, "channel": "web"}),
        ("api_only", {"by": None, "channel": "api"}),
    ]
    assert page.errors == []
