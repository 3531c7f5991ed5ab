"""Tool-result memoization: a JSON-only, self-healing ``diskcache`` store.

A step with ``cache:`` (or a tool cached by default) looks its result up here before calling the
tool. The cache is an optimisation, never a dependency, so whatever goes wrong in it shows up
as a miss and a log line, never as a failed step (docs/reliability.md §42-§47):

* Values are JSON. :class:`SafeJSONDisk` replaces diskcache's pickle serializer and refuses to
  load a pickled row, so a payload planted in the database cannot run code.
* The directory is ``0700`` and ours; one owned by another user disables the cache.
* A corrupt database is moved aside to ``<dir>.corrupt-<timestamp>`` and a fresh one created.
* Lock contention with another host process is a miss after a one-second busy timeout.

Each blocking call opens and closes its own SQLite connection in the thread that runs it:
diskcache keeps connections per thread, and anyio's worker threads come and go, so holding them
would leak connections nobody can close. One idle "anchor" connection stays open from open() to
close() so that closing the last per-call connection does not checkpoint and delete the WAL
every time; a lookup then costs about half a millisecond and a write about one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, final

import anyio.to_thread
import diskcache
from diskcache.core import DBNAME, MODE_BINARY, MODE_PICKLE, MODE_RAW, MODE_TEXT, UNKNOWN

__all__ = [
    "DEFAULT_SIZE_LIMIT",
    "CacheStats",
    "SafeJSONDisk",
    "ToolCache",
    "cache_key",
]

logger = logging.getLogger("plait.services.cache")

DEFAULT_SIZE_LIMIT: Final[int] = 1 << 30
"""Default bound on the cache's size on disk (1 GiB); past it the oldest entries are evicted."""

_LOCK_TIMEOUT: Final[float] = 1.0
"""SQLite busy timeout in seconds: a write lock held longer by another process makes the call a
miss or a skipped write instead of stalling the step."""

_MIN_FILE_SIZE: Final[int] = 1 << 15
"""Encoded values at least this large go to value files rather than into the database."""

_KEEP_QUARANTINED: Final[int] = 3
"""How many ``<dir>.corrupt-*`` directories to keep for inspection; older ones are deleted so a
cache that keeps breaking cannot fill the disk."""

_CORRUPT_CODES: Final = frozenset({11, 26})
"""SQLite's primary result codes SQLITE_CORRUPT and SQLITE_NOTADB."""

_VALUE_FILE: Final = re.compile(r"[0-9a-f]{2}[/\\][0-9a-f]{2}[/\\][0-9a-f]{28}\.val\Z")
"""The only value-file names diskcache generates; any other name in a row was planted."""

_SETTINGS: Final[dict[str, Any]] = {
    **{k: v for k, v in diskcache.DEFAULT_SETTINGS.items() if k.startswith("sqlite_")},
    "eviction_policy": "least-recently-stored",
    "cull_limit": 10,
    "statistics": 0,
    "tag_index": 0,
    "disk_min_file_size": _MIN_FILE_SIZE,
}
"""Every diskcache setting, passed at each open so that rows planted in the database's Settings
table cannot, say, turn eviction off: diskcache writes these over them."""

_MISSING: Final = object()
"""Default for lookups, distinct from a cached JSON ``null``."""


class _UnsafeEntry(Exception):
    """A row or setting that would run code or reach outside the cache directory."""


class _CorruptEntry(Exception):
    """A row whose stored bytes are not the JSON this module writes."""


class _NotJSON(Exception):
    """A value that does not survive a JSON round trip, so a hit would change the result."""


