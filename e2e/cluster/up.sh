#!/usr/bin/env bash
# Starts a local Kubernetes control plane for the e2e tests: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler and kwok, all on
# 127.0.0.1, with state in e2e/.cluster/ (RUNPLANE_E2E_STATE). Then makes sure the fake GPU nodes
# exist and are Ready. Reuses a healthy cluster that is already running.
# Prints the admin kubeconfig path as the last line on stdout.
#
# Env (defaults in brackets):
#   RUNPLANE_E2E_NODES [4]            fake GPU nodes gpu-node-0..N-1
#   RUNPLANE_E2E_NODE_GPUS [8]        nvidia.com/gpu per node
#   RUNPLANE_E2E_NODE_PODS [1000]     pods per node
#   RUNPLANE_E2E_APISERVER_PORT [16443]
#   RUNPLANE_E2E_ETCD_PORT [12379]    RUNPLANE_E2E_ETCD_PEER_PORT [12380]
#   RUNPLANE_E2E_CONTROLLER_MANAGER_PORT [17257]
#   RUNPLANE_E2E_SCHEDULER_PORT [17259]
#   RUNPLANE_E2E_KWOK_PORT [17247]
#   RUNPLANE_E2E_STATE [e2e/.cluster] state directory (pki, logs, pids, etcd)
#   RUNPLANE_E2E_START_TIMEOUT [120]  seconds to wait for each step
#   RUNPLANE_CACHE [$HOME/.cache/runplane] where build.sh keeps binaries
#   KUBECTL [the kubectl build.sh builds, of the server's release]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${RUNPLANE_E2E_STATE:-"$(cd "$HERE/.." && pwd)/.cluster"}

APISERVER_PORT=${RUNPLANE_E2E_APISERVER_PORT:-16443}
ETCD_PORT=${RUNPLANE_E2E_ETCD_PORT:-12379}
ETCD_PEER_PORT=${RUNPLANE_E2E_ETCD_PEER_PORT:-12380}
KCM_PORT=${RUNPLANE_E2E_CONTROLLER_MANAGER_PORT:-17257}
SCHED_PORT=${RUNPLANE_E2E_SCHEDULER_PORT:-17259}
KWOK_PORT=${RUNPLANE_E2E_KWOK_PORT:-17247}
NODES=${RUNPLANE_E2E_NODES:-4}
NODE_GPUS=${RUNPLANE_E2E_NODE_GPUS:-8}
NODE_PODS=${RUNPLANE_E2E_NODE_PODS:-1000}
TIMEOUT=${RUNPLANE_E2E_START_TIMEOUT:-120}

SERVICE_CIDR=10.96.0.0/16   # virtual service IPs; nothing routes them
SERVICE_IP=10.96.0.1        # ClusterIP of the "kubernetes" service
POD_CIDR=127.1.0.0/16       # fake pod IPs handed out by kwok (loopback only)
HOST=127.0.0.1

PKI="$STATE/pki"
LOGS="$STATE/logs"
PIDS="$STATE/pids"
KUBECONFIG_ADMIN="$STATE/kubeconfig"
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

log() { printf '[up] %s\n' "$*" >&2; }
die() { printf '[up] ERROR: %s\n' "$*" >&2; exit 1; }

for v in NODES NODE_GPUS NODE_PODS APISERVER_PORT ETCD_PORT ETCD_PEER_PORT KCM_PORT SCHED_PORT KWOK_PORT TIMEOUT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number, got '${!v}'"
done
for tool in curl openssl jq; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done

BIN=$(bash "$HERE/build.sh" | tail -n1)
[[ -x "$BIN/kube-apiserver" ]] || die "build.sh did not produce binaries"
KUBECTL=${KUBECTL:-$BIN/kubectl}
command -v "$KUBECTL" >/dev/null 2>&1 || die "$KUBECTL is required"

mkdir -p "$PKI" "$LOGS" "$PIDS"
exec 8>"$STATE/.lock"
flock 8

# ---------------------------------------------------------------------------
# process helpers (the same checks as down.sh)
# ---------------------------------------------------------------------------
pid_of() { # prints the PID of a running component started from this state dir
  local name=$1 pid
  [[ -s "$PIDS/$name.pid" ]] || return 1
  pid=$(<"$PIDS/$name.pid")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  case "$(readlink "/proc/$pid/exe" 2>/dev/null)" in
    */"$name" | */"$name (deleted)") ;;
    *) return 1 ;;
  esac
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$STATE/" || return 1
  echo "$pid"
}

