"""Path options as users type them: relative, `~`, spaces, for every command.

A path is made absolute (and `~` expanded, also when the shell left it quoted) as it is parsed,
before any code sees it: our paths travel into Flower's config files (which demand absolute
paths), into child processes with other working directories, and into manifests.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
import typer


def absolute(path: str | os.PathLike) -> Path:
    """`path` with `~` expanded, made absolute against the working directory (not resolving
    symlinks: a user's link to a shared folder is kept as given)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


class UserPath(click.Path):
    name = "path"

    def __init__(self, **kwargs) -> None:
        super().__init__(path_type=Path, **kwargs)

    def convert(self, value, param, ctx):
        if isinstance(value, (str, os.PathLike)):
            value = absolute(value)
        return super().convert(value, param, ctx)


def path_option(default, *flags: str, help: str | None = None, exists: bool = False,
                file_okay: bool = True, dir_okay: bool = True, **kwargs):
    """`typer.Option` for a path; the value reaches the command absolute."""
    return typer.Option(default, *flags, help=help, **kwargs,
                        click_type=UserPath(exists=exists, file_okay=file_okay, dir_okay=dir_okay))


def path_argument(default, *, help: str | None = None, exists: bool = False,
                  file_okay: bool = True, dir_okay: bool = True):
    return typer.Argument(default, help=help,
                          click_type=UserPath(exists=exists, file_okay=file_okay, dir_okay=dir_okay))
