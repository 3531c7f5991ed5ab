"""MCP progress counts what the reported event says, however late the event is published."""

from __future__ import annotations

from plait.rpc.methods.mcp import progress_reporter
from plait.state.runs import Event, Run


def test_progress_counts_the_published_event_not_the_live_run() -> None:
    held: list[Event] = []
    run = Run(
        id="r1",
        workflow="w",
        version=1,
        inputs={},
        total_steps=3,
        sink=lambda _run, event: held.append(event),
    )
    sent: list[tuple[int, str]] = []
    run.listen(progress_reporter(run, lambda done, message: sent.append((done, message))))

    run.set_status("running")
    for step in ("a", "b"):  # both settle before the store commits either
        run.set_step(step, "running")
        run.settled_steps += 1
        run.set_step(step, "succeeded", {"output": 1})
    run.set_step("c", "running")
    run.set_step("c.inner", "succeeded")  # nested steps are not counted nor reported
    for event in held:
        run.publish(event)

    assert sent == [(1, "a: succeeded"), (2, "b: succeeded")]
    assert run.progress()["done"] == 2


def test_progress_never_passes_the_total() -> None:
    run = Run(id="r2", workflow="w", version=1, inputs={}, total_steps=1)
    sent: list[tuple[int, str]] = []
    run.listen(progress_reporter(run, lambda done, message: sent.append((done, message))))
    run.set_step("a", "succeeded")
    run.set_step("b", "skipped")
    assert sent == [(1, "a: succeeded"), (1, "b: skipped")]
