#!/usr/bin/env bash
# Smoke check of the KEDA install.sh installs, on kind:
#
#   tests/e2e/monitoring/keda/smoke.sh KUBECONFIG
#
# In a throwaway namespace (deleted at the end): a Deployment of the node's
# pause image and a ScaledObject for it with a `cron` trigger, plus a
# `prometheus` trigger (query `vector(3)`) when the Prometheus of
# ../prometheus/install.sh is there (service monitoring/prometheus) or
# KEDA_SMOKE_PROMETHEUS names another one's URL. Passes when
# the ScaledObject is Ready, KEDA has created its HPA keda-hpa-<name>, the
# external metrics API answers every metric of that HPA (printed), and the HPA
# has scaled the Deployment from 1 to its maximum, 2 Ready pods.
#
#   KEDA_SMOKE_TIMEOUT     seconds to wait (120)
#   KEDA_SMOKE_PROMETHEUS  a Prometheus URL for the prometheus trigger
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../../.." && pwd)"
# shellcheck source=SCRIPTDIR/../../cluster/versions.env
source "$ROOT/tests/e2e/cluster/versions.env"
# shellcheck source=SCRIPTDIR/../../cluster/lib.sh
source "$ROOT/tests/e2e/cluster/lib.sh"

log() { printf '[keda-smoke] %s\n' "$*" >&2; }
die() { printf '[keda-smoke] error: %s\n' "$*" >&2; exit 1; }

(($# == 1)) || die "usage: $0 KUBECONFIG"
export KUBECONFIG="$1"
[[ -f $KUBECONFIG ]] || die "no kubeconfig $KUBECONFIG (make kind-up)"
PATH="$(bin_dir):$PATH"
export PATH
TIMEOUT="${KEDA_SMOKE_TIMEOUT:-120}"
NS=keda-smoke
NAME=sleeper
PROMETHEUS="${KEDA_SMOKE_PROMETHEUS:-http://prometheus.monitoring.svc:9090}"

manifests() { # with-prometheus(0|1)
  cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: $NAME, namespace: $NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: $NAME}}
  template:
    metadata: {labels: {app: $NAME}}
    spec:
      securityContext: {runAsNonRoot: true, runAsUser: 65535, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: pause
          image: registry.k8s.io/pause:3.10
          imagePullPolicy: IfNotPresent
          resources: {requests: {cpu: 1m, memory: 4Mi}}
          securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: $NAME, namespace: $NS}
spec:
  scaleTargetRef: {name: $NAME}
  minReplicaCount: 1
  maxReplicaCount: 2
  pollingInterval: 5
  triggers:
    # Active all year but its last minute: the next start is after the next end.
    - type: cron
      metadata: {timezone: UTC, start: "0 0 1 1 *", end: "59 23 31 12 *", desiredReplicas: "2"}
YAML
  if (($1)); then
    cat <<YAML
    - type: prometheus
      metadata: {serverAddress: "$PROMETHEUS", query: "vector(3)", threshold: "1"}
YAML
  fi
}

cleanup() { kubectl delete namespace "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true; }

main() {
  local deadline=$((SECONDS + TIMEOUT)) prom=0 metric metrics value
  kubectl get apiservice v1beta1.external.metrics.k8s.io >/dev/null 2>&1 || die "KEDA is not installed: run keda/install.sh"
  [[ -n ${KEDA_SMOKE_PROMETHEUS:-} ]] && prom=1
  kubectl -n monitoring get service prometheus >/dev/null 2>&1 && prom=1
  trap cleanup EXIT
  kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  manifests "$prom" | kubectl apply -f - >/dev/null
  kubectl -n "$NS" wait --for=condition=Ready "scaledobject/$NAME" --timeout="${TIMEOUT}s" >/dev/null 2>&1 ||
    die "scaledobject/$NAME is not Ready after ${TIMEOUT}s; read: kubectl -n $NS describe scaledobject/$NAME; kubectl -n keda logs deployment/keda-operator"
  until metrics="$(kubectl -n "$NS" get hpa "keda-hpa-$NAME" -o jsonpath='{.spec.metrics[*].external.metric.name}' 2>/dev/null)" &&
    [[ -n $metrics ]]; do
    ((SECONDS < deadline)) || die "no HPA keda-hpa-$NAME after ${TIMEOUT}s; read: kubectl -n keda logs deployment/keda-operator"
    sleep 2 # polling the API, bounded by the deadline
  done
  log "HPA keda-hpa-$NAME created, metrics: $metrics (prometheus trigger: $([[ $prom == 1 ]] && echo yes || echo 'no: no monitoring/prometheus'))"
  for metric in $metrics; do
    until value="$(kubectl get --raw "/apis/external.metrics.k8s.io/v1beta1/namespaces/$NS/$metric?labelSelector=scaledobject.keda.sh%2Fname%3D$NAME" 2>/dev/null |
      grep -o '"value":"[^"]*"')"; do
      ((SECONDS < deadline)) || die "the external metrics API does not answer $metric after ${TIMEOUT}s; read: kubectl -n keda logs deployment/keda-metrics-apiserver"
      sleep 2 # polling the API, bounded by the deadline
    done
    log "external metric $metric: $value"
  done
  until [[ "$(kubectl -n "$NS" get deployment "$NAME" -o jsonpath='{.status.readyReplicas}' 2>/dev/null)" == 2 ]]; do
    ((SECONDS < deadline)) || die "keda-hpa-$NAME did not scale $NAME to 2 in ${TIMEOUT}s; read: kubectl -n $NS describe hpa keda-hpa-$NAME"
    sleep 2 # polling the API, bounded by the deadline
  done
  kubectl -n "$NS" get hpa "keda-hpa-$NAME" >&2
  log "ok: keda-hpa-$NAME scaled $NAME to 2 Ready pods"
}

main
