"""The deployment files in deploy/: what can be checked without a container engine or systemd.

Checked here, each with the real tool where one is needed and a skip that says why otherwise:

* the compose file parses, references files that exist, gives every site its own data volume,
  state volume and site.toml, and wires the networks so that a site reaches only the fleet
  gateway; `docker compose config` (or `docker-compose config`) when a compose client exists;
* the Dockerfiles copy only paths that exist (and that their .dockerignore lets through), pin
  CPU torch 2.13.0 on python:3.11-slim, run as a non-root user with a state volume, and the
  agent's exposes no port;
* every site.toml (the example and the compose sites') loads with the agent's own loader
  (synthpool.agent.config.load_site_config) and the example study.yaml is the Adult schema;
* the systemd units pass `systemd-analyze verify` and `systemd-analyze security --offline`;
* the coordinator start script: `sh -n`, shellcheck when installed, and its dry run;
* the fleet gateway's nginx config, run by a real nginx in front of a loopback HTTP server that
  records what reaches it: Fleet routes pass, Control/Runtime/docs and path tricks get 403;
* the demo-data seeder writes rows the Adult schema loads.
"""

from __future__ import annotations

import gzip
import http.client
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from synthpool.agent.config import load_site_config
from synthpool.common.bundled import ADULT_SCHEMA
from synthpool.common.loading import load_table
from synthpool.common.schema import Schema

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILES = {"agent": DEPLOY / "docker" / "agent.Dockerfile",
               "coordinator": DEPLOY / "docker" / "coordinator.Dockerfile"}
UNITS = {"agent": DEPLOY / "systemd" / "synthpool-agent.service",
         "coordinator": DEPLOY / "systemd" / "synthpool-coordinator.service",
         "admin": DEPLOY / "systemd" / "synthpool-admin.service"}
# The SuperLink (and every ServerApp) runs as synthpool-link; the admin API as
# synthpool-coordinator, the only account with the CA key, the admin database and the signing key.
ACCOUNT = {"agent": "agent", "coordinator": "link", "admin": "coordinator"}
START_SCRIPT = DEPLOY / "scripts" / "coordinator-start.sh"
FIREWALL_SCRIPT = DEPLOY / "scripts" / "control-firewall.sh"
GATEWAY_TEMPLATE = DEPLOY / "docker" / "fleet-gateway.conf.template"
GATEWAY_SCRIPT = DEPLOY / "scripts" / "gateway-conf.sh"
SITES = ("site-a", "site-b", "site-c")
GATEWAY_PORT = 9092


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _run(argv, timeout=20, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


# -- compose ----------------------------------------------------------------------------------------

def test_compose_parses_and_its_files_exist():
    doc = _compose()
    services = doc["services"]
    assert {"coordinator", "fleet-gateway", *SITES} <= set(services)
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert context == ROOT, f"{name}: build context should be the repository root"
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']}"
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if source.startswith((".", "/")):  # a bind mount: the file must ship with the repo
                assert (DEPLOY / source).exists(), f"{name}: bind source {source} is missing"
            else:
                assert source in doc["volumes"], f"{name}: undeclared volume {source}"


def test_compose_each_site_has_its_own_data_state_config_and_network():
    doc = _compose()
    services = doc["services"]
    seen_volumes: set[str] = set()
    for site in SITES:
        svc = services[site]
        mounts = {v.split(":")[1]: v for v in svc["volumes"]}
        data, state, config = (mounts["/data"], mounts["/var/lib/synthpool-agent"],
                               mounts["/etc/synthpool/site.toml"])
        assert data.endswith(":ro") and config.endswith(":ro"), "data and config are read-only"
        for vol in (data, state):
            source = vol.split(":")[0]
            assert source.startswith(site) and source not in seen_volumes
            seen_volumes.add(source)
        cfg = load_site_config(DEPLOY / config.split(":")[0])
        assert cfg.name == site
        assert str(cfg.site.data).startswith("/data/")
        assert cfg.state_dir == Path("/var/lib/synthpool-agent")
        assert cfg.superlink.address == f"fleet-gateway:{GATEWAY_PORT}"
        assert svc["networks"] == [f"{site}-net"], "a site is on its own network only"
        assert "ports" not in svc and "expose" not in svc, "the agent opens no inbound port"
        assert svc.get("read_only") is True and svc.get("cap_drop") == ["ALL"]


def test_compose_networks_let_sites_reach_only_the_fleet_gateway():
    doc = _compose()
    services = doc["services"]
    assert all(net.get("internal") for net in doc["networks"].values())
    members: dict[str, set[str]] = {}
    for name, svc in services.items():
        if svc.get("profiles"):
            assert svc.get("network_mode") == "none"
            continue
        assert "ports" not in svc, f"{name} publishes a port to the host"
        for net in svc.get("networks", []):
            members.setdefault(net, set()).add(name)
    assert members["coordinator-net"] == {"coordinator", "fleet-gateway"}
    for site in SITES:
        assert members[f"{site}-net"] == {site, "fleet-gateway"}
    gateway = services["fleet-gateway"]
    assert gateway["environment"]["SYNTHPOOL_GATEWAY_LISTEN"] == str(GATEWAY_PORT)
    assert gateway["environment"]["SYNTHPOOL_SUPERLINK"] == "coordinator:9092"
    mount = gateway["volumes"][0].split(":")
    assert (DEPLOY / mount[0]).resolve() == GATEWAY_TEMPLATE
    # Named default.conf.template, the rendered file replaces the image's welcome-page server.
    assert mount[1] == "/etc/nginx/templates/default.conf.template"


def _compose_command() -> list[str] | None:
    if shutil.which("docker"):
        if _run(["docker", "compose", "version"]).returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):  # the standalone client (Debian's is 1.29)
        return ["docker-compose"]
    return None


