#!/usr/bin/env bash
# `make demo` / `make demo-down`: the local cluster, the operator chart, the
# operator running as a local process under the chart ServiceAccount's
# identity, and the shop example.
#
# Usage: tests/e2e/demo.sh up|down
#
#   DEMO_CLUSTER=local     (default) start the local cluster on `up` (reused
#                          when running) and stop it on `down`.
#   DEMO_CLUSTER=external  use the cluster KUBECONFIG points at; never start or
#                          stop one (e.g. kind from `make kind-up`).
#   DEMO_RELEASE           helm release name (default ferry-operator)
#   DEMO_NAMESPACE         release namespace (default ferry-system)
#   DEMO_TIMEOUT           seconds to wait for the shop (default 180)
#
# The chart is installed with replicaCount=0: on the local cluster pods do not
# run (kwok), and on a real one a second, in-cluster operator would compete
# with the local process. The local process gets the chart's RBAC, nothing
# more: its kubeconfig holds only a TokenRequest token for the chart's
# ServiceAccount. It watches the shop namespace only (and the chart, with
# watchNamespace=shop, grants it nothing elsewhere), so it never touches other
# namespaces of a shared cluster. State, pid and log: target/demo/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="$ROOT/tests/e2e/cluster"
cd "$ROOT"
# shellcheck source=SCRIPTDIR/cluster/versions.env
source "$CLUSTER/versions.env"
# shellcheck source=SCRIPTDIR/cluster/lib.sh
source "$CLUSTER/lib.sh"

DEMO_CLUSTER="${DEMO_CLUSTER:-local}"
RELEASE="${DEMO_RELEASE:-ferry-operator}"
NAMESPACE="${DEMO_NAMESPACE:-ferry-system}"
TIMEOUT="${DEMO_TIMEOUT:-180}"
SHOP=shop # the namespace examples/shop/ declares
STATE="$ROOT/target/demo"
PID_FILE="$STATE/operator.pid"
LOG_FILE="$STATE/operator.log"
OPERATOR_KUBECONFIG="$STATE/operator.kubeconfig"
OPERATOR_BIN="$ROOT/target/debug/operator"
METRICS_ADDR="${DEMO_METRICS_ADDR:-127.0.0.1:18080}"

say() { printf '\n[demo] %s\n' "$*"; }
fail() { printf '[demo] error: %s\n' "$*" >&2; exit 1; }

use_cluster() {
  case "$DEMO_CLUSTER" in
    local)
      if [[ $1 == up ]]; then "$CLUSTER/up.sh" >/dev/null; fi
      export KUBECONFIG="$ROOT/target/cluster/kubeconfig"
      ;;
    external)
      [[ -n "${KUBECONFIG:-}" ]] || fail "DEMO_CLUSTER=external needs KUBECONFIG"
      ;;
    *) fail "DEMO_CLUSTER must be local or external, not '$DEMO_CLUSTER'" ;;
  esac
  "$CLUSTER/build.sh" helm
  PATH="$(bin_dir):$PATH"
  export PATH
}

# The pid in the pid file, if that process is still our operator.
operator_pid() {
  local pid
  [[ -f "$PID_FILE" ]] || return 1
  pid="$(cat "$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == "$OPERATOR_BIN"* ]] || return 1
  printf '%s' "$pid"
}

stop_operator() {
  local pid i
  if pid="$(operator_pid)"; then
    kill "$pid"
    # The operator drains in-flight reconciles on SIGTERM; give it a moment.
    for i in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      if [[ $i == 50 ]]; then kill -9 "$pid"; fi
      sleep 0.2
    done
    echo "stopped the operator (pid $pid)"
  fi
  rm -f "$PID_FILE"
}

# A kubeconfig for the current cluster whose only credential is a TokenRequest
# token for the chart's ServiceAccount.
write_operator_kubeconfig() {
  local account="$1" server ca token
  server="$(kubectl config view --raw --minify --flatten -o jsonpath='{.clusters[0].cluster.server}')"
  ca="$(kubectl config view --raw --minify --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
  token="$(kubectl create token "$account" -n "$NAMESPACE" --duration 24h)"
  (
    umask 077
    cat >"$OPERATOR_KUBECONFIG" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: demo
    cluster:
      server: $server
      certificate-authority-data: $ca
users:
  - name: $account
    user:
      token: $token
contexts:
  - name: $account
    context: {cluster: demo, user: $account, namespace: $SHOP}
current-context: $account
EOF
  )
}

