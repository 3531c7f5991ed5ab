"""Circuit breakers (``plait.services.breakers``): the state machine on an injected clock, the
consecutive and rate rules, half-open probes racing, and the breakers of tools, agents and MCP
server tables as the host builds them."""

from __future__ import annotations

import types

import anyio
import pytest

import plait
from plait.config import BreakerSettings, HostConfig, ToolSettings, load_config
from plait.errors import AgentFailed, CircuitOpen, ConfigError, ToolFailed
from plait.plugins import create_plugin_manager
from plait.plugins.registry import Registry
from plait.services.agents import AgentPool
from plait.services.breakers import (
    Breakers,
    CircuitBreaker,
    breaker_settings,
    counts_as_failure,
    reporting,
)
from plait.services.cache import ToolCache
from plait.services.mcp import parse_servers
from plait.services.tools import ToolRunner

pytestmark = pytest.mark.anyio

EPOCH = 1_700_000_000.0


class Clock:
    """A monotonic clock the test moves, and the wall clock that goes with it."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now


def breaker(clock: Clock, **settings) -> CircuitBreaker:
    return CircuitBreaker("tool:t", BreakerSettings(**settings), clock=clock, wall=clock.wall)


class Recorder:
    """A reporter: what a run would record."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    async def __call__(self, type: str, data: dict) -> None:
        self.events.append((type, data))

    @property
    def types(self) -> list[str]:
        return [t for t, _ in self.events]


async def ok() -> str:
    return "ok"


async def boom() -> str:
    raise ToolFailed("t", "the service is down")


async def fail(b: CircuitBreaker, report=None) -> None:
    with pytest.raises(ToolFailed):
        await b.call(boom, report=report)


# -- the state machine ---------------------------------------------------------------------


async def test_consecutive_failures_open_it_and_a_success_starts_the_count_again():
    clock = Clock()
    b = breaker(clock, failures=3, reset_after=10)
    await fail(b)
    await fail(b)
    assert await b.call(ok) == "ok"  # two in a row, then a success: back to 0
    assert b.info() == {"state": "closed", "failures": 0, "retry_at": None}
    await fail(b)
    await fail(b)
    assert b.state == "closed" and b.failures == 2
    seen = Recorder()
    await fail(b, seen)
    assert b.info() == {"state": "open", "failures": 3, "retry_at": EPOCH + 110.0}
    assert seen.events == [
        (
            "breaker.opened",
            {"breaker": "tool:t", "state": "open", "failures": 3, "retry_at": EPOCH + 110.0},
        )
    ]


async def test_an_open_breaker_refuses_at_once_saying_when_it_tries_again():
    clock = Clock()
    b = breaker(clock, failures=1, reset_after=30)
    await fail(b)
    called = []

    async def service() -> str:
        called.append(1)
        return "ok"

    clock.now += 29.9
    with pytest.raises(CircuitOpen) as caught:
        await b.call(service)
    assert called == []
    err = caught.value
    assert err.breaker == "tool:t" and err.retry_at == EPOCH + 130.0
    assert err.kind == "circuit_open" and err.retryable
    assert "circuit breaker 'tool:t' is open after 1 failure" in str(err)
    assert "2023-11-14T22:15:30.000Z" in str(err)  # EPOCH + 130, in UTC
    assert err.to_dict() == {
        "type": "circuit_open",
        "message": str(err),
        "breaker": "tool:t",
        "retry_at": EPOCH + 130.0,
    }
    assert isinstance(err, plait.CircuitOpen) and isinstance(err, plait.RunError)


async def test_after_reset_a_probe_that_succeeds_closes_it():
    clock = Clock()
    b = breaker(clock, failures=2, reset_after=5)
    await fail(b)
    await fail(b)
    clock.now += 5
    seen = Recorder()
    assert await b.call(ok, report=seen) == "ok"
    assert seen.types == ["breaker.half_open", "breaker.closed"]
    assert seen.events[0][1] == {
        "breaker": "tool:t",
        "state": "half_open",
        "failures": 2,
        "retry_at": None,
    }
    assert b.info() == {"state": "closed", "failures": 0, "retry_at": None}
    await fail(b)  # counting starts again from nothing
    assert b.state == "closed"


