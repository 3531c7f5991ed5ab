"""The in-process front door: run a workflow in this program, with a memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from plait.config import HostConfig, load_config
from plait.definition.compiler import CompiledWorkflow
from plait.definition.loader import load as _load
from plait.definition.models import WorkflowDef
from plait.engine.engine import Engine
from plait.host.compose import engine_parts, tool_cache
from plait.plugins.manager import PluginManager
from plait.state.runs import Event, Run

__all__ = ["load", "run", "run_sync", "stream"]

Source = WorkflowDef | Mapping[str, Any] | str | Path


def load(source: Source) -> WorkflowDef:
    """A workflow from a file path, YAML/JSON text or a mapping; raises ``DefinitionError``."""
    return _load(source)


@asynccontextmanager
async def _session(
    workflow: Source,
    *,
    config: HostConfig | None = None,
    plugins: Iterable[object] = (),
    workflows: Iterable[Source] = (),
    cache_dir: str | None = None,
    pm: PluginManager | None = None,
) -> AsyncIterator[tuple[Engine, CompiledWorkflow]]:
    """A started engine with ``workflow`` (and its sub-workflows) registered.

    The plugin manager, template engine and compiled workflows come from the parts earlier
    calls with the same configuration and plugins built (:func:`engine_parts`); the engine
    and its memory store are this call's own.
    """
    parts = engine_parts(config or load_config(), plugins, pm)
    cache = tool_cache(parts.config, cache_dir)
    cache.open()
    engine = parts.engine(cache=cache)
    try:
        for extra in workflows:
            engine.add(parts.compile(engine, extra))
        compiled = engine.add(parts.compile(engine, workflow))
        async with engine:
            yield engine, compiled
    finally:
        cache.close()


async def run(
    workflow: Source,
    inputs: Mapping[str, Any] | None = None,
    *,
    config: HostConfig | None = None,
    plugins: Iterable[object] = (),
    workflows: Iterable[Source] = (),
    cache_dir: str | None = None,
    pm: PluginManager | None = None,
) -> Run:
    """Run a workflow to the end in this process and return the finished run.

    Args:
        workflow: the workflow (path, text, mapping or model).
        inputs: the run's inputs.
        config: host configuration (agents, limits); default: ``plait.toml`` if present.
        plugins: extra plugin objects or modules, registered after the installed ones.
        workflows: other workflows that ``workflow:`` steps may call.
        cache_dir: a directory for the tool-result cache (none: no caching).
        pm: a ready plugin manager (overrides ``plugins``).

    Returns:
        The :class:`Run`: ``status``, ``outputs``, ``steps[id].output``, ``error``, ``events``.
        A failed run is returned, not raised; an invalid definition or inputs raise.
    """
    async with _session(
        workflow, config=config, plugins=plugins, workflows=workflows, cache_dir=cache_dir, pm=pm
    ) as (engine, compiled):
        started = await engine.start(compiled, inputs)
        return await started.wait()


def run_sync(workflow: Source, inputs: Mapping[str, Any] | None = None, **options: Any) -> Run:
    """:func:`run` for scripts that have no event loop."""
    return anyio.run(lambda: run(workflow, inputs, **options))


async def stream(
    workflow: Source,
    inputs: Mapping[str, Any] | None = None,
    **options: Any,
) -> AsyncIterator[Event]:
    """Run a workflow and yield every event as it happens, the last being ``run.<outcome>``.

    Takes the same options as :func:`run`.
    """
    async with _session(workflow, **options) as (engine, compiled):
        started = await engine.start(compiled, inputs)
        async for event in started.follow():
            yield event
