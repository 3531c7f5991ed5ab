"""The JSON-RPC API: one dispatcher, served over WebSocket and stdio, with MCP on top."""
