# The Docker engine kind runs on. Sourced by kind.sh and node-image.sh, not run.
# shellcheck shell=bash
#
# A working engine (DOCKER_HOST, or the default socket) is used as it is.
# Without one, or when it cannot start privileged containers (kind's nodes are
# privileged), a private engine is started: Debian's dockerd and containerd with
# their own sockets, exec root, pid files and logs under $KIND_DIR, their image
# store under $FERRY_CACHE/kind/docker (so the node image survives `make
# kind-down`), `--iptables=false --ip-forward=false --bridge=none` (the host's
# firewall and forwarding are left alone, no docker0), and `--config-file` of
# their own (a user's /etc/docker/daemon.json is never read or written).
#
# Root whose bounding set lacks CAP_SYS_RESOURCE (this project's CI machine)
# cannot start a `--privileged` container with Docker 20.10, which asks for
# every capability it knows. Only then is the private dockerd's default runtime
# runc-without-sys-resource (next to this file), which drops that one
# capability from each container's spec and execs the real runc.
#
# KIND_RUNC_WRAPPER=off never uses the wrapper (to see the failure it avoids);
# KIND_DOCKER_DATA moves the image store (one per private engine).
#
# Needs: KIND_DIR, FERRY_CACHE, log, die (kind.sh provides them).

DOCKER_RUN_DIR="$KIND_DIR/docker"
DOCKER_SOCK="$DOCKER_RUN_DIR/docker.sock"
DOCKER_DATA="${KIND_DOCKER_DATA:-$FERRY_CACHE/kind/docker}"
CONTAINERD_SOCK="$DOCKER_RUN_DIR/containerd.sock"
# The private engine's containers' cgroups go below this one, which `down` removes.
CGROUP_PARENT=ferry-kind
KIND_PIDS="$KIND_DIR/pids"
KIND_LOGS="$KIND_DIR/logs"
RUNC_WRAPPER="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/runc-without-sys-resource"
# CAP_SYS_RESOURCE is capability 24.
CAP_SYS_RESOURCE_BIT=24

