#!/usr/bin/env bash
# make bench: builds runplane and runs e2e/bench/bench.py, which starts every
# scenario on a fresh bench control plane (its own ports and state directory,
# so it never collides with `make test`'s clusters) and leaves the last one
# running (BENCH_DOWN=1 stops it afterwards).
#
# Objects are created by a Rust load generator (examples/bench_load.rs, built
# here); the gateway scenario loads `runplane api` with wrk (Debian's `wrk`
# package, installed when missing; needs root or sudo).
#
# Env: BENCH_SCALE [full] (tiny|small|full), BENCH_SCENARIOS, BENCH_OUT
# [e2e/bench/results], BENCH_NODES [50], BENCH_NODE_GPUS [80], the
# RUNPLANE_E2E_*_PORT variables (defaults below), BENCH_ARGS (extra flags).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

export RUNPLANE_E2E_STATE=${RUNPLANE_E2E_STATE:-$PWD/e2e/.cluster-bench}
export RUNPLANE_E2E_APISERVER_PORT=${RUNPLANE_E2E_APISERVER_PORT:-26443}
export RUNPLANE_E2E_ETCD_PORT=${RUNPLANE_E2E_ETCD_PORT:-22379}
export RUNPLANE_E2E_ETCD_PEER_PORT=${RUNPLANE_E2E_ETCD_PEER_PORT:-22380}
export RUNPLANE_E2E_CONTROLLER_MANAGER_PORT=${RUNPLANE_E2E_CONTROLLER_MANAGER_PORT:-27257}
export RUNPLANE_E2E_SCHEDULER_PORT=${RUNPLANE_E2E_SCHEDULER_PORT:-27259}
export RUNPLANE_E2E_KWOK_PORT=${RUNPLANE_E2E_KWOK_PORT:-27247}
export RUNPLANE_E2E_NODES=${BENCH_NODES:-50}
export RUNPLANE_E2E_NODE_GPUS=${BENCH_NODE_GPUS:-80}
export RUNPLANE_E2E_NODE_PODS=${BENCH_NODE_PODS:-1000}
CACHE=${RUNPLANE_CACHE:-$HOME/.cache/runplane}
VENV=$CACHE/bench-venv

if ! "$VENV/bin/python" -c 'import matplotlib, requests' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet matplotlib requests
fi

# wrk loads the gateway (scenario gateway); Debian's package, without its
# recommends. A failed install only matters to that scenario, which says so.
if [[ ,${BENCH_SCENARIOS:-gateway}, == *,gateway,* ]] && ! command -v wrk >/dev/null 2>&1 &&
  command -v apt-get >/dev/null 2>&1; then
  SUDO=()
  [[ $(id -u) -eq 0 ]] || SUDO=(sudo)
  echo "[bench] installing Debian's wrk package" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends wrk >/dev/null; then
    "${SUDO[@]}" apt-get update -q >/dev/null || true
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends wrk >/dev/null ||
      echo "[bench] could not install wrk; the gateway scenario will be skipped" >&2
  fi
fi

cargo build --release --quiet
cargo build --release --quiet --example bench-load
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$(cd "$TARGET/release" && pwd)/runplane
LOADER=$(cd "$TARGET/release/examples" && pwd)/bench-load

# The control plane's binaries and the kubectl of the same release (the
# machine's kubectl may be outside the supported version skew), as
# e2e/test.sh uses them: built on first use, the directory on the last line.
CLUSTER_BIN=$(bash e2e/cluster/build.sh | tail -n1)
export KUBECTL="$CLUSTER_BIN/kubectl"
export PATH="$CLUSTER_BIN:$PATH"

OUT=${BENCH_OUT:-e2e/bench/results}
# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
"$VENV/bin/python" e2e/bench/bench.py --scale "${BENCH_SCALE:-full}" --runplane "$BIN" --loader "$LOADER" \
  --out "$OUT" ${BENCH_ARGS:-}

if [[ ${BENCH_DOWN:-0} == 1 ]]; then
  bash e2e/cluster/down.sh
fi
