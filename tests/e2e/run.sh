#!/usr/bin/env bash
# Runs the e2e tier: phases 1 and 2 against the local kwok cluster (started
# when none is running and stopped afterwards; one that was already up is
# left up), phase 3 on kind's real node (tests/e2e/kind/kind.sh; created when
# none is running and deleted afterwards).
#
# Phase 1 runs every test binary but two in parallel, each test in its own
# namespace with its own operator process. Phase 2 removes the cluster-wide
# ServiceMonitor and PrometheusRule CRDs, runs the test of that path alone, and
# leaves the CRDs installed again. Phase 3 runs tests/e2e/tests/real_node.rs:
# the operator chart and the shop as real pods; then tests/e2e/tests/events.rs:
# the asynchronous shop (examples/shop-async/) with NATS JetStream as a pod of
# a locally built image (tests/e2e/images/nats.sh).
#
#   E2E_EXTERNAL=1  phases 1 and 2 against the cluster KUBECONFIG points at
#                   (e.g. kind: KUBECONFIG=target/kind/kubeconfig) instead
#   REAL_PODS=0     skip phase 3; otherwise a machine that cannot run kind
#                   fails the run with the reason
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
  case $name in
  monitoring_crd_absent | real_node | events | autoscaling | monitoring | latency_autoscaling) ;; # their own phases
  *) binaries+=(--test "$name") ;;
  esac
done
cargo test --locked --no-fail-fast -p ferry-e2e "${binaries[@]}" -- --ignored "$@"

echo "[e2e] phase 2: without the ServiceMonitor and PrometheusRule CRDs"
kubectl delete crd servicemonitors.monitoring.coreos.com prometheusrules.monitoring.coreos.com --wait=true >/dev/null
status=0
cargo test --locked -p ferry-e2e --test monitoring_crd_absent -- --ignored "$@" || status=$?
kubectl apply --server-side --force-conflicts -f "$SMON_CRD" -f "$PRULE_CRD" >/dev/null
[[ $status == 0 ]] || exit "$status"

# Phase 3: real pods on kind's node. The kwok cluster is stopped first when
# this script started it, so the two cores go to kind.
KIND="$ROOT/tests/e2e/kind/kind.sh"
if [[ "${REAL_PODS:-1}" == 0 ]]; then
  echo "[e2e] phase 3 (real pods on kind) skipped: REAL_PODS=0"
  exit 0
fi
blocker="$("$KIND" blocker)"
not_root="not root (the tests enter the kind node's network namespace)"
[[ "$(id -u)" == 0 ]] || blocker="${blocker:-$not_root}"
if [[ -n $blocker ]]; then
  echo "[e2e] phase 3 (real pods on kind) cannot run here: $blocker (REAL_PODS=0 skips it)" >&2
  exit 1
fi
if [[ ${started:-0} == 1 ]]; then
  "$CLUSTER/down.sh"
  trap - EXIT
fi
echo "[e2e] phase 3: real pods on kind; building the images (no Docker build, nothing pulled)"
# Dev-profile images and test binaries (dependencies optimised, Cargo.toml):
# the unit tests built them already, and a second, release compile of every
# dependency was the cold run's largest Rust cost. Benchmarks build release.
export FERRY_IMAGE_PROFILE="${FERRY_IMAGE_PROFILE:-dev}"
tests/e2e/images/build.sh >/dev/null
# kind comes up while the background Go builds (warm.sh) finish the
# monitoring stack and KEDA: its node image and start are mostly I/O.
kind_started=0
[[ -f "$ROOT/target/kind/env" ]] || kind_started=1
if [[ $kind_started == 1 ]]; then trap '"$KIND" down' EXIT; fi
"$KIND" up >/dev/null
"$KIND" load
cargo test --locked -p ferry-e2e --test real_node --test events --test autoscaling --test monitoring \
  --test latency_autoscaling --no-run
tests/e2e/monitoring/images.sh >/dev/null
tests/e2e/monitoring/images.sh keda >/dev/null
# The background Go builds end before the timed tests.
tests/e2e/warm.sh wait
# shellcheck source=/dev/null # written by kind.sh up
source "$ROOT/target/kind/env"
kubectl --kubeconfig "$KIND_KUBECONFIG" apply -f crds/ >/dev/null
kubectl --kubeconfig "$KIND_KUBECONFIG" wait --for=condition=Established --timeout=30s crd/microservices.ferry.dev >/dev/null
# Inside the node's network namespace: ClusterIPs and pod IPs are reachable
# only there (the PostgreSQL on the kind network's gateway too). One test at a
# time: they measure. Bounded: a stuck test fails the run instead of hanging it.
in_node() { # test-file [args]
  local file=$1
  shift
  timeout "${REAL_PODS_TIMEOUT:-1800}" "$KIND" netns env KUBECONFIG="$KIND_NODE_KUBECONFIG" FERRY_REAL_PODS=1 \
    FERRY_POSTGRES_HOST="$FERRY_POSTGRES_HOST" FERRY_POSTGRES_PORT="$FERRY_POSTGRES_PORT" \
    cargo test --locked -p ferry-e2e --test "$file" -- --ignored --test-threads=1 --show-output "$@"
}
in_node real_node "$@"

echo "[e2e] phase 3b: the event-driven shop on kind: NATS JetStream as a MicroService, the asynchronous saga"
tests/e2e/images/nats.sh load
in_node events "$@"

echo "[e2e] phase 4: the real consumers on kind: metrics-server and the HPA, Prometheus and Alertmanager"
tests/e2e/monitoring/metrics-server/install.sh "$KIND_KUBECONFIG"
in_node autoscaling "$@"
tests/e2e/monitoring/prometheus/install.sh "$KIND_KUBECONFIG"
in_node monitoring "$@"

echo "[e2e] phase 4b: autoscaling on gRPC latency through KEDA, fed by that Prometheus"
tests/e2e/monitoring/keda/install.sh "$KIND_KUBECONFIG"
in_node latency_autoscaling "$@"
