"""The plugin contract: hookspecs, the ``hookimpl`` marker, types, registries and the manager."""

from plait.plugins.hookspecs import hookimpl, hookspec
from plait.plugins.manager import (
    DEFAULT_PLUGINS,
    PluginFailure,
    PluginInfo,
    PluginManager,
    create_plugin_manager,
)
from plait.plugins.registry import Registries, Registry
from plait.plugins.types import (
    Agent,
    AgentContext,
    AgentProvider,
    AgentReply,
    AgentRequest,
    Message,
    StepConfig,
    StepContext,
    StepType,
    Tool,
    ToolCall,
    ToolContext,
    agent_settings,
    tool,
    validation_problems,
)

__all__ = [
    "DEFAULT_PLUGINS",
    "Agent",
    "AgentContext",
    "AgentProvider",
    "AgentReply",
    "AgentRequest",
    "Message",
    "PluginFailure",
    "PluginInfo",
    "PluginManager",
    "Registries",
    "Registry",
    "StepConfig",
    "StepContext",
    "StepType",
    "Tool",
    "ToolCall",
    "ToolContext",
    "agent_settings",
    "create_plugin_manager",
    "hookimpl",
    "hookspec",
    "tool",
    "validation_problems",
]
