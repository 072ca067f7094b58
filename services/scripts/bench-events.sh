#!/usr/bin/env bash
# `make bench-events`: builds the services and the bench in release, builds (or finds cached)
# nats-server, and runs bench_events, which starts nats-server, inventory-service and
# order-service on loopback and prints the tables. Extra arguments go to bench_events
# (e.g. --rate 300 --seconds 5).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

${CARGO:-cargo} build --release --locked --bin inventory-service --bin order-service --bin bench_events
services/scripts/nats.sh build
target/release/bench_events --nats-server "$(services/scripts/nats.sh path)" "$@"
