#!/usr/bin/env bash
# Builds the pinned control-plane binaries (kube-apiserver,
# kube-controller-manager, kube-scheduler, etcd, kwok) from the Go modules in
# this folder into a cache directory keyed by the pins, and prints that bin
# directory as the last line on stdout. Does nothing when the binaries for the
# current pins are already there.
#
# Env: RUNPLANE_CACHE (default: $HOME/.cache/runplane)
set -euo pipefail

# --- pins (keep in step with kube/go.mod, etcd/go.mod, kwok/go.mod) ---------
KUBE_VERSION=v1.34.12
KUBE_STAGING_VERSION=v0.34.12
KUBE_BUILD_DATE=2026-09-23T17:08:30Z # release time of the tag on the module proxy
ETCD_VERSION=v3.6.5
KWOK_VERSION=v0.8.0
# -----------------------------------------------------------------------------

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${RUNPLANE_CACHE:-$HOME/.cache/runplane}
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok)

log() { printf '[build] %s\n' "$*" >&2; }
die() { printf '[build] ERROR: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "go is not installed (need Go >= 1.26 for kwok ${KWOK_VERSION})"

# The go.mod files must agree with the pins above.
grep -Eq "k8s.io/kubernetes ${KUBE_VERSION}( |\$)" "$HERE/kube/go.mod" ||
  die "kube/go.mod does not require k8s.io/kubernetes ${KUBE_VERSION}"
grep -Eq "k8s.io/api => k8s.io/api ${KUBE_STAGING_VERSION}( |\$)" "$HERE/kube/go.mod" ||
  die "kube/go.mod does not replace staging modules with ${KUBE_STAGING_VERSION}"
grep -Eq "go.etcd.io/etcd/server/v3 ${ETCD_VERSION}( |\$)" "$HERE/etcd/go.mod" ||
  die "etcd/go.mod does not require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}"
grep -Eq "sigs.k8s.io/kwok ${KWOK_VERSION}( |\$)" "$HERE/kwok/go.mod" ||
  die "kwok/go.mod does not require sigs.k8s.io/kwok ${KWOK_VERSION}"

HASH=$(
  {
    for m in kube etcd kwok; do
      cat "$HERE/$m/go.mod" "$HERE/$m/go.sum"
    done
    echo "$KUBE_VERSION $KUBE_STAGING_VERSION $KUBE_BUILD_DATE $ETCD_VERSION $KWOK_VERSION"
  } | sha256sum | cut -c1-12
)
OUT="$CACHE/cluster-$HASH"
BIN="$OUT/bin"

have_all() {
  local b
  for b in "${BINARIES[@]}"; do
    [[ -x "$BIN/$b" ]] || return 1
  done
}

if have_all; then
  log "binaries up to date in $BIN"
  echo "$BIN"
  exit 0
fi

mkdir -p "$OUT"
# Serialise concurrent builds of the same pins.
exec 9>"$OUT/.lock"
flock 9
if have_all; then
  log "binaries up to date in $BIN (built concurrently)"
  echo "$BIN"
  exit 0
fi

STAGE="$OUT/bin.partial"
mkdir -p "$STAGE"
export CGO_ENABLED=0
GOFLAGS_BUILD=(-trimpath -buildvcs=false -mod=readonly)

elapsed() { echo "$((SECONDS - $1))s"; }

# Kubernetes components: version stamped like the release build does.
kube_x() { printf -- "-X 'k8s.io/%s/version.%s=%s' " client-go/pkg "$1" "$2" component-base "$1" "$2"; }
KUBE_MINOR=${KUBE_VERSION#v1.}
KUBE_MINOR=${KUBE_MINOR%%.*}
KUBE_LDFLAGS="-s -w $(kube_x gitVersion "$KUBE_VERSION") $(kube_x gitMajor 1) $(kube_x gitMinor "$KUBE_MINOR")"
KUBE_LDFLAGS+=" $(kube_x gitTreeState clean) $(kube_x buildDate "$KUBE_BUILD_DATE")"

kube_missing=()
for b in kube-apiserver kube-controller-manager kube-scheduler; do
  [[ -x "$STAGE/$b" ]] || kube_missing+=("k8s.io/kubernetes/cmd/$b")
done
if ((${#kube_missing[@]})); then
  t=$SECONDS
  log "building Kubernetes ${KUBE_VERSION} (${kube_missing[*]##*/}); a cold build takes several minutes on 2 cores"
  (cd "$HERE/kube" && go build "${GOFLAGS_BUILD[@]}" -ldflags "$KUBE_LDFLAGS" -o "$STAGE/" "${kube_missing[@]}")
  log "Kubernetes built in $(elapsed $t)"
fi

if [[ ! -x "$STAGE/etcd" ]]; then
  t=$SECONDS
  log "building etcd ${ETCD_VERSION}"
  (cd "$HERE/etcd" && go build "${GOFLAGS_BUILD[@]}" -ldflags "-s -w" -o "$STAGE/etcd" go.etcd.io/etcd/server/v3)
  log "etcd built in $(elapsed $t)"
fi

if [[ ! -x "$STAGE/kwok" ]]; then
  t=$SECONDS
  log "building kwok ${KWOK_VERSION}"
  (cd "$HERE/kwok" && go build "${GOFLAGS_BUILD[@]}" \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
    -o "$STAGE/kwok" sigs.k8s.io/kwok/cmd/kwok)
  log "kwok built in $(elapsed $t)"
fi

rm -rf "$BIN"
mv "$STAGE" "$BIN"
have_all || die "build finished but binaries are missing in $BIN"
log "binaries ready in $BIN"
echo "$BIN"
