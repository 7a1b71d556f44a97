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


# Files a release walk once skipped: a hidden name, and a file named like the manifest in a subfolder.
@pytest.mark.parametrize("added", [".synthetic-real.csv", "report/.hidden/rows.csv",
                                   "report/manifest.json", "report/manifest.sig"])
def test_any_added_file_fails_and_is_named(release, added):
    folder, pub = release
    (folder / added).parent.mkdir(parents=True, exist_ok=True)
    (folder / added).write_text("age,income\n52,>50K\n")
    res = _verify(folder, pub)
    assert res.exit_code == 1
    assert json.loads(res.output)["problems"] == [f"{added}: not part of the signed release"]


def test_hidden_and_nested_manifest_files_are_sealed_and_checked(release, tmp_path):
    folder, pub = release
    (folder / ".notes").write_text("kept\n")
    (folder / "report" / "manifest.json").write_text("{}\n")
    from synthpool.common.signing import load_or_create_key

    seal(folder, load_or_create_key(tmp_path / "keys" / "release.key"))
    ok = json.loads(_verify(folder, pub).output)
    assert ok == {"ok": True, "problems": [], "files_checked": 4}
    (folder / "report" / "manifest.json").write_text('{"epsilon": 0.1}\n')
    (folder / ".notes").unlink()
    assert json.loads(_verify(folder, pub).output)["problems"] == [
        ".notes: listed in the manifest but missing",
        "report/manifest.json: content differs from the signed hash"]


def test_symbolic_links_are_refused_and_named(release, tmp_path):
    folder, pub = release
    secret = tmp_path / "secret.csv"
    secret.write_text("real,rows\n")
    (folder / "report" / "real.csv").symlink_to(secret)
    (folder / "linked-dir").symlink_to(tmp_path / "keys", target_is_directory=True)
    res = _verify(folder, pub)
    assert res.exit_code == 1
    assert json.loads(res.output)["problems"] == [
        "linked-dir: a symbolic link (a release holds regular files only)",
        "report/real.csv: a symbolic link (a release holds regular files only)"]


def test_a_listed_file_replaced_by_a_link_to_identical_bytes_fails(release, tmp_path):
    folder, pub = release
    copy = tmp_path / "copy.csv"
    copy.write_bytes((folder / "synthetic.csv").read_bytes())
    (folder / "synthetic.csv").unlink()
    (folder / "synthetic.csv").symlink_to(copy)
    problems = json.loads(_verify(folder, pub).output)["problems"]
    assert "synthetic.csv: a symbolic link (a release holds regular files only)" in problems


def test_seal_refuses_a_folder_with_a_link(tmp_path):
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "data.csv").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="data.csv: a symbolic link"):
        seal(folder, generate_key(tmp_path / "k.key"))
