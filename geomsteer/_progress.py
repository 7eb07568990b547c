"""Progress bars and status lines on stderr (rich), silenced by ``GEOMSTEER_QUIET=1``."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def _quiet() -> bool:
    return os.environ.get("GEOMSTEER_QUIET", "") not in ("", "0")


def _console():
    from rich.console import Console

    return Console(stderr=True)


@contextlib.contextmanager
def step(message: str) -> Iterator[None]:
    """Show ``message`` with a spinner while the block runs, then the time it took."""
    if _quiet():
        yield
        return
    console = _console()
    t0 = time.perf_counter()
    if console.is_terminal:
        with console.status(message):
            yield
    else:
        yield
    console.print(f"[green]✓[/] {message} [dim]({time.perf_counter() - t0:.1f} s)[/]")


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (elapsed and remaining time) on a terminal."""
    if _quiet():
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = _console()
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
    console.print(f"[green]✓[/] {description} [dim]({time.perf_counter() - t0:.1f} s)[/]")


def say(message: str) -> None:
    if not _quiet():
        print(message, file=sys.stderr)


@contextlib.contextmanager
def counter(description: str, total: int | None, unit: str = "tokens", enabled: bool = True) -> Iterator:
    """A progress bar counting ``unit`` with its rate; yields ``advance(n)``. Prints a summary line."""
    if _quiet() or not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = _console()
    t0 = time.perf_counter()
    done = [0]
    with Progress(
        TextColumn("{task.description}"), BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} " + unit),
        TextColumn("{task.fields[rate]:,.0f} " + unit + "/s"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(description, total=total, rate=0.0)

        def advance(n: int) -> None:
            done[0] += n
            bar.update(task, advance=n, rate=done[0] / max(time.perf_counter() - t0, 1e-9))

        yield advance
    dt = time.perf_counter() - t0
    console.print(f"[green]✓[/] {description}: {done[0]:,} {unit} in {dt:.1f} s ({done[0] / max(dt, 1e-9):,.0f} {unit}/s)")
