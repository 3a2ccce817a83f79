#!/usr/bin/env python3
"""runplane benchmarks on the local kwok control plane (results and method: docs/benchmarks.md).

Every scenario prints a table, and writes <out>/<scenario>.json and a PNG plot.
Rates are measured side by side in one run on a noisy machine, so the figures
to compare are the ratios and the counts, not the absolute rates.

Talks to the apiserver with plain HTTPS (requests) and the admin client
certificate of the bench cluster (e2e/.cluster-bench); the controller runs as a child process.
Objects in bulk (pods, Jobs, GpuTasks) are created by the Rust load generator
examples/bench_load.rs (--loader), which keeps --concurrency requests in flight;
the gateway scenario loads `runplane api` with wrk.
"""
import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import requests
import urllib3

import apiprofile
from replay import replay

urllib3.disable_warnings()

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
STATE = os.environ.get("RUNPLANE_E2E_STATE", os.path.join(ROOT, "e2e", ".cluster-bench"))
PKI = os.path.join(STATE, "pki")
KUBECONFIG = os.path.join(STATE, "kubeconfig")
PORT = int(os.environ.get("RUNPLANE_E2E_APISERVER_PORT", "26443"))
BASE = f"https://127.0.0.1:{PORT}"
UA = "runplane-bench/1"
GROUP = "runplane.dev/v1alpha1"
ACCOUNTING_FINALIZER = "runplane.dev/accounting"

SCALES = {
    # tasks for throughput, Job controller at defaults, writes-per-task runs,
    # backlog tasks/accounts/quota, memory points. The backlog's quota is 40 %
    # of what its accounts' concurrency limits add up to (6 accounts: 80, 30
    # accounts: 400), so that the quota, not the limits, binds while tasks wait.
    "tiny": dict(throughput=200, job_defaults=100, writes=100, backlog=300, accounts=6, quota=32, memory=[2000, 5000]),
    "small": dict(throughput=1000, job_defaults=200, writes=200, backlog=2000, accounts=30, quota=160,
                  memory=[5000, 15000]),
    "full": dict(throughput=2000, job_defaults=300, writes=300, backlog=15000, accounts=30, quota=160,
                 memory=[15000, 100000], backlog_for=360, baseline_for=120),
}
# backlog_for: seconds from the backlog's first create after which the runner
# stops waiting for pods and reports what it saw (None: when every task has
# finished, or at the deadline the work's ideal makespan sets). 15,000 tasks
# of 1-4 s do not drain on two shared cores in the twenty minutes the whole
# bench should take: their creates alone take four to five minutes, and the
# quota stays as busy after that as the apiserver lets it, so a minute or two
# more show the steady state as well as fifteen.
# baseline_for: the same for the backlog's closed-loop baseline (None: until
# every task's pod is created); its steady state shows within a minute or two.

# The plans' limits (concurrent tasks, requests per minute), given to every
# controller and gateway the bench starts (--plan), so that the backlog's
# arithmetic and the processes agree whatever the built-in defaults are.
PLANS = {"free": (5, 30), "pro": (10, 60), "team": (25, 120)}


def plan_flags():
    return [f"--plan={name}={c},{rpm}" for name, (c, rpm) in PLANS.items()]


_local = threading.local()
# Bumped by fresh_cluster(): a new control plane has new certificates, and
# the connections to the old one are gone.
CLUSTER = {"generation": 0}


def session():
    s = getattr(_local, "s", None)
    if s is None or getattr(_local, "generation", None) != CLUSTER["generation"]:
        s = requests.Session()
        s.cert = (os.path.join(PKI, "admin.crt"), os.path.join(PKI, "admin.key"))
        s.verify = os.path.join(PKI, "ca.crt")
        s.headers["User-Agent"] = UA
        s.trust_env = False  # else REQUESTS_CA_BUNDLE overrides verify, and proxies apply
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=4)
        s.mount("https://", adapter)
        _local.s = s
        _local.generation = CLUSTER["generation"]
    return s


def plain():
    """A session for loopback endpoints other than the apiserver (no env proxies)."""
    s = requests.Session()
    s.trust_env = False
    return s


COUNT = {"n": 0}
COUNT_LOCK = threading.Lock()


def api(method, path, body=None, ok=(200, 201, 202), params=None, ctype="application/json", retries=5):
    """One apiserver call; every call the harness makes is counted."""
    for attempt in range(retries):
        with COUNT_LOCK:
            COUNT["n"] += 1
            COUNT.setdefault(method, 0)
            COUNT[method] += 1
        try:
            r = session().request(method, BASE + path, data=None if body is None else json.dumps(body),
                                  headers={"Content-Type": ctype}, params=params, timeout=60)
        except requests.RequestException:
            time.sleep(0.2 * (attempt + 1))
            continue
        if r.status_code in ok:
            return r.json() if r.content else None
        if r.status_code in (429, 500, 503, 504) or (r.status_code == 403 and "serviceaccount" in r.text):
            time.sleep(0.2 * (attempt + 1))
            continue
        raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:300]}")
    raise RuntimeError(f"{method} {path}: gave up after {retries} attempts")


def parallel(fn, items, workers):
    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(fn, items))


def now():
    return time.monotonic()


def load(args, path=None, body=None, count=0, start=0, items=None, status_patch=None, concurrency=None,
         times=False, keep=None, keep_selector=None, keep_for=None):
    """Creates objects with the Rust load generator, --concurrency requests in
    flight: `count` objects from `body` (a dict; "{i}" in it becomes the index
    start..start+count-1) in the collection `path`, or `items`, a list of
    (path, body) created in that order. With `status_patch`, each object's
    /status is merge-patched after its create. Returns the loader's report
    (created, seconds, requests, errors, create_requests, patch_requests, …);
    its requests count as the harness's own. With `times`, the report's
    "times" lists when each object's create succeeded, on this process's
    monotonic clock (now()), in input order. With `keep` (pods only), a
    closed loop: at most `keep` of the pods unfinished at once, the next
    created as soon as the loader's watch on `keep_selector` sees one end,
    and none started later than `keep_for` seconds after the first (the
    rest are skipped: time 0, the report's "skipped")."""
    cmd = [args.loader, "--kubeconfig", KUBECONFIG, "--concurrency", str(concurrency or args.concurrency)]
    if keep is not None:
        cmd += ["--keep", str(keep), "--keep-selector", keep_selector]
        if keep_for is not None:
            cmd += ["--keep-for", str(keep_for)]
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="bench-load-") as f, \
            tempfile.NamedTemporaryFile("r", suffix=".txt", prefix="bench-load-times-") as tf:
        if times:
            cmd += ["--times", tf.name]
        if items is not None:
            for p, b in items:
                f.write(json.dumps({"path": p, "body": b}) + "\n")
            cmd += ["--items", f.name]
        else:
            f.write(json.dumps(body))
            cmd += ["--path", path, "--body-file", f.name, "--from", str(start), "--to", str(start + count)]
        f.flush()
        if status_patch is not None:
            cmd += ["--status-patch", json.dumps(status_patch)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        # The loader writes Unix times; the watches use the monotonic clock.
        offset = time.time() - now()
        created_at = [float(x) - offset for x in open(tf.name).read().split()] if times else None
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"the loader failed ({p.returncode}): {p.stderr[-1000:]}")
    r = json.loads(lines[-1])
    if created_at is not None:
        r["times"] = created_at
    with COUNT_LOCK:
        COUNT["n"] += r["requests"]
        COUNT["POST"] = COUNT.get("POST", 0) + r["create_requests"]
        COUNT["PATCH"] = COUNT.get("PATCH", 0) + r["patch_requests"]
    if p.returncode != 0 or r["errors"]:
        raise RuntimeError(f"the loader had {r['errors']} errors ({p.returncode}): {p.stderr[-1000:]}")
    return r


def loader_summary(r):
    return {k: r[k] for k in ("created", "seconds", "rate", "requests", "retries", "concurrency", "ended_seen",
                              "skipped") if k in r}


def loader_note(r):
    return f"loader: {r['created']} creates in {r['seconds']:.2f}s = {r['rate']:.0f}/s"


# ---------------------------------------------------------------------------
# objects
# ---------------------------------------------------------------------------

def ensure_namespace(ns):
    api("POST", "/api/v1/namespaces", {"metadata": {"name": ns, "labels": {"runplane.dev/bench": "true"}}},
        ok=(201, 409))
    deadline = now() + 60
    while now() < deadline:
        try:
            r = session().get(f"{BASE}/api/v1/namespaces/{ns}/serviceaccounts/default", timeout=10)
        except requests.RequestException:
            time.sleep(0.2)
            continue
        if r.status_code == 200:
            return
        time.sleep(0.2)
    raise RuntimeError(f"no default service account in {ns}")


def fresh_cluster():
    """Replaces the bench control plane by a new, empty one (down.sh --purge,
    up.sh, the CRDs): every scenario starts on a fresh plane, with nothing
    an earlier one left to delete or to compete with. Deleting 15,000 tasks
    and their pods would take the apiserver minutes; a new plane about 25 s.
    Returns the seconds it took."""
    t = now()
    env = {**os.environ, "RUNPLANE_E2E_STATE": STATE}
    log = os.path.join(tempfile.gettempdir(), "runplane-bench-up.log")
    with open(log, "w") as f:
        for cmd in (["bash", os.path.join(ROOT, "e2e", "cluster", "down.sh"), "--purge"],
                    ["bash", os.path.join(ROOT, "e2e", "cluster", "up.sh")]):
            if subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
                raise RuntimeError(f"{' '.join(cmd[1:])} failed; see {log}")
    CLUSTER["generation"] += 1
    kubectl = os.environ.get("KUBECTL", "kubectl")
    crds = os.path.join(ROOT, "crds", "runplane.yaml")
    for cmd in ([kubectl, "--kubeconfig", KUBECONFIG, "apply", "--server-side", "-f", crds],
                [kubectl, "--kubeconfig", KUBECONFIG, "wait", "--for=condition=Established", "crd", "--all",
                 "--timeout=60s"]):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return now() - t


def account(name, plan, namespaces, limits=None, credits=10**12):
    spec = {"plan": plan, "namespaces": namespaces, "credits": credits}
    if limits:
        spec["limits"] = limits
    api("POST", f"/apis/{GROUP}/gpuaccounts",
        {"apiVersion": GROUP, "kind": "GpuAccount", "metadata": {"name": name, "labels": {"runplane.dev/bench": "true"}},
         "spec": spec}, ok=(201, 409))


def template(ns, name, duration, gpus=1):
    api("POST", f"/apis/{GROUP}/namespaces/{ns}/gputemplates",
        {"apiVersion": GROUP, "kind": "GpuTemplate", "metadata": {"name": name},
         "spec": {"image": "example.com/worker:1", "gpus": gpus,
                  "podMetadata": {"annotations": {"e2e.runplane.dev/duration": duration}}}}, ok=(201, 409))


def task_body(name, tpl):
    return {"apiVersion": GROUP, "kind": "GpuTask", "metadata": {"name": name},
            "spec": {"templateRef": {"name": tpl}, "input": {"prompt": name}}}


# Limits far above what a run can use, for accounts whose limits must not bind.
AMPLE = {"concurrentTasks": 100000, "requestsPerMinute": 1000000, "gpus": 100000}


