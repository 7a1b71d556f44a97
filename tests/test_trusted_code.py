"""A site runs only the ClientApp it installed and pinned (agent/host/fab_policy.py,
agent/host/trusted_exec.py, agent/host/trusted_app.py).

Unit tests check the FAB inspection on in-memory FABs built by Flower's own builder (the bytes
`flwr run` would send) and on hand-made archives. The process test starts a real federation (a
SuperLink, two `synthpool-agent run` sites) and submits, with `flwr run`, a foreign app that
ships `evil_app.py` and names it, then one that ships a shadow `synthpool/agent/clientapp/app.py`
under the pinned component name, then the genuine `deploy/app`: the foreign ones are refused at
both sites before any of their code runs (their marker file never appears, each site logs the run
id and the reason, the coordinator records a refusal and no reply), the genuine one trains.
"""

from __future__ import annotations

import io
import json
import shutil
import stat
import sys
import zipfile
from pathlib import Path

import pytest

from tables import TINY_MODEL
from synthpool.agent.host.fab_policy import (
    DEFAULT_ALLOWED_FILES, FLOWER_MANIFEST, PINNED_CLIENTAPP, TrustPolicy, inspect_fab,
)
from synthpool.local_federation import APP_DIR
from synthpool.coordinator.admin.flower_processes import bin_dir

GENUINE_PYPROJECT = (APP_DIR / "pyproject.toml").read_text()


def pyproject(clientapp: str = PINNED_CLIENTAPP,
              serverapp: str = "synthpool.coordinator.serverapp.app:app") -> str:
    """deploy/app's pyproject.toml with other components."""
    text = GENUINE_PYPROJECT
    text = text.replace(f'clientapp = "{PINNED_CLIENTAPP}"', f'clientapp = "{clientapp}"')
    return text.replace('serverapp = "synthpool.coordinator.serverapp.app:app"',
                        f'serverapp = "{serverapp}"')


def build_fab(files: dict[str, str]) -> bytes:
    """The FAB `flwr run` would submit for an app made of `files` (Flower's builder)."""
    from flwr.cli.build import build_fab_from_files

    return build_fab_from_files({k: v.encode() for k, v in files.items()})[0]


