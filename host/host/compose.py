"""The one place an engine is built.

:class:`plait.Host`, the one-shot ``plait.run`` and the command line all build their engine
here, from a configuration, a plugin manager and the parts they chose (a store, a tool cache, a
sampler): nothing is assigned onto an engine or a store after it is made.

One-shot runs also reuse what does not change between calls (:func:`engine_parts`): the
plugin manager with its registries, the template engine, and compiled workflows by content
digest. Building those is most of the cost of a short run.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plait.config import HostConfig
from plait.definition.compiler import CompiledWorkflow, definition_digest
from plait.definition.models import WorkflowDef
from plait.engine.engine import Engine, template_engine
from plait.engine.scheduler import Sampler
from plait.engine.schedules import Clock, Schedules
from plait.plugins.manager import PluginManager
from plait.services.cache import ToolCache
from plait.state.run_store import RunStore
from plait.templates.engine import TemplateEngine

if TYPE_CHECKING:
    from plait.telemetry import Metrics, Tracing

__all__ = ["EngineParts", "build_engine", "build_schedules", "engine_parts", "tool_cache"]

PARTS_KEPT = 8
"""Sets of engine parts (one per distinct configuration and plugin list) kept for reuse."""
COMPILED_KEPT = 256
"""Compiled workflows each set of parts keeps, by content digest."""


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
    templates: TemplateEngine | None = None,
    metrics: Metrics | None = None,
    tracing: Tracing | None = None,
) -> Engine:
    """An engine over ``pm``'s registries; a memory store, no cache, no metrics and no traces
    unless given."""
    return Engine(
        pm,
        config,
        cache=cache,
        store=store,
        sampler=sampler,
        templates=templates,
        metrics=metrics,
        tracing=tracing,
    )


def build_schedules(engine: Engine, *, clock: Clock | None = None) -> Schedules:
    """The scheduler of ``engine``'s schedules, on the wall clock unless given one; entered
    (``async with``) by its owner once the engine runs and its runs are recovered."""
    return Schedules(engine, clock)


@dataclass
class EngineParts:
    """What engines of one configuration and plugin list share: built once, reused."""

    config: HostConfig
    pm: PluginManager
    templates: TemplateEngine
    plugins: tuple[object, ...] = ()
    """Held so their ids, part of the key these parts are kept under, stay theirs."""
    _compiled: OrderedDict[str, CompiledWorkflow] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def engine(self, *, cache: ToolCache | None = None) -> Engine:
        """A new engine (memory store) over these parts."""
        return build_engine(self.config, self.pm, cache=cache, templates=self.templates)

    def compile(
        self, engine: Engine, source: WorkflowDef | Mapping[str, Any] | str | Path
    ) -> CompiledWorkflow:
        """``engine.compile(source)``, answered from the compiled workflows of earlier calls
        when the definition's content is the same."""
        wf = source if isinstance(source, WorkflowDef) else engine.load(source)
        digest = definition_digest(wf)
        with self._lock:
            found = self._compiled.get(digest)
            if found is not None:
                self._compiled.move_to_end(digest)
                return found
        compiled = engine.compile(wf)
        with self._lock:
            self._compiled[digest] = compiled
            while len(self._compiled) > COMPILED_KEPT:
                self._compiled.popitem(last=False)
        return compiled


_parts: OrderedDict[tuple[Any, ...], EngineParts] = OrderedDict()
_parts_lock = threading.Lock()


def engine_parts(
    config: HostConfig, plugins: Iterable[object] = (), pm: PluginManager | None = None
) -> EngineParts:
    """The shared parts for ``config`` with ``plugins`` (or a given ``pm``), built on first
    use and kept (the :data:`PARTS_KEPT` most recently used).

    The key is the configuration's content and the identity of each plugin object or module;
    a changed ``plait.toml`` therefore gets parts of its own.
    """
    extra = tuple(plugins)
    key = (config.model_dump_json(), tuple(id(p) for p in extra), id(pm))
    with _parts_lock:
        found = _parts.get(key)
        if found is not None:
            _parts.move_to_end(key)
            return found
    manager = pm or config.plugin_manager(extra)
    parts = EngineParts(config, manager, template_engine(manager, config), extra + (pm,))
    with _parts_lock:
        _parts[key] = parts
        while len(_parts) > PARTS_KEPT:
            _parts.popitem(last=False)
    return parts
