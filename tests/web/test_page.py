"""The web view in a real browser against a real ``plait serve``: the link, live runs, control,
a run of 1,000 steps, markup shown as text, a state machine's graph, and the debugger
(docs/debugging.md, "The web view")."""

from __future__ import annotations

import re
import time
import uuid

import pytest

from .conftest import TIMEOUT_MS, base_url, new_link, printed_link, start_run

playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect

pytestmark = pytest.mark.anyio

FINISHED = re.compile(r"^(succeeded|failed|cancelled)$")


async def open_run(page, host, run_id: str) -> None:
    """Open a run's page through a fresh one-time link, and wait for its graph."""
    await page.goto(await new_link(host, run_id))
    await expect(page.locator(".run-title .run-id")).to_have_text(run_id)
    await expect(page.locator("#connection")).to_have_text("live")


def node(page, path: str):
    return page.locator(f'.node[data-path="{path}"]')


def run_status(page):
    return page.locator('[data-role="run-status"]')


# -- getting in ---------------------------------------------------------------------------------


async def test_the_printed_link_opens_the_page_and_leaves_the_address_bar(served, page):
    link = printed_link(served)
    assert re.fullmatch(rf"http://127\.0\.0\.1:{served.port}/\?token=[\w-]{{40,}}", link), link
    await page.goto(link)
    await expect(page.locator("h1")).to_have_text("Runs")
    assert page.url == f"{base_url(served)}/"  # the 303 took the code out of the address bar
    assert "token" not in page.url
    (cookie,) = await page.context.cookies()
    assert cookie["name"] == f"plait_session_{served.port}"
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert cookie["value"] not in (served.token, link.split("token=")[1])
    await expect(page.locator("#connection")).to_have_text("live")
    # the page's script cannot read the session (HttpOnly)
    assert await page.evaluate("document.cookie") == ""
    assert page.errors == []


async def test_workflows_list_shows_versions_and_the_graph(served, page):
    await page.goto(await new_link(served))
    await page.click('a[data-nav="workflows"]')
    row = page.locator('tr[data-workflow="progress"]')
    await expect(row).to_contain_text("Two delays and two transforms.")
    await row.locator("a").click()
    detail = page.locator(".wf-detail")
    await expect(detail.locator("h2")).to_contain_text("progress")
    await expect(detail.locator(".versions li")).to_have_count(1)
    await expect(detail.locator(".versions li")).to_contain_text("current")
    await expect(detail.locator(".node")).to_have_count(4)
    # first -> double -> second -> done, and done reads double's output
    await expect(detail.locator("path.edge")).to_have_count(4)
    assert page.errors == []


# -- watching runs ------------------------------------------------------------------------------


async def test_a_new_run_appears_in_the_list_and_its_page_follows_it_live(served, page):
    await page.goto(await new_link(served))
    await expect(page.locator("#connection")).to_have_text("live")
    run_id = await start_run(served, "progress", {"x": 5})
    row = page.locator(f'tr[data-run="{run_id}"]')
    await expect(row).to_be_visible()  # no reload: the list follows every run
    await row.locator("a.run-id").click()
    await expect(page.locator(".run-title .run-id")).to_have_text(run_id)
    # the first delay runs while we watch, then the rest, each in its own colour
    await expect(node(page, "first")).to_have_class(re.compile(r"\bst-running\b"))
    await expect(node(page, "double")).to_have_class(re.compile(r"\bst-pending\b"))
    await expect(node(page, "second")).to_have_class(re.compile(r"\bst-running\b"))
    await expect(node(page, "double")).to_have_class(re.compile(r"\bst-succeeded\b"))
    await expect(run_status(page)).to_have_text("succeeded")
    for path in ("first", "double", "second", "done"):
        await expect(node(page, path)).to_have_class(re.compile(r"\bst-succeeded\b"))
    await expect(page.locator('[data-role="progress"]')).to_have_text("4/4 steps")
    # the timeline drew one bar per attempt; the event log ends with the run's end
    await expect(page.locator(".tl-row")).to_have_count(4)
    await expect(page.locator('.tl-row[data-path="first"] .bar-succeeded')).to_have_count(1)
    await page.click('[data-tab="events"]')
    await expect(page.locator("table.events tbody tr").last).to_contain_text("run.succeeded")
    # the inspector shows what a step received and gave
    await node(page, "done").locator(".nid").click()
    await expect(page.locator(".insp-path")).to_have_text("done")
    await expect(page.locator(".inspector pre.output")).to_have_text("11")
    # and the list, back there, shows the run finished
    await page.click('a[data-nav="runs"]')
    await expect(page.locator(f'tr[data-run="{run_id}"] .badge')).to_have_text("succeeded")
    assert page.errors == []


