"""Shared fixtures: the anyio backend, a fresh plugin manager, and a probe plugin of tools."""

from __future__ import annotations

import types

import anyio
import pytest

import plait
from plait.plugins import create_plugin_manager


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Probe:
    """Tools that record what happened: calls, peak concurrency, planned failures."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.active = 0
        self.peak = 0
        self.failures: dict[str, int] = {}

    def plugin(self):
        probe = self

        async def work(seconds: float = 0.0, label: str = "") -> str:
            probe.calls.append(("work", {"seconds": seconds, "label": label}))
            probe.active += 1
            probe.peak = max(probe.peak, probe.active)
            try:
                await anyio.sleep(seconds)
            finally:
                probe.active -= 1
            return label

        def echo(value: object = None) -> object:
            probe.calls.append(("echo", {"value": value}))
            return value

        def fail(key: str, times: int = 1, value: object = "ok") -> object:
            seen = probe.failures.get(key, 0)
            probe.failures[key] = seen + 1
            probe.calls.append(("fail", {"key": key}))
            if seen < times:
                raise RuntimeError(f"failure {seen + 1} of {key}")
            return value

        def add(a: int, b: int) -> int:
            probe.calls.append(("add", {"a": a, "b": b}))
            return a + b

        def bad() -> object:
            return {1, 2}

        @plait.hookimpl
        def register_tools(register):
            register(work, "probe.work", max_concurrency=None)
            register(echo, "probe.echo", blocking=False)
            register(fail, "probe.fail", blocking=False)
            register(add, "probe.add", blocking=False, cacheable=True)
            register(bad, "probe.bad", blocking=False)

        return types.SimpleNamespace(__name__="probe", register_tools=register_tools)

    def count(self, name: str) -> int:
        return sum(1 for n, _ in self.calls if n == name)


@pytest.fixture
def probe():
    return Probe()


@pytest.fixture
def pm(probe):
    """Built-ins plus the probe plugin; no entry points, so installed plugins do not leak in."""
    return create_plugin_manager(entry_points=False, extra=[probe.plugin()])
