#!/bin/sh
# Start the coordinator's Flower SuperLink with its state on disk, the way both the container
# (deploy/docker/coordinator.Dockerfile) and the systemd unit
# (deploy/systemd/synthpool-coordinator.service) run it.
#
# What it does:
#   1. creates the state folders: superlink-home/ (0700), and the two that serve-admin, under
#      its own account in this account's group (deploy/OPERATOR.md, "Install the coordinator"),
#      uses: cli-home/ (2750: it reads) and training/ (2770: it writes each run's schema, the
#      ServerApp its checkpoints and unsigned release);
#   2. writes the admin CLI's connection file, $STATE/cli-home/config.toml, naming the connection
#      "synthpool" on the LOCAL address: `FLWR_HOME=$STATE/cli-home flwr run APP synthpool`;
#   3. execs `flower-superlink` (so it receives SIGTERM from the service manager directly) with
#      runtime dependency installation off (else it runs `uv sync` per run and pulls CUDA wheels).
#
# Settings (environment; systemd reads them from /etc/synthpool/coordinator.env):
#   SYNTHPOOL_STATE_DIR   state folder                          default /var/lib/synthpool-link
#   SYNTHPOOL_HOST        address the SuperLink binds           default 127.0.0.1
#                         The port carries Flower's Control API, which has NO authentication in
#                         Flower 1.42: bind it where only this host (or, in compose, only the
#                         fleet gateway) can reach it. Sites reach the fleet gateway, never this.
#   SYNTHPOOL_PORT        SuperLink port (Fleet+Control+Runtime) default 9092
#   SYNTHPOOL_VENV_BIN    folder with flower-superlink          default /opt/synthpool/venv/bin
#   SYNTHPOOL_TLS_CA, SYNTHPOOL_TLS_CERT, SYNTHPOOL_TLS_KEY
#                         PEM files; all three or none. Without them the SuperLink speaks plain
#                         HTTP (a warning is printed). Flower requires TLS for node auth.
#   SYNTHPOOL_NODE_AUTH   1: only SuperNodes whose public key was registered with
#                         `flwr supernode register` (site approval) may connect; needs TLS.
#                         default 1 with TLS, 0 without (Flower has no node auth over plain HTTP)
#   SYNTHPOOL_CONTROL_ADDRESS  address the admin CLI dials       default 127.0.0.1:$SYNTHPOOL_PORT
#                         (with TLS the server certificate must name it)
#   SYNTHPOOL_DRY_RUN     1: print the command instead of running it (used by tests/test_deploy.py)
set -eu

state="${SYNTHPOOL_STATE_DIR:-/var/lib/synthpool-link}"
host="${SYNTHPOOL_HOST:-127.0.0.1}"
port="${SYNTHPOOL_PORT:-9092}"
venv_bin="${SYNTHPOOL_VENV_BIN:-/opt/synthpool/venv/bin}"
tls_ca="${SYNTHPOOL_TLS_CA:-}"
tls_cert="${SYNTHPOOL_TLS_CERT:-}"
tls_key="${SYNTHPOOL_TLS_KEY:-}"
node_auth="${SYNTHPOOL_NODE_AUTH:-}"
control="${SYNTHPOOL_CONTROL_ADDRESS:-127.0.0.1:$port}"

die() { echo "synthpool-coordinator-start: $*" >&2; exit 2; }

case "$port" in ''|*[!0-9]*) die "SYNTHPOOL_PORT must be a number, got '$port'" ;; esac
[ -x "$venv_bin/flower-superlink" ] || die "no flower-superlink in $venv_bin (set SYNTHPOOL_VENV_BIN)"

# Group-readable by default: what the ServerApp writes in training/ is read by serve-admin.
umask 027
mkdir -p "$state/superlink-home" "$state/cli-home" "$state/training" "$state/checkpoints"
chmod 0700 "$state/superlink-home"
chmod 2750 "$state/cli-home"
chmod 2770 "$state/training"

set -- --disable-runtime-dependency-installation --host "$host" --port "$port" \
       --database "$state/superlink.db"

if [ -n "$tls_ca$tls_cert$tls_key" ]; then
  for f in "$tls_ca" "$tls_cert" "$tls_key"; do
    [ -n "$f" ] || die "SYNTHPOOL_TLS_CA, SYNTHPOOL_TLS_CERT and SYNTHPOOL_TLS_KEY go together"
    [ -r "$f" ] || die "cannot read TLS file $f"
  done
  set -- "$@" --ssl-ca-certfile "$tls_ca" --ssl-certfile "$tls_cert" --ssl-keyfile "$tls_key"
  conn_security="root-certificates = \"$tls_ca\""
else
  echo "synthpool-coordinator-start: WARNING: no TLS files set; the SuperLink speaks plain HTTP" \
       "on $host:$port. Keep it off any network but the fleet gateway's." >&2
  set -- "$@" --insecure
  conn_security="insecure = true"
fi

if [ -z "$node_auth" ]; then
  if [ -n "$tls_cert" ]; then node_auth=1; else node_auth=0; fi
fi
case "$node_auth" in
  1|true|yes)
    [ -n "$tls_cert" ] || die "SYNTHPOOL_NODE_AUTH=1 needs TLS (Flower refuses node auth without it)"
    set -- "$@" --enable-supernode-auth ;;
  0|false|no) ;;
  *) die "SYNTHPOOL_NODE_AUTH must be 0 or 1, got '$node_auth'" ;;
esac

# The admin CLI's connection (what `flwr run/ls/log/stop ... synthpool` read), rewritten on every
# start so it always matches the settings above.
cat > "$state/cli-home/config.toml.tmp" <<EOF
[superlink]
default = "synthpool"

[superlink.synthpool]
address = "$control"
$conn_security
EOF
mv -f "$state/cli-home/config.toml.tmp" "$state/cli-home/config.toml"

# Flower starts flower-superexec / flwr-serverapp by name: the venv's bin must come first.
PATH="$venv_bin:$PATH"
FLWR_HOME="$state/superlink-home"
FLWR_TELEMETRY_ENABLED=0
FLWR_DISABLE_UPDATE_CHECK=1
# The SuperLink's SuperExec polls for one ServerApp task per run: once a second is soon enough,
# and each poll is a database query (coordinator/admin/flower_processes.py:start_superlink).
FLWR_SUPEREXEC_TASK_POLL_INTERVAL="${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-1.0}"
PYTHONUNBUFFERED=1
export PATH FLWR_HOME FLWR_TELEMETRY_ENABLED FLWR_DISABLE_UPDATE_CHECK \
       FLWR_SUPEREXEC_TASK_POLL_INTERVAL PYTHONUNBUFFERED

if [ "${SYNTHPOOL_DRY_RUN:-0}" = 1 ]; then
  printf '%s\n' "$venv_bin/flower-superlink" "$@"
  exit 0
fi
exec "$venv_bin/flower-superlink" "$@"
