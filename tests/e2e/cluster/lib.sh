# Shared paths and helpers for the local cluster scripts. Sourced, not run.
# shellcheck shell=bash

FERRY_CACHE="${FERRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}"
FERRY_BIN="$FERRY_CACHE/bin"
mkdir -p "$FERRY_BIN"

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

# Runs one component's build under that component's lock, so the background
# warmer (tests/e2e/warm.sh) and a step that needs the binary now never build
# it at once: the second waits for the first, then finds it cached.
locked() { # component command...
  local name=$1
  shift
  mkdir -p "$FERRY_CACHE/locks"
  (
    flock 9
    "$@"
  ) 9>"$FERRY_CACHE/locks/$name.lock"
}

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

# The cargo profile of the images' binaries: FERRY_IMAGE_PROFILE, release unless
# `make test` asks for dev (tests/e2e/run.sh), and the target/ directory it fills.
image_profile() { printf '%s' "${FERRY_IMAGE_PROFILE:-release}"; }
image_profile_dir() { if [[ $(image_profile) == dev ]]; then echo debug; else echo release; fi; }

# Builds Ferry's OCI image writer (tests/e2e/src/bin/oci_image.rs) in that
# profile and prints its path. Run from the repository's root.
oci_image_bin() {
  cargo build --profile "$(image_profile)" --locked -p ferry-e2e --bin oci_image >&2
  printf '%s/target/%s/oci_image' "$PWD" "$(image_profile_dir)"
}
