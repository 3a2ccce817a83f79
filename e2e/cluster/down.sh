#!/usr/bin/env bash
# Stops the control plane that up.sh started, by the PIDs recorded in
# $RUNPLANE_E2E_STATE/pids/ (default e2e/.cluster; TERM, then KILL after a deadline), and removes the PID
# files. With --purge it also removes all state in that directory (etcd data,
# certificates, kubeconfig, logs). Exits 0 when nothing is running.
#
# Env: RUNPLANE_E2E_STOP_TIMEOUT [10] seconds to wait before KILL.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${RUNPLANE_E2E_STATE:-"$(cd "$HERE/.." && pwd)/.cluster"}
PIDS="$STATE/pids"
TIMEOUT=${RUNPLANE_E2E_STOP_TIMEOUT:-10}

PURGE=false
for arg in "$@"; do
  case $arg in
    --purge) PURGE=true ;;
    -h | --help)
      sed -n '2,7p' "$0"
      exit 0
      ;;
    *)
      echo "usage: $0 [--purge]" >&2
      exit 2
      ;;
  esac
done

log() { printf '[down] %s\n' "$*" >&2; }

# Reverse start order: the fake kubelet and the controllers first, etcd last.
COMPONENTS=(kwok kube-scheduler kube-controller-manager kube-apiserver etcd)

pid_of() { # PID of a running component started from this state dir
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

stop_group() { # components... : TERM them together, wait, then KILL
  local c pid deadline
  local -a running=()
  for c in "$@"; do
    if pid=$(pid_of "$c"); then
      kill -TERM "$pid" 2>/dev/null || true
      running+=("$c:$pid")
    fi
  done
  ((${#running[@]})) || return 0
  deadline=$((SECONDS + TIMEOUT))
  for entry in "${running[@]}"; do
    c=${entry%%:*}
    pid=${entry##*:}
    while kill -0 "$pid" 2>/dev/null && pid_of "$c" >/dev/null; do
      if ((SECONDS >= deadline)); then
        log "$c (pid $pid) did not exit after ${TIMEOUT}s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
        break
      fi
      sleep 0.1
    done
    log "stopped $c (pid $pid)"
  done
}

if [[ -d "$PIDS" ]]; then
  # Clients of the apiserver first, so they do not log connection errors for
  # long; then the apiserver; etcd last.
  stop_group kwok kube-scheduler kube-controller-manager
  stop_group kube-apiserver
  stop_group etcd
  for c in "${COMPONENTS[@]}"; do
    rm -f "$PIDS/$c.pid"
  done
  rm -f "$STATE/cluster.env"
else
  log "nothing to stop"
fi

if $PURGE && [[ -d "$STATE" ]]; then
  rm -rf "$STATE"
  log "removed $STATE"
fi
