"""Where runs are kept: the durable SQLite store, the memory store, and the data dir."""

from plait.store.memory import MemoryStore
from plait.store.sqlite import SqliteStore

__all__ = ["MemoryStore", "SqliteStore"]