def test_compose_config_with_the_compose_client():
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("no compose client: `docker compose version` fails (no compose plugin) and "
                    "there is no docker-compose binary")
    # `config` only parses, interpolates and validates the file: it needs no engine.
    out = _run([*cmd, "-f", str(COMPOSE), "-p", "synthpool", "--profile", "demo", "config"],
               cwd=ROOT)
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    assert {"coordinator", "fleet-gateway", "demo-data", *SITES} <= set(services)


# -- Dockerfiles ------------------------------------------------------------------------------------

def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _ignored(dockerfile: Path, path: str) -> bool:
    """Whether the Dockerfile's own .dockerignore (`**` then `!allowed` lines) drops `path`."""
    rules = [ln.strip() for ln in Path(f"{dockerfile}.dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert rules[0] == "**"
    allowed = [r[1:] for r in rules if r.startswith("!")]
    return not any(path == a or path.startswith(a.rstrip("/") + "/") for a in allowed)


@pytest.mark.parametrize("role", sorted(DOCKERFILES))
def test_dockerfile_copies_existing_paths_and_follows_the_rules(role):
    dockerfile = DOCKERFILES[role]
    ins = _instructions(dockerfile)
    froms = [rest for word, rest in ins if word == "FROM"]
    args = dict(re.match(r"(\w+)=(\S+)", rest).groups() for word, rest in ins
                if word == "ARG" and "=" in rest)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    assert args["TORCH_SPEC"] == "torch==2.13.0" and args["TORCH_INDEX_URL"].endswith("/cpu")
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    assert runs.index("${TORCH_SPEC}") < runs.index("pip install /src"), "torch goes in first"
    copies = 0
    for word, rest in ins:
        if word in ("COPY", "ADD"):
            parts = [p for p in rest.split() if not p.startswith("--")]
            if "--from=" in rest:
                continue
            for source in parts[:-1]:
                copies += 1
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} is missing"
                assert not _ignored(dockerfile, source), f"{source} is excluded by .dockerignore"
    assert copies >= 6
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    volumes = [rest for word, rest in ins if word == "VOLUME"]
    assert volumes == [f'["/var/lib/synthpool-{role}"]']
    assert any(word == "HEALTHCHECK" for word, _ in ins)
    exposed = [rest for word, rest in ins if word == "EXPOSE"]
    if role == "agent":
        assert exposed == [], "the agent opens no inbound port"
        entry = [rest for word, rest in ins if word == "ENTRYPOINT"][-1]
        scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
        assert entry == '["synthpool-agent"]' and "synthpool-agent" in scripts
    else:
        assert exposed == ["9092"]


# -- example configs --------------------------------------------------------------------------------

def test_example_site_toml_loads_with_the_agents_loader():
    cfg = load_site_config(DEPLOY / "examples" / "site.toml")
    assert cfg.name == "hospital-a"
    assert cfg.state_dir == Path("/var/lib/synthpool-agent")  # what the systemd unit makes
    assert cfg.superlink.insecure is False
    assert cfg.superlink.root_certificates == DEPLOY / "examples" / "ca.pem"
    assert set(cfg.budgets) == {"adult"}
    assert cfg.schema().name == "adult"


def test_example_study_yaml_is_the_bundled_adult_schema():
    study = Schema.load(DEPLOY / "examples" / "study.yaml")
    assert study.fingerprint() == Schema.load(ADULT_SCHEMA).fingerprint()
    assert "common/datasets/adult.yaml" in (DEPLOY / "examples" / "study.yaml").read_text()


def test_coordinator_env_names_only_settings_the_start_script_reads():
    script = START_SCRIPT.read_text()
    names = re.findall(r"^#?(SYNTHPOOL_[A-Z_]+)=", (DEPLOY / "examples" / "coordinator.env")
                       .read_text(), re.M)
    assert names
    for name in names:
        assert "${" + name in script, f"{name} is not read by coordinator-start.sh"


# -- systemd ----------------------------------------------------------------------------------------

def _systemd_version() -> int:
    out = _run(["systemd-analyze", "--version"]).stdout
    return int(re.search(r"systemd (\d+)", out).group(1))


def _require_systemd_analyze(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    probe = tmp_path / "probe.service"
    probe.write_text("[Service]\nType=exec\nExecStart=/bin/true\n")
    out = _run(["systemd-analyze", "verify", "--man=no", str(probe)])
    if out.returncode != 0 or out.stderr.strip():
        pytest.skip(f"systemd-analyze verify does not work in this sandbox: {out.stderr.strip()}")


def _unit_directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in re.sub(r"\\\n\s*", " ", path.read_text()).splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.parametrize("role", sorted(UNITS))
def test_systemd_unit_has_the_required_settings(role):
    d = _unit_directives(UNITS[role])
    account = f"synthpool-{ACCOUNT[role]}"
    state = f"/var/lib/{account}"
    assert d["User"] == [account]
    assert d["StateDirectory"] == [account]
    assert d["ReadWritePaths"][0].split()[0] == state
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "Restart": "on-failure", "KillSignal": "SIGTERM"}.items():
        assert d[key] == [value], key
    assert d["RestartSec"] and d["RestartSteps"] and d["RestartMaxDelaySec"]
    assert d["ExecStart"][0].split()[0].startswith("/opt/synthpool/")


def test_the_superlink_and_the_admin_api_run_as_separate_accounts():
    """Finding 2: any app the SuperLink's Control API accepts gets a ServerApp inside the
    SuperLink's unit. That unit's account is not serve-admin's, cannot see serve-admin's state
    (the CA and admin keys, the signing key, the admin database and the signed releases, all
    `coordinator init` writes), and shares with it only the two folders the start script
    makes group-accessible."""
    from synthpool.coordinator.admin.pki import CoordinatorPKI

    link, admin = _unit_directives(UNITS["coordinator"]), _unit_directives(UNITS["admin"])
    assert link["User"] != admin["User"] and link["Group"] != admin["Group"]
    admin_state = "/var/lib/synthpool-coordinator"
    pki = CoordinatorPKI(Path(admin_state))
    for path in (pki.ca_key, pki.admin_key, pki.signing_key, pki.state_dir / "coordinator.db"):
        assert str(path).startswith(admin_state + "/")
    assert admin_state in {p.lstrip("-") for p in link["InaccessiblePaths"]}
    assert not any(p.startswith("/var/lib/synthpool-coordinator")
                   for p in link["ReadWritePaths"][0].split())
    # serve-admin joins the SuperLink's group for its FLWR_HOME and the training folder, which
    # the start script creates with the group's access.
    assert admin["SupplementaryGroups"] == link["Group"]
    exec_start = " ".join(admin["ExecStart"])
    assert "--superlink-flwr-home /var/lib/synthpool-link/cli-home" in exec_start
    assert "--training-dir /var/lib/synthpool-link/training" in exec_start
    assert "-/var/lib/synthpool-link/training" in admin["ReadWritePaths"][0].split()
    assert link["UMask"] == ["0027"] and admin["UMask"] == ["0077"]


def test_the_superlink_starts_only_behind_the_control_firewall():
    """The rules are loaded (as root, "+") before every start of the SuperLink; a missing
    rules file fails the start. The guide renders that file with the script."""
    link = _unit_directives(UNITS["coordinator"])
    assert link["ExecStartPre"] == ["+/usr/sbin/nft -f /etc/synthpool/control-firewall.nft"]
    install = "\n".join(" ".join(ln.split())
                        for ln in _code_lines(_section("Install the coordinator (systemd)")))
    assert "control-firewall.sh --port 9092 --allow synthpool-link --allow synthpool-coordinator" \
        " --allow www-data > /etc/synthpool/control-firewall.nft" in install
    assert install.index("control-firewall.nft") < install.index("enable --now synthpool-coordinator")


def test_control_firewall_script_renders_one_replaceable_table():
    out = _run(["sh", str(FIREWALL_SCRIPT), "--port", "9092", "--allow", "root", "--allow", "4242"])
    assert out.returncode == 0, out.stderr
    assert "tcp dport 9092 fib daddr type local meta skuid != { 0, 4242 }" in out.stdout
    assert "reject with tcp reset" in out.stdout
    assert "delete table inet synthpool_control" in out.stdout
    for bad, why in ((["--port", "x", "--allow", "root"], "must be a number"),
                     (["--port", "9092"], "at least one --allow"),
                     (["--port", "9092", "--allow", "no-such-account-here"], "no account named")):
        out = _run(["sh", str(FIREWALL_SCRIPT), *bad])
        assert out.returncode == 2 and why in out.stderr, out.stderr


@pytest.mark.parametrize("role", sorted(UNITS))
def test_systemd_analyze_verify(role, tmp_path):
    _require_systemd_analyze(tmp_path)
    unit = UNITS[role]
    out = _run(["systemd-analyze", "verify", "--man=no", str(unit)])
    directives = _unit_directives(unit)
    executable = directives["ExecStart"][0].split()[0]
    # The one thing this machine cannot satisfy: the programs live where the operator installs
    # them (/opt/synthpool; nft on the coordinator's host). Any other message (unknown key, bad
    # value) fails the test.
    commands = [v.split()[0].lstrip("+-@!:") for k, vs in directives.items()
                if k.startswith("Exec") for v in vs]
    allowed = [f"Command {c} is not executable: No such file or directory"
               for c in commands if not os.path.exists(c)]
    if _systemd_version() < 254:  # RestartSteps/RestartMaxDelaySec came in systemd 254
        allowed += ["Unknown key 'RestartSteps'", "Unknown key 'RestartMaxDelaySec'"]
    problems = [ln for ln in out.stderr.splitlines()
                if ln.strip() and not any(a in ln for a in allowed)]
    assert not problems, out.stderr
    if os.path.exists(executable):
        assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("role", sorted(UNITS))
def test_systemd_analyze_security_exposure_is_low(role, tmp_path):
    _require_systemd_analyze(tmp_path)
    out = _run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNITS[role])])
    if out.returncode != 0 and "offline" in out.stderr.lower():
        pytest.skip(f"this systemd-analyze cannot assess units offline: {out.stderr.strip()}")
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", out.stdout)
    assert level, out.stdout[-2000:] + out.stderr
    assert float(level.group(1)) <= 2.0, out.stdout


