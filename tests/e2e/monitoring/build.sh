#!/usr/bin/env bash
# Builds the monitoring stack of issue 18 from the Go module proxy and caches
# the binaries outside the work tree, keyed by version, like the cluster's
# (../cluster/build.sh): a second run finds them and returns at once.
#
# Usage: build.sh [component...]   (default: all)
#        build.sh path BINARY      (prints the cached binary's path; builds nothing)
# Components: promtool prometheus alertmanager kube-state-metrics metrics-server
#             prometheus-operator (operator and prometheus-config-reloader)
#             keda (keda and keda-adapter; not in the default set: slow, issue 19)
# Progress goes to stderr; the binaries end up in "$FERRY_BIN/<component>-<version>/".
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/../cluster/versions.env
source "$HERE/../cluster/versions.env"
# shellcheck source=SCRIPTDIR/versions.env
source "$HERE/versions.env"
# shellcheck source=SCRIPTDIR/../cluster/lib.sh
source "$HERE/../cluster/lib.sh"
log() { printf '[monitoring] %s\n' "$*" >&2; }
die() { printf '[monitoring] error: %s\n' "$*" >&2; exit 1; }

# Static binaries, as upstream's release builds (CGO_ENABLED=0, the `netgo` tag).
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
COMMON_VERSION=github.com/prometheus/common/version

# The directory of each binary, keyed by its component's version.
bin_path() { # binary
  case $1 in
    promtool) echo "$FERRY_BIN/promtool-$PROMETHEUS_VERSION/promtool" ;;
    prometheus) echo "$FERRY_BIN/prometheus-$PROMETHEUS_VERSION/prometheus" ;;
    alertmanager) echo "$FERRY_BIN/alertmanager-$ALERTMANAGER_VERSION/alertmanager" ;;
    kube-state-metrics) echo "$FERRY_BIN/kube-state-metrics-$KUBE_STATE_METRICS_VERSION/kube-state-metrics" ;;
    metrics-server) echo "$FERRY_BIN/metrics-server-$METRICS_SERVER_VERSION/metrics-server" ;;
    operator | prometheus-config-reloader)
      echo "$FERRY_BIN/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION/$1" ;;
    keda | keda-adapter) echo "$FERRY_BIN/keda-$KEDA_VERSION/$1" ;;
    *) die "unknown binary $1" ;;
  esac
}

# The release a module version is (Prometheus's module v0.316.0 is 3.16.0),
# from the VERSION file upstream's release builds read.
release_of() { # module@version
  local v
  v="$(cat "$(module_dir "$1")/VERSION")" || die "no VERSION file in $1"
  printf '%s' "$v"
}

# Modules without `replace` directives: a plain `go install` works.
go_install_to() { # dir tags ldflags package@version
  local dir=$1 tags=$2 ldflags=$3 pkg=$4
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  GOBIN="$dir.tmp" go install -trimpath -tags "$tags" -ldflags "-s -w $ldflags" "$pkg"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
}

# The tags of Prometheus's .promu.yml are `netgo builtinassets`. builtinassets
# embeds the web UI, which upstream builds with npm before `go build`; the module
# the proxy serves has no built UI, so these binaries are built without it: the
# HTTP API (all the tests and the operator use) is the same; the UI pages
# (/query, /graph, ...) answer HTTP 500.
prometheus_ldflags() {
  local release
  release="$(release_of "github.com/prometheus/prometheus@$PROMETHEUS_VERSION")"
  printf '%s' "-X $COMMON_VERSION.Version=$release -X $COMMON_VERSION.Branch=HEAD -X $COMMON_VERSION.BuildUser=ferry"
}

build_promtool() {
  [[ -x "$(bin_path promtool)" ]] && return
  log "building promtool from github.com/prometheus/prometheus@$PROMETHEUS_VERSION"
  go_install_to "$(dirname "$(bin_path promtool)")" netgo "$(prometheus_ldflags)" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
}

