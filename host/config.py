"""Host configuration: one TOML file, every key optional, ``PLAIT_<SECTION>_<KEY>`` overrides.

``plait serve`` and ``plait run`` read the same file. Environment values are parsed as JSON when
they parse (``PLAIT_LIMITS_MAX_BATCH=50`` is a number), else taken as strings.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from plait.errors import ConfigError

if TYPE_CHECKING:
    from plait.plugins.manager import PluginManager

__all__ = [
    "CacheSettings",
    "HostConfig",
    "HostSettings",
    "Limits",
    "PluginSettings",
    "StoreSettings",
    "ToolSettings",
    "load_config",
]

ENV_PREFIX = "PLAIT_"
"""Environment variables ``PLAIT_<SECTION>_<KEY>`` override the file."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HostSettings(_Section):
    """Where the host listens and keeps its data."""

    bind: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    data_dir: str = ".plait"
    """SQLite store, tool cache and token live here; ``:memory:`` keeps runs in memory."""
    workflows: str | None = None
    """A folder of workflow files registered at start."""
    allowed_origins: list[str] = Field(default_factory=list)
    """Browser origins allowed to connect (``http://localhost:3000``); none by default."""
    allow_remote: bool = False
    """Must be true to bind anything but a loopback address."""


class Limits(_Section):
    """Every bound the host enforces; each is reported by ``host/info``."""

    max_message_bytes: int = Field(1 << 20, ge=1024)
    max_batch: int = Field(100, ge=1)
    max_connections: int = Field(32, ge=1)
    max_inflight: int = Field(64, ge=1)
    """Requests one connection may have in flight; more get -32006 busy."""
    batch_concurrency: int = Field(8, ge=1)
    """Items of one batch run at once."""
    max_nesting: int = Field(64, ge=2)
    """Deepest JSON nesting accepted in a message."""
    send_queue_messages: int = Field(1000, ge=10)
    """Messages queued for a client before it is dropped as not reading."""
    send_queue_bytes: int = Field(8 << 20, ge=1 << 16)
    max_concurrent_steps: int = Field(256, ge=1)
    """Steps doing work (tools, agents) at once across all runs."""
    default_step_timeout: float = Field(300.0, gt=0)
    """Seconds per attempt for tool and agent steps that set no ``timeout``."""
    max_step_timeout: float = Field(86400.0, gt=0)
    """No step's attempt may run longer than this, whatever it asks for."""
    max_loop_iterations: int = Field(100_000, ge=1)
    max_workflow_steps: int = Field(10_000, ge=1)
    """Steps in one definition, nested bodies included."""
    max_run_depth: int = Field(16, ge=1)
    """Nesting of sub-workflow runs, so a workflow that calls itself ends."""
    compiled_cache_steps: int = Field(100_000, ge=1)
    """Steps of compiled workflow versions kept in memory (each step of a compiled version
    holds a few KB); the least recently used versions past it compile again when next used."""
    max_child_runs: int = Field(1000, ge=1)
    """Sub-workflow runs one top-level run may create, its children's children included, so a
    workflow whose sub-workflows fan out ends with an error instead of filling the host."""
    max_live_runs: int = Field(50_000, ge=1)
    """Runs in flight at once on this host (child runs included); a start past it is refused
    with "busy, retry later"."""
    stall_seconds: float = Field(0.5, gt=0)
    """A turn of the event loop longer than this is a stall: logged with what caused it and
    reported by ``host/info`` (the loop watchdog)."""
    max_crash_restarts: int = Field(3, ge=1)
    """Host crashes in a row a step attempt may be in flight for before it is quarantined
    (failed, not run again). One crash is not enough to blame a step: a kill -9 under load
    finds many steps in flight, and they run again."""
    template_output_bytes: int = Field(1 << 20, ge=1024)
    template_seconds: float = Field(0.25, gt=0)
    """Wall time of one render. A render runs on the event loop, so this is also how long a
    heavy template can keep other connections waiting."""


class CacheSettings(_Section):
    """The tool-result cache under ``<data_dir>/cache``."""

    enabled: bool = True
    size_limit: int = Field(1 << 30, ge=1 << 16)


