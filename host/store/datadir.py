"""The data dir: private, used by one host at a time, and telling clients where that host is.

Layout of ``<data_dir>``::

    plait.db    the run store (SQLite, WAL)
    cache/      the tool-result cache (diskcache)
    token       the per-launch token, 0600
    host.lock   held (flock) by the host using the dir; the kernel drops it if the host dies
    host.json   the running host's URL and pid, for ``plait call`` / ``plait runs``

Two hosts on one store would both resume the same unfinished runs, so the second one is
refused with :class:`DataDirLocked`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from plait.errors import DataDirLocked

__all__ = [
    "TOKEN_FILE",
    "DataDirLock",
    "ensure_private_dir",
    "read_host_info",
    "remove_host_info",
    "write_host_info",
    "write_private",
]

LOCK_FILE = "host.lock"
HOST_FILE = "host.json"
TOKEN_FILE = "token"
"""The per-launch token, mode 0600."""


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700, and tighten it if it already exists."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by this user only (created 0600, never wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


class DataDirLock:
    """An exclusive, non-blocking ``flock`` on ``<data_dir>/host.lock``."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`DataDirLocked` naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()  # its pid, see below
            os.close(fd)
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise DataDirLocked(
                str(self.path.parent),
                f"another plait host{pid} is using it; "
                "stop it, talk to it with --url, or use another --data-dir",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        """Let the next host in."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def held(data_dir: Path) -> bool:
        """Whether a host is using ``data_dir`` right now."""
        path = data_dir / LOCK_FILE
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


def write_host_info(data_dir: Path, **info: Any) -> None:
    """Tell local clients where the host listens (``host.json``, 0600)."""
    write_private(data_dir / HOST_FILE, json.dumps({"pid": os.getpid(), **info}))


def read_host_info(data_dir: Path) -> dict[str, Any] | None:
    """What :func:`write_host_info` wrote, if the file is there and readable."""
    try:
        data = json.loads((data_dir / HOST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_host_info(data_dir: Path) -> None:
    """The host stopped listening."""
    with contextlib.suppress(OSError):
        (data_dir / HOST_FILE).unlink()