async def test_after_reset_a_probe_that_fails_opens_it_again_for_another_period():
    clock = Clock()
    b = breaker(clock, failures=2, reset_after=5)
    await fail(b)
    await fail(b)
    clock.now += 6
    seen = Recorder()
    await fail(b, seen)
    assert seen.types == ["breaker.half_open", "breaker.opened"]
    assert b.info() == {"state": "open", "failures": 3, "retry_at": EPOCH + 111.0}
    clock.now += 4.9
    with pytest.raises(CircuitOpen):
        await b.call(ok)
    clock.now += 0.1
    assert await b.call(ok) == "ok"
    assert b.state == "closed"


async def test_failure_rate_over_a_sliding_window_with_min_calls():
    clock = Clock()
    b = breaker(clock, failure_rate=0.5, min_calls=4, window=10, reset_after=5)
    assert b.settings.failures is None  # a rate rule alone: no consecutive rule added
    await fail(b)
    await fail(b)
    await fail(b)
    assert b.state == "closed"  # 3 of 3 failed, but fewer than min_calls
    clock.now += 11  # those leave the window
    for _ in range(3):
        await b.call(ok)
    await fail(b)  # 1 of 4
    assert b.state == "closed"
    clock.now += 1
    seen = Recorder()
    await fail(b, seen)  # 2 of 5: 40%
    assert b.state == "closed" and seen.events == []
    await fail(b, seen)  # 3 of 6: 50%
    assert b.state == "open" and seen.types == ["breaker.opened"]


async def test_both_rules_at_once_whichever_trips_first():
    clock = Clock()
    b = breaker(clock, failures=3, failure_rate=0.9, min_calls=20, window=60)
    for _ in range(3):
        await fail(b)
    assert b.state == "open"


async def test_errors_the_caller_caused_refusals_and_cancellation_do_not_count():
    clock = Clock()
    b = breaker(clock, failures=1, reset_after=5)

    async def bad_arguments() -> None:
        raise ToolFailed("t", "invalid arguments: x is required", retryable=False)

    async def refused() -> None:
        raise CircuitOpen("mcp:s", EPOCH)

    for call in (bad_arguments, refused):
        with pytest.raises((ToolFailed, CircuitOpen)):
            await b.call(call)
    with anyio.move_on_after(0.01):
        await b.call(anyio.sleep, 5)
    assert b.info() == {"state": "closed", "failures": 0, "retry_at": None}
    assert counts_as_failure(AgentFailed("a", "502"))
    assert counts_as_failure(RuntimeError("a plugin's own"))
    assert not counts_as_failure(AgentFailed("a", "401", retryable=False))
    # In half-open, such an outcome proves nothing: the breaker stays half-open, probe freed.
    await fail(b)
    clock.now += 5
    with pytest.raises(ToolFailed):
        await b.call(bad_arguments)
    assert b.state == "half_open"
    assert await b.call(ok) == "ok"
    assert b.state == "closed"


async def test_two_calls_racing_in_half_open_one_probe_goes_the_other_is_refused():
    clock = Clock()
    b = breaker(clock, failures=1, reset_after=5, half_open_calls=1)
    await fail(b)
    clock.now += 5
    release = anyio.Event()
    outcomes: dict[str, object] = {}

    async def probe() -> str:
        await release.wait()
        return "probed"

    async def first() -> None:
        outcomes["first"] = await b.call(probe)

    async def second() -> None:
        try:
            outcomes["second"] = await b.call(ok)
        except CircuitOpen as exc:
            outcomes["second"] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await anyio.wait_all_tasks_blocked()
        assert b.state == "half_open"
        tg.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        refused = outcomes["second"]
        assert isinstance(refused, CircuitOpen)
        assert refused.retry_at == clock.wall() + 5  # told to come back a period later
        release.set()
    assert outcomes["first"] == "probed"
    assert b.state == "closed"
    assert await b.call(ok) == "ok"


async def test_two_probes_allowed_the_first_failure_reopens_and_a_late_success_is_old_news():
    clock = Clock()
    b = breaker(clock, failures=1, reset_after=5, half_open_calls=2)
    await fail(b)
    clock.now += 5
    go_fail, go_ok = anyio.Event(), anyio.Event()
    results: list[object] = []

    async def slow_fail() -> None:
        await go_fail.wait()
        raise ToolFailed("t", "still down")

    async def slow_ok() -> str:
        await go_ok.wait()
        return "ok"

    async def run(fn) -> None:
        try:
            results.append(await b.call(fn))
        except Exception as exc:  # noqa: BLE001
            results.append(type(exc).__name__)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, slow_fail)
        tg.start_soon(run, slow_ok)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(CircuitOpen):  # both probe slots are taken
            await b.call(ok)
        go_fail.set()
        await anyio.wait_all_tasks_blocked()
        assert b.state == "open"
        go_ok.set()
    assert sorted(map(str, results)) == ["ToolFailed", "ok"]
    assert b.state == "open"  # the late success was let through before it reopened


