#!/bin/sh
# Render the fleet gateway's nginx config (deploy/docker/fleet-gateway.conf.template) for an
# nginx installed on the coordinator host, to stdout:
#
#   gateway-conf.sh --listen 0.0.0.0:443 --superlink 127.0.0.1:9092 \
#       --pki /var/lib/synthpool-coordinator/pki > /etc/nginx/conf.d/synthpool-fleet.conf
#   nginx -t && nginx -s reload            # or: systemctl reload nginx
#
#   --listen ADDR      what sites dial: PORT or HOST:PORT                       (required)
#   --superlink ADDR   the SuperLink's HOST:PORT as the gateway reaches it       (required)
#   --pki DIR          TLS on both legs with the files `synthpool coordinator init` made in
#                      DIR (server.pem, server.key, ca.pem): sites -> gateway over TLS, and
#                      gateway -> SuperLink over TLS verified against ca.pem (what a SuperLink
#                      with SYNTHPOOL_TLS_* / node authentication needs). Without --pki both legs
#                      are plain HTTP: for a private test network only.
#   --template FILE    another template (default: ../docker/fleet-gateway.conf.template beside
#                      this script)
#
# Only sed: no envsubst needed. The rendered file never holds a ${...} of the template.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
template="$here/../docker/fleet-gateway.conf.template"
listen=""
superlink=""
pki=""

die() { echo "gateway-conf.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --listen) [ $# -ge 2 ] || die "--listen needs a value"; listen="$2"; shift 2 ;;
    --superlink) [ $# -ge 2 ] || die "--superlink needs a value"; superlink="$2"; shift 2 ;;
    --pki) [ $# -ge 2 ] || die "--pki needs a value"; pki="$2"; shift 2 ;;
    --template) [ $# -ge 2 ] || die "--template needs a value"; template="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

[ -n "$listen" ] || die "--listen is required, e.g. --listen 0.0.0.0:443"
[ -n "$superlink" ] || die "--superlink is required, e.g. --superlink 127.0.0.1:9092"
[ -r "$template" ] || die "cannot read the template $template"
case "$listen" in *[!0-9A-Za-z.:\[\]-]*) die "--listen: HOST:PORT or PORT, got '$listen'" ;; esac
case "$superlink" in *[!0-9A-Za-z.:\[\]-]*) die "--superlink: HOST:PORT, got '$superlink'" ;; esac

if [ -n "$pki" ]; then
  case "$pki" in /*) ;; *) die "--pki must be an absolute path (nginx resolves relative ones against its prefix)" ;; esac
  case "$pki" in *[\|\&\\\;\ ]*) die "--pki: the path may not contain | & \\ ; or spaces" ;; esac
  for f in server.pem server.key ca.pem; do
    [ -e "$pki/$f" ] || echo "gateway-conf.sh: warning: $pki/$f does not exist (yet)" >&2
  done
  # TLS on: ' ssl' on the listener, every commented ssl_*/proxy_ssl_* line switched on, https to
  # the SuperLink.
  sed -e "s|\${SYNTHPOOL_GATEWAY_LISTEN}|$listen ssl|g" \
      -e "s|\${SYNTHPOOL_SUPERLINK}|$superlink|g" \
      -e "s|\${SYNTHPOOL_PKI_DIR}|$pki|g" \
      -e 's/^\([[:space:]]*\)# \(\(proxy_\)\{0,1\}ssl_[a-z_]* \)/\1\2/' \
      -e 's|proxy_pass http://|proxy_pass https://|' \
      "$template"
else
  echo "gateway-conf.sh: warning: no --pki: plain HTTP from the sites to the gateway and on to" \
       "the SuperLink" >&2
  sed -e "s|\${SYNTHPOOL_GATEWAY_LISTEN}|$listen|g" \
      -e "s|\${SYNTHPOOL_SUPERLINK}|$superlink|g" \
      -e "s|\${SYNTHPOOL_PKI_DIR}|/nonexistent|g" \
      "$template"
fi
