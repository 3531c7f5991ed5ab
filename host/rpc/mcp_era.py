"""MCP's two eras on one dispatcher: the handshake revisions and the stateless 2026-07-28.

Up to 2025-11-25 a client opens with ``initialize`` and the session remembers the version and
the client's capabilities. From 2026-07-28 there is no handshake: every request carries its
protocol version and the client's capabilities in ``params._meta``
(``io.modelcontextprotocol/protocolVersion``, ``.../clientCapabilities``, optionally
``.../clientInfo``), and a result says what it is (``resultType``) and who answered
(``_meta`` ``io.modelcontextprotocol/serverInfo``). Both are served side by side, on stdio and
the WebSocket: a request whose ``_meta`` holds the version key is a 2026-era request, checked
by the MCP SDK's own inbound ladder (missing envelope keys are invalid params; a version this
host does not speak is -32022 with the versions it does), and answered without asking for
``initialize``; any other request follows its session's handshake as before.

The request's era is kept in :data:`MCP_REQUEST` while its handler runs, so a handler reads the
version and capabilities that apply to this request (:func:`request_version`), never inferring
them from an earlier one.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from plait.rpc.errors import RpcError

__all__ = [
    "HANDSHAKE_VERSIONS",
    "MCP_REQUEST",
    "MODERN_VERSIONS",
    "McpRequest",
    "classify",
    "finish",
    "is_modern",
    "request_version",
]

PROTOCOL_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
MODERN_VERSIONS = ("2026-07-28",)
"""Revisions without a handshake this host speaks."""
HANDSHAKE_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
"""Revisions negotiated by ``initialize``, newest first."""


@dataclass(frozen=True, slots=True)
class McpRequest:
    """What a 2026-era request says of itself in its ``_meta``."""

    version: str
    capabilities: dict[str, Any] = field(default_factory=dict)
    client_info: dict[str, Any] | None = None


MCP_REQUEST: ContextVar[McpRequest | None] = ContextVar("plait_mcp_request", default=None)
"""The 2026-era envelope of the request being handled (``None``: a handshake-era request)."""


class _Rejected(RpcError):
    """A 2026-era envelope the SDK's ladder refused, with its code and data."""


def is_modern(message: Mapping[str, Any]) -> bool:
    """Whether a request carries the 2026-era envelope (its version key is the signal: a bare
    ``_meta`` is not, handshake-era requests put ``progressToken`` there)."""
    params = message.get("params")
    if type(params) is not dict:
        return False
    meta = params.get("_meta")
    return type(meta) is dict and PROTOCOL_VERSION_KEY in meta


def classify(message: Mapping[str, Any]) -> McpRequest | RpcError:
    """The envelope of a 2026-era request, or the error the MCP SDK's inbound ladder gives it
    (missing keys: -32602 naming them; an unsupported version: -32022 with ``supported``)."""
    from mcp.shared.inbound import InboundLadderRejection, classify_inbound_request

    found = classify_inbound_request(message, supported_modern_versions=MODERN_VERSIONS)
    if isinstance(found, InboundLadderRejection):
        error = _Rejected(found.message, found.data)
        error.code = found.code  # type: ignore[misc]
        return error
    capabilities = found.client_capabilities
    info = found.client_info
    return McpRequest(
        found.protocol_version,
        dict(capabilities) if isinstance(capabilities, Mapping) else {},
        dict(info) if isinstance(info, Mapping) else None,
    )


def finish(method: str, version: str, result: Any, server_info: Mapping[str, Any]) -> Any:
    """A 2026-era result as the revision wants it: a spec method's core result validated and
    shaped by the SDK's surface of that revision (``resultType``; the caching directives of a
    cacheable result, here ``ttlMs`` 0 and ``private``: plait's lists change when workflows
    are registered), and the ``serverInfo`` stamp in its ``_meta``.

    Raises:
        pydantic.ValidationError: a handler's result does not fit the revision (a bug).
    """
    if not isinstance(result, dict):
        return result
    from mcp_types.methods import SERVER_RESULTS, serialize_server_result

    out: dict[str, Any] = {"ttlMs": 0, "cacheScope": "private", "resultType": "complete"}
    out.update(result)
    core = out["resultType"] in ("complete", "input_required")
    if core and (method, version) in SERVER_RESULTS:
        meta = out.get("_meta")
        out = serialize_server_result(method, version, out)
        if meta is not None:
            out["_meta"] = meta  # plait's own keys (the run id of a workflow call) stay
    else:  # an extension's method or result shape (a task): its own fields, as they are
        for key in ("ttlMs", "cacheScope"):
            if key not in result:
                out.pop(key)
    meta = out.get("_meta")
    if meta is None or (isinstance(meta, dict) and meta.get(SERVER_INFO_KEY) is None):
        out["_meta"] = {**(meta or {}), SERVER_INFO_KEY: dict(server_info)}
    return out


def request_version(session_version: str | None) -> str | None:
    """The MCP revision that applies to the request being handled: its own (2026 era), else
    the one its session negotiated (``None``: not an MCP session)."""
    modern = MCP_REQUEST.get()
    return modern.version if modern is not None else session_version