build_prometheus() {
  [[ -x "$(bin_path prometheus)" ]] && return
  log "building prometheus from github.com/prometheus/prometheus@$PROMETHEUS_VERSION"
  go_install_to "$(dirname "$(bin_path prometheus)")" netgo "$(prometheus_ldflags)" \
    "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION"
}

# Alertmanager's ui package embeds ui/app/dist (`//go:embed app/dist`), built
# with npm and elm by upstream's release pipeline and not in the module zip, so
# `go install ...@v0.35.0` fails ("pattern app/dist: no matching files found").
# The module is copied as it is and built with a one-page placeholder in
# dist/{elm,mantine}: the Go code is upstream's, the API (/api/v2) is the same,
# the web UI (/ and /ui/) is that page.
build_alertmanager() {
  local bin dir work
  bin="$(bin_path alertmanager)"
  [[ -x "$bin" ]] && return
  dir="$(dirname "$bin")"
  log "building alertmanager from github.com/prometheus/alertmanager@$ALERTMANAGER_VERSION (web UI: a placeholder page)"
  work="$FERRY_CACHE/build/alertmanager-$ALERTMANAGER_VERSION"
  rm -rf "$work" && mkdir -p "$(dirname "$work")"
  cp -r "$(module_dir "github.com/prometheus/alertmanager@$ALERTMANAGER_VERSION")" "$work"
  chmod -R u+w "$work"
  local ui
  for ui in elm mantine; do
    mkdir -p "$work/ui/app/dist/$ui"
    # ui.Register serves HTML only from its .gz (or .br) file.
    printf '%s\n' '<!doctype html><title>Alertmanager</title>' \
      '<p>This Alertmanager was built from the Go module, without the web UI' \
      '(upstream builds it with npm). The API is at <a href="/api/v2/status">/api/v2</a>.</p>' |
      gzip -9n >"$work/ui/app/dist/$ui/index.html.gz"
  done
  local release
  release="$(cat "$work/VERSION")"
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  (cd "$work" && go build -trimpath -tags netgo -o "$dir.tmp/alertmanager" \
    -ldflags "-s -w -X $COMMON_VERSION.Version=$release -X $COMMON_VERSION.Branch=HEAD -X $COMMON_VERSION.BuildUser=ferry" \
    ./cmd/alertmanager)
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
}

# The ldflags of kube-state-metrics' Makefile: the version, and the client-go
# version it reports in its build info.
build_kube-state-metrics() {
  local bin mod client_go
  bin="$(bin_path kube-state-metrics)"
  [[ -x "$bin" ]] && return
  log "building kube-state-metrics from k8s.io/kube-state-metrics/v2@$KUBE_STATE_METRICS_VERSION"
  mod="$(go env GOMODCACHE)/cache/download/k8s.io/kube-state-metrics/v2/@v/$KUBE_STATE_METRICS_VERSION.mod"
  [[ -f "$mod" ]] || module_dir "k8s.io/kube-state-metrics/v2@$KUBE_STATE_METRICS_VERSION" >/dev/null
  client_go="$(sed -n 's#^\s*k8s\.io/client-go \(v[^ ]*\).*#\1#p' "$mod")"
  go_install_to "$(dirname "$bin")" netgo \
    "-X $COMMON_VERSION.Version=$KUBE_STATE_METRICS_VERSION -X $COMMON_VERSION.Branch=HEAD -X $COMMON_VERSION.BuildUser=ferry \
 -X k8s.io/kube-state-metrics/v2/pkg/app.ClientGoVersion=$client_go" \
    "k8s.io/kube-state-metrics/v2@$KUBE_STATE_METRICS_VERSION"
}

# metrics-server's Makefile stamps client-go's version package.
build_metrics-server() {
  local bin
  bin="$(bin_path metrics-server)"
  [[ -x "$bin" ]] && return
  log "building metrics-server from sigs.k8s.io/metrics-server@$METRICS_SERVER_VERSION"
  go_install_to "$(dirname "$bin")" netgo \
    "-X k8s.io/client-go/pkg/version.gitVersion=$METRICS_SERVER_VERSION -X k8s.io/client-go/pkg/version.gitTreeState=clean" \
    "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION"
}

