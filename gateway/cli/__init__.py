"""The `ledgerflow` command line (`python -m gateway.cli` runs it too)."""

from gateway.cli.main import main

__all__ = ["main"]
