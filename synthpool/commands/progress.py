"""Progress for long CLI work: a rich bar on a terminal; when output goes to a file, a pipe or a
daemon's log, where a bar shows nothing until the end, a plain line every few seconds instead.
Shaped as the engine's (step, total, loss) callback, and as stage updates for the federation."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from .consoles import stderr_console

LINE_EVERY_S = 5.0


def _lines(console: Console, every: float, text: Callable[..., str]) -> Callable[..., None]:
    """A (done, total, ...) callback for output that is not a terminal: `text(done, total, ...)`
    and the seconds so far, printed every `every` seconds and when done reaches total."""
    start, last = time.monotonic(), [float("-inf")]

    def line(done: int, total: int, *rest) -> None:
        now = time.monotonic()
        if done >= total or now - last[0] >= every:
            last[0] = now
            console.print(f"{text(done, total, *rest)}, {now - start:.0f} s", markup=False,
                          highlight=False)

    return line


@contextmanager
def step_progress(description: str, enabled: bool = True, console: Console | None = None,
                  every: float = LINE_EVERY_S
                  ) -> Iterator[Callable[[int, int, float], None] | None]:
    if not enabled:
        yield None
        return
    console = console or stderr_console()
    if not console.is_terminal:
        yield _lines(console, every, lambda step, total, loss:
                     f"{description}: step {step}/{total}, loss {loss:.3f}")
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn(),
                  console=console, transient=False) as bar:
        task = bar.add_task(description, total=None, loss=float("nan"))

        def update(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, loss=loss)

        yield update


@contextmanager
def read_progress(description: str, console: Console | None = None, every: float = LINE_EVERY_S
                  ) -> Iterator[Callable[[int, int], None]]:
    """The (bytes read, file size) callback of common/loading.py: a bar on a terminal, else a
    line every few seconds."""
    console = console or stderr_console()
    if not console.is_terminal:
        yield _lines(console, every, lambda done, total:
                     f"{description}: {done / 2**20:.0f} of {total / 2**20:.0f} MiB")
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


class StageProgress:
    """Stages of known number (`total`), each with a description: a bar on a terminal; else
    one line per stage change, and a line every few seconds while a stage lasts."""

    def __init__(self, console: Console, total: int, description: str,
                 every: float = LINE_EVERY_S) -> None:
        self.console, self.total, self.every = console, total, every
        self.plain = not console.is_terminal
        self.start = self._said = time.monotonic()
        self.completed, self.description = 0, description
        self._bar = None if self.plain else Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console, transient=False)

    def __enter__(self) -> "StageProgress":
        if self._bar is not None:
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total)
        else:
            self._line()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, description: str | None = None, completed: int | None = None) -> None:
        changed = (description is not None and description != self.description) or \
            (completed is not None and completed != self.completed)
        self.description = description if description is not None else self.description
        self.completed = completed if completed is not None else self.completed
        if self._bar is not None:
            self._bar.update(self._task, description=self.description, completed=self.completed)
        elif changed:
            self._line()

    def tick(self) -> None:
        """Called while waiting: in a log, say every few seconds that work goes on."""
        if self.plain and time.monotonic() - self._said >= self.every:
            self._line()

    def print(self, *args, **kwargs) -> None:
        (self._bar.console if self._bar is not None else self.console).print(*args, **kwargs)

    def _line(self) -> None:
        self._said = time.monotonic()
        self.console.print(f"[{self._said - self.start:5.0f} s] {self.completed}/{self.total} "
                           f"{self.description}", markup=False, highlight=False)
