"""plait: an agent-tool orchestrator and plugin host.

This module is the public API: every name in ``__all__`` is re-exported from the module that
owns it, and nothing else lives here.
"""

from plait.api import load, run, run_sync, stream
from plait.app import Host
from plait.builder import Workflow
from plait.compiler import CompiledWorkflow, compile_workflow
from plait.config import HostConfig, load_config
from plait.engine import Engine
from plait.errors import (
    AgentFailed,
    AgentNotFound,
    ConfigError,
    DefinitionError,
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
    StepTimeout,
    TemplateError,
    TemplateLimitError,
    TemplateSecurityError,
    TemplateSyntaxError,
    ToolFailed,
    ToolNotFound,
    WorkflowNotFound,
)
from plait.memo import ToolCache
from plait.models import CachePolicy, RetryPolicy, StepDef, WorkflowDef
from plait.plugins import (
    Agent,
    AgentProvider,
    AgentReply,
    AgentRequest,
    Message,
    StepConfig,
    StepContext,
    StepType,
    Tool,
    ToolCall,
    create_plugin_manager,
    hookimpl,
    tool,
)
from plait.runs import Event, Run, StepState

__all__ = [
    "Agent",
    "AgentFailed",
    "AgentNotFound",
    "AgentProvider",
    "AgentReply",
    "AgentRequest",
    "CachePolicy",
    "CompiledWorkflow",
    "ConfigError",
    "DefinitionError",
    "Engine",
    "Event",
    "Host",
    "HostConfig",
    "InputsInvalid",
    "InvalidRunState",
    "Issue",
    "LimitReached",
    "Message",
    "OutputError",
    "PlaitError",
    "PluginError",
    "RetryPolicy",
    "Run",
    "RunCancelled",
    "RunError",
    "RunNotFound",
    "StepConfig",
    "StepContext",
    "StepDef",
    "StepFailed",
    "StepState",
    "StepTimeout",
    "StepType",
    "TemplateError",
    "TemplateLimitError",
    "TemplateSecurityError",
    "TemplateSyntaxError",
    "Tool",
    "ToolCache",
    "ToolCall",
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
