"""Hosts for tests: a memory-only configuration and a started :class:`plait.Host`.

A test host keeps nothing on disk (``data_dir = ":memory:"``), reads no ``plait.toml`` and no
``PLAIT_*`` variables, and loads no installed third-party plugins: what a test sees is what it
asked for, on any machine. A plugin that fails to load fails the test at once with its error,
where a production host would log it and carry on without the plugin.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from pydantic import ValidationError

from plait.config import HostConfig
from plait.errors import ConfigError, PluginError
from plait.plugins.types import validation_problems

if TYPE_CHECKING:
    from plait.definition.models import WorkflowDef
    from plait.host.app import Host
    from plait.plugins.manager import PluginManager

__all__ = [
    "WorkflowSource",
    "check_plugins",
    "memory_config",
    "resolve_plugins",
    "started_host",
]

WorkflowSource: TypeAlias = "WorkflowDef | Mapping[str, Any] | str | Path"
"""A workflow as :meth:`plait.Host.register` and :func:`plait.run` take it: a model, a mapping,
YAML/JSON text, or the path of a file."""


def memory_config(**sections: Mapping[str, Any]) -> HostConfig:
    """A host configuration for tests: memory store, no entry-point plugins, nothing read.

    Args:
        **sections: tables of the configuration, as in ``plait.toml``
            (``limits={"max_batch": 5}``, ``agents={"bot": {"provider": "scripted"}}``). The
            ``host`` and ``plugins`` tables given are laid over the test defaults
            (``data_dir=":memory:"``, ``entry_points=False``).

    Raises:
        ConfigError: a table or key is invalid, naming each one.
    """
    data: dict[str, Any] = {name: dict(table) for name, table in sections.items()}
    data["host"] = {"data_dir": ":memory:", **data.get("host", {})}
    data["plugins"] = {"entry_points": False, **data.get("plugins", {})}
    try:
        return HostConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid test config: {'; '.join(validation_problems(exc))}") from None


def resolve_plugins(plugins: Iterable[object]) -> list[object]:
    """Plugin objects, with module names (strings) imported.

    pluggy would register a string as a plugin without a single hook and say nothing; a test
    that names its plugin module means the module.
    """
    return [import_module(p) if isinstance(p, str) else p for p in plugins]


def check_plugins(pm: PluginManager) -> None:
    """Raise if any plugin failed to load or to register what it offers.

    Raises:
        PluginError: naming every plugin that failed, the stage and the error.
    """
    pm.registries  # noqa: B018 - building the registries runs every register_* hook
    if pm.failures:
        first = pm.failures[0]
        told = "; ".join(f"{f.plugin} failed at {f.stage}: {f.error}" for f in pm.failures)
        raise PluginError(first.plugin, told)


@asynccontextmanager
async def started_host(
    *,
    config: HostConfig | None = None,
    plugins: Iterable[object] = (),
    workflows: Iterable[WorkflowSource] = (),
) -> AsyncIterator[Host]:
    """A started :class:`plait.Host`, stopped when the block ends.

    Args:
        config: the host configuration; default :func:`memory_config`.
        plugins: plugin objects or modules (or module names) added to the built-ins.
        workflows: workflows registered once the host is up.

    Raises:
        PluginError: a plugin failed to load (see :func:`check_plugins`).
        DefinitionError: one of ``workflows`` is invalid.

    Example::

        async with started_host(plugins=[my_plugin], workflows=["flow.yaml"]) as host:
            run = await host.wait(await host.start_run("flow", {"x": 1}))
    """
    from plait.host.app import Host  # the host pulls in the store and the transports

    host = Host(config or memory_config(), plugins=resolve_plugins(plugins))
    check_plugins(host.pm)
    async with host:
        for workflow in workflows:
            host.register(workflow)
        yield host