def equivalent_pod(name, duration, label="raw"):
    """What runplane creates for a 1-GPU task (without the owner and finalizer),
    labelled bench=`label`."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"bench": label},
                         "annotations": {"e2e.runplane.dev/duration": duration}},
            "spec": {"restartPolicy": "Never", "activeDeadlineSeconds": 3600,
                     "containers": [{"name": "task", "image": "example.com/worker:1",
                                     "env": [{"name": "RUNPLANE_INPUT", "value": json.dumps({"prompt": name})}],
                                     "resources": {"limits": {"nvidia.com/gpu": "1"},
                                                   "requests": {"nvidia.com/gpu": "1"}}}]}}


# ---------------------------------------------------------------------------
# watching pods: local receive time of each pod's creation and end
# ---------------------------------------------------------------------------

class PodWatch:
    """Watches pods (all namespaces, with a label selector) and records when
    each was first seen, first seen bound to a node, first seen running,
    first seen finished, and first seen finished without runplane's
    accounting finalizer (released: the controller has charged its task and
    written its end)."""

    def __init__(self, selector):
        self.selector = selector
        self.added = {}
        self.bound = {}
        self.running = {}
        self.finished = {}
        self.released = {}
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(30)

    def _run(self):
        s = requests.Session()
        s.cert = (os.path.join(PKI, "admin.crt"), os.path.join(PKI, "admin.key"))
        s.verify = os.path.join(PKI, "ca.crt")
        s.headers["User-Agent"] = UA
        s.trust_env = False
        rv = api("GET", "/api/v1/pods", params={"labelSelector": self.selector, "limit": 1})["metadata"]["resourceVersion"]
        while not self.stop.is_set():
            try:
                with COUNT_LOCK:
                    COUNT["n"] += 1
                r = s.get(f"{BASE}/api/v1/pods", params={"watch": "1", "labelSelector": self.selector,
                                                         "resourceVersion": rv, "timeoutSeconds": 300,
                                                         "allowWatchBookmarks": "true"}, stream=True, timeout=400)
                self.ready.set()
                for line in r.iter_lines():
                    if self.stop.is_set():
                        break
                    if not line:
                        continue
                    t = now()
                    ev = json.loads(line)
                    obj = ev["object"]
                    if ev["type"] == "ERROR":
                        rv = api("GET", "/api/v1/pods", params={"labelSelector": self.selector, "limit": 1})["metadata"]["resourceVersion"]
                        break
                    rv = obj["metadata"]["resourceVersion"]
                    if ev["type"] == "BOOKMARK":
                        continue
                    key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
                    self.added.setdefault(key, t)
                    if obj.get("spec", {}).get("nodeName"):
                        self.bound.setdefault(key, t)
                    if obj.get("status", {}).get("phase") == "Running":
                        self.running.setdefault(key, t)
                    if obj.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                        self.finished.setdefault(key, t)
                        if ACCOUNTING_FINALIZER not in (obj["metadata"].get("finalizers") or []):
                            self.released.setdefault(key, t)
            except Exception:  # reconnect
                time.sleep(0.2)

    def close(self):
        self.stop.set()


# ---------------------------------------------------------------------------
# controller process
# ---------------------------------------------------------------------------

def proc_rss_mb(pid, field="VmRSS"):
    """A process's resident memory now (VmRSS), or the most it has had
    (VmHWM), in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return None


PLANE = ("kube-apiserver", "etcd", "kwok", "kube-scheduler", "kube-controller-manager")


def plane_cpu():
    """CPU seconds used so far by each process of the bench plane."""
    out = {}
    for name in PLANE:
        try:
            with open(os.path.join(STATE, "pids", f"{name}.pid")) as f:
                out[name] = proc_cpu_seconds(int(f.read().strip()))
        except (OSError, ValueError):
            pass
    return out


def cpu_used(before, after, seconds, per=None):
    """What each plane process used between two plane_cpu() snapshots: its
    share of a core, and milliseconds per item if `per` items were done."""
    out = {}
    for name in after:
        used = after[name] - before.get(name, 0.0)
        out[name] = {"cpu_seconds": used, "cores": used / seconds}
        if per:
            out[name]["ms_per_item"] = 1000 * used / per
    return out


