"""The composition root: :class:`Host` (the whole host), the one-shot front door, and the
builder every one of them goes through."""

from plait.host.app import Host, tune_gc
from plait.host.compose import build_engine, tool_cache
from plait.host.oneshot import load, run, run_sync, stream

__all__ = ["Host", "build_engine", "load", "run", "run_sync", "stream", "tool_cache", "tune_gc"]
