"""What the `dgpg` commands print: tables or JSON lines on stdout, progress on stderr,
and the check that printed figures are finite."""

from __future__ import annotations

import json
import math


def print_table(rows: list[dict], columns: list[tuple[str, str, str]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for _, header, _ in columns:
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*[("-" if row.get(key) is None else format(row[key], fmt)) if fmt else str(row.get(key, ""))
                        for key, _, fmt in columns])
    console = Console()
    Console(width=max(console.width, 132)).print(table)


def emit(rows: list[dict], columns, title: str, as_json: bool) -> None:
    """One JSON object per line, or a table."""
    if as_json:
        from dgpg_jax.runlog import json_safe

        for row in rows:
            print(json.dumps(json_safe(row), allow_nan=False))
    else:
        print_table(rows, columns, title)


class RunFailed(Exception):
    """A run that ended without usable results (exit status 1, one line)."""


def check_finite(rows: list[dict], columns, label: str) -> None:
    """RunFailed when a figure of the printed table is NaN or infinite: numbers that
    overflowed are a failed run, not a result."""
    for row in rows:
        for key, header, fmt in columns:
            value = row.get(key)
            if fmt and isinstance(value, float) and not math.isfinite(value):
                raise RunFailed(f"{header} ({key}) of {row.get(label)} is {value}: no finite figure for this setting "
                                "(numbers beyond float32, or a reference of cost 0 to divide by); allowed settings "
                                "whose results are finite")


def progress_bar():
    """A progress bar on stderr, so stdout holds only the table or the JSON lines."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[status]}"), console=Console(stderr=True), transient=True)
