"""One step through a real engine: :func:`run_step`, and :func:`step_plugin` to register it.

A step type's unit test with :class:`~plait.testing.FakeStepContext` skips what the engine
adds: config validation against the step type's ``Config``, templates rendered in the sandbox,
``retry``, ``timeout``, ``on_error``, the events of a step. :func:`run_step` runs the step the
way a workflow would, in a workflow of that one step, and hands back the finished run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from plait.plugins.hookspecs import hookimpl
from plait.plugins.types import RegisterStepType, RegisterTool, StepType, Tool
from plait.testing.hosts import check_plugins, memory_config, resolve_plugins

if TYPE_CHECKING:
    from plait.config import HostConfig
    from plait.state.runs import Run
    from plait.testing.hosts import WorkflowSource

__all__ = ["RUN_STEP_WORKFLOW", "StepPlugin", "run_step", "step_plugin"]

RUN_STEP_WORKFLOW = "run-step"
"""The name of the one-step workflow :func:`run_step` runs (``run.workflow``)."""


class StepPlugin:
    """A plugin object that registers given step types and tools (see :func:`step_plugin`)."""

    def __init__(
        self,
        name: str,
        step_types: Iterable[type[StepType[Any]]],
        tools: Mapping[str, Callable[..., Any] | Tool],
        replace: bool,
    ) -> None:
        self.__name__ = name
        """The plugin's name, as ``plait plugins`` and plugin errors show it."""
        self.step_types = list(step_types)
        self.tools = dict(tools)
        self.replace = replace

    @hookimpl
    def register_step_types(self, register: RegisterStepType) -> None:
        """Register each step type under its ``key``."""
        for step_type in self.step_types:
            register(step_type, replace=self.replace)

    @hookimpl
    def register_tools(self, register: RegisterTool) -> None:
        """Register each tool under its name in the mapping."""
        for name, given in self.tools.items():
            if isinstance(given, Tool):
                tool = given if given.name == name else dataclasses.replace(given, name=name)
                register(tool, replace=self.replace)
            else:
                register(given, name, replace=self.replace)

    def __repr__(self) -> str:
        return f"<StepPlugin {self.__name__}>"


def step_plugin(
    *step_types: type[StepType[Any]],
    tools: Mapping[str, Callable[..., Any] | Tool] | None = None,
    name: str | None = None,
    replace: bool = False,
) -> StepPlugin:
    """A plugin registering ``step_types`` and ``tools``, for a host or a run in a test.

    What a plugin module does with ``@plait.hookimpl`` functions, for classes and functions
    defined in the test itself: return it from the ``plait_plugins`` fixture, or pass it as
    ``plugins=[...]`` to :func:`plait.run`, :class:`plait.Host` or :func:`run_step`.

    Args:
        *step_types: step type classes, registered under their ``key``.
        tools: tool name → a typed function or a :class:`plait.Tool`.
        name: the plugin's name (default: made of what it registers).
        replace: override a step type or tool of the same name registered by another plugin
            (a built-in, say) instead of failing.
    """
    given = dict(tools or {})
    parts = [t.key for t in step_types] + list(given)
    return StepPlugin(name or f"plait.testing[{', '.join(parts)}]", step_types, given, replace)


async def run_step(
    step_type: type[StepType[Any]] | str,
    config: Mapping[str, Any] | None = None,
    inputs: Mapping[str, Any] | None = None,
    *,
    plugins: Iterable[object] = (),
    tools: Mapping[str, Callable[..., Any] | Tool] | None = None,
    workflows: Iterable[WorkflowSource] = (),
    host_config: HostConfig | None = None,
    step_id: str = "step",
) -> Run:
    """Run one step of ``step_type`` through a real engine and return the finished run.

    The step is the only one of a workflow named :data:`RUN_STEP_WORKFLOW`, written as
    ``{"id": step_id, "type": <key>, **config}``, so ``config`` holds the step's fields exactly
    as a workflow file does: the step type's own (templates allowed, over ``inputs``) and the
    common ones (``retry``, ``timeout``, ``on_error``, ``cache``, ``when``).

    It returns the run rather than the step's output because a test wants all of it: the
    output is ``run.steps[step_id].output``; a step that failed leaves ``run.status ==
    "failed"`` with the error in ``run.error`` and ``run.steps[step_id].error``; the events
    (``step.started``, what the step emitted, ...) are in ``run.events``.

    Args:
        step_type: a step type class (registered for this run unless ``plugins`` already
            register that class; a different class under its key is overridden), or the key of
            a step type that the built-ins or ``plugins`` provide.
        config: the step's fields (without ``id``).
        inputs: the run's inputs (``${inputs.x}`` in ``config``).
        plugins: plugin objects or modules (or module names), e.g. the plugin under test.
        tools: name → a typed function or a :class:`plait.Tool`, registered for this run.
        workflows: workflows that a ``workflow:`` step may call.
        host_config: agents, limits, ... (default :func:`~plait.testing.memory_config`).
        step_id: the step's id.

    Raises:
        PluginError: a plugin failed to load, or a tool name is taken twice.
        DefinitionError: the config is invalid for the step type (unknown or missing fields,
            a template that does not compile), or ``step_type`` names no step type.
        InputsInvalid: ``inputs`` are not a JSON object.

    Example::

        run = await run_step(Greet, {"greet": "${inputs.name}", "times": 2}, {"name": "ada"})
        assert run.steps["step"].output == "hi ada, hi ada"
    """
    from plait.host.oneshot import run  # the engine and what it brings load on first use

    host_config = host_config or memory_config()
    pm = host_config.plugin_manager(resolve_plugins(plugins))
    if isinstance(step_type, str):
        key = step_type
    else:
        key = step_type.key
        registered = pm.registries.step_types.get(key)
        if registered is not step_type:
            own = step_plugin(step_type, replace=registered is not None)
            pm.register(own, name=own.__name__)
    if tools:
        extra = step_plugin(tools=tools)
        pm.register(extra, name=extra.__name__)
    check_plugins(pm)
    definition = {
        "name": RUN_STEP_WORKFLOW,
        "steps": [{"id": step_id, "type": key, **(config or {})}],
    }
    return await run(definition, inputs, config=host_config, pm=pm, workflows=workflows)