class SafeJSONDisk(diskcache.Disk):
    """A diskcache serializer that speaks JSON only and never unpickles.

    diskcache's default ``Disk`` pickles whatever is not a str, bytes or number and unpickles
    whatever it finds in the database, which turns write access to the cache into code
    execution. Here keys are raw text, values are UTF-8 JSON (small ones inside the database,
    large ones in value files), and pickled rows, foreign file names and settings that would
    move the value directory are refused.
    """

    _SETTABLE: ClassVar[frozenset[str]] = frozenset({"min_file_size", "pickle_protocol"})

    def __init__(self, directory: str, min_file_size: int = _MIN_FILE_SIZE, **_: Any) -> None:
        """Take the directory and file threshold; other ``disk_*`` settings are ignored."""
        super().__init__(directory, min_file_size=min_file_size)

    def __setattr__(self, name: str, value: Any) -> None:
        """Refuse settings from the database that would point value files elsewhere.

        diskcache copies every ``disk_*`` row of its Settings table onto this object, so a
        planted ``disk__directory`` would otherwise make reads and deletions escape the cache.
        """
        if name not in self._SETTABLE and (name != "_directory" or "_directory" in self.__dict__):
            raise _UnsafeEntry(f"refusing disk setting {name!r} from the cache database")
        super().__setattr__(name, value)

    def put(self, key: Any) -> tuple[Any, bool]:
        """Store a key as raw text; plait's keys are hex digests, so nothing else is needed."""
        if type(key) is not str:
            raise TypeError(f"cache keys are str, not {type(key).__name__}")
        return key, True

    def get(self, key: Any, raw: bool) -> Any:
        """Return a stored key, refusing pickled ones (only a foreign writer makes them)."""
        if not raw:
            raise _UnsafeEntry("refusing to unpickle a cache key")
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple[int, int, Any, Any]:
        """Encode a value as JSON bytes, which diskcache keeps in the database or a file."""
        if read:
            raise TypeError("SafeJSONDisk stores JSON values, not streams")
        stored: tuple[int, int, Any, Any] = super().store(_encode(value), False, key=key)
        return stored

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        """Decode a stored value, refusing pickles and anything this class did not write."""
        if mode == MODE_PICKLE:
            raise _UnsafeEntry("refusing to unpickle entry")
        if read:
            raise TypeError("SafeJSONDisk returns decoded values, not streams")
        if mode not in (MODE_RAW, MODE_BINARY, MODE_TEXT):
            raise _CorruptEntry(f"unknown storage mode {mode!r}")
        if mode != MODE_RAW and not (isinstance(filename, str) and _VALUE_FILE.match(filename)):
            raise _UnsafeEntry(f"refusing value file {filename!r} outside the cache layout")
        # An OSError (value file gone) propagates: diskcache reads it as a concurrent delete.
        data = super().fetch(mode, filename, value, False)
        if not isinstance(data, bytes | str):
            raise _CorruptEntry(f"a raw {type(data).__name__} where JSON was expected")
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise _CorruptEntry(f"unreadable JSON ({exc})") from None

    def remove(self, file_path: Any) -> None:
        """Delete a value file, but only one with a name diskcache could have generated.

        Rows name their files, and eviction deletes them, so a planted row naming
        ``/home/me/notes.txt`` must not make the cache delete that file.
        """
        if isinstance(file_path, str) and _VALUE_FILE.match(file_path):
            super().remove(file_path)
        else:
            logger.warning("tool cache: not deleting %r, not a value file of the cache", file_path)


class _Cache(diskcache.Cache):
    """A ``diskcache.Cache`` that closes its connection when opening it fails.

    Opening a corrupt database raises half-way through ``__init__``, and the connection it had
    opened would otherwise be left for the garbage collector (a ResourceWarning from 3.13).
    """

    def __init__(self, directory: str, **settings: Any) -> None:
        try:
            super().__init__(directory, **settings)
        except BaseException:
            _release(self)
            raise


@dataclass(slots=True)
class CacheStats:
    """Counters of one :class:`ToolCache`, for diagnostics and tests."""

    hits: int = 0
    """Lookups that returned a stored value."""
    misses: int = 0
    """Lookups that returned nothing, including every lookup that failed."""
    errors: int = 0
    """Lookups and writes that failed: unsafe or corrupt rows, lock timeouts, database errors."""


