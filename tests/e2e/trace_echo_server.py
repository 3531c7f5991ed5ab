"""An MCP server (the official SDK's ``MCPServer``, over stdio) whose one tool answers with
the ``traceparent`` its request carried in ``_meta``: what the test of trace propagation into
MCP servers reads."""

from __future__ import annotations

from mcp.server import MCPServer
from mcp.server.mcpserver import Context

server = MCPServer("trace-echo")


@server.tool()
def traceparent(ctx: Context) -> str:
    """The W3C traceparent of this call's request, or an empty string."""
    meta = ctx.request_context.meta or {}
    return str(meta.get("traceparent", ""))


if __name__ == "__main__":
    server.run("stdio")
