"""``plait runs list|show|events|cancel|resume|respond``: runs of a data dir or of a running host.

``plait runs events RUN --follow`` streams a run's events from a running host until the run
ends (``runs/events`` pages the history, then ``runs/subscribe`` from the last one seen).

Where the commands act: ``--url`` names a host; otherwise, when a host holds the data dir
(its lock), they talk to that host (its URL is in ``host.json``, its token in ``token``);
otherwise they open the data dir's store themselves. Offline, ``cancel`` ends a run without
running any more of it, and ``resume`` continues a stopped or paused run in this process to its
end, with the live display of ``plait run``; so does the new run ``rerun`` makes (with no host,
nothing else would run it).

``RUN`` is a run id or its first characters (at least four, naming one run). A data dir that
does not exist is an error naming it, never created by these commands. Offline, an unfinished
run that claims to go on (``pending``, ``running``, ``waiting``) has no host to go on in: its
status is shown with ``(host stopped)`` and what to do, and ``--json`` adds
``"host": "stopped"`` to it (the stored status stays as it is).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from rich.console import Console
from rich.table import Table

from plait.cli.failures import CommandFailed, one_line
from plait.cli.settings import config_from_args, data_dir_origin
from plait.config import HostConfig
from plait.engine.lineage import diff_runs
from plait.errors import ConfigError, InvalidRunState, PlaitError
from plait.state.run_store import parse_cursor
from plait.store.datadir import DataDirLock, read_host_info
from plait.store.postgres import PostgresStore

if TYPE_CHECKING:
    from plait.host.app import Host

__all__ = ["add_runs_parser"]

PIPED_WIDTH = 200
"""The width of tables when stdout is not a terminal (and ``COLUMNS`` does not say)."""
HOST_STOPPED: tuple[str, ...] = ("pending", "running", "waiting")
"""Stored statuses that, with no host holding the data dir, mean the run's host stopped: the
run would go on, but nothing runs it."""


def add_runs_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``plait runs`` and its sub-commands."""
    runs = sub.add_parser(
        "runs", help="list, inspect and control runs (of a data dir, or of a running host)"
    )
    actions = runs.add_subparsers(dest="runs_command", required=True)

    def action(name: str, help: str, *, run_id: bool = True) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help)
        if run_id:
            p.add_argument("run_id", metavar="RUN", help="a run id, or its first characters")
        p.add_argument("--url", help="a running host (default: the one using the data dir)")
        p.add_argument("--token")
        p.add_argument("--config")
        p.add_argument("--data-dir")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=cmd_runs)
        return p

    p = action("list", "runs, newest first", run_id=False)
    p.add_argument("--workflow")
    p.add_argument(
        "--status",
        choices=("pending", "running", "paused", "waiting", "succeeded", "failed", "cancelled"),
    )
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--cursor", help="the next page's cursor, as printed by the last page")
    action("show", "one run: status, outputs, error and every step")
    p = action("events", "a run's events, oldest first")
    p.add_argument("--since", type=int, default=0)
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="from a running host: print events as they come until the run ends "
        "(exit 1 unless it succeeded; --json prints one event per line)",
    )
    action("cancel", "cancel a run")
    action("pause", "pause a run: no new step starts (offline: it stays paused at the next start)")
    action("resume", "resume a paused run (offline: continue a stopped run to its end)")
    p = action("signal", "deliver a signal to a run's wait steps (kept until one takes it)")
    p.add_argument("event", metavar="EVENT")
    p.add_argument("--data", default=None, help="the signal's data, as JSON")
    p = action(
        "respond",
        "answer the question an input step waits for (checked against its schema; offline: "
        "kept for the next start)",
    )
    p.add_argument("step", metavar="STEP", help="the input step's path")
    p.add_argument("--answer", required=True, help="the answer, as JSON")
    p.add_argument("--by", default=None, help="who answers (recorded in input.answered)")
    p = action(
        "rerun",
        "a new run from a run: STEP and what depends on it run again, the other steps that "
        "succeeded keep their results (offline: the new run runs here to its end)",
    )
    p.add_argument("step", metavar="STEP", help="a top-level step id")
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change an input (JSON when it parses, else a string); the others stay the run's",
    )
    p.add_argument("--version", type=int, help="run this version of the workflow")
    p = action("diff", "compare two runs step by step: the first difference, and every one")
    p.add_argument("other_run_id", metavar="OTHER", help="the other run's id, or its start")


