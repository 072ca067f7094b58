#!/usr/bin/env bash
# Runs the e2e tier against the local cluster. Starts the cluster when none is
# running and stops it afterwards; a cluster that was already up is left up.
# With KUBECONFIG pointing elsewhere (E2E_EXTERNAL=1, e.g. kind), uses that.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="$ROOT/tests/e2e/cluster"
cd "$ROOT"

if [[ "${E2E_EXTERNAL:-0}" != 1 ]]; then
  started=0
  if ! [[ -f target/cluster/pids/kube-apiserver ]] || ! kill -0 "$(cat target/cluster/pids/kube-apiserver)" 2>/dev/null; then
    started=1
  fi
  "$CLUSTER/up.sh" >/dev/null
  if [[ $started == 1 ]]; then trap '"$CLUSTER/down.sh"' EXIT; fi
  export KUBECONFIG="$ROOT/target/cluster/kubeconfig"
  # shellcheck source=SCRIPTDIR/cluster/versions.env
  source "$CLUSTER/versions.env"
  # shellcheck source=SCRIPTDIR/cluster/lib.sh
  source "$CLUSTER/lib.sh"
  PATH="$(bin_dir):$PATH"
  export PATH
fi

echo "[e2e] API server $(kubectl version -o json | sed -n 's/.*"gitVersion": "\(v1[^"]*\)".*/\1/p' | tail -1) at $(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
# The e2e tests are #[ignore]d so that a plain `cargo test` needs no cluster;
# here they run, and only they run.
cargo test -p ferry-e2e --locked -- --ignored "$@"
