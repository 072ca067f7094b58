#!/usr/bin/env bash
# Runs the e2e tier against the local cluster. Starts the cluster when none is
# running and stops it afterwards; a cluster that was already up is left up.
# With E2E_EXTERNAL=1 it uses the cluster KUBECONFIG points at (e.g. kind).
#
# Phase 1 runs every test binary but one in parallel, each test in its own
# namespace with its own operator process. Phase 2 removes the cluster-wide
# ServiceMonitor and PrometheusRule CRDs, runs the test of that path alone, and
# leaves the CRDs installed again.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="$ROOT/tests/e2e/cluster"
cd "$ROOT"
# shellcheck source=SCRIPTDIR/cluster/versions.env
source "$CLUSTER/versions.env"
# shellcheck source=SCRIPTDIR/cluster/lib.sh
source "$CLUSTER/lib.sh"

if [[ "${E2E_EXTERNAL:-0}" != 1 ]]; then
  started=0
  if ! [[ -f target/cluster/pids/kube-apiserver ]] || ! kill -0 "$(cat target/cluster/pids/kube-apiserver)" 2>/dev/null; then
    started=1
  fi
  "$CLUSTER/up.sh" >/dev/null
  if [[ $started == 1 ]]; then trap '"$CLUSTER/down.sh"' EXIT; fi
  export KUBECONFIG="$ROOT/target/cluster/kubeconfig"
fi
PATH="$(bin_dir):$PATH"
export PATH

echo "[e2e] API server $(kubectl version -o json | sed -n 's/.*"gitVersion": "\(v1[^"]*\)".*/\1/p' | tail -1) at $(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')"

# The operator under test, as a process, and its CRD.
cargo build --locked -p ferry-operator --bin operator
export FERRY_OPERATOR_BIN="$ROOT/target/debug/operator"
kubectl apply -f crds/ >/dev/null
kubectl wait --for=condition=Established --timeout=30s crd/microservices.ferry.dev >/dev/null

SMON_CRD="$(prometheus_crd servicemonitors)"
PRULE_CRD="$(prometheus_crd prometheusrules)"
export FERRY_SERVICEMONITOR_CRD="$SMON_CRD" FERRY_PROMETHEUSRULE_CRD="$PRULE_CRD"
kubectl apply --server-side -f "$SMON_CRD" -f "$PRULE_CRD" >/dev/null

# The e2e tests are #[ignore]d so that a plain `cargo test` needs no cluster;
# here they run, and only they run.
echo "[e2e] phase 1: all tests but the CRD-absent one"
binaries=()
for f in tests/e2e/tests/*.rs; do
  name="$(basename "$f" .rs)"
  [[ $name == monitoring_crd_absent ]] || binaries+=(--test "$name")
done
cargo test --locked -p ferry-e2e "${binaries[@]}" -- --ignored "$@"

echo "[e2e] phase 2: without the ServiceMonitor and PrometheusRule CRDs"
kubectl delete crd servicemonitors.monitoring.coreos.com prometheusrules.monitoring.coreos.com --wait=true >/dev/null
status=0
cargo test --locked -p ferry-e2e --test monitoring_crd_absent -- --ignored "$@" || status=$?
kubectl apply --server-side --force-conflicts -f "$SMON_CRD" -f "$PRULE_CRD" >/dev/null
exit "$status"
