"""How the CLI prints: messages on stderr, tables on stdout that never hide text."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


def print_table(*columns: str, rows: Iterable[Sequence[str]]) -> None:
    """A table that never hides text: folded in a terminal, wide when piped."""
    table = Table(*columns)
    for column in table.columns:
        column.overflow = "fold"
    for row in rows:
        table.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 240).print(table)


def report_started(name: str, seconds: float) -> None:
    console.print(f"  [green]✓[/] {name:<9} {seconds:6.1f} s")
