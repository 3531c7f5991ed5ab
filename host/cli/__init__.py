"""The ``plait`` command line: one front door (:func:`main`), one module per command group."""

from plait.cli.commands import main

__all__ = ["main"]
