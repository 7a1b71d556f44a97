"""The launcher signs a release only after checking it is one of the study it launched; the
ServerApp, which runs whatever app the SuperLink's unauthenticated Control API accepts, never
holds the key (finding 2)."""

from __future__ import annotations

import json

import pytest

from synthpool.common import signing
from synthpool.coordinator.release_signing import ReleaseRefused, ReleaseTerms, sign_release

TERMS = ReleaseTerms(study="adult", sites=frozenset({"a", "b"}), population="disjoint",
                     max_rows=100)


def _release(folder, **changes):
    folder.mkdir()
    (folder / "synthetic.csv").write_text("x\n1\n")
    manifest = {
        "kind": "synthpool.federated-release", "study": "adult", "data": {"rows": 100},
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
