#!/usr/bin/env bash
# Builds the local cluster's binaries from the Go module proxy and caches them
# outside the work tree, keyed by version. A second run (or a fresh clone on the
# same machine) finds them and returns at once.
#
# Usage: build.sh [component...]   (default: all)
# Prints nothing but progress on stderr; the binaries end up in "$FERRY_BIN".
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/versions.env
source "$HERE/versions.env"
# shellcheck source=SCRIPTDIR/lib.sh
source "$HERE/lib.sh"

export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local

# kube-apiserver and friends cannot be `go install`ed: k8s.io/kubernetes's go.mod
# replaces every staging module with a local path. A wrapper module requires
# k8s.io/kubernetes and replaces each staging module with its published v0.X.Y
# tag (kubernetes/kubernetes#79384). The replace list is read from the published
# go.mod, so it stays right across releases.
build_kubernetes() {
  local dir="$FERRY_BIN/kubernetes-$K8S_VERSION"
  if [[ -x "$dir/kubectl" && -x "$dir/kube-proxy" ]]; then return; fi
  log "building kubernetes $K8S_VERSION (cold: 15-25 min on 2 cores)"
  k8s_build "$dir" kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy
}

# kubeadm runs inside the kind node (tests/e2e/kind/node-image.sh); built the
# same way, it shares the Go build cache with the other components.
build_kubeadm() {
  local dir="$FERRY_BIN/kubeadm-$K8S_VERSION"
  if [[ -x "$dir/kubeadm" ]]; then return; fi
  log "building kubeadm $K8S_VERSION (2-4 min once the other components are built)"
  k8s_build "$dir" kubeadm
}

k8s_build() { # out-dir cmd...
  local dir=$1; shift
  local cmds=("$@")
  local staging="v0.${K8S_VERSION#v1.}" minor work mod
  minor="$(cut -d. -f2 <<<"$K8S_VERSION")"
  work="$FERRY_CACHE/build/$(basename "$dir")"
  rm -rf "$work" && mkdir -p "$work"
  (cd /tmp && go mod download "k8s.io/kubernetes@$K8S_VERSION")
  mod="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod"
  (
    cd "$work"
    go mod init local/k8s-bins >/dev/null 2>&1
    # The go/godebug lines must match the staging modules' own (v0.36 -> go1.26).
    go mod edit -go=1.26.0 -godebug=default=go1.26
    local m
    while read -r m; do
      go mod edit -replace="$m=$m@$staging"
    done < <(sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\1#p' "$mod")
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    for m in "${cmds[@]}"; do go mod edit -tool="k8s.io/kubernetes/cmd/$m"; done
    go mod tidy
    # Without these ldflags `--version` and /version say v0.0.0-master.
    local v=k8s.io/component-base/version c=k8s.io/client-go/pkg/version
    local ldf="-s -w -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean"
    ldf+=" -X $c.gitVersion=$K8S_VERSION -X $c.gitMajor=1 -X $c.gitMinor=$minor -X $c.gitTreeState=clean"
    mkdir -p "$dir.tmp"
    go build -trimpath -ldflags "$ldf" -o "$dir.tmp/" "${cmds[@]/#/k8s.io/kubernetes/cmd/}"
  )
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
}

# etcd's server module has `replace` lines too; a three-line wrapper around
# etcdmain.Main builds the real server (Debian's etcd 3.4 is too old for 1.36).
build_etcd() {
  local dir="$FERRY_BIN/etcd-$ETCD_VERSION"
  if [[ -x "$dir/etcd" ]]; then return; fi
  log "building etcd $ETCD_VERSION"
  local work="$FERRY_CACHE/build/etcd-$ETCD_VERSION"
  rm -rf "$work" && mkdir -p "$work"
  (
    cd "$work"
    go mod init local/etcd >/dev/null 2>&1
    go mod edit -go=1.26.0
    printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' >main.go
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    go mod tidy
    mkdir -p "$dir.tmp"
    go build -trimpath -ldflags "-s -w" -o "$dir.tmp/etcd" .
  )
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
}

# kwok and helm have no replace directives: a plain `go install` works.
go_install() { # name version ldflags package...
  local name=$1 version=$2 ldflags=$3; shift 3
  local dir="$FERRY_BIN/$name-$version"
  if [[ -d "$dir" ]]; then return; fi
  log "building $name $version"
  mkdir -p "$dir.tmp"
  local p
  for p in "$@"; do GOBIN="$dir.tmp" go install -trimpath -ldflags "-s -w $ldflags" "$p@$version"; done
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
}

build_kwok() { go_install kwok "$KWOK_VERSION" "" sigs.k8s.io/kwok/cmd/kwok; }
# The ldflags of helm's own Makefile: `helm version` reports the full tag, and
# `helm template`/`lint` assume the Kubernetes minor helm was built against
# (without them, v1.20, and charts requiring a newer kubeVersion fail).
build_helm() {
  local minor
  minor="$(cut -d. -f2 <<<"$K8S_VERSION")"
  go_install helm "$HELM_VERSION" "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor \
 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
    helm.sh/helm/v3/cmd/helm
}

# kind, from the Go module proxy (tests/e2e/kind/kind.sh).
build_kind() { go_install kind "$KIND_VERSION" "" sigs.k8s.io/kind; }

# The kind node's cluster DNS (tests/e2e/kind/node-image.sh; the kwok cluster needs none).
build_coredns() { go_install coredns "$COREDNS_VERSION" "" github.com/coredns/coredns; }

components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=(etcd kwok helm kubernetes)
for c in "${components[@]}"; do locked "$c" "build_$c"; done
link_bins
