#!/usr/bin/env bash
# Stops every process cluster-up started (by pid) and removes the state.
# --keep-logs keeps target/cluster/logs for a failed start's post-mortem.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
# shellcheck source=SCRIPTDIR/lib.sh
source "$HERE/lib.sh"
CLUSTER_DIR="${CLUSTER_DIR:-$ROOT/target/cluster}"
PIDS="$CLUSTER_DIR/pids"
KEEP_LOGS=0
[[ "${1:-}" == --keep-logs ]] && KEEP_LOGS=1

# TERM everything at once (the state is thrown away, so order and a clean
# etcd shutdown do not matter), wait up to 3 s, then KILL what is left.
pids=()
shopt -s nullglob
for name in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
  f="$PIDS/$name"
  [[ -f "$f" ]] || continue
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    pids+=("$pid")
  fi
  rm -f "$f"
done
# A zombie (exited, not yet reaped by init) counts as stopped.
alive() { [[ -e /proc/$1 ]] && ! grep -q '^[^)]*) Z' "/proc/$1/stat" 2>/dev/null; }
for _ in $(seq 1 30); do
  any=0
  for pid in "${pids[@]}"; do alive "$pid" && any=1; done
  ((any)) || break
  sleep 0.1 # waiting for processes to exit, bounded to 3 s
done
for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done

if [[ $KEEP_LOGS == 1 ]]; then
  find "$CLUSTER_DIR" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
else
  rm -rf "$CLUSTER_DIR"
fi
echo "[cluster] stopped" >&2
