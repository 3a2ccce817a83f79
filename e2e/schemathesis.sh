#!/usr/bin/env bash
# Property-based conformance run of the HTTP gateway with schemathesis:
# every operation of the gateway's own /openapi.json is fuzzed against a live
# gateway on the local control plane; the run fails on any 5xx, a response
# that does not match the document (status, content type, headers, schema),
# a schema-violating request that is accepted, or a slow response.
#
# Needs: the local control plane (started with e2e/cluster/up.sh when no
# kubeconfig is found), kubectl, and schemathesis (`pip install schemathesis`).
# It makes its own namespace, GpuAccount, the seed templates of
# deploy/examples/seed-templates.yaml, and an API key in a namespace of its
# own, starts the controller and the gateway on free loopback ports, and
# removes all of it when it ends. The document links POST /v1/run and the
# RunningHub submit to the operations that take the new task's id, so the
# stateful phase follows real tasks (get, cancel, query).
#
# Env (defaults in brackets):
#   RUNPLANE_E2E_KUBECONFIG [e2e/.cluster/kubeconfig]
#   RUNPLANE_BIN            [built with cargo]   the runplane binary
#   RUNPLANE_ST_CONTROLLER  [1]   start a controller (0: one is already running)
#   RUNPLANE_ST_EXAMPLES    [25]  test cases per operation and phase
#   RUNPLANE_ST_MAX_TIME    [120] seconds for the whole run
#   RUNPLANE_ST_RESPONSE_TIME [10] seconds a response may take
#   SCHEMATHESIS            [schemathesis or st on PATH]
#   KUBECTL                 [the kubectl e2e/cluster/build.sh builds]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
KUBECTL=${KUBECTL:-$(bash "$REPO/e2e/cluster/build.sh" | tail -n1)/kubectl}
EXAMPLES=${RUNPLANE_ST_EXAMPLES:-25}
MAX_TIME=${RUNPLANE_ST_MAX_TIME:-120}
RESPONSE_TIME=${RUNPLANE_ST_RESPONSE_TIME:-10}
START_CONTROLLER=${RUNPLANE_ST_CONTROLLER:-1}

log() { printf '[schemathesis] %s\n' "$*" >&2; }
die() { printf '[schemathesis] ERROR: %s\n' "$*" >&2; exit 1; }

ST=${SCHEMATHESIS:-}
if [[ -z $ST ]]; then
  if command -v schemathesis >/dev/null 2>&1; then ST=schemathesis
  elif command -v st >/dev/null 2>&1; then ST=st
  else die "schemathesis is required: pip install schemathesis"; fi
fi
command -v "$KUBECTL" >/dev/null 2>&1 || die "$KUBECTL is required"
command -v curl >/dev/null 2>&1 || die "curl is required"

KUBECONFIG=${RUNPLANE_E2E_KUBECONFIG:-$REPO/e2e/.cluster/kubeconfig}
if [[ ! -s $KUBECONFIG ]] || ! "$KUBECTL" --kubeconfig "$KUBECONFIG" get --raw /readyz >/dev/null 2>&1; then
  log "no local control plane; starting it"
  KUBECONFIG=$(bash "$REPO/e2e/cluster/up.sh" | tail -n1)
fi
export KUBECONFIG
k() { "$KUBECTL" --kubeconfig "$KUBECONFIG" "$@"; }

if [[ -z ${RUNPLANE_BIN:-} ]]; then
  log "building runplane"
  (cd "$REPO" && cargo build --quiet --bin runplane)
  RUNPLANE_BIN="${CARGO_TARGET_DIR:-$REPO/target}/debug/runplane"
fi
[[ -x $RUNPLANE_BIN ]] || die "no runplane binary at $RUNPLANE_BIN"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

WORK=$(mktemp -d)
NAME="e2e-schemathesis-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
KEYS="$NAME-keys"
CONTROLLER_PID=""
GATEWAY_PID=""

cleanup() {
  local status=$?
  set +e
  log "cleaning up $NAME"
  k delete gputasks --all -n "$NAME" --wait=false >/dev/null 2>&1
  # The controller releases the tasks' pods; wait for that while it runs.
  for _ in $(seq 1 60); do
    [[ -z $(k get pods -n "$NAME" -o name 2>/dev/null) ]] && break
    sleep 0.5
  done
  [[ -n $GATEWAY_PID ]] && kill "$GATEWAY_PID" 2>/dev/null && wait "$GATEWAY_PID" 2>/dev/null
  [[ -n $CONTROLLER_PID ]] && kill "$CONTROLLER_PID" 2>/dev/null && wait "$CONTROLLER_PID" 2>/dev/null
  # Pods a missing controller could not release.
  for pod in $(k get pods -n "$NAME" -o name 2>/dev/null); do
    k patch -n "$NAME" "$pod" --type merge -p '{"metadata":{"finalizers":null}}' >/dev/null 2>&1
  done
  k delete namespace "$NAME" "$KEYS" --wait=false >/dev/null 2>&1
  k delete gpuaccount "$NAME" >/dev/null 2>&1
  rm -rf "$WORK"
  exit $status
}
trap cleanup EXIT INT TERM

