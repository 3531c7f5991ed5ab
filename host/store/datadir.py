"""The data dir: private, used by one host at a time, and telling clients where that host is.

Layout of ``<data_dir>``::

    plait.db    the run store (SQLite, WAL)
    cache/      the tool-result cache (diskcache)
    token       the per-launch token, 0600
    host.lock   the pid of the host using the dir, flocked by it
    host.json   the running host's URL and pid, for ``plait call`` / ``plait runs``

Two hosts on one store would both resume the same unfinished runs, so the second one is
refused with :class:`DataDirLocked`. The host holds an exclusive ``flock`` on the data dir
itself (an fd opened on the directory) as well as on ``host.lock``: the directory's lock cannot
be lost by deleting a file in it, and the kernel drops both when the host dies.
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
    """An exclusive, non-blocking ``flock`` on the data dir and on ``<data_dir>/host.lock``.

    The lock on the directory is what keeps a second host out: ``host.lock`` can be deleted
    under a running host (a new file is a new inode, and an flock on it would be granted),
    while no file deleted in the directory undoes the lock on the directory. ``host.lock``
    keeps the holder's pid for the refusal's message, and keeps out a host of an older plait
    that locks only that file.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self._fds: list[int] = []

    def acquire(self) -> None:
        """Take the lock, or raise :class:`DataDirLocked` naming the process that holds it."""
        try:
            self._take(os.open(self.data_dir, os.O_RDONLY | _O_DIRECTORY))
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._take(fd)
        except BlockingIOError:
            self.release()
            raise DataDirLocked(
                str(self.data_dir),
                f"another plait host{_holder(self.data_dir)} is using it; "
                "stop it, talk to it with --url, or use another --data-dir",
            ) from None
        except BaseException:
            self.release()
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())

    def _take(self, fd: int) -> None:
        self._fds.append(fd)  # closed by release() if the flock is refused
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def release(self) -> None:
        """Let the next host in."""
        while self._fds:
            fd = self._fds.pop()
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @staticmethod
    def held(data_dir: Path) -> bool:
        """Whether a host is using ``data_dir`` right now."""
        for path, flags in ((data_dir, _O_DIRECTORY), (data_dir / LOCK_FILE, 0)):
            try:
                fd = os.open(path, os.O_RDONLY | flags)
            except OSError:
                continue  # no such dir or file: nobody holds a lock on it
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            finally:
                os.close(fd)
        return False


_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def _holder(data_dir: Path) -> str:
    """`` (pid N)`` of the host using ``data_dir``, from ``host.lock`` or else ``host.json``."""
    holder = ""
    try:
        with open(data_dir / LOCK_FILE, "rb") as fh:
            holder = fh.read(32).decode(errors="replace").strip()
    except OSError:
        holder = str((read_host_info(data_dir) or {}).get("pid", ""))
    return f" (pid {holder})" if holder.isdigit() else ""


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
