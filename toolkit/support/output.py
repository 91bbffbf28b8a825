"""How a command talks to the user: rich progress on stderr, --quiet, or --json on stdout."""
from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import dataclass

import click
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)


@dataclass
class Output:
    """Where messages, progress and results go. ``Output()`` is silent: the library default."""

    quiet: bool = True
    json: bool = False

    @property
    def console(self) -> Console:
        return Console(stderr=True, quiet=self.quiet or self.json)

    def info(self, message: str) -> None:
        if not (self.quiet or self.json):
            self.console.print(message, highlight=False, soft_wrap=True)

    def result(self, data: dict, text: str | None = None) -> None:
        """The command's outcome: JSON on stdout with --json, else ``text`` unless quiet."""
        if self.json:
            click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))
        elif text and not self.quiet:
            click.echo(text)

    @contextlib.contextmanager
    def progress(self, description: str, total: float | None, unit: str = "bytes"):
        """Yield ``advance(n)``; shows a bar with ETA (bytes or steps) unless quiet/json."""
        if self.quiet or self.json or not total:
            yield lambda n=1: None
            return
        columns = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn()]
        if unit == "bytes":
            columns.append(DownloadColumn())
        columns += [TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)

    @contextlib.contextmanager
    def stage(self, description: str):
        """A spinner for work without a measurable total (compiling, linking)."""
        if self.quiet or self.json:
            yield
            return
        with Console(stderr=True).status(description):
            yield
        self.info(f"[green]✓[/green] {description}")


def output_options(func):
    """Add --quiet and --json to a Click command; the command receives ``output: Output``."""

    @functools.wraps(func)
    def call(*args, quiet=False, as_json=False, **kwargs):
        return func(*args, output=Output(quiet=quiet, json=as_json), **kwargs)

    call = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")(call)
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars or messages.")(call)
