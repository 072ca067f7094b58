# The real node of `NODE=real make cluster-up`: containerd, kubelet, kube-proxy
# and CoreDNS in a network namespace the tool creates. Sourced by up.sh and
# down.sh, not run.
# shellcheck shell=bash
#
# Why a network namespace for everything (control plane included): pod, Service
# and DNS traffic must never leave the machine's loopback or namespaces this run
# made. Inside the namespace the API server still listens on 127.0.0.1, the node
# gets one more address on the namespace's own loopback device ($NODE_IP, the
# address pods use to reach the API server and DNS), and pods hang off a bridge
# whose only way out is that namespace. kube-proxy's iptables rules live in the
# namespace and vanish with it. Tests run inside it too (`nsenter --net=...`).
#
# Facts of this host that shape the configs below (../shared/research/control-
# plane.md §5c): cgroup v1 with the cgroupfs driver (`failCgroupV1: false`),
# containerd 1.6 from Debian, no image can be pulled (images come from
# tests/e2e/images/build.sh and are imported into containerd's k8s.io namespace).

NETNS="${NETNS:-ferry-node}"
NODE_NAME=ferry-node
# A link-local-free private address that exists only on the namespace's lo.
NODE_IP=10.250.0.1
POD_CIDR=10.88.0.0/16
NETNS_PATH="/var/run/netns/$NETNS"
CONTAINERD_DIR="$CLUSTER_DIR/containerd"
CONTAINERD_SOCK="$CONTAINERD_DIR/containerd.sock"
IMAGES_DIR="${IMAGES_DIR:-$ROOT/target/images}"

# up.sh's start/wait_for/kc run everything through NSX (set to this once the
# namespace exists). It runs a command in the node's network namespace (and nothing else: the mount
# namespace stays the host's, so cgroups and the state directory are visible;
# `ip netns exec` would remount /sys and hide /sys/fs/cgroup).
NSX_REAL=(nsenter "--net=$NETNS_PATH")

real_node_packages_missing() {
  local missing=() c
  for c in containerd runc iptables conntrack nsenter; do command -v "$c" >/dev/null || missing+=("$c"); done
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] || missing+=(containernetworking-plugins)
  printf '%s\n' "${missing[@]}"
}

real_node_netns_up() {
  [[ -e "$NETNS_PATH" ]] && die "network namespace $NETNS already exists; run 'NODE=real make cluster-down' first"
  ip netns add "$NETNS"
  "${NSX_REAL[@]}" ip link set lo up
  "${NSX_REAL[@]}" ip addr add "$NODE_IP/32" dev lo
  # The namespace has no default route; without a route for the Service range
  # the kernel refuses a ClusterIP connect before kube-proxy's DNAT can run.
  "${NSX_REAL[@]}" ip route add "$SERVICE_CIDR" dev lo src "$NODE_IP"
  # Per-namespace switches: forward between pods and let bridged pod-to-pod
  # traffic pass kube-proxy's iptables rules (Service DNAT on one bridge).
  "${NSX_REAL[@]}" sysctl -qw net.ipv4.ip_forward=1
  "${NSX_REAL[@]}" sysctl -qw net.bridge.bridge-nf-call-iptables=1
}

real_node_certs() {
  gen_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
  gen_cert kubelet-serving "/CN=$NODE_NAME" "DNS:$NODE_NAME,IP:$NODE_IP"
  gen_cert kube-proxy "/CN=system:kube-proxy"
  gen_cert coredns "/CN=system:coredns"
  gen_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  local n
  for n in kubelet kube-proxy coredns; do kubeconfig_for "$n"; done
}

real_node_start_containerd() {
  mkdir -p "$CONTAINERD_DIR" "$CLUSTER_DIR/cni/net.d"
  cat >"$CLUSTER_DIR/cni/net.d/10-ferry.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "ferry",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}],
               "dataDir": "$CLUSTER_DIR/cni/ipam"}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  cat >"$CONTAINERD_DIR/config.toml" <<TOML
version = 2
root = "$CONTAINERD_DIR/root"
state = "$CONTAINERD_DIR/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_DIR/containerd.ttrpc.sock"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "$CONTAINERD_DIR/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # Built locally by tests/e2e/images/build.sh; never pulled.
  sandbox_image = "registry.k8s.io/pause:3.10"
  # This machine's root lacks CAP_SYS_RESOURCE, so runc may not lower a
  # process's oom_score_adj below containerd's own (kubelet asks -998 for
  # sandboxes); clamp instead of failing every pod.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CLUSTER_DIR/cni/net.d"
