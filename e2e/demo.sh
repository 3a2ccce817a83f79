#!/usr/bin/env bash
# The local demo: the control plane, the CRDs, the controller and the
# gateway, the sample account, templates and task reaching Completed with its
# output, then the seed's quick example run over the RunKey HTTP API.
#   e2e/demo.sh up     start everything and run the sample task
#   e2e/demo.sh stop   stop the controller and the gateway (the cluster stays)
#   e2e/demo.sh down   stop them and the cluster
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE="$ROOT/e2e/.cluster"
DEMO="$STATE/demo"
KUBECONFIG_PATH="$STATE/kubeconfig"
# The Rust build dir that `make test` uses too, outside the checkout.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${RUNPLANE_CACHE:-$HOME/.cache/runplane}/target}
BIN="$CARGO_TARGET_DIR/debug/runplane"
METRICS_ADDR=${RUNPLANE_DEMO_METRICS_ADDR:-127.0.0.1:18080}
API_ADDR=${RUNPLANE_DEMO_API_ADDR:-127.0.0.1:18000}
# API keys live apart from every tenant's namespace: whoever may create
# Secrets in a namespace an account lists could otherwise mint keys.
KEY_NAMESPACE=runplane-system

log() { printf '==> %s\n' "$*" >&2; }

stop_processes() {
    for name in controller api; do
        local pidfile="$DEMO/$name.pid"
        [ -f "$pidfile" ] || continue
        local pid
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            log "stopping the $name (pid $pid)"
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
}

wait_http() {
    local url=$1 what=$2
    for _ in $(seq 300); do
        if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    log "$what did not become ready; see $DEMO/*.log"
    exit 1
}

up() {
    log "building runplane"
    (cd "$ROOT" && cargo build --quiet)
    log "starting the local control plane"
    # A control plane that fails to come up (seen once: etcd stopping right after
    # its first health check) is started again once, from clean state.
    if ! bash "$ROOT/e2e/cluster/up.sh" >/dev/null; then
        log "the control plane did not start; retrying once from clean state"
        bash "$ROOT/e2e/cluster/down.sh" --purge >/dev/null 2>&1 || true
        bash "$ROOT/e2e/cluster/up.sh" >/dev/null
    fi
    export KUBECONFIG="$KUBECONFIG_PATH"
    # The kubectl of the server's release, built with the control plane.
    PATH="$(bash "$ROOT/e2e/cluster/build.sh" | tail -n1):$PATH"
    log "installing the CRDs"
    kubectl apply --server-side --force-conflicts -f "$ROOT/crds/runplane.yaml" >/dev/null
    kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
    stop_processes
    mkdir -p "$DEMO"
    kubectl apply -f "$ROOT/deploy/examples/namespace.yaml" >/dev/null
    kubectl create namespace "$KEY_NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
    # The key that derives per-task progress tokens, shared by both processes.
    [ -s "$DEMO/callback.key" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DEMO/callback.key"
    log "starting the controller (log: e2e/.cluster/demo/controller.log)"
    "$BIN" controller --kubeconfig "$KUBECONFIG_PATH" --leader-election=false \
        --lease-namespace "$KEY_NAMESPACE" \
        --metrics-addr "$METRICS_ADDR" --callback-url "http://$API_ADDR" \
        --callback-key-file "$DEMO/callback.key" >"$DEMO/controller.log" 2>&1 &
    echo $! >"$DEMO/controller.pid"
    wait_http "http://$METRICS_ADDR/readyz" "the controller"
    log "starting the gateway on http://$API_ADDR (log: e2e/.cluster/demo/api.log)"
    "$BIN" api --kubeconfig "$KUBECONFIG_PATH" --listen "$API_ADDR" --namespace "$KEY_NAMESPACE" \
        --callback-key-file "$DEMO/callback.key" >"$DEMO/api.log" 2>&1 &
    echo $! >"$DEMO/api.pid"
    wait_http "http://$API_ADDR/readyz" "the gateway"
    log "applying deploy/examples (account, templates, task)"
    kubectl delete gputask -n demo portrait-1 --ignore-not-found >/dev/null 2>&1 || true
    kubectl apply -f "$ROOT/deploy/examples/" >/dev/null
    log "waiting for the sample task to complete"
    if ! kubectl wait -n demo gputask/portrait-1 --for=jsonpath='{.status.phase}'=Completed --timeout=120s >/dev/null; then
        kubectl get gputask -n demo portrait-1 -o yaml
        log "the sample task did not complete; see $DEMO/controller.log"
        exit 1
    fi
    kubectl get gputasks -n demo
    echo
    echo "Output of demo/portrait-1:"
    kubectl get gputask -n demo portrait-1 -o jsonpath='{.status.output}'
    echo
    echo
    log "creating an API key for account demo and running the seed's quick example over HTTP"
    KEY=$("$BIN" apikey create --kubeconfig "$KUBECONFIG_PATH" --account demo --namespace "$KEY_NAMESPACE")
    echo "$KEY" >"$DEMO/api-key"
    echo "POST /v1/run (Prefer: wait=30):"
    curl -sS -X POST "http://$API_ADDR/v1/run" -H "Authorization: Bearer $KEY" \
        -H "Content-Type: application/json" -H "Prefer: wait=30" \
        -d '{"template_id": "tpl_abc123", "input": {"image_url": "https://example.com/photo.jpg", "style": "portrait"}}'
    echo
    echo
    cat <<MSG
runplane is running on the local control plane.
  The gateway:   http://$API_ADDR  (API key in e2e/.cluster/demo/api-key; OpenAPI at /openapi.json;
                 the seeds' curl examples in README.md work against it)
                 curl -H "Authorization: Bearer \$(cat e2e/.cluster/demo/api-key)" http://$API_ADDR/v1/account
  Look around:   kubectl --kubeconfig e2e/.cluster/kubeconfig get gt,gtpl -A
                 kubectl --kubeconfig e2e/.cluster/kubeconfig get gacct
                 kubectl --kubeconfig e2e/.cluster/kubeconfig describe gt -n demo portrait-1
                 kubectl --kubeconfig e2e/.cluster/kubeconfig get nodes    (fake GPU nodes)
  Metrics:       curl http://$METRICS_ADDR/metrics
  Stop:          make down
MSG
}

case "${1:-up}" in
    up) up ;;
    stop) stop_processes ;;
    down)
        stop_processes
        bash "$ROOT/e2e/cluster/down.sh"
        ;;
    *)
        echo "usage: $0 [up|stop|down]" >&2
        exit 2
        ;;
esac
