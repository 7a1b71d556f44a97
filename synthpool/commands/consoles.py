"""The consoles every command prints through.

soft_wrap: rich otherwise breaks a line at the terminal's width, and at 80 columns when the output
goes to a pipe or a daemon's log, splitting a path mid-name ('holdout.c sv'): a message is kept
whole, for the reader's terminal to wrap.
"""

from __future__ import annotations

from rich.console import Console


def stderr_console() -> Console:
    return Console(stderr=True, soft_wrap=True)


def stdout_console() -> Console:
    return Console(soft_wrap=True)