log "tenant $NAME"
k apply --server-side -f "$REPO/crds/runplane.yaml" >/dev/null
k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $NAME
  labels: {runplane.dev/e2e: "true"}
---
apiVersion: runplane.dev/v1alpha1
kind: GpuAccount
metadata:
  name: $NAME
  labels: {runplane.dev/e2e: "true"}
spec:
  plan: custom
  email: $NAME@example.com
  namespaces: [$NAME]
  credits: 100000000
  limits: {concurrentTasks: 20, requestsPerMinute: 1000000}
---
apiVersion: v1
kind: Namespace
metadata:
  name: $KEYS
  labels: {runplane.dev/e2e: "true"}
---
# Named in e2e/schemathesis.toml: accepts any input.
apiVersion: runplane.dev/v1alpha1
kind: GpuTemplate
metadata: {name: fuzz-open, namespace: $NAME}
spec:
  image: example.com/fuzz:1
  price: {perRun: 1}
  aliases: [fuzz/open]
  podMetadata:
    annotations:
      e2e.runplane.dev/duration: 1s
      e2e.runplane.dev/message: '{"result_url": "https://cdn.example.com/results/fuzz.png", "text": "done"}'
EOF
# The templates the seeds' examples (and the document's) name.
sed "s/^  namespace: demo$/  namespace: $NAME/" "$REPO/deploy/examples/seed-templates.yaml" | k apply -f - >/dev/null

KEY=$(KUBECONFIG="$KUBECONFIG" "$RUNPLANE_BIN" apikey create --account "$NAME" --namespace "$KEYS" 2>/dev/null)
head -c 32 /dev/urandom >"$WORK/callback.key"
API_PORT=$(free_port)
API="http://127.0.0.1:$API_PORT"

if [[ $START_CONTROLLER == 1 ]]; then
  METRICS_PORT=$(free_port)
  "$RUNPLANE_BIN" controller --leader-election=false --metrics-addr "127.0.0.1:$METRICS_PORT" \
    --callback-key-file "$WORK/callback.key" --callback-url "$API" --kubeconfig "$KUBECONFIG" \
    >"$WORK/controller.log" 2>&1 &
  CONTROLLER_PID=$!
fi
"$RUNPLANE_BIN" api --listen "127.0.0.1:$API_PORT" --namespace "$KEYS" \
  --callback-key-file "$WORK/callback.key" --kubeconfig "$KUBECONFIG" >"$WORK/api.log" 2>&1 &
GATEWAY_PID=$!
for _ in $(seq 1 100); do
  curl -fsS "$API/readyz" >/dev/null 2>&1 && break
  kill -0 "$GATEWAY_PID" 2>/dev/null || { cat "$WORK/api.log" >&2; die "the gateway exited"; }
  sleep 0.2
done
curl -fsS "$API/readyz" >/dev/null || die "the gateway never became ready"

log "fuzzing $API/openapi.json"
# positive_data_acceptance is left out: a template's input is checked
# against that template's own inputSchema, which the document cannot know,
# so a schema-valid request may rightly be answered 400 (40005).
set +e
# schemathesis keeps a cache in its working directory: keep it out of the checkout.
cd "$WORK"
"$ST" --config-file "$HERE/schemathesis.toml" run "$API/openapi.json" \
  --header "Authorization: Bearer $KEY" \
  --checks all \
  --exclude-checks positive_data_acceptance \
  --max-examples "$EXAMPLES" \
  --max-time "$MAX_TIME" \
  --max-response-time "$RESPONSE_TIME" \
  --workers 2 \
  --generation-database none \
  --report-dir "$WORK/report" \
  --no-color
status=$?
set -e
if [[ $status -ne 0 ]]; then
  log "gateway log tail:"
  tail -n 40 "$WORK/api.log" >&2
fi
if grep -q "panicked" "$WORK/api.log"; then
  log "the gateway panicked"
  status=1
fi
exit $status
