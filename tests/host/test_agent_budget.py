"""Per-agent budgets: requests and tokens per minute as buckets that refill continuously."""

from __future__ import annotations

import pytest

from plait.plugins import AgentRequest, Message, ToolCall
from plait.services.agents import Budget, estimate_tokens


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_full_budget_lets_a_burst_through_then_paces_it():
    clock = Clock()
    budget = Budget(requests_per_minute=60, tokens_per_minute=None, clock=clock)
    for _ in range(60):
        assert budget.wait(0) == (0.0, None)
        budget.take(0)
    seconds, limit = budget.wait(0)
    assert limit == "requests_per_minute" and seconds == pytest.approx(1.0)
    clock.now += 0.5
    assert budget.wait(0)[0] == pytest.approx(0.5)
    clock.now += 0.5
    assert budget.wait(0) == (0.0, None)


def test_tokens_wait_for_what_the_estimate_needs_and_usage_corrects_it():
    clock = Clock()
    budget = Budget(requests_per_minute=None, tokens_per_minute=6000, clock=clock)  # 100/s
    budget.take(5000)
    seconds, limit = budget.wait(2000)
    assert limit == "tokens_per_minute" and seconds == pytest.approx(10.0)
    budget.correct(-1000)  # the call used 1,000 fewer than estimated: given back
    assert budget.wait(2000)[0] == 0.0
    budget.take(2000)
    budget.correct(3000)  # it used 3,000 more than estimated: charged
    assert budget.wait(100)[0] == pytest.approx((100 + 3000) / 100)


def test_a_request_larger_than_the_whole_budget_waits_for_a_full_bucket_not_forever():
    clock = Clock()
    budget = Budget(requests_per_minute=None, tokens_per_minute=600, clock=clock)
    assert budget.wait(10_000) == (0.0, None)
    budget.take(10_000)
    seconds, _ = budget.wait(10_000)
    assert seconds == pytest.approx(60.0)


def test_the_longer_of_the_two_limits_decides():
    clock = Clock()
    budget = Budget(requests_per_minute=60, tokens_per_minute=60, clock=clock)
    budget.take(60)
    assert budget.wait(30) == (pytest.approx(30.0), "tokens_per_minute")


def test_buckets_never_refill_past_a_minute_of_budget():
    clock = Clock()
    budget = Budget(requests_per_minute=10, tokens_per_minute=None, clock=clock)
    clock.now += 3600
    for _ in range(10):
        budget.take(0)
    assert budget.wait(0)[0] > 0


def test_estimates_count_the_conversation_the_tools_and_the_answer():
    request = AgentRequest(
        messages=[
            Message(role="user", content="x" * 400),
            Message(role="assistant", tool_calls=[ToolCall("c1", "t", {"q": "y" * 100})]),
        ],
        tools=[{"name": "t", "description": "d", "input_schema": {"type": "object"}}],
    )
    tokens = estimate_tokens(request, answer=256)
    assert 100 + 25 + 256 <= tokens <= 100 + 25 + 256 + 40
