"""The host's log: one handler on stderr, text or JSON lines, and the run lines.

``plait serve`` used to log only warnings, so a run, a connection or a refused token left no
trace, and neither did the traceback of a plugin's exception. This module sets up what a host
log needs (see docs/logging.md):

- :func:`configure_logging`: one handler on **stderr** (never stdout: on ``plait serve --stdio``
  stdout is the MCP channel), readable one-liners or one JSON object per line. The level applies
  to plait's own loggers; other libraries stay at WARNING unless the level is DEBUG, so an
  INFO log is plait's lines and not every HTTP request an agent provider makes.
- :func:`run_lines`: an engine listener writing one line when a run starts (or is resumed
  after a restart) and one when it ends. It is told every event of every run, so it costs one
  set lookup per event and formats nothing unless the ``plait.runs`` logger is enabled for
  INFO (``level = "warning"`` turns run lines off).

The structured fields of a line (``run_id``, ``workflow``, ``peer``, ``correlation_id``, ...)
are passed as ``extra=``: the JSON format writes each as a field of its own, the text format
leaves them out (the messages name what matters in words).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import IO, Any, Literal

from plait.engine.engine import Engine
from plait.rpc.transports.websocket import protocol_log
from plait.state.runs import TERMINAL_EVENTS, Event, Run

__all__ = [
    "LEVELS",
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "configure_logging",
    "run_lines",
]

LogFormat = Literal["text", "json"]

LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
"""The levels ``--log-level`` and ``[log] level`` accept."""

run_log = logging.getLogger("plait.runs")
"""Where the run lines go: ``run ... started`` and ``run ... succeeded|failed|cancelled``."""

_RECORD_FIELDS = frozenset(
    [*logging.LogRecord("", 0, "", 0, "", (), None).__dict__, "message", "asctime", "taskName"]
)
"""The attributes every log record has; whatever else a record carries came as ``extra=``."""


def _timestamp(record: logging.LogRecord) -> str:
    """The record's time in UTC, ISO 8601 with milliseconds: one form in both formats, sortable
    and free of the machine's time zone."""
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-12-03T06:51:12.123Z INFO plait.runs: run r-... started (workflow hello v1)``,
    the traceback (if any) on the lines after it."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, the record's
    structured fields, and ``traceback`` (the whole text, newlines escaped) when it has one.

    A field that is not JSON is written as its ``str``; a field named like one of the four
    fixed keys does not replace it.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and key not in out:
                out[key] = value
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            out["traceback"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


_installed: logging.Handler | None = None


def configure_logging(
    level: str | int, fmt: LogFormat = "text", stream: IO[str] | None = None
) -> logging.Handler:
    """Send log records to ``stream`` (stderr by default) in format ``fmt``, at ``level``.

    Replaces the root logger's handlers (``logging.basicConfig``'s among them), so it can be
    called again with a level or format known only once the config is read. ``level`` is a name
    of :data:`LEVELS` or a ``logging`` number; plait's loggers get it, the rest of the process
    stays at WARNING unless it is DEBUG. websockets' own trace (``plait.ws.protocol``, which
    repeats the connection lines without the peer) shows only at DEBUG.
    """
    global _installed
    number = LEVELS[level] if isinstance(level, str) else level
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if old is _installed:
            old.close()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if number <= logging.DEBUG else max(number, logging.WARNING))
    logging.getLogger("plait").setLevel(number)
    logging.getLogger("plait.failures").setLevel(logging.NOTSET)  # the CLI mutes it elsewhere
    protocol_log.setLevel(logging.DEBUG if number <= logging.DEBUG else logging.WARNING)
    _installed = handler
    return handler


_RUN_LINES = frozenset({"run.started", "run.recovered", *TERMINAL_EVENTS})
"""The event types that make a run line; every other event costs one lookup here."""


def run_lines(engine: Engine) -> Callable[[Event], None]:
    """An engine listener that logs the start and the end of each run on ``plait.runs``.

    Told each event once it is kept (before the engine forgets a finished run), so the run is
    still in ``engine.runs`` for its workflow and times.
    """
    runs = engine.runs

    def listen(event: Event) -> None:
        if event.type in _RUN_LINES and run_log.isEnabledFor(logging.INFO):
            run = runs.get(event.run_id)
            if run is not None:
                _run_line(run, event)

    return listen


def _run_line(run: Run, event: Event) -> None:
    fields: dict[str, Any] = {
        "run_id": run.id,
        "workflow": run.workflow,
        "version": run.version,
        "event": event.type,
    }
    child = ""
    if run.parent_id is not None:
        fields["parent_id"] = run.parent_id
        child = f", child of {run.parent_id}"
    where = f"workflow {run.workflow} v{run.version}{child}"
    if event.type == "run.started":
        run_log.info("run %s started (%s)", run.id, where, extra=fields)
        return
    if event.type == "run.recovered":
        fields["status"] = event.data.get("status")
        run_log.info(
            "run %s recovered after a restart, %s (%s)",
            run.id,
            fields["status"],
            where,
            extra=fields,
        )
        return
    status = event.type[4:]
    fields["status"] = status
    began = run.started_at
    duration = None if began is None else round(max(0.0, event.ts - began), 3)
    fields["duration"] = duration
    took = "" if duration is None else f" in {duration:.3f} s"
    error = run.error or event.data.get("error")
    why = ""
    if isinstance(error, dict) and error.get("message"):
        message = str(error["message"]).split("\n", 1)[0]
        fields["error"] = message if len(message) <= 500 else message[:500] + "…"
        why = f": {fields['error']}"
        if error.get("correlationId"):
            fields["correlation_id"] = error["correlationId"]
    run_log.info("run %s %s%s (%s)%s", run.id, status, took, where, why, extra=fields)
