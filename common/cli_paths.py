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


def token_from(token: str | None, token_file: Path | None, *, flag: str,
               file_flag: str) -> str | None:
    """The token given as `flag`, or read from the file of `file_flag` (a file, or an
    environment variable, keeps it out of the process list, where any local user reads argv).
    Both at once is refused: one would silently win. Raises ValueError with what was expected."""
    if token_file is None:
        return token
    if token:
        raise ValueError(f"give {flag} or {file_flag}, not both (either may come from its "
                         "environment variable)")
    try:
        text = Path(token_file).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{file_flag} {token_file}: cannot read it: {e}") from None
    words = text.split()
    if len(words) != 1:
        raise ValueError(f"{file_flag} {token_file}: expected the token alone, found "
                         f"{'nothing' if not words else f'{len(words)} words'}")
    return words[0]
