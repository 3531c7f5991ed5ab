"""plait.testing: a kit for testing plugins against a real plait, without sockets or files.

A plugin's step types and tools run in the engine, behind JSON-RPC, and inside a host; testing
them well means going through those, not around them. The kit gives each level its helper:

- :class:`FakeStepContext` runs a step type's ``run(ctx, config)`` alone, for pure unit tests;
- :func:`run_step` runs one step through a real engine (config validation, templates, retries,
  events) and returns the finished run;
- :func:`started_host` and the ``plait_host`` fixture give a whole host with a memory store;
- :class:`Client` (and the ``plait_client`` fixture) speaks JSON-RPC to that host through its
  real dispatcher and a real session, as a WebSocket client would, minus the socket.

The pytest fixtures live in :mod:`plait.testing.pytest_plugin`, which pytest loads through the
``pytest11`` entry point once plait is installed. Names load on first use (PEP 562), like those
of :mod:`plait`, so loading the pytest plugin into every test session stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plait.testing.client import Client
    from plait.testing.context import FakeStepContext
    from plait.testing.hosts import memory_config, started_host
    from plait.testing.steps import run_step, step_plugin

_OWNERS: dict[str, str] = {
    "Client": "plait.testing.client",
    "FakeStepContext": "plait.testing.context",
    "memory_config": "plait.testing.hosts",
    "started_host": "plait.testing.hosts",
    "run_step": "plait.testing.steps",
    "step_plugin": "plait.testing.steps",
}
"""Each public name and the module that owns it."""

__all__ = [
    "Client",
    "FakeStepContext",
    "memory_config",
    "run_step",
    "started_host",
    "step_plugin",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module the first time it is asked for."""
    owner = _OWNERS.get(name)
    if owner is None:
        raise AttributeError(f"module 'plait.testing' has no attribute {name!r}")
    value = getattr(import_module(owner), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
