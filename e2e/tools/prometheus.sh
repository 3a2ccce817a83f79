#!/usr/bin/env bash
# Makes sure Prometheus and promtool are installed, from Debian's
# `prometheus` package, without leaving the packaged service running: the
# tests start their own Prometheus on 127.0.0.1 with a generated config, and
# the packaged one would listen on every interface (:9090).
# Does nothing when both commands are already there.
set -euo pipefail

log() { printf '[prometheus] %s\n' "$*" >&2; }
die() { printf '[prometheus] ERROR: %s\n' "$*" >&2; exit 1; }

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi

command -v apt-get >/dev/null 2>&1 ||
  die "prometheus and promtool are missing and this is not a Debian-like system; install Prometheus (2.x or later) yourself"
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || die "installing the prometheus package needs root (or sudo)"
  SUDO=(sudo)
fi

# Keep the package's maintainer scripts from starting the service: with a
# policy-rc.d that exits 101, invoke-rc.d and deb-systemd-invoke start nothing.
# One that exists already is left as it is.
POLICY=/usr/sbin/policy-rc.d
created_policy=false
if [[ ! -e $POLICY ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
  "${SUDO[@]}" chmod 755 "$POLICY"
  created_policy=true
fi
cleanup() {
  if $created_policy; then
    "${SUDO[@]}" rm -f "$POLICY"
  fi
}
trap cleanup EXIT

log "installing Debian's prometheus package (Prometheus and promtool)"
export DEBIAN_FRONTEND=noninteractive
# No recommends: they would bring prometheus-node-exporter, another service.
if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends prometheus >/dev/null; then
  log "install failed; refreshing the package lists and retrying"
  "${SUDO[@]}" apt-get update -q >/dev/null
  "${SUDO[@]}" apt-get install -y -q --no-install-recommends prometheus >/dev/null
fi

# Where systemd runs, the unit may have been enabled (and, without the policy,
# started); stop and disable it so nothing listens on 0.0.0.0:9090.
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
  "${SUDO[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
for pidfile in /run/prometheus.pid /run/prometheus/prometheus.pid; do
  if [[ -s $pidfile ]] && kill -0 "$(<"$pidfile")" 2>/dev/null; then
    log "stopping the packaged Prometheus service (pid $(<"$pidfile"))"
    "${SUDO[@]}" kill "$(<"$pidfile")" || true
  fi
done

command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 ||
  die "the prometheus package did not provide prometheus and promtool"
log "installed $(prometheus --version 2>&1 | head -n1)"
