"""The ``plait`` command: run, validate, graph, schema, serve, call, mcp, runs and plugins.

Each sub-command is one small function; ``main`` only parses arguments and maps errors to exit
codes (0 ok, 1 the run or check failed, 2 bad usage or input).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import queue
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import anyio
import anyio.abc

from plait.cli.debug import add_debug_parser
from plait.cli.dlq import add_dlq_parser
from plait.cli.failures import CommandFailed, explain, rpc_error_line
from plait.cli.loops import LOOPS, backend_options, running_loop
from plait.cli.progress import ProgressView
from plait.cli.runs import add_runs_parser
from plait.cli.schedules import add_schedules_parser
from plait.cli.settings import config_from_args
from plait.cli.stats import add_stats_parser
from plait.config import HostConfig, load_config
from plait.definition.graph import render_graph
from plait.definition.schema import workflow_schema
from plait.engine.engine import Engine
from plait.errors import ConfigError, DefinitionError, InputsInvalid, PlaitError
from plait.host.compose import build_engine, tool_cache
from plait.store.datadir import TOKEN_FILE, ensure_private_dir, remove_host_info

if TYPE_CHECKING:
    from plait.host.app import Host
    from plait.host.cluster import Cluster

__all__ = ["main"]

log = logging.getLogger("plait.cli")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``plait`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.debug:  # a plugin's traceback is the host's log, or --debug's (not `plait run`'s)
        logging.getLogger("plait.failures").setLevel(logging.CRITICAL)
    try:
        return int(args.func(args) or 0)
    except (DefinitionError, InputsInvalid, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)  # a definition error lists every problem
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, never a traceback
        log.debug("plait %s failed", args.command, exc_info=True)
        print(f"error: {explain(exc, args)}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:  # a KeyboardInterrupt out of a task group
        if group.subgroup(KeyboardInterrupt) is not None:
            print("interrupted", file=sys.stderr)
            return 130
        raise


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plait",
        description="plait: workflows of agents and tools, run durably and watched live.",
        epilog="Errors are one line on stderr with a non-zero exit code: 2 for bad usage or "
        "input, 1 otherwise (130 when interrupted).",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="log at DEBUG level, and the Python traceback of an error (`plait --debug CMD ...`)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a workflow file in this process")
    p.add_argument("file")
    p.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an input; VALUE is parsed as JSON when it parses, else a string",
    )
    p.add_argument("--inputs-json", metavar="FILE", help="a JSON file of inputs")
    p.add_argument("--config", help="host config file (default: ./plait.toml if present)")
    p.add_argument(
        "--workflows",
        metavar="DIR",
        help="folder of workflows that `workflow:` steps may call (default: the file's own folder)",
    )
    p.add_argument("--json", action="store_true", help="print the finished run as JSON")
    p.add_argument("--no-cache", action="store_true", help="do not use the tool cache")
    _add_loop_argument(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check workflow files and report every problem")
    p.add_argument("files", nargs="+")
    p.add_argument("--config")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("graph", help="draw a workflow's step graph")
    p.add_argument("file")
    p.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")
    p.add_argument("--config")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("schema", help="print the JSON Schema of workflow files")
    p.add_argument("--config")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("serve", help="run the host: JSON-RPC over WebSocket, or stdio for MCP")
    p.add_argument("--host", dest="bind", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--stdio", action="store_true", help="serve one MCP client on stdin/stdout")
    p.add_argument("--config")
    p.add_argument("--data-dir", help="store, cache and token folder; :memory: for none")
    p.add_argument("--workflows", metavar="DIR", help="register every workflow file in DIR")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow binding a non-loopback address (the token is then the only protection)",
    )
    p.add_argument(
        "--log-level",
        type=str.lower,
        choices=("debug", "info", "warning", "error"),
        help="what the host logs on stderr (default: [log] level of the config, else info; "
        "warning leaves out the run and connection lines)",
    )
    _add_loop_argument(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("call", help="send one JSON-RPC request to a running host")
    p.add_argument("method")
    p.add_argument("params", nargs="?", default=None, help="params as a JSON object")
    p.add_argument("--url", default=None, help="default ws://127.0.0.1:<port>/rpc")
    p.add_argument("--token", default=None, help="default: $PLAIT_TOKEN or <data_dir>/token")
    p.add_argument("--config")
    p.add_argument("--data-dir")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=cmd_call)

    p = sub.add_parser("mcp", help="bridge an IDE's stdio MCP client to a running host")
    p.add_argument("--url", default=None, help="default ws://127.0.0.1:<port>/rpc")
    p.add_argument("--token", default=None, help="default: $PLAIT_TOKEN or <data_dir>/token")
    p.add_argument("--config")
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_mcp)

    add_runs_parser(sub)
    add_schedules_parser(sub)
    add_debug_parser(sub)
    add_dlq_parser(sub)
    add_stats_parser(sub)

    p = sub.add_parser("plugins", help="list loaded plugins and those that failed")
    p.add_argument("--config")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)
    return parser


def _add_loop_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--loop",
        choices=LOOPS,
        default="auto",
        help="the event loop (default auto: uvloop when installed, `pip install 'plait[fast]'`, "
        "else asyncio)",
    )


def _engine(config: HostConfig, *, cache: bool = False) -> Engine:
    folder = None
    try:
        if cache and config.cache.enabled and not config.memory_only:
            folder = ensure_private_dir(Path(config.host.data_dir)) / "cache"
        tool_cache_ = tool_cache(config, folder)
        tool_cache_.open()
    except (OSError, sqlite3.Error) as exc:  # a read-only or unwritable data dir
        why = getattr(exc, "strerror", None) or exc
        raise CommandFailed(
            f"cannot keep the tool cache in {config.host.data_dir}: {why}; make it writable, "
            "set another data_dir in the config (or PLAIT_HOST_DATA_DIR), or pass --no-cache"
        ) from exc
    return build_engine(config, config.plugin_manager(), cache=tool_cache_)


def parse_inputs(
    pairs: Sequence[str], inputs_json: str | None, schema: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``--inputs-json`` then ``--input k=v``: JSON when it parses, else a string; and always
    the string as typed when the inputs' schema says the field is a string (``--input
    pr=0042`` is ``"0042"`` for a string field, not the number 42)."""
    properties = (schema or {}).get("properties") or {}
    inputs: dict[str, Any] = {}
    if inputs_json:
        try:
            loaded = json.loads(Path(inputs_json).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read --inputs-json {inputs_json}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--inputs-json {inputs_json} must hold a JSON object")
        inputs.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--input expects KEY=VALUE, got {pair!r}")
        declared = properties.get(key) if isinstance(properties, Mapping) else None
        if isinstance(declared, Mapping) and declared.get("type") == "string":
            inputs[key] = raw
            continue
        try:
            inputs[key] = json.loads(raw)
        except ValueError:
            inputs[key] = raw
    return inputs


def cmd_run(args: argparse.Namespace) -> int:
    """Run a workflow with a live display; exit 1 when the run does not succeed."""
    loop = backend_options(args.loop)  # uvloop asked for and missing: one line, exit 2
    config = load_config(args.config)
    engine = _engine(config, cache=not args.no_cache)
    try:
        compiled = engine.register(args.file)
        inputs = parse_inputs(args.input, args.inputs_json, compiled.definition.inputs)
        folder = args.workflows or config.host.workflows or str(Path(args.file).parent)
        _register_siblings(engine, Path(folder), Path(args.file))
        view = ProgressView(compiled, json_mode=args.json)
        run = anyio.run(_run_and_show, engine, compiled, inputs, view, backend_options=loop)
    finally:
        engine.cache.close()
    if args.json:
        print(json.dumps(run.to_dict(), indent=2, default=str))
    else:
        view.summary(run)
    return 0 if run.status == "succeeded" else 1


async def _run_and_show(
    engine: Engine, compiled: Any, inputs: dict[str, Any], view: ProgressView
) -> Any:
    async with engine:
        run = await engine.start(compiled, inputs)
        with view:
            async for event in run.follow():
                view.update(run, event)
        return run


def _register_siblings(engine: Engine, folder: Path, main_file: Path) -> None:
    """Make the other workflows of a folder callable by ``workflow:`` steps."""
    if not folder.is_dir():
        raise ConfigError(f"--workflows {folder} is not a folder")
    for path in sorted(folder.iterdir()):
        if path.suffix in (".yaml", ".yml", ".json") and path.resolve() != main_file.resolve():
            try:
                engine.register(str(path))
            except DefinitionError as exc:
                logging.getLogger("plait.cli.commands").debug("not loading %s: %s", path, exc)


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate files; print every problem with its path and line."""
    engine = _engine(load_config(args.config))
    failed = 0
    for file in args.files:
        try:
            compiled = engine.compile(file)
        except DefinitionError as exc:
            failed += 1
            print(f"{file}: invalid")
            for issue in exc.issues:
                line = f":{issue.line}" if issue.line else ""
                print(f"  {file}{line}: {issue.path or '<workflow>'}: {issue.message}")
            continue
        print(f"{file}: ok ({compiled.name}, {compiled.size} steps)")
    return 1 if failed else 0


def cmd_graph(args: argparse.Namespace) -> int:
    """Print the step graph as Mermaid or Graphviz dot."""
    engine = _engine(load_config(args.config))
    print(render_graph(engine.compile(args.file), args.format))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of workflow files for the installed step types."""
    engine = _engine(load_config(args.config))
    print(json.dumps(workflow_schema(engine.registries.step_types), indent=2))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    """List plugins with what they contribute, and the ones that failed to load."""
    config = load_config(args.config)
    pm = config.plugin_manager()
    infos = pm.info()
    if args.json:
        print(
            json.dumps(
                {
                    "plugins": [i.to_dict() for i in infos],
                    "failed": [f.to_dict() for f in pm.failures],
                },
                indent=2,
            )
        )
        return 1 if pm.failures else 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="plait plugins")
    for col in ("plugin", "version", "step types", "tools", "agent providers", "executors"):
        table.add_column(col)
    for info in infos:
        table.add_row(
            info.name + (" (built-in)" if info.builtin else ""),
            info.version or "",
            ", ".join(info.step_types),
            ", ".join(info.tools),
            ", ".join(info.agent_providers),
            ", ".join(info.executor_providers),
        )
    console = Console()
    console.print(table)
    for failure in pm.failures:
        where = f" [{failure.entry_point}]" if failure.entry_point else ""
        console.print(
            f"[red]failed[/red] {failure.plugin}{where} at {failure.stage}: {failure.error}",
            markup=True,
            highlight=False,
        )
    return 1 if pm.failures else 0


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""What stops ``plait serve``: Ctrl-C, and what service managers send."""
STOP_SECONDS = 10.0
"""A stop that takes longer than this ends the process at once (exit code 1), saying so."""


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the host until stopped: WebSocket by default, stdio with ``--stdio``.

    SIGINT and SIGTERM stop it alike (exit code 0): the listener closes, ``host.json`` is
    removed, runs in flight are left as a crash leaves them (the next start resumes them) and
    what is queued for the store is committed. A stop that takes longer than
    :data:`STOP_SECONDS`, or a second signal, ends the process at once (exit code 1) with one
    line on stderr saying what was not written.
    """
    from plait.host.app import Host, tune_gc
    from plait.host.logs import configure_logging

    loop = backend_options(args.loop)  # uvloop asked for and missing: one line, exit 2
    config = config_from_args(args)  # logs go to stderr: on --stdio, stdout is the protocol
    # The host's log: --log-level, else --debug, else [log] level (info by default).
    level = args.log_level or ("debug" if args.debug else config.log.level)
    configure_logging(level, config.log.format)
    stop = _Stop(STOP_SECONDS)

    async def main() -> None:
        stop.serving = serving = anyio.CancelScope()
        failed: list[Exception] = []
        async with anyio.create_task_group() as signals:
            await signals.start(stop.watch)  # SIGINT and SIGTERM are ours from here on
            try:
                async with Host(config) as host:
                    stop.host = host
                    with serving:  # cancelled by the first signal
                        await _serve(host, args, tune_gc)
            except Exception as exc:  # noqa: BLE001 - raised below as itself, not in a group
                failed.append(exc)
                if args.stdio and stop.host is None and isinstance(exc, PlaitError):
                    # An IDE shows an error answer; a closed pipe it shows as a crash.
                    with serving:
                        await _refuse_stdio(f"plait could not start: {exc}")
            finally:
                signals.cancel_scope.cancel()
        if failed:
            raise failed[0]

    try:
        anyio.run(main, backend_options=loop)
    except KeyboardInterrupt:  # before the signals were ours
        pass
    finally:
        stop.after()
    return 0


