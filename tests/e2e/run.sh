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
echo "[e2e] phase 1: all tests but the CRD-absent and real-node ones"
binaries=()
for f in tests/e2e/tests/*.rs; do
  name="$(basename "$f" .rs)"
  [[ $name == monitoring_crd_absent || $name == real_node ]] || binaries+=(--test "$name")
done
cargo test --locked -p ferry-e2e "${binaries[@]}" -- --ignored "$@"

echo "[e2e] phase 2: without the ServiceMonitor and PrometheusRule CRDs"
kubectl delete crd servicemonitors.monitoring.coreos.com prometheusrules.monitoring.coreos.com --wait=true >/dev/null
status=0
cargo test --locked -p ferry-e2e --test monitoring_crd_absent -- --ignored "$@" || status=$?
kubectl apply --server-side --force-conflicts -f "$SMON_CRD" -f "$PRULE_CRD" >/dev/null
[[ $status == 0 ]] || exit "$status"

# Phase 3: real pods on a real node (containerd, kubelet, kube-proxy, CoreDNS in
# a network namespace; see cluster/real-node.sh). REAL_NODE=auto (default) runs
# it when this machine can (root, the Debian packages .ci/run installs); 1
# requires it (CI); 0 skips it. The kwok cluster is stopped first when this
# script started it, so the two cores go to the real node.
real_node_blocker() {
  [[ "$(id -u)" == 0 ]] || { echo "not root (network namespaces, containerd and the kubelet need it)"; return; }
  local missing
  missing="$(NODE=real CLUSTER_DIR=/nonexistent ROOT="$ROOT" bash -c 'source "$1/real-node.sh"; real_node_packages_missing' _ "$CLUSTER" | tr '\n' ' ')"
  [[ -z ${missing// /} ]] || echo "missing Debian packages: $missing(.ci/run installs them)"
}
REAL_NODE="${REAL_NODE:-auto}"
if [[ "${E2E_EXTERNAL:-0}" == 1 ]]; then
  echo "[e2e] phase 3 (real node) skipped: E2E_EXTERNAL=1 (on kind, run the same file against its real nodes)"
  exit 0
fi
if [[ $REAL_NODE == 0 ]]; then
  echo "[e2e] phase 3 (real node) skipped: REAL_NODE=0"
  exit 0
fi
blocker="$(real_node_blocker)"
if [[ -n $blocker ]]; then
  if [[ $REAL_NODE == 1 ]]; then
    echo "[e2e] phase 3 (real node) required but impossible here: $blocker" >&2
    exit 1
  fi
  echo "[e2e] phase 3 (real node) skipped: $blocker"
  exit 0
fi
if [[ $started == 1 ]]; then
  "$CLUSTER/down.sh"
  trap - EXIT
fi
echo "[e2e] phase 3: real node; building the images (no Docker, nothing pulled)"
tests/e2e/images/build.sh >/dev/null
cargo test --release --locked -p ferry-e2e --test real_node --no-run
NODE=real "$CLUSTER/down.sh" >/dev/null 2>&1 || true
trap 'NODE=real "$CLUSTER/down.sh"' EXIT
NODE=real "$CLUSTER/up.sh" >/dev/null
REAL_KUBECONFIG="$ROOT/target/cluster-real/kubeconfig"
nsenter --net=/var/run/netns/ferry-node kubectl --kubeconfig "$REAL_KUBECONFIG" apply -f crds/ >/dev/null
nsenter --net=/var/run/netns/ferry-node kubectl --kubeconfig "$REAL_KUBECONFIG" \
  wait --for=condition=Established --timeout=30s crd/microservices.ferry.dev >/dev/null
# Inside the node's network namespace: ClusterIPs, pod IPs and the node's
# PostgreSQL are reachable only there. One test at a time: they measure.
nsenter --net=/var/run/netns/ferry-node env KUBECONFIG="$REAL_KUBECONFIG" FERRY_REAL_NODE=1 \
  cargo test --release --locked -p ferry-e2e --test real_node -- --ignored --test-threads=1 "$@"
