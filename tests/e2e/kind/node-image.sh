#!/usr/bin/env bash
# Assembles kind's node image for Kubernetes $K8S_VERSION on a machine that
# cannot pull kindest/node (no registry), from what this project builds and
# Debian packages. `kind build node-image` cannot do this: it fetches every
# image but the four Kubernetes server images from a registry.
#
#   1. kubeadm, kubelet, kubectl, kube-apiserver, kube-controller-manager,
#      kube-scheduler, kube-proxy, etcd and CoreDNS: tests/e2e/cluster/build.sh
#      (Go module proxy), cached under ~/.cache/ferry/bin like the kwok
#      cluster's binaries; pause from the kubernetes module's pause.c.
#   2. Two Debian bookworm root filesystems from mmdebstrap, cached under
#      ~/.cache/ferry/kind/ keyed by their package lists: the node's (systemd,
#      containerd 1.6, runc, iptables, CNI plugins) and kube-proxy's (iptables,
#      nftables, conntrack).
#   3. The images kubeadm runs, one `docker save` archive: each a static
#      binary on an empty base, kube-proxy on its Debian rootfs; named as
#      kubeadm and kind look them up (registry.k8s.io/kube-apiserver:v1.36.3,
#      ..., pause:3.10), except that etcd and CoreDNS carry the versions really
#      built (the kind config tells kubeadm those tags: kind.sh).
#   4. `docker build` of node/Dockerfile; a container of it runs the node's
#      containerd to import those images (--no-unpack, pinned), and is
#      committed as the node image.
#
# The image is tagged ferry.local/kind-node:$K8S_VERSION-<hash of the inputs>;
# an image with that tag is reused. Needs a working `docker` (kind.sh points
# DOCKER_HOST at its engine). Progress on stderr; the image name on stdout.
set -euo pipefail
shopt -s inherit_errexit

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
CLUSTER="$ROOT/tests/e2e/cluster"
# shellcheck source=SCRIPTDIR/../cluster/versions.env
source "$CLUSTER/versions.env"
# shellcheck source=SCRIPTDIR/../cluster/lib.sh
source "$CLUSTER/lib.sh"

log() { printf '[kind] %s\n' "$*" >&2; }
die() { printf '[kind] error: %s\n' "$*" >&2; exit 1; }

SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
NODE_PACKAGES=systemd,dbus,iptables,nftables,iproute2,conntrack,ethtool,util-linux,mount,kmod,procps,jq,curl,ca-certificates,e2fsprogs,pigz,libseccomp2,containerd,runc,containernetworking-plugins
KUBE_PROXY_PACKAGES=iptables,nftables,conntrack
# The tags of the etcd and CoreDNS images, also written into the kind config.
ETCD_TAG="${ETCD_VERSION#v}"
COREDNS_TAG="$COREDNS_VERSION"
PAUSE_IMAGE=registry.k8s.io/pause:3.10
CACHE="$FERRY_CACHE/kind"

# The image's identity: every input that changes what is built.
inputs_hash() {
  {
    cat "${BASH_SOURCE[0]}" "$CLUSTER/versions.env" "$HERE/node/Dockerfile" "$HERE/node/iptables-wrapper"
    (cd "$HERE/node/files" && find . -type f | sort | xargs cat)
    echo "$SUITE $MIRROR $SECURITY_MIRROR $NODE_PACKAGES $KUBE_PROXY_PACKAGES $KIND_VERSION"
  } | sha256sum | cut -c1-12
}

# A Debian root filesystem as a tar, cached by suite and package list.
rootfs() { # name variant packages -> path of the tar
  local name=$1 variant=$2 packages=$3 key tar
  key="$(echo "$SUITE $variant $packages $MIRROR $SECURITY_MIRROR" | sha256sum | cut -c1-12)"
  tar="$CACHE/rootfs-$name-$SUITE-$key.tar"
  if [[ ! -f $tar ]]; then
    command -v mmdebstrap >/dev/null || die "mmdebstrap is missing (tests/e2e/install-deps.sh installs it)"
    log "building the $name root filesystem with mmdebstrap ($SUITE: $packages; ~1-2 min, log ${tar%.tar}.log)"
    mkdir -p "$CACHE"
    if ! timeout 900 mmdebstrap --variant="$variant" --include="$packages" \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      "$SUITE" "${tar%.tar}.partial.tar" "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
      "deb $SECURITY_MIRROR $SUITE-security main" >"${tar%.tar}.log" 2>&1; then
      rm -rf "${tar%.tar}.partial.tar"
      tail -n 15 "${tar%.tar}.log" >&2
      die "mmdebstrap failed for the $name root filesystem; read ${tar%.tar}.log"
    fi
    mv "${tar%.tar}.partial.tar" "$tar"
  fi
  echo "$tar"
}

