"""The hooks a plait plugin may implement, grouped by when they fire.

A plugin is a module or object with functions marked ``@plait.hookimpl`` whose names match the
specs below. Argument names are part of the API: pluggy passes arguments by name, so an
implementation may take any subset of them.

Registration hooks run once when a host (or ``plait.run``) starts; what they register is called
directly by the engine afterwards, never through ``pm.hook``, so the hot path pays nothing for
the plugin system.

Every hook is called implementation by implementation, so one that raises fails alone. A
``wrapper=True`` or ``hookwrapper=True`` implementation would therefore never wrap anything:
a plugin carrying one is refused at load, with the reason in ``plugins/list``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from plait.plugins.types import (
        RegisterAgent,
        RegisterExecutor,
        RegisterStepType,
        RegisterTool,
        RunInfo,
    )

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "plait"
"""The pluggy project name, and the entry-point group third-party plugins publish under."""

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------------------------
# Registration: what a plugin contributes
# --------------------------------------------------------------------------------------------


@hookspec
def register_step_types(register: RegisterStepType) -> None:
    """Add step types.

    Fires once per plugin manager, when the registries are built.

    Args:
        register: call ``register(StepTypeClass)`` for each step type; its ``key`` names it.
            A key another plugin already registered is an error unless ``replace=True``.

    Example::

        @hookimpl
        def register_step_types(register):
            register(Shout)
    """


@hookspec
def register_tools(register: RegisterTool) -> None:
    """Add tools.

    Fires once per plugin manager, when the registries are built.

    Args:
        register: call ``register(fn, name="ns.tool")`` with a typed function (its signature
            becomes the tool's JSON Schema) or ``register(Tool(...))``. Options of
            ``Tool.from_function`` (``cacheable``, ``version``, ``max_concurrency``) pass through.

    Example::

        @hookimpl
        def register_tools(register):
            register(greet, name="hello.greet", cacheable=True)

    A heavy function can run on a cluster instead of the host: ``executor="dask"`` sends
    every call to the executor of that name (see :func:`register_executors`).
    """


@hookspec
def register_agents(register: RegisterAgent) -> None:
    """Add agent providers, selected by ``provider =`` in ``[agents.<name>]`` of the config.

    Fires once per plugin manager, when the registries are built.

    Args:
        register: call ``register(provider)`` with an object that has a ``name`` and a
            ``create(name, config)`` method returning an agent.

    Example::

        @hookimpl
        def register_agents(register):
            register(EchoProvider())
    """


@hookspec
def register_executors(register: RegisterExecutor) -> None:
    """Add executor providers: where tool calls run when a tool or a tool step names an
    executor (``executor = "dask"``), configured by ``[executors.<name>]`` tables.

    Fires once per plugin manager, when the registries are built. The built-in ``dask``
    provider (``plait.executors.dask``) comes through this hook too.

    Args:
        register: call ``register(provider)`` with an object that has a ``name`` and a
            ``create(name, config)`` method returning an :class:`~plait.plugins.Executor`
            (``async run(job)``, ``detach()``, ``async aclose()``). Import the executor's
            libraries in ``run``, never at module level: every host loads the plugin.

    Example::

        @hookimpl
        def register_executors(register):
            register(RayProvider())
    """


# --------------------------------------------------------------------------------------------
# Customisation
# --------------------------------------------------------------------------------------------


@hookspec
def prepare_jinja_environment(env: Any) -> None:
    """Add filters, tests or globals to the sandboxed template environment.

    Fires once per template engine, before any workflow is compiled. The environment stays
    sandboxed: what you add is reachable from every template, so add only pure functions.

    Args:
        env: the ``jinja2`` sandboxed environment (``env.filters``, ``env.globals``).

    Example::

        @hookimpl
        def prepare_jinja_environment(env):
            env.filters["shout"] = lambda s: str(s).upper()
    """


@hookspec(firstresult=True)
def load_workflow(source: str, path: str | None) -> dict[str, Any] | None:
    """Turn workflow source text of another format into a definition mapping.

    Fires for every workflow loaded from text before the built-in YAML/JSON reader.
    Stops at the first non-``None`` result.

    Args:
        source: the text as given.
        path: the file it came from, if any (use its suffix to recognise your format).

    Example::

        @hookimpl
        def load_workflow(source, path):
            return toml.loads(source) if path and path.endswith(".toml") else None
    """


# --------------------------------------------------------------------------------------------
# Lifecycle observers: return None or an awaitable; errors are logged and never abort a run
# --------------------------------------------------------------------------------------------
#
# The run and step observers are called once the change they report is committed to the store
# (a crash can no longer undo it), in the order of the run's events, with a read-only
# :class:`plait.RunInfo` snapshot: an observer cannot change the run it watches.


@hookspec(historic=True)
def host_started(host: Any) -> Awaitable[None] | None:
    """The host has started: store open, plugins loaded, ready for runs.

    Historic: a plugin registered later still hears it.

    Args:
        host: the :class:`plait.Host`.

    Example::

        @hookimpl
        def host_started(host):
            log.info("plait ready")
    """


@hookspec
def host_stopping(host: Any) -> Awaitable[None] | None:
    """The host is about to stop; runs still in flight will be resumed by the next start.

    Args:
        host: the :class:`plait.Host`.

    Example::

        @hookimpl
        async def host_stopping(host):
            await flush_metrics()
    """


@hookspec
def run_started(run: RunInfo) -> Awaitable[None] | None:
    """A run has started (or resumed).

    Args:
        run: a read-only :class:`plait.RunInfo` snapshot (``id``, ``workflow``, ``inputs``,
            ``status``, ...), taken once the start is kept by the store.

    Example::

        @hookimpl
        def run_started(run):
            print("started", run.id)
    """


@hookspec
def run_finished(run: RunInfo, outcome: str) -> Awaitable[None] | None:
    """A run reached a terminal state.

    Args:
        run: a read-only :class:`plait.RunInfo` snapshot.
        outcome: ``succeeded``, ``failed`` or ``cancelled``.

    Example::

        @hookimpl
        def run_finished(run, outcome):
            notify(run.id, outcome)
    """


@hookspec
def step_started(run: RunInfo, step: str) -> Awaitable[None] | None:
    """A step attempt is about to run.

    Args:
        run: a read-only :class:`plait.RunInfo` snapshot.
        step: the step's path (``fetch``, ``each[2].fetch``).

    Example::

        @hookimpl
        def step_started(run, step):
            metrics.incr("steps")
    """


@hookspec
def step_finished(run: RunInfo, step: str, outcome: str) -> Awaitable[None] | None:
    """A step settled.

    Args:
        run: a read-only :class:`plait.RunInfo` snapshot.
        step: the step's path.
        outcome: ``succeeded``, ``failed``, ``skipped`` or ``cancelled``.

    Example::

        @hookimpl
        def step_finished(run, step, outcome):
            metrics.incr(f"steps.{outcome}")
    """
