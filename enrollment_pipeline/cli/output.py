"""How the CLI prints: messages on stderr; on stdout tables (boxes only on a terminal, plain
aligned columns when piped) or, with `--json`, one JSON document for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console(stderr=True)

# A row of None in `print_table` starts a new section (a rule on a terminal, a blank line).
SECTION = None


def print_table(
    *columns: str, rows: Iterable[Sequence[str] | None], right: Collection[str] = ()
) -> None:
    """A table that never hides text. On a terminal: boxed, folded to its width. Piped: plain
    columns separated by two spaces, no colour or box characters, nothing cut; `right` names
    the columns aligned right (numbers)."""
    if sys.stdout.isatty():
        table = Table(*columns)
        for column in table.columns:
            column.overflow = "fold"
            if column.header in right:
                column.justify = "right"
        for row in rows:
            if row is None:
                table.add_section()
            else:
                table.add_row(*row)
        Console().print(table)
        return
    plain = [
        None if row is None else [Text.from_markup(cell).plain for cell in row] for row in rows
    ]
    widths = [len(c) for c in columns]
    for row in plain:
        for i, cell in enumerate(row or ()):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if columns[i] in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    click.echo(line(columns))
    for row in plain:
        click.echo("" if row is None else line(row))


def print_json(data: Any) -> None:
    """One JSON document on stdout: instants as ISO-8601 UTC with Z."""
    click.echo(json.dumps(data, indent=2, default=json_default, ensure_ascii=False))


def json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def utc(value: datetime | None) -> str:
    """`2026-11-29 09:00:05 UTC` (or `-`): how the CLI shows an instant."""
    if value is None:
        return "-"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def report_started(name: str, seconds: float) -> None:
    console.print(f"  [green]✓[/] {name:<9} {seconds:6.1f} s")
