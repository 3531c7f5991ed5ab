"""plait: an agent-tool orchestrator and plugin host.

This module is the public API: every name in ``__all__`` is re-exported from the module that
owns it, and nothing else lives here. The names load on first use (PEP 562), so a plugin that
imports ``plait.plugins`` or ``plait.errors`` does not pull in the host: websockets, SQLite
and diskcache load only when something needs them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plait.config import (
        HostConfig,
        load_config,
    )
    from plait.definition.builder import (
        Workflow,
    )
    from plait.definition.compiler import (
        CompiledWorkflow,
        compile_workflow,
    )
    from plait.definition.models import (
        CachePolicy,
        RetryPolicy,
        StepDef,
        WorkflowDef,
    )
    from plait.engine.engine import (
        Engine,
    )
    from plait.errors import (
        AgentFailed,
        AgentNotFound,
        AmbiguousRunId,
        CircuitOpen,
        ConfigError,
        DataDirLocked,
        DeadLetterError,
        DebugError,
        DefinitionError,
        ExecutorFailed,
        InputsInvalid,
        InvalidRunState,
        Issue,
        LimitReached,
        OutputError,
        PlaitError,
        PluginError,
        RunCancelled,
        RunError,
        RunNotFound,
        StepFailed,
        StepInterrupted,
        StepQuarantined,
        StepTimeout,
        StoreCorrupt,
        StoreError,
        StoreUnavailable,
        TemplateError,
        TemplateLimitError,
        TemplateSecurityError,
        TemplateSyntaxError,
        ToolFailed,
        ToolNotFound,
        WorkflowNotFound,
    )
    from plait.host.app import (
        Host,
    )
    from plait.host.oneshot import (
        load,
        run,
        run_sync,
        stream,
    )
    from plait.plugins import (
        Agent,
        AgentContext,
        AgentProvider,
        AgentReply,
        AgentRequest,
        Message,
        RegisterAgent,
        RegisterStepType,
        RegisterTool,
        Renderable,
        RunInfo,
        StepConfig,
        StepContext,
        StepType,
        Tool,
        ToolCall,
        ToolContext,
        create_plugin_manager,
        hookimpl,
        tool,
    )
    from plait.services.cache import (
        ToolCache,
    )
    from plait.state import (
        RunStore,
    )
    from plait.state.runs import (
        Event,
        Run,
        StepState,
    )
    from plait.store import (
        MemoryStore,
        SqliteStore,
    )

_OWNERS: dict[str, str] = {
    "HostConfig": "plait.config",
    "load_config": "plait.config",
    "Workflow": "plait.definition.builder",
    "CompiledWorkflow": "plait.definition.compiler",
    "compile_workflow": "plait.definition.compiler",
    "CachePolicy": "plait.definition.models",
    "RetryPolicy": "plait.definition.models",
    "StepDef": "plait.definition.models",
    "WorkflowDef": "plait.definition.models",
    "Engine": "plait.engine.engine",
    "AgentFailed": "plait.errors",
    "AgentNotFound": "plait.errors",
    "AmbiguousRunId": "plait.errors",
    "CircuitOpen": "plait.errors",
    "ConfigError": "plait.errors",
    "DataDirLocked": "plait.errors",
    "DeadLetterError": "plait.errors",
    "DebugError": "plait.errors",
    "DefinitionError": "plait.errors",
    "ExecutorFailed": "plait.errors",
    "InputsInvalid": "plait.errors",
    "InvalidRunState": "plait.errors",
    "Issue": "plait.errors",
    "LimitReached": "plait.errors",
    "OutputError": "plait.errors",
    "PlaitError": "plait.errors",
    "PluginError": "plait.errors",
    "RunCancelled": "plait.errors",
    "RunError": "plait.errors",
    "RunNotFound": "plait.errors",
    "StepFailed": "plait.errors",
    "StepInterrupted": "plait.errors",
    "StepQuarantined": "plait.errors",
    "StepTimeout": "plait.errors",
    "StoreCorrupt": "plait.errors",
    "StoreError": "plait.errors",
    "StoreUnavailable": "plait.errors",
    "TemplateError": "plait.errors",
    "TemplateLimitError": "plait.errors",
    "TemplateSecurityError": "plait.errors",
    "TemplateSyntaxError": "plait.errors",
    "ToolFailed": "plait.errors",
    "ToolNotFound": "plait.errors",
    "WorkflowNotFound": "plait.errors",
    "Host": "plait.host.app",
    "load": "plait.host.oneshot",
    "run": "plait.host.oneshot",
    "run_sync": "plait.host.oneshot",
    "stream": "plait.host.oneshot",
    "Agent": "plait.plugins",
    "AgentContext": "plait.plugins",
    "AgentProvider": "plait.plugins",
    "AgentReply": "plait.plugins",
    "AgentRequest": "plait.plugins",
    "Message": "plait.plugins",
    "RegisterAgent": "plait.plugins",
    "RegisterStepType": "plait.plugins",
    "RegisterTool": "plait.plugins",
    "Renderable": "plait.plugins",
    "RunInfo": "plait.plugins",
    "StepConfig": "plait.plugins",
    "StepContext": "plait.plugins",
    "StepType": "plait.plugins",
    "Tool": "plait.plugins",
    "ToolCall": "plait.plugins",
    "ToolContext": "plait.plugins",
    "create_plugin_manager": "plait.plugins",
    "hookimpl": "plait.plugins",
    "tool": "plait.plugins",
    "ToolCache": "plait.services.cache",
    "RunStore": "plait.state",
    "Event": "plait.state.runs",
    "Run": "plait.state.runs",
    "StepState": "plait.state.runs",
    "MemoryStore": "plait.store",
    "SqliteStore": "plait.store",
}
"""Each public name and the module that owns it."""

__all__ = [
    "Agent",
    "AgentContext",
    "AgentFailed",
    "AgentNotFound",
    "AgentProvider",
    "AgentReply",
    "AgentRequest",
    "AmbiguousRunId",
    "CachePolicy",
    "CircuitOpen",
    "CompiledWorkflow",
    "ConfigError",
    "DataDirLocked",
    "DeadLetterError",
    "DebugError",
    "DefinitionError",
    "Engine",
    "Event",
    "ExecutorFailed",
    "Host",
    "HostConfig",
    "InputsInvalid",
    "InvalidRunState",
    "Issue",
    "LimitReached",
    "MemoryStore",
    "Message",
    "OutputError",
    "PlaitError",
    "PluginError",
    "RegisterAgent",
    "RegisterStepType",
    "RegisterTool",
    "Renderable",
    "RetryPolicy",
    "Run",
    "RunCancelled",
    "RunError",
    "RunInfo",
    "RunNotFound",
    "RunStore",
    "SqliteStore",
    "StepConfig",
    "StepContext",
    "StepDef",
    "StepFailed",
    "StepInterrupted",
    "StepQuarantined",
    "StepState",
    "StepTimeout",
    "StepType",
    "StoreCorrupt",
    "StoreError",
    "StoreUnavailable",
    "TemplateError",
    "TemplateLimitError",
    "TemplateSecurityError",
    "TemplateSyntaxError",
    "Tool",
    "ToolCache",
    "ToolCall",
    "ToolContext",
    "ToolFailed",
    "ToolNotFound",
    "Workflow",
    "WorkflowDef",
    "WorkflowNotFound",
    "compile_workflow",
    "create_plugin_manager",
    "hookimpl",
    "load",
    "load_config",
    "run",
    "run_sync",
    "stream",
    "tool",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module the first time it is asked for."""
    owner = _OWNERS.get(name)
    if owner is None:
        raise AttributeError(f"module 'plait' has no attribute {name!r}")
    value = getattr(import_module(owner), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
