#!/usr/bin/env bash
# NATS JetStream for the services' event tests and benchmarks (issue 20).
#
#   services/scripts/nats.sh build   # build (or find cached) nats-server; prints nothing
#   services/scripts/nats.sh path    # print the cached binary's path (builds nothing)
#   services/scripts/nats.sh up      # build if needed, start a throwaway JetStream server; prints its URL
#   services/scripts/nats.sh down    # stop it and remove its store
#   services/scripts/nats.sh url     # print the running server's URL
#
# The binary is built from the Go module proxy (github.com/nats-io/nats-server/v2, pinned
# below) and cached outside the work tree keyed by its version, like the cluster's binaries
# (tests/e2e/cluster/build.sh): "$FERRY_CACHE/bin/nats-server-<version>/nats-server".
# The server listens on 127.0.0.1 only, on a port the kernel picks (the tests run beside
# other helpers' servers), with JetStream's store in a fresh temporary directory; its state
# (pid, URL, log, store) lives in $FERRY_NATS_DIR (default target/nats). Idempotent.
set -euo pipefail

NATS_SERVER_VERSION=v2.15.3

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${FERRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}"
bin="$cache/bin/nats-server-$NATS_SERVER_VERSION/nats-server"
state="${FERRY_NATS_DIR:-$repo/target/nats}"
[[ $state == /* ]] || state="$PWD/$state"

log() { printf '[nats] %s\n' "$*" >&2; }
die() { printf '[nats] error: %s\n' "$*" >&2; exit 1; }

build() {
  [[ -x "$bin" ]] && return
  command -v go >/dev/null || die "go is required to build nats-server"
  local dir started
  dir="$(dirname "$bin")"
  started=$(date +%s)
  log "building nats-server from github.com/nats-io/nats-server/v2@$NATS_SERVER_VERSION"
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  # Static, as upstream's release builds (.goreleaser.yml: CGO_ENABLED=0, -s -w).
  (cd /tmp && CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local GOBIN="$dir.tmp" \
    go install -trimpath -ldflags "-s -w" "github.com/nats-io/nats-server/v2@$NATS_SERVER_VERSION")
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  log "nats-server ready ($(($(date +%s) - started))s)"
}

running() {
  [[ -f "$state/pid" ]] && kill -0 "$(cat "$state/pid")" 2>/dev/null
}

up() {
  "$0" build
  if running; then
    log "already running"
    cat "$state/url"
    return
  fi
  rm -rf "$state" && mkdir -p "$state"
  local store
  store="$(mktemp -d "${TMPDIR:-/tmp}/ferry-nats.XXXXXX")"
  echo "$store" >"$state/store"
  # Port -1: the server picks a free one and writes it to its ports file.
  "$bin" --addr 127.0.0.1 --port -1 --jetstream --store_dir "$store" \
    --ports_file_dir "$state" --log "$state/nats.log" </dev/null >/dev/null 2>&1 &
  local pid=$!
  echo "$pid" >"$state/pid"
  local ports="$state/nats-server_$pid.ports" i
  for ((i = 0; i < 300; i++)); do
    [[ -s "$ports" ]] && break
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$state/nats.log" >&2; die "nats-server exited"; }
    sleep 0.1
  done
  [[ -s "$ports" ]] || { down; die "nats-server wrote no ports file within 30 s"; }
  local url
  url="$(sed -n 's/.*"nats":\["\([^"]*\)".*/\1/p' "$ports")"
  [[ -n "$url" ]] || { down; die "no client URL in $ports"; }
  echo "$url" >"$state/url"
  log "JetStream on $url (store $store, log $state/nats.log)"
  echo "$url"
}

down() {
  if running; then
    local pid
    pid="$(cat "$state/pid")"
    kill "$pid"
    local i
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    log "stopped"
  else
    log "not running"
  fi
  [[ -f "$state/store" ]] && rm -rf "$(cat "$state/store")"
  rm -f "$state/pid" "$state/url" "$state/store"
}

case "${1:-}" in
  build)
    # One build at a time (tests/e2e/warm.sh may be building it in the background).
    mkdir -p "$cache/locks"
    (
      flock 9
      build
    ) 9>"$cache/locks/nats-server.lock"
    ;;
  path) echo "$bin" ;;
  up) up ;;
  down) down ;;
  url)
    running || die "not running"
    cat "$state/url"
    ;;
  *) echo "usage: $0 build|path|up|down|url" >&2; exit 2 ;;
esac
