#!/usr/bin/env bash
# Everything `make test` runs: formatting and lints, the unit tests, then
# the end-to-end suites on real local control planes. Control planes this
# script started are stopped at the end, also when a test fails.
#
# Each end-to-end suite starts controllers that act on the whole cluster, so
# two suites must never share a control plane at the same time. To run them
# at once there are three control planes, started while the Rust code
# builds, and three lanes of suites:
#   [controller]  e2e/.cluster    (up.sh's ports)  the controller suite, webhooks
#   [gateway]     e2e/.cluster-2  (ports +100)     the gateway suite, the chart
#   [fuzz]        e2e/.cluster-3  (ports +200)     schemathesis
# Each lane's output is printed with its name in front.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
log() { printf '==> %s\n' "$*" >&2; }

# Rust builds are kept outside the checkout, beside the control plane's
# binaries, so that a fresh clone reuses what an earlier run compiled.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${RUNPLANE_CACHE:-$HOME/.cache/runplane}/target}

# Every process this run starts inherits this mark; e2e/listeners.sh uses it
# to check that none of them listens beyond loopback.
RUNPLANE_E2E_RUN="test-$$-$(date +%s)"
export RUNPLANE_E2E_RUN

LANES=(controller gateway fuzz)
STATES=("$ROOT/e2e/.cluster" "$ROOT/e2e/.cluster-2" "$ROOT/e2e/.cluster-3")
in_cluster() { # lane number (0, 1, ...), command...: runs it with up.sh's settings for that lane's cluster
    local n=$1
    shift
    (
        export RUNPLANE_E2E_STATE=${STATES[$n]}
        if [[ $n -gt 0 ]]; then
            # up.sh's default ports + 100 per lane.
            local step=$((100 * n))
            export RUNPLANE_E2E_APISERVER_PORT=$((16443 + step)) RUNPLANE_E2E_ETCD_PORT=$((12379 + step)) \
                RUNPLANE_E2E_ETCD_PEER_PORT=$((12380 + step)) RUNPLANE_E2E_CONTROLLER_MANAGER_PORT=$((17257 + step)) \
                RUNPLANE_E2E_SCHEDULER_PORT=$((17259 + step)) RUNPLANE_E2E_KWOK_PORT=$((17247 + step))
        fi
        "$@"
    )
}
running() { # state directory: its API server is up (a cluster from before this run)
    local pidfile="$1/pids/kube-apiserver.pid"
    [[ -s $pidfile ]] && kill -0 "$(<"$pidfile")" 2>/dev/null
}

# A running demo controller would act on the tests' tasks too.
bash e2e/demo.sh stop

stop_clusters=()
for n in "${!STATES[@]}"; do
    running "${STATES[$n]}" || stop_clusters+=("$n")
done
WORK=$(mktemp -d)
watcher=""
background=()
cleanup() {
    local pid
    for pid in "${background[@]}"; do
        # Each background job leads its own process group (set -m below).
        kill -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $watcher ]]; then
        kill "$watcher" 2>/dev/null || true
        wait "$watcher" 2>/dev/null || true
    fi
    for n in "${stop_clusters[@]}"; do
        log "stopping the control plane in ${STATES[$n]#"$ROOT"/}"
        in_cluster "$n" bash e2e/cluster/down.sh || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
# Interrupted (^C, or CI's TERM): exit, so that cleanup runs.
trap 'exit 130' INT
trap 'exit 143' TERM
# Background jobs get process groups of their own, so that cleanup can stop
# a job together with everything it started.
set -m

# Servers the tests start live for seconds only: look at the listening
# sockets throughout, not only at the end.
bash e2e/tools/iproute2.sh
ALL_STATES=$(IFS=:; echo "${STATES[*]}")
RUNPLANE_E2E_STATE=$ALL_STATES bash e2e/listeners.sh watch "$WORK/listeners" &
watcher=$!

start_cluster() { # lane number
    local n=$1 state=${STATES[$1]}
    # A control plane that fails to come up (seen once: etcd stopping right
    # after its first health check) is started again once, from clean state.
    if ! in_cluster "$n" bash e2e/cluster/up.sh >/dev/null; then
        log "the control plane in ${state#"$ROOT"/} did not start; retrying once from clean state"
        in_cluster "$n" bash e2e/cluster/down.sh --purge >/dev/null 2>&1 || true
        in_cluster "$n" bash e2e/cluster/up.sh >/dev/null || return 1
    fi
    "$KUBECTL" --kubeconfig "$state/kubeconfig" apply --server-side --force-conflicts -f crds/runplane.yaml >/dev/null &&
        "$KUBECTL" --kubeconfig "$state/kubeconfig" wait --for=condition=Established crd --all --timeout=60s >/dev/null
}
start_clusters() {
    local n pids=() status=0
    for n in "${!STATES[@]}"; do
        start_cluster "$n" &
        pids+=($!)
    done
    for n in "${pids[@]}"; do
        wait "$n" || status=1
    done
    return $status
}

