#!/bin/sh
# Render the nftables rules that keep the SuperLink's port to the coordinator's own accounts, to
# stdout:
#
#   control-firewall.sh --port 9092 --allow synthpool-link --allow synthpool-coordinator \
#       --allow www-data > /etc/synthpool/control-firewall.nft
#   nft -f /etc/synthpool/control-firewall.nft    # synthpool-coordinator.service does this first
#
# Why: Flower 1.42 serves its Control API (submit a run, register SuperNode keys) on the same
# port as Fleet and Runtime, with no authentication. Bound to 127.0.0.1 it is still open to every
# local user, who could `flwr run` an app whose ServerApp runs as the SuperLink's account. These
# rules refuse (TCP reset) every connection to the port at any address of this host unless the
# connecting socket belongs to an allowed account: the SuperLink's own (its ServerApps talk to it
# there), serve-admin's, and the fleet gateway's (nginx's worker account). root is not exempt:
# an administrator uses `sudo -u synthpool-coordinator flwr ...`.
#
#   --port PORT     the SuperLink's port (SYNTHPOOL_PORT)                         (required)
#   --allow USER    an account (name or uid) that may connect; repeatable        (at least one)
#
# The file replaces the table atomically when loaded again (one `nft -f`): other tables are left
# alone. Names are resolved to uids now, so an account that does not exist fails here, not later.
set -eu

port=""
uids=""

die() { echo "control-firewall.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --port) [ $# -ge 2 ] || die "--port needs a value"; port="$2"; shift 2 ;;
    --allow)
      [ $# -ge 2 ] || die "--allow needs an account"
      case "$2" in
        ''|*[!0-9]*) uid=$(id -u -- "$2" 2>/dev/null) || die "no account named '$2' on this host" ;;
        *) uid="$2" ;;
      esac
      uids="${uids:+$uids, }$uid"; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

case "$port" in ''|*[!0-9]*) die "--port must be a number, got '$port'" ;; esac
[ -n "$uids" ] || die "name at least one --allow account (the SuperLink's own first)"

cat <<EOF
# synthpool: only uids { $uids } may connect to the SuperLink's port $port on this host
# (rendered by deploy/scripts/control-firewall.sh; Flower's Control API has no authentication).
table inet synthpool_control
delete table inet synthpool_control
table inet synthpool_control {
  chain output {
    type filter hook output priority filter; policy accept;
    tcp dport $port fib daddr type local meta skuid != { $uids } counter reject with tcp reset
  }
}
EOF
