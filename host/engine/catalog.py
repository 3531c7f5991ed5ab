"""Registered workflows by name and version, kept in the store when there is one.

Versions are immutable: putting a definition whose content (its digest) matches an existing
version makes that version current again instead of adding one, and anything else adds the next
number. Deleting a workflow hides it (``workflows/list``, ``runs/start``) but keeps its versions,
because runs snapshot them; putting it again brings its history back.

Versions read back from the store are compiled on first use, so a start with many versions
stays quick and a version that no longer compiles (a plugin was removed) fails only when asked
for, with the reason.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from plait.definition.compiler import CompiledWorkflow
from plait.errors import WorkflowNotFound

if TYPE_CHECKING:
    from plait.state.run_store import RunStore

__all__ = ["Catalog", "CatalogEntry"]

Compile = Callable[[Mapping[str, Any]], CompiledWorkflow]


@dataclass(eq=False)
class CatalogEntry:
    """One version of a workflow: its definition as data, compiled when first needed."""

    name: str
    version: int
    digest: str
    definition: dict[str, Any]
    created_at: float
    compiled: CompiledWorkflow | None = None

    @property
    def description(self) -> str:
        """The definition's description (no compiling needed)."""
        return str(self.definition.get("description") or "")

    @property
    def inputs(self) -> dict[str, Any]:
        """The JSON Schema of the inputs (no compiling needed)."""
        inputs = self.definition.get("inputs")
        return dict(inputs) if isinstance(inputs, Mapping) else {"type": "object"}


@dataclass(eq=False)
class _Workflow:
    current: int
    deleted: bool = False
    versions: dict[int, CatalogEntry] = field(default_factory=dict)


