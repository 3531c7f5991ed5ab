"""``plait schedules list|show|pause|resume|trigger|delete``: the schedules of a running host.

Schedules fire only in a running host, so these commands always talk to one: ``--url``, or the
host that holds the data dir (its URL is in ``host.json``, its token in ``token``). With no
host running they say so (exit 1) rather than read the store behind its back.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import anyio

from plait.cli.failures import CommandFailed, one_line
from plait.cli.settings import config_from_args
from plait.config import HostConfig
from plait.store.datadir import DataDirLock, read_host_info

__all__ = ["add_schedules_parser"]


def add_schedules_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``plait schedules`` and its sub-commands."""
    schedules = sub.add_parser(
        "schedules", help="list, inspect, pause, resume, trigger and delete a host's schedules"
    )
    actions = schedules.add_subparsers(dest="schedules_command", required=True)

    def action(name: str, help: str, *, named: bool = True) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help)
        if named:
            p.add_argument("name", metavar="NAME", help="the schedule's name")
        p.add_argument("--url", help="a running host (default: the one using the data dir)")
        p.add_argument("--token")
        p.add_argument("--config")
        p.add_argument("--data-dir")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=cmd_schedules)
        return p

    action("list", "every schedule: its workflow, times, next fire and last run", named=False)
    p = action("show", "one schedule: its spec, next fire times, last runs, skipped fires")
    p.add_argument("--next", type=int, default=5, help="how many next fire times to show")
    action("pause", "fire no more until resumed (runs already started go on)")
    action("resume", "fire again from the next scheduled time (no catch-up)")
    p = action("trigger", "start a run now, outside the schedule's times")
    p.add_argument(
        "--overlap",
        choices=("skip", "buffer_one", "allow", "cancel_previous"),
        help="the overlap policy of this fire (default: the schedule's)",
    )
    action("delete", "remove a schedule made through the API (its runs go on)")


def cmd_schedules(args: argparse.Namespace) -> int:
    """Ask the running host; print what it answered."""
    from plait.rpc.errors import RpcError

    config = config_from_args(args)
    if not args.url:
        data_dir = Path(config.host.data_dir)
        if config.memory_only or not data_dir.is_dir() or not DataDirLock.held(data_dir):
            raise CommandFailed(
                f"no plait host is running on the data dir {data_dir}: schedules fire only in a "
                "running host; start one with `plait serve`, or pass --url"
            )
        if read_host_info(data_dir) is None:
            raise CommandFailed(
                f"the data dir {data_dir} is in use by a plait host that serves no WebSocket "
                "(`plait serve --stdio`?): pass --url of one that does"
            )
    try:
        result = anyio.run(_ask, args, config)
    except RpcError as exc:
        print(f"error: {one_line(exc.message)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    _show(args.schedules_command, result)
    return 0


async def _ask(args: argparse.Namespace, config: HostConfig) -> dict[str, Any]:
    from plait.rpc.client import call, host_target

    url, token = host_target(config, args.url, args.token)
    command = args.schedules_command
    params: dict[str, Any] = {} if command == "list" else {"name": args.name}
    if command == "show":
        params["next"] = args.next
    if command == "trigger" and args.overlap:
        params["overlap"] = args.overlap
    method = {"show": "schedules/get"}.get(command, f"schedules/{command}")
    return dict(await call(url, token, method, params) or {})


def _when(s: dict[str, Any]) -> str:
    if s.get("cron"):
        return f"cron {s['cron']} ({s.get('timezone', 'UTC')})"
    return f"every {s.get('every'):g}s"


def _last(run: dict[str, Any] | None) -> str:
    if not run:
        return "-"
    return f"{run['runId'][:8]} {run.get('status', '?')} ({run['scheduledAt']})"


def _show(command: str, result: dict[str, Any]) -> None:
    if command == "list":
        rows = result.get("schedules") or []
        if not rows:
            print("no schedules")
            return
        width = max(len(s["name"]) for s in rows)
        for s in rows:
            state = "paused" if s["paused"] else f"next {s['nextAt'] or '-'}"
            print(
                f"{s['name']:<{width}}  {s['workflow']}  {_when(s)}  {state}  "
                f"last {_last(s.get('lastRun'))}"
            )
        return
    if command == "delete":
        print("deleted")
        return
    if command == "trigger":
        run = f" run {result['runId']}" if result.get("runId") else ""
        print(f"{result['outcome']}{run} ({result['scheduledAt']})")
        return
    s = result["schedule"]
    print(f"{s['name']}: workflow {s['workflow']}" + (f" v{s['version']}" if s["version"] else ""))
    print(f"  {_when(s)}, overlap {s['overlap']}, catch-up {s['catchup']}, from {s['origin']}")
    print(f"  {'paused' if s['paused'] else 'active'}; runs going on: {len(s['running'])}")
    if command != "show":
        return
    for upcoming in s.get("next") or []:
        print(f"  next  {upcoming['dueAt']}")
    for run in s.get("lastRuns") or []:
        print(f"  run   {_last(run)}")
    for note in s.get("notes") or []:
        said = note.get("reason") or note.get("error") or note.get("since") or ""
        print(f"  {note['outcome']:<8}{note['scheduledAt']}  {said}".rstrip())
