#!/usr/bin/env bash
# Checks that nothing a test run started listens beyond loopback: every
# server of the tests (etcd, kube-*, kwok, runplane, Prometheus, the webhook
# receiver) must bind 127.0.0.1 (or ::1) only.
#
# "Started by the test run" means: the process's environment carries
# RUNPLANE_E2E_RUN with this run's value (e2e/test.sh exports it, so every
# process it starts inherits it), or it is a component of the local control
# plane (its PID file in the state directory; covers a cluster that was
# already running).
#
#   e2e/listeners.sh check          look once now; exit 1 listing offenders
#   e2e/listeners.sh watch FILE     look every RUNPLANE_LISTENERS_INTERVAL
#                                   [0.5] seconds until stopped, appending
#                                   offenders to FILE (for short-lived
#                                   servers such as the tests' controllers)
#   e2e/listeners.sh report FILE    exit 1 listing what FILE recorded
#
# Needs ss from iproute2 (e2e/tools/iproute2.sh installs it).
# Env: RUNPLANE_E2E_RUN, RUNPLANE_E2E_STATE [e2e/.cluster] (state directories
# of several control planes: separated by ':')
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${RUNPLANE_E2E_STATE:-$HERE/.cluster}
RUN=${RUNPLANE_E2E_RUN:-}
INTERVAL=${RUNPLANE_LISTENERS_INTERVAL:-0.5}

log() { printf '[listeners] %s\n' "$*" >&2; }
die() { printf '[listeners] ERROR: %s\n' "$*" >&2; exit 2; }

command -v ss >/dev/null 2>&1 || die "ss (iproute2) is required: bash e2e/tools/iproute2.sh"

cluster_pids() {
  local f state states
  IFS=: read -ra states <<<"$STATE"
  for state in "${states[@]}"; do
    for f in "$state"/pids/*.pid; do
      [[ -s $f ]] && cat "$f"
    done
  done
  return 0
}

ours() { # pid
  local pid=$1
  local environ
  if [[ -n $RUN ]]; then
    environ=$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null || true)
    grep -qxF "RUNPLANE_E2E_RUN=$RUN" <<<"$environ" && return 0
  fi
  grep -qx "$pid" <<<"$CLUSTER_PIDS"
}

loopback() { # address as ss prints it, without the port
  local addr=${1#[}
  addr=${addr%]}
  addr=${addr%%\%*} # 127.0.0.53%lo
  [[ $addr == 127.* || $addr == ::1 || $addr == ::ffff:127.* ]]
}

# One line per listening socket of ours that is not on loopback.
offenders() {
  local netid local_addr process pid
  CLUSTER_PIDS=$(cluster_pids)
  # -H no header, -l listening, -n numeric, -t/-u TCP and UDP, -p processes.
  while read -r netid _ _ _ local_addr _ process; do
    loopback "${local_addr%:*}" && continue
    for pid in $(grep -o 'pid=[0-9]*' <<<"$process" | cut -d= -f2 | sort -u); do
      if ours "$pid"; then
        printf '%s %s pid %s: %s\n' "$netid" "$local_addr" "$pid" \
          "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-200)"
      fi
    done
  done < <(ss -Hlntup 2>/dev/null)
}

case ${1:-} in
  check)
    found=$(offenders)
    if [[ -n $found ]]; then
      log "listening beyond loopback:"
      printf '%s\n' "$found" >&2
      exit 1
    fi
    ;;
  watch)
    [[ -n ${2:-} ]] || die "usage: $0 watch FILE"
    while :; do
      offenders >>"$2"
      sleep "$INTERVAL"
    done
    ;;
  report)
    [[ -n ${2:-} ]] || die "usage: $0 report FILE"
    if [[ -s $2 ]]; then
      log "listened beyond loopback during the run:"
      sort -u "$2" >&2
      exit 1
    fi
    ;;
  *)
    echo "usage: $0 check | watch FILE | report FILE" >&2
    exit 2
    ;;
esac