port_free() { ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

CURL_ADMIN=(curl -sf --max-time 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key")

healthy() {
  local c
  for c in "${COMPONENTS[@]}"; do pid_of "$c" >/dev/null || return 1; done
  [[ -f "$STATE/cluster.env" && -f "$KUBECONFIG_ADMIN" ]] || return 1
  [[ "$(<"$STATE/cluster.env")" == "$(cluster_env)" ]] || return 1
  "${CURL_ADMIN[@]}" "https://$HOST:$APISERVER_PORT/readyz" >/dev/null || return 1
  curl -skf --max-time 5 "https://$HOST:$KCM_PORT/healthz" >/dev/null || return 1
  curl -skf --max-time 5 "https://$HOST:$SCHED_PORT/healthz" >/dev/null || return 1
  curl -sf --max-time 5 "http://$HOST:$KWOK_PORT/healthz" >/dev/null || return 1
}

cluster_env() {
  cat <<EOF
BIN=$BIN
KWOK_CONFIG_SHA=$(sha256sum "$HERE/kwok.yaml" | cut -c1-16)
APISERVER_PORT=$APISERVER_PORT
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
KCM_PORT=$KCM_PORT
SCHED_PORT=$SCHED_PORT
KWOK_PORT=$KWOK_PORT
EOF
}

# ---------------------------------------------------------------------------
# PKI (generated once, kept with the state)
# ---------------------------------------------------------------------------
gen_key() { [[ -f "$1" ]] || openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null; }

gen_ca() { # name CN
  local name=$1 cn=$2
  [[ -f "$PKI/$name.crt" ]] && return 0
  gen_key "$PKI/$name.key"
  openssl req -x509 -new -key "$PKI/$name.key" -sha256 -days 3650 -subj "/CN=$cn" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" \
    -out "$PKI/$name.crt" 2>/dev/null
}

gen_cert() { # name ca subject usage [sans]
  local name=$1 ca=$2 subj=$3 usage=$4 sans=${5:-} ext
  [[ -f "$PKI/$name.crt" ]] && return 0
  gen_key "$PKI/$name.key"
  ext=$(mktemp)
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [[ -n $sans ]] && echo "subjectAltName=$sans"
  } >"$ext"
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" -CAcreateserial \
    -sha256 -days 3650 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$ext" "$PKI/$name.csr"
}

gen_pki() {
  if [[ ! -f "$PKI/sa.pub" ]]; then
    log "generating certificates and keys in $PKI"
  fi
  gen_ca ca runplane-e2e-ca
  gen_ca front-proxy-ca runplane-e2e-front-proxy-ca
  gen_cert apiserver ca "/CN=kube-apiserver" serverAuth \
    "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$SERVICE_IP"
  gen_cert apiserver-kubelet-client ca "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  gen_cert admin ca "/O=system:masters/CN=runplane-e2e-admin" clientAuth
  gen_cert controller-manager ca "/CN=system:kube-controller-manager" clientAuth
  gen_cert scheduler ca "/CN=system:kube-scheduler" clientAuth
  gen_cert kwok ca "/O=system:masters/CN=kwok-controller" clientAuth
  gen_cert front-proxy-client front-proxy-ca "/CN=front-proxy-client" clientAuth
  if [[ ! -f "$PKI/sa.pub" ]]; then
    gen_key "$PKI/sa.key"
    openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
}

write_kubeconfig() { # file user cert-name
  local file=$1 user=$2 cert=$3
  cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: runplane-e2e
  cluster:
    server: https://$HOST:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$PKI/$cert.crt")
    client-key-data: $(base64 -w0 <"$PKI/$cert.key")
contexts:
- name: runplane-e2e
  context:
    cluster: runplane-e2e
    user: $user
    namespace: default
current-context: runplane-e2e
EOF
  chmod 600 "$file.tmp"
  mv "$file.tmp" "$file"
}

# ---------------------------------------------------------------------------
# starting
# ---------------------------------------------------------------------------
start() { # name binary args...
  local name=$1 pid i
  shift
  rm -f "$PIDS/$name.pid"
  printf '\n==== %s starting %s\n' "$(date -u +%FT%TZ)" "$name" >>"$LOGS/$name.log"
  # The component writes its own PID (exec keeps it) and runs in its own
  # session, detached from the caller's terminal and process group.
  # shellcheck disable=SC2016 # expanded by the inner shell
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PIDS/$name.pid" "$@" \
    >>"$LOGS/$name.log" 2>&1 </dev/null 8>&- &
  # Normally at once; but with three planes starting beside a build that
  # has just written gigabytes, the machine has been seen to stall for
  # over 5 s before the inner shell ran.
  for ((i = 0; i < 300; i++)); do
    [[ -s "$PIDS/$name.pid" ]] && break
    sleep 0.1
  done
  pid=$(pid_of "$name") || fail "$name did not start"
  log "started $name (pid $pid)"
}

fail() {
  local c
  printf '[up] ERROR: %s\n' "$1" >&2
  for c in "${COMPONENTS[@]}"; do
    if [[ -f "$LOGS/$c.log" ]] && ! pid_of "$c" >/dev/null && [[ -f "$PIDS/$c.pid" ]]; then
      printf '[up] --- last lines of %s ---\n' "$LOGS/$c.log" >&2
      tail -n 25 "$LOGS/$c.log" >&2
    fi
  done
  printf '[up] logs are in %s; stopping what was started\n' "$LOGS" >&2
  bash "$HERE/down.sh" >&2 || true
  exit 1
}

wait_until() { # what component command...
  local what=$1 comp=$2 deadline=$((SECONDS + TIMEOUT))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [[ -n $comp ]] && ! pid_of "$comp" >/dev/null; then
      [[ -f "$LOGS/$comp.log" ]] && tail -n 25 "$LOGS/$comp.log" >&2
      fail "$comp exited while waiting for $what"
    fi
    ((SECONDS < deadline)) || fail "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.2
  done
}

start_cluster() {
  local t0=$SECONDS c p
  for c in "${COMPONENTS[@]}"; do
    if pid_of "$c" >/dev/null; then
      log "a previous cluster is partly running or outdated; restarting it"
      bash "$HERE/down.sh" >&2
      break
    fi
  done
  for p in "$APISERVER_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT" "$KCM_PORT" "$SCHED_PORT" "$KWOK_PORT"; do
    port_free "$p" || die "port $p on this machine is in use; set the RUNPLANE_E2E_*_PORT variables (see up.sh)"
  done

  gen_pki
  write_kubeconfig "$KUBECONFIG_ADMIN" runplane-e2e-admin admin
  write_kubeconfig "$STATE/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
  write_kubeconfig "$STATE/scheduler.kubeconfig" system:kube-scheduler scheduler
  write_kubeconfig "$STATE/kwok.kubeconfig" kwok-controller kwok
  cat >"$STATE/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $STATE/scheduler.kubeconfig
  qps: 1000
  burst: 2000
leaderElection:
  leaderElect: false
EOF

  mkdir -p "$STATE/etcd"
  start etcd "$BIN/etcd" \
    --name=runplane-e2e \
    --data-dir="$STATE/etcd" \
    --listen-client-urls="http://$HOST:$ETCD_PORT" \
    --advertise-client-urls="http://$HOST:$ETCD_PORT" \
    --listen-peer-urls="http://$HOST:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://$HOST:$ETCD_PEER_PORT" \
    --initial-cluster="runplane-e2e=http://$HOST:$ETCD_PEER_PORT" \
    --initial-cluster-state=new \
    --quota-backend-bytes=8589934592 \
    --log-level=info
  wait_until "etcd health" etcd curl -sf --max-time 2 "http://$HOST:$ETCD_PORT/health"

  start kube-apiserver "$BIN/kube-apiserver" \
    --bind-address=$HOST \
    --secure-port="$APISERVER_PORT" \
    --advertise-address=$HOST \
    --endpoint-reconciler-type=none \
    --etcd-servers="http://$HOST:$ETCD_PORT" \
    --tls-cert-file="$PKI/apiserver.crt" \
    --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true \
    --service-cluster-ip-range=$SERVICE_CIDR \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-username-headers=X-Remote-User \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
    --proxy-client-key-file="$PKI/front-proxy-client.key"
  wait_until "kube-apiserver /readyz" kube-apiserver "${CURL_ADMIN[@]}" "https://$HOST:$APISERVER_PORT/readyz"
  log "kube-apiserver ready after $((SECONDS - t0))s"

  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$STATE/controller-manager.kubeconfig" \
    --bind-address=$HOST \
    --secure-port="$KCM_PORT" \
    --client-ca-file="$PKI/ca.crt" \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
    --cluster-name=runplane-e2e \
    --cluster-signing-cert-file="$PKI/ca.crt" \
    --cluster-signing-key-file="$PKI/ca.key" \
    --root-ca-file="$PKI/ca.crt" \
    --service-account-private-key-file="$PKI/sa.key" \
    --service-cluster-ip-range=$SERVICE_CIDR \
    --use-service-account-credentials=true \
    --controllers='*,bootstrapsigner,tokencleaner' \
    --leader-elect=false \
    --kube-api-qps=1000 \
    --kube-api-burst=2000

  start kube-scheduler "$BIN/kube-scheduler" \
    --config="$STATE/scheduler.yaml" \
    --authentication-kubeconfig="$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig="$STATE/scheduler.kubeconfig" \
    --bind-address=$HOST \
    --secure-port="$SCHED_PORT"

  start kwok "$BIN/kwok" \
    --kubeconfig="$STATE/kwok.kubeconfig" \
    --config="$HERE/kwok.yaml" \
    --node-ip=$HOST \
    --node-port="$KWOK_PORT" \
    --server-address="$HOST:$KWOK_PORT" \
    --cidr=$POD_CIDR

  wait_until "kube-controller-manager /healthz" kube-controller-manager curl -skf --max-time 2 "https://$HOST:$KCM_PORT/healthz"
  wait_until "kube-scheduler /healthz" kube-scheduler curl -skf --max-time 2 "https://$HOST:$SCHED_PORT/healthz"
  wait_until "kwok /healthz" kwok curl -sf --max-time 2 "http://$HOST:$KWOK_PORT/healthz"
  cluster_env >"$STATE/cluster.env"
  log "control plane up after $((SECONDS - t0))s"
}

# ---------------------------------------------------------------------------
# fake GPU nodes
# ---------------------------------------------------------------------------
k() { "$KUBECTL" --kubeconfig="$KUBECONFIG_ADMIN" "$@"; }

node_manifest() { # name
  cat <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $1
  labels:
    kubernetes.io/hostname: $1
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    runplane.dev/gpu-node: "true"
    type: kwok
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
status:
  capacity: &resources
    cpu: "64"
    memory: 512Gi
    pods: "$NODE_PODS"
    nvidia.com/gpu: "$NODE_GPUS"
  allocatable: *resources
EOF
}

ensure_nodes() {
  local existing want name i
  existing=$(k get nodes -l runplane.dev/gpu-node=true -o json)
  for ((i = 0; i < NODES; i++)); do
    name=gpu-node-$i
    want=$(jq -r --arg n "$name" --argjson g "$NODE_GPUS" --argjson p "$NODE_PODS" '
      def qty: tostring | capture("^(?<n>[0-9]+)(?<s>[kM]?)$") // {n: "-1", s: ""}
        | (.n | tonumber) * ({"": 1, "k": 1000, "M": 1000000}[.s]);
      [.items[] | select(.metadata.name == $n)] as $m
      | if ($m | length) == 0 then "create"
        elif [$m[0].status.allocatable, $m[0].status.capacity]
             | any(.[]; (.["nvidia.com/gpu"] | qty) != $g or (.pods | qty) != $p) then "patch"
        else "ok" end' <<<"$existing")
    case $want in
      create)
        node_manifest "$name" | k create -f - >/dev/null
        log "created node $name"
        ;;
      patch)
        k patch node "$name" --subresource=status --type=merge -p "$(jq -nc --arg g "$NODE_GPUS" --arg p "$NODE_PODS" \
          '{status: {capacity: {"nvidia.com/gpu": $g, pods: $p, cpu: "64", memory: "512Gi"},
                     allocatable: {"nvidia.com/gpu": $g, pods: $p, cpu: "64", memory: "512Gi"}}}')" >/dev/null
        log "updated capacity of node $name"
        ;;
    esac
  done
  # Nodes beyond the wanted count (from an earlier run with more nodes).
  for name in $(jq -r --argjson n "$NODES" '.items[].metadata.name
      | select(test("^gpu-node-[0-9]+$")) | select((ltrimstr("gpu-node-") | tonumber) >= $n)' <<<"$existing"); do
    k delete node "$name" --wait=false >/dev/null
    log "deleted extra node $name"
  done
}

nodes_ready() {
  k get nodes -l runplane.dev/gpu-node=true -o json | jq -e --argjson n "$NODES" --arg g "$NODE_GPUS" '
    [.items[] | select(.metadata.deletionTimestamp == null)] as $nodes
    | ($nodes | length) == $n
      and all($nodes[];
        ((.status.conditions // []) | any(.type == "Ready" and .status == "True"))
        and ((.spec.taints // []) | length == 0)
        and .status.allocatable["nvidia.com/gpu"] == $g)' >/dev/null
}

default_sa_ready() { k get serviceaccount default -n default >/dev/null; }

# ---------------------------------------------------------------------------
if healthy; then
  log "reusing the running cluster (state in $STATE)"
else
  start_cluster
fi

ensure_nodes
wait_until "$NODES Ready, untainted gpu nodes" "" nodes_ready
wait_until "the default service account" "" default_sa_ready
log "cluster ready: $NODES nodes x $NODE_GPUS nvidia.com/gpu; export KUBECONFIG=$KUBECONFIG_ADMIN"
echo "$KUBECONFIG_ADMIN"