async def _refuse_stdio(reason: str) -> None:
    """Answer every request of the stdio client with ``reason`` until its stdin closes."""
    lines = _StdinLines(sys.stdin.fileno())
    try:
        while line := await anyio.to_thread.run_sync(lines.readline, abandon_on_cancel=True):
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and "id" in message and "method" in message:
                answer = {
                    "jsonrpc": "2.0",
                    "id": message["id"],
                    "error": {"code": -32603, "message": reason},
                }
                sys.stdout.buffer.write(json.dumps(answer).encode() + b"\n")
                sys.stdout.buffer.flush()
    finally:
        lines.close()


async def _serve(host: Host, args: argparse.Namespace, tune_gc: Callable[[], None]) -> None:
    tune_gc()  # this process is the host: everything loaded so far stays
    log.debug("event loop: %s", running_loop())
    if args.stdio:
        lines = _StdinLines(sys.stdin.fileno())
        try:
            await host.serve_stdio(stdin=cast(IO[bytes], lines))  # readline() is enough
        finally:
            lines.close()
        return

    listening = False

    def ready(url: str, token: str) -> None:
        nonlocal listening
        listening = True
        where = host.data_dir / "token" if host.data_dir else "not saved (:memory:)"
        print(
            f"plait {host.version} listening on {url} (event loop: {running_loop()})\n"
            f"token: {token}\n(token file: {where})\n"
            f"web view: {host.web.link()}  (works once, for 10 minutes; `plait debug RUN` "
            "makes another)",
            file=sys.stderr,
            flush=True,
        )

    try:
        await host.serve_websocket(ready=ready)
    except OSError as exc:
        if listening:
            raise
        # Not listening: the token issued for this launch is of no use, leave none behind.
        if host.data_dir is not None:
            with contextlib.suppress(OSError):
                (host.data_dir / TOKEN_FILE).unlink(missing_ok=True)
        raise CommandFailed(_listen_failure(host, exc)) from exc