def cmd_runs(args: argparse.Namespace) -> int:
    """Dispatch to a running host or to the data dir."""
    from plait.rpc.errors import RpcError

    config = config_from_args(args)
    data_dir = Path(config.host.data_dir)
    if not args.url and not config.memory_only and not data_dir.is_dir():
        # Reading a data dir never makes one: an empty table would hide the wrong directory.
        raise ConfigError(
            f"no plait data dir at {data_dir.absolute()} ({data_dir_origin(args)}): run this "
            "in the project's directory, or pass --data-dir DIR or --config FILE, or --url of "
            "a running host"
        )
    try:
        if args.url or (not config.memory_only and DataDirLock.held(data_dir)):
            if not args.url and read_host_info(data_dir) is None:
                raise CommandFailed(
                    f"the data dir {data_dir} is in use by a plait host that serves no "
                    "WebSocket (`plait serve --stdio`?): ask it through its client, stop it, "
                    "or pass --url"
                )
            if args.runs_command == "events" and args.follow:
                return anyio.run(_follow, args, config)
            result = anyio.run(_remote, args, config)
        else:
            result = anyio.run(_local, args, config)
    except RpcError as exc:
        print(f"error: {one_line(exc.message)}", file=sys.stderr)
        return 1
    # An unreachable host, a refused token, an unwritable data dir: one line from plait.cli.main.
    return _print(args, result)


# -- a running host ----------------------------------------------------------------------------


async def _remote(args: argparse.Namespace, config: HostConfig) -> dict[str, Any]:
    from plait.rpc.client import call, host_target
    from plait.rpc.errors import RpcError

    url, token = host_target(config, args.url, args.token)

    def rpc(method: str, **params: Any) -> Awaitable[Any]:
        return call(url, token, method, {k: v for k, v in params.items() if v is not None})

    command = args.runs_command
    if command == "list":
        return dict(
            await rpc(
                "runs/list",
                workflow=args.workflow,
                status=args.status,
                limit=args.limit,
                cursor=args.cursor,
            )
        )
    if command == "events":
        return dict(await rpc("runs/events", runId=args.run_id, since=args.since, limit=args.limit))
    if command == "signal":
        await rpc("runs/signal", runId=args.run_id, event=args.event, data=_signal_data(args))
        return dict(await rpc("runs/get", runId=args.run_id))
    if command == "respond":
        params = {"runId": args.run_id, "step": args.step, "answer": _answer(args), "by": args.by}
        # Sent as given: a null answer is an answer (``rpc`` leaves out what is None).
        return dict(await call(url, token, "runs/respond", params))
    if command == "diff":
        return dict(await rpc("runs/diff", runId=args.run_id, otherRunId=args.other_run_id))
    if command == "rerun":
        inputs = None
        if args.input:  # changes to the source's inputs: read them, and their schema
            source = (await rpc("runs/get", runId=args.run_id, steps=False))["run"]
            try:
                version = {"name": source["workflow"], "version": source["version"]}
                schema = (await rpc("workflows/get", **version))["workflow"].get("inputs")
            except RpcError:  # deleted since: the values are read without it
                schema = None
            inputs = _changed_inputs(source["inputs"], args.input, schema)
        params = {"runId": args.run_id, "step": args.step, "inputs": inputs}
        new = (await rpc("runs/rerun", **params, version=args.version))["runId"]
        return dict(await rpc("runs/get", runId=new))
    method = {
        "show": "runs/get",
        "cancel": "runs/cancel",
        "pause": "runs/pause",
        "resume": "runs/resume",
    }[command]
    return dict(await rpc(method, runId=args.run_id))


TERMINAL_EVENTS = ("run.succeeded", "run.failed", "run.cancelled")


async def _follow(args: argparse.Namespace, config: HostConfig) -> int:
    """Print a run's events as they come, until its last one; the exit code of its end."""
    from plait.rpc.client import call, host_target, open_connection
    from plait.rpc.errors import RpcError

    url, token = host_target(config, args.url, args.token)
    since = args.since

    def show(event: dict[str, Any]) -> bool:
        """Print one event; whether it ended the run."""
        if args.json:
            print(json.dumps(event), flush=True)
        else:
            _print_events(None, {"events": [event]})
            sys.stdout.flush()
        return event["type"] in TERMINAL_EVENTS

    # The history first, a page at a time: a subscription replays its backlog all at once,
    # and a long run's whole history could overflow the connection's send queue.
    while True:
        page = (await call(url, token, "runs/events", {"runId": args.run_id, "since": since}))[
            "events"
        ]
        if not page:
            break
        for event in page:
            since = event["seq"]
            if show(event):
                return 0 if event["type"] == "run.succeeded" else 1
    async with open_connection(url, token, max_size=None) as ws:
        params = {"runId": args.run_id, "since": since}
        await ws.send(
            json.dumps({"jsonrpc": "2.0", "id": 1, "method": "runs/subscribe", "params": params})
        )
        async for frame in ws:
            message = json.loads(frame)
            if message.get("id") == 1 and "error" in message:
                raise RpcError.from_error_data(message["error"])
            if message.get("method") != "runs/event":
                continue
            event = {k: v for k, v in message["params"].items() if k != "subscription"}
            if show(event):
                return 0 if event["type"] == "run.succeeded" else 1
    return 1  # the host closed the connection before the run ended


