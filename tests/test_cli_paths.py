"""Every path a user types reaches the code absolute, whatever the shell left of it.

The first command of the README once failed on a fresh clone because a relative path reached
Flower's config (which demands absolute paths) while every test passed absolute temp dirs. So:
every path parameter of every command parses through one type (checked by walking the command
trees), and that type turns relative, `~` and spaced paths into absolute ones."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from synthpool.agent.cli import app as agent_app
from synthpool.cli import app as synthpool_app
from synthpool.common.cli_paths import UserPath, path_option


def _commands(group: click.Command, prefix: str = ""):
    yield prefix or "(root)", group
    if isinstance(group, click.Group):
        for name, sub in group.commands.items():
            yield from _commands(sub, f"{prefix} {name}".strip())


@pytest.mark.parametrize("app", [synthpool_app, agent_app], ids=["synthpool", "synthpool-agent"])
def test_every_path_parameter_of_every_command_parses_through_user_path(app):
    root = typer.main.get_command(app)
    checked, wrong = 0, []
    for name, cmd in _commands(root):
        for p in cmd.params:
            # `--data` also takes a database URL: it stays a string, and the loader expands `~`.
            if isinstance(p.type, click.Path) or p.opts == ["--data"]:
                checked += 1
                if not (isinstance(p.type, UserPath) or p.opts == ["--data"]):
                    wrong.append(f"{name} {p.opts[0]}")
    assert checked >= 4 and not wrong, wrong


def test_relative_home_and_spaced_paths_reach_the_command_absolute(tmp_path, monkeypatch):
    seen = {}
    app = typer.Typer()

    @app.command()
    def cmd(out: Path = path_option(Path("demo-out"), "--out"),
            schema: Path = path_option(None, "--schema", exists=True, dir_okay=False)):
        seen.update(out=out, schema=schema)

    (tmp_path / "my study").mkdir()
    (tmp_path / "my study" / "s.yaml").write_text("x")
    monkeypatch.chdir(tmp_path / "my study")
    monkeypatch.setenv("HOME", str(tmp_path))
    runner = CliRunner()
    assert runner.invoke(app, []).exit_code == 0
    assert seen["out"] == tmp_path / "my study" / "demo-out"  # the default, too
    assert runner.invoke(app, ["--out", "~/a b/c", "--schema", "s.yaml"]).exit_code == 0
    assert seen == {"out": tmp_path / "a b" / "c", "schema": tmp_path / "my study" / "s.yaml"}
    assert runner.invoke(app, ["--schema", "~/my study/s.yaml"]).exit_code == 0
    assert seen["schema"] == tmp_path / "my study" / "s.yaml"
    bad = runner.invoke(app, ["--schema", "missing.yaml"])
    assert bad.exit_code == 2 and "missing.yaml" in bad.output
