#!/usr/bin/env bash
# `make demo` / `make demo-down`: the operator chart and the shop example on a
# cluster, with the commands to try next.
#
# Usage: tests/e2e/demo.sh up|down
#
#   DEMO_CLUSTER=auto      (default) kind when this machine can run it (root,
#                          and a Docker engine that works or can be started:
#                          tests/e2e/kind/kind.sh blocker), else the kwok
#                          cluster, saying why
#   DEMO_CLUSTER=kind      kind (`make kind-up`): the operator runs as a pod
#                          of the chart, the shop's pods really run, on the kind
#                          tier's PostgreSQL, and a short CreateOrder load is
#                          sent and its results printed
#   DEMO_CLUSTER=local     the kwok cluster (`make cluster-up`): pods do not
#                          run, so the chart is installed with replicaCount=0
#                          and the operator runs as a local process whose only
#                          credential is a TokenRequest token for the chart's
#                          ServiceAccount (exactly the chart's RBAC)
#   DEMO_CLUSTER=external  like local, on the cluster KUBECONFIG points at;
#                          never started or stopped here
#   DEMO_RELEASE           helm release name (default ferry-operator)
#   DEMO_NAMESPACE         release namespace (default ferry-system)
#   DEMO_TIMEOUT           seconds to wait for the shop (default 180)
#
# `up` starts a cluster only when none is running and `down` stops only a
# cluster `up` started. The operator watches the shop namespace only (and the
# chart, with watchNamespace=shop, grants it nothing elsewhere). State, pid
# and log: target/demo/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="$ROOT/tests/e2e/cluster"
cd "$ROOT"
# shellcheck source=SCRIPTDIR/cluster/versions.env
source "$CLUSTER/versions.env"
# shellcheck source=SCRIPTDIR/cluster/lib.sh
source "$CLUSTER/lib.sh"

DEMO_CLUSTER="${DEMO_CLUSTER:-auto}"
KIND="$ROOT/tests/e2e/kind/kind.sh"
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

# The cluster `up` used (auto resolved), read back by `down`.
CLUSTER_FILE="$STATE/cluster"
# Present when `up` started the cluster, so `down` stops only what it started.
STARTED_FILE="$STATE/started-cluster"

resolve_cluster() {
  if [[ $DEMO_CLUSTER != auto ]]; then
    echo "$DEMO_CLUSTER"
    return
  fi
  local blocker
  blocker="$("$KIND" blocker)"
  local not_root="not root (the demo's traffic runs in the kind node's network namespace)"
  [[ "$(id -u)" == 0 ]] || blocker="${blocker:-$not_root}"
  if [[ -z $blocker ]]; then
    echo kind
  else
    printf '[demo] kind cannot run here: %s; showing the kwok demo instead (pods do not run)\n' "$blocker" >&2
    echo local
  fi
}

use_cluster() {
  case "$DEMO_CLUSTER" in
    kind)
      if [[ $1 == up ]]; then
        [[ -f "$ROOT/target/kind/env" ]] || touch "$STARTED_FILE"
        "$KIND" up >/dev/null
      fi
      [[ -f "$ROOT/target/kind/env" ]] || return 1
      # shellcheck source=/dev/null # written by kind.sh up
      source "$ROOT/target/kind/env"
      export KUBECONFIG="$KIND_KUBECONFIG"
      ;;
    local)
      if [[ $1 == up ]]; then
        if ! [[ -f target/cluster/pids/kube-apiserver ]] || ! kill -0 "$(cat target/cluster/pids/kube-apiserver)" 2>/dev/null; then
          touch "$STARTED_FILE"
        fi
        "$CLUSTER/up.sh" >/dev/null
      fi
      export KUBECONFIG="$ROOT/target/cluster/kubeconfig"
      ;;
    external)
      [[ -n "${KUBECONFIG:-}" ]] || fail "DEMO_CLUSTER=external needs KUBECONFIG"
      ;;
    *) fail "DEMO_CLUSTER must be auto, kind, local or external, not '$DEMO_CLUSTER'" ;;
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