def _changed_inputs(
    inputs: dict[str, Any], pairs: list[str], schema: dict[str, Any] | None
) -> dict[str, Any]:
    """A rerun's inputs: the source run's, with ``--input KEY=VALUE`` changes (JSON when it
    parses, else a string; always the string as typed for an input the schema calls one)."""
    properties = (schema or {}).get("properties") or {}
    out = dict(inputs)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--input expects KEY=VALUE, got {pair!r}")
        prop = properties.get(key)
        if isinstance(prop, dict) and prop.get("type") == "string":
            out[key] = raw
            continue
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def _answer(args: argparse.Namespace) -> Any:
    try:
        return json.loads(args.answer)
    except ValueError as exc:
        raise ConfigError(f"--answer is not JSON: {exc}") from None


def _signal_data(args: argparse.Namespace) -> Any:
    if args.data is None:
        return None
    try:
        return json.loads(args.data)
    except ValueError as exc:
        raise ConfigError(f"--data is not JSON: {exc}") from None


# -- the data dir, with no host ----------------------------------------------------------------


async def _local(args: argparse.Namespace, config: HostConfig) -> dict[str, Any]:
    from plait.host.app import Host

    if not config.durable:
        raise PlaitError("no store to read: the data dir is :memory: or the store is off")
    async with Host(config, recover_runs=False) as host:
        store = host.store
        shared = store if isinstance(store, PostgresStore) else None
        if shared is not None and args.runs_command in REMOTE_CONTROL:
            result = await _through_owner(host, shared, args)
        elif shared is not None and args.runs_command == "rerun" and await shared.live_hosts():
            result = await _rerun_on_a_host(host, shared, args)
        else:
            result = await _offline(host, args)
        live = await shared.live_hosts() if shared is not None else set()
    # No host held the data dir (this process took its lock): a run that claims to go on is
    # one its host left when it stopped or crashed (on a shared store: when no host is live).
    for run in result.get("runs", []) + ([result["run"]] if "run" in result else []):
        if run["status"] in HOST_STOPPED and not live:
            run["host"] = "stopped"
    return result


REMOTE_CONTROL = frozenset({"cancel", "pause", "resume", "signal", "respond"})
"""What ``plait runs`` does, on a store several hosts share, through the host owning the run."""


async def _through_owner(
    host: Host, store: PostgresStore, args: argparse.Namespace
) -> dict[str, Any]:
    """Control of a run on a shared store, without a host here: the host that owns the run
    does it (``plait.host.cluster.control``); with no live owner, say how to go on."""
    from plait.host.cluster import control

    engine = host.engine
    assert engine is not None
    run_id = await engine.resolve_run_id(args.run_id)
    owner = await store.owner_of(run_id)
    if owner is None or owner not in await store.live_hosts():
        run = await engine.load_run(run_id)  # RunNotFound for no such run
        if run.finished:
            raise InvalidRunState(run_id, run.status, args.runs_command)
        raise PlaitError(
            f"no running host owns run {run_id} (its store is shared: {store.shown}); start "
            "`plait serve` with this store (a live host takes the run over) and try again"
        )
    command = args.runs_command
    params: dict[str, Any] = {}
    if command == "signal":
        params = {"event": args.event, "data": _signal_data(args)}
    elif command == "respond":
        params = {"step": args.step, "answer": _answer(args), "by": args.by, "channel": "api"}
    await control(store, run_id, command, params)
    return {"run": await (await engine.kept_run(run_id)).view()}


