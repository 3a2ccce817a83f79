#!/usr/bin/env bash
# Builds the pinned test tools that come from Go modules (today: helm) into a
# cache directory keyed by the pins, and prints that bin directory as the last
# line on stdout. Does nothing when the binaries for the current pins are
# already there.
#
# helm is built from a tiny module (helm/go.mod) rather than with
# `go install …@version`, so that go.sum pins every dependency and the build
# runs with -mod=readonly, like the control plane in e2e/cluster/.
#
# Env: RUNPLANE_CACHE (default: $HOME/.cache/runplane)
set -euo pipefail

# --- pins (keep in step with helm/go.mod) ------------------------------------
HELM_VERSION=v3.22.0
# The Kubernetes minor that helm's client-go (v0.37) speaks; helm's own
# Makefile stamps it into lint and `helm template`'s default capabilities.
HELM_K8S_MAJOR=1
HELM_K8S_MINOR=37
# -----------------------------------------------------------------------------

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${RUNPLANE_CACHE:-$HOME/.cache/runplane}
BINARIES=(helm)

log() { printf '[tools] %s\n' "$*" >&2; }
die() { printf '[tools] ERROR: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "go is not installed (helm ${HELM_VERSION} needs Go >= 1.26)"

grep -Eq "helm.sh/helm/v3 ${HELM_VERSION}( |\$)" "$HERE/helm/go.mod" ||
  die "helm/go.mod does not require helm.sh/helm/v3 ${HELM_VERSION}"
grep -Eq "k8s.io/client-go v0.${HELM_K8S_MINOR}\." "$HERE/helm/go.mod" ||
  die "helm/go.mod's client-go is not v0.${HELM_K8S_MINOR}; update HELM_K8S_MINOR"

HASH=$(
  {
    cat "$HERE/helm/go.mod" "$HERE/helm/go.sum"
    echo "$HELM_VERSION $HELM_K8S_MAJOR $HELM_K8S_MINOR"
  } | sha256sum | cut -c1-12
)
OUT="$CACHE/tools-$HASH"
BIN="$OUT/bin"

have_all() {
  local b
  for b in "${BINARIES[@]}"; do
    [[ -x "$BIN/$b" ]] || return 1
  done
}

if have_all; then
  log "tools up to date in $BIN"
  echo "$BIN"
  exit 0
fi

mkdir -p "$OUT"
# Serialise concurrent builds of the same pins.
exec 9>"$OUT/.lock"
flock 9
if have_all; then
  log "tools up to date in $BIN (built concurrently)"
  echo "$BIN"
  exit 0
fi

STAGE="$OUT/bin.partial"
mkdir -p "$STAGE"
export CGO_ENABLED=0

t=$SECONDS
log "building helm ${HELM_VERSION} (about a minute or two on 2 cores when nothing is cached)"
HELM_LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
HELM_LDFLAGS+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in pkg/lint/rules pkg/chartutil; do
  HELM_LDFLAGS+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=${HELM_K8S_MAJOR}"
  HELM_LDFLAGS+=" -X helm.sh/helm/v3/$pkg.k8sVersionMinor=${HELM_K8S_MINOR}"
done
(cd "$HERE/helm" && go build -trimpath -buildvcs=false -mod=readonly \
  -ldflags "$HELM_LDFLAGS" -o "$STAGE/helm" helm.sh/helm/v3/cmd/helm)
log "helm built in $((SECONDS - t))s"

rm -rf "$BIN"
mv "$STAGE" "$BIN"
have_all || die "build finished but binaries are missing in $BIN"
log "tools ready in $BIN"
echo "$BIN"