# True when this process's bounding set has CAP_SYS_RESOURCE.
has_cap_sys_resource() {
  local bnd
  bnd="$(awk '/^CapBnd:/ {print $2}' /proc/self/status)"
  (((16#$bnd >> CAP_SYS_RESOURCE_BIT) & 1))
}

# The private engine is ours when its pid file names a live dockerd.
private_docker_running() {
  local pid
  pid="$(cat "$KIND_PIDS/dockerd" 2>/dev/null)" || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]]
}

engine_answers() { timeout 20 docker info >/dev/null 2>&1; }

# Which engine to use: "private" when ours is running (then DOCKER_HOST points
# at it), "host" when the caller's Docker answers, "none" otherwise.
docker_engine_state() {
  if private_docker_running; then
    echo private
  elif engine_answers; then
    echo host
  else
    echo none
  fi
}

use_private_docker() { export DOCKER_HOST="unix://$DOCKER_SOCK"; }

# Why this machine cannot start a private engine, or nothing.
private_docker_blocker() {
  [[ "$(id -u)" == 0 ]] || { echo "no working Docker engine, and starting a private one needs root"; return; }
  local c
  for c in dockerd containerd runc; do
    command -v "$c" >/dev/null || { echo "no working Docker engine and no $c to start one (tests/e2e/install-deps.sh installs docker.io)"; return; }
  done
  if ! has_cap_sys_resource; then
    command -v jq >/dev/null || { echo "root lacks CAP_SYS_RESOURCE and the runc wrapper needs jq (tests/e2e/install-deps.sh installs it)"; return; }
  fi
  # Unix socket paths are limited to 108 bytes; containerd's shims put
  # 70-odd bytes below its state directory.
  ((${#DOCKER_RUN_DIR} <= 40)) || echo "the checkout path is too long for the private engine's sockets ($DOCKER_RUN_DIR); set KIND_DIR to a shorter directory"
}

# Runs "$@" detached in its own session, pid to $KIND_PIDS/name.
start_daemon() { # name log command...
  local name=$1 logf=$2; shift 2
  setsid "$@" >"$logf" 2>&1 </dev/null &
  echo $! >"$KIND_PIDS/$name"
}

# Waits up to $2 seconds for "$3..." to succeed while pid file $1 stays alive.
wait_daemon() { # name timeout command...
  local name=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout)) pid
  pid="$(cat "$KIND_PIDS/$name")"
  until "$@" >/dev/null 2>&1; do
    [[ -e /proc/$pid ]] || return 1
    ((SECONDS < deadline)) || return 1
    sleep 0.2 # polling a daemon's socket, bounded by the timeout
  done
}

private_docker_up() {
  local blocker
  blocker="$(private_docker_blocker)"
  [[ -z $blocker ]] || die "$blocker"
  mkdir -p "$DOCKER_RUN_DIR/containerd" "$DOCKER_DATA" "$KIND_PIDS" "$KIND_LOGS"
  cat >"$DOCKER_RUN_DIR/containerd.toml" <<TOML
version = 2
root = "$DOCKER_RUN_DIR/containerd/root"
state = "$DOCKER_RUN_DIR/containerd/state"
# Docker needs the runtime only; Kubernetes' CRI runs inside the kind node.
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "$DOCKER_RUN_DIR/containerd/opt"
TOML
  log "starting a private containerd and dockerd (logs: ${KIND_LOGS#"$ROOT/"}/{containerd,dockerd}.log)"
  start_daemon containerd "$KIND_LOGS/containerd.log" containerd --config "$DOCKER_RUN_DIR/containerd.toml"
  if ! wait_daemon containerd 30 ctr --address "$CONTAINERD_SOCK" version; then
    tail -n 20 "$KIND_LOGS/containerd.log" >&2 || true
    private_docker_down
    die "the private containerd did not start; read $KIND_LOGS/containerd.log"
  fi
  echo '{}' >"$DOCKER_RUN_DIR/daemon.json"
  local runtime=()
  if has_cap_sys_resource; then
    log "root has CAP_SYS_RESOURCE: plain runc"
  elif [[ ${KIND_RUNC_WRAPPER:-auto} == off ]]; then
    log "root lacks CAP_SYS_RESOURCE, and KIND_RUNC_WRAPPER=off: plain runc"
  else
    log "root lacks CAP_SYS_RESOURCE (CapBnd $(awk '/^CapBnd:/ {print $2}' /proc/self/status)): containers run through $(basename "$RUNC_WRAPPER")"
    runtime=(--add-runtime "ferry-runc=$RUNC_WRAPPER" --default-runtime ferry-runc)
  fi
  start_daemon dockerd "$KIND_LOGS/dockerd.log" dockerd \
    --config-file "$DOCKER_RUN_DIR/daemon.json" \
    --host "unix://$DOCKER_SOCK" --containerd "$CONTAINERD_SOCK" \
    --data-root "$DOCKER_DATA" --exec-root "$DOCKER_RUN_DIR/exec" --pidfile "$DOCKER_RUN_DIR/dockerd.pid" \
    --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none \
    --storage-driver overlay2 --exec-opt native.cgroupdriver=cgroupfs --cgroup-parent "/$CGROUP_PARENT" \
    --log-level warn "${runtime[@]}"
  use_private_docker
  if ! wait_daemon dockerd 60 docker info; then
    tail -n 20 "$KIND_LOGS/dockerd.log" >&2 || true
    private_docker_down
    die "the private dockerd did not start; read $KIND_LOGS/dockerd.log"
  fi
}

# Signals the process in pid file $1, waits up to $2 seconds, then SIGKILLs it.
stop_daemon() { # name timeout
  local name=$1 timeout=$2 pid deadline
  pid="$(cat "$KIND_PIDS/$name" 2>/dev/null)" || return 0
  rm -f "$KIND_PIDS/$name"
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  deadline=$((SECONDS + timeout))
  while [[ -e /proc/$pid ]] && ! grep -q '^[^)]*) Z' "/proc/$pid/stat" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "$name did not stop in ${timeout}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2 # waiting for a daemon to exit, bounded by the timeout
  done
}

# Stops the private engine and removes every trace of it but its image store:
# the daemons, container shims still holding our containerd's address, mounts
# under its directories, the network namespaces dockerd kept in its exec root.
private_docker_down() {
  stop_daemon dockerd 30
  stop_daemon containerd 15
  local pid
  for pid in $(pgrep -f "containerd-shim.* -address $CONTAINERD_SOCK" || true); do
    log "killing a leftover containerd shim (pid $pid)"
    pkill -KILL -P "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
  done
  unmount_under "$DOCKER_RUN_DIR"
  unmount_under "$DOCKER_DATA"
  rm -rf "$DOCKER_RUN_DIR"
  # Empty cgroups only: rmdir refuses a cgroup that still has a process.
  local d
  for d in /sys/fs/cgroup/*/"$CGROUP_PARENT" /sys/fs/cgroup/"$CGROUP_PARENT"; do
    [[ -d $d ]] && { find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true; }
  done
  return 0
}

# Unmounts everything mounted at or below a directory, deepest first.
unmount_under() {
  local m
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(awk -v d="$1" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r)
}
