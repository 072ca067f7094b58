#!/usr/bin/env bash
# kind for machines with Docker: `kind.sh up` creates the cluster described by
# kind-config.yaml and writes its kubeconfig where the e2e suite reads it
# (target/cluster/kubeconfig); `kind.sh down` deletes it. Then run the suite
# with `E2E_EXTERNAL=1 KUBECONFIG=target/cluster/kubeconfig make test-e2e`.
# Cannot run on machines without a Docker engine (kind needs to pull its node
# image), which is why the default e2e cluster is tests/e2e/cluster/up.sh.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
KIND_VERSION="${KIND_VERSION:-v0.33.0}"
NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.36.3}"
NAME=ferry
KUBECONFIG_OUT="$ROOT/target/cluster/kubeconfig"

kind_bin() {
  if command -v kind >/dev/null; then
    command -v kind
  else
    GOBIN="$ROOT/target/kind-bin" go install "sigs.k8s.io/kind@$KIND_VERSION" >&2
    echo "$ROOT/target/kind-bin/kind"
  fi
}

case "${1:-}" in
up)
  KIND="$(kind_bin)"
  if ! "$KIND" get clusters | grep -qx "$NAME"; then
    "$KIND" create cluster --name "$NAME" --image "$NODE_IMAGE" --config "$HERE/kind-config.yaml" --wait 120s
  fi
  mkdir -p "$(dirname "$KUBECONFIG_OUT")"
  "$KIND" get kubeconfig --name "$NAME" >"$KUBECONFIG_OUT"
  echo "export KUBECONFIG=$KUBECONFIG_OUT"
  ;;
load)
  # The images `make images` built, so kind runs the artifacts we test.
  for image in operator order-service inventory-service; do
    "$(kind_bin)" load docker-image --name "$NAME" "ferry/$image:${IMAGE_TAG:-dev}"
  done
  ;;
down)
  "$(kind_bin)" delete cluster --name "$NAME"
  rm -f "$KUBECONFIG_OUT"
  ;;
*)
  echo "usage: $0 up|load|down" >&2
  exit 2
  ;;
esac