async def test_a_change_goes_to_the_reporter_set_by_reporting_unless_the_call_names_one():
    clock = Clock()
    b = breaker(clock, failures=1)
    outer, own = Recorder(), Recorder()
    with reporting(outer):
        await fail(b)
    assert outer.types == ["breaker.opened"]
    clock.now += 30
    with reporting(outer):
        await b.call(ok, report=own)
    assert own.types == ["breaker.half_open", "breaker.closed"]
    assert outer.types == ["breaker.opened"]


async def test_a_reporter_that_fails_does_not_fail_the_call(caplog):
    clock = Clock()
    b = breaker(clock, failures=1)

    async def broken(type, data):
        raise RuntimeError("no run to record on")

    await fail(b, broken)
    assert b.state == "open"
    assert "could not record breaker.opened" in caplog.text


async def test_changes_are_logged_on_plait_breakers(caplog):
    caplog.set_level("INFO", logger="plait.breakers")
    clock = Clock()
    b = breaker(clock, failures=2, reset_after=1)
    await fail(b)
    await fail(b)
    clock.now += 1
    await b.call(ok)
    records = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "plait.breakers"]
    assert records[0][0] == "WARNING"
    assert "circuit breaker tool:t opened (2 failures in a row)" in records[0][1]
    assert [level for level, _ in records[1:]] == ["INFO", "INFO"]
    assert "half-open" in records[1][1] and "closed" in records[2][1]


# -- the registry and the settings -----------------------------------------------------------


def test_registry_by_name_keeps_state_for_the_same_settings():
    clock = Clock()
    breakers = Breakers(clock=clock, wall=clock.wall)
    assert breakers.add("tool:a", None) is None
    assert breakers.add("tool:b", BreakerSettings(enabled=False)) is None
    one = breakers.add("tool:z", BreakerSettings(failures=2))
    two = breakers.add("mcp:time", BreakerSettings())
    assert one is not None and two is not None
    assert two.settings.failures == 5  # the default rule
    one.failures = 1
    assert breakers.add("tool:z", BreakerSettings(failures=2)) is one
    assert breakers.add("tool:z", BreakerSettings(failures=3)) is not one
    assert list(breakers) == ["mcp:time", "tool:z"] and "mcp:time" in breakers
    assert breakers.info() == {
        "mcp:time": {"state": "closed", "failures": 0, "retry_at": None},
        "tool:z": {"state": "closed", "failures": 0, "retry_at": None},
    }