# -- coordinator start script -----------------------------------------------------------------------

@pytest.mark.parametrize("script", [START_SCRIPT, GATEWAY_SCRIPT, FIREWALL_SCRIPT],
                         ids=lambda p: p.name)
def test_script_is_valid_shell(script):
    assert os.access(script, os.X_OK)
    assert _run(["sh", "-n", str(script)]).returncode == 0
    if shutil.which("shellcheck"):
        out = _run(["shellcheck", str(script)])
        assert out.returncode == 0, out.stdout


def _start(tmp_path: Path, **env) -> subprocess.CompletedProcess:
    full = {"PATH": os.environ["PATH"], "SYNTHPOOL_STATE_DIR": str(tmp_path / "state"),
            "SYNTHPOOL_VENV_BIN": str(Path(sys.executable).parent), "SYNTHPOOL_DRY_RUN": "1",
            **env}
    return _run(["sh", str(START_SCRIPT)], env=full)


def test_start_script_dry_run(tmp_path):
    out = _start(tmp_path, SYNTHPOOL_HOST="0.0.0.0", SYNTHPOOL_PORT="19092")
    assert out.returncode == 0, out.stderr
    argv = out.stdout.split("\n")
    assert argv[0] == str(Path(sys.executable).parent / "flower-superlink")
    text = " ".join(argv)
    for part in ("--disable-runtime-dependency-installation", "--host 0.0.0.0", "--port 19092",
                 f"--database {tmp_path}/state/superlink.db", "--insecure"):
        assert part in text
    assert "plain HTTP" in out.stderr
    conn = tomllib.loads((tmp_path / "state" / "cli-home" / "config.toml").read_text())
    assert conn["superlink"]["default"] == "synthpool"
    assert conn["superlink"]["synthpool"] == {"address": "127.0.0.1:19092", "insecure": True}
    modes = {d: oct((tmp_path / "state" / d).stat().st_mode & 0o7777)
             for d in ("superlink-home", "cli-home", "training")}
    # serve-admin, in the SuperLink account's group, reads cli-home and writes in training/.
    assert modes == {"superlink-home": "0o700", "cli-home": "0o2750", "training": "0o2770"}
    assert (tmp_path / "state" / "cli-home" / "config.toml").stat().st_mode & 0o777 == 0o640


