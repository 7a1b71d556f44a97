"""`synthpool demo` as the README runs it: from a checkout's root, no `--out`, so every path the
demo makes is relative to the working directory (the first command once failed exactly there:
Flower's config refused a relative CA path). The folder's name has a space in it, as a user's
folder may. Small settings (2 sites, 1 round of 2 DP-SGD steps, 3,000 rows): the plumbing is
under test, the model's quality is the benchmarks' business. Real processes: a TLS SuperLink, enrolled SuperNodes.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from synthpool.coordinator.admin.flower_processes import bin_dir
from processes import REAL_FLOWER_PROCESSES

pytestmark = REAL_FLOWER_PROCESSES


@pytest.mark.timeout(600)
def test_demo_with_default_out_from_a_checkout_root_ends_in_a_verified_release(tmp_path):
    checkout = tmp_path / "my checkout"
    checkout.mkdir()
    synthpool = str(bin_dir() / "synthpool")
    demo = subprocess.run([synthpool, "demo", "--sites", "2", "--rounds", "1",
                           "--steps-per-round", "2", "--plain-aggregation",
                           "--release-rows", "3000"],
                          cwd=checkout, capture_output=True, text=True, timeout=540)
    assert demo.returncode == 0, demo.stderr[-4000:]
    # Its output went to a pipe, as to a log: the stages are there as lines, not a silent bar.
    for stage in ("statistics stage", "round 1/1", "release written"):
        assert stage in demo.stderr, demo.stderr[-2000:]
    release = checkout / "demo-out" / "release"
    manifest = json.loads((release / "manifest.json").read_text())
    assert sorted(manifest["privacy"]["per_site"]) == ["site-0", "site-1"]
    assert manifest["data"]["rows"] == 3000
    assert (release / "report.html").stat().st_size > 0
    # What the demo tells the newcomer to run next, with the paths relative to where they are.
    verify = subprocess.run([synthpool, "release", "verify", "demo-out/release", "--public-key",
                             "demo-out/federation/coordinator/release-key.pub"],
                            cwd=checkout, capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
