"""The plugin manager: built-ins and third-party plugins load the same way, and fail alone.

Built-in step types, agents and executors are named here only as strings
(:data:`DEFAULT_PLUGINS`), so the host never imports them and configuration can block any of
them exactly like a third-party one.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from plait.errors import PluginError
from plait.plugins import hookspecs
from plait.plugins.registry import Registries

__all__ = [
    "DEFAULT_PLUGINS",
    "PluginFailure",
    "PluginInfo",
    "PluginManager",
    "create_plugin_manager",
]

log = logging.getLogger("plait.plugins")

DEFAULT_PLUGINS: tuple[str, ...] = (
    "plait.steps.tool",
    "plait.steps.agent",
    "plait.steps.condition",
    "plait.steps.transform",
    "plait.steps.validate",
    "plait.steps.loop",
    "plait.steps.delay",
    "plait.steps.parallel",
    "plait.steps.workflow",
    "plait.steps.wait",
    "plait.steps.machine",
    "plait.steps.input",
    "plait.agents.scripted",
    "plait.agents.sampling",
    "plait.agents.openai",
    "plait.executors.dask",
    "plait.steps.stdtools",
)
"""Module names of the built-in plugins, registered before the ``plait`` entry points."""


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or whose hook raised; the rest carried on."""

    plugin: str
    """The plugin's name (module name, or entry-point name)."""
    stage: str
    """``import``, ``register`` or the hook that raised."""
    error: str
    """What went wrong, as a person would want it told."""
    entry_point: str | None = None
    """``name = module:attr`` for third-party plugins."""
    version: str | None = None
    """The distribution's version, when it is known."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form for ``plugins/list`` and ``plait plugins``."""
        return {
            "plugin": self.plugin,
            "stage": self.stage,
            "error": self.error,
            "entry_point": self.entry_point,
            "version": self.version,
        }