# A minimal rootfs for one static binary: /etc/passwd, /etc/group, /tmp.
static_rootfs() { # dir
  mkdir -p "$1/etc" "$1/tmp"
  chmod 1777 "$1/tmp"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' >"$1/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' >"$1/etc/group"
}

# docker import of a directory, reproducibly tarred.
import_dir() { # dir image entrypoint [user]
  docker rmi "$2" >/dev/null 2>&1 || true
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$1" -cf "$1.tar" .
  local changes=(--change "ENTRYPOINT [\"$3\"]" --change 'ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')
  [[ -z ${4:-} ]] || changes+=(--change "USER $4")
  docker import "${changes[@]}" "$1.tar" "$2" >/dev/null
}

component_images() { # work-dir -> writes work/images.tar, prints the image names
  local work=$1 k8s="$FERRY_BIN/kubernetes-$K8S_VERSION" names=() c
  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    static_rootfs "$work/$c"
    install -D -m 0755 "$k8s/$c" "$work/$c/usr/local/bin/$c"
    import_dir "$work/$c" "registry.k8s.io/$c:$K8S_VERSION" "/usr/local/bin/$c"
    names+=("registry.k8s.io/$c:$K8S_VERSION")
  done
  static_rootfs "$work/etcd"
  install -D -m 0755 "$FERRY_BIN/etcd-$ETCD_VERSION/etcd" "$work/etcd/usr/local/bin/etcd"
  import_dir "$work/etcd" "registry.k8s.io/etcd:$ETCD_TAG" /usr/local/bin/etcd
  names+=("registry.k8s.io/etcd:$ETCD_TAG")

  static_rootfs "$work/coredns"
  install -D -m 0755 "$FERRY_BIN/coredns-$COREDNS_VERSION/coredns" "$work/coredns/coredns"
  import_dir "$work/coredns" "registry.k8s.io/coredns/coredns:$COREDNS_TAG" /coredns
  names+=("registry.k8s.io/coredns/coredns:$COREDNS_TAG")

  # pause, from the kubernetes module (downloaded by the cluster build).
  local k8s_mod
  k8s_mod="$(module_dir "k8s.io/kubernetes@$K8S_VERSION")"
  static_rootfs "$work/pause"
  gcc -static -O2 -Wall -Werror "-DVERSION=v${PAUSE_IMAGE##*:}" -o "$work/pause/pause" "$k8s_mod/build/pause/linux/pause.c"
  # Non-root like the upstream image: pods with runAsNonRoot and no runAsUser
  # (what Ferry renders) run it as their container too.
  import_dir "$work/pause" "$PAUSE_IMAGE" /pause 65535:65535
  names+=("$PAUSE_IMAGE")

  # kube-proxy: Debian's iptables behind iptables-wrapper (the node's backend).
  local kp="$work/kube-proxy"
  mkdir -p "$kp"
  tar -xf "$(rootfs kube-proxy essential "$KUBE_PROXY_PACKAGES")" -C "$kp"
  install -D -m 0755 "$k8s/kube-proxy" "$kp/usr/local/bin/kube-proxy"
  install -D -m 0755 "$HERE/node/iptables-wrapper" "$kp/usr/sbin/iptables-wrapper"
  for c in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sfn /usr/sbin/iptables-wrapper "$kp/etc/alternatives/$c"
  done
  import_dir "$kp" "registry.k8s.io/kube-proxy:$K8S_VERSION" /usr/local/bin/kube-proxy
  names+=("registry.k8s.io/kube-proxy:$K8S_VERSION")

  docker save -o "$work/images.tar" "${names[@]}"
  docker rmi "${names[@]}" >/dev/null
  printf '%s\n' "${names[@]}"
}

# Waits up to $1 seconds for "$2..." to succeed.
wait_for() { # timeout command...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2 # polling the build container's containerd, bounded
  done
}