async def test_pause_resume_signal_and_cancel_through_the_page(served, page):
    run_id = await start_run(served, "gate")
    await open_run(page, served, run_id)
    await expect(node(page, "hold")).to_have_class(re.compile(r"\bst-waiting\b"))
    await expect(run_status(page)).to_have_text("waiting")
    await page.click('button[data-action="pause"]')
    await expect(run_status(page)).to_have_text("paused")
    assert (await served.call("runs/get", {"runId": run_id}))["run"]["status"] == "paused"
    await page.click('button[data-action="resume"]')
    await expect(run_status(page)).to_have_text("waiting")
    # a signal with JSON data, typed into the page
    await page.fill('input[name="event"]', "go")
    await page.fill('input[name="data"]', '{"n": 1, "who": "page"}')
    await page.click('button[data-action="signal"]')
    await expect(run_status(page)).to_have_text("succeeded")
    assert (await served.wait_run(run_id))["outputs"] == {"got": {"n": 1, "who": "page"}}
    # a signal no step waits for is refused, and the page says why
    other = await start_run(served, "gate")
    await open_run(page, served, other)
    await page.fill('input[name="event"]', "nope")
    await page.click('button[data-action="signal"]')
    await expect(page.locator(".notice.error")).to_contain_text("runs/signal")
    # cancel
    await page.click('button[data-action="cancel"]')
    await expect(run_status(page)).to_have_text("cancelled")
    await expect(page.locator('button[data-action="cancel"]')).to_be_disabled()
    assert (await served.wait_run(other))["status"] == "cancelled"


# It measures how fast the page answers: `make test` runs it with the timing tests, alone.
@pytest.mark.timing
async def test_a_run_of_1000_steps_streams_without_freezing_the_page(served, page):
    run_id = await start_run(served, "big")
    await open_run(page, served, run_id)
    await expect(page.locator(".graph .node")).to_have_count(1000)
    # while the events stream in, the page keeps answering: a click is handled at once
    lags = []
    clicks = []
    for i in (3, 517, 998):
        if await run_status(page).text_content() in ("succeeded", "failed"):
            break
        lags.append(
            await page.evaluate(
                """() => new Promise((done) => {
                    const t = performance.now();
                    setTimeout(() => done(performance.now() - t), 0);
                })"""
            )
        )
        started = time.monotonic()
        await node(page, f"s{i}").locator(".nid").click(timeout=1000)
        await expect(page.locator(".insp-path")).to_have_text(f"s{i}", timeout=1000)
        clicks.append(time.monotonic() - started)
    assert clicks, "the run ended before the page could be measured"
    assert max(clicks) < 1.0, clicks
    assert max(lags) < 500, lags  # milliseconds before a queued task runs
    await expect(run_status(page)).to_have_text("succeeded", timeout=20_000)
    await expect(page.locator('[data-role="progress"]')).to_have_text("1000/1000 steps")
    await expect(page.locator(".graph .node.st-succeeded")).to_have_count(1000)
    events = (await served.call("runs/get", {"runId": run_id, "steps": False}))["run"]
    assert events["status"] == "succeeded"
    assert page.errors == []


