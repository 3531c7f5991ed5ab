"""The pytest fixtures of plait.testing, loaded by pytest through the ``pytest11`` entry point.

Every test session of a project with plait installed loads this module, plait's own included,
so it imports nothing of the host at load time: the store, the transports and the engine load
when a test first asks for ``plait_host`` or ``plait_client``.

Fixtures (function scope; a test overrides the first three by defining its own)::

    plait_plugins    []: plugin objects or modules (or names) the host loads, e.g. yours
    plait_workflows  []: workflows registered at start (mappings, YAML text, paths)
    plait_config     memory_config(): memory store, no entry-point plugins
    plait_host       a started plait.Host built from the three above
    plait_client     a plait.testing.Client connected to plait_host

The host fixtures are async: use them from tests marked ``pytest.mark.anyio`` (plait runs on
asyncio: with trio installed, define ``anyio_backend`` to return ``"asyncio"``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from plait.config import HostConfig
    from plait.host.app import Host
    from plait.testing.client import Client
    from plait.testing.hosts import WorkflowSource

__all__ = ["plait_client", "plait_config", "plait_host", "plait_plugins", "plait_workflows"]


@pytest.fixture
def plait_plugins() -> list[object]:
    """Plugins for ``plait_host`` besides the built-ins: override it to add yours.

    Example::

        @pytest.fixture
        def plait_plugins():
            return [plait_hello]
    """
    return []


@pytest.fixture
def plait_workflows() -> list[WorkflowSource]:
    """Workflows ``plait_host`` registers at start: override it to add yours."""
    return []


@pytest.fixture
def plait_config() -> HostConfig:
    """The configuration of ``plait_host``: override it for agents, limits or tool settings
    (``plait.testing.memory_config(agents={...})`` keeps the test defaults)."""
    from plait.testing.hosts import memory_config

    return memory_config()


@pytest.fixture
async def plait_host(
    anyio_backend: Any,
    plait_config: HostConfig,
    plait_plugins: list[object],
    plait_workflows: list[WorkflowSource],
) -> AsyncIterator[Host]:
    """A started host with a memory store, stopped after the test.

    A plugin that fails to load fails the test with its error (``PluginError``).
    """
    _require_asyncio(anyio_backend)
    from plait.testing.hosts import started_host

    async with started_host(
        config=plait_config, plugins=plait_plugins, workflows=plait_workflows
    ) as host:
        yield host


@pytest.fixture
async def plait_client(anyio_backend: Any, plait_host: Host) -> AsyncIterator[Client]:
    """A JSON-RPC client of ``plait_host``, in this process (see :class:`Client`)."""
    from plait.testing.client import Client

    async with Client(plait_host) as client:
        yield client


def _require_asyncio(anyio_backend: Any) -> None:
    """plait's JSON-RPC layer runs on asyncio; under trio it would fail far from the cause."""
    name = anyio_backend if isinstance(anyio_backend, str) else anyio_backend[0]
    if name != "asyncio":
        raise pytest.UsageError(
            f"plait runs on asyncio, not {name}: define a fixture `anyio_backend` "
            'returning "asyncio"'
        )
