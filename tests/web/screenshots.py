"""Screenshots of the web view for the docs, from a real host and a real browser.

    .venv/bin/python tests/web/screenshots.py [OUT_DIR]

starts ``plait serve`` (``tests/e2e/host_process.py``) with a few workflows, runs them into the
states worth showing (succeeded, failed, waiting, paused at a breakpoint), and writes
``web-runs.png`` (the runs list), ``web-run.png`` (a run's graph and timeline),
``web-inspector.png`` (the step inspector at a breakpoint) and ``web-agent.png`` (an agent
step's conversation) to OUT_DIR (default ``docs/images``). Not a test: pytest does not
collect it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.e2e.host_process import HostProcess  # noqa: E402
from tests.web.conftest import CHROMIUM, WORKFLOWS  # noqa: E402

DEMO = """\
name: demo
description: Fetch a list, process each item, aggregate two ways, and summarise.
inputs:
  type: object
  properties: {items: {type: array, default: [3, 1, 4, 1, 5, 9]}}
steps:
  - id: fetch
    tool: chaos.fail
    with: {key: "fetch-${run.id}", times: 2, value: "${inputs.items}"}
    retry: {attempts: 3, backoff: fixed, base: 0.3}
  - id: each
    loop: "${steps.fetch.output}"
    concurrency: 3
    steps:
      - {id: wait, delay: "${0.2 + item / 20}"}
      - {id: square, transform: "${item * item}", needs: [wait]}
    output: "${steps.square.output}"
  - id: stats
    parallel:
      total: [{id: sum, tool: math.sum, with: {values: "${steps.each.output}"}}]
      largest: [{id: max, transform: "${steps.each.output | max}"}]
  - id: report
    tool: text.stats
    with: {text: "total ${steps.stats.output.total}, largest ${steps.stats.output.largest}"}
    cache: true
outputs:
  total: "${steps.stats.output.total}"
"""

CONFIG = """
[agents.reviewer]
provider = "scripted"
script = [
  { call = "text.stats", args = { text = "name: review steps: files review verdict" } },
  { say = "The workflow reads well: {last}." },
  { json = { score = 0.9, text = "Approve: small, well-named steps." } },
]
"""

AGENT = """\
name: review
description: An agent that calls a tool, then gives a verdict.
steps:
  - id: review
    agent: reviewer
    conversation: review
    system: You review workflow files.
    prompt: "Review the workflow 'demo'."
    tools: [text.stats]
  - id: verdict
    agent: reviewer
    conversation: review
    needs: [review]
    prompt: Summarise your review as JSON with a score and a text.
    output_schema: {type: object, properties: {score: {type: number}, text: {type: string}}}
"""


async def main(out: Path) -> None:
    from playwright.async_api import async_playwright, expect

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        host = HostProcess(
            Path(tmp),
            workflows={**WORKFLOWS, "demo": DEMO, "review": AGENT},
            config=CONFIG,
        )
        host.start()
        try:

            async def start(workflow: str, inputs: dict[str, Any] | None = None, **extra: Any):
                params = {"workflow": workflow, "inputs": inputs or {}, **extra}
                return (await host.call("runs/start", params))["runId"]

            async def link(run_id: str | None = None) -> str:
                return (await host.call("host/link", {"runId": run_id} if run_id else {}))["url"]

            # runs in every state worth a look
            for workflow, inputs in (("progress", {"x": 2}), ("flaky", {"key": "shot"})):
                await host.wait_run(await start(workflow, inputs))
            await host.wait_run(await start("review"))
            agent_run = (await host.call("runs/list", {"workflow": "review"}))["runs"][0]["id"]
            await start("gate")
            paused = await start("debugme", paused=True)
            await host.call("debug/break", {"runId": paused, "at": "before", "step": "b"})
            demo = await start("demo")

            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM)
                page = await browser.new_page(viewport={"width": 1440, "height": 1000})
                page.set_default_timeout(15_000)

                await page.goto(await link(demo))
                await expect(page.locator(".run-title .run-id")).to_have_text(demo)
                await page.click('.node[data-path="each"] .toggle')
                await page.click('.node[data-path="stats"] .toggle')
                await expect(page.locator('[data-role="run-status"]')).to_have_text("succeeded")
                await page.click('.node[data-path="fetch"] .nid')
                await page.mouse.move(0, 0)
                await page.evaluate("document.getElementById('notices').replaceChildren()")
                await page.screenshot(path=str(out / "web-run.png"), full_page=True)

                await page.goto(await link(paused))
                await page.click('button[data-action="continue"]')
                await expect(page.locator(".banner")).to_contain_text("breakpoint before b")
                await expect(page.locator(".insp-path")).to_have_text("b")
                await expect(page.locator(".inspector")).to_contain_text("would run with")
                await page.fill("input.expr", "steps.a.output.x + 41")
                await page.click("form.inline button[type=submit] >> text=eval")
                await expect(page.locator(".eval-out")).to_have_text("42")
                await page.locator(
                    ".insp-section h3", has_text="would run with"
                ).scroll_into_view_if_needed()
                await page.mouse.move(0, 0)
                await page.evaluate("document.getElementById('notices').replaceChildren()")
                await page.screenshot(path=str(out / "web-inspector.png"), full_page=True)

                await page.goto(await link(agent_run))
                await page.click('.node[data-path="review"] .nid')
                await page.locator(".conversation").scroll_into_view_if_needed()
                await expect(page.locator(".conversation")).to_be_visible()
                await page.mouse.move(0, 0)
                await page.evaluate("document.getElementById('notices').replaceChildren()")
                await page.screenshot(path=str(out / "web-agent.png"), full_page=True)

                await page.goto(await link())
                await expect(page.locator(f'tr[data-run="{paused}"]')).to_be_visible()
                await page.mouse.move(0, 0)
                await page.evaluate("document.getElementById('notices').replaceChildren()")
                await page.screenshot(
                    path=str(out / "web-runs.png"),
                    clip={"x": 0, "y": 0, "width": 1440, "height": 420},
                )
                await browser.close()
        finally:
            host.stop()
    for name in ("web-runs.png", "web-run.png", "web-inspector.png", "web-agent.png"):
        print(out / name)


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "images")
