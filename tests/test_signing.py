import json

import pytest
from typer.testing import CliRunner

from synthpool.cli import app
from synthpool.common.signing import generate_key, seal

runner = CliRunner()


@pytest.fixture
def release(tmp_path):
    folder = tmp_path / "release"
    (folder / "report").mkdir(parents=True)
    (folder / "synthetic.csv").write_text("age,income\n30,<=50K\n41,>50K\n")
    (folder / "report" / "report.json").write_text('{"auc": 0.9}\n')
    (folder / "manifest.json").write_text(json.dumps({"privacy": {"epsilon": 3.0}}))
    key = generate_key(tmp_path / "keys" / "release.key")
    seal(folder, key)
    return folder, tmp_path / "keys" / "release.pub"


def _verify(folder, pub):
    return runner.invoke(app, ["release", "verify", str(folder), "--public-key", str(pub), "--json"])


def test_untouched_release_verifies_with_public_key_only(release):
    folder, pub = release
    res = _verify(folder, pub)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"ok": True, "problems": [], "files_checked": 2}


def test_one_byte_of_data_changed_fails(release):
    folder, pub = release
    data = bytearray((folder / "synthetic.csv").read_bytes())
    data[15] ^= 1
    (folder / "synthetic.csv").write_bytes(bytes(data))
    res = _verify(folder, pub)
    assert res.exit_code == 1
    assert "synthetic.csv: content differs" in res.output


def test_manifest_edit_fails_signature(release):
    folder, pub = release
    text = (folder / "manifest.json").read_text().replace('"epsilon": 3.0', '"epsilon": 1.0')
    (folder / "manifest.json").write_text(text)
    res = _verify(folder, pub)
    assert res.exit_code == 1 and "signature does not match" in res.output


def test_added_or_removed_file_fails(release):
    folder, pub = release
    (folder / "extra.csv").write_text("x\n")
    assert "extra.csv: not part of the signed release" in _verify(folder, pub).output
    (folder / "extra.csv").unlink()
    (folder / "report" / "report.json").unlink()
    res = _verify(folder, pub)
    assert res.exit_code == 1 and "report/report.json: listed in the manifest but missing" in res.output


def test_other_key_is_refused(release, tmp_path):
    folder, _ = release
    generate_key(tmp_path / "other.key")
    assert _verify(folder, tmp_path / "other.pub").exit_code == 1