def cpu_note(used):
    return ", ".join(f"{k} {v['cores']:.2f}" + (f" ({v['ms_per_item']:.1f} ms each)" if "ms_per_item" in v else "")
                     for k, v in used.items())


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Child:
    """A runplane process (`args` after the binary), its output in
    `<out>/<log>.log`, ready when its `ready_url` answers 200 (within
    `timeout` seconds) before the constructor returns."""

    def __init__(self, binary, args, out, log, ready_url, timeout, what):
        self.log = open(os.path.join(out, f"{log}.log"), "w")
        self.proc = subprocess.Popen([binary, *args], stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "RUST_LOG": "warn"})
        started = now()
        deadline = started + timeout
        while now() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the {what} exited; see {self.log.name}")
            try:
                if plain().get(ready_url, timeout=2).status_code == 200:
                    self.ready_seconds = now() - started
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the {what} never became ready")

    def rss_mb(self):
        return proc_rss_mb(self.proc.pid)

    def peak_rss_mb(self):
        return proc_rss_mb(self.proc.pid, "VmHWM")

    def cpu_seconds(self):
        return proc_cpu_seconds(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Controller(Child):
    def __init__(self, binary, out, name, extra=()):
        self.metrics = int(os.environ.get("RUNPLANE_BENCH_METRICS_PORT", "28080"))
        super().__init__(binary, ["controller", "--kubeconfig", KUBECONFIG, "--leader-election=false",
                                  "--metrics-addr", f"127.0.0.1:{self.metrics}", *plan_flags(), *extra],
                         out, f"controller-{name}", f"http://127.0.0.1:{self.metrics}/readyz", 120, "controller")

    def metrics_text(self):
        return plain().get(f"http://127.0.0.1:{self.metrics}/metrics", timeout=10).text

    def counter(self, name):
        """The value of one of the controller's counters, now."""
        return sum(v for _, _, v in samples_of(self.metrics_text(), (name,)))

    def settle(self, tasks, timeout=300):
        """Waits until the controller has reconciled each of `tasks` once
        (it looks at every task when it starts) and then one more second
        without a reconcile. Returns the seconds it took."""
        t = now()
        last = -1.0
        while now() < t + timeout:
            n = self.counter("runplane_reconcile_total")
            if n >= tasks and n == last:
                break
            last = n
            time.sleep(1)
        return now() - t

    def histogram(self, name):
        """(sum, count) of one of the controller's histograms, now."""
        got = {n: v for n, _, v in samples_of(self.metrics_text(), (f"{name}_sum", f"{name}_count"))}
        return got.get(f"{name}_sum", 0.0), got.get(f"{name}_count", 0.0)


class Gateway(Child):
    """`runplane api` on a free loopback port, ready (its caches filled)
    when the constructor returns."""

    def __init__(self, binary, out, name, key_namespace):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        super().__init__(binary, ["api", "--kubeconfig", KUBECONFIG, "--listen", f"127.0.0.1:{self.port}",
                                  "--namespace", key_namespace, *plan_flags()],
                         out, f"gateway-{name}", f"{self.base}/readyz", 300, "gateway")


# ---------------------------------------------------------------------------
# kube-controller-manager at its default client QPS
# ---------------------------------------------------------------------------

def kcm_pid():
    with open(os.path.join(STATE, "pids", "kube-controller-manager.pid")) as f:
        return int(f.read().strip())


def kcm_argv():
    """The command line the cluster's kube-controller-manager runs with now."""
    with open(f"/proc/{kcm_pid()}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def restart_kcm_at_defaults():
    """Restarts the cluster's kube-controller-manager with the flags it runs
    with less --kube-api-qps/--kube-api-burst: at the client's defaults."""
    pid = kcm_pid()
    want = [a for a in kcm_argv() if not re.match(r"--kube-api-(qps|burst)=", a)]
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not os.path.exists(f"/proc/{pid}"):
            break
        time.sleep(0.1)
    log = open(os.path.join(STATE, "logs", "kube-controller-manager.log"), "a")
    pidfile = os.path.join(STATE, "pids", "kube-controller-manager.pid")
    subprocess.Popen(["setsid", "bash", "-c", 'echo $$ >"$0"; exec "$@"', pidfile, *want],
                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    port = int(os.environ.get("RUNPLANE_E2E_CONTROLLER_MANAGER_PORT", "27257"))
    deadline = now() + 60
    while now() < deadline:
        try:
            if plain().get(f"https://127.0.0.1:{port}/healthz", verify=False, timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.2)
    time.sleep(2)


# ---------------------------------------------------------------------------
# apiserver request counters
# ---------------------------------------------------------------------------

SAMPLE = re.compile(r'^(\w+)(?:\{(.*)\})? ([-+0-9.eE]+|NaN|[-+]Inf)$')


def samples_of(text, names):
    """(name, labels, value) of the Prometheus samples with these metric names."""
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1) in names:
            yield m.group(1), dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")), float(m.group(3))


def request_key(labels):
    verb = labels.get("verb", "").lower()
    verb = {"post": "create", "put": "update"}.get(verb, verb)
    return verb, labels.get("group", ""), labels.get("resource"), labels.get("subresource", "")


def request_counts(latency=False):
    """apiserver_request_total by (verb, group, resource, subresource); with
    `latency`, also the sum and count of apiserver_request_duration_seconds
    by the same key."""
    text = session().get(f"{BASE}/metrics", timeout=30).text
    with COUNT_LOCK:
        COUNT["n"] += 1
    out, lat = {}, {}
    names = ("apiserver_request_total", "apiserver_request_duration_seconds_sum",
             "apiserver_request_duration_seconds_count")
    for name, labels, value in samples_of(text, names):
        key = request_key(labels)
        if name == "apiserver_request_total":
            out[key] = out.get(key, 0) + value
        else:
            pair = lat.setdefault(key, [0.0, 0.0])
            pair[0 if name.endswith("_sum") else 1] += value
    return (out, lat) if latency else out


def podgc_deletes():
    """The pods the controller-manager's pod GC has deleted (its
    pod_gc_collector_force_delete_pods_total): past
    --terminated-pod-gc-threshold (12,500 by default) finished pods it
    deletes the oldest. Pod deletes, but not runplane's."""
    port = int(os.environ.get("RUNPLANE_E2E_CONTROLLER_MANAGER_PORT", "27257"))
    s = plain()
    s.cert = (os.path.join(PKI, "admin.crt"), os.path.join(PKI, "admin.key"))
    text = s.get(f"https://127.0.0.1:{port}/metrics", verify=False, timeout=30).text
    return sum(v for _, _, v in samples_of(text, ("pod_gc_collector_force_delete_pods_total",)))


def mean_latency_ms(before, after, key):
    """Mean apiserver latency (ms) of the requests of `key` between two snapshots."""
    b, a = before.get(key, [0.0, 0.0]), after.get(key, [0.0, 0.0])
    n = a[1] - b[1]
    return (a[0] - b[0]) / n * 1000 if n > 0 else None


# ---------------------------------------------------------------------------
# scenarios
# ---------------------------------------------------------------------------

class ApiserverProfile:
    """A CPU profile of the apiserver (its /debug/pprof/profile), taken in
    the background: `seconds` long, from `delay` seconds after it is made.
    Saved to <out>/<name>.pprof; result() splits it (apiprofile.py) and
    counts the CPU of each part per pod that finished meanwhile."""

    def __init__(self, out, name, seconds, delay=0.0):
        self.path = os.path.join(out, f"{name}.pprof")
        self.seconds, self.delay = int(seconds), delay
        self.started = self.error = None
        self.thread = threading.Thread(target=self._take, daemon=True)
        self.thread.start()

    def _take(self):
        time.sleep(self.delay)
        self.started = now()
        try:
            r = session().get(f"{BASE}/debug/pprof/profile", params={"seconds": self.seconds},
                              timeout=self.seconds + 60)
            r.raise_for_status()
            with open(self.path, "wb") as f:
                f.write(r.content)
        except (requests.RequestException, OSError) as e:
            self.error = str(e)

    def result(self, finished_times):
        self.thread.join()
        if self.error:
            return {"error": self.error}
        go, binary = shutil.which("go"), shutil.which("kube-apiserver")
        split = apiprofile.analyse(go, binary, self.path) if go and binary else None
        if split is None:
            return {"profile": os.path.basename(self.path), "error": "no `go tool pprof` or kube-apiserver on PATH"}
        done = sum(1 for t in finished_times if self.started <= t <= self.started + self.seconds)
        for part in split["parts"].values():
            part["ms_per_finished_pod"] = 1000 * part["seconds"] / done if done else None
        return {"profile": os.path.basename(self.path), "started_seconds": self.started,
                "finished_pods": done, **split}


def profile_note(p):
    if not p or "parts" not in p:
        return f"no profile ({(p or {}).get('error')})"
    per = p["finished_pods"] or 0
    return (f"{p['cores']:.2f} cores over {p['profile_seconds']:.0f}s, {per} pods finished: " + ", ".join(
        f"{name} {100 * v['share']:.1f}%" + (f" ({v['ms_per_finished_pod']:.1f} ms/pod)" if per else "")
        for name, v in p["parts"].items() if name != "updates and patches, all"))


def wait_count(watch, n, timeout, field="added"):
    deadline = now() + timeout
    while now() < deadline and len(getattr(watch, field)) < n:
        time.sleep(0.05)
    return len(getattr(watch, field))


def throughput(args, sizes, out):
    n = sizes["throughput"]
    # Pods, Jobs and GpuTasks are all created by the Rust loader with the same
    # number of requests in flight, so the three rates compare.
    res = {"tasks": n, "connections": args.concurrency, "loader": "bench-load"}
    timeout = args.phase_timeout

    # Each path on a plane of its own, fresh: none competes with what the
    # one before left to finish (pods still running, ends still being
    # written), and no path waits for that. A fresh plane takes about 25 s;
    # letting 2,000 tasks settle took up to 100.
    planes = {}

    def fresh(path):
        planes[path] = fresh_cluster()

    # (b') The Job controller with the controller-manager at its default
    # client QPS (the scenario starts on a fresh plane).
    if not args.skip_kcm_defaults:
        restart_kcm_at_defaults()
        res["job_defaults"] = jobs(args, "bench-job-defaults", sizes["job_defaults"], "defaults", timeout)
        fresh("raw")
    res["kcm_flags_as_run"] = [f for f in kcm_argv()[1:] if "qps" in f or "burst" in f]

    # (a) raw pod creates
    ns = "bench-raw"
    ensure_namespace(ns)
    r, lr = creates_to_pods(args, f"/api/v1/namespaces/{ns}/pods", equivalent_pod("raw-{i}", "2s"), n, "bench=raw",
                            timeout)
    res["raw"] = r
    print(f"  raw pod creates: {r['created']} pods in {r['seconds']:.2f}s = {r['rate']:.1f}/s ({loader_note(lr)})",
          flush=True)
    print(f"    meanwhile {writes_note(r['apiserver_writes'], r['window_seconds'])}", flush=True)
    print(f"    cores used (CPU per pod): {cpu_note(r['plane_cpu'])}", flush=True)

    # (b) the Job controller, as the cluster runs it
    fresh("job_raised_qps")
    res["job_raised_qps"] = jobs(args, "bench-job-raised", n, "raised", timeout)

    # (c) runplane with ample quota: the loader creates GpuTasks, runplane their pods
    fresh("runplane")
    ns = "bench-tp"
    ensure_namespace(ns)
    account("bench-tp", "custom", [ns], limits=AMPLE)
    template(ns, "t2s", "2s")
    ctl = Controller(args.runplane, out, "throughput")
    try:
        time.sleep(2)
        cpu0 = ctl.cpu_seconds()
        r, lr = creates_to_pods(args, f"/apis/{GROUP}/namespaces/{ns}/gputasks", task_body("tp-{i}", "t2s"), n,
                                "runplane.dev/task", timeout)
        r["controller_cpu_seconds"], r["controller_rss_mb"] = ctl.cpu_seconds() - cpu0, ctl.rss_mb()
        res["runplane"] = r
        print(f"  runplane: {r['created']} pods in {r['seconds']:.2f}s = {r['rate']:.1f}/s "
              f"(controller CPU {r['controller_cpu_seconds']:.1f}s; {loader_note(lr)})", flush=True)
        print(f"    meanwhile {writes_note(r['apiserver_writes'], r['window_seconds'])}", flush=True)
        print(f"    cores used (CPU per task): {cpu_note(r['plane_cpu'])}", flush=True)
    finally:
        ctl.stop()

    # (c') runplane from a standing backlog: tasks that cannot start (their
    # account's concurrency limit is 0) until the limit is raised in one
    # patch. Only runplane creates pods from then on.
    fresh("runplane_backlog")
    ctl = Controller(args.runplane, out, "throughput-backlog")
    try:
        time.sleep(2)
        res["runplane_backlog"] = standing_backlog(args, ctl, n, timeout)
    finally:
        ctl.stop()
    res["fresh_plane_seconds"] = planes

    def ratio(a, b):
        return a["rate"] / b["rate"] if a and b and b["rate"] else None
    res["ratio_runplane_raw"] = ratio(res["runplane"], res["raw"])
    res["ratio_runplane_job_raised"] = ratio(res["runplane"], res["job_raised_qps"])
    if "job_defaults" in res:
        res["ratio_runplane_job_defaults"] = ratio(res["runplane"], res["job_defaults"])
    res["ratio_runplane_backlog_raw"] = ratio(res["runplane_backlog"], res["raw"])

    print(f"  runplane ÷ raw = {fmt(res['ratio_runplane_raw'])}, ÷ Job (raised QPS) = "
          f"{fmt(res['ratio_runplane_job_raised'])}, ÷ Job (default QPS) = "
          f"{fmt(res.get('ratio_runplane_job_defaults'))}", flush=True)
    print(f"  a different measurement: runplane's own pod creates from a standing backlog ÷ raw pod creates = "
          f"{fmt(res['ratio_runplane_backlog_raw'])}", flush=True)
    return res


def fmt(v):
    return f"{v:.2f}" if v is not None else "n/a"


def creates_to_pods(args, path, body, n, selector, timeout):
    """(a) and (c): n objects created by the loader, timed from the first
    create to the last of their pods seen in a watch on `selector`, with
    every write the apiserver took and the CPU the plane used meanwhile.
    Returns the path's figures and the loader's report."""
    w = PodWatch(selector)
    before, cpu_before = request_counts(), plane_cpu()
    t0 = now()
    lr = load(args, path, body, n)
    t_posted = now()
    seen = wait_count(w, n, timeout)
    window = now() - t0
    writes = write_rates(before, request_counts(), window)
    plane = cpu_used(cpu_before, plane_cpu(), window, seen)
    w.close()
    r = {"created": seen, "seconds": max(w.added.values()) - t0, "post_seconds": t_posted - t0,
         "loader": loader_summary(lr), "apiserver_writes": writes, "window_seconds": window,
         "apiserver_writes_per_second": sum(x["count"] for x in writes) / window, "plane_cpu": plane}
    r["rate"] = seen / r["seconds"]
    r["series"] = sorted(t - t0 for t in w.added.values())
    return r, lr


def jobs(args, ns, count, label, timeout):
    """(b): `count` one-pod Jobs by the loader; the Job controller's pods,
    timed from the first create to the last pod seen."""
    ensure_namespace(ns)
    w = PodWatch(f"bench-job={label}")
    body = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "job-{i}"},
            "spec": {"backoffLimit": 0, "completions": 1, "parallelism": 1,
                     "template": {"metadata": {"labels": {"bench-job": label},
                                               "annotations": {"e2e.runplane.dev/duration": "2s"}},
                                  "spec": equivalent_pod("job-{i}", "2s")["spec"]}}}
    cpu_before = plane_cpu()
    t0 = now()
    lr = load(args, f"/apis/batch/v1/namespaces/{ns}/jobs", body, count)
    t_posted = now()
    seen = wait_count(w, count, timeout)
    plane = cpu_used(cpu_before, plane_cpu(), now() - t0, seen)
    w.close()
    r = {"tasks": count, "created": seen, "seconds": (max(w.added.values()) - t0) if w.added else None,
         "post_seconds": t_posted - t0, "complete": seen == count, "loader": loader_summary(lr),
         "plane_cpu": plane}
    if seen < count:
        r["seconds"] = now() - t0
    r["rate"] = seen / r["seconds"]
    r["series"] = sorted(t - t0 for t in w.added.values())
    print(f"  Job controller ({label}): {seen}/{count} pods in {r['seconds']:.2f}s = {r['rate']:.1f}/s "
          f"({loader_note(lr)})", flush=True)
    print(f"    cores used (CPU per Job): {cpu_note(plane)}", flush=True)
    return r


def write_rates(before, after, seconds):
    """Every write the apiserver took between two request_counts()
    snapshots, by verb and resource, most first, with its rate."""
    deltas = sorted(((k, after.get(k, 0) - before.get(k, 0)) for k in after if k[0] in WRITE_VERBS),
                    key=lambda x: -x[1])
    return [{"verb": k[0], "resource": k[2] + ("/" + k[3] if k[3] else ""), "group": k[1], "count": v,
             "per_second": v / seconds} for k, v in deltas if v > 0]


def writes_note(writes, seconds):
    total = sum(x["count"] for x in writes) / seconds
    return f"the apiserver took {total:.0f} writes/s: " + ", ".join(
        f"{x['verb']} {x['resource']} {x['per_second']:.0f}/s" for x in writes[:6])


