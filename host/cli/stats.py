"""``plait stats [WORKFLOW] [--since 7d] [--json]``: run, step and agent figures, and with a
workflow its bottleneck report (``runs/stats``; docs/analytics.md says what each figure means).

Where it reads, as ``plait runs`` does: ``--url`` names a host; otherwise the host that holds
the data dir (its lock) is asked; otherwise the data dir's store is opened here, read-only in
effect (no run is resumed), so the figures of a stopped host's runs can be read without
starting it. The figures are the same either way: both go through ``Host.run_stats``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.table import Table

from plait.cli.failures import CommandFailed, rpc_error_line
from plait.cli.settings import config_from_args, data_dir_origin
from plait.config import HostConfig
from plait.errors import ConfigError, PlaitError, WorkflowNotFound
from plait.store.datadir import DataDirLock, read_host_info

__all__ = ["add_stats_parser", "cmd_stats", "parse_since"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: a duration back from now (``30m``, ``1h``, ``7d``, ``2w``, ``45s``) or an
    ISO 8601 time (``2026-03-01``, ``2026-03-01T12:00:00+00:00``; without a zone it is local
    time), as Unix seconds.

    Raises:
        ConfigError: neither (the message gives both forms).
    """
    now = time.time() if now is None else now
    found = _DURATION.match(text)
    if found:
        return now - float(found.group(1)) * _UNITS[found.group(2)]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ConfigError(
            f"--since {text!r} is neither a duration (30m, 1h, 7d, 2w) nor an ISO time "
            "(2026-03-01 or 2026-03-01T12:00:00+00:00)"
        ) from None


