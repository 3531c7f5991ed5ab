"""Typed registries of what plugins contribute, filled once and then read directly by the engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from plait.errors import PluginError
from plait.plugins.types import AgentProvider, ExecutorProvider, StepType, Tool

__all__ = ["Registries", "Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → object, remembering which plugin registered each; duplicates are refused."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._owners: dict[str, str] = {}

    def add(self, name: str, obj: T, *, plugin: str, replace: bool = False) -> None:
        """Register ``obj`` as ``name``; a name already taken raises unless ``replace``."""
        if not isinstance(name, str) or not name:
            raise PluginError(plugin, f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._items and not replace:
            raise PluginError(
                plugin,
                f"{self.kind} {name!r} is already registered by plugin {self._owners[name]!r} "
                "(pass replace=True to override it)",
            )
        self._items[name] = obj
        self._owners[name] = plugin

    def remove(self, name: str) -> None:
        """Forget ``name`` (a tool source that went away); unknown names are ignored."""
        self._items.pop(name, None)
        self._owners.pop(name, None)

    def get(self, name: str) -> T | None:
        """The object registered as ``name``, or ``None``."""
        return self._items.get(name)

    def owner(self, name: str) -> str | None:
        """The plugin that registered ``name``."""
        return self._owners.get(name)

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._items)

    def by_plugin(self, plugin: str) -> list[str]:
        """The names one plugin registered, sorted."""
        return sorted(n for n, p in self._owners.items() if p == plugin)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class Registries:
    """The registries a plugin manager fills: step types, tools, agent and executor providers."""

    def __init__(self) -> None:
        self.step_types: Registry[type[StepType[Any]]] = Registry("step type")
        self.tools: Registry[Tool] = Registry("tool")
        self.agent_providers: Registry[AgentProvider] = Registry("agent provider")
        self.executor_providers: Registry[ExecutorProvider] = Registry("executor provider")

    def step_type_register(self, plugin: str) -> Callable[..., None]:
        """The ``register`` callback given to one plugin's ``register_step_types``."""

        def register(step_type: type[StepType[Any]], *, replace: bool = False) -> None:
            if not (isinstance(step_type, type) and issubclass(step_type, StepType)):
                raise PluginError(
                    plugin, f"register_step_types expects a StepType subclass, got {step_type!r}"
                )
            key = getattr(step_type, "key", None)
            if not isinstance(getattr(step_type, "Config", None), type):
                raise PluginError(plugin, f"step type {step_type.__name__} has no Config model")
            self.step_types.add(key, step_type, plugin=plugin, replace=replace)  # type: ignore[arg-type]

        return register

    def tool_register(self, plugin: str) -> Callable[..., None]:
        """The ``register`` callback given to one plugin's ``register_tools``."""

        def register(
            tool: Any, name: str | None = None, *, replace: bool = False, **options: Any
        ) -> None:
            if isinstance(tool, Tool):
                if name is not None and name != tool.name:
                    raise PluginError(
                        plugin, f"tool {tool.name!r} registered under another name {name!r}"
                    )
                obj = tool
            elif callable(tool):
                try:
                    obj = Tool.from_function(tool, name=name, **options)
                except PluginError:
                    raise
                except Exception as exc:  # a bad signature or type hint in the plugin
                    raise PluginError(plugin, f"cannot make a tool of {tool!r}: {exc}") from exc
            else:
                raise PluginError(
                    plugin, f"register_tools expects a function or Tool, got {tool!r}"
                )
            if obj.executor is not None:
                if not isinstance(obj.executor, str) or not obj.executor:
                    raise PluginError(
                        plugin,
                        f"tool {obj.name!r}: executor must be an executor's name, "
                        f"got {obj.executor!r}",
                    )
                if obj.function is None:
                    raise PluginError(
                        plugin,
                        f"tool {obj.name!r} names executor {obj.executor!r} but has no "
                        "function to send it (make the tool with Tool.from_function)",
                    )
            self.tools.add(obj.name, obj, plugin=plugin, replace=replace)

        return register

    def agent_register(self, plugin: str) -> Callable[..., None]:
        """The ``register`` callback given to one plugin's ``register_agents``."""

        def register(provider: AgentProvider, *, replace: bool = False) -> None:
            name = getattr(provider, "name", None)
            if not callable(getattr(provider, "create", None)):
                raise PluginError(plugin, f"agent provider {provider!r} has no create() method")
            self.agent_providers.add(name, provider, plugin=plugin, replace=replace)  # type: ignore[arg-type]

        return register

    def executor_register(self, plugin: str) -> Callable[..., None]:
        """The ``register`` callback given to one plugin's ``register_executors``."""

        def register(provider: ExecutorProvider, *, replace: bool = False) -> None:
            name = getattr(provider, "name", None)
            if not callable(getattr(provider, "create", None)):
                raise PluginError(plugin, f"executor provider {provider!r} has no create() method")
            self.executor_providers.add(name, provider, plugin=plugin, replace=replace)  # type: ignore[arg-type]

        return register
