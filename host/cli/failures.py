"""What the ``plait`` command says when something fails: one line, the cause and what to do.

:func:`explain` turns any exception that reaches ``main`` into that line; the traceback is
only logged at DEBUG level (``plait --debug ...``).
"""

from __future__ import annotations

import argparse
import errno
import json
from pathlib import Path
from typing import Any

from plait.errors import PlaitError

__all__ = ["CommandFailed", "explain", "leaf", "one_line", "rpc_error_line"]


class CommandFailed(PlaitError):
    """A command could not do its work; the message says why and what to do."""


def leaf(exc: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups of one, else ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def one_line(text: str) -> str:
    """``text`` on one line (a message may carry newlines from a lower layer)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def rpc_error_line(exc: Any) -> str:
    """A JSON-RPC error answered by the host: its message, its code, and its data compactly."""
    line = f"{one_line(exc.message)} (JSON-RPC error {exc.code})"
    if exc.data is not None:
        data = json.dumps(exc.data, separators=(",", ":"), ensure_ascii=False, default=str)
        line += f": {data if len(data) <= 400 else data[:399] + '…'}"
    return line


def _data_dir(args: argparse.Namespace) -> str:
    data_dir = getattr(args, "data_dir", None)
    if data_dir:
        return str(data_dir)
    try:
        from plait.cli.settings import config_from_args

        return str(config_from_args(args).host.data_dir)
    except Exception:  # noqa: BLE001 - only a hint: the config may be what failed
        return "<data dir>"


def _client_hint(exc: BaseException, args: argparse.Namespace) -> str | None:
    from plait.rpc.client import HostClosed, HostUnreachable, NoAnswer, NoHost, TokenRefused

    if not isinstance(exc, HostUnreachable):
        return None
    data_dir = _data_dir(args)
    if isinstance(exc, TokenRefused):
        return f"{exc}: use the token of this launch ({data_dir}/token or --token)"
    if isinstance(exc, NoAnswer):
        if hasattr(args, "timeout") and "handshake" not in str(exc):
            return f"{exc} (raise --timeout)"
        return f"{exc}: the host may be busy or stuck; try again, or check its log"
    if isinstance(exc, HostClosed):
        return f"{exc}: the host may have stopped; check its log"
    if isinstance(exc, NoHost):
        stale = (
            not getattr(args, "url", None)
            and "connection refused" in str(exc)
            and (Path(data_dir) / "host.json").is_file()
        )
        if stale:
            return (
                f"{exc}: {data_dir}/host.json names a host that is gone; "
                "start `plait serve` again, or pass --url"
            )
        if "connection refused" in str(exc):
            return f"{exc}: start the host with `plait serve`, or pass --url of a running one"
        return f"{exc}: check --url"
    return str(exc)


def explain(exc: BaseException, args: argparse.Namespace) -> str:
    """One line, without ``error:``, for an exception that no command handled itself."""
    exc = leaf(exc)
    hint = _client_hint(exc, args)
    if hint is not None:
        return one_line(hint)
    from plait.rpc.errors import RpcError

    if isinstance(exc, RpcError):
        return rpc_error_line(exc)
    if isinstance(exc, PlaitError):
        return one_line(str(exc))
    if isinstance(exc, OSError) and exc.errno in (
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENOSPC,
    ):
        where = f" {exc.filename}" if exc.filename else ""
        return one_line(
            f"cannot write{where}: {exc.strerror}; "
            'give a writable --data-dir (or data_dir = ":memory:")'
        )
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return one_line(f"{exc.strerror or str(exc) or type(exc).__name__}{where}")
    if isinstance(exc, TimeoutError):
        return "timed out"
    try:
        from websockets.exceptions import WebSocketException
    except ImportError:  # pragma: no cover - websockets is a dependency
        WebSocketException = ()  # type: ignore[assignment,misc]  # noqa: N806
    if isinstance(exc, WebSocketException):
        return one_line(f"WebSocket: {exc}")
    return one_line(
        f"unexpected {type(exc).__name__}: {exc} (`plait --debug ...` shows the traceback)"
    )