def test_start_script_tls_and_node_auth(tmp_path):
    files = {}
    for name in ("ca", "cert", "key"):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text("x")
    tls = {"SYNTHPOOL_TLS_CA": str(files["ca"]), "SYNTHPOOL_TLS_CERT": str(files["cert"]),
           "SYNTHPOOL_TLS_KEY": str(files["key"])}
    out = _start(tmp_path, SYNTHPOOL_NODE_AUTH="1", **tls)
    assert out.returncode == 0, out.stderr
    assert "--insecure" not in out.stdout.split("\n")
    assert f"--ssl-ca-certfile\n{files['ca']}" in out.stdout and "--enable-supernode-auth" in out.stdout
    conn = tomllib.loads((tmp_path / "state" / "cli-home" / "config.toml").read_text())
    assert conn["superlink"]["synthpool"]["root-certificates"] == str(files["ca"])
    # With TLS, node authentication is on unless turned off explicitly.
    default = _start(tmp_path, **tls)
    assert default.returncode == 0 and "--enable-supernode-auth" in default.stdout
    off = _start(tmp_path, SYNTHPOOL_NODE_AUTH="0", **tls)
    assert off.returncode == 0 and "--enable-supernode-auth" not in off.stdout
    # Refusals: a partial TLS set; node auth without TLS; a bad port.
    partial = _start(tmp_path, SYNTHPOOL_TLS_CA=str(files["ca"]))
    assert partial.returncode == 2 and "go together" in partial.stderr
    no_tls = _start(tmp_path, SYNTHPOOL_NODE_AUTH="1")
    assert no_tls.returncode == 2 and "needs TLS" in no_tls.stderr
    assert _start(tmp_path, SYNTHPOOL_PORT="90x").returncode == 2


