"""``plait debug RUN``: a one-time link to a run's page in the running host's web view.

The host mints the link (``host/link``): it works once, for ten minutes, and opening it gives
the browser a session cookie for the page (docs/debugging.md, "The web view").
"""

from __future__ import annotations

import argparse
import sys
import webbrowser

import anyio

from plait.cli.failures import rpc_error_line
from plait.cli.settings import config_from_args

__all__ = ["add_debug_parser", "cmd_debug"]


def add_debug_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``plait debug``."""
    p = sub.add_parser(
        "debug",
        help="print a one-time link to a run's page in the running host's web view",
        description="Ask the running host for a one-time link (it works once, for 10 minutes) "
        "to the web view: the page of RUN, or the list of runs without it.",
    )
    p.add_argument(
        "run_id", metavar="RUN", nargs="?", help="a run id, or its first characters (optional)"
    )
    p.add_argument("--open", action="store_true", help="also open the link in a browser")
    p.add_argument("--url", default=None, help="default: the host using the data dir")
    p.add_argument("--token", default=None, help="default: $PLAIT_TOKEN or <data_dir>/token")
    p.add_argument("--config")
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_debug)


def cmd_debug(args: argparse.Namespace) -> int:
    """Print the link (exit 1 when the host refuses, say for an unknown run)."""
    from plait.rpc.client import call, host_target
    from plait.rpc.errors import RpcError

    url, token = host_target(config_from_args(args), args.url, args.token)
    params = {"runId": args.run_id} if args.run_id else {}
    try:
        result = anyio.run(lambda: call(url, token, "host/link", params))
    except RpcError as exc:  # an unreachable host: one line from plait.cli.main
        print(f"error: {rpc_error_line(exc)}", file=sys.stderr)
        return 1
    link = str(result["url"])
    print(link)
    if args.open:
        webbrowser.open(link)
    return 0
