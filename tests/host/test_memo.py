"""Tests of plait.services.cache, the tool-result cache."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import time

import anyio
import diskcache
import pytest

from plait.services.cache import DEFAULT_SIZE_LIMIT, SafeJSONDisk, ToolCache, cache_key


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def tool_cache(tmp_path):
    cache = ToolCache(tmp_path / "cache")
    yield cache
    cache.close()


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _quarantined(tmp_path) -> list:
    return sorted(tmp_path.glob("cache.corrupt-*"))


# -- keys (item 44) ----------------------------------------------------------------------------


def test_key_is_canonical_in_argument_order():
    a = cache_key("git.diff", "1.0", {"path": "x", "opts": {"a": 1, "b": [1, 2]}})
    b = cache_key("git.diff", "1.0", {"opts": {"b": [1, 2], "a": 1}, "path": "x"})
    assert a == b
    assert len(a) == 64 and int(a, 16) >= 0


def test_key_changes_with_version_args_tool_and_extra():
    base = cache_key("git.diff", "1.0", {"path": "x"})
    assert cache_key("git.diff", "1.1", {"path": "x"}) != base
    assert cache_key("git.diff", "1.0", {"path": "y"}) != base
    assert cache_key("git.log", "1.0", {"path": "x"}) != base
    assert cache_key("git.diff", "1.0", {"path": "x"}, extra="k") != base


def test_key_refuses_non_json_args():
    with pytest.raises(TypeError):
        cache_key("t", "1", {"x": object()})
    with pytest.raises(ValueError):
        cache_key("t", "1", {"x": float("nan")})


def test_other_version_misses(tool_cache):
    tool_cache.set_sync(cache_key("t", "1", {"a": 1}), "v1")
    assert tool_cache.get_sync(cache_key("t", "1", {"a": 1})) == (True, "v1")
    assert tool_cache.get_sync(cache_key("t", "2", {"a": 1})) == (False, None)
    assert tool_cache.get_sync(cache_key("t", "1", {"a": 2})) == (False, None)


# -- values ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_round_trip_of_nested_json(tool_cache):
    value = {"s": "é ☃", "n": [1, 2.5, -3, None, True], "d": {"e": {"f": []}}, "big": "x" * 50_000}
    await tool_cache.set("k", value)
    assert await tool_cache.get("k") == (True, value)
    await tool_cache.set("null", None)  # a cached null is a hit, not a miss
    assert await tool_cache.get("null") == (True, None)
    assert (tool_cache.stats.hits, tool_cache.stats.misses) == (2, 0)


@pytest.mark.anyio
async def test_ttl_expires(tool_cache):
    await tool_cache.set("k", 1, ttl=0.2)
    assert await tool_cache.get("k") == (True, 1)
    await anyio.sleep(0.4)
    assert await tool_cache.get("k") == (False, None)


@pytest.mark.parametrize("value", [{1, 2}, object(), (1, 2), {1: "a"}, float("nan"), "\ud800"])
def test_value_that_is_not_json_is_not_stored(tool_cache, caplog, value):
    caplog.set_level(logging.DEBUG, logger="plait.services.cache")
    tool_cache.set_sync("k", value)
    assert tool_cache.get_sync("k") == (False, None)
    assert "not caching" in caplog.text
    assert tool_cache.stats.errors == 0


def test_disabled_cache_always_misses():
    cache = ToolCache(None)
    assert not cache.enabled
    cache.open()
    cache.set_sync("k", 1)
    assert cache.get_sync("k") == (False, None)
    cache.close()


@pytest.mark.anyio
async def test_disabled_cache_always_misses_async():
    cache = ToolCache(None)
    await cache.set("k", 1)
    assert await cache.get("k") == (False, None)
    assert cache.stats.misses == 1


def test_closed_cache_misses_until_reopened(tool_cache):
    tool_cache.set_sync("k", 1)
    tool_cache.close()
    assert not tool_cache.enabled
    assert tool_cache.get_sync("k") == (False, None)
    tool_cache.open()
    assert tool_cache.get_sync("k") == (True, 1)


def test_default_size_limit_is_one_gib():
    assert DEFAULT_SIZE_LIMIT == 1 << 30


# -- directory (item 43) ---------------------------------------------------------------------


def test_directory_is_created_0700(tmp_path):
    cache = ToolCache(tmp_path / "a" / "cache")
    cache.open()
    assert cache.enabled
    assert _mode(tmp_path / "a" / "cache") == 0o700
    cache.close()


def test_world_writable_directory_of_ours_is_narrowed_to_0700(tmp_path, caplog):
    path = tmp_path / "cache"
    path.mkdir()
    path.chmod(0o777)
    cache = ToolCache(path)
    cache.open()
    assert cache.enabled
    assert _mode(path) == 0o700
    assert "had mode 0o777" in caplog.text
    cache.close()


def test_directory_of_another_user_disables_the_cache(tmp_path, caplog, monkeypatch):
    path = tmp_path / "cache"
    path.mkdir()
    path.chmod(0o777)
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
    else:  # cannot give a directory away: pretend to be someone else
        monkeypatch.setattr(os, "geteuid", lambda: os.stat(path).st_uid + 1)
    cache = ToolCache(path)
    cache.open()
    assert not cache.enabled
    assert cache.get_sync("k") == (False, None)
    cache.set_sync("k", 1)
    assert not (path / "cache.db").exists()
    assert _mode(path) == 0o777  # someone else's directory is not ours to fix
    assert str(path) in caplog.text and "owned by uid" in caplog.text
    cache.close()


def test_path_that_is_a_file_disables_the_cache(tmp_path, caplog):
    (tmp_path / "cache").write_text("not a directory")
    cache = ToolCache(tmp_path / "cache")
    assert cache.get_sync("k") == (False, None)
    assert not cache.enabled
    assert str(tmp_path / "cache") in caplog.text and "disabled" in caplog.text
    cache.close()


# -- pickle safety (item 42) -----------------------------------------------------------------


class _Payload:
    """Unpickling this runs code that creates ``sentinel``."""

    def __init__(self, sentinel, pad: int) -> None:
        self.sentinel, self.pad = str(sentinel), pad

    def __reduce__(self):
        return (exec, (f"open({self.sentinel!r}, 'w').close()  # {'x' * self.pad}",))


@pytest.mark.parametrize("pad", [0, 100_000], ids=["in-database", "in-value-file"])
def test_planted_pickle_is_never_unpickled(tmp_path, caplog, pad):
    path, sentinel = tmp_path / "cache", tmp_path / "pwned"
    with diskcache.Cache(str(path)) as plain:  # the default Disk pickles
        plain.set("planted", _Payload(sentinel, pad))
        plain.set("control", _Payload(sentinel, pad))
    cache = ToolCache(path)
    assert cache.get_sync("planted") == (False, None)
    assert not sentinel.exists()
    assert "refusing to unpickle entry" in caplog.text
    assert cache.stats.errors == 1
    assert cache.get_sync("planted") == (False, None)  # the row was deleted
    assert cache.stats.errors == 1
    cache.set_sync("planted", "safe")
    assert cache.get_sync("planted") == (True, "safe")
    cache.close()
    assert not sentinel.exists()
    with diskcache.Cache(str(path)) as plain:  # control: the payload is live
        plain.get("control")
    assert sentinel.exists()


def test_planted_value_file_outside_the_cache_is_neither_read_nor_deleted(tmp_path, caplog):
    victim = tmp_path / "victim.json"
    victim.write_text('"secret"')
    cache = ToolCache(tmp_path / "cache")
    cache.set_sync("k", "v")
    with sqlite3.connect(tmp_path / "cache" / "cache.db") as con:
        con.execute("UPDATE Cache SET mode = 2, filename = ?, value = NULL", (str(victim),))
    con.close()
    assert cache.get_sync("k") == (False, None)
    assert "outside the cache layout" in caplog.text
    assert victim.read_text() == '"secret"'
    cache.close()


def test_planted_disk_setting_cannot_move_the_value_files(tmp_path):
    cache = ToolCache(tmp_path / "cache")
    cache.set_sync("k", "v")
    with sqlite3.connect(tmp_path / "cache" / "cache.db") as con:
        con.execute("INSERT INTO Settings VALUES ('disk__directory', ?)", (str(tmp_path),))
    con.close()
    cache.close()
    cache.open()
    assert cache.enabled
    assert cache.get_sync("k") == (False, None)  # the planted database was quarantined
    cache.set_sync("k", "fresh")
    assert cache.get_sync("k") == (True, "fresh")
    assert len(_quarantined(tmp_path)) == 1
    cache.close()


# -- corruption (item 45) --------------------------------------------------------------------


def _fill(cache: ToolCache, count: int = 300) -> None:
    for i in range(count):
        cache.set_sync(f"k{i}", {"i": i, "pad": "y" * 1000})


def _garbage(db) -> None:
    db.write_bytes(b"this is not a database" * 500)


def _truncate(db) -> None:
    with open(db, "r+b") as f:
        f.truncate(os.path.getsize(db) // 2)


@pytest.mark.parametrize("damage", [_garbage, _truncate], ids=["garbage", "truncated"])
def test_corrupt_database_at_open_is_quarantined(tmp_path, caplog, damage):
    cache = ToolCache(tmp_path / "cache")
    _fill(cache)
    cache.close()
    damage(tmp_path / "cache" / "cache.db")
    cache.open()
    assert cache.get_sync("k1") == (False, None)
    cache.set_sync("k1", "again")
    assert cache.get_sync("k1") == (True, "again")
    assert cache.enabled
    assert len(_quarantined(tmp_path)) == 1
    assert "corrupt" in caplog.text
    assert _mode(tmp_path / "cache") == 0o700
    cache.close()


@pytest.mark.parametrize("damage", [_garbage, _truncate], ids=["garbage", "truncated"])
def test_corruption_while_open_is_a_miss_and_rebuilt(tmp_path, caplog, damage):
    cache = ToolCache(tmp_path / "cache")
    cache.open()
    _fill(cache)
    damage(tmp_path / "cache" / "cache.db")
    hits = [cache.get_sync(f"k{i}")[0] for i in (0, 150, 299)]
    assert not all(hits)  # whatever part survived may hit; the rest misses without raising
    cache.set_sync("new", [1, 2])
    assert cache.get_sync("new") == (True, [1, 2])
    assert cache.enabled
    assert len(_quarantined(tmp_path)) == 1
    assert "corrupt" in caplog.text
    cache.close()


def test_truncated_value_file_is_a_miss_and_dropped(tmp_path, caplog):
    cache = ToolCache(tmp_path / "cache")
    cache.set_sync("k", "z" * 100_000)
    (value_file,) = (tmp_path / "cache").rglob("*.val")
    _truncate(value_file)
    assert cache.get_sync("k") == (False, None)
    assert "unreadable JSON" in caplog.text
    assert not value_file.exists()
    cache.set_sync("k", "z")
    assert cache.get_sync("k") == (True, "z")
    assert _quarantined(tmp_path) == []
    cache.close()


def test_quarantine_keeps_only_the_newest_few(tmp_path):
    for i in range(5):
        (tmp_path / f"cache.corrupt-2000010{i}T000000").mkdir()
    (tmp_path / "cache").mkdir()
    _garbage(tmp_path / "cache" / "cache.db")
    cache = ToolCache(tmp_path / "cache")
    cache.open()
    assert cache.enabled
    names = [p.name for p in _quarantined(tmp_path)]
    assert len(names) == 3 and "cache.corrupt-20000104T000000" in names
    cache.close()


def test_deleted_directory_is_recreated(tmp_path):
    cache = ToolCache(tmp_path / "cache")
    cache.set_sync("k", 1)
    for p in sorted((tmp_path / "cache").iterdir()):
        p.unlink()
    (tmp_path / "cache").rmdir()
    assert cache.get_sync("k") == (False, None)
    cache.set_sync("k", 2)
    assert cache.get_sync("k") == (True, 2)
    cache.close()


# -- size limit (item 46) --------------------------------------------------------------------


def test_size_limit_evicts_oldest_entries(tmp_path):
    # An empty database is 32 KiB, and diskcache evicts ten entries at a time; leave room for
    # a few dozen 4 KiB values so the newest ones stay.
    limit = 256 * 1024
    cache = ToolCache(tmp_path / "cache", size_limit=limit)
    for i in range(200):
        cache.set_sync(f"k{i}", "v" * 4096)
    assert cache.get_sync("k0") == (False, None)
    assert cache.get_sync("k199") == (True, "v" * 4096)
    cache.close()
    with diskcache.Cache(str(tmp_path / "cache"), disk=SafeJSONDisk) as plain:
        assert plain.volume() <= limit
        assert 0 < len(plain) < 64
    on_disk = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert on_disk < 2 * limit  # 200 values would take 1.6 MB unbounded


# -- concurrency (item 47) -------------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_tasks_share_one_cache(tool_cache):
    async def worker(n: int) -> None:
        for i in range(20):
            key = f"k{i % 5}"
            hit, value = await tool_cache.get(key)
            assert not hit or value == {"key": key}
            await tool_cache.set(key, {"key": key})

    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(worker, n)
    assert tool_cache.stats.errors == 0
    assert tool_cache.stats.hits > 0


def test_lock_contention_is_a_miss_not_an_error(tool_cache, caplog):
    tool_cache.set_sync("k", "old")
    with sqlite3.connect(tool_cache.directory + "/cache.db", isolation_level=None) as other:
        other.execute("BEGIN IMMEDIATE")  # another host holding the write lock
        started = time.monotonic()
        tool_cache.set_sync("k", "new")
        assert time.monotonic() - started < 10
        assert "busy" in caplog.text
        assert tool_cache.get_sync("k") == (True, "old")  # WAL readers are not blocked
        other.execute("ROLLBACK")
    other.close()
    tool_cache.set_sync("k", "new")
    assert tool_cache.get_sync("k") == (True, "new")
    assert tool_cache.stats.errors == 1


_HAMMER = """
import json, random, sys, time
from plait.services.cache import ToolCache

cache = ToolCache(sys.argv[1], size_limit=1 << 20)
cache.open()
ops, deadline = 0, time.monotonic() + 1.0
while time.monotonic() < deadline:
    key = "k%d" % random.randrange(40)
    hit, value = cache.get_sync(key)
    if hit and value["key"] != key:
        raise SystemExit("wrong value under " + key)
    cache.set_sync(key, {"key": key, "pad": "x" * random.choice((10, 40_000))})
    ops += 1
cache.close()
print(json.dumps({"ops": ops, "hits": cache.stats.hits, "errors": cache.stats.errors}))
"""


def test_two_processes_share_a_directory(tmp_path):
    path = tmp_path / "cache"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _HAMMER, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [proc.communicate(timeout=60) for proc in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        report = json.loads(out)
        assert report["ops"] > 10
    assert _quarantined(tmp_path) == []
    with sqlite3.connect(path / "cache.db") as con:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    con.close()
    cache = ToolCache(path)
    cache.set_sync("after", 1)
    assert cache.get_sync("after") == (True, 1)
    cache.close()