# -- fleet gateway (real nginx) ---------------------------------------------------------------------

class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str]] = []

    def _answer(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        type(self).seen.append((self.command, self.path))
        body = b"upstream"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

    def log_message(self, *args):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raw_request(port: int, method: str, target: str, body: bytes = b"",
                 tls: ssl.SSLContext | None = None) -> int:
    """Send the request line exactly as given (no client-side normalisation)."""
    if tls is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    else:  # by name: the certificate names localhost, and the client checks it
        conn = http.client.HTTPSConnection("localhost", port, timeout=5, context=tls)
    conn.putrequest(method, target, skip_accept_encoding=True)
    conn.putheader("content-length", str(len(body)))
    conn.endheaders(body)
    status = conn.getresponse().status
    conn.close()
    return status


def _render_gateway(listen: str, superlink: str, pki: Path | None = None) -> str:
    """The gateway config exactly as deploy/OPERATOR.md tells an operator to make it:
    deploy/scripts/gateway-conf.sh, with --pki for TLS on both legs."""
    argv = ["sh", str(GATEWAY_SCRIPT), "--listen", listen, "--superlink", superlink]
    if pki is not None:
        argv += ["--pki", str(pki)]
    out = _run(argv)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _active_lines(conf: str) -> str:
    return "\n".join(ln for ln in conf.splitlines() if not ln.lstrip().startswith("#"))


@pytest.fixture(params=["plain", "tls"])
def gateway(request, tmp_path):
    """(port, client TLS context or None): a real nginx running the gateway template in front of
    a recording upstream; with "tls", TLS on both legs with certificates from the coordinator's
    own `init_coordinator` (what `synthpool coordinator init` runs)."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                      else None)
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx); the gateway config is only "
                    "checked by a real nginx")
    tls = request.param == "tls"
    _Recorder.seen = []
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    client = None
    listen = f"127.0.0.1:{_free_port()}"
    superlink = f"127.0.0.1:{upstream.server_address[1]}"
    if tls:
        from synthpool.coordinator.admin.pki import init_coordinator

        pki = init_coordinator(tmp_path / "coord")
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(pki.server_cert, pki.server_key)
        upstream.socket = server.wrap_socket(upstream.socket, server_side=True)
        client = ssl.create_default_context(cafile=str(pki.ca_cert))
        conf = _render_gateway(listen, superlink, pki.pki_dir)
        assert "${SYNTHPOOL" not in conf
    else:
        # What the nginx image's envsubst step does with the two variables set in the compose
        # file (the commented TLS lines keep ${SYNTHPOOL_PKI_DIR}).
        conf = GATEWAY_TEMPLATE.read_text()
        conf = conf.replace("${SYNTHPOOL_GATEWAY_LISTEN}", listen)
        conf = conf.replace("${SYNTHPOOL_SUPERLINK}", superlink)
        assert "${SYNTHPOOL" not in _active_lines(conf)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    assert bool(re.search(r"^\s*proxy_ssl_verify on;", conf, re.M)) == tls
    (tmp_path / "gateway.conf").write_text(conf)
    temp = "\n".join(f"  {k}_temp_path {tmp_path}/{k};" for k in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\nmaster_process off;\npid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log warn;\nevents {{}}\n"
        f"http {{\n{temp}\n  include {tmp_path}/gateway.conf;\n}}\n")
    check = _run([nginx, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)])
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([nginx, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = int(listen.split(":")[1])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "error.log").read_text()
                assert time.monotonic() < deadline, "nginx did not listen"
                time.sleep(0.05)
        yield port, client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        upstream.shutdown()
        upstream.server_close()


def test_fleet_gateway_forwards_fleet_routes_only(gateway):
    port, tls = gateway
    passes = [("POST", "/v1/fleet/register-node"), ("POST", "/v1/fleet/pull-messages"),
              ("POST", "/v1/fleet/push-object"), ("GET", "/health")]
    for method, target in passes:
        body = b"x" if method == "POST" else b""
        assert _raw_request(port, method, target, body, tls) == 200, target
    refused = [
        ("POST", "/v1/control/start-run"), ("POST", "/v1/control/list-runs"),
        ("POST", "/v1/runtime/pull-messages"), ("GET", "/docs"), ("GET", "/openapi.json"),
        ("GET", "/"), ("GET", "/v1/fleet/get-run"),                  # Fleet is POST only
        ("POST", "/v1/fleet/../control/start-run"),                 # dot segments
        ("POST", "/v1/fleet/%2e%2e/control/start-run"),             # encoded dot segments
        ("POST", "/v1/fleet/x%2F..%2F..%2Fcontrol%2Fstart-run"),    # encoded slashes
        ("POST", "/v1/fleet//../control/start-run"),
        ("POST", "/v1/fleet/pull-messages?x=/v1/control"),          # no query strings
        ("POST", "/v1/fleet/pull-messages/"), ("POST", "/v1/fleet/"),
        ("POST", "/health"), ("GET", "/health/"), ("GET", "/health?x"),
    ]
    for method, target in refused:
        status = _raw_request(port, method, target, tls=tls)
        assert status in (400, 403, 405), f"{method} {target} -> {status}"
    assert _Recorder.seen == [(m, t) for m, t in passes], _Recorder.seen


def test_fleet_gateway_refuses_huge_bodies_and_a_flood_from_one_address(gateway):
    """Flower parses a body before its node-auth check: the gateway bounds the size of one
    request and the rate of one client address, before anything reaches the SuperLink."""
    port, tls = gateway
    conn = (http.client.HTTPConnection("127.0.0.1", port, timeout=5) if tls is None else
            http.client.HTTPSConnection("localhost", port, timeout=5, context=tls))
    conn.putrequest("POST", "/v1/fleet/push-object", skip_accept_encoding=True)
    conn.putheader("content-length", str(65 * 2**20))  # refused on the header, unsent
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()
    statuses = []
    while 429 not in statuses and len(statuses) < 2000:
        statuses.append(_raw_request(port, "POST", "/v1/fleet/pull-messages", b"x", tls))
    assert statuses[:150] == [200] * 150 and 429 in statuses


# -- demo data --------------------------------------------------------------------------------------

def test_seed_demo_data_writes_disjoint_slices_the_schema_loads(tmp_path):
    seeder = DEPLOY / "docker" / "seed_demo_data.py"
    dirs = [tmp_path / s for s in SITES]
    out = _run([sys.executable, str(seeder), "--rows", "200", *map(str, dirs)])
    assert out.returncode == 0, out.stderr
    schema = Schema.load(ADULT_SCHEMA)
    slices = []
    for d in dirs:
        path = d / "rows.csv.gz"
        assert oct(path.stat().st_mode & 0o777) == "0o644"
        frame, report = load_table(path, schema)
        assert report.rows_read == 200 and len(frame) == 200
        with gzip.open(path, "rt") as f:
            slices.append(f.read())
    assert len(set(slices)) == 3
    (dirs[0] / "rows.csv.gz").write_text("mine")
    again = _run([sys.executable, str(seeder), "--rows", "200", str(dirs[0])])
    assert again.returncode == 0 and "left alone" in again.stderr
    assert (dirs[0] / "rows.csv.gz").read_text() == "mine"


# -- operator guide ---------------------------------------------------------------------------------

def test_operator_guide_names_only_files_that_exist():
    guide = (DEPLOY / "OPERATOR.md").read_text()
    paths = set(re.findall(r"`((?:deploy|common|agent|coordinator|synthpool)/[\w./-]+)`", guide))
    assert paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, missing


# -- the guide's claims -----------------------------------------------------------------------------
# An administrator runs the guide literally: its paths, order and commands must stay true.

GUIDE = DEPLOY / "OPERATOR.md"


def _guide() -> str:
    return GUIDE.read_text()


def _section(title: str) -> str:
    """The text of the guide's `## title` (or `### title`) section, up to the next heading of
    the same or a higher level."""
    out, level, fenced = None, 0, False
    for line in _guide().splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"(#+) (.*)\n?$", line)
        if out is None:
            if heading and heading.group(2) == title:
                out, level = [], len(heading.group(1))
        elif heading and len(heading.group(1)) <= level:
            break
        else:
            out.append(line)
    assert out is not None, f"the guide has no section {title!r}"
    return "".join(out)


def _code_lines(text: str) -> list[str]:
    """Shell lines of the fenced code blocks, backslash continuations joined, comments cut."""
    blocks, current = [], None
    for line in text.splitlines():
        if line.strip().startswith("```"):
            if current is None:
                current = [] if line.strip() in ("```", "```bash") else None
                if current is None:  # ```toml and the like: skip to its end
                    current = False
            else:
                if current is not False:
                    blocks.append("\n".join(current))
                current = None
        elif current:
            current.append(line.strip())
        elif current == []:
            current.append(line.strip())
    lines = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [ln.split(" # ")[0].rstrip() for ln in joined.splitlines() if ln.strip()]
    return lines


def test_guide_uses_one_site_toml_path_the_unit_uses():
    guide = _guide()
    paths = set(re.findall(r"(/etc/[\w./-]*site\.toml)", guide))
    assert paths == {"/etc/synthpool/site.toml"}, paths
    exec_start = _unit_directives(UNITS["agent"])["ExecStart"][0]
    assert exec_start.endswith("--config /etc/synthpool/site.toml")
    assert "/etc/synthpool/site.toml" in (DEPLOY / "examples" / "site.toml").read_text()
    for unit in UNITS.values():
        assert "synthpool-agent/site.toml" not in unit.read_text()


def test_guide_enrolls_a_site_before_starting_its_agent():
    guide = _guide()
    install = _section("Install a site (systemd)")
    assert "enable --now synthpool-agent" not in install
    assert "install -d -m 0700 -o synthpool-agent" in install   # enroll can write the key
    enroll = guide.index("synthpool-agent enroll --config /etc/synthpool/site.toml")
    start = guide.index("systemctl enable --now synthpool-agent")
    assert guide.index("## Install a site") < enroll < start
    assert _section("Enroll a site").index("sites approve") < \
        _section("Enroll a site").index("enable --now synthpool-agent")


def test_guide_initialises_the_coordinator_before_starting_its_services():
    section = _section("Install the coordinator (systemd)")
    assert section.index("coordinator init") < section.index(
        "enable --now synthpool-coordinator synthpool-admin")


def test_guide_documents_the_admin_cli_connection_settings():
    from synthpool.commands.admin.client import CONNECTION_OPTIONS, DEFAULT_COORDINATOR

    section = _section("Connect the admin CLI")
    for name, _type, option in CONNECTION_OPTIONS:
        assert option.envvar in section, option.envvar
        assert option.param_decls[0] in section, option.param_decls[0]
    assert DEFAULT_COORDINATOR in section
    # What init prints is what the guide shows.
    assert "export SYNTHPOOL_ADMIN_TOKEN=" in section and "coordinator init" in section


def test_guide_documents_the_enrollment_port():
    from synthpool.coordinator.admin.server import DEFAULT_LISTEN

    section = _section("The enrollment port (50051)")
    assert DEFAULT_LISTEN in section and "admin bearer tokens" in section
    assert "SYNTHPOOL_ADMIN_ARGS=--listen 0.0.0.0:50051" in section
    assert "$SYNTHPOOL_ADMIN_ARGS" in UNITS["admin"].read_text()
    assert "EnvironmentFile=-/etc/synthpool/admin.env" in UNITS["admin"].read_text()


def test_guide_tls_switch_of_coordinator_env_gives_the_start_script_inits_files(tmp_path):
    """`sed -i 's/^#SYNTHPOOL_/SYNTHPOOL_/' coordinator.env` as the guide says: TLS with the files
    init makes, and node authentication."""
    from synthpool.coordinator.admin.pki import CoordinatorPKI

    section = _section("TLS on the SuperLink, node authentication")
    assert "sed -i 's/^#SYNTHPOOL_/SYNTHPOOL_/' /etc/synthpool/coordinator.env" in section
    text = re.sub(r"^#SYNTHPOOL_", "SYNTHPOOL_", (DEPLOY / "examples" / "coordinator.env")
                  .read_text(), flags=re.M)
    env = dict(ln.split("=", 1) for ln in text.splitlines()
               if ln.strip() and not ln.startswith("#"))
    pki = CoordinatorPKI(Path("/var/lib/synthpool-coordinator"))
    # The SuperLink's account reads copies of init's files, away from the CA's key; the guide
    # makes exactly those copies.
    install = _section("Install the coordinator (systemd)")
    for var, made in (("SYNTHPOOL_TLS_CA", pki.ca_cert), ("SYNTHPOOL_TLS_CERT", pki.server_cert),
                      ("SYNTHPOOL_TLS_KEY", pki.server_key)):
        assert env[var] == f"/etc/synthpool/tls/{made.name}"
        assert str(made) in install
    assert "-g synthpool-link" in install and "/etc/synthpool/tls/" in install
    assert env["SYNTHPOOL_NODE_AUTH"] == "1" and env["SYNTHPOOL_HOST"] == "127.0.0.1"


def _cli_commands():
    import typer

    from synthpool.agent.cli import app as agent_app
    from synthpool.commands import admin, release

    main = typer.Typer()
    for name, sub in admin.APPS:
        main.add_typer(sub, name=name)
    main.add_typer(release.app, name="release")
    return {"synthpool": typer.main.get_command(main),
            "synthpool-agent": typer.main.get_command(agent_app)}


def test_every_command_in_the_guide_exists_with_the_options_it_uses():
    """Each `synthpool ...` / `synthpool-agent ...` line of the guide's code blocks names a
    real (sub)command, and every --option it passes is one of that command's."""
    import click

    clis = _cli_commands()
    seen = 0
    for line in _code_lines(_guide()):
        # The program in a command position: first on the line, after sudo/nohup/env
        # assignments/&&, or a path to it ($V/synthpool, /opt/.../bin/synthpool).
        for m in re.finditer(r"(?:^|&&\s*|;\s*|nohup\s+|sudo -u \S+\s+|\S+=\S+\s+|[\w$]/)"
                             r"(synthpool-agent|synthpool)\s+([a-z][\w-]*(?:\s+[a-z][\w-]*)?)",
                             line):
            words = m.group(2).split()
            cmd = clis[m.group(1)]
            for word in words:
                if not isinstance(cmd, click.Group) or word not in cmd.commands:
                    break
                cmd = cmd.commands[word]
            # A group that runs on its own (`synthpool-agent ledger --state-dir`) is a command.
            if isinstance(cmd, click.Group) and not cmd.invoke_without_command:
                if m.group(1) == "synthpool" and words[0] not in cmd.commands:
                    continue  # a top-level command not loaded here (demo, synth, ...)
                raise AssertionError(f"guide: {line!r}: no such command")
            rest = line[m.end():].split(" | ")[0].split(" && ")[0].split(" >")[0]
            known = {o for p in cmd.params for o in p.opts + p.secondary_opts}
            for opt in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest):
                assert opt in known, f"guide: {line!r}: {cmd.name} has no option {opt}"
            seen += 1
    assert seen >= 35, seen