def standing_backlog(args, ctl, n, timeout):
    """(c'): n GpuTasks created while their account's concurrency limit is 0,
    so that none can start; once the controller has recorded why each waits
    (one Queued status per task, before the clock starts), the limit is
    raised in one patch. Measures runplane's own pod-create rate from that
    patch to the last pod seen: no loader competes for the apiserver, so this
    is the operator's ceiling, not the create path's."""
    ns = acct = "bench-tpb"
    ensure_namespace(ns)
    account(acct, "custom", [ns], limits={**AMPLE, "concurrentTasks": 0})
    template(ns, "t2s", "2s")
    lr = load(args, f"/apis/{GROUP}/namespaces/{ns}/gputasks", task_body("tpb-{i}", "t2s"), n)
    t_created = now()
    deadline = now() + timeout
    waiting = 0
    while now() < deadline:
        items = api("GET", f"/apis/{GROUP}/namespaces/{ns}/gputasks")["items"]
        waiting = sum(1 for t in items if (t.get("status") or {}).get("waitReason") == "AccountLimit")
        if waiting == n:
            break
        time.sleep(1)
    settle = now() - t_created
    time.sleep(3)  # the Queued events of the last statuses
    w = PodWatch("runplane.dev/task")
    before = request_counts()
    pass_before = ctl.histogram("runplane_admission_pass_seconds")
    cpu0 = ctl.cpu_seconds()
    t0 = now()
    release = {"spec": {"limits": {"concurrentTasks": AMPLE["concurrentTasks"]}}}
    api("PATCH", f"/apis/{GROUP}/gpuaccounts/{acct}", release, ctype="application/merge-patch+json")
    seen = wait_count(w, n, timeout)
    window = now() - t0
    after = request_counts()
    pass_after = ctl.histogram("runplane_admission_pass_seconds")
    w.close()
    # Everything written to the apiserver meanwhile (runplane's pods, and the
    # statuses, events and releases of the tasks that already ran; the
    # scheduler's bindings and events; kwok's pod statuses): how busy it was.
    writes = write_rates(before, after, window)
    passes = pass_after[1] - pass_before[1]
    r = {"tasks": n, "created": seen, "waiting_before_release": waiting, "queued_statuses_seconds": settle,
         "seconds": (max(w.added.values()) - t0) if w.added else None,
         "first_pod_seconds": (min(w.added.values()) - t0) if w.added else None,
         "controller_cpu_seconds": ctl.cpu_seconds() - cpu0, "loader": loader_summary(lr),
         "apiserver_writes": writes, "apiserver_writes_per_second": sum(x["count"] for x in writes) / window,
         "admission_passes": passes,
         "admission_pass_mean_ms": (pass_after[0] - pass_before[0]) / passes * 1000 if passes else None}
    if seen < n or not r["seconds"]:
        r["seconds"] = now() - t0
    r["rate"] = seen / r["seconds"]
    r["series"] = sorted(t - t0 for t in w.added.values())
    print(f"  runplane from a standing backlog: {seen}/{n} pods in {r['seconds']:.2f}s = {r['rate']:.1f}/s "
          f"after the limit was raised (first pod after {r['first_pod_seconds'] or 0:.2f}s; controller CPU "
          f"{r['controller_cpu_seconds']:.1f}s; {waiting}/{n} tasks had their Queued status "
          f"{settle:.1f}s after the last create)", flush=True)
    print(f"    meanwhile {writes_note(writes, window)}; {passes:.0f} admission passes of "
          f"{r['admission_pass_mean_ms'] or 0:.0f} ms on average (their pod creates included)", flush=True)
    if waiting < n:
        print(f"  WARNING: only {waiting} of {n} tasks showed AccountLimit before the release", flush=True)
    return r


WRITE_VERBS = ("create", "update", "patch", "delete", "apply", "deletecollection")


def runplane_writes(before, after, n, harness_creates, other_events, podgc=0):
    """The writes only runplane makes, from two apiserver_request_total
    snapshots: runplane.dev resources (less the harness's own GpuTask
    creates), pods without subresource (the scheduler binds through
    pods/binding, kwok writes pods/status; less the pod GC's deletes), and
    events (less those of other reporters). Returns (rows, total, every
    write delta)."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    delta = {k: v for k, v in delta.items() if v > 0}
    rows = []

    def take(verb, group, resource, sub, minus=0, note=""):
        v = delta.get((verb, group, resource, sub), 0) - minus
        if v > 0:
            rows.append({"verb": verb, "resource": f"{resource}{'/' + sub if sub else ''}", "group": group,
                         "count": v, "per_task": v / n, "note": note})

    for (verb, group, resource, sub) in sorted(delta):
        if verb not in WRITE_VERBS:
            continue
        if group == "runplane.dev" and resource == "gputasks" and verb == "create" and sub == "":
            take(verb, group, resource, sub, minus=harness_creates,
                 note=f"minus the harness's {harness_creates} create requests")
        elif group == "runplane.dev":
            take(verb, group, resource, sub)
        elif group == "" and resource == "pods" and sub == "" and verb == "delete" and podgc:
            # A pod the GC marks while runplane's finalizer holds it gets a
            # delete from kwok too once released (the kubelet's final
            # delete); the apiserver does not say whose a delete is.
            take(verb, group, resource, sub, minus=podgc,
                 note=f"minus the pod GC's {podgc:.0f}; may hold kwok's final deletes of the pods it marked")
        elif group == "" and resource == "pods" and sub == "":
            take(verb, group, resource, sub)
        elif group == "events.k8s.io" and resource == "events" and verb == "create":
            take(verb, group, resource, sub, minus=other_events, note=f"minus {other_events} events of other reporters")
        elif group == "events.k8s.io" and resource == "events":
            take(verb, group, resource, sub, note="series updates")
    total = sum(r["count"] for r in rows)
    others = [{"verb": k[0], "group": k[1], "resource": k[2] + ("/" + k[3] if k[3] else ""), "count": v}
              for k, v in sorted(delta.items()) if k[0] in WRITE_VERBS]
    return rows, total, others


RUNPLANE_REPORTER = "runplane.dev/controller"


def events_by_reporter(namespaces):
    """Events in the namespaces (paged): counts by reporting controller, and
    runplane's by type and reason ("Normal Started")."""
    out, reasons = {}, {}
    for ns in namespaces:
        cont = None
        while True:
            params = {"limit": 500, **({"continue": cont} if cont else {})}
            page = api("GET", f"/apis/events.k8s.io/v1/namespaces/{ns}/events", params=params)
            for e in page["items"]:
                r = e.get("reportingController") or ""
                out[r] = out.get(r, 0) + 1
                if r == RUNPLANE_REPORTER:
                    reason = f"{e.get('type')} {e.get('reason')}"
                    reasons[reason] = reasons.get(reason, 0) + 1
            cont = page["metadata"].get("continue")
            if not cont:
                break
    return out, reasons


def writes_per_task(args, sizes, out):
    """Writes per task, three times in one run, each on a fresh control
    plane: the controller as it runs by default (routine events within its
    budget of 10 a second after a burst of 50), with an event at every
    transition (--transition-event-rate=0), and with
    --transition-events=false (events only for what needs a look)."""
    res = {"tasks": sizes["writes"], "runs": []}
    for i, (label, ns, extra) in enumerate((
            ("default", "bench-writes", []),
            ("every transition event", "bench-writes-all", ["--transition-event-rate=0"]),
            ("transition events off", "bench-writes-quiet", ["--transition-events=false"]))):
        if i:
            fresh_cluster()
        res["runs"].append(writes_run(args, sizes["writes"], ns, label, extra, out))
    res["write_costs"] = write_costs(args, sizes["writes"])
    return res


def write_costs(args, n):
    """What one write of each kind costs the apiserver in CPU: n of each, 16
    at a time, with no controller running, the apiserver's CPU seconds
    before and after each kind. A ConfigMap for comparison with GpuTasks:
    their creates, their metadata patches, and their status written as the
    controller writes it (a server-side apply of the whole status, with the
    resourceVersion it decided from) beside the same status as a JSON merge
    patch, each on tasks of its own: first on a task without status, then
    a second time with a few fields changed, as a task's later writes do."""
    ns = "bench-write-costs"
    ensure_namespace(ns)
    tasks = f"/apis/{GROUP}/namespaces/{ns}/gputasks"

    def status(i, again):
        done = FINISHED_STATUS if again else {"phase": "Queued", "waitReason": "ClusterQuota"}
        return {**done, "account": "a", "attempts": 1, "gpus": 1, "podName": f"p-{i}",
                "message": "the task completed" if again else "waiting for GPUs", "observedGeneration": 1,
                "conditions": [{"type": "Admitted", "status": "True" if again else "False",
                                "reason": "PodCreated" if again else "Waiting", "message": "m",
                                "lastTransitionTime": "2026-12-01T00:00:00Z"}]}

    def merge(i, again=False):
        return api("PATCH", f"{tasks}/w-{i}/status", {"status": status(i, again)},
                   ctype="application/merge-patch+json")

    def apply(i, again=False):
        current = api("GET", f"{tasks}/a-{i}")
        body = {"apiVersion": GROUP, "kind": "GpuTask",
                "metadata": {"name": f"a-{i}", "resourceVersion": current["metadata"]["resourceVersion"]},
                "status": status(i, again)}
        return api("PATCH", f"{tasks}/a-{i}/status", body, params={"fieldManager": "bench", "force": "true"},
                   ctype="application/apply-patch+yaml")

    parallel(lambda i: api("POST", tasks, task_body(f"a-{i}", "t")), range(n), 16)
    kinds = [
        ("create configmaps", lambda i: api("POST", f"/api/v1/namespaces/{ns}/configmaps",
                                            {"metadata": {"name": f"c-{i}"}, "data": {"k": "v"}})),
        ("patch configmaps", lambda i: api("PATCH", f"/api/v1/namespaces/{ns}/configmaps/c-{i}",
                                           {"data": {"k": f"v{i}"}}, ctype="application/merge-patch+json")),
        ("create gputasks", lambda i: api("POST", tasks, task_body(f"w-{i}", "t"))),
        ("patch gputasks/status", merge),
        ("patch gputasks/status again", lambda i: merge(i, True)),
        # Each apply is preceded by a GET of the task (for its
        # resourceVersion); its CPU is measured below and taken off.
        ("apply gputasks/status", apply),
        ("apply gputasks/status again", lambda i: apply(i, True)),
        ("get gputasks", lambda i: api("GET", f"{tasks}/a-{i}")),
        ("patch gputasks", lambda i: api("PATCH", f"{tasks}/w-{i}", {"metadata": {"labels": {"k": f"v{i}"}}},
                                         ctype="application/merge-patch+json")),
    ]
    out = {}
    for kind, fn in kinds:
        before, t = plane_cpu().get("kube-apiserver", 0.0), now()
        parallel(fn, range(n), 16)
        used = plane_cpu().get("kube-apiserver", 0.0) - before
        out[kind] = {"requests": n, "seconds": now() - t, "apiserver_cpu_ms": 1000 * used / n}
    for kind in ("apply gputasks/status", "apply gputasks/status again"):
        out[kind]["apiserver_cpu_ms_with_get"] = out[kind]["apiserver_cpu_ms"]
        out[kind]["apiserver_cpu_ms"] -= out["get gputasks"]["apiserver_cpu_ms"]
    print("  apiserver CPU per write: " + ", ".join(f"{k} {v['apiserver_cpu_ms']:.1f} ms" for k, v in out.items()),
          flush=True)
    return out


