#!/usr/bin/env bash
# OCI image archives of the monitoring stack for the real-pod tier, without
# Docker or a registry: the binaries of build.sh (static, CGO_ENABLED=0) on an
# empty base, written by Ferry's own `oci_image` (tests/e2e/src/bin/oci_image.rs)
# into target/images/monitoring/, for `ctr -n k8s.io images import`.
#
# The images carry the names upstream publishes them under, with the tag of the
# version actually built, so nothing is pulled once they are imported and the
# default image pull policy (IfNotPresent for a non-latest tag) uses them:
# - prometheus-operator's defaults resolve without flags for its config reloader
#   (quay.io/prometheus-operator/prometheus-config-reloader:v<operator version>)
#   and for the base images of Prometheus and Alertmanager
#   (quay.io/prometheus/prometheus, quay.io/prometheus/alertmanager); their tags
#   come from the custom resource's spec.version, which must name the versions
#   built here (printed at the end; README.md beside this file), because the
#   operator's own default versions are older releases.
# - kube-state-metrics and metrics-server under registry.k8s.io, as their
#   upstream manifests name them.
# Every image runs as nobody (65534:65534, numeric so runAsNonRoot can check
# it), needs no writable root filesystem, and fits the restricted Pod Security
# Standard with the pod's securityContext.
#
# - KEDA (issue 19), only with `images.sh keda` (its cold build is slow, and
#   the stack's images are then left as they are): ghcr.io/kedacore/keda and
#   ghcr.io/kedacore/keda-metrics-apiserver, tagged as upstream's releases
#   (2.21.0, no `v`); keda/install.sh swaps them into upstream's manifests.
#
# Usage: images.sh [keda]   Progress goes to stderr; the names and files to stdout.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
# shellcheck source=SCRIPTDIR/../cluster/versions.env
source "$HERE/../cluster/versions.env"
# shellcheck source=SCRIPTDIR/versions.env
source "$HERE/versions.env"
# shellcheck source=SCRIPTDIR/../cluster/lib.sh
source "$HERE/../cluster/lib.sh"
log() { printf '[monitoring] %s\n' "$*" >&2; }

OUT="$ROOT/target/images/monitoring"
cd "$ROOT"

case "${1:-}" in
"") components=() ;;
keda) components=(keda) ;;
*) printf '[monitoring] usage: %s [keda]\n' "$0" >&2; exit 2 ;;
esac
"$HERE/build.sh" "${components[@]}"
bin() { "$HERE/build.sh" path "$1"; }

log "building oci_image"
oci_image="$(oci_image_bin)"

prometheus_release="v$(cat "$(module_dir "github.com/prometheus/prometheus@$PROMETHEUS_VERSION")/VERSION")"

mkdir -p "$OUT/rootfs/etc"
# /etc/passwd and /etc/group naming nobody, as upstream's busybox-based images.
printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
  'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' >"$OUT/rootfs/etc/passwd"
printf '%s\n' 'root:x:0:' 'nobody:x:65534:' >"$OUT/rootfs/etc/group"
base=(--user 65534:65534
  --add "$OUT/rootfs/etc/passwd:/etc/passwd" --add "$OUT/rootfs/etc/group:/etc/group")
# Alertmanager's receivers and Prometheus' remote endpoints may speak HTTPS.
ca=/etc/ssl/certs/ca-certificates.crt
if [[ -f "$ca" ]]; then
  base+=(--add "$ca:$ca" --env "SSL_CERT_FILE=$ca")
else
  log "warning: no $ca (apt-get install ca-certificates): images will have no CA bundle"
fi

images=()
image() { # file name oci_image-args...
  local file=$1 name=$2; shift 2
  log "writing $OUT/$file ($name)"
  "$oci_image" --out "$OUT/$file" --name "$name" "${base[@]}" "$@" >/dev/null
  images+=("$file")
}

# The stack (no argument) or KEDA (`images.sh keda`).
stack_images() {
  image prometheus.tar "quay.io/prometheus/prometheus:$prometheus_release" \
    --entrypoint /bin/prometheus --expose 9090 \
    --add "$(bin prometheus):/bin/prometheus" --add "$(bin promtool):/bin/promtool"
  image alertmanager.tar "quay.io/prometheus/alertmanager:$ALERTMANAGER_VERSION" \
    --entrypoint /bin/alertmanager --expose 9093 \
    --add "$(bin alertmanager):/bin/alertmanager"
  image prometheus-operator.tar "quay.io/prometheus-operator/prometheus-operator:$PROMETHEUS_OPERATOR_VERSION" \
    --entrypoint /bin/operator --expose 8080 \
    --add "$(bin operator):/bin/operator"
  image prometheus-config-reloader.tar \
    "quay.io/prometheus-operator/prometheus-config-reloader:$PROMETHEUS_OPERATOR_VERSION" \
    --entrypoint /bin/prometheus-config-reloader --expose 8080 \
    --add "$(bin prometheus-config-reloader):/bin/prometheus-config-reloader"
  # Entrypoint and ports of kube-state-metrics' Dockerfile.
  image kube-state-metrics.tar "registry.k8s.io/kube-state-metrics/kube-state-metrics:$KUBE_STATE_METRICS_VERSION" \
    --entrypoint /kube-state-metrics --entrypoint=--port=8080 --entrypoint=--telemetry-port=8081 \
    --expose 8080 --expose 8081 \
    --add "$(bin kube-state-metrics):/kube-state-metrics"
  image metrics-server.tar "registry.k8s.io/metrics-server/metrics-server:$METRICS_SERVER_VERSION" \
    --entrypoint /metrics-server --expose 10250 \
    --add "$(bin metrics-server):/metrics-server"
}

# The paths and entrypoints of KEDA's Dockerfile and Dockerfile.adapter; the
# manifests set the command and the arguments anyway.
keda_images() {
  local tag=${KEDA_VERSION#v}
  image keda.tar "ghcr.io/kedacore/keda:$tag" \
    --entrypoint /keda --entrypoint=--zap-log-level=info --entrypoint=--zap-encoder=console \
    --expose 8080 --expose 9666 \
    --add "$(bin keda):/keda"
  image keda-metrics-apiserver.tar "ghcr.io/kedacore/keda-metrics-apiserver:$tag" \
    --entrypoint /keda-adapter --entrypoint=--secure-port=6443 \
    --entrypoint=--zap-log-level=info --entrypoint=--zap-encoder=console \
    --expose 6443 --expose 8080 \
    --add "$(bin keda-adapter):/keda-adapter"
}

if [[ ${components[*]} == keda ]]; then keda_images; else stack_images; fi

printf '%-6s %-72s %s\n' SIZE NAME FILE
for file in "${images[@]}"; do
  names="$(grep -o '"io.containerd.image.name":"[^"]*"' <(tar -xOf "$OUT/$file" index.json) |
    cut -d'"' -f4 | paste -sd, -)"
  printf '%-6s %-72s %s\n' "$(du -h "$OUT/$file" | cut -f1)" "$names" "target/images/monitoring/$file"
done
[[ ${components[*]} == keda ]] ||
  printf 'Prometheus spec.version: %s   Alertmanager spec.version: %s\n' "$prometheus_release" "$ALERTMANAGER_VERSION"
