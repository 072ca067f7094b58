#!/usr/bin/env bash
# Builds, in the background and at the lowest CPU priority, the Go binaries that
# later steps of `make test` need: helm, promtool, nats-server, the kwok
# cluster's, kind's and its node image's, the monitoring stack and KEDA. On a
# cold machine they are about 40 minutes of two cores. Started first, they use
# the CPU the foreground leaves idle (crate downloads, link steps, unit tests
# waiting on PostgreSQL, e2e tests waiting on the API server) while clippy, the
# Rust builds and the tests keep the CPU they ask for.
#
# Each build script takes a per-component lock (cluster/lib.sh `locked`), so a
# step that needs a binary now waits for that one build only, then finds it
# cached. A warmer build that fails is only logged: the foreground step builds
# it again and fails with its own message. On a warm machine nothing is built.
#
#   warm.sh start   start it unless it is running; its log is target/warm.log
#   warm.sh wait    block until it has ended, then print its log's summary
#                   (run.sh, before the real-pod tests, which measure time)
#
# REAL_PODS=0 leaves out what only the kind tier needs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOCK="$ROOT/target/warm.lock"
LOG="$ROOT/target/warm.log"
cd "$ROOT"

# One line per component: what it is for decides the order (helm for the chart
# lint, promtool and nats-server for the unit tests, the kwok cluster, kind).
run() {
  local steps=(
    "tests/e2e/cluster/build.sh helm"
    "tests/e2e/monitoring/build.sh promtool"
    "services/scripts/nats.sh build"
    "tests/e2e/cluster/build.sh etcd kwok kubernetes"
  )
  if [[ ${REAL_PODS:-1} != 0 ]]; then
    steps+=(
      "tests/e2e/cluster/build.sh kubeadm coredns kind"
      "tests/e2e/monitoring/build.sh"
      "tests/e2e/monitoring/build.sh keda"
    )
  fi
  local step started rc
  for step in "${steps[@]}"; do
    started=$SECONDS
    rc=0
    # shellcheck disable=SC2086 # each step is a command line of plain words
    $step || rc=$?
    printf '[warm] %s: %s after %ss\n' "$step" "$([[ $rc == 0 ]] && echo ready || echo "FAILED (rc $rc)")" \
      "$((SECONDS - started))"
  done
}

case "${1:-}" in
start)
  mkdir -p target
  if ! flock -n "$LOCK" true; then
    echo "[warm] already running; log: $LOG"
    exit 0
  fi
  # flock -n: a warmer already running keeps the lock, and this one exits at
  # once. -o: the builds do not inherit the lock; flock holds it until they end.
  nohup nice -n 19 flock -n -o "$LOCK" "$0" run >"$LOG" 2>&1 </dev/null &
  echo "[warm] Go builds started in the background (nice 19); log: $LOG"
  ;;
run) run ;;
wait)
  [[ -f "$LOCK" ]] || exit 0
  echo "[warm] waiting for the background builds to end"
  flock "$LOCK" true
  grep '^\[warm\]' "$LOG" 2>/dev/null || true
  ;;
*)
  echo "usage: $0 start|wait" >&2
  exit 2
  ;;
esac