# prometheus-operator's go.mod replaces its two submodules (pkg/apis/monitoring,
# pkg/client) with local paths, which the module zip does not hold, so `go
# install` refuses it. A wrapper module requires the operator at the pinned
# version (the submodules then resolve to their published tags of the same
# version) and builds its commands as tools. The version ldflag matters: the
# operator names its config-reloader image after it
# (quay.io/prometheus-operator/prometheus-config-reloader:v<version>).
build_prometheus-operator() {
  local bin dir work v=$PROMETHEUS_OPERATOR_VERSION
  bin="$(bin_path operator)"
  [[ -x "$bin" && -x "$(bin_path prometheus-config-reloader)" ]] && return
  dir="$(dirname "$bin")"
  log "building prometheus-operator and prometheus-config-reloader from github.com/prometheus-operator/prometheus-operator@$v"
  work="$FERRY_CACHE/build/prometheus-operator-$v"
  rm -rf "$work" && mkdir -p "$work"
  local pkg=github.com/prometheus-operator/prometheus-operator
  (
    cd "$work"
    go mod init local/prometheus-operator >/dev/null 2>&1
    go mod edit -go=1.26.0 -require="$pkg@$v" -tool="$pkg/cmd/operator" -tool="$pkg/cmd/prometheus-config-reloader"
    go mod tidy
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    go build -trimpath -tags netgo -o "$dir.tmp/" \
      -ldflags "-s -w -X $COMMON_VERSION.Version=${v#v} -X $COMMON_VERSION.Branch=HEAD -X $COMMON_VERSION.BuildUser=ferry" \
      "$pkg/cmd/operator" "$pkg/cmd/prometheus-config-reloader"
  )
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
}

# KEDA (issue 19): the operator (`keda`) and its external metrics API server
# (`keda-adapter`). Its go.mod has a `replace` directive, so `go install`
# refuses it; the module is copied as it is and built in place, with the
# version ldflags of upstream's Makefile. The admission webhooks binary is not
# built (install.sh leaves them out). -trimpath keeps the build cache keys free
# of the copy's path. A cold build took ~30 min on two shared cores (README.md).
build_keda() {
  local bin dir work
  bin="$(bin_path keda)"
  [[ -x "$bin" && -x "$(bin_path keda-adapter)" ]] && return
  dir="$(dirname "$bin")"
  log "building keda and keda-adapter from github.com/kedacore/keda/v2@$KEDA_VERSION (slow when cold)"
  work="$FERRY_CACHE/build/keda-$KEDA_VERSION"
  rm -rf "$work" && mkdir -p "$(dirname "$work")"
  cp -r "$(module_dir "github.com/kedacore/keda/v2@$KEDA_VERSION")" "$work"
  chmod -R u+w "$work"
  local ldflags="-s -w -X=github.com/kedacore/keda/v2/version.Version=${KEDA_VERSION#v}"
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  (cd "$work" &&
    go build -trimpath -ldflags "$ldflags" -o "$dir.tmp/keda" ./cmd/operator &&
    go build -trimpath -ldflags "$ldflags" -o "$dir.tmp/keda-adapter" ./cmd/adapter)
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
}

ALL=(promtool prometheus alertmanager kube-state-metrics metrics-server prometheus-operator)
# Built only when named: `build.sh keda`.
EXTRA=(keda)

if [[ ${1:-} == path ]]; then
  [[ $# -eq 2 ]] || die "usage: build.sh path BINARY"
  bin_path "$2"
  exit 0
fi
components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=("${ALL[@]}")
for c in "${components[@]}"; do
  [[ " ${ALL[*]} ${EXTRA[*]} " == *" $c "* ]] || die "unknown component $c (one of: ${ALL[*]} ${EXTRA[*]})"
done
for c in "${components[@]}"; do
  started=$(date +%s)
  locked "$c" "build_$c"
  log "$c ready ($(($(date +%s) - started))s)"
done
