"""The analysis commands of the `runstream` CLI; `runstream/cli.py` adds them with `add_parsers`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def add_parsers(commands: Any) -> None:
    """Register the analysis subcommands on the CLI's subparsers object."""