@dataclass
class PluginInfo:
    """A loaded plugin and what it contributed."""

    name: str
    version: str | None = None
    builtin: bool = False
    step_types: list[str] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)
    agent_providers: list[str] = field(default_factory=list)
    executor_providers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form for ``plugins/list`` and ``plait plugins``."""
        return {
            "name": self.name,
            "version": self.version,
            "builtin": self.builtin,
            "step_types": self.step_types,
            "tools": self.tools,
            "agent_providers": self.agent_providers,
            "executor_providers": self.executor_providers,
        }


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus the record of what failed, and the filled registries."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self.versions: dict[str, str | None] = {}
        self.builtins: set[str] = set()
        self.entry_point_labels: dict[str, str] = {}
        self._registries: Registries | None = None

    def register(self, plugin: object, name: str | None = None) -> str | None:
        """Register a plugin; the registries are rebuilt on next use to include it.

        Raises:
            PluginError: the plugin implements a hook as a pluggy wrapper (``wrapper=True``
                or ``hookwrapper=True``). plait calls each implementation of its hooks by
                itself, so a wrapper would silently never wrap anything: it is refused.
        """
        self._registries = None
        registered = super().register(plugin, name)
        if registered is None:  # blocked
            return None
        wrapped = self._wrapper_hooks(registered)
        if wrapped:
            super().unregister(name=registered)
            raise PluginError(
                registered,
                f"implements {', '.join(wrapped)} with wrapper=True/hookwrapper=True; plait "
                "calls each implementation of its hooks by itself, so a wrapper would never "
                "wrap anything: implement the hook plainly",
            )
        return registered

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        """Unregister a plugin; the registries are rebuilt on next use without it."""
        self._registries = None
        return super().unregister(plugin, name)

    def set_blocked(self, name: str) -> None:
        """Block a plugin by name (unregistering it if loaded)."""
        self._registries = None
        super().set_blocked(name)

    # -- loading ---------------------------------------------------------------------------

    def load_module(self, name: str, *, builtin: bool = False) -> bool:
        """Import and register a plugin module by name; record and skip it if that fails."""
        if self.is_blocked(name):
            return False
        try:
            module = importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - even SystemExit/KeyboardInterrupt from a plugin's import isolate it
            self._fail(name, "import", exc)
            return False
        return self._register(module, name, builtin=builtin)

    def load_entry_points(self, group: str = hookspecs.PROJECT) -> None:
        """Load every installed plugin published under the ``plait`` entry-point group."""
        for ep in entry_points(group=group):
            label = f"{ep.name} = {ep.value}"
            if self.is_blocked(ep.name) or self.is_blocked(ep.module):
                continue
            self.entry_point_labels[ep.name] = label
            dist = getattr(ep, "dist", None)
            if dist is not None:
                self.versions[ep.name] = dist.version
            try:
                plugin = ep.load()
            except BaseException as exc:  # noqa: BLE001 - isolate any failure
                self._fail(ep.name, "import", exc, entry_point=label)
                continue
            self._register(plugin, ep.name, entry_point=label)

    def _register(
        self, plugin: object, name: str, *, builtin: bool = False, entry_point: str | None = None
    ) -> bool:
        try:
            self.register(plugin, name=name)
        except BaseException as exc:  # noqa: BLE001 - a bad hookimpl signature, say
            self._fail(name, "register", exc, entry_point=entry_point)
            return False
        if builtin:
            self.builtins.add(name)
            self.versions.setdefault(name, _plait_version())
        self.versions.setdefault(name, getattr(plugin, "__version__", None))
        return True

    def _wrapper_hooks(self, name: str) -> list[str]:
        """The hooks a registered plugin implements as a pluggy wrapper, which plait refuses."""
        plugin = self.get_plugin(name)
        return sorted(
            caller.name
            for caller in self.get_hookcallers(plugin) or ()
            for impl in caller.get_hookimpls()
            if impl.plugin is plugin and (impl.wrapper or impl.hookwrapper)
        )

    def _fail(
        self, plugin: str, stage: str, exc: BaseException, entry_point: str | None = None
    ) -> None:
        message = f"{type(exc).__name__}: {exc}"
        entry_point = entry_point or self.entry_point_labels.get(plugin)
        self.failures.append(
            PluginFailure(plugin, stage, message, entry_point, self.versions.get(plugin))
        )
        where = f" (entry point {entry_point})" if entry_point else ""
        log.error("plugin %r%s failed at %s: %s", plugin, where, stage, message)
        log.debug("plugin %r traceback", plugin, exc_info=(type(exc), exc, exc.__traceback__))

    # -- registries --------------------------------------------------------------------------

    @property
    def registries(self) -> Registries:
        """Step types, tools, agent and executor providers of every plugin; built on first
        use."""
        if self._registries is None:
            self._registries = self._collect()
        return self._registries

    def _collect(self) -> Registries:
        regs = Registries()
        self._call_each("register_step_types", regs.step_type_register)
        self._call_each("register_tools", regs.tool_register)
        self._call_each("register_agents", regs.agent_register)
        self._call_each("register_executors", regs.executor_register)
        return regs

    def _call_each(self, hook: str, make_register: Callable[[str], Any]) -> None:
        """Call a registration hook plugin by plugin, so one that raises fails alone."""
        caller = getattr(self.hook, hook)
        for impl in caller.get_hookimpls():  # registration order: built-ins first
            plugin = impl.plugin_name
            try:
                impl.function(make_register(plugin))
            except BaseException as exc:  # noqa: BLE001 - SystemExit from a plugin included
                self._fail(plugin, hook, exc)

    def call_isolated(self, hook: str, *, firstresult: bool = False, **kwargs: Any) -> list[Any]:
        """Call a hook implementation by implementation, in pluggy's order (last registered
        first); one that raises is logged and skipped instead of aborting the call.

        With ``firstresult`` it stops at the first non-``None`` result.
        """
        results = []
        for impl in reversed(getattr(self.hook, hook).get_hookimpls()):
            try:
                result = impl.function(**{a: kwargs[a] for a in impl.argnames})
                results.append(result)
                if firstresult and result is not None:
                    break
            except BaseException as exc:  # noqa: BLE001 - observers never abort anything
                log.error(
                    "plugin %r raised in %s: %s",
                    impl.plugin_name,
                    hook,
                    exc,
                    exc_info=(type(exc), exc, exc.__traceback__),
                )
        return results

    def has_impls(self, hook: str) -> bool:
        """Whether any plugin implements ``hook`` (lets the engine skip calling it at all)."""
        return bool(getattr(self.hook, hook).get_hookimpls())

    def info(self) -> list[PluginInfo]:
        """Every loaded plugin with what it contributed, for ``plugins/list``."""
        regs = self.registries
        out = []
        for name, _plugin in self.list_name_plugin():
            if _plugin is None:  # a blocked name: pluggy keeps it mapped to None
                continue
            out.append(
                PluginInfo(
                    name=name,
                    version=self.versions.get(name),
                    builtin=name in self.builtins,
                    step_types=regs.step_types.by_plugin(name),
                    tools=regs.tools.by_plugin(name),
                    agent_providers=regs.agent_providers.by_plugin(name),
                    executor_providers=regs.executor_providers.by_plugin(name),
                )
            )
        return sorted(out, key=lambda p: (not p.builtin, p.name))


def create_plugin_manager(
    *,
    entry_points: bool = True,
    blocked: Iterable[str] = (),
    builtins: Iterable[str] = DEFAULT_PLUGINS,
    modules: Iterable[str] = (),
    extra: Iterable[object] = (),
) -> PluginManager:
    """A fresh manager with the built-ins, the installed ``plait`` plugins and ``extra`` objects.

    Args:
        entry_points: load third-party plugins from the ``plait`` entry-point group.
        blocked: plugin names (built-in module names or entry-point names) not to load.
        builtins: the built-in plugin modules; tests may pass fewer.
        modules: plugin modules to import by name (``[plugins] modules``): local plugins that
            are not installed as packages. One that fails to import is reported and skipped.
        extra: plugin objects or modules registered last (tests, embedding programs).
    """
    pm = PluginManager()
    for name in blocked:
        pm.set_blocked(name)
    for name in builtins:
        pm.load_module(name, builtin=True)
    if entry_points:
        pm.load_entry_points()
    for name in modules:
        pm.load_module(name)
    for i, plugin in enumerate(extra):
        name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{i}"
        if not pm.is_blocked(name):
            pm._register(plugin, name)
    while True:  # check_pending stops at the first offender: report and drop each in turn
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or str(getattr(exc.plugin, "__name__", exc.plugin))
            pm._fail(name, "register", exc)
            pm.unregister(exc.plugin)
            continue
        return pm


def _plait_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("plait")
    except Exception:  # noqa: BLE001 - running from a checkout without metadata
        return None