async def _offline(host: Host, args: argparse.Namespace) -> dict[str, Any]:
    engine = host.engine
    assert engine is not None
    command = args.runs_command
    if command == "list":
        page = await engine.list_runs(
            workflow=args.workflow,
            status=args.status,
            limit=args.limit,
            cursor=parse_cursor(args.cursor) if args.cursor else None,
        )
        return {"runs": page.runs, "nextCursor": page.next_cursor}
    run_id = await engine.resolve_run_id(args.run_id)  # a prefix: the one id it starts
    if command == "show":
        return {"run": await (await engine.load_run(run_id)).view()}
    if command == "events":
        events = await engine.events(run_id, args.since, args.limit)
        return {"events": [e.to_dict() for e in events]}
    if command == "diff":
        return await diff_runs(engine, run_id, args.other_run_id)
    if command == "rerun":
        return await _rerun_here(host, args, run_id)
    if command == "cancel":
        await engine.recover([run_id], hold=True)
        return {"run": await (await engine.cancel(run_id)).view()}
    if command in ("pause", "signal", "respond"):  # kept in the store for the next start:
        await engine.recover([run_id], start=False)  # none of the run goes on in this process
        if command == "pause":
            return {"run": await (await engine.pause(run_id)).view()}
        if command == "respond":
            await host.respond(run_id, args.step, _answer(args), by=args.by, channel="api")
            return {"run": await (await engine.load_run(run_id)).view()}
        await engine.signal(run_id, args.event, _signal_data(args))
        return {"run": await (await engine.load_run(run_id)).view()}
    return await _resume_here(host, args, run_id)


async def _resume_here(host: Any, args: argparse.Namespace, run_id: str) -> dict[str, Any]:
    from plait.cli.progress import ProgressView

    engine = host.engine
    resumed = await engine.recover([run_id])
    if not resumed:
        run = await engine.load_run(run_id)  # not found, or already finished
        raise InvalidRunState(run.id, run.status, "resume")
    run = resumed[0]
    if run.status == "paused":
        await engine.resume(run.id)
    view = ProgressView(
        await engine.snapshot(run.digest, run.workflow, run.version), json_mode=args.json
    )
    with view:
        async for event in run.follow(run.published):
            view.update(run, event)
    return {"run": await run.view()}


async def _rerun_inputs(engine: Any, run_id: str, args: argparse.Namespace) -> Any:
    """The inputs of a rerun: the source run's with ``--input`` changes (``None``: as they
    were)."""
    if not args.input:
        return None
    source = await engine.load_run(run_id)
    compiled = await engine.snapshot(source.digest, source.workflow, source.version)
    return _changed_inputs(source.inputs, args.input, compiled.definition.inputs)


async def _rerun_on_a_host(
    host: Host, store: PostgresStore, args: argparse.Namespace
) -> dict[str, Any]:
    """``rerun`` on a shared store while hosts run: the new run is made by one of them (as if
    asked through it), not in this process, which is no host among them."""
    from plait.host.cluster import control

    engine = host.engine
    assert engine is not None
    run_id = await engine.resolve_run_id(args.run_id)
    inputs = await _rerun_inputs(engine, run_id, args)
    target = sorted(await store.live_hosts())[0]
    params = {"runId": run_id, "step": args.step, "inputs": inputs, "version": args.version}
    made = await control(store, None, "rerun", params, host=target)
    return {"run": await (await engine.kept_run(str(made))).view()}


async def _rerun_here(host: Any, args: argparse.Namespace, run_id: str) -> dict[str, Any]:
    """``rerun`` with no host: the new run is made in the data dir and runs in this process to
    its end, as ``resume`` does (a host started later would otherwise run it, unseen)."""
    from plait.cli.progress import ProgressView

    engine = host.engine
    inputs = await _rerun_inputs(engine, run_id, args)
    run = await engine.rerun(run_id, args.step, inputs=inputs, version=args.version)
    view = ProgressView(
        await engine.snapshot(run.digest, run.workflow, run.version), json_mode=args.json
    )
    with view:
        async for event in run.follow():
            view.update(run, event)
    return {"run": await run.view()}


# -- printing ----------------------------------------------------------------------------------


def _print(args: argparse.Namespace, result: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps(result, indent=2))
        return 0 if result.get("run", {}).get("status") != "failed" else 1
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped or captured: whole ids and statuses for grep, not a table cut to 80 columns.
        console = Console(highlight=False, width=PIPED_WIDTH)
    printers: dict[str, Callable[[Console, dict[str, Any]], None]] = {
        "list": _print_list,
        "events": _print_events,
        "diff": _print_diff,
    }
    printers.get(args.runs_command, _print_run)(console, result)
    if args.runs_command == "resume" and "run" in result:
        return 0 if result["run"]["status"] in ("succeeded", "running", "waiting") else 1
    if args.runs_command == "rerun" and "run" in result:
        return 1 if result["run"]["status"] in ("failed", "cancelled") else 0
    return 0


