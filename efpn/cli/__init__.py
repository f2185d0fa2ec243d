"""The ``efpn`` command line: one verb per module (detect, ship, claims, ...), wired in :mod:`efpn.cli.main`."""

from efpn.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
