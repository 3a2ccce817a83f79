#!/usr/bin/env bash
# Makes sure `ss` is installed (Debian's iproute2 package): e2e/listeners.sh
# uses it to check that the tests' servers listen on loopback only.
# Does nothing when ss is already there.
set -euo pipefail

log() { printf '[iproute2] %s\n' "$*" >&2; }
die() { printf '[iproute2] ERROR: %s\n' "$*" >&2; exit 1; }

command -v ss >/dev/null 2>&1 && exit 0

command -v apt-get >/dev/null 2>&1 ||
  die "ss is missing and this is not a Debian-like system; install iproute2 yourself"
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || die "installing the iproute2 package needs root (or sudo)"
  SUDO=(sudo)
fi

log "installing Debian's iproute2 package (ss)"
export DEBIAN_FRONTEND=noninteractive
if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends iproute2 >/dev/null; then
  log "install failed; refreshing the package lists and retrying"
  "${SUDO[@]}" apt-get update -q >/dev/null
  "${SUDO[@]}" apt-get install -y -q --no-install-recommends iproute2 >/dev/null
fi
command -v ss >/dev/null 2>&1 || die "the iproute2 package did not provide ss"