class Catalog:
    """Workflows by name and version, kept in ``store``."""

    def __init__(self, compile: Compile, store: RunStore, *, keep_steps: int = 100_000) -> None:
        self._compile = compile
        self._store = store
        self._workflows: dict[str, _Workflow] = {}
        self.keep_steps = keep_steps
        """Steps of compiled versions kept (a 5,000-step version holds tens of MB); the least
        recently used versions past it are dropped and compile again when next asked for."""
        self._kept: OrderedDict[tuple[str, int], CatalogEntry] = OrderedDict()
        self._kept_steps = 0
        self.generation = 0
        """Bumped by every change of which versions are current (the watchers' index)."""
        self._watch: tuple[int, dict[str, list[str]]] = (-1, {})

    def restore(self, rows: list[dict[str, Any]]) -> None:
        """Load what :meth:`RunStore.catalog` read, before anything else is registered."""
        for row in rows:
            entry = _Workflow(row["current"], row["deleted"])
            for v in row["versions"]:
                entry.versions[v["version"]] = CatalogEntry(
                    row["name"], v["version"], v["digest"], v["definition"], v["created_at"]
                )
            if entry.versions:
                self._workflows[row["name"]] = entry
        self.generation += 1

    def watchers(self, workflow: str) -> list[str]:
        """The workflows whose current version's ``on:`` watches runs of ``workflow``."""
        generation, index = self._watch
        if generation != self.generation:
            index = {}
            for name in self.names():
                for trigger in self.entry(name).definition.get("on") or ():
                    index.setdefault(trigger.get("workflow"), []).append(name)
            self._watch = (self.generation, index)
        return index.get(workflow, [])

    def add(self, compiled: CompiledWorkflow) -> CompiledWorkflow:
        """Register a compiled workflow; returns it with the version it was filed under."""
        self.generation += 1
        entry = self._workflows.get(compiled.name)
        if entry is not None:
            for existing in entry.versions.values():
                if existing.digest == compiled.digest:
                    self._make_current(compiled.name, entry, existing.version)
                    if existing.compiled is None:
                        compiled.version = existing.version
                        existing.compiled = compiled
                    self._keep(existing, existing.compiled)
                    return existing.compiled
            compiled.version = max(entry.versions) + 1
        else:
            compiled.version = compiled.definition.version or 1
            entry = self._workflows[compiled.name] = _Workflow(compiled.version)
        version = CatalogEntry(
            compiled.name,
            compiled.version,
            compiled.digest,
            compiled.definition.to_dict(),
            time.time(),
            compiled,
        )
        entry.versions[compiled.version] = version
        entry.current, entry.deleted = compiled.version, False
        self._keep(version, compiled)
        self._store.put_workflow(
            version.name, version.version, version.digest, version.definition, version.created_at
        )
        return compiled

    def _make_current(self, name: str, entry: _Workflow, version: int) -> None:
        self.generation += 1
        if entry.current != version or entry.deleted:
            entry.current, entry.deleted = version, False
            self._store.set_current(name, version)

    def versions(self, name: str) -> list[dict[str, Any]]:
        """``[{version, created_at, current}]`` of a workflow, oldest first."""
        entry = self._entry(name)
        return [
            {
                "version": v,
                "created_at": entry.versions[v].created_at,
                "current": v == entry.current,
            }
            for v in sorted(entry.versions)
        ]

    def rollback(self, name: str, version: int) -> CompiledWorkflow:
        """Make an existing version current again."""
        entry = self._entry(name)
        if version not in entry.versions:
            raise WorkflowNotFound(name, version)
        compiled = self._compiled(entry.versions[version])
        self._make_current(name, entry, version)
        return compiled

    def get(self, name: str, version: int | None = None) -> CompiledWorkflow:
        """The current (or a given) version of ``name``, compiled.

        Raises:
            WorkflowNotFound: no such workflow or version.
            DefinitionError: a stored version that no longer compiles against these plugins.
        """
        return self._compiled(self.entry(name, version))

    def find(self, digest: str) -> CompiledWorkflow | None:
        """A version with this content, compiled (once, like any version), if any.

        Raises:
            DefinitionError: it no longer compiles.
        """
        for entry in self._workflows.values():
            for version in entry.versions.values():
                if version.digest == digest:
                    return self._compiled(version)
        return None

    def _compiled(self, entry: CatalogEntry) -> CompiledWorkflow:
        compiled = entry.compiled
        if compiled is None:
            compiled = self._compile(entry.definition)
            compiled.version = entry.version
            entry.compiled = compiled
        self._keep(entry, compiled)
        return compiled

    def _keep(self, entry: CatalogEntry, compiled: CompiledWorkflow) -> None:
        """Count ``entry`` as just used; drop the compiled form of the least recently used
        versions while more than :attr:`keep_steps` steps are kept (never the one in use)."""
        key = (entry.name, entry.version)
        if key in self._kept:
            self._kept.move_to_end(key)
            return
        self._kept[key] = entry
        self._kept_steps += compiled.size
        while self._kept_steps > self.keep_steps and len(self._kept) > 1:
            _, oldest = self._kept.popitem(last=False)
            if oldest.compiled is not None:
                self._kept_steps -= oldest.compiled.size
                oldest.compiled = None

    def _entry(self, name: str, version: int | None = None) -> _Workflow:
        entry = self._workflows.get(name)
        if entry is None or entry.deleted:
            raise WorkflowNotFound(name, version, self.names())
        return entry

    def entry(self, name: str, version: int | None = None) -> CatalogEntry:
        """The current (or a given) version of ``name``, not compiled."""
        entry = self._entry(name, version)
        found = entry.versions.get(entry.current if version is None else version)
        if found is None:
            raise WorkflowNotFound(name, version)
        return found

    def current(self) -> list[CatalogEntry]:
        """The current version of every workflow, by name (not compiled)."""
        return [self.entry(name) for name in self.names()]

    def remove(self, name: str) -> None:
        """Hide ``name``; its versions stay for the runs that snapshot them."""
        entry = self._entry(name)
        entry.deleted = True
        self.generation += 1
        self._store.set_current(name, entry.current, deleted=True)

    def names(self) -> list[str]:
        """Registered (not deleted) workflow names."""
        return sorted(n for n, e in self._workflows.items() if not e.deleted)

    def __contains__(self, name: object) -> bool:
        entry = self._workflows.get(name)  # type: ignore[call-overload]
        return entry is not None and not entry.deleted
