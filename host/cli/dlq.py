"""``plait dlq``: the dead-letter queue of the running host (runs that failed for good).

Through the host only: replaying starts runs, which is the host's to do.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio
from rich.console import Console
from rich.table import Table

from plait.cli.failures import rpc_error_line
from plait.cli.settings import config_from_args

__all__ = ["add_dlq_parser", "cmd_dlq"]


def add_dlq_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``plait dlq list|show|replay|discard``."""
    p = sub.add_parser(
        "dlq",
        help="the dead-letter queue: runs that failed for good; show, replay, discard them",
        description="Runs that failed for good (retries and fallbacks spent), on the running "
        "host. replay re-runs one from its failed step (what succeeded is reused).",
    )
    actions = p.add_subparsers(dest="dlq_command", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        a = actions.add_parser(name, help=help, description=help)
        a.add_argument("--url", default=None, help="default: the host using the data dir")
        a.add_argument("--token", default=None, help="default: $PLAIT_TOKEN or <data_dir>/token")
        a.add_argument("--config")
        a.add_argument("--data-dir")
        a.add_argument("--json", action="store_true", help="print the reply as JSON")
        return a

    def selection(a: argparse.ArgumentParser) -> None:
        a.add_argument("run_id", metavar="RUN", nargs="?", help="a run id or its first characters")
        a.add_argument("--workflow", help="every open entry of this workflow")
        a.add_argument("--error-type", help="every open entry with this error type")

    a = action("list", "list entries, newest first")
    a.add_argument("--workflow")
    a.add_argument("--error-type")
    a.add_argument("--state", default="open", choices=["open", "replayed", "discarded"])
    a.add_argument("--limit", type=int, default=100)
    a = action("show", "one entry: the failed step, its error and attempts")
    a.add_argument("run_id", metavar="RUN")
    a = action("replay", "re-run entries from their failed step")
    selection(a)
    a.add_argument("--version", type=int, help="run this version of the workflow")
    a.add_argument("--inputs-json", help="new run inputs, as a JSON object")
    a = action("discard", "mark entries discarded")
    selection(a)
    p.set_defaults(func=cmd_dlq)


def cmd_dlq(args: argparse.Namespace) -> int:
    """Send the request; print the reply (exit 1 when the host refuses)."""
    from plait.rpc.client import call, host_target
    from plait.rpc.errors import RpcError

    url, token = host_target(config_from_args(args), args.url, args.token)
    method, params = _request(args)
    try:
        result = anyio.run(lambda: call(url, token, method, params))
    except RpcError as exc:  # an unreachable host: one line from plait.cli.main
        print(f"error: {rpc_error_line(exc)}", file=sys.stderr)
        return 1
    if args.json or args.dlq_command in ("show", "replay", "discard"):
        print(json.dumps(result, indent=2))
    else:
        _print_list(result["entries"])
    return 0


def _request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from plait.errors import ConfigError

    command = args.dlq_command
    if command == "list":
        params = {"workflow": args.workflow, "errorType": args.error_type, "state": args.state}
        return "dlq/list", {k: v for k, v in params.items() if v is not None} | {
            "limit": args.limit
        }
    if command == "show":
        return "dlq/get", {"runId": args.run_id}
    params = {"runId": args.run_id, "workflow": args.workflow, "errorType": args.error_type}
    params = {k: v for k, v in params.items() if v is not None}
    if not params:
        raise ConfigError(f"plait dlq {command}: give RUN, --workflow or --error-type")
    if command == "replay":
        if args.version is not None:
            params["version"] = args.version
        if args.inputs_json is not None:
            try:
                params["inputs"] = json.loads(args.inputs_json)
            except ValueError as exc:
                raise ConfigError(f"--inputs-json is not JSON: {exc}") from None
    return f"dlq/{command}", params


def _print_list(entries: list[dict[str, Any]]) -> None:
    console = Console(highlight=False)
    if not entries:
        console.print("no entries")
        return
    table = Table(show_header=True, header_style="bold")
    table.add_column("run", no_wrap=True, min_width=32)
    for col in ("workflow", "step", "error", "state"):
        table.add_column(col)
    for e in entries:
        error = e.get("error") or {}
        table.add_row(
            e["run_id"],
            e["workflow"],
            e.get("step") or "",
            f"{error.get('type', '')}: {error.get('message', '')}",
            e["state"],
        )
    console.print(table)