TOML
  log "starting containerd"
  start containerd containerd --config "$CONTAINERD_DIR/config.toml"
  wait_for containerd 30 ctr --address "$CONTAINERD_SOCK" version
  local tar
  shopt -s nullglob
  local tars=("$IMAGES_DIR"/*.tar)
  shopt -u nullglob
  ((${#tars[@]})) || fail containerd "no images in $IMAGES_DIR: run tests/e2e/images/build.sh"
  for tar in "${tars[@]}"; do
    ctr --address "$CONTAINERD_SOCK" -n k8s.io images import --no-unpack=false "$tar" >/dev/null ||
      fail containerd "importing $tar failed"
  done
  log "imported $(ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls -q | tr '\n' ' ')"
}

real_node_start_kubelet() {
  mkdir -p "$CLUSTER_DIR/kubelet"
  echo "nameserver $NODE_IP" >"$CLUSTER_DIR/resolv.conf"
  cat >"$CLUSTER_DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $PKI/ca.crt}
# Only the API server (client cert, system:masters) reaches the kubelet, from
# inside the namespace.
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
resolvConf: $CLUSTER_DIR/resolv.conf
# Images exist only locally: never garbage-collect them, never pull.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
serializeImagePulls: false
syncFrequency: 10s
nodeStatusUpdateFrequency: 4s
maxPods: 60
YAML
  log "starting kubelet"
  start kubelet kubelet --config "$CLUSTER_DIR/kubelet.yaml" \
    --kubeconfig "$CLUSTER_DIR/kubelet.kubeconfig" --root-dir "$CLUSTER_DIR/kubelet" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v=1
  wait_for kubelet 90 kc wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s
}

real_node_start_kube_proxy() {
  cat >"$CLUSTER_DIR/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $CLUSTER_DIR/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
# Zero means: leave the host-wide conntrack sysctls alone.
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
  log "starting kube-proxy"
  start kube-proxy kube-proxy --config "$CLUSTER_DIR/kube-proxy.yaml"
  wait_for kube-proxy 60 nsx curl -sf http://127.0.0.1:10256/healthz
}

real_node_start_coredns() {
  # The usual CoreDNS ClusterRole, bound to the process's client-cert user.
  kc apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- {apiGroups: [""], resources: [services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}]
YAML
  # Cluster names only: there is no upstream to forward to.
  cat >"$CLUSTER_DIR/Corefile" <<COREFILE
.:53 {
    bind $NODE_IP
    errors
    ready 127.0.0.1:8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $CLUSTER_DIR/coredns.kubeconfig local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
COREFILE
  log "starting CoreDNS on $NODE_IP:53"
  start coredns coredns -conf "$CLUSTER_DIR/Corefile"
  wait_for coredns 60 nsx curl -sf http://127.0.0.1:8181/ready
}

# A PostgreSQL for workloads that share state across pods (the shop's
# inventory keeps its stock there, so blue and green revisions see one stock).
# Inside the namespace, on the node address, trusting the pod range and the
# node address (the tests create a database per test from there).
PG_PORT=5432
real_node_start_postgres() {
  log "starting PostgreSQL on $NODE_IP:$PG_PORT"
  # synchronous_commit=off: a commit returns before its WAL reaches the disk
  # (still crash-consistent; a PostgreSQL crash may lose the last few ms).
  # This is the test cluster's database, like etcd's --unsafe-no-fsync; the
  # tests kill pods, never the database, and fsync per commit on this VM's
  # disk otherwise caps the shop near 100 orders/s.
  FERRY_PG_SERVER_OPTIONS="-c synchronous_commit=off" \
  FERRY_PG_DIR="$CLUSTER_DIR/postgres" FERRY_PG_PORT=$PG_PORT FERRY_PG_LISTEN="$NODE_IP" FERRY_PG_TRUST_CIDR="$POD_CIDR $NODE_IP/32" \
    "${NSX[@]}" "$ROOT/services/scripts/postgres.sh" up >/dev/null
}

# Stops the node's processes and leaves nothing mounted or running: containers
# first (their shims outlive containerd), then every mount under the state
# directory, the pods' network namespaces and cgroups, then the node's namespace.
real_node_down() {
  if [[ -d "$CLUSTER_DIR/postgres/data" ]]; then
    FERRY_PG_DIR="$CLUSTER_DIR/postgres" "$ROOT/services/scripts/postgres.sh" down 2>/dev/null || true
  fi
  local sock="$CLUSTER_DIR/containerd/containerd.sock" pid
  # Shims carry the containerd address on their command line.
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $sock" || true); do
    pkill -KILL -P "$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
  done
  local m
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(awk -v d="$CLUSTER_DIR/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r)
  # Pod sandboxes' namespaces that point at our bridge: the node namespace's
  # children, named cni-* by containerd.
  local ns
  for ns in /var/run/netns/cni-*; do
    [[ -e $ns ]] || continue
    # Ours when its eth0 sits in the pod range, or when CNI already removed
    # eth0 and only loopback is left.
    if ! ip -n "$(basename "$ns")" -4 addr show 2>/dev/null | grep 'inet ' | grep -vq 'inet 127\.' ||
      ip -n "$(basename "$ns")" -4 addr show 2>/dev/null | grep -q "inet ${POD_CIDR%.0.0/16}\."; then
      ip netns del "$(basename "$ns")" 2>/dev/null || true
    fi
  done
  local c
  for c in /sys/fs/cgroup/*/kubepods; do
    [[ -d $c ]] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  [[ -e "/var/run/netns/$NETNS" ]] && ip netns del "$NETNS"
  return 0
}