async def test_markup_in_outputs_and_descriptions_is_shown_as_text(served, page):
    run_id = await start_run(served, "markup")
    assert (await served.wait_run(run_id))["status"] == "succeeded"
    await open_run(page, served, run_id)
    await node(page, "evil").locator(".nid").click()
    output = page.locator(".inspector pre.output")
    await expect(output).to_contain_text("<img src=x onerror=")
    await expect(output).to_contain_text("<script>window.__pwned = 'script'</script>")
    await expect(page.locator(".inspector .facts")).to_contain_text(
        "<script>window.__pwned = 'step description'</script>"
    )
    await page.click('[data-tab="events"]')
    await expect(page.locator("table.events")).to_contain_text("<img src=x onerror=")
    await page.click('[data-tab="io"]')
    await expect(page.locator(".io")).to_contain_text("<img src=x onerror=")
    await page.goto(f"{base_url(served)}/#/workflows/markup")
    description = page.locator('tr[data-workflow="markup"] .description')
    await expect(description).to_have_text(
        "<img src=x onerror=\"window.__pwned = 'description'\"><b>bold?</b>"
    )
    await expect(page.locator(".wf-detail p.description")).to_contain_text("<b>bold?</b>")
    # nothing of it became markup, and nothing ran
    assert await page.locator("main img, main script, main b").count() == 0
    assert await page.evaluate("window.__pwned") is None
    assert page.errors == []


# -- the debugger -------------------------------------------------------------------------------


async def test_breakpoint_by_click_inspect_edit_step_and_continue(served, page):
    run_id = await start_run(served, "debugme", paused=True)
    await open_run(page, served, run_id)
    await expect(run_status(page)).to_have_text("paused")
    # a click on a step's dot sets a breakpoint before it; a second click clears it
    await node(page, "c").locator("button.bp").click()
    await expect(node(page, "c")).to_have_class(re.compile(r"\bhas-bp\b"))
    await node(page, "c").locator("button.bp").click()
    await expect(node(page, "c")).not_to_have_class(re.compile(r"\bhas-bp\b"))
    await node(page, "b").locator("button.bp").click()
    await expect(node(page, "b")).to_have_class(re.compile(r"\bhas-bp\b"))
    breakpoints = (await served.call("debug/breakpoints", {"runId": run_id}))["breakpoints"]
    assert [(b["at"], b["step"]) for b in breakpoints] == [("before", "b")]
    await page.click('button[data-action="continue"]')
    # the run stops before b: the page says so and opens b in the inspector
    await expect(page.locator(".banner")).to_contain_text("breakpoint before b")
    await expect(node(page, "a")).to_have_class(re.compile(r"\bst-succeeded\b"))
    await expect(node(page, "b")).to_have_class(re.compile(r"\bheld\b"))
    await expect(page.locator(".insp-path")).to_have_text("b")
    await expect(page.locator(".inspector")).to_contain_text("the configuration it would run with")
    # evaluate an expression in b's context
    await page.fill("input.expr", "steps.a.output.x * 100")
    await page.click('form.inline button[type="submit"] >> text=eval')
    await expect(page.locator(".eval-out")).to_have_text("100")
    # fix a's output before b reads it
    await node(page, "a").locator(".nid").click()
    await page.click('button[data-action="edit-output"]')
    await page.fill("textarea.editor", '{"x": 5}')
    await page.click('button[data-action="save-output"]')
    await expect(page.locator(".inspector pre.output")).to_contain_text('"x": 5')
    await expect(node(page, "a").locator(".nbadge")).to_contain_text("edited")
    # step: b alone runs, with the edited input, and the run pauses again
    await page.click('button[data-action="step"]')
    await expect(node(page, "b")).to_have_class(re.compile(r"\bst-succeeded\b"))
    await expect(run_status(page)).to_have_text("paused")
    await expect(node(page, "c")).to_have_class(re.compile(r"\bst-pending\b"))
    await page.click('button[data-action="continue"]')
    await expect(run_status(page)).to_have_text("succeeded")
    assert (await served.wait_run(run_id))["outputs"] == {"c": 60}
    assert page.errors == []