def add_stats_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``plait stats``."""
    p = sub.add_parser(
        "stats",
        help="run, step and agent figures; with a workflow, its bottleneck report",
        description="Success rates and durations per workflow and step, retries, cache hits, "
        "waits for concurrency slots and agent token usage, over the kept runs; with WORKFLOW "
        "also its bottleneck report: the critical path of its recent runs and what would "
        "shorten them.",
    )
    p.add_argument("workflow", metavar="WORKFLOW", nargs="?", help="one workflow's figures")
    p.add_argument(
        "--since",
        help="only runs created since: a duration back from now (30m, 1h, 7d) or an ISO time",
    )
    p.add_argument("--url", help="a running host (default: the one using the data dir)")
    p.add_argument("--token", help="default: $PLAIT_TOKEN or <data_dir>/token")
    p.add_argument("--config")
    p.add_argument("--data-dir")
    p.add_argument("--json", action="store_true", help="print the reply as JSON")
    p.set_defaults(func=cmd_stats)


def cmd_stats(args: argparse.Namespace) -> int:
    """Ask the running host, or read the data dir; print the figures (exit 2 for an unknown
    workflow or a bad ``--since``)."""
    from plait.rpc.errors import InvalidParams, RpcError

    since = None if args.since is None else parse_since(args.since)
    params: dict[str, Any] = {"workflow": args.workflow, "since": since}
    params = {k: v for k, v in params.items() if v is not None}
    config = config_from_args(args)
    data_dir = Path(config.host.data_dir)
    try:
        if args.url or (not config.memory_only and DataDirLock.held(data_dir)):
            if not args.url and read_host_info(data_dir) is None:
                raise CommandFailed(
                    f"the data dir {data_dir} is in use by a plait host that serves no "
                    "WebSocket (`plait serve --stdio`?): stop it, or pass --url"
                )
            result = anyio.run(_remote, args, config, params)
        else:
            if config.memory_only or not config.durable:
                raise CommandFailed(
                    "no host runs and no store to read: the data dir is :memory: or the store "
                    "is off; start the host, or pass --url"
                )
            if not data_dir.is_dir():
                raise ConfigError(
                    f"no plait data dir at {data_dir.absolute()} ({data_dir_origin(args)}): run "
                    "this in the project's directory, or pass --data-dir DIR, or --url"
                )
            result = anyio.run(_local, config, args.workflow, since)
    except RpcError as exc:
        print(f"error: {rpc_error_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, InvalidParams) else 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_stats(result, Console(highlight=False, width=max(120, Console().width)))
    return 0


async def _remote(args: argparse.Namespace, config: HostConfig, params: dict[str, Any]) -> Any:
    from plait.rpc.client import call, host_target

    url, token = host_target(config, args.url, args.token)
    return await call(url, token, "runs/stats", params)


async def _local(config: HostConfig, workflow: str | None, since: float | None) -> Any:
    from plait.engine.analytics import unknown_workflow
    from plait.host.app import Host

    async with Host(config, recover_runs=False) as host:
        try:
            return await host.run_stats(
                workflow=workflow, since=since, bottleneck=workflow is not None
            )
        except WorkflowNotFound:
            assert workflow is not None
            known = [entry.name for entry in host.list_workflows()]
            raise ConfigError(unknown_workflow(workflow, known)[0]) from None
        except PlaitError:
            raise


# -- printing ----------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} ms" if value >= 0.001 else f"{value * 1000:.2f} ms"
    return f"{value:.2f} s"


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def print_stats(result: dict[str, Any], console: Console) -> None:
    """The figures as tables: workflows, steps, agents, then the bottleneck report if any."""
    since = result.get("since")
    window = (
        "all kept runs"
        if since is None
        else f"runs created since {datetime.fromtimestamp(since).isoformat(' ', 'seconds')}"
    )
    if not result["workflows"]:
        console.print(f"no runs ({window})")
        return
    console.print(window, style="dim")
    runs = Table(title="workflows", title_justify="left")
    for col in ("workflow", "runs", "ended", "success", "p50", "p95", "p99"):
        runs.add_column(col, justify="left" if col == "workflow" else "right")
    for w in result["workflows"]:
        d = w["duration"]
        runs.add_row(
            w["workflow"],
            f"{w['runs']:,}",
            f"{w['finished']:,}",
            _rate(w["successRate"]),
            _seconds(d["p50"]),
            _seconds(d["p95"]),
            _seconds(d["p99"]),
        )
    console.print(runs)
    steps = Table(title="steps", title_justify="left")
    for col in ("workflow", "step", "runs", "failed", "retried", "cached", "waited", "p50", "p95"):
        steps.add_column(col, justify="left" if col in ("workflow", "step") else "right")
    for s in result["steps"]:
        steps.add_row(
            s["workflow"],
            s["step"],
            f"{s['executions']:,}",
            _rate(s["failureRate"]),
            _rate(s["retryRate"]),
            _rate(s["cacheHitRate"]),
            _seconds(s["waited"]) if s["waited"] else "—",
            _seconds(s["duration"]["p50"]),
            _seconds(s["duration"]["p95"]),
        )
    console.print(steps)
    if result["agents"]:
        names = sorted({key for a in result["agents"] for key in a["usage"]})
        agents = Table(title="agents", title_justify="left")
        for col in ("agent", "steps", "turns", *names):
            agents.add_column(col, justify="left" if col == "agent" else "right")
        for a in result["agents"]:
            agents.add_row(
                a["agent"],
                f"{a['steps']:,}",
                f"{a['turns']:,}",
                *(f"{a['usage'].get(n, 0):,}" for n in names),
            )
        console.print(agents)
    report = result.get("bottleneck")
    if report is None:
        return
    if not report["runs"]:
        console.print(f"bottlenecks of {report['workflow']}: no succeeded run to read")
        return
    path = Table(
        title=f"critical path of {report['workflow']}: its last {report['runs']:,} succeeded "
        f"run(s) (at most {report['limit']:,})",
        title_justify="left",
    )
    for col in ("step", "on path", "share of run time", "waited"):
        path.add_column(col, justify="left" if col == "step" else "right")
    for p in report["steps"]:
        path.add_row(
            p["step"],
            _rate(p["onPath"]),
            _rate(p["share"]),
            _seconds(p["waited"]) if p["waited"] else "—",
        )
    console.print(path)
    if report["advice"]:
        console.print("what would shorten the runs:", style="bold")
        for line in report["advice"]:
            console.print(f"  - {line}")
    else:
        console.print("no advice: no step stands out")
