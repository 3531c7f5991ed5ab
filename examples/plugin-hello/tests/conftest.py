"""Test settings of plait-hello: plait runs on asyncio, and ``plait_hello`` must be importable.

A plugin package installed in its environment (``pip install -e .``) needs only the
``anyio_backend`` fixture here. The path line is for plait's own repository, which runs these
tests from its root without installing the example.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("plait_hello") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture
def anyio_backend() -> str:
    """plait's host runs on asyncio (anyio would also try trio where it is installed)."""
    return "asyncio"