def _listen_failure(host: Host, exc: OSError) -> str:
    settings = host.config.host
    where = f"{settings.bind}:{settings.port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the port is already in use; stop what uses it, "
            "or choose another with --port (0 picks a free one)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"cannot listen on {where}: not permitted; choose a port above 1023 with --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: no such address on this machine; check --host"
    return f"cannot listen on {where}: {exc.strerror or exc}"


class _Stop:
    """How ``plait serve`` stops: gracefully on the first signal, within a bound."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.serving: anyio.CancelScope | None = None
        """Cancelled by the first signal (before it is entered too: then it ends at once);
        made in the event loop."""
        self.host: Host | None = None
        self.signalled = False

    async def watch(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Take SIGINT and SIGTERM: the first stops serving, a second ends the process.

        A host among several on one PostgreSQL store drains first on SIGTERM (what a
        service manager or an orchestrator sends before replacing it): it takes no more runs
        over and lets its runs end for up to ``[cluster] drain_seconds``; the rest are handed
        over to the other hosts as it stops. SIGINT stops at once, as ever.
        """
        with anyio.open_signal_receiver(*STOP_SIGNALS) as received:
            task_status.started()
            async with anyio.create_task_group() as tg:
                async for signum in received:
                    name = signal.Signals(signum).name
                    if self.signalled:
                        self.force(f"{name} again while stopping")
                    self.signalled = True
                    cluster = getattr(self.host, "cluster", None)
                    drain = cluster.settings.drain_seconds if cluster is not None else 0.0
                    drain = drain if signum == signal.SIGTERM else 0.0
                    print(
                        f"plait: {name}: {'draining, then ' if drain else ''}stopping",
                        file=sys.stderr,
                        flush=True,
                    )
                    bound = self.seconds + drain
                    deadline = threading.Timer(
                        bound, self.force, (f"not stopped within {bound:g}s",)
                    )
                    deadline.daemon = True  # a stop that ends in time leaves it behind
                    deadline.start()
                    tg.start_soon(self._stop_serving, cluster if drain else None)

    async def _stop_serving(self, cluster: Cluster | None) -> None:
        if cluster is not None:
            await cluster.drain()
        if self.serving is not None:
            self.serving.cancel()

    def after(self) -> None:
        """Once the event loop is gone, a signal still ends the process (the interpreter may
        be waiting for a thread of a plugin's at exit)."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, lambda n, _: self.force(f"{signal.Signals(n).name} at exit"))

    def force(self, why: str) -> None:
        """End the process now: runs are left as a crash leaves them, resumed next start."""
        line = f"plait: {why}; exiting now{self._unwritten()}\n"
        with contextlib.suppress(OSError):  # straight to the fd: sys.stderr may be mid-write
            os.write(sys.stderr.fileno(), line.encode(errors="replace"))
        data_dir = getattr(self.host, "data_dir", None)
        if data_dir is not None:
            remove_host_info(data_dir)
        os._exit(1)

    def _unwritten(self) -> str:
        engine = getattr(self.host, "engine", None)
        store = getattr(engine, "store", None)
        pending = getattr(store, "pending", 0)
        if not pending:
            return ""
        where = getattr(store, "path", "the store")
        error = getattr(store, "last_error", None)
        why = f", last error: {error}" if error else ""
        return f": {pending} change(s) not written to {where}{why} (runs resume from the rest)"


class _StdinLines:
    """stdin, read by a daemon thread of its own, straight from the file descriptor.

    The stdio transport reads each line on a worker thread, abandoned when the host stops; a
    worker thread is no daemon, so the interpreter would wait at exit for a line that an idle
    client may never send. Here the read that can block runs on a daemon thread, on the bare
    descriptor (a daemon thread inside ``sys.stdin`` would hold its lock as the interpreter
    closes it, which aborts), and the worker only waits for its result, which :meth:`close`
    ends as the end of input.
    """

    CHUNK = 1 << 16

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()
        self._asked: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._lines: queue.SimpleQueue[bytes | BaseException] = queue.SimpleQueue()
        self._reader: threading.Thread | None = None
        self._closed = False

    def readline(self, limit: int = -1) -> bytes:
        """The next line with its newline, at most ``limit`` bytes of it; ``b""`` at the end."""
        if self._closed:
            return b""
        if self._reader is None:
            self._reader = threading.Thread(target=self._read, name="plait stdin", daemon=True)
            self._reader.start()
        self._asked.put(limit)
        line = self._lines.get()
        if isinstance(line, BaseException):
            raise line
        return line

    def close(self) -> None:
        """End of input, for a read waiting now and for every later one."""
        self._closed = True
        self._lines.put(b"")

    def _read(self) -> None:
        while True:
            limit = self._asked.get()
            try:
                self._lines.put(self._line(limit))
            except BaseException as exc:  # noqa: BLE001 - raised by the reader in turn
                self._lines.put(exc)

    def _line(self, limit: int) -> bytes:
        buffer, searched = self._buffer, 0
        while True:
            end = buffer.find(b"\n", searched)
            if end >= 0 and (limit < 0 or end < limit):
                size = end + 1
                break
            if limit >= 0 and len(buffer) >= limit:
                size = limit
                break
            searched = len(buffer)
            chunk = os.read(self._fd, self.CHUNK)
            if not chunk:  # end of input: what is left, then b""
                size = len(buffer)
                break
            buffer += chunk
        line = bytes(buffer[:size])
        del buffer[:size]
        return line


def _client_target(args: argparse.Namespace) -> tuple[str, str]:
    from plait.rpc.client import host_target

    return host_target(config_from_args(args), args.url, args.token)


def cmd_call(args: argparse.Namespace) -> int:
    """Send one request and print the result (exit 1 when the answer is an error)."""
    from plait.rpc.client import call
    from plait.rpc.errors import RpcError

    url, token = _client_target(args)
    try:
        params = json.loads(args.params) if args.params else {}
    except ValueError as exc:
        raise ConfigError(f"params are not JSON: {exc}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"params must be a JSON object, got {type(params).__name__}")
    try:
        result = anyio.run(lambda: call(url, token, args.method, params, timeout=args.timeout))
    except RpcError as exc:  # the host's answer: one line (an unreachable host: see main)
        print(f"error: {rpc_error_line(exc)}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    """Bridge stdin/stdout (an IDE's MCP client) to a running host."""
    from plait.rpc.bridge import bridge

    # Where the host is, read again before each connection: a restarted host has a new token.
    anyio.run(lambda: bridge(lambda: _client_target(args)))  # unreachable at first: see main
    return 0