# kwok (or an external cluster): the chart with replicaCount=0 and the
# operator as a local process under the chart ServiceAccount's identity.
up_process() {
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

  wait_for_shop "$(tail -40 "$LOG_FILE" 2>&1)"

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

  local where="the kwok cluster: its pods do not really run"
  [[ $DEMO_CLUSTER == external ]] && where="the cluster KUBECONFIG names; the operator runs as a local process"
  cat <<EOF

[demo] The shop is up ($where). Try:

  export KUBECONFIG=$KUBECONFIG
  export PATH=$(bin_dir):$ROOT/target/debug:\$PATH   # the pinned kubectl and helm; kubectl-ferry
  kubectl explain microservice.spec

  # Roll out a new order version; blue-green waits for a promotion:
  kubectl -n $SHOP patch msvc order --type merge -p '{"spec":{"image":"ferry/order-service:v2"}}'
  kubectl ferry -n $SHOP status --watch order      # in a second terminal
  kubectl ferry -n $SHOP promote order             # switch traffic to v2
  # ...or keep v1 serving:
  kubectl ferry -n $SHOP abort order
  kubectl ferry -n $SHOP undo order                # back to the previous revision

  tail -f ${LOG_FILE#"$ROOT/"}                     # the operator's log
  make demo-down                                   # stop and clean up everything the demo started
EOF
}

# kind: the operator as the chart's pod, the shop's pods running on the kind
# tier's PostgreSQL, and a short CreateOrder load.
up_kind() {
  say "building the images (tests/e2e/images/build.sh: release binaries, ~17 min cold), kubectl-ferry and shop_traffic"
  tests/e2e/images/build.sh >/dev/null
  cargo build --locked -p ferry-operator --bin kubectl-ferry
  cargo build --release --locked -p ferry-e2e --bin shop_traffic
  say "loading the images into kind (kind load image-archive)"
  "$KIND" load

  kubectl apply -f examples/shop/00-namespace.yaml
  say "installing the chart: release $RELEASE in namespace $NAMESPACE, the operator as a pod watching namespace $SHOP"
  helm upgrade --install "$RELEASE" charts/ferry-operator --namespace "$NAMESPACE" --create-namespace \
    --set "watchNamespace=$SHOP" --wait --timeout "${TIMEOUT}s"
  kubectl apply -f crds/ >/dev/null
  kubectl wait --for=condition=Established --timeout=30s crd/microservices.ferry.dev >/dev/null

  # Blue and green revisions of inventory must see one stock, and any order pod
  # any order: both services on the kind tier's PostgreSQL instead of the
  # example's per-pod SQLite.
  local db
  for db in shop_inventory shop_order; do
    if [[ -z "$(psql -h "$FERRY_POSTGRES_HOST" -p "$FERRY_POSTGRES_PORT" -U postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]]; then
      psql -h "$FERRY_POSTGRES_HOST" -p "$FERRY_POSTGRES_PORT" -U postgres -qc "CREATE DATABASE $db"
    fi
  done
  say "applying examples/shop/ (DATABASE_URL: the kind tier's PostgreSQL at $FERRY_POSTGRES_HOST:$FERRY_POSTGRES_PORT)"
  kubectl create --dry-run=client -o json -f examples/shop/ |
    jq -s --arg pg "postgres://postgres@$FERRY_POSTGRES_HOST:$FERRY_POSTGRES_PORT" '
      {apiVersion: "v1", kind: "List", items: map(if .kind == "MicroService" then
        .spec.env = ([.spec.env[] | select(.name != "DATA_DIR")]
          + [{name: "DATABASE_URL", value: "\($pg)/shop_\(.metadata.name)"}])
      else . end)}' |
    kubectl apply -f -
  wait_for_shop "$(kubectl logs -n "$NAMESPACE" -l "app.kubernetes.io/instance=$RELEASE" --tail=40 2>&1)"

  say "kubectl get msvc,pods -n $SHOP -o wide"
  kubectl get msvc -n "$SHOP"
  kubectl get pods -n "$SHOP" -o wide
  say "a short CreateOrder load through the order Service (20/s for 10 s, from inside the kind node's network)"
  "$KIND" netns env KUBECONFIG="$KIND_NODE_KUBECONFIG" target/release/shop_traffic \
    --namespace "$SHOP" --stock 1000000 --rate 20 --seconds 10 ||
    fail "no order went through (kubectl logs -n $SHOP -l ferry.dev/microservice=order)"

  cat <<EOF

[demo] The shop runs on kind. Try:

  export KUBECONFIG=$KUBECONFIG
  export PATH=$(bin_dir):$ROOT/target/debug:\$PATH   # the pinned kubectl and helm; kubectl-ferry
  kubectl get pods -n $SHOP -o wide
  kubectl logs -n $NAMESPACE deploy/$RELEASE         # the operator, a pod of the chart

  # Live traffic, in a second terminal (bounded: 20 orders/s for 10 minutes):
  tests/e2e/kind/kind.sh netns env KUBECONFIG=$KIND_NODE_KUBECONFIG target/release/shop_traffic --rate 20 --seconds 600

  # Roll out a new revision of order; blue-green waits for a promotion:
  kubectl -n $SHOP patch msvc order --type json -p '[{"op":"add","path":"/spec/env/-","value":{"name":"RELEASE","value":"v2"}}]'
  kubectl ferry -n $SHOP status --watch order      # in a third terminal
  kubectl ferry -n $SHOP promote order             # switch traffic to the new revision
  # ...or keep the old one serving:
  kubectl ferry -n $SHOP abort order
  kubectl ferry -n $SHOP undo order                # back to the previous revision

  make demo-down                                   # remove the shop and the chart; delete kind if the demo created it
EOF
}

# Waits for both MicroServices to be Available; on failure prints the shop's
# state and $1 (the operator's log tail) and fails.
wait_for_shop() {
  say "waiting up to ${TIMEOUT}s for inventory and order to be Available"
  if ! kubectl wait --for=condition=Available --timeout="${TIMEOUT}s" -n "$SHOP" msvc/inventory msvc/order; then
    kubectl get msvc,pods -n "$SHOP" -o wide >&2 || true
    kubectl get events -n "$SHOP" --sort-by=.lastTimestamp 2>&1 | tail -20 >&2 || true
    echo "--- operator log (last 40 lines)" >&2
    echo "${1:-}" >&2
    fail "the shop did not become Available"
  fi
}

up() {
  mkdir -p "$STATE"
  rm -f "$STARTED_FILE"
  DEMO_CLUSTER="$(resolve_cluster)"
  echo "$DEMO_CLUSTER" >"$CLUSTER_FILE"
  use_cluster up
  if [[ $DEMO_CLUSTER == kind ]]; then up_kind; else up_process; fi
}

down() {
  if [[ -f "$CLUSTER_FILE" ]]; then DEMO_CLUSTER="$(cat "$CLUSTER_FILE")"; fi
  [[ $DEMO_CLUSTER != auto ]] || DEMO_CLUSTER=local
  stop_operator
  if use_cluster down && kubectl version >/dev/null 2>&1; then
    if helm status "$RELEASE" -n "$NAMESPACE" >/dev/null 2>&1; then
      helm uninstall "$RELEASE" -n "$NAMESPACE" --wait
    fi
    # The shop namespace goes with everything in it (the MicroServices'
    # children through their owner references).
    kubectl delete namespace "$SHOP" --ignore-not-found --wait=true
    kubectl delete namespace "$NAMESPACE" --ignore-not-found --wait=true
    echo "left in place: the MicroService CRD (helm never deletes CRDs; 'kubectl delete -f crds/' removes it)"
  fi
  if [[ -f "$STARTED_FILE" ]]; then
    case "$DEMO_CLUSTER" in
      kind) "$KIND" down ;;
      local) "$CLUSTER/down.sh" ;;
    esac
  elif [[ $DEMO_CLUSTER != external ]]; then
    echo "left running: the $DEMO_CLUSTER cluster (the demo did not start it)"
  fi
  rm -rf "$STATE"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) fail "usage: $0 up|down" ;;
esac
