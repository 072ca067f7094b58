#!/usr/bin/env bash
# Installs metrics-server on kind's node, idempotently:
#
#   tests/e2e/monitoring/metrics-server/install.sh KUBECONFIG
#
# loads the locally built image (target/images/monitoring/metrics-server.tar,
# from ../images.sh) into kind, applies metrics-server.yaml (kube-system,
# names as upstream's) and waits until the APIService v1beta1.metrics.k8s.io
# is Available and the API answers for the node, so `kubectl top` and the
# HorizontalPodAutoscaler controller have metrics. On failure: one line saying
# why, then the pod's state and log.
#
#   METRICS_SERVER_TIMEOUT  seconds to wait until metrics are served (180)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../../.." && pwd)"
# shellcheck source=SCRIPTDIR/../../cluster/versions.env
source "$ROOT/tests/e2e/cluster/versions.env"
# shellcheck source=SCRIPTDIR/../../cluster/lib.sh
source "$ROOT/tests/e2e/cluster/lib.sh"

log() { printf '[metrics-server] %s\n' "$*" >&2; }

(($# == 1)) || { log "usage: $0 KUBECONFIG"; exit 2; }
export KUBECONFIG="$1"
[[ -f $KUBECONFIG ]] || { log "error: no kubeconfig $KUBECONFIG (make kind-up)"; exit 1; }
PATH="$(bin_dir):$PATH"
export PATH
TIMEOUT="${METRICS_SERVER_TIMEOUT:-180}"
ARCHIVE="$ROOT/target/images/monitoring/metrics-server.tar"

# One line of why, then what the pod says; exits 1.
fail() { # reason
  log "error: $1"
  kubectl -n kube-system get pods -l k8s-app=metrics-server -o wide >&2 || true
  kubectl get apiservice v1beta1.metrics.k8s.io -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}' >&2 || true
  kubectl -n kube-system logs deployment/metrics-server --tail=30 >&2 || true
  exit 1
}

# Seconds left until deadline $1, at least 1.
seconds_left() { echo $(($1 - SECONDS > 1 ? $1 - SECONDS : 1)); }

main() {
  local started=$SECONDS deadline=$((SECONDS + TIMEOUT))
  [[ -f $ARCHIVE ]] || { log "error: no $ARCHIVE: run tests/e2e/monitoring/images.sh"; exit 1; }
  "$ROOT/tests/e2e/kind/kind.sh" load-archive "$ARCHIVE" || { log "error: loading $ARCHIVE into kind failed"; exit 1; }
  kubectl apply -f "$HERE/metrics-server.yaml" >/dev/null
  kubectl -n kube-system rollout status deployment/metrics-server --timeout="$(seconds_left $deadline)s" >/dev/null 2>&1 ||
    fail "deployment/metrics-server is not Ready after ${TIMEOUT}s"
  kubectl wait --for=condition=Available apiservice/v1beta1.metrics.k8s.io --timeout="$(seconds_left $deadline)s" >/dev/null 2>&1 ||
    fail "apiservice/v1beta1.metrics.k8s.io is not Available after ${TIMEOUT}s"
  # Available means the API answers; the first scrape of the node comes one
  # --metric-resolution later. The HPA and `kubectl top` need that one.
  until kubectl get --raw /apis/metrics.k8s.io/v1beta1/nodes 2>/dev/null | grep -q '"usage"'; do
    ((SECONDS < deadline)) || fail "the metrics API serves no node usage after ${TIMEOUT}s"
    sleep 2 # polling the API, bounded by the deadline
  done
  log "ready in $((SECONDS - started)) s: kubectl top works"
}

main
