"""JSON-RPC errors on the wire: one class per code, with a round trip through ``error`` objects.

The tree::

    RpcError(code, message, data)
    ├── ParseError          -32700  the text is not JSON
    ├── InvalidRequest      -32600  not a valid request object (or not allowed here)
    ├── MethodNotFound      -32601
    ├── InvalidParams       -32602
    ├── InternalError       -32603  carries a correlation id, never exception text
    ├── WorkflowNotFound    -32001
    ├── RunNotFound         -32002
    ├── InvalidWorkflow     -32003  data: the list of problems
    ├── NotAllowed          -32004  not allowed in the run's current state
    ├── NotFound            -32005  tool or agent not found
    ├── Busy                -32006  a limit was hit; retry later
    └── Unauthorized        -32007

Only the dispatcher turns domain errors into these.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "Busy",
    "InternalError",
    "InvalidParams",
    "InvalidRequest",
    "InvalidWorkflow",
    "MethodNotFound",
    "NotAllowed",
    "NotFound",
    "ParseError",
    "RpcError",
    "RunNotFound",
    "Unauthorized",
    "WorkflowNotFound",
]


class RpcError(Exception):
    """An error answered to a JSON-RPC request."""

    code: ClassVar[int] = -32603
    default_message: ClassVar[str] = "Internal error"

    def __init__(self, message: str | None = None, data: Any = None) -> None:
        self.message = message or self.default_message
        self.data = data
        super().__init__(self.message)

    def to_error_data(self) -> dict[str, Any]:
        """The ``error`` member of a response."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out

    @classmethod
    def from_error_data(cls, error: dict[str, Any]) -> RpcError:
        """Rebuild the matching subclass from a response's ``error`` member."""
        code = error.get("code")
        for sub in _ALL:
            if sub.code == code:
                return sub(error.get("message"), error.get("data"))
        exc = RpcError(error.get("message"), error.get("data"))
        exc.code = code if isinstance(code, int) else -32603  # type: ignore[misc]
        return exc


class ParseError(RpcError):
    """The message is not valid JSON (or uses NaN, or nests too deeply)."""

    code = -32700
    default_message = "Parse error"


class InvalidRequest(RpcError):
    """The message is JSON but not a valid request, or not allowed on this session."""

    code = -32600
    default_message = "Invalid Request"


class MethodNotFound(RpcError):
    """No such method."""

    code = -32601
    default_message = "Method not found"


class InvalidParams(RpcError):
    """Wrong, missing or mistyped params."""

    code = -32602
    default_message = "Invalid params"


class InternalError(RpcError):
    """The handler failed; ``data.correlationId`` finds the traceback in the host's log."""

    code = -32603
    default_message = "Internal error"


class WorkflowNotFound(RpcError):
    """No workflow (or version) of that name."""

    code = -32001
    default_message = "Workflow not found"


class RunNotFound(RpcError):
    """No run with that id."""

    code = -32002
    default_message = "Run not found"


class InvalidWorkflow(RpcError):
    """The definition is invalid; ``data`` lists every problem."""

    code = -32003
    default_message = "Invalid workflow"


class NotAllowed(RpcError):
    """The run's state does not allow this."""

    code = -32004
    default_message = "Not allowed in the run's state"


class NotFound(RpcError):
    """No tool or agent of that name."""

    code = -32005
    default_message = "Tool or agent not found"


class Busy(RpcError):
    """A limit was hit; retry later."""

    code = -32006
    default_message = "Busy"


class Unauthorized(RpcError):
    """Missing or wrong credentials."""

    code = -32007
    default_message = "Unauthorized"


_ALL: tuple[type[RpcError], ...] = (
    ParseError,
    InvalidRequest,
    MethodNotFound,
    InvalidParams,
    InternalError,
    WorkflowNotFound,
    RunNotFound,
    InvalidWorkflow,
    NotAllowed,
    NotFound,
    Busy,
    Unauthorized,
)