def raw_zip(entries: list[tuple[str, bytes]], modes: dict[str, int] | None = None) -> bytes:
    """An archive nobody's builder would make (duplicates, odd names, symlinks)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries:
            info = zipfile.ZipInfo(name)
            if modes and name in modes:
                info.external_attr = modes[name] << 16
            z.writestr(info, data)
    return buf.getvalue()


EVIL_APP = '''
from pathlib import Path
Path({marker!r}).write_text("foreign code ran at a site")
from flwr.clientapp import ClientApp
app = ClientApp()
'''


# -- the inspection, on in-memory FABs -------------------------------------------------------------

def test_the_genuine_app_is_trusted():
    fab = build_fab({"pyproject.toml": GENUINE_PYPROJECT})
    verdict = inspect_fab(fab, TrustPolicy())
    assert verdict.trusted, verdict.reason
    assert set(verdict.files) == {"pyproject.toml", FLOWER_MANIFEST}
    assert verdict.clientapp == PINNED_CLIENTAPP
    # A README beside the configuration is data, and allowed by default.
    assert inspect_fab(build_fab({"pyproject.toml": GENUINE_PYPROJECT, "README.md": "# study\n"}),
                       TrustPolicy()).trusted


def test_an_app_that_ships_python_and_names_it_is_refused(tmp_path):
    fab = build_fab({"pyproject.toml": pyproject("evil_app:app"),
                     "evil_app.py": EVIL_APP.format(marker=str(tmp_path / "m"))})
    verdict = inspect_fab(fab, TrustPolicy())
    assert not verdict.trusted
    assert "ships code (evil_app.py)" in verdict.reason
    assert verdict.clientapp == "evil_app:app"  # recorded with the refusal
    # Without the file, the component alone is refused too.
    only_name = inspect_fab(build_fab({"pyproject.toml": pyproject("evil_app:app")}), TrustPolicy())
    assert not only_name.trusted and only_name.clientapp == "evil_app:app"
    assert "names clientapp 'evil_app:app'" in only_name.reason
    assert PINNED_CLIENTAPP in only_name.reason


def test_a_shadow_of_the_pinned_module_is_refused_though_it_names_the_pinned_component():
    fab = build_fab({"pyproject.toml": pyproject(),
                     "synthpool/__init__.py": "", "synthpool/agent/__init__.py": "",
                     "synthpool/agent/clientapp/app.py": "app = None\n"})
    verdict = inspect_fab(fab, TrustPolicy())
    assert not verdict.trusted and "synthpool/agent/clientapp/app.py" in verdict.reason


@pytest.mark.parametrize("name", ["notes.json", "conf/extra.toml", "settings.yaml"])
def test_data_files_outside_the_allowed_list_are_refused_unless_the_site_allows_them(name):
    fab = build_fab({"pyproject.toml": GENUINE_PYPROJECT, name: "{}"})
    refused = inspect_fab(fab, TrustPolicy())
    assert not refused.trusted and f"does not allow ({name})" in refused.reason
    allowing = TrustPolicy(allowed_files=frozenset({*DEFAULT_ALLOWED_FILES, name}))
    assert inspect_fab(fab, allowing).trusted


def test_another_pinned_component_is_what_counts():
    fab = build_fab({"pyproject.toml": GENUINE_PYPROJECT})
    policy = TrustPolicy(clientapp="hospital_build.client:app")
    verdict = inspect_fab(fab, policy)
    assert not verdict.trusted and "'hospital_build.client:app'" in verdict.reason


def test_hash_pins():
    fab = build_fab({"pyproject.toml": GENUINE_PYPROJECT})
    digest = inspect_fab(fab, TrustPolicy()).sha256
    assert inspect_fab(fab, TrustPolicy(fab_sha256=frozenset({digest}))).trusted
    # Another FAB with a pinned-looking component but other defaults: a new hash, refused.
    changed = build_fab({"pyproject.toml": GENUINE_PYPROJECT.replace("num-rounds = 3",
                                                                     "num-rounds = 30")})
    verdict = inspect_fab(changed, TrustPolicy(fab_sha256=frozenset({digest})))
    assert not verdict.trusted and "is not one this site pinned" in verdict.reason
    assert verdict.sha256 in verdict.reason and verdict.sha256 != digest


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_archives_no_builder_makes_are_refused():
    good = GENUINE_PYPROJECT.encode()
    cases = {
        "not a zip archive": b"PK\x03\x04 not really",
        "unsafe entry name '../pyproject.toml'": raw_zip([("../pyproject.toml", good)]),
        "unsafe entry name '/etc/x'": raw_zip([("pyproject.toml", good), ("/etc/x", b"")]),
        "unsafe entry name 'dir/'": raw_zip([("pyproject.toml", good), ("dir/", b"")]),
        "the same path twice": raw_zip([("pyproject.toml", b"x = 1"), ("pyproject.toml", good)]),
        "is not a regular file": raw_zip([("pyproject.toml", good)],
                                         {"pyproject.toml": stat.S_IFLNK | 0o777}),
        "ships code (x.pth)": raw_zip([("pyproject.toml", good), ("x.pth", b"import os")]),
        "ships code (lib.so)": raw_zip([("pyproject.toml", good), ("lib.so", b"")]),
        "has no pyproject.toml": raw_zip([("README.md", b"")]),
        "cannot be read (TOMLDecodeError)": raw_zip([("pyproject.toml", b"[[[")]),
        "names no clientapp component": raw_zip([("pyproject.toml", b"[project]\nname='x'\n")]),
        "names no clientapp": raw_zip([("pyproject.toml", b"tool = 3\n")]),
        "pyproject.toml is 2000000 bytes": raw_zip([("pyproject.toml", b" " * 2_000_000)]),
    }
    for reason, content in cases.items():
        verdict = inspect_fab(content, TrustPolicy())
        assert not verdict.trusted, reason
        assert reason in verdict.reason, (reason, verdict.reason)
    assert "more than a FAB may be" in inspect_fab(b"\0" * (10 * 1024 * 1024 + 1),
                                                   TrustPolicy()).reason


def test_a_policy_cannot_allow_code_or_malformed_pins():
    with pytest.raises(ValueError, match="code files"):
        TrustPolicy(allowed_files=frozenset({"pyproject.toml", "helper.py"}))
    with pytest.raises(ValueError, match="64 lowercase hex"):
        TrustPolicy(fab_sha256=frozenset({"abc"}))
    with pytest.raises(ValueError, match="module:attribute"):
        TrustPolicy(clientapp="synthpool.agent.clientapp.app")


def test_only_client_app_tasks_and_a_readable_site_config(tmp_path):
    from synthpool.agent.host.trusted_app import CLIENT_APP_TASK, SiteTrust, decide, refusal_reason

    fab = build_fab({"pyproject.toml": GENUINE_PYPROJECT})
    trust = SiteTrust("s0", TrustPolicy(), tmp_path)
    assert decide(CLIENT_APP_TASK, fab, trust).trusted
    agent_task = decide("flwr-agentapp", fab, trust)
    assert not agent_task.trusted and "runs ClientApps only" in agent_task.reason
    assert refusal_reason(trust, 7, agent_task).startswith("site s0 refuses: run 7: untrusted app")
    missing = SiteTrust.load(tmp_path / "nowhere.toml")
    assert not decide(CLIENT_APP_TASK, fab, missing).trusted


# -- the site's configuration and the processes the agent starts -----------------------------------

def _site_toml(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "site.toml"
    (tmp_path / "rows.csv").write_text("")
    path.write_text('[site]\nname = "s0"\ndata = "rows.csv"\nstate_dir = "state"\n\n'
                    '[superlink]\naddress = "127.0.0.1:1"\ninsecure = true\n' + extra)
    return path


def test_site_toml_trust_table(tmp_path):
    from synthpool.agent.config import ConfigError, load_site_config

    cfg = load_site_config(_site_toml(tmp_path))
    assert cfg.trust.policy() == TrustPolicy()          # pinned to synthpool's ClientApp by default
    pin = "AB" * 32
    cfg = load_site_config(_site_toml(tmp_path, f'\n[trust]\nclientapp = "site_pkg.app:app"\n'
                                                f'fab_sha256 = ["sha256:{pin}"]\n'))
    assert cfg.trust.policy().clientapp == "site_pkg.app:app"
    assert cfg.trust.policy().fab_sha256 == frozenset({pin.lower()})
    for bad in ('allowed_files = ["pyproject.toml", "evil.py"]', 'fab_sha256 = ["nope"]',
                'clientapp = "no_attribute"', 'unknown = 1'):
        with pytest.raises(ConfigError):
            load_site_config(_site_toml(tmp_path, f"\n[trust]\n{bad}\n"))
    # The agent's guarantee rests on process isolation: the owner cannot switch it off by accident.
    with pytest.raises(ConfigError, match="--isolation"):
        load_site_config(_site_toml(tmp_path, '\n[supernode]\nextra_args = ["--isolation", '
                                              '"subprocess"]\n'))


@pytest.mark.parametrize("extra", [["--isolat", "subprocess"], ["--is", "subprocess"],
                                   ["--isol=subprocess"], ["--isolation=subprocess"]])
def test_an_abbreviated_isolation_flag_is_refused_too(tmp_path, extra):
    from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

    from synthpool.agent.config import ConfigError, load_site_config

    # The attack: Flower's own parser takes any unambiguous prefix, and the last value wins over
    # the agent's `--isolation process`.
    argv = ["--insecure", "--isolation", "process", *extra]
    assert _parse_args_run_supernode().parse_args(argv).isolation == "subprocess"
    with pytest.raises(ConfigError, match=f"--isolation .*{extra[0]}"):
        load_site_config(_site_toml(tmp_path, f"\n[supernode]\nextra_args = {json.dumps(extra)}\n"))


def test_other_supernode_flags_pass_the_isolation_guard(tmp_path):
    from synthpool.agent.config import load_site_config

    extra = ["--max-retries", "3", "--max-wait-time=60", "--insecure"]
    cfg = load_site_config(_site_toml(tmp_path, f"\n[supernode]\nextra_args = {json.dumps(extra)}\n"))
    assert cfg.supernode.extra_args == extra


def test_the_agent_runs_the_supernode_in_process_isolation_beside_its_own_executor(tmp_path):
    from synthpool.agent.host import daemon
    from synthpool.agent.config import load_site_config

    cfg = load_site_config(_site_toml(tmp_path, "\n[supernode]\nport = 9123\n"))
    argv = daemon.supernode_argv(cfg)
    assert argv[argv.index("--isolation") + 1] == "process"
    assert argv[argv.index("--node-config") + 1] == f'site-config="{cfg.path}"'
    ex = daemon.executor_argv(cfg)
    assert ex[:4] == [sys.executable, "-P", "-m", "synthpool.agent.host.trusted_exec"]
    assert ex[ex.index("--runtime-api-address") + 1] == "127.0.0.1:9123"
    assert ex[ex.index("--config") + 1] == str(cfg.path)


# -- real processes ------------------------------------------------------------------------------

ROWS = 1000
RUN = {"study": "adult", "num-rounds": 1, "local-steps": 2, "model": TINY_MODEL,
       "release-rows": 200, "noise-multiplier": 2.0, "stats-noise-multiplier": 12.0,
       "evaluate": False, "min-sites": 2, "expected-sites": 2, "node-wait-timeout": 60.0,
       "round-timeout": 120.0, "straggler-grace": 3.0, "poll-interval": 0.3}

# At the coordinator, flwr-serverapp puts the FAB's folder first on sys.path, where the shadow
# `synthpool` package would hide the real one from the (malicious, in this test) coordinator's
# own ServerApp too; this shim, run only at the coordinator, steps around it.
SERVER_SHIM = '''
import sys
from pathlib import Path
here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
from synthpool.coordinator.serverapp import app as _server_app
app = _server_app.app  # an assignment: `flwr run` looks for one in the module's syntax tree
'''


def _foreign_apps(root: Path, marker: Path) -> dict[str, Path]:
    evil = root / "evil"
    evil.mkdir(parents=True)
    (evil / "pyproject.toml").write_text(pyproject("evil_app:app"))
    (evil / "evil_app.py").write_text(EVIL_APP.format(marker=str(marker)))
    shadow = root / "shadow"
    (shadow / "synthpool" / "agent" / "clientapp").mkdir(parents=True)
    (shadow / "pyproject.toml").write_text(pyproject(serverapp="coordinator_shim:app"))
    (shadow / "coordinator_shim.py").write_text(SERVER_SHIM)
    (shadow / "synthpool" / "__init__.py").write_text("")
    for package in ("agent", "agent/clientapp"):
        (shadow / "synthpool" / package / "__init__.py").write_text("")
    (shadow / "synthpool" / "agent" / "clientapp" / "app.py").write_text(
        EVIL_APP.format(marker=str(marker)))
    return {"evil": evil, "shadow": shadow}


@pytest.mark.skipif(sys.platform != "linux", reason="process plumbing reads /proc")
@pytest.mark.skipif(shutil.which("synthpool-agent", path=str(bin_dir())) is None,
                    reason="synthpool-agent not installed in this venv")
@pytest.mark.timeout(480)
def test_foreign_apps_are_refused_at_every_site_and_the_genuine_app_trains(tmp_path):
    from synthpool.agent.ledger import Ledger
    from synthpool.agent.host.trusted_app import REFUSALS_FILE
    from synthpool.common.bundled import ADULT_TRAIN
    from synthpool.local_federation import LocalFederation, SiteSpec, split_rows

    marker = tmp_path / "FOREIGN-CODE-RAN"
    apps = _foreign_apps(tmp_path / "apps", marker)
    data = split_rows(ADULT_TRAIN, tmp_path / "data", 2, rows_per_site=ROWS)
    sites = [SiteSpec(f"s{i}", p, {"adult": (10.0, 1e-5)}, size="declared", declared_rows=ROWS,
                      torch_threads=1) for i, p in enumerate(data)]
    with LocalFederation(tmp_path / "fed", sites) as fed:
        fed.start()
        seen_runs: list[int] = []
        for kind, app_dir in apps.items():
            fed.app_dir = app_dir
            fed.checkpoint_dir = fed.coord_dir / f"ckpt-{kind}"
            out = fed.run(RUN, timeout=150, name=f"run-{kind}")
            detail = f"{kind}:\n{out.output[-3000:]}\n{fed.logs()}"
            assert not marker.exists(), detail
            refused = out.of("site_refused")
            assert sorted(e["site"] for e in refused) == ["s0", "s1"], detail
            for e in refused:
                assert f"site {e['site']} refuses: run " in e["reason"]
                assert "untrusted app: the app ships code" in e["reason"], e["reason"]
            assert not out.of("stats_completed") and not out.of("release_written"), detail
            # Each site logged the run id and the reason, and kept a record of it.
            for name in fed.sites:
                records = [json.loads(line) for line in
                           (fed.site_state_dir(name) / REFUSALS_FILE).read_text().splitlines()]
                run_id = records[-1]["run_id"]
                assert run_id not in seen_runs and records[-1]["trusted"] is False
                log = fed.procs.by_name(f"site-{name}").log_tail(200_000)
                assert f"site {name}: REFUSED run {run_id} " in log, log[-3000:]
                assert ("evil_app.py" if kind == "evil" else "synthpool/agent/clientapp/app.py") \
                    in records[-1]["reason"]
            seen_runs.append(run_id)

        fed.app_dir = APP_DIR
        fed.checkpoint_dir = fed.coord_dir / "ckpt-genuine"
        out = fed.run(RUN, timeout=240, name="run-genuine")
        assert out.returncode == 0 and out.of("release_written"), \
            f"{out.output[-3000:]}\n{fed.logs()}"
        assert not out.of("site_refused")
        for name in fed.sites:
            with Ledger(fed.site_state_dir(name)) as led:
                assert len(led.charges("adult")) == 2  # statistics + one round
            # No app was ever unpacked at a site: the pinned code came from its installation.
            assert not (fed.site_state_dir(name) / "flwr-home" / "apps").exists()
        assert not marker.exists()


def test_a_forked_task_draws_fresh_generator_states():
    """Tasks fork from one warm executor: without a reseed every task would start from the
    executor's generator states (the same 'random' draws in every round)."""
    import numpy as np
    import torch

    from synthpool.agent.host import trusted_exec

    torch.manual_seed(0)
    np.random.seed(0)
    torch_before, numpy_before = torch.get_rng_state(), np.random.get_state()[1].copy()
    trusted_exec._reseed()
    assert not torch.equal(torch.get_rng_state(), torch_before)
    assert not (np.random.get_state()[1] == numpy_before).all()
