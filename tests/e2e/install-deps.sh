#!/usr/bin/env bash
# Installs the Debian packages `make test` needs on a fresh machine, and
# nothing else; `make test` (through `make deps`) and .ci/run both call it. A
# machine that already has everything pays two dozen `command -v`s.
#
#   openssl, curl           the kwok cluster's certificates and health checks
#   postgresql              unit tests' throwaway database, and the kind tier's
#                           database for the shop (bound to the kind network)
#   ShellCheck              `make lint`
#   docker.io               kind's container engine, unless a Docker engine is
#                           installed already (Docker CE, moby: never replaced)
#   mmdebstrap, debian-archive-keyring
#                           the kind node image's Debian base, when the upstream
#                           kindest/node cannot be pulled (tests/e2e/kind/node-image.sh)
#   jq                      the runc wrapper of a private dockerd on hosts whose
#                           root lacks CAP_SYS_RESOURCE (tests/e2e/kind/docker.sh)
#   gcc, libc6-dev          the static pause binary (tests/e2e/images/build.sh)
#   iproute2, util-linux    ip, nsenter: the tests run in the kind node's netns
#
# Go and Rust are not Debian packages here: they must be on PATH already.
set -euo pipefail

log() { printf '[deps] %s\n' "$*" >&2; }

need=()
want() { # package, when the check command fails
  local pkg=$1; shift
  "$@" >/dev/null 2>&1 || need+=("$pkg")
}
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

want openssl command -v openssl
want curl command -v curl
want ca-certificates test -f /etc/ssl/certs/ca-certificates.crt
want postgresql compgen -G '/usr/lib/postgresql/*/bin/postgres'
want shellcheck command -v shellcheck
want docker.io command -v dockerd
want mmdebstrap command -v mmdebstrap
want debian-archive-keyring test -f /usr/share/keyrings/debian-archive-keyring.gpg
want jq command -v jq
want gcc command -v gcc
want libc6-dev test -f /usr/lib/x86_64-linux-gnu/libc.a
want iproute2 command -v ip
want util-linux command -v nsenter
# docker.io's own dependencies are pulled in with it; on a machine that has
# dockerd from elsewhere they are that installation's business.

((${#need[@]})) || exit 0
if [[ "$(id -u)" != 0 ]]; then
  log "error: missing Debian packages: ${need[*]}; run as root: sudo $0"
  exit 1
fi
command -v apt-get >/dev/null || { log "error: missing ${need[*]} and no apt-get to install them"; exit 1; }
log "installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
timeout 600 apt-get update -qq
timeout 1200 apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
for pkg in "${need[@]}"; do
  installed "$pkg" || { log "error: $pkg did not install"; exit 1; }
done
log "installed: ${need[*]}"
