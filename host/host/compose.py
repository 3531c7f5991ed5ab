"""The one place an engine is built.

:class:`plait.Host`, the one-shot ``plait.run`` and the command line all build their engine
here, from a configuration, a plugin manager and the parts they chose (a store, a tool cache, a
sampler): nothing is assigned onto an engine or a store after it is made.
"""

from __future__ import annotations

from pathlib import Path

from plait.config import HostConfig
from plait.engine.engine import Engine
from plait.engine.scheduler import Sampler
from plait.plugins.manager import PluginManager
from plait.services.cache import ToolCache
from plait.state.run_store import RunStore

__all__ = ["build_engine", "tool_cache"]


def tool_cache(config: HostConfig, folder: str | Path | None) -> ToolCache:
    """The tool-result cache ``config`` asks for, in ``folder`` (``None``: no caching).

    ``[cache] enabled = false`` gets a cache that remembers nothing. The cache is not opened:
    its owner opens and closes it.
    """
    if folder is None or not config.cache.enabled:
        return ToolCache(None)
    return ToolCache(folder, size_limit=config.cache.size_limit)


def build_engine(
    config: HostConfig,
    pm: PluginManager,
    *,
    store: RunStore | None = None,
    cache: ToolCache | None = None,
    sampler: Sampler | None = None,
) -> Engine:
    """An engine over ``pm``'s registries; a memory store and no cache unless given."""
    return Engine(pm, config, cache=cache, store=store, sampler=sampler)
