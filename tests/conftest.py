"""Shared fixtures: the anyio backend, a fresh plugin manager, a probe plugin of tools, and a
throwaway PostgreSQL cluster (``pg_cluster``) with a fresh database per test (``pg_url``)."""

from __future__ import annotations

import os
import types
import uuid

import anyio
import pytest

import plait
from plait.plugins import create_plugin_manager

from .postgres_cluster import PgCluster, PgUnavailable, ensure_bindir


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


@pytest.fixture(scope="session")
def pg_cluster():
    """A running PostgreSQL cluster of this session (one per pytest-xdist worker), removed after.

    Skips, saying why, only when the server's programs are missing and cannot be installed
    (``make postgres`` installs them); any other failure to start is an error.
    """
    try:
        bindir = ensure_bindir()
    except PgUnavailable as exc:
        pytest.skip(f"PostgreSQL server unavailable: {exc}")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    cluster = PgCluster(bindir, name=worker)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def pg_url(pg_cluster):
    """The URL of a fresh, empty database on ``pg_cluster``, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = pg_cluster.create_database(name)
    yield url
    if not pg_cluster.running:  # a crash test left the server down
        pg_cluster.start()
    pg_cluster.drop_database(name)