def test_guide_has_a_path_without_systemd():
    section = _section("Without systemd")
    code = "\n".join(_code_lines(section))
    assert "systemctl" not in code and "sudo" not in code
    for step in ("coordinator init", "coordinator-start.sh", "serve-admin", "sites invite",
                 "synthpool-agent enroll", "sites approve", "synthpool-agent run",
                 "studies create", "train start", "train watch", "releases download",
                 "release verify"):
        assert step in code, step
    # The site.toml it writes is a valid site config.
    toml_text = re.search(r"<<'TOML'\n(.*?)\nTOML\n", section, re.S).group(1)
    cfg = tomllib.loads(toml_text)
    from synthpool.agent.config import SiteConfig

    SiteConfig.model_validate(cfg)


def test_guide_backup_table_names_the_real_state_files():
    from synthpool.agent import identity, site_state
    from synthpool.agent.ledger import LEDGER_FILE
    from synthpool.coordinator.admin.pki import CoordinatorPKI
    from synthpool.coordinator.admin.state import DB_FILE

    backup = _section("Back up")
    assert "keys/" not in backup
    assert f"`{identity.KEY_FILE.split('/')[0]}/`" in backup
    assert identity.KEY_FILE.split("/")[1] in backup
    assert "holdout.key" in backup and '"holdout.key"' in Path(site_state.__file__).read_text()
    assert LEDGER_FILE in backup and DB_FILE in backup and "superlink.db" in backup
    pki = CoordinatorPKI(Path("S"))
    assert f"`{pki.pki_dir.name}/`" in backup and f"`{pki.signing_key.parent.name}/`" in backup


