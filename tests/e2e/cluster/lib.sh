# Shared paths and helpers for the local cluster scripts. Sourced, not run.
# shellcheck shell=bash

FERRY_CACHE="${FERRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}"
FERRY_BIN="$FERRY_CACHE/bin"
mkdir -p "$FERRY_BIN"

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

# The binaries of the pinned versions, one flat directory for PATH.
bin_dir() { printf '%s/current-%s' "$FERRY_CACHE" "$K8S_VERSION-$ETCD_VERSION-$KWOK_VERSION-$HELM_VERSION"; }

link_bins() {
  local d f
  d="$(bin_dir)"
  mkdir -p "$d"
  for f in "$FERRY_BIN/kubernetes-$K8S_VERSION"/* "$FERRY_BIN/etcd-$ETCD_VERSION/etcd" \
    "$FERRY_BIN/kwok-$KWOK_VERSION/kwok" "$FERRY_BIN/helm-$HELM_VERSION/helm" \
    "$FERRY_BIN/coredns-${COREDNS_VERSION:-none}/coredns" "$FERRY_BIN/kubeadm-$K8S_VERSION/kubeadm" \
    "$FERRY_BIN/kind-${KIND_VERSION:-none}/kind"; do
    [[ -x "$f" ]] && ln -sf "$f" "$d/$(basename "$f")"
  done
  return 0
}

# Where the Go module cache holds module@version (downloading it if needed).
module_dir() {
  (cd /tmp && go mod download -json "$1" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
}

# The Prometheus Operator CRD files Ferry's tests use, read from the module.
prometheus_crd() { # servicemonitors | prometheusrules
  printf '%s/example/prometheus-operator-crd/monitoring.coreos.com_%s.yaml' \
    "$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")" "$1"
}
