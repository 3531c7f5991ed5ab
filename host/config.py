"""Host configuration: one TOML file, every key optional, ``PLAIT_<SECTION>_<KEY>`` overrides.

``plait serve`` and ``plait run`` read the same file. Environment values are parsed as JSON when
they parse (``PLAIT_LIMITS_MAX_BATCH=50`` is a number), else taken as strings.
"""

from __future__ import annotations

import base64
import json
import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from plait.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from plait.plugins.manager import PluginManager

__all__ = [
    "BreakerSettings",
    "CacheSettings",
    "HostConfig",
    "HostSettings",
    "Limits",
    "LogSettings",
    "PluginSettings",
    "StoreSettings",
    "ToolSettings",
    "WebhookPolicy",
    "WebhookSettings",
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
    max_chain_depth: int = Field(8, ge=1)
    """Runs one chain of ``on:`` triggers may start in a row (a run started by a run started
    by ...): past it, the trigger is logged and not followed."""
    chain_catchup_seconds: float = Field(3600.0, ge=0)
    """At start, runs that ended this recently have their ``on:`` triggers looked at again,
    so a trigger a crash interrupted still starts its run (never twice: it has a key)."""
    dlq_keep_days: float = Field(30.0, gt=0)
    """Days a dead-letter entry is kept before it is pruned (at start)."""
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
    """The run store: SQLite at ``<data_dir>/plait.db``, or PostgreSQL at ``url``."""

    url: str | None = Field(None, pattern=r"^postgres(ql)?://")
    """``postgresql://user@host:port/db``: keep runs in PostgreSQL instead of SQLite, which
    lets several hosts share them (see :class:`ClusterSettings`). A password is better given
    in ``PGPASSWORD`` or ``~/.pgpass`` than here."""
    connect_timeout: float = Field(60.0, gt=0)
    """PostgreSQL: seconds to keep trying to reach the database at start (with backoff,
    saying what it waits for) before giving up."""
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


class ClusterSettings(_Section):
    """Several hosts on one PostgreSQL store (``[store] url``): each run is owned by one host,
    whose lease its heartbeat renews; a host that stops renewing loses its runs to the others.
    """

    lease_seconds: float = Field(5.0, ge=1.0)
    """A host that has not renewed its lease for this long is taken for dead: another host
    takes its runs over and resumes them as crash recovery does."""
    heartbeat_seconds: float | None = Field(None, gt=0)
    """Seconds between lease renewals (default: a quarter of ``lease_seconds``)."""
    name: str | None = None
    """How this host is named in the hosts table and the log (default: hostname:pid)."""
    drain_seconds: float = Field(30.0, ge=0)
    """On SIGTERM: seconds to let runs finish before the host hands the rest over."""


class BreakerSettings(_Section):
    """A circuit breaker: ``breaker = {failures = 5, reset_after = 30}`` in a ``[tools."x"]``,
    ``[agents.x]`` or ``[mcp_servers.x]`` table (see ``plait.services.breakers``).

    It opens after ``failures`` failures in a row, or when at least ``min_calls`` calls ended
    in the last ``window`` seconds and the share of them that failed reached ``failure_rate``;
    it stays open ``reset_after`` seconds, then lets ``half_open_calls`` probe calls through:
    a success closes it, a failure opens it again. Without either rule, ``failures = 5``.
    """

    failures: int | None = Field(None, ge=1)
    """Consecutive failures that open it."""
    failure_rate: float | None = Field(None, gt=0, le=1)
    """Share of failed calls in the window (0-1) that opens it."""
    min_calls: int = Field(10, ge=1)
    """Calls the window must hold before ``failure_rate`` is judged."""
    window: float = Field(60.0, gt=0)
    """Seconds of calls the failure rate is taken over (a sliding window)."""
    reset_after: float = Field(30.0, gt=0)
    """Seconds it stays open before letting probe calls through."""
    half_open_calls: int = Field(1, ge=1)
    """Probe calls let through at once while half-open."""
    enabled: bool = True

    @model_validator(mode="after")
    def _a_rule(self) -> BreakerSettings:
        if self.failures is None and self.failure_rate is None:
            self.failures = 5
        return self


class ToolSettings(_Section):
    """Per-tool overrides: ``[tools."git.diff"]``."""

    max_concurrency: int | None = Field(None, ge=1)
    cacheable: bool | None = None
    cache_ttl: float | None = Field(None, gt=0)
    breaker: BreakerSettings | None = None
    """A circuit breaker on the tool's calls (none unless given)."""


class PluginSettings(_Section):
    """Which plugins load."""

    disabled: list[str] = Field(default_factory=list)
    """Plugin names not to load: built-in modules (``plait.steps.delay``) or entry points."""
    entry_points: bool = True
    """Load third-party plugins from the ``plait`` entry-point group."""
    modules: list[str] = Field(default_factory=list)
    """Plugin modules to import by name, for plugins that are not installed packages (the
    module must be importable: on ``PYTHONPATH`` or next to the config)."""


class LogSettings(_Section):
    """The host's log: ``[log]``, read by ``plait serve`` (other commands log warnings only,
    or everything with ``--debug``). See docs/logging.md."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """``info`` writes a line per run start and end and per connection; ``warning`` leaves
    those out; ``debug`` adds everything, the protocol trace included. ``--log-level`` wins."""
    format: Literal["text", "json"] = "text"
    """``text``: readable one-liners. ``json``: one JSON object per line (``ts``, ``level``,
    ``logger``, ``message`` and the line's fields), for a log collector."""

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        """``INFO`` or ``Info`` as ``info``: the case of a level name is not worth an error."""
        return value.lower() if isinstance(value, str) else value


class EnvSettings(_Section):
    """Environment variables templates may read as ``env.NAME``."""

    allow: list[str] = Field(default_factory=list)


WEBHOOK_EVENTS: frozenset[str] = frozenset(
    [
        *(
            f"run.{kind}"
            for kind in "created started paused resumed waiting recovered breakpoint child "
            "signal succeeded failed cancelled".split()
        ),
        *(
            f"step.{kind}"
            for kind in "started retrying cached waiting resumed checkpoint interrupted "
            "quarantined reused succeeded failed skipped cancelled".split()
        ),
    ]
)
"""The event types a webhook subscription may name, beside the families ``run.*`` and
``step.*`` (every event whose type starts with ``run.`` or ``step.``)."""
WEBHOOK_FAMILIES: tuple[str, ...] = ("run.*", "step.*")


def _problem(text: str) -> PydanticCustomError:
    """A validation error whose message is ``text`` as it is (no "Value error," before it)."""
    return PydanticCustomError("webhook", "{problem}", {"problem": text})


def _webhook_url(url: str) -> str:
    if len(url) > 2048 or any(c.isspace() for c in url):
        raise _problem("not a URL (spaces, or longer than 2048 characters)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError as exc:
        raise _problem(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise _problem(f"only http and https URLs can receive webhooks, not {parts.scheme!r}")
    if not parts.hostname:
        raise _problem("the URL names no host")
    if parts.username is not None or parts.password is not None:
        raise _problem("the URL must not carry credentials (user:password@)")
    return url


def _event_pattern(pattern: str) -> str:
    if pattern in WEBHOOK_EVENTS or pattern in WEBHOOK_FAMILIES:
        return pattern
    known = [*WEBHOOK_FAMILIES, *sorted(WEBHOOK_EVENTS)]
    hint = did_you_mean(pattern, known)
    raise _problem(f"unknown event {pattern!r}{hint}; give one of {', '.join(known)}")


def _webhook_secret(secret: str) -> str:
    body = secret.removeprefix("whsec_")
    if body == secret:
        raise _problem("a signing secret is whsec_ followed by the base64 of 24 to 64 random bytes")
    try:
        key = base64.b64decode(body, validate=True)
    except ValueError:
        raise _problem("the part after whsec_ is not base64") from None
    if not 24 <= len(key) <= 64:
        raise _problem(f"the secret holds {len(key)} bytes; give 24 to 64 (Standard Webhooks)")
    return secret


WebhookUrl = Annotated[str, AfterValidator(_webhook_url)]
"""An http(s) URL with a host and no credentials (its address is checked when it is used)."""
EventPattern = Annotated[str, AfterValidator(_event_pattern)]
"""An event type of :data:`WEBHOOK_EVENTS`, or a family: ``run.*``, ``step.*``."""
WebhookSecret = Annotated[str, AfterValidator(_webhook_secret)]
"""A Standard Webhooks signing secret: ``whsec_`` + base64 of 24 to 64 bytes."""
WEBHOOK_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class WebhookSettings(_Section):
    """A webhook subscription of the config file: ``[[webhooks]]`` with an ``id``, or a
    ``[webhooks.<id>]`` table (see ``plait.services.webhooks``)."""

    id: str = Field(pattern=WEBHOOK_ID)
    url: WebhookUrl
    events: list[EventPattern] = Field(min_length=1, max_length=100)
    workflows: list[str] = Field(default_factory=list, max_length=1000)
    """Only runs of these workflows (child runs by their own workflow); every one when empty."""
    secret: WebhookSecret | None = None
    secret_env: str | None = Field(None, min_length=1)
    """The environment variable that holds the secret (read at start), instead of ``secret``."""

    @model_validator(mode="after")
    def _one_secret(self) -> WebhookSettings:
        if (self.secret is None) == (self.secret_env is None):
            raise ValueError("give the signing secret as secret or secret_env (one of them)")
        return self


class WebhookPolicy(_Section):
    """How webhooks are delivered: ``[webhooks_policy]``."""

    allow_private: bool = False
    """Allow targets on private, loopback, link-local (or otherwise not public) addresses: off,
    a subscription cannot make the host reach into the network it runs in."""
    timeout: float = Field(10.0, gt=0, le=300)
    """Seconds one delivery attempt may take, answer included."""
    retry_base: float = Field(10.0, gt=0)
    """Seconds before the first retry; each next one waits twice as long (with jitter)."""
    retry_max: float = Field(3600.0, gt=0)
    """The longest wait between two attempts (``Retry-After`` may ask for up to an hour)."""
    max_attempts: int = Field(12, ge=1, le=100)
    """Attempts per message before it is given up (recorded in the delivery log)."""
    disable_after: int = Field(10, ge=1)
    """Failed attempts in a row, over at least the retry schedule's time for that many, that
    disable a subscription."""
    concurrency: int = Field(8, ge=1, le=256)
    """Deliveries in flight at once (one at a time per subscription)."""


class MetricsSettings(_Section):
    """Prometheus metrics at ``GET /metrics`` on the host's port: ``[metrics]``."""

    enabled: bool = True
    """On by default: a counter or a histogram costs well under a microsecond per step (see
    ``make bench``), and a host nobody can measure is a host nobody can alert on."""
    public: bool = False
    """Serve ``/metrics`` without the token. Only honoured on a loopback bind, where a scraper
    on the same machine is the only one who can reach it; elsewhere the token is required."""


class TracingSettings(_Section):
    """OpenTelemetry traces: ``[tracing]`` (off by default)."""

    enabled: bool = False
    exporter: Literal["otlp", "console"] = "otlp"
    """``otlp``: OTLP over HTTP/protobuf to ``endpoint``; ``console``: spans as JSON on stderr."""
    endpoint: str = Field("http://127.0.0.1:4318/v1/traces", min_length=1)
    """Where OTLP/HTTP spans go (a collector, Jaeger, Tempo...); the full URL with its path."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Sent with every export (an API key of a hosted backend, say)."""
    service_name: str = Field("plait", min_length=1)
    sample_ratio: float = Field(1.0, ge=0, le=1)
    """The share of new traces kept; a trace a client started keeps the client's decision."""
    timeout: float = Field(10.0, gt=0, le=300)
    """Seconds an export may take before its spans are dropped (the host never waits on it)."""


class HostConfig(_Section):
    """The whole configuration."""

    host: HostSettings = Field(default_factory=HostSettings)
    limits: Limits = Field(default_factory=Limits)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    plugins: PluginSettings = Field(default_factory=PluginSettings)
    env: EnvSettings = Field(default_factory=EnvSettings)
    tools: dict[str, ToolSettings] = Field(default_factory=dict)
    agents: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Named agents: ``[agents.reviewer] provider = "openai"`` plus the provider's own keys."""
    mcp_servers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """MCP servers whose tools the host offers as ``<server>.<tool>`` (see ``plait.services.mcp``):
    ``command``/``args``/``env``/``cwd`` or ``url``/``headers``, ``timeout``, ..."""
    executors: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Where heavy tool calls run: ``[executors.dask] address = "tcp://..."``. A table's
    ``provider`` (default: the table's name) picks the plugin that makes it, which checks the
    other keys when the host starts (see ``plait.services.executors``)."""
    webhooks: list[WebhookSettings] = Field(default_factory=list)
    """Webhook subscriptions: ``[[webhooks]]`` entries, or ``[webhooks.<id>]`` tables."""
    webhooks_policy: WebhookPolicy = Field(default_factory=WebhookPolicy)
    log: LogSettings = Field(default_factory=LogSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)

    @field_validator("webhooks", mode="before")
    @classmethod
    def _webhook_tables(cls, value: Any) -> Any:
        """``[webhooks.<id>]`` tables as ``[[webhooks]]`` entries with that id."""
        if isinstance(value, Mapping):
            return [
                {"id": key, **table} if isinstance(table, Mapping) else table
                for key, table in value.items()
            ]
        return value

    @field_validator("webhooks")
    @classmethod
    def _webhook_ids(cls, value: list[WebhookSettings]) -> list[WebhookSettings]:
        seen: set[str] = set()
        for hook in value:
            if hook.id in seen:
                raise ValueError(f"two subscriptions have the id {hook.id!r}")
            seen.add(hook.id)
        return value

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


_SECTIONS = (
    "host",
    "limits",
    "cache",
    "store",
    "plugins",
    "env",
    "webhooks_policy",
    "metrics",
    "tracing",
    "log",
)


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