# The control plane's binaries and the kubectl of the same release (the
# machine's kubectl may be outside the supported version skew), and helm for
# the chart's checks: Go builds, on first use only (11-15 min on 2 cores).
# They run before the Rust build; beside it they saved nothing.
log "the control plane's binaries, kubectl and helm (built on first use; see e2e/cluster/README.md)"
CLUSTER_BIN=$(bash e2e/cluster/build.sh | tail -n1)
export KUBECTL="$CLUSTER_BIN/kubectl"
export PATH="$CLUSTER_BIN:$PATH"
bash e2e/tools/build.sh >/dev/null

log "starting a control plane per lane, in the background"
start_clusters >"$WORK/clusters.log" 2>&1 &
starting=$!
background+=("$starting")

log "checking formatting and lints"
cargo fmt --check
# The e2e suites are test = false (they need the cluster), so name them too.
cargo clippy --all-targets --test e2e --test webhooks --test api --test install --quiet -- -D warnings

log "unit tests"
cargo test --quiet
# The benchmark's replay, whose arithmetic docs/benchmarks.md reports.
PYTHONDONTWRITEBYTECODE=1 python3 -m unittest discover --quiet -s e2e/bench -p 'test_*.py'
log "building the end-to-end suites"
cargo test --quiet --no-run --test e2e --test webhooks --test api --test install

log "waiting for the control planes"
if ! wait "$starting"; then
    cat "$WORK/clusters.log" >&2
    log "the control planes did not start (their output is above)"
    exit 1
fi
background=()

# Prometheus and promtool for the chart's checks (Debian's package).
bash e2e/tools/prometheus.sh
# schemathesis (PyPI) in a virtualenv of its own, installed on first use.
ST_VENV="${RUNPLANE_CACHE:-$HOME/.cache/runplane}/venv-schemathesis-4.32.5"
if [ ! -x "$ST_VENV/bin/schemathesis" ]; then
    log "installing schemathesis 4.32.5 into $ST_VENV"
    python3 -m venv "$ST_VENV"
    "$ST_VENV/bin/pip" install --quiet "schemathesis==4.32.5"
fi

lane_controller() {
    log "end-to-end tests: the controller"
    cargo test --test e2e
    log "end-to-end tests: webhooks"
    cargo test --test webhooks
}
lane_gateway() {
    log "end-to-end tests: the HTTP gateway"
    cargo test --test api
    log "the Helm chart, deploy/, its RBAC and Prometheus (e2e/install.sh)"
    bash e2e/install.sh
}
lane_fuzz() {
    log "schemathesis against the gateway's /openapi.json"
    SCHEMATHESIS="$ST_VENV/bin/schemathesis" RUNPLANE_BIN="$CARGO_TARGET_DIR/debug/runplane" bash e2e/schemathesis.sh
}
run_lane() { # name, state directory, function
    local name=$1 state=$2 lane=$3 start=$SECONDS
    set -o pipefail
    { RUNPLANE_E2E_KUBECONFIG="$state/kubeconfig" "$lane"; } 2>&1 | sed -u "s/^/[$name] /"
    log "[$name] passed in $((SECONDS - start)) s"
}

log "end-to-end suites, ${#LANES[@]} lanes at once: ${LANES[*]}"
lanes=()
for n in "${!LANES[@]}"; do
    run_lane "${LANES[$n]}" "${STATES[$n]}" "lane_${LANES[$n]}" &
    lanes+=($!)
done
background=("${lanes[@]}")
failed=()
for n in "${!LANES[@]}"; do
    wait "${lanes[$n]}" || failed+=("${LANES[$n]}")
done
background=()
if [[ ${#failed[@]} -gt 0 ]]; then
    log "failed: ${failed[*]} (see the lines marked so above)"
    exit 1
fi

log "nothing this run started listens beyond loopback"
RUNPLANE_E2E_STATE=$ALL_STATES bash e2e/listeners.sh check
kill "$watcher" 2>/dev/null || true
wait "$watcher" 2>/dev/null || true
watcher=""
bash e2e/listeners.sh report "$WORK/listeners"
