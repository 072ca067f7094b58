#!/usr/bin/env bash
# `make bench-services`: builds the services and the bench in release, starts the throwaway
# PostgreSQL on 127.0.0.1 (and stops it again if this script started it), and runs ferry-bench,
# which prints the table. Extra arguments go to ferry-bench (e.g. --seconds 3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

${CARGO:-cargo} build --release --locked -p inventory-service -p order-service -p ferry-bench

pg_log="$(mktemp)"
url="$(services/scripts/postgres.sh up 2>"$pg_log")" || { cat "$pg_log" >&2; exit 1; }
if ! grep -q "already running" "$pg_log"; then
  trap 'services/scripts/postgres.sh down' EXIT
fi
rm -f "$pg_log"

target/release/ferry-bench --postgres-url "$url" "$@"
