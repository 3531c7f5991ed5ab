"""The host: configuration, plugins, cache and engine wired together, embeddable in a program."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from plait.compiler import CompiledWorkflow
from plait.config import HostConfig, load_config
from plait.engine import Engine
from plait.errors import DefinitionError
from plait.memo import ToolCache
from plait.models import WorkflowDef
from plait.plugins.manager import PluginManager, create_plugin_manager
from plait.runs import Run

__all__ = ["Host", "ensure_private_dir"]

log = logging.getLogger("plait.host")

WORKFLOW_SUFFIXES = (".yaml", ".yml", ".json")
"""Files in a workflows folder that are read as workflows."""


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700, and tighten it if it already exists."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


class Host:
    """The whole plait host in one object.

    Example::

        host = plait.Host(data_dir=".plait")
        async with host:
            run_id = await host.start_run("hello", {"name": "ada"})
            run = await host.wait(run_id)
    """

    def __init__(
        self,
        config: HostConfig | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        workflows: str | os.PathLike[str] | None = None,
        plugins: Iterable[object] = (),
        pm: PluginManager | None = None,
    ) -> None:
        self.config = config or load_config()
        if data_dir is not None:
            self.config.host.data_dir = str(data_dir)
        if workflows is not None:
            self.config.host.workflows = str(workflows)
        self.pm = pm or create_plugin_manager(
            entry_points=self.config.plugins.entry_points,
            blocked=self.config.plugins.disabled, extra=plugins)
        self.started_at: float | None = None
        self.load_errors: dict[str, DefinitionError] = {}
        self.engine: Engine | None = None

    @property
    def data_dir(self) -> Path | None:
        """Where the store, cache and token live (``None`` in memory-only mode)."""
        return None if self.config.memory_only else Path(self.config.host.data_dir)

    def _cache(self) -> ToolCache:
        if self.data_dir is None or not self.config.cache.enabled:
            return ToolCache(None)
        return ToolCache(self.data_dir / "cache", size_limit=self.config.cache.size_limit)

    async def __aenter__(self) -> Host:
        if self.data_dir is not None:
            ensure_private_dir(self.data_dir)
        cache = self._cache()
        cache.open()
        self.engine = Engine(self.pm, self.config, cache=cache)
        if self.config.host.workflows:
            self.load_folder(self.config.host.workflows)
        await self.engine.__aenter__()
        self.started_at = time.time()
        self.pm.hook.host_started.call_historic(kwargs={"host": self})
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self.engine is not None
        self.pm.call_isolated("host_stopping", host=self)
        try:
            await self.engine.__aexit__(exc_type, exc, tb)
        finally:
            self.engine.cache.close()

    def _engine(self) -> Engine:
        if self.engine is None:
            raise RuntimeError("the host is not started: use `async with host:`")
        return self.engine

    def load_folder(self, folder: str | os.PathLike[str]) -> list[CompiledWorkflow]:
        """Register every workflow file in ``folder``; a bad file is reported and skipped."""
        loaded = []
        for path in sorted(Path(folder).iterdir()):
            if path.suffix not in WORKFLOW_SUFFIXES or not path.is_file():
                continue
            try:
                loaded.append(self._engine().register(str(path)))
            except DefinitionError as exc:
                self.load_errors[str(path)] = exc
                log.warning("skipping workflow file %s: %s", path, exc)
        return loaded

    def register(self, source: WorkflowDef | Mapping[str, Any] | str) -> CompiledWorkflow:
        """Register (or update) a workflow; identical content keeps its version."""
        return self._engine().register(source)

    async def start_run(self, workflow: str, inputs: Mapping[str, Any] | None = None, *,
                        version: int | None = None) -> str:
        """Start a run of a registered workflow; returns its id at once."""
        engine = self._engine()
        run = await engine.start(engine.catalog.get(workflow, version), inputs)
        return run.id

    async def wait(self, run_id: str) -> Run:
        """Return the run once it is terminal."""
        return await self._engine().wait(run_id)

    def get_run(self, run_id: str) -> Run:
        """The run with that id."""
        return self._engine().get_run(run_id)
