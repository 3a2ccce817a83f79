"""Where the apiserver's CPU goes: a CPU profile of kube-apiserver (Go's
pprof, which it serves at /debug/pprof/profile with --profiling, its
default), split into the parts a benchmark can act on.

Each part is the cumulative time of one frame that every request of its kind
passes through (`go tool pprof -top -cum`), as a share of all the profile's
samples. The frames are those of the Kubernetes release the bench builds
(e2e/cluster/build.sh); a release that renames one shows that part as 0.
"""
import re
import subprocess

# (part, frame). Parts may nest: "updates and patches, all" holds the three
# status writes above it; split() adds the rest of it as its own part.
PARTS = [
    ("GpuTask status writes", "k8s.io/apiextensions-apiserver/pkg/registry/customresource.(*StatusREST).Update"),
    ("pod status writes (kwok, the scheduler's conditions)",
     "k8s.io/kubernetes/pkg/registry/core/pod/storage.(*StatusREST).Update"),
    ("node status writes", "k8s.io/kubernetes/pkg/registry/core/node/storage.(*StatusREST).Update"),
    ("updates and patches, all", "k8s.io/apiserver/pkg/registry/generic/registry.(*Store).Update"),
    ("creates (in the store)", "k8s.io/apiserver/pkg/registry/generic/registry.(*Store).Create"),
    ("bindings", "k8s.io/kubernetes/pkg/registry/core/pod/storage.(*BindingREST).Create"),
    ("watches served", "k8s.io/apiserver/pkg/endpoints/handlers.(*WatchServer).HandleHTTP"),
    ("etcd's watch events decoded", "k8s.io/apiserver/pkg/storage/etcd3.(*watchChan).serialProcessEvents"),
    ("lists", "k8s.io/apiserver/pkg/endpoints/handlers.ListResource.func1"),
    ("Go's garbage collector", "runtime.gcBgMarkWorker"),
]
STATUS_PARTS = ("GpuTask status writes", "pod status writes (kwok, the scheduler's conditions)",
                "node status writes")

UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "mins": 60.0, "hrs": 3600.0}
VALUE = r"([\d.]+)(ns|us|µs|ms|s|mins|hrs)?"
ROW = re.compile(rf"^\s*{VALUE}\s+[\d.]+%\s+[\d.]+%\s+{VALUE}\s+[\d.]+%\s+(.+?)\s*$")


def seconds(number, unit):
    return float(number) * UNITS[unit or "s"]


def parse_top(text):
    """`go tool pprof -top -cum` output -> (total sample seconds, profile
    seconds, {frame: cumulative seconds})."""
    total = re.search(rf"Total samples = {VALUE}", text)
    duration = re.search(rf"Duration: {VALUE}", text)
    cum = {}
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            cum[m.group(5)] = max(cum.get(m.group(5), 0.0), seconds(m.group(3), m.group(4)))
    return (seconds(*total.groups()) if total else None, seconds(*duration.groups()) if duration else None, cum)


def split(text):
    """The parts of a profile: each one's CPU seconds and share of all
    samples, and the cores the apiserver used over the profile."""
    total, duration, cum = parse_top(text)
    if not total:
        return None
    parts = {name: cum.get(frame, 0.0) for name, frame in PARTS}
    parts["updates and patches, other (pod finalizers, metadata)"] = max(
        0.0, parts["updates and patches, all"] - sum(parts[p] for p in STATUS_PARTS))
    # The parts but "all" do not overlap; what they leave is the requests'
    # handling around the store (TLS, authentication, flow control, decoding
    # and encoding), the etcd client and the rest of the process.
    parts["the rest (request handling, TLS, etcd client)"] = max(
        0.0, total - sum(s for name, s in parts.items() if name != "updates and patches, all"))
    return {"sample_seconds": total, "profile_seconds": duration,
            "cores": total / duration if duration else None,
            "parts": {name: {"seconds": s, "share": s / total} for name, s in parts.items()}}


def analyse(go, binary, profile_path):
    """Runs `go tool pprof` on a saved profile; None if it cannot."""
    try:
        p = subprocess.run([go, "tool", "pprof", "-top", "-cum", "-nodecount=100000", "-nodefraction=0", "-edgefraction=0", binary, profile_path],
                           capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return split(p.stdout) if p.returncode == 0 else None
