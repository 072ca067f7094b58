#!/usr/bin/env bash
# Throwaway PostgreSQL cluster for the services' store tests and benchmarks.
#
#   services/scripts/postgres.sh up     # init (once) + start; prints the URL on stdout
#   services/scripts/postgres.sh down   # stop (data dir is kept; `rm -rf target/postgres` to wipe)
#   services/scripts/postgres.sh url    # print the URL
#
# Listens on 127.0.0.1 only (port $FERRY_PG_PORT, default 55432) and on a unix socket inside
# the data dir; trust auth on both (it is a local test cluster). The real-node cluster
# (tests/e2e/cluster/real-node.sh) runs it inside its network namespace with
# FERRY_PG_LISTEN=<node address> and FERRY_PG_TRUST_CIDR="<pod range> <node address>/32" (space-separated), so pods and
# the tests in that namespace can reach it. Idempotent. When run as root,
# the server runs as the unprivileged `postgres` user (created if missing), since initdb refuses root.
# Uses Debian's PostgreSQL 15 ($FERRY_PG_BIN overrides the bin dir).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
base="${FERRY_PG_DIR:-$repo/target/postgres}"
# Absolute, so the walk up to / below ends (a relative path would stop at ".").
[[ $base == /* ]] || base="$PWD/$base"
port="${FERRY_PG_PORT:-55432}"
bin="${FERRY_PG_BIN:-$(printf "%s\n" /usr/lib/postgresql/*/bin | sort -V | tail -n1)}"
data="$base/data"
sock="$base/sock"
log="$base/postgres.log"
listen="${FERRY_PG_LISTEN:-127.0.0.1}"
trust_cidr="${FERRY_PG_TRUST_CIDR:-}"
# Extra server flags, e.g. "-c synchronous_commit=off" (the real node's database).
server_options="${FERRY_PG_SERVER_OPTIONS:-}"
url="postgres://postgres@${listen}:${port}/postgres"

log() { echo "postgres.sh: $*" >&2; }

if [[ -z "$bin" || ! -x "$bin/pg_ctl" ]]; then
  log "PostgreSQL binaries not found (install Debian's postgresql, or set FERRY_PG_BIN)"
  exit 1
fi

as_pg() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

ensure_user() {
  if [[ "$(id -u)" == 0 ]] && ! id -u postgres >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  fi
}

running() {
  [[ -f "$data/PG_VERSION" ]] && as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1
}

up() {
  ensure_user
  mkdir -p "$base" "$sock"
  if [[ "$(id -u)" == 0 ]]; then
    chown postgres "$base" "$sock"
    # The server user must be able to reach the data dir.
    d="$base"; while [[ "$d" != "/" ]]; do d="$(dirname "$d")"; chmod o+x "$d" 2>/dev/null || true; done
  fi
  if [[ ! -f "$data/PG_VERSION" ]]; then
    log "initdb into $data"
    as_pg "$bin/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=trust -E UTF8 >"$base/initdb.log" 2>&1 \
      || { cat "$base/initdb.log" >&2; exit 1; }
    cat >>"$data/postgresql.conf" <<CONF
port = $port
unix_socket_directories = '$sock'
max_connections = 300
shared_buffers = 128MB
CONF
  fi
  local cidr
  for cidr in $trust_cidr; do
    grep -q "^host all all $cidr trust" "$data/pg_hba.conf" || echo "host all all $cidr trust" >>"$data/pg_hba.conf"
  done
  if running; then
    log "already running"
  else
    log "starting on $listen:$port (log: $log)"
    touch "$log"; [[ "$(id -u)" == 0 ]] && chown postgres "$log"
    as_pg "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 -o "-p $port -h $listen $server_options" start >/dev/null \
      || { tail -n 30 "$log" >&2; exit 1; }
  fi
  echo "$url"
}

down() {
  if running; then
    as_pg "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    log "stopped"
  else
    log "not running"
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  url) echo "$url" ;;
  *) echo "usage: $0 up|down|url" >&2; exit 2 ;;
esac