def _when(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _print_list(console: Console, result: dict[str, Any]) -> None:
    table = Table(show_header=True, header_style="bold")
    # A run id is what the user copies into the next command: never cut, whatever the width.
    table.add_column("run", no_wrap=True, min_width=32)
    table.add_column("workflow")
    table.add_column("version")
    # Nor a status: "waiting (host stopped)" cut to "waiti…" says nothing.
    widest = max((len(_status(r)) for r in result["runs"]), default=6)
    table.add_column("status", no_wrap=True, min_width=widest)
    for col in ("created", "finished"):
        table.add_column(col)
    for r in result["runs"]:
        table.add_row(
            r["id"],
            r["workflow"],
            str(r["version"]),
            _status(r),
            _when(r["created_at"]),
            _when(r.get("finished_at")),
        )
    console.print(table)
    if any(r.get("host") == "stopped" for r in result["runs"]):
        console.print(
            "(host stopped): no host is running these runs, so they do not go on (their host "
            "stopped or crashed); start it (`plait serve`) to continue them, and see "
            "`plait runs show RUN`",
            soft_wrap=True,
        )
    if result.get("nextCursor"):
        console.print(f"more: --cursor '{result['nextCursor']}'")


def _status(run: dict[str, Any]) -> str:
    """A run's status as shown: with ``(host stopped)`` when no host runs it."""
    return f"{run['status']} (host stopped)" if run.get("host") == "stopped" else run["status"]


def _print_events(console: Console | None, result: dict[str, Any]) -> None:
    for e in result["events"]:
        data = json.dumps(e["data"], ensure_ascii=False)
        data = data if len(data) <= 100 else data[:99] + "…"
        millis = int(e["ts"] % 1 * 1000)
        stamp = f"{time.strftime('%H:%M:%S', time.localtime(e['ts']))}.{millis:03d}"
        print(f"{e['seq']:>6}  {stamp}  {e['type']:<20} {e['step'] or '':<24} {data}")


def _print_diff(console: Console, result: dict[str, Any]) -> None:
    if not result["steps"]:
        console.print("no differences")
        return
    if result["first"] is not None:
        console.print(f"first difference: step {result['first']}")
    table = Table(show_header=True, header_style="bold")
    table.add_column("step", no_wrap=True)
    for col in ("field", "a", "b"):
        table.add_column(col, overflow="fold")
    for item in result["steps"]:
        a, b = (_short(item[side]) for side in "ab")
        table.add_row(item["path"] or "(inputs)", item["field"], a, b)
    console.print(table)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:59] + "…"


def _print_run(console: Console, result: dict[str, Any]) -> None:
    run = result["run"]
    console.print(
        f"run {run['id']}  {run['workflow']} v{run['version']}  [bold]{_status(run)}"
        f"[/bold]  created {_when(run['created_at'])}"
    )
    if run.get("host") == "stopped":
        then = (
            f"; `plait runs signal {run['id']} EVENT` signals it meanwhile"
            if run["status"] == "waiting"  # resumed here, it would wait in the foreground
            else f", or `plait runs resume {run['id']}` to finish it here"
        )
        console.print(
            "its host is not running (it stopped or crashed), so the run does not go on: "
            f"start the host (`plait serve`) to continue it{then}",
            soft_wrap=True,
        )
    if run.get("origin"):
        origin = run["origin"]
        console.print(f"re-run of run {origin['runId']} from step {origin['step']}")
    for question in run.get("questions") or ():
        console.print(
            f"step {question['step']} asks: {question['message']}  (answer: `plait runs respond "
            f"{run['id']} {question['step']} --answer JSON`)",
            soft_wrap=True,
            markup=False,
        )
    if run.get("error"):
        console.print(f"[red]error:[/red] {run['error'].get('message')}")
    if run.get("outputs"):
        console.print_json(data=run["outputs"])
    table = Table(show_header=True, header_style="bold")
    table.add_column("step", no_wrap=True)
    for col in ("status", "attempts", "duration", "error"):
        table.add_column(col, overflow="fold")
    for path, step in (run.get("steps") or {}).items():
        duration = ""
        if step.get("started_at") and step.get("finished_at"):
            duration = f"{step['finished_at'] - step['started_at']:.2f}s"
        table.add_row(
            path,
            f"{step['status']} (reused)" if step.get("reused") else step["status"],
            str(step.get("attempts") or ""),
            duration,
            (step.get("error") or {}).get("message", ""),
        )
    console.print(table)