def writes_run(args, n, ns, label, extra, out):
    ensure_namespace(ns)
    account(ns, "custom", [ns], limits=AMPLE)
    template(ns, "t1s", "1s")
    ctl = Controller(args.runplane, out, ns, extra=extra)
    try:
        time.sleep(3)
        before = request_counts()
        c0 = dict(COUNT)
        lr = load(args, f"/apis/{GROUP}/namespaces/{ns}/gputasks", task_body("w-{i}", "t1s"), n)
        deadline = now() + args.phase_timeout
        done = 0
        while now() < deadline:
            items = api("GET", f"/apis/{GROUP}/namespaces/{ns}/gputasks")["items"]
            done = sum(1 for t in items if (t.get("status") or {}).get("phase") in ("Completed", "Failed"))
            pods = api("GET", f"/api/v1/namespaces/{ns}/pods")["items"]
            # Finished pods stay (with their logs) until their task goes; wait
            # until every pod has ended and been released by runplane.
            held = [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                    or ACCOUNTING_FINALIZER in (p["metadata"].get("finalizers") or [])]
            if done == n and not held:
                break
            time.sleep(1)
        time.sleep(4)  # let account status and event writes land
        after = request_counts()
        harness = {k: COUNT.get(k, 0) - c0.get(k, 0) for k in ("POST", "GET", "PATCH", "DELETE", "n")}
        by_reporter, reasons = events_by_reporter([ns])
    finally:
        ctl.stop()
    # The loader's create requests, retried and 409 ones included: the
    # apiserver counts every one of them.
    harness_creates = lr["create_requests"]
    other_events = sum(v for r, v in by_reporter.items() if r != RUNPLANE_REPORTER)
    rows, total, others = runplane_writes(before, after, n, harness_creates, other_events)
    res = {"label": label, "controller_flags": extra, "tasks": n, "completed": done, "rows": rows,
           "writes_total": total, "writes_per_task": total / n, "events_by_reporter": by_reporter,
           "runplane_events": reasons,
           "harness_requests": harness, "all_write_deltas": others, "loader": loader_summary(lr),
           "harness_task_creates": harness_creates}
    print(f"  {label} ({' '.join(extra) or 'no flags'}): {n} tasks, {done} finished: {total:.0f} runplane writes "
          f"= {total / n:.2f} per task", flush=True)
    for r in rows:
        print(f"    {r['verb']:8} {r['group'] + '/' if r['group'] else ''}{r['resource']:22} {r['count']:7.0f} "
              f"{r['per_task']:5.2f}/task {r['note']}")
    print("    runplane's events: " + (", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none"),
          flush=True)
    return res


