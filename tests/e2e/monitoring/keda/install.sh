#!/usr/bin/env bash
# Installs KEDA (issue 19) on kind's node, idempotently:
#
#   tests/e2e/monitoring/keda/install.sh KUBECONFIG
#
# loads the locally built images (target/images/monitoring/keda*.tar, from
# `../images.sh keda`) into kind and applies upstream's own manifests, read
# from the Go module of the pinned version (../versions.env, KEDA_VERSION):
# `config/minimal`, which is `config/default` without the admission webhooks
# (those need a third deployment and image, and nothing here depends on them),
# rendered with `kubectl kustomize` with our image tags, imagePullPolicy
# IfNotPresent and the operator's --enable-webhook-patching=false (there is no
# ValidatingWebhookConfiguration to patch). The operator runs with upstream's
# --enable-cert-rotation: it writes the Secret keda/kedaorg-certs the metrics
# API server mounts and injects the CA into the APIService, so no cert-manager.
# Everything lands in the namespace `keda`, named as upstream's.
#
# Then waits until the CRDs are Established, keda-operator and
# keda-metrics-apiserver are Ready, the APIService
# v1beta1.external.metrics.k8s.io is Available and the external metrics API
# answers. On failure: one line saying why and which log to read.
#
#   KEDA_READY_TIMEOUT  seconds to wait for all of that (240)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../../.." && pwd)"
# shellcheck source=SCRIPTDIR/../../cluster/versions.env
source "$ROOT/tests/e2e/cluster/versions.env"
# shellcheck source=SCRIPTDIR/../versions.env
source "$ROOT/tests/e2e/monitoring/versions.env"
# shellcheck source=SCRIPTDIR/../../cluster/lib.sh
source "$ROOT/tests/e2e/cluster/lib.sh"

log() { printf '[keda] %s\n' "$*" >&2; }
die() { printf '[keda] error: %s\n' "$*" >&2; exit 1; }

(($# == 1)) || die "usage: $0 KUBECONFIG"
export KUBECONFIG="$1"
[[ -f $KUBECONFIG ]] || die "no kubeconfig $KUBECONFIG (make kind-up)"
PATH="$(bin_dir):$PATH"
export PATH
TIMEOUT="${KEDA_READY_TIMEOUT:-240}"
IMAGES="$ROOT/target/images/monitoring"
NS=keda
TAG="${KEDA_VERSION#v}"
APISERVICE=v1beta1.external.metrics.k8s.io

# Seconds left until deadline $1, at least 1.
seconds_left() { echo $(($1 - SECONDS > 1 ? $1 - SECONDS : 1)); }

# One line of why and where to look, then the pods; exits 1.
fail() { # reason log-to-read
  kubectl -n "$NS" get pods -o wide >&2 || true
  die "$1; read: $2"
}

load_images() {
  local archives=() name
  for name in keda keda-metrics-apiserver; do
    [[ -f $IMAGES/$name.tar ]] || die "no $IMAGES/$name.tar: run tests/e2e/monitoring/images.sh keda"
    archives+=("$IMAGES/$name.tar")
  done
  "$ROOT/tests/e2e/kind/kind.sh" load-archive "${archives[@]}" || die "loading the KEDA images into kind failed"
}

# Upstream's config/minimal with our images. kustomize refuses an absolute
# path to a base, so the module's config/ is copied beside the overlay.
render() { # dir
  local config
  config="$(module_dir "github.com/kedacore/keda/v2@$KEDA_VERSION")/config"
  [[ -d $config/minimal ]] || die "no $config/minimal (go mod download github.com/kedacore/keda/v2@$KEDA_VERSION)"
  cp -r "$config" "$1/config" && chmod -R u+w "$1/config"
  cat >"$1/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - config/minimal
images:
  - name: ghcr.io/kedacore/keda
    newTag: "$TAG"
  - name: ghcr.io/kedacore/keda-metrics-apiserver
    newTag: "$TAG"
patches:
  - target: {kind: Deployment, name: keda-operator}
    patch: |
      - {op: replace, path: /spec/template/spec/containers/0/imagePullPolicy, value: IfNotPresent}
      - {op: add, path: /spec/template/spec/containers/0/args/-, value: --enable-webhook-patching=false}
  - target: {kind: Deployment, name: keda-metrics-apiserver}
    patch: |
      - {op: replace, path: /spec/template/spec/containers/0/imagePullPolicy, value: IfNotPresent}
YAML
  kubectl kustomize "$1"
}

apply() {
  local work
  work="$(mktemp -d)"
  # shellcheck disable=SC2064 # expand now: $work is local
  trap "rm -rf '$work'" EXIT
  render "$work" >"$work/keda.yaml"
  # Server side: the ScaledJob CRD is larger than the last-applied annotation allows.
  kubectl apply --server-side --force-conflicts -f "$work/keda.yaml" >/dev/null
}

wait_ready() { # deadline
  local deadline=$1 crd deploy
  for crd in scaledobjects.keda.sh scaledjobs.keda.sh triggerauthentications.keda.sh clustertriggerauthentications.keda.sh; do
    kubectl wait --for=condition=Established "crd/$crd" --timeout="$(seconds_left "$deadline")s" >/dev/null 2>&1 ||
      fail "crd/$crd is not Established" "kubectl get crd $crd -o yaml"
  done
  # The metrics API server starts once the operator, leader, has written the
  # Secret kedaorg-certs it mounts.
  for deploy in keda-operator keda-metrics-apiserver; do
    kubectl -n "$NS" rollout status "deployment/$deploy" --timeout="$(seconds_left "$deadline")s" >/dev/null 2>&1 ||
      fail "deployment/$deploy is not Ready after ${TIMEOUT}s" "kubectl -n $NS logs deployment/$deploy; kubectl -n $NS describe deployment/$deploy"
  done
  kubectl wait --for=condition=Available "apiservice/$APISERVICE" --timeout="$(seconds_left "$deadline")s" >/dev/null 2>&1 ||
    fail "apiservice/$APISERVICE is not Available after ${TIMEOUT}s ($(kubectl get apiservice "$APISERVICE" \
      -o jsonpath='{.status.conditions[?(@.type=="Available")].message}' 2>/dev/null))" \
      "kubectl -n $NS logs deployment/keda-metrics-apiserver; kubectl -n $NS logs deployment/keda-operator | grep -i cert"
  until kubectl get --raw "/apis/external.metrics.k8s.io/v1beta1" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "GET /apis/external.metrics.k8s.io/v1beta1 fails after ${TIMEOUT}s" \
      "kubectl -n $NS logs deployment/keda-metrics-apiserver"
    sleep 2 # polling the API, bounded by the deadline
  done
}

main() {
  local started=$SECONDS
  load_images
  apply
  wait_ready $((SECONDS + TIMEOUT))
  log "KEDA $KEDA_VERSION ready in $((SECONDS - started)) s: ScaledObjects are served, $APISERVICE is Available"
}

main
