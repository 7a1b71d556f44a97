"""`synthpool release verify DIR` without `--public-key`: not typer's "missing option" but why a
key is needed and where it must come from, plus, for a demo's release, where the demo put it."""

from __future__ import annotations

import json
import shlex

from typer.testing import CliRunner

from synthpool.cli import app
from synthpool.common.signing import generate_key, seal

runner = CliRunner()


def _release(folder, key_path):
    folder.mkdir(parents=True)
    (folder / "synthetic.csv").write_text("age,income\n30,<=50K\n")
    (folder / "manifest.json").write_text(json.dumps({"privacy": {"epsilon": 3.0}}))
    seal(folder, generate_key(key_path))


def test_without_a_public_key_it_says_why_a_trusted_key_is_needed(tmp_path):
    _release(tmp_path / "release", tmp_path / "keys" / "k.pem")
    res = runner.invoke(app, ["release", "verify", str(tmp_path / "release")])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "--public-key" in text and "out of band" in text and "trust" in text
    assert "never a key found inside" in text
    assert "demo" not in text and "Missing option" not in text


def test_a_demo_release_is_told_where_the_demo_put_its_key(tmp_path, monkeypatch):
    out = tmp_path / "my demo"
    key = out / "federation" / "coordinator" / "release-key.pem"
    _release(out / "release", key)
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["release", "verify", "my demo/release"])
    assert res.exit_code == 2
    command = res.output.strip().splitlines()[-1].strip()
    assert command == ("synthpool release verify 'my demo/release' --public-key "
                       "'my demo/federation/coordinator/release-key.pub'")
    ok = runner.invoke(app, shlex.split(command)[1:])  # the command it prints works as printed
    assert ok.exit_code == 0 and ok.output.startswith("OK"), ok.output
