#!/usr/bin/env bash
# Installs the monitoring stack on kind's node, idempotently:
#
#   tests/e2e/monitoring/prometheus/install.sh KUBECONFIG
#
# loads the locally built images (../images.sh) into kind, applies the
# prometheus-operator CRDs (server side, from the Go module of the pinned
# version), prometheus-operator, a Prometheus (v3.16.0) and an Alertmanager
# (v0.35.0) run by it, and kube-state-metrics, all in the namespace
# `monitoring`; then waits until each is Ready. Alertmanager sends every alert
# to the webhook http://<node IP>:$WEBHOOK_PORT/alerts, which the e2e tests
# (tests/e2e/tests/monitoring.rs, run in the node's network namespace) serve.
#
#   MONITORING_READY_TIMEOUT  seconds to wait for each component (180)
#   MONITORING_WEBHOOK_PORT   the webhook's port on the node (19093)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../../.." && pwd)"
# shellcheck source=SCRIPTDIR/../../cluster/versions.env
source "$ROOT/tests/e2e/cluster/versions.env"
# shellcheck source=SCRIPTDIR/../../cluster/lib.sh
source "$ROOT/tests/e2e/cluster/lib.sh"

die() { printf '[monitoring] error: %s\n' "$*" >&2; exit 1; }
log() { printf '[monitoring] %s\n' "$*" >&2; }

(($# == 1)) || die "usage: $0 KUBECONFIG"
export KUBECONFIG="$1"
[[ -f $KUBECONFIG ]] || die "no kubeconfig $KUBECONFIG (make kind-up)"
PATH="$(bin_dir):$PATH"
export PATH
TIMEOUT="${MONITORING_READY_TIMEOUT:-180}"
WEBHOOK_PORT="${MONITORING_WEBHOOK_PORT:-19093}"
IMAGES="$ROOT/target/images/monitoring"
NS=monitoring

load_images() {
  local archives=() name
  for name in prometheus alertmanager prometheus-operator prometheus-config-reloader kube-state-metrics; do
    [[ -f $IMAGES/$name.tar ]] || die "no $IMAGES/$name.tar: run tests/e2e/monitoring/images.sh"
    archives+=("$IMAGES/$name.tar")
  done
  "$ROOT/tests/e2e/kind/kind.sh" load-archive "${archives[@]}" || die "loading the monitoring images into kind failed"
}

apply_crds() {
  local dir
  dir="$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")/example/prometheus-operator-crd"
  [[ -d $dir ]] || die "no CRDs in $dir (go mod download github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION)"
  kubectl apply --server-side --force-conflicts -f "$dir" >/dev/null
  kubectl wait --for=condition=Established --timeout=60s -f "$dir" >/dev/null ||
    die "the prometheus-operator CRDs are not Established (kubectl get crd | grep monitoring.coreos.com)"
}

alertmanager_config() {
  local node_ip
  node_ip="$(kubectl get nodes -o jsonpath='{.items[0].status.addresses[?(@.type=="InternalIP")].address}')"
  [[ -n $node_ip ]] || die "the node has no InternalIP"
  cat <<YAML
route:
  receiver: e2e-webhook
  group_by: [alertname, namespace]
  group_wait: 1s
  group_interval: 5s
  repeat_interval: 1h
receivers:
  - name: e2e-webhook
    webhook_configs:
      - url: http://$node_ip:$WEBHOOK_PORT/alerts
        send_resolved: true
YAML
}

# Waits until `kubectl rollout status` of a workload succeeds, else dies with
# the command that shows why.
wait_rollout() { # kind/name what
  if ! kubectl -n "$NS" rollout status "$1" --timeout="${TIMEOUT}s" >/dev/null 2>&1; then
    kubectl -n "$NS" get pods -o wide >&2 || true
    die "$2 is not Ready after ${TIMEOUT}s: read kubectl -n $NS describe $1; kubectl -n $NS logs $1 --all-containers"
  fi
}

# The operator creates the StatefulSet asynchronously: wait for it to exist first.
wait_statefulset() { # name what
  local deadline=$((SECONDS + TIMEOUT))
  until kubectl -n "$NS" get statefulset "$1" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "prometheus-operator made no statefulset/$1 for $2 in ${TIMEOUT}s: read kubectl -n $NS logs deploy/prometheus-operator"
    sleep 2
  done
  wait_rollout "statefulset/$1" "$2"
}

main() {
  local started=$SECONDS
  load_images
  apply_crds
  kubectl apply -f "$HERE/operator.yaml" >/dev/null
  wait_rollout deployment/prometheus-operator prometheus-operator
  alertmanager_config | kubectl -n "$NS" create secret generic alertmanager-ferry \
    --from-file=alertmanager.yaml=/dev/stdin --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl apply -f "$HERE/prometheus.yaml" -f "$HERE/kube-state-metrics.yaml" >/dev/null
  wait_rollout deployment/kube-state-metrics kube-state-metrics
  wait_statefulset alertmanager-ferry Alertmanager
  wait_statefulset prometheus-ferry Prometheus
  log "ready in $((SECONDS - started)) s: Prometheus at service/prometheus:9090, Alertmanager at service/alertmanager:9093 in namespace $NS"
}

main