def cache_key(tool: str, version: str, args: Mapping[str, Any], extra: str | None = None) -> str:
    """Return the canonical cache key of one tool call.

    The key hashes the canonical JSON of the tool's name, its version and its arguments, so the
    same arguments in any key order hit the same entry and a new tool version misses.

    Args:
        tool: The namespaced tool name, e.g. ``git.diff``.
        version: The tool's version; changing it invalidates every entry of the tool.
        args: The call's arguments.
        extra: The rendered ``cache.key`` of the step, if it has one.

    Returns:
        A 64-character hex SHA-256 digest.

    Raises:
        TypeError: ``args`` hold something that is not JSON (such a call cannot be cached).
        ValueError: ``args`` hold NaN or an infinity.
    """
    document = {"tool": tool, "version": version, "args": dict(args), "key": extra}
    text = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


_State = Literal["new", "open", "closed", "disabled"]


@final
class ToolCache:
    """A tool-result cache in one directory that never fails its caller.

    Every problem (an unsafe directory, corruption, a planted pickle, lock contention, a value
    that is not JSON) becomes a miss or a skipped write plus a log line. The cache opens on first
    use or in :meth:`open`; an unsafe directory disables it for the life of the object.

    Attributes:
        stats: Hit, miss and error counters.
    """

    def __init__(
        self, directory: str | os.PathLike[str] | None, *, size_limit: int = DEFAULT_SIZE_LIMIT
    ) -> None:
        """Remember where the cache lives; nothing touches the disk until it is used.

        Args:
            directory: The cache directory, or ``None`` for a disabled cache (always a miss).
            size_limit: Bound on the size on disk, in bytes; the oldest entries go past it.
        """
        self._path = None if directory is None else os.path.abspath(os.path.expanduser(directory))
        self._size_limit = size_limit
        self._lock = threading.RLock()
        self._cache: diskcache.Cache | None = None
        self._anchor: sqlite3.Connection | None = None
        self._generation = 0
        self._state: _State = "disabled" if directory is None else "new"
        self.stats = CacheStats()

    @property
    def directory(self) -> str | None:
        """The absolute cache directory, or ``None`` when none was given."""
        return self._path

    @property
    def enabled(self) -> bool:
        """Whether lookups can hit: a directory was given, accepted, and not closed."""
        return self._state in ("new", "open")

    def open(self) -> None:
        """Create or check the directory and open the database now rather than on first use.

        Never raises: an unsafe directory or a database that cannot be opened or rebuilt
        disables the cache with a warning (see :attr:`enabled`).
        """
        with self._lock:
            if self._state in ("new", "closed"):
                self._cache = self._open_locked()

    def close(self) -> None:
        """Stop using the cache; later lookups miss until :meth:`open` is called again."""
        with self._lock:
            cache, self._cache = self._cache, None
            if self._state != "disabled":
                self._state = "closed"
            self._drop_anchor()
        if cache is not None:
            cache.close()

    async def get(self, key: str) -> tuple[bool, Any]:
        """Look a key up without blocking the event loop; see :meth:`get_sync`."""
        if not self.enabled:
            self._count("misses")
            return False, None
        return await anyio.to_thread.run_sync(self.get_sync, key)

    async def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        """Store a value without blocking the event loop; see :meth:`set_sync`."""
        if self.enabled:
            await anyio.to_thread.run_sync(lambda: self.set_sync(key, value, ttl=ttl))

    def get_sync(self, key: str) -> tuple[bool, Any]:
        """Look a key up, blocking; every failure is a miss.

        Returns:
            ``(True, value)`` on a hit, ``(False, None)`` otherwise.
        """
        acquired = self._acquire()
        if acquired is None:
            self._count("misses")
            return False, None
        cache, generation = acquired
        try:
            value = cache.get(key, default=_MISSING, retry=False)
        except (_UnsafeEntry, _CorruptEntry) as exc:
            self._count("misses", "errors")
            logger.warning("tool cache %s: %s %s; deleting it", self._path, exc, key)
            with contextlib.suppress(Exception):
                cache.delete(key, retry=False)
            return False, None
        except Exception as exc:
            self._count("misses", "errors")
            self._failed("miss: lookup failed for", key, exc, generation)
            return False, None
        finally:
            _release(cache)
        if value is _MISSING:
            self._count("misses")
            return False, None
        self._count("hits")
        return True, value

    def set_sync(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        """Store a value, blocking; a value that is not JSON or any failure skips the write.

        Args:
            key: A key from :func:`cache_key`.
            value: A JSON value. Values that would not come back equal (tuples, non-str dict
                keys, NaN, sets, objects) are not cached, so a hit always equals a fresh call.
            ttl: Seconds until the entry expires; ``None`` keeps it until evicted.
        """
        if ttl is not None and not ttl > 0:
            logger.debug("tool cache: not caching %s with ttl %r", key, ttl)
            return
        acquired = self._acquire()
        if acquired is None:
            return
        cache, generation = acquired
        try:
            cache.set(key, value, expire=ttl, retry=False)
        except _NotJSON as exc:
            logger.debug("tool cache: not caching %s: %s", key, exc)
        except Exception as exc:
            self._count("errors")
            self._failed("write skipped for", key, exc, generation)
        finally:
            _release(cache)

    # -- internals -------------------------------------------------------------------------

    def _count(self, *names: str) -> None:
        with self._lock:
            for name in names:
                setattr(self.stats, name, getattr(self.stats, name) + 1)

    def _acquire(self) -> tuple[diskcache.Cache, int] | None:
        """Return the open cache and its generation, opening it on first use."""
        with self._lock:
            if self._state == "new":
                self._cache = self._open_locked()
            if self._cache is None:
                return None
            return self._cache, self._generation

    def _open_locked(self) -> diskcache.Cache | None:
        """Open the cache, quarantining a corrupt database once; disable it if that fails."""
        path = self._path
        assert path is not None
        if not _prepare_directory(path):
            self._disable()
            return None
        try:
            cache = self._connect(path)
        except Exception as exc:
            if not (isinstance(exc, _UnsafeEntry) or _is_corruption(exc)):
                logger.warning("tool cache %s cannot be opened: %s", path, _describe(exc))
                self._disable()
                return None
            logger.warning("tool cache %s is corrupt: %s", path, _describe(exc))
            if not _quarantine(path) or not _prepare_directory(path):
                self._disable()
                return None
            try:
                cache = self._connect(path)
            except Exception as exc:
                logger.warning("tool cache %s cannot be rebuilt: %s", path, _describe(exc))
                self._disable()
                return None
        self._state = "open"
        self._drop_anchor()
        with contextlib.suppress(sqlite3.Error):  # only a speed-up: fine without it
            self._anchor = sqlite3.connect(os.path.join(path, DBNAME), check_same_thread=False)
            self._anchor.execute("SELECT count(*) FROM Settings").fetchall()
        return cache

    def _connect(self, path: str) -> diskcache.Cache:
        settings = {**_SETTINGS, "size_limit": self._size_limit}
        cache = _Cache(path, timeout=_LOCK_TIMEOUT, disk=SafeJSONDisk, **settings)
        _release(cache)  # see the module docstring: no connection outlives a call
        return cache

    def _disable(self) -> None:
        logger.warning("tool cache %s disabled; tool calls will not be cached", self._path)
        self._state = "disabled"
        self._cache = None
        self._drop_anchor()

    def _drop_anchor(self) -> None:
        anchor, self._anchor = self._anchor, None
        if anchor is not None:
            with contextlib.suppress(sqlite3.Error):
                anchor.close()

    def _failed(self, action: str, key: str, exc: Exception, generation: int) -> None:
        """Log a failed call, and rebuild the cache when the database itself is broken."""
        logger.warning("tool cache %s: %s %s (%s)", self._path, action, key, _describe(exc))
        assert self._path is not None
        if _is_corruption(exc) or not os.path.isdir(self._path):
            self._recover(generation)

    def _recover(self, generation: int) -> None:
        with self._lock:
            path = self._path
            if generation != self._generation or self._state != "open" or path is None:
                return  # another thread rebuilt or closed it meanwhile
            if os.path.isdir(path) and not _still_corrupt(path):
                return  # another process rebuilt it meanwhile
            self._generation += 1
            self._drop_anchor()
            if self._cache is not None:
                self._cache.close()
            if os.path.isdir(path) and not _quarantine(path):
                self._disable()
                return
            self._cache = self._open_locked()


def _encode(value: Any) -> bytes:
    """Return a value's JSON bytes, or raise :class:`_NotJSON` if a hit would not equal it."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        data = text.encode("utf-8")
        same = json.loads(text) == value
    except Exception as exc:  # TypeError, ValueError, RecursionError, a hostile __eq__
        raise _NotJSON(f"not JSON: {_describe(exc)}") from None
    if not same:
        raise _NotJSON("changes in a JSON round trip (a tuple or a non-str dict key?)")
    return data


def _release(cache: diskcache.Cache) -> None:
    """Close the calling thread's connection to ``cache``, if it has one."""
    with contextlib.suppress(Exception):
        cache.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, diskcache.Timeout):
        return "busy: another process held the lock past the timeout"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _is_corruption(exc: BaseException) -> bool:
    """Tell a broken database from a busy or unreachable one, which must not be quarantined."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    corrupt_code = code is not None and code & 0xFF in _CORRUPT_CODES
    return corrupt_code or type(exc) is sqlite3.DatabaseError


def _still_corrupt(path: str) -> bool:
    """Re-check the database at ``path`` with a fresh connection.

    Two hosts sharing the directory may both see the corruption; the second must not
    quarantine the fresh database the first has just created.
    """
    try:
        with contextlib.closing(
            sqlite3.connect(os.path.join(path, DBNAME), timeout=_LOCK_TIMEOUT)
        ) as con:
            rows = con.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error as exc:
        return _is_corruption(exc)
    return rows != [("ok",)]


def _prepare_directory(path: str) -> bool:
    """Create the directory 0700, or check an existing one; False means do not use it.

    A cache another user can write could feed this host forged tool results, so a directory
    owned by someone else is refused and a group- or world-accessible one of ours is narrowed.
    """
    existed = os.path.lexists(path)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.stat(path)
    except OSError as exc:
        logger.warning("tool cache %s cannot be created: %s", path, _describe(exc))
        return False
    if not stat.S_ISDIR(info.st_mode):
        logger.warning("tool cache %s is not a directory", path)
        return False
    if not hasattr(os, "geteuid"):
        return True  # no POSIX owners or modes to check (Windows)
    if info.st_uid != os.geteuid():
        logger.warning(
            "tool cache %s is owned by uid %d, not by this user (uid %d); refusing to use it",
            path,
            info.st_uid,
            os.geteuid(),
        )
        return False
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError as exc:
            logger.warning("tool cache %s has mode %#o and cannot be narrowed: %s", path, mode, exc)
            return False
        if existed:
            logger.warning("tool cache %s had mode %#o; changed it to 0o700", path, mode)
    return True


def _quarantine(path: str) -> bool:
    """Move a corrupt cache aside for inspection; False if it can be neither moved nor cleared."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target, n = f"{path}.corrupt-{stamp}", 0
    while os.path.lexists(target):
        n += 1
        target = f"{path}.corrupt-{stamp}-{n}"
    try:
        os.rename(path, target)
    except OSError as exc:  # a mount point, say: clear the database files in place instead
        logger.warning("tool cache %s cannot be moved aside (%s); clearing it", path, exc)
        try:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(path, DBNAME + suffix))
        except OSError as exc:
            logger.warning("tool cache %s cannot be cleared: %s", path, exc)
            return False
        return True
    logger.warning("tool cache %s quarantined as %s; starting a fresh one", path, target)
    _prune_quarantined(path)
    return True


def _prune_quarantined(path: str) -> None:
    parent, base = os.path.split(path)
    with contextlib.suppress(OSError):
        old = sorted(n for n in os.listdir(parent) if n.startswith(f"{base}.corrupt-"))
        for name in old[:-_KEEP_QUARANTINED]:
            full = os.path.join(parent, name)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full, ignore_errors=True)
