#!/usr/bin/env bash
# Builds Ferry's container images without Docker and without a registry, as
# OCI archives for containerd on a real node:
#   ctr -n k8s.io images import target/images/operator.tar
#
# The images mirror operator/Dockerfile and services/{order,inventory}/Dockerfile
# (same binary path, USER, ENV, EXPOSE, ENTRYPOINT) on an empty base instead of
# distroless cc-debian12: the binaries' glibc libraries and loader are copied
# from this machine (`--with-shared-libs`), plus the parts of distroless they may
# read (CA bundle with SSL_CERT_FILE, /etc/passwd and /etc/group naming nonroot).
# The pause image is Kubernetes' own pause.c, built static.
#
# Usage: build.sh   (IMAGE_TAG=dev by default, as `make images`)
#   FERRY_IMAGE_PROFILE=release (default) or dev: the cargo profile of the
#   binaries. `make test` uses dev (its unit tests have built them already, with
#   optimised dependencies); the demo and the benchmarks use release.
# Progress goes to stderr; the archives end up in target/images/.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
# shellcheck source=SCRIPTDIR/../cluster/versions.env
source "$HERE/../cluster/versions.env"
# shellcheck source=SCRIPTDIR/../cluster/lib.sh
source "$HERE/../cluster/lib.sh"

IMAGE_TAG="${IMAGE_TAG:-dev}"
OUT="$ROOT/target/images"
# The name kubelet-created placeholder pods use (ferry_e2e::PAUSE_IMAGE), and
# containerd 1.6's default sandbox_image, so the node needs no config for it.
PAUSE_NAMES=(registry.k8s.io/pause:3.10 registry.k8s.io/pause:3.6)

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] error: %s\n' "$*" >&2; exit 1; }

cd "$ROOT"
mkdir -p "$OUT/rootfs/etc"

case $(image_profile) in release | dev) ;; *) die "FERRY_IMAGE_PROFILE must be release or dev, not $(image_profile)" ;; esac
profile_dir="$(image_profile_dir)"
log "building the $(image_profile) binaries"
cargo build --profile "$(image_profile)" --locked \
  -p ferry-operator --bin operator \
  -p order-service --bin order-service \
  -p inventory-service --bin inventory-service
oci_image="$(oci_image_bin)"

# The pause source ships inside the kubernetes module; the cluster build has
# downloaded it already, so this is normally a cache hit.
log "building pause from k8s.io/kubernetes@$K8S_VERSION"
k8s_dir="$(cd /tmp && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
  sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
pause_c="$k8s_dir/build/pause/linux/pause.c"
[[ -f "$pause_c" ]] || die "no $pause_c"
gcc -static -O2 -Wall -Werror "-DVERSION=v${PAUSE_NAMES[0]##*:}" -o "$OUT/pause" "$pause_c"

# distroless's users, so `USER 65532:65532` has a name, as in the Docker image.
printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
  'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
  'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$OUT/rootfs/etc/passwd"
printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >"$OUT/rootfs/etc/group"
base=(--with-shared-libs
  --add "$OUT/rootfs/etc/passwd:/etc/passwd" --add "$OUT/rootfs/etc/group:/etc/group")
ca=/etc/ssl/certs/ca-certificates.crt
if [[ -f "$ca" ]]; then
  base+=(--add "$ca:$ca" --env "SSL_CERT_FILE=$ca")
else
  log "warning: no $ca (apt-get install ca-certificates): images will have no CA bundle"
fi

images=()
image() { # file oci_image-args...
  local file=$1; shift
  log "writing $OUT/$file"
  "$oci_image" --out "$OUT/$file" "$@" >/dev/null
  images+=("$file")
}

pause_names=()
for n in "${PAUSE_NAMES[@]}"; do pause_names+=(--name "$n"); done
image pause.tar "${pause_names[@]}" --entrypoint /pause --user 65535:65535 \
  --add "$OUT/pause:/pause" --with-shared-libs

# The chart's default tag is its appVersion (image.tag ""), so the operator
# image carries that name too and `helm install` works without --set.
app_version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/ferry-operator/Chart.yaml)"
operator_names=(--name "docker.io/ferry/operator:$IMAGE_TAG")
if [[ -n "$app_version" && "$app_version" != "$IMAGE_TAG" ]]; then
  operator_names+=(--name "docker.io/ferry/operator:$app_version")
fi
image operator.tar "${operator_names[@]}" "${base[@]}" \
  --entrypoint /usr/local/bin/operator --user 65532:65532 --expose 8080 \
  --add "target/$profile_dir/operator:/usr/local/bin/operator"

for svc in order-service inventory-service; do
  image "$svc.tar" --name "docker.io/ferry/$svc:$IMAGE_TAG" "${base[@]}" \
    --entrypoint "/usr/local/bin/$svc" --user 65532:65532 \
    --env DATA_DIR=/data --env GRPC_ADDR=0.0.0.0:50051 --env METRICS_ADDR=0.0.0.0:9090 \
    --expose 50051 --expose 9090 \
    --add "target/$profile_dir/$svc:/usr/local/bin/$svc"
done

printf '%-6s %-60s %s\n' SIZE NAMES FILE
for file in "${images[@]}"; do
  # The names are read back from the archive's index, as ctr will see them.
  names="$(grep -o '"io.containerd.image.name":"[^"]*"' <(tar -xOf "$OUT/$file" index.json) |
    cut -d'"' -f4 | paste -sd, -)"
  printf '%-6s %-60s %s\n' "$(du -h "$OUT/$file" | cut -f1)" "$names" "target/images/$file"
done
