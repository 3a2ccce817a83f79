#!/usr/bin/env bash
# Builds the pinned control-plane binaries (kube-apiserver,
# kube-controller-manager, kube-scheduler, etcd, kwok) and the kubectl of the
# same Kubernetes release from the Go modules in this folder, and prints the
# bin directory that holds all six as the last line on stdout. Does nothing
# when the binaries for the current pins are already there.
#
# Each module (kube/, etcd/, kwok/) is built into a cache directory of its
# own, keyed by that module's go.mod/go.sum and build recipe, so a change to
# one module rebuilds only its binaries; the bin directory printed links them
# together.
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
MODULES=(kube etcd kwok)
KUBE_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl)

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

# --- build recipes -----------------------------------------------------------
GOFLAGS_BUILD=(-trimpath -buildvcs=false -mod=readonly)

# Kubernetes components: version stamped like the release build does.
kube_x() { printf -- "-X 'k8s.io/%s/version.%s=%s' " client-go/pkg "$1" "$2" component-base "$1" "$2"; }
KUBE_MINOR=${KUBE_VERSION#v1.}
KUBE_MINOR=${KUBE_MINOR%%.*}
KUBE_LDFLAGS="-s -w $(kube_x gitVersion "$KUBE_VERSION") $(kube_x gitMajor 1) $(kube_x gitMinor "$KUBE_MINOR")"
KUBE_LDFLAGS+=" $(kube_x gitTreeState clean) $(kube_x buildDate "$KUBE_BUILD_DATE")"
ETCD_LDFLAGS="-s -w"
KWOK_LDFLAGS="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"

binaries_of() { # module
  case $1 in
    kube) echo "${KUBE_BINARIES[@]}" ;;
    etcd) echo etcd ;;
    kwok) echo kwok ;;
  esac
}

# What a module's binaries are built from: its go.mod/go.sum, the pins and
# the exact flags. Anything else in this script does not change them.
recipe() { # module
  cat "$HERE/$1/go.mod" "$HERE/$1/go.sum"
  echo "CGO_ENABLED=0 ${GOFLAGS_BUILD[*]}"
  case $1 in
    kube) echo "$KUBE_VERSION $KUBE_STAGING_VERSION $KUBE_LDFLAGS ${KUBE_BINARIES[*]}" ;;
    etcd) echo "$ETCD_VERSION $ETCD_LDFLAGS go.etcd.io/etcd/server/v3" ;;
    kwok) echo "$KWOK_VERSION $KWOK_LDFLAGS sigs.k8s.io/kwok/cmd/kwok" ;;
  esac
}

declare -A MODULE_DIR
for m in "${MODULES[@]}"; do
  MODULE_DIR[$m]="$CACHE/$m-$(recipe "$m" | sha256sum | cut -c1-12)"
done
HASH=$(for m in "${MODULES[@]}"; do echo "${MODULE_DIR[$m]##*/}"; done | sha256sum | cut -c1-12)
OUT="$CACHE/cluster-$HASH"
BIN="$OUT/bin"

have_all() { # dir binaries...
  local dir=$1 b
  shift
  for b in "$@"; do
    [[ -x "$dir/$b" ]] || return 1
  done
}

ALL_BINARIES=()
for m in "${MODULES[@]}"; do
  read -ra bins <<<"$(binaries_of "$m")"
  ALL_BINARIES+=("${bins[@]}")
done

if have_all "$BIN" "${ALL_BINARIES[@]}"; then
  log "binaries up to date in $BIN"
  echo "$BIN"
  exit 0
fi

elapsed() { echo "$((SECONDS - $1))s"; }

build_module() { # module: builds its binaries into MODULE_DIR/bin unless there
  local m=$1 dir=${MODULE_DIR[$1]} stage t b
  local -a bins missing=()
  read -ra bins <<<"$(binaries_of "$m")"
  have_all "$dir/bin" "${bins[@]}" && return 0
  mkdir -p "$dir"
  # Serialise concurrent builds of the same module (the lock is released
  # when this subshell's descriptor closes).
  (
    exec 9>"$dir/.lock"
    flock 9
    have_all "$dir/bin" "${bins[@]}" && exit 0
    stage="$dir/bin.partial"
    mkdir -p "$stage"
    export CGO_ENABLED=0
    t=$SECONDS
    case $m in
      kube)
        for b in "${bins[@]}"; do
          [[ -x "$stage/$b" ]] || missing+=("k8s.io/kubernetes/cmd/$b")
        done
        if ((${#missing[@]})); then
          log "building Kubernetes ${KUBE_VERSION} (${missing[*]##*/}); a cold build takes several minutes on 2 cores"
          (cd "$HERE/kube" && go build "${GOFLAGS_BUILD[@]}" -ldflags "$KUBE_LDFLAGS" -o "$stage/" "${missing[@]}")
        fi
        ;;
      etcd)
        log "building etcd ${ETCD_VERSION}"
        (cd "$HERE/etcd" && go build "${GOFLAGS_BUILD[@]}" -ldflags "$ETCD_LDFLAGS" -o "$stage/etcd" go.etcd.io/etcd/server/v3)
        ;;
      kwok)
        log "building kwok ${KWOK_VERSION}"
        (cd "$HERE/kwok" && go build "${GOFLAGS_BUILD[@]}" -ldflags "$KWOK_LDFLAGS" -o "$stage/kwok" sigs.k8s.io/kwok/cmd/kwok)
        ;;
    esac
    log "$m built in $(elapsed "$t")"
    rm -rf "$dir/bin"
    mv "$stage" "$dir/bin"
  )
  have_all "$dir/bin" "${bins[@]}" || die "building $m finished but binaries are missing in $dir/bin"
}

mkdir -p "$OUT"
exec 8>"$OUT/.lock"
flock 8
if have_all "$BIN" "${ALL_BINARIES[@]}"; then
  log "binaries up to date in $BIN (built concurrently)"
  echo "$BIN"
  exit 0
fi

for m in "${MODULES[@]}"; do
  build_module "$m"
done

# One directory with all binaries: hard links into the module directories
# (copies where the file system refuses links).
STAGE="$OUT/bin.partial"
rm -rf "$STAGE"
mkdir -p "$STAGE"
for m in "${MODULES[@]}"; do
  read -ra bins <<<"$(binaries_of "$m")"
  for b in "${bins[@]}"; do
    ln "${MODULE_DIR[$m]}/bin/$b" "$STAGE/$b" 2>/dev/null || cp -p "${MODULE_DIR[$m]}/bin/$b" "$STAGE/$b"
  done
done
rm -rf "$BIN"
mv "$STAGE" "$BIN"
have_all "$BIN" "${ALL_BINARIES[@]}" || die "build finished but binaries are missing in $BIN"
log "binaries ready in $BIN"
echo "$BIN"
