#!/usr/bin/env bash
# Builds Argo Rollouts' controller (issue 21 item 6: the comparison round of
# `make bench-operator`) from the Go module proxy and caches it outside the work
# tree, keyed by version, like the cluster's binaries (../cluster/build.sh).
#
# Usage: build.sh                      builds (or finds) the controller, prints its path
#        build.sh crds                 prints the directory of its CRDs (from the module)
#        build.sh install KUBECONFIG   also applies those CRDs there, waits until they
#                                      are established, and prints the controller's path
# Progress goes to stderr; the binary ends up in
# "$FERRY_BIN/argo-rollouts-<version>/rollouts-controller".
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/../cluster/versions.env
source "$HERE/../cluster/versions.env"
# shellcheck source=SCRIPTDIR/../cluster/lib.sh
source "$HERE/../cluster/lib.sh"
log() { printf '[argo-rollouts] %s\n' "$*" >&2; }

ARGO_ROLLOUTS_VERSION=${ARGO_ROLLOUTS_VERSION:-v1.9.1}
MODULE=github.com/argoproj/argo-rollouts@$ARGO_ROLLOUTS_VERSION
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local

if [[ ${1:-} == crds ]]; then
  printf '%s/manifests/crds\n' "$(module_dir "$MODULE")"
  exit 0
fi

# Its go.mod has `replace` lines (k8s.io/* => v0.34.x, ...), so `go install
# pkg@version` refuses it. As for KEDA (../monitoring/build.sh), the module is
# copied as it is and built in place, its replace lines then apply as upstream's
# own build applies them. The version ldflags are those of upstream's Makefile,
# the commit read from the proxy's record of the tag, so `--version` says the tag.
dir="$FERRY_BIN/argo-rollouts-$ARGO_ROLLOUTS_VERSION"
bin="$dir/rollouts-controller"
if [[ ! -x "$bin" ]]; then
  started=$(date +%s)
  log "building rollouts-controller from $MODULE (cold: several minutes)"
  work="$FERRY_CACHE/build/argo-rollouts-$ARGO_ROLLOUTS_VERSION"
  rm -rf "$work" && mkdir -p "$(dirname "$work")"
  cp -r "$(module_dir "$MODULE")" "$work"
  chmod -R u+w "$work"
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  commit="$(cd /tmp && go mod download -json "$MODULE" | sed -n 's/.*"Hash": "\(.*\)".*/\1/p')"
  v=github.com/argoproj/argo-rollouts/utils/version
  (cd "$work" && nice -n 19 go build -trimpath -o "$dir.tmp/rollouts-controller" \
    -ldflags "-s -w -X $v.version=${ARGO_ROLLOUTS_VERSION#v} -X $v.gitTag=$ARGO_ROLLOUTS_VERSION \
 -X $v.gitCommit=$commit -X $v.gitTreeState=clean" \
    ./cmd/rollouts-controller)
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  log "rollouts-controller ready ($(($(date +%s) - started))s)"
fi
if [[ ${1:-} == install ]]; then
  [[ $# -eq 2 ]] || { log "usage: build.sh install KUBECONFIG"; exit 1; }
  kubectl=("$(bin_dir)/kubectl" --kubeconfig "$2")
  # Server-side: the Rollout CRD is larger than client-side apply's annotation allows.
  "${kubectl[@]}" apply --server-side --force-conflicts -k "$(module_dir "$MODULE")/manifests/crds" >/dev/null
  # `kubectl wait` fails at once while a new CRD has no conditions yet: retry it.
  for try in {1..30}; do
    "${kubectl[@]}" wait --for condition=established --timeout 10s \
      crd/rollouts.argoproj.io crd/experiments.argoproj.io crd/analysisruns.argoproj.io \
      crd/analysistemplates.argoproj.io crd/clusteranalysistemplates.argoproj.io >/dev/null 2>&1 && break
    [[ $try -lt 30 ]] || { log "Argo Rollouts' CRDs not established"; exit 1; }
    sleep 1
  done
fi
printf '%s\n' "$bin"
