"""The configuration a command runs with: the config file, then its command-line flags."""

from __future__ import annotations

import argparse
from typing import Any

from plait.config import HostConfig, load_config

__all__ = ["config_from_args"]


def config_from_args(args: argparse.Namespace) -> HostConfig:
    """``--config`` with ``--bind``, ``--port``, ``--data-dir``, ``--workflows`` and
    ``--allow-remote`` laid over it (flags a command does not have are skipped)."""
    overrides: dict[str, Any] = {}
    for key, value in (
        ("host.bind", getattr(args, "bind", None)),
        ("host.port", getattr(args, "port", None)),
        ("host.data_dir", getattr(args, "data_dir", None)),
        ("host.workflows", getattr(args, "workflows", None)),
    ):
        if value is not None:
            overrides[key] = value
    if getattr(args, "allow_remote", False):
        overrides["host.allow_remote"] = True
    return load_config(args.config, overrides=overrides)