build() { # image
  local image=$1 work="$CACHE/build/node-${1##*-}" base stage="ferry.local/kind-node-stage:${1##*:}"
  local builder="ferry-kind-node-build-$$"
  "$CLUSTER/build.sh" etcd kubernetes kubeadm coredns
  rm -rf "$work" && mkdir -p "$work/context/bin" "$work/context/ferry" "$work/images"

  local rootfs_tar
  rootfs_tar="$(rootfs node minbase "$NODE_PACKAGES")"
  base="ferry.local/kind-base:$(basename "$rootfs_tar" .tar | sed 's/^rootfs-node-//')"
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    log "importing the node's root filesystem as $base"
    docker import "$rootfs_tar" "$base" >/dev/null
  fi

  log "building the control-plane images (etcd $ETCD_TAG, CoreDNS $COREDNS_TAG, pause, kube-* $K8S_VERSION)"
  local names
  names="$(component_images "$work/images")"

  log "building $stage (docker build of tests/e2e/kind/node/Dockerfile)"
  cp -r "$(module_dir "sigs.k8s.io/kind@$KIND_VERSION")/images/base/files" "$work/context/kind"
  # The module cache is read-only; modes are set here, not in a RUN layer
  # (which would copy every file it touches into one more layer).
  chmod -R u+w,go-w "$work/context/kind"
  chmod 0755 "$work/context/kind/usr/local/bin/entrypoint" "$work/context/kind/kind/bin/"*.sh
  rm -rf "$work/context/kind/LICENSES" "$work/context/kind/etc/systemd/system/containerd-fuse-overlayfs.service" \
    "$work/context/kind/usr/local/bin/clean-install"
  cp -r "$HERE/node/files/." "$work/context/ferry/"
  # kind reads the node's Kubernetes version from /kind/version.
  mkdir -p "$work/context/ferry/kind" && echo "$K8S_VERSION" >"$work/context/ferry/kind/version"
  local b
  for b in kubelet kubectl; do cp "$FERRY_BIN/kubernetes-$K8S_VERSION/$b" "$work/context/bin/"; done
  cp "$FERRY_BIN/kubeadm-$K8S_VERSION/kubeadm" "$work/context/bin/"
  cp "$HERE/node/Dockerfile" "$work/context/Dockerfile"
  if ! DOCKER_BUILDKIT=0 timeout 600 docker build --build-arg "BASE=$base" -t "$stage" "$work/context" >"$work/build.log" 2>&1; then
    tail -n 20 "$work/build.log" >&2
    die "docker build of the node image failed; read $work/build.log"
  fi

  log "importing the images into the node's containerd, then committing $image"
  docker rm -f "$builder" >/dev/null 2>&1 || true
  docker run -d --name "$builder" --tmpfs /run --tmpfs /tmp -v "$work/images/images.tar:/kind/images.tar:ro" \
    --entrypoint /usr/bin/containerd "$stage" >/dev/null
  local ok=1 name
  if wait_for 60 docker exec "$builder" ctr version &&
    docker exec "$builder" ctr -n k8s.io images import --no-unpack --all-platforms /kind/images.tar >&2; then
    for name in $names; do
      docker exec "$builder" ctr -n k8s.io images label "$name" io.cri-containerd.pinned=pinned >/dev/null || ok=0
    done
  else
    ok=0
  fi
  if ((ok == 0)); then
    docker logs "$builder" 2>&1 | tail -n 20 >&2
    docker rm -f "$builder" >/dev/null
    die "importing the images into the node image failed (the build container's log is above)"
  fi
  # containerd closes its database on SIGTERM (docker stop would send the
  # image's STOPSIGNAL, meant for systemd).
  docker kill --signal TERM "$builder" >/dev/null
  timeout 60 docker wait "$builder" >/dev/null || die "the build container's containerd did not stop"
  docker commit --change 'ENTRYPOINT ["/usr/local/bin/ferry-entrypoint", "/sbin/init"]' --change 'CMD []' \
    "$builder" "$image" >/dev/null
  docker rm "$builder" >/dev/null
  docker rmi "$stage" >/dev/null
  rm -rf "$work"
  # Older node images of this checkout are replaced, not accumulated.
  local old
  for old in $(docker images --format '{{.Repository}}:{{.Tag}}' ferry.local/kind-node | grep -vx "$image" || true); do
    docker rmi "$old" >/dev/null 2>&1 || true
  done
}

IMAGE="ferry.local/kind-node:$K8S_VERSION-$(inputs_hash)"
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  started=$SECONDS
  build "$IMAGE"
  log "node image $IMAGE built in $((SECONDS - started))s"
fi
echo "$IMAGE"