class StoreSettings(_Section):
    """The run store: SQLite at ``<data_dir>/plait.db``."""

    durable: bool = True
    """False keeps runs in memory only, as ``data_dir = ":memory:"`` does, but still keeps the
    cache and token in the data dir (for tests and benchmarks)."""
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    """``FULL``: a commit survives power loss. ``NORMAL``: fewer fsyncs; still safe against a
    crash of the host process, but a power loss may undo the last commits."""
    busy_timeout: float = Field(5.0, ge=5.0)
    """Seconds a write waits for another connection's lock before it is retried."""
    check_on_start: bool = True
    """Run SQLite's ``quick_check`` at start, so a damaged file stops the host at once."""
    max_pending: int = Field(50_000, ge=100)
    """Changes waiting for the disk before new steps wait for it (backpressure)."""
    keep_finished: int = Field(10_000, ge=0)
    """Without the durable store: how many finished runs (child runs count) stay in memory for
    ``runs/get``, ``runs/events`` and ``runs/list``; the longest-finished are forgotten first,
    so a long-running host does not grow without end. The durable store keeps every run on
    disk and drops finished ones from memory at once."""


class ToolSettings(_Section):
    """Per-tool overrides: ``[tools."git.diff"]``."""

    max_concurrency: int | None = Field(None, ge=1)
    cacheable: bool | None = None
    cache_ttl: float | None = Field(None, gt=0)


class PluginSettings(_Section):
    """Which plugins load."""

    disabled: list[str] = Field(default_factory=list)
    """Plugin names not to load: built-in modules (``plait.steps.delay``) or entry points."""
    entry_points: bool = True
    """Load third-party plugins from the ``plait`` entry-point group."""
    modules: list[str] = Field(default_factory=list)
    """Plugin modules to import by name, for plugins that are not installed packages (the
    module must be importable: on ``PYTHONPATH`` or next to the config)."""


class EnvSettings(_Section):
    """Environment variables templates may read as ``env.NAME``."""

    allow: list[str] = Field(default_factory=list)


class HostConfig(_Section):
    """The whole configuration."""

    host: HostSettings = Field(default_factory=HostSettings)
    limits: Limits = Field(default_factory=Limits)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    plugins: PluginSettings = Field(default_factory=PluginSettings)
    env: EnvSettings = Field(default_factory=EnvSettings)
    tools: dict[str, ToolSettings] = Field(default_factory=dict)
    agents: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Named agents: ``[agents.reviewer] provider = "openai"`` plus the provider's own keys."""
    mcp_servers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """MCP servers whose tools the host offers as ``<server>.<tool>`` (see ``plait.services.mcp``):
    ``command``/``args``/``env``/``cwd`` or ``url``/``headers``, ``timeout``, ..."""

    def plugin_manager(self, extra: Iterable[object] = ()) -> PluginManager:
        """A plugin manager loading what ``[plugins]`` says, plus ``extra`` plugin objects."""
        from plait.plugins.manager import create_plugin_manager

        return create_plugin_manager(
            entry_points=self.plugins.entry_points,
            blocked=self.plugins.disabled,
            modules=self.plugins.modules,
            extra=extra,
        )

    @property
    def memory_only(self) -> bool:
        """Whether nothing at all is kept on disk (``data_dir = ":memory:"``)."""
        return self.host.data_dir == ":memory:"

    @property
    def durable(self) -> bool:
        """Whether runs are kept in the SQLite store (survive a restart)."""
        return not self.memory_only and self.store.durable


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> HostConfig:
    """Read the config file (if any), apply ``PLAIT_*`` variables, then ``overrides``.

    Without ``path``, ``plait.toml`` in the working directory is read when it exists.

    Raises:
        ConfigError: naming the file and the key that is wrong.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is None and Path("plait.toml").is_file():
        path = "plait.toml"
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    _apply_env(data, os.environ if environ is None else environ)
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        data.setdefault(section, {})[key] = value
    try:
        return HostConfig.model_validate(data)
    except ValidationError as exc:
        from plait.plugins.types import validation_problems

        raise ConfigError(
            f"invalid config ({source}): {'; '.join(validation_problems(exc))}"
        ) from None


_SECTIONS = ("host", "limits", "cache", "store", "plugins", "env")


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        for section in _SECTIONS:
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1 :]
                try:
                    value: Any = json.loads(raw)
                except ValueError:
                    value = raw
                data.setdefault(section, {})[key] = value
                break