def backlog_work(n, namespaces, durations):
    """The backlog's tasks, in creation order: (namespace, name, template).
    Each account submits in proportion to its plan's concurrency limit, in
    interleaved rounds (per 5 concurrent tasks of limit, one task a round),
    and each account's tasks cycle through the run times."""
    plans = list(PLANS)
    limit_of = {ns: PLANS[plans[i % len(plans)]][0] for i, ns in enumerate(namespaces)}
    unit = 5
    rounds = []
    for r in range(max(limit_of.values()) // unit):
        rounds += [ns for ns in namespaces if r < limit_of[ns] // unit]
    names = list(durations)
    work = []
    for i in range(n):
        c, slot = divmod(i, len(rounds))
        work.append((rounds[slot], f"bl-{i}", names[(c + slot) % len(names)]))
    return work, limit_of


def pod_hold(added, bound, running, finished):
    """Where a pod's hold on its GPU goes: waiting for the scheduler, for the
    node (kwok) to start it, and running (to its end seen): mean and p50
    seconds of each step, over the pods seen in every state in order."""
    steps = {"created_to_bound": [], "bound_to_running": [], "running_to_end": []}
    for k, end in finished.items():
        if k in bound and k in running and added[k] <= bound[k] <= running[k] <= end:
            steps["created_to_bound"].append(bound[k] - added[k])
            steps["bound_to_running"].append(running[k] - bound[k])
            steps["running_to_end"].append(end - running[k])
    return {name: {"mean_s": sum(v) / len(v), "p50_s": sorted(v)[len(v) // 2], "pods": len(v)}
            for name, v in steps.items() if v}


def hold_note(hold):
    return ", ".join(f"{name.replace('_', ' ')} {v['mean_s']:.2f} / {v['p50_s']:.2f} s" for name, v in hold.items())


def gap_figures(rp):
    """The replay's freed GPU -> next pod gaps: percentiles and most (ms),
    how many, and the starts it had no open slot for."""
    gaps = sorted(rp["gaps"])

    def pct(p):
        return gaps[min(len(gaps) - 1, int(p / 100 * len(gaps)))] * 1000 if gaps else None
    return {"freed_to_next_p50_ms": pct(50), "freed_to_next_p90_ms": pct(90), "freed_to_next_p99_ms": pct(99),
            "freed_to_next_max_ms": gaps[-1] * 1000 if gaps else None, "gaps": len(gaps),
            "gaps_open_at_end": rp["open_at_end"], "starts_without_open_slot": rp["unpaired_starts"]}


def ms(v):
    return f"{v:.0f} ms" if v is not None else "n/a"


def gaps_note(r):
    return (f"freed GPU -> next pod: p50 {ms(r['freed_to_next_p50_ms'])}, p90 {ms(r['freed_to_next_p90_ms'])}, "
            f"p99 {ms(r['freed_to_next_p99_ms'])} ({r['gaps']} gaps; {r['starts_without_open_slot']} starts the "
            f"replay had no open slot for)")


def share(gpu_seconds, seconds, quota):
    """GPU-seconds as a share of the quota over `seconds` (None over none)."""
    return gpu_seconds / (quota * seconds) if seconds else None


def finish_rate(times, lo=float("-inf"), hi=float("inf")):
    """Pods finished a second, from the first end to the last within [lo, hi]."""
    done = sorted(t for t in times if lo <= t <= hi)
    return (len(done) - 1) / (done[-1] - done[0]) if len(done) > 1 else None


def quotient(a, b):
    return a / b if a is not None and b else None


def percent(v):
    return f"{100 * v:.1f}%" if v is not None else "n/a"


# How long the backlog waits after its stop for the controller to release
# the pods that have finished, so that their writes are counted.
RELEASE_WAIT = 60


def backlog(args, sizes, out):
    n, n_acc, quota = sizes["backlog"], sizes["accounts"], sizes["quota"]
    plans = list(PLANS)
    durations = {f"d{i}": float(secs) for i, secs in enumerate(args.backlog_seconds.split(","))}
    namespaces = [f"bench-bl-{i:02d}" for i in range(n_acc)]
    parallel(ensure_namespace, namespaces, 8)
    for i, ns in enumerate(namespaces):
        account(ns, plans[i % len(plans)], [ns])
        for b, secs in durations.items():
            template(ns, b, f"{int(secs * 1000)}ms")
    work, limit_of = backlog_work(n, namespaces, durations)
    gpu_seconds = sum(durations[b] for _, _, b in work)
    # No schedule can beat either bound: all the work on the whole quota, or
    # one account's work at its plan's concurrency limit (1-GPU tasks).
    per_account = {}
    for ns, _, b in work:
        per_account[ns] = per_account.get(ns, 0.0) + durations[b]
    ideal = gpu_seconds / quota
    ideal_limits = max([ideal] + [w / limit_of[ns] for ns, w in per_account.items()])
    ctl = Controller(args.runplane, out, "backlog", extra=["--gpu-quota", str(quota), *args.backlog_controller_flag])
    try:
        time.sleep(2)
        before, lat_before = request_counts(latency=True)
        podgc_before = podgc_deletes()
        pass_before = ctl.histogram("runplane_admission_pass_seconds")
        w = PodWatch("runplane.dev/task")
        t0 = now()
        cpu0, plane0 = ctl.cpu_seconds(), plane_cpu()
        # One loader run, in this order: the accounts and durations interleave.
        lr = load(args, items=[(f"/apis/{GROUP}/namespaces/{ns}/gputasks", task_body(name, b)) for ns, name, b in work],
                  times=True)
        t_posted = now()
        # Where the apiserver's CPU goes once the creates are over.
        prof = None if args.no_profile else ApiserverProfile(out, "backlog-apiserver", args.profile_seconds, delay=5)
        deadline = now() + max(args.phase_timeout, 4 * ideal_limits + 60)
        if sizes.get("backlog_for"):
            deadline = min(deadline, max(t0 + sizes["backlog_for"], t_posted + 60))
        samples = []
        rss = []
        while now() < deadline and len(w.finished) < n:
            t = now() - t0
            running = len(w.added) - len(w.finished)
            samples.append((t, n - len(w.added) if t >= (t_posted - t0) else None, running, len(w.finished)))
            rss.append((t, ctl.rss_mb()))
            time.sleep(0.5)
        # Every task's end written and its pod released, so that the writes
        # counted below are all of them (a controller behind on the apiserver
        # may need a while).
        t_all_finished = now()
        while now() < t_all_finished + RELEASE_WAIT and len(w.released) < len(w.finished):
            time.sleep(0.5)
        catch_up = now() - t_all_finished
        w.close()
        cpu = ctl.cpu_seconds() - cpu0
        plane = cpu_used(plane0, plane_cpu(), now() - t0, len(w.finished))
        rss_peak = max(v for _, v in rss) if rss else ctl.rss_mb()
        time.sleep(4)  # the last charges and events
        after, lat_after = request_counts(latency=True)
        podgc = podgc_deletes() - podgc_before
        pass_after = ctl.histogram("runplane_admission_pass_seconds")
        profiled = prof.result(w.finished.values()) if prof else None
    finally:
        ctl.stop()
    passes = pass_after[1] - pass_before[1]
    added, finished = dict(w.added), dict(w.finished)
    release_lag = sorted(t - finished[k] for k, t in w.released.items() if k in finished)
    created = {(ns, name): t for (ns, name, _), t in zip(work, lr["times"]) if t > 0}
    account_of = {k: k[0] for k in list(created) + list(added)}
    running = dict(w.running)
    rp = replay(created, added, finished, account_of, limit_of, quota, split=t_posted, running=running)
    hold = pod_hold(added, dict(w.bound), running, finished)
    rate_after = finish_rate(finished.values(), lo=t_posted)
    gaps = gap_figures(rp)
    # The makespan only of a run that finished every task.
    makespan = (max(finished.values()) - t0) if len(finished) == n else None
    before_split, after_split = rp["parts"]
    # What the backlog cost the apiserver per task, with everything the
    # controller writes for a task that waits.
    by_reporter, reasons = events_by_reporter(namespaces)
    other_events = sum(v for r, v in by_reporter.items() if r != RUNPLANE_REPORTER)
    rows, total, _ = runplane_writes(before, after, n, lr["create_requests"], other_events, podgc)
    res = {"tasks": n, "accounts": n_acc, "quota_gpus": quota, "gpu_seconds_demand": gpu_seconds,
           "controller_flags": args.backlog_controller_flag,
           "run_seconds": list(durations.values()),
           "concurrency_limit_sum": sum(limit_of.values()), "tasks_per_account": {
               ns: sum(1 for x, _, _ in work if x == ns) for ns in namespaces},
           "started": len(added), "finished": len(finished),
           "post_seconds": t_posted - t0, "loader": loader_summary(lr),
           "waited_seconds": rp["waited_seconds"], "window_seconds": [rp["window"][0] - t0, rp["window"][1] - t0],
           "utilization": share(rp["used_gpu_seconds"], rp["waited_seconds"], quota),
           "utilization_of_allowed": rp["used_gpu_seconds"] / rp["allowed_gpu_seconds"]
           if rp["allowed_gpu_seconds"] else None,
           # The same over the part of that time while the loader was still
           # creating tasks, and over the part after its last create.
           "utilization_while_creating": share(before_split[0], before_split[1], quota),
           "waited_while_creating_seconds": before_split[1],
           "utilization_after_creating": share(after_split[0], after_split[1], quota),
           "waited_after_creating_seconds": after_split[1],
           # GPU-seconds of pods running (first seen running to end) over the
           # same time: what of the held GPUs did work.
           "utilization_running": share(before_split[2] + after_split[2], rp["waited_seconds"], quota),
           "utilization_running_after_creating": share(after_split[2], after_split[1], quota),
           "pod_hold": hold, "finished_per_second_after_creating": rate_after,
           "stopped_by_time_limit": len(finished) < n, "time_limit_seconds": sizes.get("backlog_for"),
           "ideal_makespan": ideal, "measured_makespan": makespan,
           "ideal_makespan_with_account_limits": ideal_limits, **gaps,
           "gaps_ms": [round(g * 1000, 2) for g in sorted(rp["gaps"])],
           # The controller's own pace on the tasks' ends: pod seen finished
           # -> pod seen released (task charged, its end written).
           "released": len(release_lag), "catch_up_seconds": catch_up,
           "end_to_release_p50_ms": release_lag[len(release_lag) // 2] * 1000 if release_lag else None,
           "end_to_release_p99_ms": release_lag[min(len(release_lag) - 1, int(0.99 * len(release_lag)))] * 1000
           if release_lag else None,
           "controller_cpu_seconds": cpu, "plane_cpu": plane, "controller_rss_peak_mb": rss_peak, "samples": samples, "rss": rss,
           "writes": rows, "writes_per_task": total / n, "events_by_reporter": by_reporter,
           "runplane_events": reasons, "podgc_deletes": podgc, "apiserver_profile": profiled,
           # What a gap is made of: the controller's admission passes (their
           # whole time, the pod creates they wait for included), and how
           # long the apiserver took per write meanwhile.
           "admission_passes": passes,
           "admission_pass_mean_ms": (pass_after[0] - pass_before[0]) / passes * 1000 if passes else None,
           "apiserver_mean_ms": {
               f"{v} {r}{'/' + sr if sr else ''}": mean_latency_ms(lat_before, lat_after, (v, g, r, sr))
               for v, g, r, sr in (("create", "", "pods", ""), ("apply", "runplane.dev", "gputasks", "status"),
                                   ("create", "events.k8s.io", "events", ""),
                                   ("create", "runplane.dev", "gputasks", ""))}}

    print(f"  {n} tasks, {n_acc} accounts (limits sum {res['concurrency_limit_sum']}), quota {quota} GPUs, "
          f"{gpu_seconds:.0f} GPU-s of work, created in {t_posted - t0:.1f}s", flush=True)
    print(f"  while tasks waited ({rp['waited_seconds']:.1f}s): GPU use {100 * (res['utilization'] or 0):.1f}% of the "
          f"quota, {100 * (res['utilization_of_allowed'] or 0):.1f}% of what the quota and the waiting accounts' "
          f"limits allowed", flush=True)
    print(f"  of that, while the loader still created tasks: {percent(res['utilization_while_creating'])} over "
          f"{before_split[1]:.0f}s; after its last create: {percent(res['utilization_after_creating'])} over "
          f"{after_split[1]:.0f}s", flush=True)
    if res["utilization_running"] is not None:
        print(f"  GPUs running (pod first seen running to its end) over the same time: "
              f"{percent(res['utilization_running'])} of the quota; after the last create "
              f"{percent(res['utilization_running_after_creating'])}"
              + (f", {rate_after:.1f} tasks finished a second" if rate_after else ""), flush=True)
    if hold:
        print(f"  a pod's hold on its GPU (mean / p50): {hold_note(hold)}", flush=True)
    if len(finished) < n:
        print(f"  stopped {deadline - t0:.0f}s after the first create with {len(added)} of {n} tasks started "
              f"and {len(finished)} finished" + (f" (--backlog-for {sizes['backlog_for']})"
                                                 if sizes.get("backlog_for") else ""), flush=True)
    measured = f"{makespan:.1f}s" if makespan is not None else "not reached"
    print(f"  makespan ideal {ideal:.1f}s (with the accounts' limits {ideal_limits:.1f}s), measured {measured}; "
          f"{gaps_note(res)}", flush=True)
    print(f"  cores used (CPU per finished task): {cpu_note(plane)}", flush=True)
    print(f"  controller CPU {cpu:.1f}s, RSS peak {rss_peak:.1f} MB; runplane writes {total / n:.2f} per task "
          f"(" + ", ".join(f"{r['verb']} {r['resource']} {r['per_task']:.2f}" for r in rows) + ")", flush=True)
    print("  runplane's events: " + (", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none"),
          flush=True)
    print(f"  pod end -> released by the controller: p50 {ms(res['end_to_release_p50_ms'])}, p99 "
          f"{ms(res['end_to_release_p99_ms'])} ({len(release_lag)} of {len(finished)} released; the last "
          f"{catch_up:.1f}s after the last pod ended)", flush=True)
    if profiled:
        print(f"  apiserver CPU after the last create (a profile): {profile_note(profiled)}", flush=True)
    print(f"  {passes:.0f} admission passes, {ms(res['admission_pass_mean_ms'])} on average (pod creates included); "
          f"apiserver mean latency: " + ", ".join(f"{k} {ms(v)}" for k, v in res["apiserver_mean_ms"].items()),
          flush=True)
    # GPUs in use (and allowed) over time, for the plot
    res["inuse"] = [(t - t0, u, al, wt, d, r) for t, u, al, wt, d, r in downsampled(rp["series"])]
    if args.no_baseline:
        return res
    # runplane's part after its last create is what compares: from then on no
    # GpuTask creates compete with its pods, as none compete with the baseline's.
    b = res["baseline"] = closed_loop_baseline(args, sizes, out, work, durations, namespaces, quota, ideal)
    res["ratio_held_to_baseline"] = quotient(res["utilization_after_creating"], b["utilization"])
    res["ratio_running_to_baseline"] = quotient(res["utilization_running_after_creating"], b["utilization_running"])
    res["ratio_finished_per_second_to_baseline"] = quotient(rate_after, b["finished_per_second"])
    print(f"  runplane after its last create ÷ the closed-loop baseline: GPUs held "
          f"{fmt(res['ratio_held_to_baseline'])}, GPUs running {fmt(res['ratio_running_to_baseline'])}, "
          f"tasks finished a second {fmt(res['ratio_finished_per_second_to_baseline'])}", flush=True)
    return res


def downsampled(series, most=4000):
    return series[::max(1, len(series) // most)]


def closed_loop_baseline(args, sizes, out, work, durations, namespaces, quota, ideal):
    """What the plane itself allows the backlog: on a fresh plane, the same
    work's pods (no GpuTasks, no accounts), created by the loader in the same
    order as a closed loop that keeps `quota` pods unfinished and creates the
    next the moment its watch sees one end. The whole backlog waits from the
    start; replayed with the account limits at the quota, so that only the
    quota binds. Its figures are those of backlog(), over the time tasks
    waited (first to last pod created)."""
    fresh = fresh_cluster()
    parallel(ensure_namespace, namespaces, 8)
    selector = "bench=closed-loop"
    w = PodWatch(selector)
    limit = sizes.get("baseline_for")
    before, lat_before = request_counts(latency=True)
    plane0 = plane_cpu()
    t0 = now()
    items = [(f"/api/v1/namespaces/{ns}/pods", equivalent_pod(name, f"{int(durations[b] * 1000)}ms", "closed-loop"))
             for ns, name, b in work]
    # Profiled in its steady state, once the loop has filled the quota.
    prof = None if args.no_profile else ApiserverProfile(out, "baseline-apiserver", args.profile_seconds, delay=15)
    # Without a time limit, stopped all the same where a stalled plane would
    # hold it (runplane's part has the same deadline).
    lr = load(args, items=items, times=True, keep=quota, keep_selector=selector,
              keep_for=limit or max(args.phase_timeout, 4 * ideal + 60))
    t_posted = now()
    made = [(ns, name) for (ns, name, _), t in zip(work, lr["times"]) if t > 0]
    deadline = now() + 60
    while now() < deadline and not all(k in w.finished for k in made):
        time.sleep(0.2)
    w.close()
    window = now() - t0
    after, lat_after = request_counts(latency=True)
    profiled = prof.result(w.finished.values()) if prof else None
    added, finished, running = dict(w.added), dict(w.finished), dict(w.running)
    plane = cpu_used(plane0, plane_cpu(), window, len(finished))
    rp = replay({(ns, name): t0 for ns, name, _ in work}, added, finished, {(ns, name): ns for ns, name, _ in work},
                dict.fromkeys(namespaces, quota), quota, running=running)
    held, waited, ran = rp["parts"][0]
    r = {"fresh_cluster_seconds": fresh, "tasks": len(work), "created": len(made), "skipped": lr.get("skipped"),
         "started": len(added), "finished": len(finished), "post_seconds": t_posted - t0,
         "loader": loader_summary(lr), "time_limit_seconds": limit, "stopped_by_time_limit": bool(lr.get("skipped")),
         "waited_seconds": waited, "window_seconds": [rp["window"][0] - t0, rp["window"][1] - t0],
         "utilization": share(held, waited, quota), "utilization_running": share(ran, waited, quota),
         # Over the time tasks waited: after the last pod created the loop
         # only drains.
         "finished_per_second": finish_rate(finished.values(), hi=rp["window"][1]),
         **gap_figures(rp), "pod_hold": pod_hold(added, dict(w.bound), running, finished),
         "apiserver_create_pods_mean_ms": mean_latency_ms(lat_before, lat_after, ("create", "", "pods", "")),
         "plane_cpu": plane, "apiserver_profile": profiled,
         "inuse": [(t - t0, u, x) for t, u, _, _, _, x in downsampled(rp["series"])]}
    print(f"  closed-loop baseline (a fresh plane in {fresh:.0f}s; the same pods, at most {quota} unfinished, the "
          f"next created when one ends): {len(made)} of {len(work)} created in {t_posted - t0:.1f}s "
          f"({r['skipped'] or 0} skipped by the time limit), {len(finished)} finished", flush=True)
    print(f"    while pods waited ({waited:.1f}s): GPUs held {percent(r['utilization'])} of the quota, running "
          f"{percent(r['utilization_running'])}"
          + (f", {r['finished_per_second']:.1f} pods finished a second" if r["finished_per_second"] else "")
          + f"; pod create {ms(r['apiserver_create_pods_mean_ms'])} on average", flush=True)
    print(f"    {gaps_note(r)}", flush=True)
    if r["pod_hold"]:
        print(f"    a pod's hold on its GPU (mean / p50): {hold_note(r['pod_hold'])}", flush=True)
    print(f"    cores used (CPU per finished pod): {cpu_note(plane)}", flush=True)
    if profiled:
        print(f"    apiserver CPU (a profile): {profile_note(profiled)}", flush=True)
    return r


ETCD = f"http://127.0.0.1:{os.environ.get('RUNPLANE_E2E_ETCD_PORT', '22379')}"
# The apiserver's etcd keys: /registry/<group>/<resource>/<namespace>/<name>.
TASK_KEYS = "/registry/runplane.dev/gputasks"
# etcd's default --max-txn-ops.
TXN_OPS = 128


def b64(data):
    return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()


def etcd_get(key):
    r = plain().post(f"{ETCD}/v3/kv/range", json={"key": b64(key)}, timeout=30)
    r.raise_for_status()
    kvs = r.json().get("kvs") or []
    return base64.b64decode(kvs[0]["value"]) if kvs else None


def seed_copies(ns, seed_name, stored, names):
    """Writes copies of one stored task straight into etcd, one per name, as
    the apiserver would have stored them: the seed's bytes with its name and
    UID replaced (a new UID each). The apiserver's watch on etcd sees them
    like any other write, and its clients list them as usual. Returns the
    seconds it took."""
    text = stored.decode()
    uid = json.loads(text)["metadata"]["uid"]
    # Names are replaced only where the seed's name is a whole JSON string or
    # a pod name made from it, so that "seed" inside other words is left alone.
    pattern = re.compile(r'"' + re.escape(seed_name) + r'(-[a-z0-9]+)?"')

    def copy(name):
        body = pattern.sub(lambda m: f'"{name}{m.group(1) or ""}"', text).replace(uid, str(uuid.uuid4()))
        return {"requestPut": {"key": b64(f"{TASK_KEYS}/{ns}/{name}"), "value": b64(body)}}

    def put(batch):
        r = plain().post(f"{ETCD}/v3/kv/txn", json={"success": [copy(n) for n in batch]}, timeout=60)
        if r.status_code != 200 or "error" in r.json():
            raise RuntimeError(f"etcd txn failed: {r.status_code} {r.text[:300]}")

    t = now()
    parallel(put, [names[i:i + TXN_OPS] for i in range(0, len(names), TXN_OPS)], 4)
    return now() - t


def finished_seed(args, out, ns, name):
    """Runs one task through a controller to its end (pod created, run,
    released, charged) and returns it as the apiserver stored it in etcd."""
    ctl = Controller(args.runplane, out, "memory-seed")
    try:
        api("POST", f"/apis/{GROUP}/namespaces/{ns}/gputasks", task_body(name, "t"))
        deadline = now() + args.phase_timeout
        while now() < deadline:
            task = api("GET", f"/apis/{GROUP}/namespaces/{ns}/gputasks/{name}")
            pods = api("GET", f"/api/v1/namespaces/{ns}/pods",
                       params={"labelSelector": f"runplane.dev/task={name}"})["items"]
            if (task.get("status") or {}).get("phase") == "Completed" and pods and not any(
                    ACCOUNTING_FINALIZER in (p["metadata"].get("finalizers") or []) for p in pods):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the seed task {ns}/{name} did not complete")
        time.sleep(2)  # its last status write
    finally:
        ctl.stop()
    stored = etcd_get(f"{TASK_KEYS}/{ns}/{name}")
    if stored is None:
        raise RuntimeError(f"no etcd key for {ns}/{name} under {TASK_KEYS}")
    return stored


def memory(args, sizes, out):
    points = sizes["memory"]
    res = {"points": []}
    ns_done, ns_q = "bench-mem", "bench-mem-queued"
    ensure_namespace(ns_done)
    ensure_namespace(ns_q)
    ensure_namespace("bench-mem-keys")
    account("bench-mem", "team", [ns_done])
    template(ns_done, "t", "1s")
    template(ns_q, "t", "1s")
    done_created = queued_created = 0

    def peak(child):
        """The highest RSS over 6 s after a 5 s start, and the CPU share
        meanwhile: with nothing changing, what the caches cost to keep."""
        time.sleep(5)
        vals = []
        cpu0, t0 = child.cpu_seconds(), now()
        for _ in range(6):
            vals.append(child.rss_mb())
            time.sleep(1)
        return max(vals), (child.cpu_seconds() - cpu0) / (now() - t0)

    def measure(label, tasks):
        # One process at a time, each fresh: the controller, then the gateway
        # (which caches every task too, for its reads).
        ctl = Controller(args.runplane, out, f"memory-{label}")
        try:
            # At rest: after the first look at every task that a start makes.
            cpu_ready = ctl.cpu_seconds()
            settle = ctl.settle(tasks)
            settle_cpu = ctl.cpu_seconds() - cpu_ready
            rss, cpu = peak(ctl)
            point = {"tasks": tasks, "rss_mb": rss, "idle_cpu_share": cpu, "ready_seconds": ctl.ready_seconds,
                     "settle_seconds": settle, "settle_cpu_seconds": settle_cpu,
                     # The most it held, its first list of every task included.
                     "peak_rss_mb": ctl.peak_rss_mb()}
        finally:
            ctl.stop()
        gw = Gateway(args.runplane, out, f"memory-{label}", "bench-mem-keys")
        try:
            point["gateway_rss_mb"], point["gateway_idle_cpu_share"] = peak(gw)
            point["gateway_ready_seconds"] = gw.ready_seconds
            point["gateway_peak_rss_mb"] = gw.peak_rss_mb()
        finally:
            gw.stop()
        return point

    res["points"].append(measure("0", 0))
    print(f"  0 tasks: controller {res['points'][-1]['rss_mb']:.1f} MB, gateway "
          f"{res['points'][-1]['gateway_rss_mb']:.1f} MB", flush=True)
    # Finished tasks are copies of one the controller ran to its end, written
    # straight into etcd: through the apiserver (a create and a status write
    # each) 100,000 took 17 min here, and how they came to be there does not
    # change what the processes cache.
    seed = finished_seed(args, out, ns_done, "m-seed")
    res["seed_bytes"] = len(seed)
    for target in points:
        t0 = now()
        queued = target // 100
        done = target - queued
        lq = None
        seed_seconds = 0.0
        if done > done_created:
            seed_seconds = seed_copies(ns_done, "m-seed", seed, [f"m-{i}" for i in range(done_created, done)])
        if queued > queued_created:
            lq = load(args, f"/apis/{GROUP}/namespaces/{ns_q}/gputasks", task_body("q-{i}", "t"),
                      queued - queued_created, start=queued_created)
        create_seconds = now() - t0
        done_created, queued_created = max(done, done_created), max(queued, queued_created)
        listed = count_tasks(ns_done)
        if listed < done:
            raise RuntimeError(f"the apiserver lists {listed} tasks in {ns_done}, not the {done} written")
        p = measure(str(target), target)
        p["create_seconds"] = create_seconds
        p["seed_seconds"] = seed_seconds
        p["loader_queued"] = lq and loader_summary(lq)
        res["points"].append(p)
        print(f"  {target} tasks ({queued} queued): controller {p['rss_mb']:.1f} MB (at most "
              f"{p['peak_rss_mb']:.1f}, gateway {p['gateway_peak_rss_mb']:.1f}), "
              f"{100 * p['idle_cpu_share']:.1f}% of a core at rest, ready in {p['ready_seconds']:.1f}s and "
              f"through its first look at every task {p['settle_seconds']:.1f}s later "
              f"({p['settle_cpu_seconds']:.1f} CPU-s); gateway "
              f"{p['gateway_rss_mb']:.1f} MB, {100 * p['gateway_idle_cpu_share']:.1f}%, ready in "
              f"{p['gateway_ready_seconds']:.1f}s (the new finished tasks written to etcd in "
              f"{seed_seconds:.1f}s, all new ones in {create_seconds:.1f}s)", flush=True)
    base = res["points"][0]
    for p in res["points"][1:]:
        p["bytes_per_task"] = (p["rss_mb"] - base["rss_mb"]) * 1024 * 1024 / p["tasks"]
        p["gateway_bytes_per_task"] = (p["gateway_rss_mb"] - base["gateway_rss_mb"]) * 1024 * 1024 / p["tasks"]
    return res


def count_tasks(ns):
    """How many tasks the apiserver lists in ns: one item and the count of the rest."""
    r = api("GET", f"/apis/{GROUP}/namespaces/{ns}/gputasks", params={"limit": 1})
    return len(r["items"]) + (r["metadata"].get("remainingItemCount") or 0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lua_string(text):
    assert "]==]" not in text
    return f"[==[{text}]==]"


def wrk_run(args, url, duration, method="GET", headers=None, body=None):
    """One wrk run (--gw-threads threads, --gw-connections connections);
    returns requests/s, latency percentiles (ms) and error counts."""
    lines = [f"wrk.method = {lua_string(method)}"]
    if body is not None:
        lines.append(f"wrk.body = {lua_string(body)}")
    for k, v in (headers or {}).items():
        lines.append(f"wrk.headers[ {lua_string(k)} ] = {lua_string(v)}")
    lines.append("""done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH {"requests": %.0f, "duration_us": %.0f, "bytes": %.0f, '
    .. '"errors": {"connect": %.0f, "read": %.0f, "write": %.0f, "status": %.0f, "timeout": %.0f}, '
    .. '"p50_us": %.0f, "p90_us": %.0f, "p99_us": %.0f, "max_us": %.0f, "mean_us": %.1f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end""")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="bench-wrk-") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        p = subprocess.run(["wrk", "-t", str(args.gw_threads), "-c", str(args.gw_connections), "-d", f"{duration}s",
                            "--timeout", "10s", "-s", f.name, url],
                           capture_output=True, text=True, timeout=duration + 120)
    found = [line[len("BENCH "):] for line in p.stdout.splitlines() if line.startswith("BENCH ")]
    if p.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed ({p.returncode}): {p.stdout[-500:]} {p.stderr[-500:]}")
    r = json.loads(found[-1])
    seconds = r["duration_us"] / 1e6
    return {"requests": r["requests"], "seconds": seconds, "rate": r["requests"] / seconds,
            "p50_ms": r["p50_us"] / 1000, "p90_ms": r["p90_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
            "max_ms": r["max_us"] / 1000, "mean_ms": r["mean_us"] / 1000,
            "non_2xx": r["errors"]["status"], "socket_errors": {k: v for k, v in r["errors"].items() if k != "status"}}


FINISHED_STATUS = {"phase": "Completed", "processingTime": 1.0, "creditsUsed": 0, "output": {"text": "ok"}}


def finished_status():
    """A status as the controller leaves a completed task (merge patch)."""
    ts = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"status": {**FINISHED_STATUS, "startedAt": ts, "completedAt": ts}}


def task_view(response):
    """The task of a RunKey answer ({"code": 0, "data": {…}}), or {}."""
    if response.status_code != 200:
        return {}
    return (response.json() or {}).get("data") or {}


def apikey(args, account_name, keys_ns):
    made = subprocess.run([args.runplane, "apikey", "create", "--kubeconfig", KUBECONFIG, "--account", account_name,
                           "--namespace", keys_ns], capture_output=True, text=True, timeout=60)
    if made.returncode != 0:
        raise RuntimeError(f"runplane apikey create: {made.stderr[-500:]}")
    return made.stdout.strip().splitlines()[-1].strip()


def gateway(args, sizes, out):
    """`runplane api` under wrk: GET /healthz (the server's trivial handler),
    GET /v1/tasks/{id} of a finished task (API key, the reflector cache),
    POST /v1/run (each creates a GpuTask in the apiserver; no controller
    runs, so they stay queued), then GET /v1/tasks/{id} of the last of those
    queued tasks (its queue_position counts the ones before it), and direct
    GpuTask creates (bench-load) at as many requests in flight, for the POST
    rate to compare with. The finished task belongs to an account of its
    own: every authenticated request counts against its account's rate
    limit (a fixed minute), and two GET runs of one account could exceed
    even the largest limit within one minute."""
    if not shutil.which("wrk"):
        print("  skipped: wrk is not installed (run.sh installs Debian's wrk package)", flush=True)
        return {"skipped": "wrk is not installed"}
    ns, done_ns, keys_ns = "bench-gw", "bench-gw-done", "bench-gw-keys"
    for n in (ns, done_ns, keys_ns):
        ensure_namespace(n)
    echo = {"apiVersion": GROUP, "kind": "GpuTemplate", "metadata": {"name": "echo"},
            "spec": {"image": "example.com/worker:1", "gpus": 1,
                     "inputSchema": {"type": "object", "required": ["prompt"],
                                     "properties": {"prompt": {"type": "string", "minLength": 1}}},
                     "podMetadata": {"annotations": {"e2e.runplane.dev/duration": "1s"}}}}
    # Limits far above what one run can use, so the rate limiter (and the
    # concurrency limit) never answers instead of the handler.
    for n in (ns, done_ns):
        account(n, "custom", [n], limits=AMPLE)
        api("POST", f"/apis/{GROUP}/namespaces/{n}/gputemplates", echo, ok=(201, 409))
    done_id = "finished-0"
    api("POST", f"/apis/{GROUP}/namespaces/{done_ns}/gputasks",
        task_body(done_id, "echo"), ok=(201, 409))
    api("PATCH", f"/apis/{GROUP}/namespaces/{done_ns}/gputasks/{done_id}/status", finished_status(),
        ctype="application/merge-patch+json")
    key, done_key = apikey(args, ns, keys_ns), apikey(args, done_ns, keys_ns)
    gw = Gateway(args.runplane, out, "gateway", keys_ns)
    proc, base = gw.proc, gw.base
    auth = {"Authorization": f"Bearer {key}"}
    done_auth = {"Authorization": f"Bearer {done_key}"}
    run_body = json.dumps({"template_id": "echo", "input": {"prompt": "a small benchmark input"}})
    http = plain()
    res = {"threads": args.gw_threads, "connections": args.gw_connections, "duration": args.gw_duration,
           "post_duration": args.gw_post_duration, "rows": []}
    try:
        def until(what, check, timeout=120):
            deadline = now() + timeout
            while now() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"the gateway exited; see {gw.log.name}")
                try:
                    if check():
                        return
                except requests.RequestException:
                    pass
                time.sleep(0.2)
            raise RuntimeError(f"timed out waiting for {what}")

        until("the API keys", lambda: all(http.get(f"{base}/v1/account", headers=h, timeout=2).status_code == 200
                                          for h in (auth, done_auth)))
        until("the finished task in the gateway's cache",
              lambda: task_view(http.get(f"{base}/v1/tasks/{done_id}", headers=done_auth, timeout=2)).get("status")
              == "completed")
        until("the template", lambda: http.post(f"{base}/v1/run", data=run_body, timeout=10, headers={
            **auth, "Content-Type": "application/json"}).status_code == 202)
        res["rss_mb_ready"] = proc_rss_mb(proc.pid)

        def phase(key, label, path, duration, method="GET", headers=None, body=None):
            cpu0 = proc_cpu_seconds(proc.pid)
            r = wrk_run(args, base + path, duration, method, headers, body)
            r.update(key=key, endpoint=label, gateway_cpu_seconds=proc_cpu_seconds(proc.pid) - cpu0)
            res["rows"].append(r)
            print(f"    {label:50} {r['rate']:9.0f}/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                  f"non-2xx {r['non_2xx']}", flush=True)
            return r

        phase("healthz", "GET /healthz", "/healthz", args.gw_duration)
        phase("get_task", "GET /v1/tasks/{id} (finished)", f"/v1/tasks/{done_id}", args.gw_duration,
              headers=done_auth)
        before = len(api("GET", f"/apis/{GROUP}/namespaces/{ns}/gputasks")["items"])
        post = phase("run", "POST /v1/run", "/v1/run", args.gw_post_duration, "POST",
                     {**auth, "Content-Type": "application/json"}, run_body)
        # Tasks the POSTs created, as the apiserver has them (wrk drops the
        # answers still in flight when it stops; their tasks exist all the same).
        time.sleep(1)
        items = api("GET", f"/apis/{GROUP}/namespaces/{ns}/gputasks")["items"]
        queued = len(items)
        post["tasks_created"] = queued - before
        # The newest task: the whole queue of the account is ahead of it.
        last = max(items, key=lambda t: (t["metadata"]["creationTimestamp"], t["metadata"]["name"]))
        task_id = last["metadata"]["name"]
        until("the newest task in the gateway's cache",
              lambda: http.get(f"{base}/v1/tasks/{task_id}", headers=auth, timeout=2).status_code == 200)
        position = task_view(http.get(f"{base}/v1/tasks/{task_id}", headers=auth, timeout=2)).get("queue_position")
        res["queue_position"] = position
        phase("get_task_queued", f"GET /v1/tasks/{{id}} (queued, {queued} in the account)", f"/v1/tasks/{task_id}",
              args.gw_duration, headers=auth)
        res["rss_mb_after"] = proc_rss_mb(proc.pid)
        res["cpu_seconds_total"] = proc_cpu_seconds(proc.pid)
    finally:
        gw.stop()
    # The apiserver's own create rate at as many requests in flight, for POST /v1/run to compare with.
    direct_n = max(200, post["tasks_created"])
    lr = load(args, f"/apis/{GROUP}/namespaces/{ns}/gputasks", task_body("direct-{i}", "echo"), direct_n,
              concurrency=args.gw_connections)
    res["direct_creates"] = loader_summary(lr)
    healthz = res["rows"][0]["rate"]
    for r in res["rows"]:
        r["ratio_to_healthz"] = r["rate"] / healthz
    post["ratio_to_direct_creates"] = post["rate"] / lr["rate"]
    print(f"  {'endpoint':50} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'÷ healthz':>9} {'non-2xx':>8} "
          f"{'gw CPU s':>8}")
    for r in res["rows"]:
        print(f"  {r['endpoint']:50} {r['rate']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
              f"{r['ratio_to_healthz']:9.3f} {r['non_2xx']:8} {r['gateway_cpu_seconds']:8.1f}")
    print(f"  POST /v1/run created {post['tasks_created']} GpuTasks in {post['seconds']:.1f}s; direct creates "
          f"(bench-load, {args.gw_connections} in flight): {lr['rate']:.0f}/s, so POST ÷ direct = "
          f"{post['ratio_to_direct_creates']:.2f}")
    print(f"  the queued task's queue_position: {res['queue_position']}", flush=True)
    print(f"  gateway RSS {res['rss_mb_ready']:.1f} MB when ready, {res['rss_mb_after']:.1f} MB after the run; "
          f"{wrk_version()}", flush=True)
    res["wrk"] = wrk_version()
    if any(r["non_2xx"] or any(r["socket_errors"].values()) for r in res["rows"]):
        print("  WARNING: some requests failed (non-2xx or socket errors); see the rows", flush=True)
    return res


def wrk_version():
    p = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return " ".join(((p.stdout or p.stderr).split() or ["wrk"])[:2])


SCENARIOS = {"throughput": throughput, "writes": writes_per_task, "backlog": backlog, "memory": memory,
             "gateway": gateway}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scale", default=os.environ.get("BENCH_SCALE", "full"), choices=SCALES)
    p.add_argument("--scenarios", default=os.environ.get("BENCH_SCENARIOS", "throughput,writes,backlog,gateway,memory"))
    p.add_argument("--runplane", required=True)
    p.add_argument("--loader", required=True, help="the bench-load example (cargo build --release --example bench-load)")
    p.add_argument("--out", required=True)
    p.add_argument("--connections", type=int, default=int(os.environ.get("BENCH_CONNECTIONS", "16")),
                   help="threads of the harness's own Python calls (namespaces, accounts, templates)")
    p.add_argument("--concurrency", type=int, default=int(os.environ.get("BENCH_CONCURRENCY", "32")),
                   help="requests in flight from the loader, for every bulk create")
    p.add_argument("--gw-connections", type=int, default=16, help="wrk connections (gateway)")
    p.add_argument("--gw-threads", type=int, default=2, help="wrk threads (gateway)")
    p.add_argument("--gw-duration", type=int, default=10, help="seconds of each GET run (gateway)")
    p.add_argument("--gw-post-duration", type=int, default=5, help="seconds of the POST /v1/run run (gateway)")
    p.add_argument("--phase-timeout", type=float, default=180)
    p.add_argument("--backlog-seconds", default="1,2,4",
                   help="the backlog's scripted run times, in turn (seconds, comma-separated)")
    p.add_argument("--skip-kcm-defaults", action="store_true")
    for k in ("throughput", "backlog", "quota", "accounts", "writes", "job_defaults"):
        p.add_argument(f"--{k.replace('_', '-')}", type=int)
    p.add_argument("--backlog-for", type=int,
                   help="stop the backlog this many seconds after its first create (0: when it has drained)")
    p.add_argument("--baseline-for", type=int,
                   help="stop the backlog's closed-loop baseline creating pods this many seconds after its first "
                        "(0: when every one is created)")
    p.add_argument("--no-baseline", action="store_true", help="skip the backlog's closed-loop baseline")
    p.add_argument("--backlog-controller-flag", action="append", default=[], metavar="FLAG",
                   help="a flag for the backlog's controller, e.g. --backlog-controller-flag=--reconcile-concurrency=64 "
                        "(repeatable)")
    p.add_argument("--profile-seconds", type=int, default=30,
                   help="length of the apiserver CPU profiles taken in the backlog and its baseline")
    p.add_argument("--no-profile", action="store_true", help="take no apiserver CPU profiles")
    p.add_argument("--memory-points", help="comma-separated task counts")
    args = p.parse_args()
    sizes = dict(SCALES[args.scale])
    for k in ("throughput", "backlog", "quota", "accounts", "writes", "job_defaults"):
        if getattr(args, k) is not None:
            sizes[k] = getattr(args, k)
    if args.backlog_for is not None:
        sizes["backlog_for"] = args.backlog_for or None
    if args.baseline_for is not None:
        sizes["baseline_for"] = args.baseline_for or None
    if args.memory_points:
        sizes["memory"] = [int(x) for x in args.memory_points.split(",")]
    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    scenarios = args.scenarios.split(",")
    for name in scenarios:
        print(f"== {name} ({args.scale})", flush=True)
        fresh = fresh_cluster()
        t = now()
        res = SCENARIOS[name](args, sizes, args.out)
        res["scale"] = args.scale
        res["wall_seconds"] = now() - t
        res["fresh_cluster_seconds"] = fresh
        with open(os.path.join(args.out, f"{name}.json"), "w") as f:
            json.dump(res, f, indent=1)
        print(f"  ({name}: {res['wall_seconds']:.0f}s on a control plane started in {fresh:.0f}s)", flush=True)
        try:
            import plots
            plots.plot(name, res, args.out)
        except Exception as e:  # the numbers matter more than the picture
            print(f"  (no plot: {e})")
    print(f"== done in {time.time() - started:.0f}s; results in {args.out}")


if __name__ == "__main__":
    sys.dont_write_bytecode = True  # no __pycache__ next to plots.py
    sys.path.insert(0, os.path.dirname(__file__))
    main()