up() {
  use_cluster up
  mkdir -p "$STATE"

  say "building the operator and kubectl-ferry"
  cargo build --locked -p ferry-operator --bin operator --bin kubectl-ferry

  # The shop namespace first: with watchNamespace the chart binds its rules there.
  kubectl apply -f examples/shop/00-namespace.yaml
  say "installing the chart: release $RELEASE in namespace $NAMESPACE, watching namespace $SHOP"
  helm upgrade --install "$RELEASE" charts/ferry-operator \
    --namespace "$NAMESPACE" --create-namespace \
    --set replicaCount=0 --set "watchNamespace=$SHOP"
  # helm installs crds/ on first install only; keep the CRD current on re-runs.
  kubectl apply -f crds/ >/dev/null
  kubectl wait --for=condition=Established --timeout=30s crd/microservices.ferry.dev >/dev/null

  local account
  account="$(kubectl get deployment -n "$NAMESPACE" -l "app.kubernetes.io/instance=$RELEASE" \
    -o jsonpath='{.items[0].spec.template.spec.serviceAccountName}')"
  [[ -n "$account" ]] || fail "no ServiceAccount found in the chart's Deployment"

  say "starting the operator as ServiceAccount $NAMESPACE/$account (log: ${LOG_FILE#"$ROOT/"})"
  stop_operator
  write_operator_kubeconfig "$account"
  KUBECONFIG="$OPERATOR_KUBECONFIG" nohup "$OPERATOR_BIN" \
    --namespace "$SHOP" --metrics-addr "$METRICS_ADDR" --log-format text \
    >"$LOG_FILE" 2>&1 </dev/null &
  local pid=$! i
  echo "$pid" >"$PID_FILE"
  for i in $(seq 1 150); do
    curl -fsS "http://$METRICS_ADDR/healthz" >/dev/null 2>&1 && break
    if ! kill -0 "$pid" 2>/dev/null || [[ $i == 150 ]]; then
      tail -20 "$LOG_FILE" >&2
      fail "the operator did not start"
    fi
    sleep 0.2
  done

  say "applying examples/shop/"
  kubectl apply -f examples/shop/

  say "waiting up to ${TIMEOUT}s for inventory and order to be Available"
  if ! kubectl wait --for=condition=Available --timeout="${TIMEOUT}s" -n "$SHOP" msvc/inventory msvc/order; then
    kubectl get msvc -n "$SHOP" -o wide >&2 || true
    kubectl get events -n "$SHOP" --sort-by=.lastTimestamp 2>&1 | tail -20 >&2 || true
    echo "--- operator log (last 40 lines)" >&2
    tail -40 "$LOG_FILE" >&2 || true
    fail "the shop did not become Available"
  fi

  say "kubectl get msvc -n $SHOP"
  kubectl get msvc -n "$SHOP"
  local name kinds=deployments,services,horizontalpodautoscalers,poddisruptionbudgets
  if kubectl api-resources --api-group=monitoring.coreos.com -o name | grep -q '^servicemonitors'; then
    kinds="$kinds,servicemonitors"
  fi
  if kubectl api-resources --api-group=monitoring.coreos.com -o name | grep -q '^prometheusrules'; then
    kinds="$kinds,prometheusrules"
  fi
  for name in inventory order; do
    say "children of msvc/$name"
    kubectl get "$kinds" -n "$SHOP" -l "ferry.dev/microservice=$name"
    kubectl get pods -n "$SHOP" -l "ferry.dev/microservice=$name"
  done

  local down="make demo-down"
  if [[ $DEMO_CLUSTER == external ]]; then down="DEMO_CLUSTER=external make demo-down"; fi
  cat <<EOF

[demo] The shop is up. Try:

  export KUBECONFIG=$KUBECONFIG
  export PATH=$ROOT/target/debug:\$PATH       # kubectl finds the kubectl-ferry plugin there
  kubectl explain microservice.spec

  # Roll out a new order version; blue-green waits for a promotion:
  kubectl -n $SHOP patch msvc order --type merge -p '{"spec":{"image":"ferry/order-service:v2"}}'
  kubectl ferry -n $SHOP status --watch order      # in a second terminal
  kubectl ferry -n $SHOP promote order             # switch traffic to v2
  # ...or keep v1 serving:
  kubectl ferry -n $SHOP abort order
  kubectl ferry -n $SHOP undo order                # back to the previous revision

  tail -f ${LOG_FILE#"$ROOT/"}                     # the operator's log
  $down                          # stop and clean up everything
EOF
}

down() {
  use_cluster down
  stop_operator
  if kubectl version >/dev/null 2>&1; then
    if helm status "$RELEASE" -n "$NAMESPACE" >/dev/null 2>&1; then
      helm uninstall "$RELEASE" -n "$NAMESPACE" --wait
    fi
    # The shop namespace goes with everything in it (the MicroServices'
    # children through their owner references).
    kubectl delete namespace "$SHOP" --ignore-not-found --wait=true
    kubectl delete namespace "$NAMESPACE" --ignore-not-found --wait=true
    echo "left in place: the MicroService CRD (helm never deletes CRDs; 'kubectl delete -f crds/' removes it)"
  fi
  rm -rf "$STATE"
  if [[ $DEMO_CLUSTER == local ]]; then "$CLUSTER/down.sh"; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) fail "usage: $0 up|down" ;;
esac
