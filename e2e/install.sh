#!/usr/bin/env bash
# The install checks of `make test`: the Helm chart lints clean, the plain
# manifests in deploy/ match it, the real API server accepts them, and the
# chart installs and its RBAC runs the controller (e2e/tests/install.rs, with
# a real Prometheus scraping it and promtool checking /metrics).
#
# Needs the local control plane (e2e/test.sh starts it; on its own this
# script starts it too) with the CRDs installed. Builds helm into the cache
# on first use (e2e/tools/build.sh) and installs Debian's prometheus package
# if promtool is missing (e2e/tools/prometheus.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
log() { printf '==> %s\n' "$*" >&2; }

# The kubectl of the server's release, built with the control plane.
KUBECTL=${KUBECTL:-$(bash e2e/cluster/build.sh | tail -n1)/kubectl}
export KUBECTL
KUBECONFIG_PATH=${RUNPLANE_E2E_KUBECONFIG:-$ROOT/e2e/.cluster/kubeconfig}
if ! "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" get --raw /readyz >/dev/null 2>&1; then
    log "starting the local control plane"
    bash e2e/cluster/up.sh >/dev/null
    KUBECONFIG_PATH=$ROOT/e2e/.cluster/kubeconfig
fi
export RUNPLANE_E2E_KUBECONFIG=$KUBECONFIG_PATH
k() { "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
if ! k get crd gputasks.runplane.dev >/dev/null 2>&1; then
    k apply --server-side -f crds/runplane.yaml >/dev/null
    k wait --for=condition=Established crd --all --timeout=60s >/dev/null
fi

log "tools: helm (built once into the cache), prometheus and promtool"
HELM="$(bash e2e/tools/build.sh | tail -n1)/helm"
export HELM
bash e2e/tools/prometheus.sh

log "helm lint"
"$HELM" lint --strict charts/runplane >/dev/null
"$HELM" lint --strict charts/runplane --values charts/runplane/ci/all-features-values.yaml >/dev/null

log "deploy/runplane.yaml is the chart rendered"
HELM=$HELM bash e2e/deploy.sh check

log "the API server accepts the manifests (server-side dry run)"
# The manifests' namespace must exist for a dry run of what goes in it.
created_namespace=false
if ! k get namespace runplane-system >/dev/null 2>&1; then
    k create namespace runplane-system >/dev/null
    created_namespace=true
fi
dry_run() {
    local out
    if ! out=$(k apply --dry-run=server "$@" 2>&1); then
        printf '%s\n' "$out" >&2
        return 1
    fi
}
status=0
dry_run -f deploy/runplane.yaml || status=1
dry_run --server-side --force-conflicts -f deploy/runplane.yaml || status=1
# Every optional object but the ServiceMonitor, whose CRD this cluster lacks.
dry_run -f <("$HELM" template runplane charts/runplane --namespace runplane-system \
    --values charts/runplane/ci/all-features-values.yaml \
    --set metrics.serviceMonitor.enabled=false) || status=1
if $created_namespace; then
    k delete namespace runplane-system --wait=false >/dev/null
fi
[[ $status -eq 0 ]] || { log "the API server refused the manifests"; exit 1; }

log "install tests: helm install, the chart's RBAC, leader election, Prometheus"
# --all-targets leaves out test = false targets such as this one.
cargo clippy --quiet --test install -- -D warnings
cargo test --test install
