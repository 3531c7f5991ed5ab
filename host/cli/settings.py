"""The configuration a command runs with: the config file, then its command-line flags."""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path
from typing import Any

from plait.config import ENV_PREFIX, HostConfig, load_config

__all__ = ["config_from_args", "data_dir_origin"]


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


def data_dir_origin(args: argparse.Namespace) -> str:
    """Where the data dir of :func:`config_from_args` came from, for a message about it: the
    flag, the environment, the config file, or the default."""
    if getattr(args, "data_dir", None) is not None:
        return "from --data-dir"
    variable = f"{ENV_PREFIX}HOST_DATA_DIR"
    if any(name.upper() == variable for name in os.environ if name.startswith(ENV_PREFIX)):
        return f"from ${variable}"
    path = getattr(args, "config", None) or ("plait.toml" if Path("plait.toml").is_file() else None)
    if path is None:
        return "the default, with no plait.toml in this directory"
    try:
        host = tomllib.loads(Path(path).read_text(encoding="utf-8")).get("host")
    except (OSError, ValueError):  # it was read a moment ago; only a hint
        host = None
    if isinstance(host, dict) and "data_dir" in host:
        return f"the data_dir of {path}"
    return f"the default: {path} sets no data_dir"