async def test_rerun_from_the_failed_step_then_diff_the_two_runs(served, page):
    failed = await start_run(served, "flaky", {"key": uuid.uuid4().hex})
    assert (await served.wait_run(failed))["status"] == "failed"
    await open_run(page, served, failed)
    await expect(run_status(page)).to_have_text("failed")
    await expect(page.locator(".banner")).to_contain_text("planned failure")
    await node(page, "flaky").locator(".nid").click()
    await expect(page.locator(".inspector pre.error")).to_contain_text("planned failure 1 of 1")
    await page.click('button[data-action="rerun"]')
    # the page moves to the new run, which reuses `prepare` and runs `flaky` again
    await expect(page.locator(".run-title .run-id")).not_to_have_text(failed)
    await expect(run_status(page)).to_have_text("succeeded")
    rerun_id = await page.locator(".run-title .run-id").text_content()
    await expect(page.locator(".meta")).to_contain_text("re-run of")
    await expect(node(page, "prepare")).to_have_class(re.compile(r"\bst-reused\b"))
    await expect(node(page, "flaky")).to_have_class(re.compile(r"\bst-succeeded\b"))
    # diff with the failed run: the first difference is the step that failed
    await page.fill('input[name="other"]', failed)
    await page.click('button[data-action="diff"]')
    table = page.locator(".diff-table")
    await expect(table).to_be_visible()
    await expect(page.locator(".diff")).to_contain_text("first: flaky")
    await expect(table.locator("tr.first").first).to_contain_text("flaky")
    assert rerun_id and rerun_id != failed
    assert page.errors == []


async def test_a_run_page_of_an_unknown_run_says_so(served, page):
    await page.goto(await new_link(served))
    await page.goto(f"{base_url(served)}/#/runs/{'f' * 32}")
    await expect(page.locator(".run .error")).to_contain_text("not found", timeout=TIMEOUT_MS)


MACHINE = """\
name: machine
description: Drafts until a review passes, as states.
initial: draft
max_transitions: 20
states:
  draft:
    steps:
      - {id: write, transform: {text: "v${ state.draft.visits + 1 }", ready: true}}
    output: "${ steps.write.output }"
    transitions:
      - {to: review, when: "${ output.ready }"}
  review:
    steps: [{id: check, transform: {ok: "${ state.draft.visits >= 2 }"}}]
    transitions:
      - {to: done, when: "${ output.ok }"}
      - {to: draft}
  done:
    final: true
    outputs: {text: "${ state.draft.output.text }"}
"""


async def test_a_state_machine_is_drawn_with_each_visit_of_a_state_and_its_steps(served, page):
    await served.call("workflows/put", {"source": MACHINE})
    run_id = await start_run(served, "machine")
    assert (await served.wait_run(run_id))["status"] == "succeeded"
    await open_run(page, served, run_id)
    await expect(run_status(page)).to_have_text("succeeded")
    machine = node(page, "machine")
    await expect(machine).to_have_count(1)
    await machine.locator("button.toggle").click()
    chips = page.locator('[aria-label="visits of states of machine"] .chip')
    # each visit of a state that ran steps (the final state runs none)
    await expect(chips).to_have_text(["0:draft", "1:review", "2:draft", "3:review"])
    await chips.nth(3).click()
    check = node(page, "machine[3:review].check")
    await expect(check).to_have_class(re.compile("st-succeeded"))
    await chips.nth(2).click()
    await expect(node(page, "machine[2:draft].write")).to_have_count(1)
    assert page.errors == []
