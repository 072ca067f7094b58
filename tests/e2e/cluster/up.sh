#!/usr/bin/env bash
# Starts a real Kubernetes control plane on 127.0.0.1 from locally built
# binaries: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
# kwok with fake Ready nodes. Idempotent: a healthy running cluster is reused.
# Pods do not run here; the real-pod tier is kind (tests/e2e/kind/).
#
# Environment:
#   CLUSTER_DIR      state directory (default: <repo>/target/cluster)
#   NODES            number of fake nodes (default 2)
#   MONITORING_CRDS  1 (default) installs the Prometheus Operator ServiceMonitor
#                    and PrometheusRule CRDs from the Go module cache; 0 skips them
#   APISERVER_PROFILING  true serves kube-apiserver's /debug/pprof (default
#                    false), to see where its CPU goes under a benchmark; read
#                    when the apiserver starts, so stop a running cluster first
#   KCM_API_QPS      kube-controller-manager's client limit, requests/s per
#                    controller (default: its own, 20; burst 30); KCM_API_BURST
#                    sets the burst (default twice the limit). Read at start.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
# shellcheck source=SCRIPTDIR/versions.env
source "$HERE/versions.env"
# shellcheck source=SCRIPTDIR/lib.sh
source "$HERE/lib.sh"
# shellcheck source=SCRIPTDIR/ports.env
source "$HERE/ports.env"

CLUSTER_DIR="${CLUSTER_DIR:-$ROOT/target/cluster}"
NODES="${NODES:-2}"
MONITORING_CRDS="${MONITORING_CRDS:-1}"
PKI="$CLUSTER_DIR/pki"
LOGS="$CLUSTER_DIR/logs"
PIDS="$CLUSTER_DIR/pids"
KUBECONFIG_OUT="$CLUSTER_DIR/kubeconfig"
BIN="$(bin_dir)"
START=$(date +%s)

"$HERE/build.sh"
export PATH="$BIN:$PATH"

kc() { kubectl --kubeconfig "$KUBECONFIG_OUT" "$@"; }

