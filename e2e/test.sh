#!/usr/bin/env bash
# Everything `make test` runs: formatting and lints, the unit tests, then
# the end-to-end suite on the real local control plane. A cluster this
# script started is stopped at the end, also when a test fails.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
log() { printf '==> %s\n' "$*" >&2; }

# Rust builds are kept outside the checkout, beside the control plane's
# binaries, so that a fresh clone reuses what an earlier run compiled.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${RUNPLANE_CACHE:-$HOME/.cache/runplane}/target}

log "checking formatting and lints"
cargo fmt --check
# The e2e suites are test = false (they need the cluster), so name them too.
cargo clippy --all-targets --test e2e --test webhooks --test api --test install --quiet -- -D warnings

log "unit tests"
cargo test --quiet

# A running demo controller would act on the tests' tasks too.
bash e2e/demo.sh stop

# The control plane's binaries and the kubectl of the same release (the
# machine's kubectl may be outside the supported version skew): everything
# below, the scripts and the tests use that kubectl.
log "the control plane's binaries and kubectl (built on first use; see e2e/cluster/README.md)"
CLUSTER_BIN=$(bash e2e/cluster/build.sh | tail -n1)
export KUBECTL="$CLUSTER_BIN/kubectl"
export PATH="$CLUSTER_BIN:$PATH"

# Every process this run starts inherits this mark; e2e/listeners.sh uses it
# to check that none of them listens beyond loopback.
RUNPLANE_E2E_RUN="test-$$-$(date +%s)"
export RUNPLANE_E2E_RUN
bash e2e/tools/iproute2.sh
LISTENERS_LOG=$(mktemp)
watcher=""

started_cluster=false
if ! kubectl --kubeconfig e2e/.cluster/kubeconfig get --raw /readyz >/dev/null 2>&1; then
    started_cluster=true
fi
cleanup() {
    if [ -n "$watcher" ]; then
        kill "$watcher" 2>/dev/null || true
        wait "$watcher" 2>/dev/null || true
    fi
    rm -f "$LISTENERS_LOG"
    if $started_cluster; then
        log "stopping the control plane"
        bash e2e/cluster/down.sh || true
    fi
}
trap cleanup EXIT

log "starting the local control plane"
# A control plane that fails to come up (seen once: etcd stopping right after
# its first health check) is started again once, from clean state.
if ! bash e2e/cluster/up.sh >/dev/null; then
    log "the control plane did not start; retrying once from clean state"
    bash e2e/cluster/down.sh --purge >/dev/null 2>&1 || true
    bash e2e/cluster/up.sh >/dev/null
fi
export RUNPLANE_E2E_KUBECONFIG="$ROOT/e2e/.cluster/kubeconfig"
kubectl --kubeconfig "$RUNPLANE_E2E_KUBECONFIG" apply --server-side --force-conflicts -f crds/runplane.yaml >/dev/null
kubectl --kubeconfig "$RUNPLANE_E2E_KUBECONFIG" wait --for=condition=Established crd --all --timeout=60s >/dev/null

# Servers the tests start live for seconds only: look at the listening
# sockets throughout, not only at the end.
bash e2e/listeners.sh watch "$LISTENERS_LOG" &
watcher=$!

log "end-to-end tests: the controller"
cargo test --test e2e
log "end-to-end tests: webhooks"
cargo test --test webhooks
log "end-to-end tests: the HTTP gateway"
cargo test --test api

# schemathesis (PyPI) in a virtualenv of its own, installed on first use.
ST_VENV="${RUNPLANE_CACHE:-$HOME/.cache/runplane}/venv-schemathesis-4.32.5"
if [ ! -x "$ST_VENV/bin/schemathesis" ]; then
    log "installing schemathesis 4.32.5 into $ST_VENV"
    python3 -m venv "$ST_VENV"
    "$ST_VENV/bin/pip" install --quiet "schemathesis==4.32.5"
fi
log "schemathesis against the gateway's /openapi.json"
SCHEMATHESIS="$ST_VENV/bin/schemathesis" RUNPLANE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/runplane" bash e2e/schemathesis.sh

log "the Helm chart, deploy/, its RBAC and Prometheus (e2e/install.sh)"
bash e2e/install.sh

log "nothing this run started listens beyond loopback"
bash e2e/listeners.sh check
kill "$watcher" 2>/dev/null || true
wait "$watcher" 2>/dev/null || true
watcher=""
bash e2e/listeners.sh report "$LISTENERS_LOG"