def test_guide_says_a_study_trains_once_and_how_release_files_are_counted():
    from synthpool.commands.admin import RELEASE_FILES_NOTE

    run = _section("Run a study")
    assert "One study, one training." in run and "[budgets.adult-2]" in run
    assert "manifest.sig" in run and "manifest.sig" in RELEASE_FILES_NOTE
    assert "epsilon spent:" in run


def test_guide_has_logs_upgrade_and_restore_drill_sections():
    for title in ("Logs", "Upgrade", "Restore drill", "Health"):
        assert _section(title).strip()
    assert "copytruncate" in _section("Logs")
    upgrade = _section("Upgrade")
    for word in ("coordinator.db", "ledger.sqlite", "superlink.db", "Flower"):
        assert word in upgrade


# -- the gateway renderer ---------------------------------------------------------------------------

def test_gateway_script_renders_tls_on_both_legs(tmp_path):
    conf = _render_gateway("0.0.0.0:443", "127.0.0.1:9092", tmp_path / "pki")
    active = _active_lines(conf)
    assert "${SYNTHPOOL" not in conf
    assert "listen 0.0.0.0:443 ssl;" in active
    for line in (f"ssl_certificate     {tmp_path}/pki/server.pem;",
                 f"ssl_certificate_key {tmp_path}/pki/server.key;",
                 f"proxy_ssl_trusted_certificate {tmp_path}/pki/ca.pem;",
                 "proxy_ssl_verify on;", "proxy_ssl_name localhost;"):
        assert line in active, line
    assert "proxy_pass http://" not in active
    assert active.count("proxy_pass https://127.0.0.1:9092;") == 2
    plain = _render_gateway("9092", "coordinator:9092")
    assert "listen 9092;" in plain and "proxy_pass http://coordinator:9092;" in plain
    assert "ssl_certificate" not in _active_lines(plain)
    # The guide's command is this script's.
    assert "gateway-conf.sh --listen 0.0.0.0:443 --superlink 127.0.0.1:9092" in \
        _section("The fleet gateway").replace("\\\n   ", "")
    bad = _run(["sh", str(GATEWAY_SCRIPT), "--listen", "443"])
    assert bad.returncode == 2 and "--superlink is required" in bad.stderr
    assert _run(["sh", str(GATEWAY_SCRIPT), "--listen", "443", "--superlink", "x:1",
                 "--pki", "relative/pki"]).returncode == 2