print_export() {
  log "cluster ready in $(($(date +%s) - START))s ($(kc version -o json | sed -n 's/.*"gitVersion": "\(v1[^"]*\)".*/\1/p' | tail -1))"
  echo "export KUBECONFIG=$KUBECONFIG_OUT"
}

running() { # name
  [[ -f "$PIDS/$1" ]] && kill -0 "$(cat "$PIDS/$1")" 2>/dev/null
}

# Reuse a cluster whose every process is alive and whose API server answers.
all_running() {
  local n
  for n in etcd kube-apiserver kube-controller-manager kube-scheduler kwok; do running "$n" || return 1; done
}
if [[ -f "$KUBECONFIG_OUT" ]] && all_running && kc get --raw /readyz >/dev/null 2>&1; then
  log "reusing the running cluster in $CLUSTER_DIR"
  print_export
  exit 0
fi
if [[ -d "$PIDS" ]]; then
  log "a partial cluster was found; stopping it first"
  CLUSTER_DIR="$CLUSTER_DIR" "$HERE/down.sh"
fi

mkdir -p "$PKI" "$LOGS" "$PIDS"

# --- certificates -----------------------------------------------------------
# P-256 keys: an order of magnitude faster to generate than RSA.
# One throwaway CA signs the serving cert and every client cert; a separate key
# pair signs ServiceAccount tokens.
gen_ca() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 -subj "/CN=ferry-local-ca" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
}
gen_cert() { # name subject [san]
  local name=$1 subj=$2 san=${3:-}
  local ext="$PKI/$name.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [[ -n $san ]]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$san"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$ext"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$subj" -keyout "$PKI/$name.key" -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
}
kubeconfig_for() { # name -> writes $CLUSTER_DIR/<name>.kubeconfig
  local name=$1 out="$CLUSTER_DIR/$1.kubeconfig"
  rm -f "$out"
  kubectl config --kubeconfig "$out" set-cluster local --server "https://127.0.0.1:$APISERVER_PORT" \
    --certificate-authority "$PKI/ca.crt" --embed-certs >/dev/null
  kubectl config --kubeconfig "$out" set-credentials "$name" --client-certificate "$PKI/$name.crt" \
    --client-key "$PKI/$name.key" --embed-certs >/dev/null
  kubectl config --kubeconfig "$out" set-context local --cluster local --user "$name" >/dev/null
  kubectl config --kubeconfig "$out" use-context local >/dev/null
}

log "generating certificates"
gen_ca
gen_cert apiserver "/CN=kube-apiserver" \
  "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$SERVICE_IP"
gen_cert admin "/O=system:masters/CN=ferry-admin"
gen_cert controller-manager "/CN=system:kube-controller-manager"
gen_cert scheduler "/CN=system:kube-scheduler"
gen_cert kwok "/O=system:masters/CN=kwok-controller"
openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/sa.key" 2>/dev/null
openssl ec -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
for n in admin controller-manager scheduler kwok; do kubeconfig_for "$n"; done
cp "$CLUSTER_DIR/admin.kubeconfig" "$KUBECONFIG_OUT"

# --- processes ----------------------------------------------------------------
start() { # name binary args...
  local name=$1; shift
  setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name"
}
fail() { # name message
  log "$2"
  log "last lines of $LOGS/$1.log:"
  tail -n 30 "$LOGS/$1.log" >&2 || true
  CLUSTER_DIR="$CLUSTER_DIR" "$HERE/down.sh" --keep-logs || true
  exit 1
}
wait_for() { # name timeout-seconds command...
  local name=$1 timeout=$2; shift 2
  local deadline=$(($(date +%s) + timeout))
  until "$@" >/dev/null 2>&1; do
    running "$name" || fail "$name" "$name exited"
    (($(date +%s) < deadline)) || fail "$name" "$name not ready after ${timeout}s"
    sleep 0.2 # polling interval of a readiness probe, not synchronisation
  done
}

apiserver_net=(--bind-address 127.0.0.1 --advertise-address 127.0.0.1 --authorization-mode RBAC)

log "starting etcd"
start etcd etcd --name local --data-dir "$CLUSTER_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "local=http://127.0.0.1:$ETCD_PEER_PORT" \
  --listen-metrics-urls "http://127.0.0.1:$ETCD_METRICS_PORT" \
  --unsafe-no-fsync=true --quota-backend-bytes=4294967296 --log-level=warn
wait_for etcd 30 curl -sf "http://127.0.0.1:$ETCD_PORT/health"

log "starting kube-apiserver"
start kube-apiserver kube-apiserver \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  "${apiserver_net[@]}" --secure-port "$APISERVER_PORT" \
  --cert-dir "$PKI" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --enable-admission-plugins NamespaceLifecycle,ServiceAccount,LimitRanger,PodSecurity,DefaultTolerationSeconds,ResourceQuota,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --allow-privileged=true --profiling="${APISERVER_PROFILING:-false}"
wait_for kube-apiserver 60 kc get --raw /readyz

kcm_limits=()
if [[ -n ${KCM_API_QPS:-} ]]; then
  kcm_limits=(--kube-api-qps "$KCM_API_QPS" --kube-api-burst "${KCM_API_BURST:-$((KCM_API_QPS * 2))}")
fi
log "starting kube-controller-manager"
start kube-controller-manager kube-controller-manager "${kcm_limits[@]}" \
  --kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$CONTROLLER_MANAGER_PORT" --cert-dir "$PKI/kcm" \
  --leader-elect=false --use-service-account-credentials=true \
  --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
  --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --controllers '*' --horizontal-pod-autoscaler-sync-period 5s \
  --node-monitor-grace-period 60s
wait_for kube-controller-manager 60 curl -skf "https://127.0.0.1:$CONTROLLER_MANAGER_PORT/healthz"

log "starting kube-scheduler"
cat >"$CLUSTER_DIR/scheduler.yaml" <<YAML
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $CLUSTER_DIR/scheduler.kubeconfig
leaderElection:
  leaderElect: false
YAML
start kube-scheduler kube-scheduler --config "$CLUSTER_DIR/scheduler.yaml" \
  --authentication-kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
  --authorization-kubeconfig "$CLUSTER_DIR/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --cert-dir "$PKI/scheduler"
wait_for kube-scheduler 60 curl -skf "https://127.0.0.1:$SCHEDULER_PORT/healthz"

start_kwok() {
  # Standalone kwok needs its stages (kwokctl would inject them); they ship in the
  # kwok module, so no download is needed.
  KWOK_MOD="$(module_dir "sigs.k8s.io/kwok@$KWOK_VERSION")"
  for f in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
    pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    cat "$KWOK_MOD/kustomize/stage/$f.yaml"
    echo '---'
  done >"$CLUSTER_DIR/kwok-stages.yaml"
  # Tests need pods that never become Ready (a broken green revision): kwok's
  # pod-ready stage skips pods annotated e2e.ferry.dev/never-ready.
  python3 - "$CLUSTER_DIR/kwok-stages.yaml" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
anchor = "  name: pod-ready\nspec:\n  resourceRef:\n    apiGroup: v1\n    kind: Pod\n  selector:\n    matchExpressions:\n"
assert anchor in text, "kwok's pod-ready stage changed shape"
text = text.replace(anchor, anchor + "    - key: '.metadata.annotations[\"e2e.ferry.dev/never-ready\"]'\n      operator: 'DoesNotExist'\n", 1)
open(path, "w").write(text)
PY
  # The pod and node IPs kwok writes are fake; nothing listens on or connects to them.
  start kwok kwok --kubeconfig "$CLUSTER_DIR/kwok.kubeconfig" --config "$CLUSTER_DIR/kwok-stages.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds=40 --cidr=10.244.0.0/16 --node-ip=10.240.0.1 \
    --server-address "127.0.0.1:$KWOK_PORT"
  wait_for kwok 30 curl -sf "http://127.0.0.1:$KWOK_PORT/healthz"

  for i in $(seq 1 "$NODES"); do
    cat <<YAML
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
    topology.kubernetes.io/zone: zone-$i
status:
  allocatable: {cpu: "64", memory: 512Gi, pods: "1000"}
  capacity: {cpu: "64", memory: 512Gi, pods: "1000"}
---
YAML
  done | kc apply -f - >/dev/null
  wait_for kwok 60 kc wait --for=condition=Ready node --all --timeout=1s
}

start_kwok
# Pods need the namespace's default ServiceAccount (ServiceAccount admission).
wait_for kube-controller-manager 60 kc get serviceaccount default -n default

if [[ "$MONITORING_CRDS" == 1 ]]; then
  log "installing the ServiceMonitor and PrometheusRule CRDs (prometheus-operator $PROMETHEUS_OPERATOR_VERSION)"
  kc apply --server-side -f "$(prometheus_crd servicemonitors)" -f "$(prometheus_crd prometheusrules)" >/dev/null
  kc wait --for=condition=Established --timeout=30s \
    crd/servicemonitors.monitoring.coreos.com crd/prometheusrules.monitoring.coreos.com >/dev/null
fi

print_export
