#!/usr/bin/env bash
# The message broker of the event-driven shop (issue 20) as an OCI image for the
# real-pod tier, without Docker or a registry, as the monitoring images are made
# (../monitoring/images.sh): the static nats-server that services/scripts/nats.sh
# builds from the Go module proxy (CGO_ENABLED=0) on an empty base, written by
# Ferry's own `oci_image`.
#
#   nats.sh        write target/images/nats-server.tar (ferry.local/nats-server:<version>)
#   nats.sh load   write it, then load it into the running kind cluster
#                  (tests/e2e/kind/kind.sh load-archive)
#
# The image runs as nobody (65534:65534, numeric so runAsNonRoot can check it),
# needs no writable root filesystem (JetStream's store goes where --store_dir
# says, e.g. the pod's /tmp emptyDir) and exposes 4222 (clients) and 8222
# (monitoring: /healthz, /varz, /jsz). examples/shop-async/25-nats.yaml runs it.
# Progress goes to stderr; the archive's path to stdout.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
OUT="$ROOT/target/images"
ARCHIVE="$OUT/nats-server.tar"
NATS="$ROOT/services/scripts/nats.sh"
# shellcheck source=SCRIPTDIR/../cluster/lib.sh
source "$HERE/../cluster/lib.sh"

log() { printf '[nats-image] %s\n' "$*" >&2; }

build() {
  cd "$ROOT"
  "$NATS" build
  local bin version
  bin="$("$NATS" path)"
  # The version is the cache directory's suffix: nats-server-<version>/nats-server.
  version="$(basename "$(dirname "$bin")")"
  version="${version#nats-server-}"
  log "building oci_image"
  local oci_image
  oci_image="$(oci_image_bin)"
  mkdir -p "$OUT/rootfs/nats/etc"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' >"$OUT/rootfs/nats/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' >"$OUT/rootfs/nats/etc/group"
  log "writing $ARCHIVE (ferry.local/nats-server:$version)"
  "$oci_image" --out "$ARCHIVE" --name "ferry.local/nats-server:$version" \
    --user 65534:65534 --entrypoint /nats-server --expose 4222 --expose 8222 \
    --add "$bin:/nats-server" \
    --add "$OUT/rootfs/nats/etc/passwd:/etc/passwd" --add "$OUT/rootfs/nats/etc/group:/etc/group" >/dev/null
  echo "$ARCHIVE"
}

case "${1:-build}" in
build) build ;;
load)
  build >/dev/null
  "$ROOT/tests/e2e/kind/kind.sh" load-archive "$ARCHIVE"
  log "loaded $ARCHIVE into kind"
  ;;
*)
  echo "usage: $0 [build|load]" >&2
  exit 2
  ;;
esac
