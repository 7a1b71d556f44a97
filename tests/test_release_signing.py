"""The launcher signs a release only after checking it is one of the study it launched; the
ServerApp, which runs whatever app the SuperLink's unauthenticated Control API accepts, never
holds the key (finding 2)."""

from __future__ import annotations

import json

import pytest

from synthpool.common import signing
from synthpool.coordinator.admin.release_signing import (
    ReleaseRefused, ReleaseTerms, sign_release, take_release,
)

TERMS = ReleaseTerms(study="adult", sites=frozenset({"a", "b"}), population="disjoint",
                     max_rows=100)


def _release(folder, **changes):
    folder.mkdir()
    (folder / "synthetic.csv").write_text("x\n1\n")
    manifest = {
        "kind": "synthpool.federated-release", "study": "adult", "data": {"rows": 100},
        "schema": {"name": "adult", "fingerprint": "f00d"},
        "privacy": {"per_site": {"a": {"epsilon": 2.5, "delta": 1e-5},
                                 "b": {"epsilon": 3.0, "delta": 1e-5}},
                    "release": {"epsilon": 3.0, "delta": 1e-5}},
    }
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = manifest
        for p in parents:
            node = node[p]
        node[leaf] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_a_release_of_the_launched_study_is_signed_and_verifies(tmp_path):
    key = tmp_path / "keys" / "release-key.pem"
    folder = _release(tmp_path / "rel")
    sealed = sign_release(folder, key, TERMS)
    assert "synthetic.csv" in sealed["files"]
    public = signing.load_public_key(key.with_suffix(".pub"))
    assert signing.verify(folder, public).ok


@pytest.mark.parametrize("changes, why", [
    ({"study": "other"}, "not the one launched"),
    ({"kind": "synthpool.single-site"}, "kind"),
    ({"data.rows": 10_000}, "more than the study's 100"),
    ({"privacy.per_site": {"a": {"epsilon": 1.0, "delta": 1e-5},
                           "mallory": {"epsilon": 1.0, "delta": 1e-5}}}, "not the study's"),
    ({"privacy.release": {"epsilon": 0.5, "delta": 1e-5}}, "is not what its sites' give"),
    ({"privacy.per_site": {"a": {"epsilon": float("inf"), "delta": 1e-5}}}, "not a DP guarantee"),
    ({"signature": {"algorithm": "Ed25519"}}, "already signed"),
])
def test_a_forged_or_inconsistent_release_is_not_signed(tmp_path, changes, why):
    """What a ServerApp submitted by anyone on the host could write into a run's staging
    folder: another study's release, extra sites, an understated guarantee, huge row counts."""
    key = tmp_path / "release-key.pem"
    folder = _release(tmp_path / "rel", **changes)
    with pytest.raises(ReleaseRefused, match=why):
        sign_release(folder, key, TERMS)
    assert not (folder / "manifest.sig").exists()


def test_a_symlink_in_the_release_is_not_signed(tmp_path):
    folder = _release(tmp_path / "rel")
    (tmp_path / "secret").write_text("the CA key, say")
    (folder / "extra.csv").symlink_to(tmp_path / "secret")
    with pytest.raises(ReleaseRefused, match="symbolic link|symlink"):
        sign_release(folder, tmp_path / "release-key.pem", TERMS)


def test_a_release_of_another_schema_is_not_signed(tmp_path):
    """The ServerApp's account can rewrite the run's schema.yaml in the shared training folder
    before the ServerApp reads it; the release states which schema it was made with."""
    folder = _release(tmp_path / "rel", **{"schema.fingerprint": "beef"})
    terms = ReleaseTerms(**{**TERMS.__dict__, "schema_fingerprint": "f00d"})
    with pytest.raises(ReleaseRefused, match="schema fingerprint 'beef' is not the study's"):
        sign_release(folder, tmp_path / "release-key.pem", terms)
    assert sign_release(_release(tmp_path / "ok"), tmp_path / "release-key.pem", terms)


def test_what_is_signed_is_the_copy_that_was_checked(tmp_path):
    """Under separate accounts the ServerApp's account can still write the folder it wrote the
    release in after the launcher checked it: the launcher copies first, checks and signs the
    copy, and later writes to the original change nothing that verifies."""
    key = tmp_path / "release-key.pem"
    shared = _release(tmp_path / "shared")
    (shared / "report").mkdir()
    (shared / "report" / "scores.json").write_text("{}")
    mine = take_release(shared, tmp_path / "private" / "rel")
    sign_release(mine, key, TERMS)
    (shared / "synthetic.csv").write_text("x\nforged\n")
    (shared / "manifest.json").write_text("{}")
    assert (mine / "synthetic.csv").read_text() == "x\n1\n"
    assert (mine / "report" / "scores.json").read_text() == "{}"
    assert signing.verify(mine, signing.load_public_key(key.with_suffix(".pub"))).ok


def test_a_link_in_the_shared_release_is_not_followed_when_taking_it(tmp_path):
    """A link to serve-admin's own files (its database, the signing key) would otherwise be
    copied into the release as a plain file and signed."""
    shared = _release(tmp_path / "shared")
    (tmp_path / "coordinator.db").write_text("admin tokens")
    (shared / "extra.csv").symlink_to(tmp_path / "coordinator.db")
    with pytest.raises(ReleaseRefused, match="extra.csv: a symbolic link"):
        take_release(shared, tmp_path / "private" / "rel")
    assert not (tmp_path / "private" / "rel").exists()


def test_release_sign_out_signs_a_copy_and_leaves_the_run_s_folder_as_it_was(tmp_path):
    """`synthpool release sign DIR --out NEW`, as the guide's by-hand run does under separate
    accounts: the signed release is the copy; the ServerApp's folder stays unsigned."""
    from typer.testing import CliRunner

    from synthpool.cli import app

    shared = _release(tmp_path / "shared")
    key = tmp_path / "release.key"
    argv = ["release", "sign", str(shared), "--key", "KEY", "--study", "adult", "--sites", "a,b",
            "--population", "disjoint", "--out", str(tmp_path / "mine")]
    signing.generate_key(key)
    argv[argv.index("KEY")] = str(key)
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 0, res.output
    assert signing.verify(tmp_path / "mine", signing.load_public_key(key.with_suffix(".pub"))).ok
    assert not (shared / "manifest.sig").exists()
    again = CliRunner().invoke(app, argv)  # --out must be new: never signs over a release
    assert again.exit_code == 2 and "is not empty" in " ".join(again.output.split())