def test_settings_are_checked_and_a_bad_table_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"agents\.reviewer\.breaker\.failures"):
        breaker_settings({"failures": 0}, "agents.reviewer")
    with pytest.raises(ConfigError, match=r"agents\.reviewer\.breaker\.bogus: unknown key"):
        breaker_settings({"bogus": 1}, "agents.reviewer")
    with pytest.raises(ConfigError, match=r"failure_rate"):
        breaker_settings({"failure_rate": 1.5}, "agents.reviewer")
    assert breaker_settings(None, "agents.x") is None
    with pytest.raises(ConfigError, match=r"mcp_servers\.time\.breaker\.reset_after"):
        parse_servers({"time": {"command": "x", "breaker": {"reset_after": 0}}})
    toml = tmp_path / "plait.toml"
    toml.write_text(
        '[tools."web.fetch"]\nbreaker = {failures = 5, reset_after = 30}\n'
        '[tools."bad"]\nbreaker = {window = -1}\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"tools\.bad\.breaker\.window"):
        load_config(toml, environ={})
    toml.write_text('[tools."web.fetch"]\nbreaker = {failures = 5, reset_after = 30}\n')
    settings = load_config(toml, environ={}).tools["web.fetch"].breaker
    assert settings == BreakerSettings(failures=5, reset_after=30)


# -- where the host builds them ---------------------------------------------------------------


def flaky_tools() -> tuple[Registry, dict[str, int]]:
    calls = {"n": 0}

    async def flaky(args):
        calls["n"] += 1
        raise RuntimeError("upstream 503")

    async def checked(args):
        raise ToolFailed("checked", "invalid arguments: x", retryable=False)

    async def steady(args):
        calls["n"] += 1
        return 42

    registry: Registry = Registry("tool")
    for name, fn in (("flaky", flaky), ("checked", checked), ("steady", steady)):
        registry.add(name, plait.Tool(name=name, call=fn), plugin="test")
    return registry, calls


async def test_tool_runner_breaks_per_tool_and_records_on_the_call_reporter(tmp_path):
    registry, calls = flaky_tools()
    on = ToolSettings(breaker=BreakerSettings(failures=2, reset_after=60))
    runner = ToolRunner(registry, ToolCache(None), {"flaky": on, "checked": on})
    assert set(runner.breakers) == {"tool:flaky", "tool:checked"}
    seen = Recorder()
    for _ in range(2):
        with pytest.raises(ToolFailed, match="upstream 503"):
            await runner.call("flaky", {}, on_breaker=seen)
    assert seen.types == ["breaker.opened"]
    with pytest.raises(CircuitOpen, match="'tool:flaky' is open"):
        await runner.call("flaky", {}, on_breaker=seen)
    assert calls["n"] == 2  # the refused call never ran
    for _ in range(3):  # the caller's own mistakes do not open the tool's breaker
        with pytest.raises(ToolFailed, match="invalid arguments"):
            await runner.call("checked", {})
    assert runner.breakers.info()["tool:checked"]["state"] == "closed"
    assert runner.breakers.info()["tool:flaky"]["state"] == "open"


async def test_a_cache_hit_never_touches_the_breaker(tmp_path):
    registry, calls = flaky_tools()
    on = ToolSettings(breaker=BreakerSettings(failures=1, reset_after=60), cacheable=True)
    cache = ToolCache(tmp_path / "cache")
    cache.open()
    try:
        runner = ToolRunner(registry, cache, {"steady": on})
        assert await runner.call("steady", {"a": 1}) == 42
        breaker = runner.breakers.get("tool:steady")
        assert breaker is not None
        breaker._open("forced open by the test")
        hits = []

        async def cached(tool, key):
            hits.append(tool)

        assert await runner.call("steady", {"a": 1}, on_cached=cached) == 42
        assert hits == ["steady"] and calls["n"] == 1
        with pytest.raises(CircuitOpen):
            await runner.call("steady", {"a": 2})
    finally:
        cache.close()


def failing_agents_plugin(failures: dict[str, int]):
    class Down:
        async def complete(self, request):
            failures["n"] += 1
            raise ConnectionError("the model server is down")

    class Provider:
        name = "down"

        def create(self, name, config):
            assert "breaker" not in config  # the pool's key, not the provider's
            return Down()

    return types.SimpleNamespace(
        __name__="downagents", register_agents=plait.hookimpl(lambda register: register(Provider()))
    )


async def test_an_agent_breaker_opens_on_failed_completions_and_the_run_records_it():
    failures = {"n": 0}
    pm = create_plugin_manager(entry_points=False, extra=[failing_agents_plugin(failures)])
    config = HostConfig.model_validate(
        {"agents": {"bot": {"provider": "down", "breaker": {"failures": 2, "reset_after": 60}}}}
    )
    step = {"agent": "bot", "prompt": "go", "on_error": "continue"}
    definition = {
        "name": "talk",
        "steps": [
            {"id": "a", **step},
            {"id": "b", **step, "needs": ["a"]},
            {"id": "c", **step, "needs": ["b"]},
        ],
    }
    run = await plait.run(definition, pm=pm, config=config)
    assert failures["n"] == 2  # the third completion was refused without reaching the server
    assert run.steps["a"].error["type"] == "agent"
    assert run.steps["b"].error["type"] == "agent"
    error = run.steps["c"].error
    assert error["type"] == "circuit_open" and error["breaker"] == "agent:bot"
    opened = [e for e in run.events if e.type == "breaker.opened"]
    assert [(e.step, e.data["breaker"], e.data["failures"]) for e in opened] == [
        ("b", "agent:bot", 2)
    ]


def test_a_bad_agent_breaker_table_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match=r"agents\.bot\.breaker\.half_open_calls"):
        AgentPool(Registry("agent provider"), {"bot": {"breaker": {"half_open_calls": 0}}})
    pool = AgentPool(Registry("agent provider"), {"bot": {"breaker": {}}, "other": {}})
    assert pool.breakers.info() == {
        "agent:bot": {"state": "closed", "failures": 0, "retry_at": None}
    }
