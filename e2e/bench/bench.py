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
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import requests
import urllib3

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
    # tasks for throughput, Job controller at defaults, writes-per-task run,
    # backlog tasks/accounts/quota, memory points
    "tiny": dict(throughput=200, job_defaults=100, writes=100, backlog=300, accounts=6, quota=40, memory=[2000, 5000]),
    "small": dict(throughput=1000, job_defaults=200, writes=200, backlog=2000, accounts=30, quota=100, memory=[5000, 15000]),
    "full": dict(throughput=2000, job_defaults=300, writes=300, backlog=15000, accounts=30, quota=400, memory=[15000, 100000]),
}

_local = threading.local()


def session():
    s = getattr(_local, "s", None)
    if s is None:
        s = requests.Session()
        s.cert = (os.path.join(PKI, "admin.crt"), os.path.join(PKI, "admin.key"))
        s.verify = os.path.join(PKI, "ca.crt")
        s.headers["User-Agent"] = UA
        s.trust_env = False  # else REQUESTS_CA_BUNDLE overrides verify, and proxies apply
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=4)
        s.mount("https://", adapter)
        _local.s = s
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


def load(args, path=None, body=None, count=0, start=0, items=None, status_patch=None, concurrency=None):
    """Creates objects with the Rust load generator, --concurrency requests in
    flight: `count` objects from `body` (a dict; "{i}" in it becomes the index
    start..start+count-1) in the collection `path`, or `items`, a list of
    (path, body) created in that order. With `status_patch`, each object's
    /status is merge-patched after its create. Returns the loader's report
    (created, seconds, requests, errors, create_requests, patch_requests, …);
    its requests count as the harness's own."""
    cmd = [args.loader, "--kubeconfig", KUBECONFIG, "--concurrency", str(concurrency or args.concurrency)]
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="bench-load-") as f:
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
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"the loader failed ({p.returncode}): {p.stderr[-1000:]}")
    r = json.loads(lines[-1])
    with COUNT_LOCK:
        COUNT["n"] += r["requests"]
        COUNT["POST"] = COUNT.get("POST", 0) + r["create_requests"]
        COUNT["PATCH"] = COUNT.get("PATCH", 0) + r["patch_requests"]
    if p.returncode != 0 or r["errors"]:
        raise RuntimeError(f"the loader had {r['errors']} errors ({p.returncode}): {p.stderr[-1000:]}")
    return r


def loader_summary(r):
    return {k: r[k] for k in ("created", "seconds", "rate", "requests", "retries", "concurrency")}


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


def delete_namespaces(prefix):
    items = api("GET", "/api/v1/namespaces", params={"labelSelector": "runplane.dev/bench=true"})["items"]
    for ns in items:
        name = ns["metadata"]["name"]
        if name.startswith(prefix):
            api("DELETE", f"/api/v1/namespaces/{name}", ok=(200, 202, 404))


def wait_namespaces_gone(prefix, timeout=240):
    deadline = now() + timeout
    while now() < deadline:
        items = api("GET", "/api/v1/namespaces", params={"labelSelector": "runplane.dev/bench=true"})["items"]
        if not [n for n in items if n["metadata"]["name"].startswith(prefix)]:
            return True
        time.sleep(1)
    return False


def release_stuck_pods(prefix):
    """Removes runplane's finalizer from pods being deleted in the bench
    namespaces: with no controller running (between scenarios, or after an
    aborted run) nothing else would, and their namespaces would never go."""
    released = 0
    items = api("GET", "/api/v1/namespaces", params={"labelSelector": "runplane.dev/bench=true"})["items"]
    for ns in [n["metadata"]["name"] for n in items if n["metadata"]["name"].startswith(prefix)]:
        for pod in api("GET", f"/api/v1/namespaces/{ns}/pods")["items"]:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp") and ACCOUNTING_FINALIZER in (meta.get("finalizers") or []):
                api("PATCH", f"/api/v1/namespaces/{ns}/pods/{meta['name']}",
                    {"metadata": {"finalizers": [f for f in meta["finalizers"] if f != ACCOUNTING_FINALIZER],
                                  "resourceVersion": meta["resourceVersion"]}},
                    ok=(200, 404, 409), ctype="application/merge-patch+json")
                released += 1
    return released


def settle_namespaces(prefix, timeout=300):
    """Waits for the bench namespaces to be gone (no controller runs now);
    releases pods that only a controller would have released if they hold
    them up. Says so when they are still there."""
    if wait_namespaces_gone(prefix, timeout=30):
        return
    released = release_stuck_pods(prefix)
    if released:
        print(f"  (released runplane's finalizer on {released} pods left by a stopped controller)", flush=True)
    if not wait_namespaces_gone(prefix, timeout=timeout - 30):
        print(f"  WARNING: namespaces {prefix}* are still there after {timeout}s", flush=True)


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


def delete_accounts():
    api("DELETE", f"/apis/{GROUP}/gpuaccounts", params={"labelSelector": "runplane.dev/bench=true"}, ok=(200, 404))


def equivalent_pod(name, duration):
    """What runplane creates for a 1-GPU task (without the owner and finalizer)."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"bench": "raw"},
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
    each was first seen and when it was first seen finished."""

    def __init__(self, selector):
        self.selector = selector
        self.added = {}
        self.finished = {}
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
                    if obj.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                        self.finished.setdefault(key, t)
            except Exception:  # reconnect
                time.sleep(0.2)

    def close(self):
        self.stop.set()


# ---------------------------------------------------------------------------
# controller process
# ---------------------------------------------------------------------------

def proc_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Controller:
    def __init__(self, binary, out, name, extra=()):
        self.metrics = int(os.environ.get("RUNPLANE_BENCH_METRICS_PORT", "28080"))
        self.log = open(os.path.join(out, f"controller-{name}.log"), "w")
        self.proc = subprocess.Popen(
            [binary, "controller", "--kubeconfig", os.path.join(STATE, "kubeconfig"), "--leader-election=false",
             "--metrics-addr", f"127.0.0.1:{self.metrics}", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"})
        deadline = now() + 120
        while now() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("controller exited; see its log")
            try:
                if plain().get(f"http://127.0.0.1:{self.metrics}/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("controller never became ready")

    def rss_mb(self):
        return proc_rss_mb(self.proc.pid)

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


# ---------------------------------------------------------------------------
# kube-controller-manager at its default client QPS
# ---------------------------------------------------------------------------

def kcm_pid():
    with open(os.path.join(STATE, "pids", "kube-controller-manager.pid")) as f:
        return int(f.read().strip())


def restart_kcm(drop_qps):
    """Restarts the cluster's kube-controller-manager with the same flags,
    with (drop_qps=False) or without (True) --kube-api-qps/--kube-api-burst.
    Returns the flags it was started with."""
    pid = kcm_pid()
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = [a.decode() for a in f.read().split(b"\0") if a]
    saved = os.path.join(STATE, "kube-controller-manager.argv.json")
    if not os.path.exists(saved):
        with open(saved, "w") as f:
            json.dump(argv, f)
    with open(saved) as f:
        original = json.load(f)
    want = [a for a in original if not (drop_qps and re.match(r"--kube-api-(qps|burst)=", a))]
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
    return want[1:]


# ---------------------------------------------------------------------------
# apiserver request counters
# ---------------------------------------------------------------------------

METRIC = re.compile(r'^apiserver_request_total\{(.*)\} ([0-9.e+]+)$')


def request_counts():
    text = session().get(f"{BASE}/metrics", timeout=30).text
    with COUNT_LOCK:
        COUNT["n"] += 1
    out = {}
    for line in text.splitlines():
        m = METRIC.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        verb = labels.get("verb", "").lower()
        verb = {"post": "create", "put": "update"}.get(verb, verb)
        key = (verb, labels.get("group", ""), labels.get("resource"), labels.get("subresource", ""))
        out[key] = out.get(key, 0) + float(m.group(2))
    return out


# ---------------------------------------------------------------------------
# scenarios
# ---------------------------------------------------------------------------

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

    # (a) raw pod creates
    ns = "bench-raw"
    ensure_namespace(ns)
    w = PodWatch("bench=raw")
    t0 = now()
    lr = load(args, f"/api/v1/namespaces/{ns}/pods", equivalent_pod("raw-{i}", "2s"), n)
    t_posted = now()
    seen = wait_count(w, n, timeout)
    w.close()
    res["raw"] = {"created": seen, "seconds": max(w.added.values()) - t0,
                  "post_seconds": t_posted - t0, "loader": loader_summary(lr)}
    res["raw"]["rate"] = seen / res["raw"]["seconds"]
    res["raw"]["series"] = sorted(t - t0 for t in w.added.values())
    print(f"  raw pod creates: {seen} pods in {res['raw']['seconds']:.2f}s = {res['raw']['rate']:.1f}/s "
          f"({loader_note(lr)})", flush=True)

    # (b) the Job controller, as the cluster runs it, then at its default client QPS
    def jobs(ns, count, label):
        ensure_namespace(ns)
        w = PodWatch(f"bench-job={label}")
        body = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "job-{i}"},
                "spec": {"backoffLimit": 0, "completions": 1, "parallelism": 1,
                         "template": {"metadata": {"labels": {"bench-job": label},
                                                   "annotations": {"e2e.runplane.dev/duration": "2s"}},
                                      "spec": equivalent_pod("job-{i}", "2s")["spec"]}}}
        t0 = now()
        lr = load(args, f"/apis/batch/v1/namespaces/{ns}/jobs", body, count)
        t_posted = now()
        seen = wait_count(w, count, timeout)
        w.close()
        r = {"tasks": count, "created": seen, "seconds": (max(w.added.values()) - t0) if w.added else None,
             "post_seconds": t_posted - t0, "complete": seen == count, "loader": loader_summary(lr)}
        if seen < count:
            r["seconds"] = now() - t0
        r["rate"] = seen / r["seconds"]
        r["series"] = sorted(t - t0 for t in w.added.values())
        print(f"  Job controller ({label}): {seen}/{count} pods in {r['seconds']:.2f}s = {r['rate']:.1f}/s "
              f"({loader_note(lr)})", flush=True)
        return r

    flags = restart_kcm(drop_qps=False)
    res["kcm_flags_as_run"] = [f for f in flags if "qps" in f or "burst" in f]
    res["job_raised_qps"] = jobs("bench-job-raised", n, "raised")
    if not args.skip_kcm_defaults:
        # Remove the earlier pods and Jobs first (while the controller-manager
        # still has its raised QPS): a restarted one would otherwise spend its
        # 20 QPS resyncing them before it looked at the new Jobs.
        for k in ("bench-raw", "bench-job-raised"):
            delete_namespaces(k)
        for k in ("bench-raw", "bench-job-raised"):
            if not wait_namespaces_gone(k, timeout=120):
                print(f"  WARNING: namespace {k} is still there", flush=True)
        restart_kcm(drop_qps=True)
        try:
            res["job_defaults"] = jobs("bench-job-defaults", sizes["job_defaults"], "defaults")
        finally:
            restart_kcm(drop_qps=False)

    # (c) runplane with ample quota
    ns = "bench-tp"
    ensure_namespace(ns)
    account("bench-tp", "custom", [ns], limits={"concurrentTasks": 100000, "requestsPerMinute": 1000000, "gpus": 100000})
    template(ns, "t2s", "2s")
    ctl = Controller(args.runplane, out, "throughput")
    try:
        time.sleep(2)
        w = PodWatch("runplane.dev/task")
        cpu0 = ctl.cpu_seconds()
        t0 = now()
        lr = load(args, f"/apis/{GROUP}/namespaces/{ns}/gputasks", task_body("tp-{i}", "t2s"), n)
        t_posted = now()
        seen = wait_count(w, n, timeout)
        w.close()
        r = {"created": seen, "seconds": max(w.added.values()) - t0, "post_seconds": t_posted - t0,
             "controller_cpu_seconds": ctl.cpu_seconds() - cpu0, "controller_rss_mb": ctl.rss_mb(),
             "loader": loader_summary(lr)}
        r["rate"] = seen / r["seconds"]
        r["series"] = sorted(t - t0 for t in w.added.values())
        res["runplane"] = r
        print(f"  runplane: {seen} pods in {r['seconds']:.2f}s = {r['rate']:.1f}/s "
              f"(controller CPU {r['controller_cpu_seconds']:.1f}s; {loader_note(lr)})", flush=True)
        # The pods still run and hold runplane's finalizer: delete them while
        # the controller is there to release them.
        delete_namespaces("bench-tp")
        wait_namespaces_gone("bench-tp", timeout=120)
    finally:
        ctl.stop()
    def ratio(a, b):
        return a["rate"] / b["rate"] if b["rate"] else None
    res["ratio_runplane_raw"] = ratio(res["runplane"], res["raw"])
    res["ratio_runplane_job_raised"] = ratio(res["runplane"], res["job_raised_qps"])
    if "job_defaults" in res:
        res["ratio_runplane_job_defaults"] = ratio(res["runplane"], res["job_defaults"])

    def fmt(v):
        return f"{v:.2f}" if v is not None else "n/a"
    print(f"  runplane ÷ raw = {fmt(res['ratio_runplane_raw'])}, ÷ Job (raised QPS) = "
          f"{fmt(res['ratio_runplane_job_raised'])}, ÷ Job (default QPS) = "
          f"{fmt(res.get('ratio_runplane_job_defaults'))}", flush=True)
    for k in ("bench-raw", "bench-job", "bench-tp"):
        delete_namespaces(k)
    delete_accounts()
    return res


def writes_per_task(args, sizes, out):
    n = sizes["writes"]
    ns = "bench-writes"
    ensure_namespace(ns)
    account("bench-writes", "custom", [ns], limits={"concurrentTasks": 100000, "requestsPerMinute": 1000000, "gpus": 100000})
    template(ns, "t1s", "1s")
    ctl = Controller(args.runplane, out, "writes")
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
        events = api("GET", f"/apis/events.k8s.io/v1/namespaces/{ns}/events")["items"]
    finally:
        ctl.stop()
    # The loader's create requests, retried and 409 ones included: the
    # apiserver counts every one of them.
    harness_creates = lr["create_requests"]
    by_reporter = {}
    for e in events:
        by_reporter[e.get("reportingController") or ""] = by_reporter.get(e.get("reportingController") or "", 0) + 1
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    delta = {k: v for k, v in delta.items() if v > 0}
    writes = ("create", "update", "patch", "delete", "apply", "deletecollection")
    rows = []
    other_events = sum(v for r, v in by_reporter.items() if r != "runplane.dev/controller")

    def take(verb, group, resource, sub, minus=0, note=""):
        v = delta.get((verb, group, resource, sub), 0) - minus
        if v > 0:
            rows.append({"verb": verb, "resource": f"{resource}{'/' + sub if sub else ''}", "group": group,
                         "count": v, "per_task": v / n, "note": note})

    for (verb, group, resource, sub) in sorted(delta):
        if verb not in writes:
            continue
        if group == "runplane.dev" and resource == "gputasks" and verb == "create" and sub == "":
            take(verb, group, resource, sub, minus=harness_creates,
                 note=f"minus the harness's {harness_creates} create requests")
        elif group == "runplane.dev":
            take(verb, group, resource, sub)
        elif group == "" and resource == "pods" and sub in ("",):
            take(verb, group, resource, sub)
        elif group == "events.k8s.io" and resource == "events" and verb == "create":
            take(verb, group, resource, sub, minus=other_events, note=f"minus {other_events} events of other reporters")
        elif group == "events.k8s.io" and resource == "events":
            take(verb, group, resource, sub, note="series updates")
    total = sum(r["count"] for r in rows)
    others = [{"verb": k[0], "group": k[1], "resource": k[2] + ("/" + k[3] if k[3] else ""), "count": v}
              for k, v in sorted(delta.items()) if k[0] in writes]
    res = {"tasks": n, "completed": done, "rows": rows, "writes_total": total, "writes_per_task": total / n,
           "events_by_reporter": by_reporter, "harness_requests": harness, "all_write_deltas": others,
           "loader": loader_summary(lr), "harness_task_creates": harness_creates}
    print(f"  {n} tasks, {done} finished: {total:.0f} runplane writes = {total / n:.2f} per task", flush=True)
    for r in rows:
        print(f"    {r['verb']:8} {r['group'] + '/' if r['group'] else ''}{r['resource']:22} {r['count']:7.0f} "
              f"{r['per_task']:5.2f}/task {r['note']}")
    delete_namespaces("bench-writes")
    delete_accounts()
    return res


def allowed_use(added, finished, limit_of, quota):
    """GPU use against what was allowed: GPU-seconds held by each account's
    pods until its last pod was created (while it had tasks waiting), over
    the GPU-seconds the quota and the limits of the accounts still waiting
    allowed. One GPU per pod; keys of added/finished are (namespace, name)."""
    last = {}
    for (ns, _), ta in added.items():
        last[ns] = max(last.get(ns, ta), ta)
    a0 = min(added.values())
    active = sum(limit_of[ns] for ns in last)
    allowed, prev = 0.0, a0
    for ns, t in sorted(last.items(), key=lambda x: x[1]):
        allowed += min(quota, active) * (t - prev)
        prev, active = t, active - limit_of[ns]
    used = 0.0
    for key, ta in added.items():
        end = last[key[0]]
        used += max(0.0, min(finished.get(key, end), end) - max(ta, a0))
    return used / allowed if allowed else None


def backlog(args, sizes, out):
    n, n_acc, quota = sizes["backlog"], sizes["accounts"], sizes["quota"]
    plans = ["free", "pro", "team"]
    buckets = {"d1": 1.0, "d2": 2.0, "d4": 4.0}
    namespaces = [f"bench-bl-{i:02d}" for i in range(n_acc)]
    parallel(ensure_namespace, namespaces, 8)
    for i, ns in enumerate(namespaces):
        account(f"bench-bl-{i:02d}", plans[i % 3], [ns])
        for b, secs in buckets.items():
            template(ns, b, f"{int(secs * 1000)}ms")
    names = list(buckets)
    work = [(namespaces[i % n_acc], f"bl-{i}", names[(i * 7 + i // n_acc) % len(names)]) for i in range(n)]
    gpu_seconds = sum(buckets[b] for _, _, b in work)
    # No schedule can beat either bound: all the work on the whole quota, or
    # one account's work at its plan's concurrency limit (1-GPU tasks).
    limit = {"free": 5, "pro": 10, "team": 25}
    per_account = {}
    for ns, _, b in work:
        per_account[ns] = per_account.get(ns, 0.0) + buckets[b]
    ideal_limits = max([gpu_seconds / quota] + [w / limit[plans[namespaces.index(ns) % 3]]
                                                for ns, w in per_account.items()])
    ctl = Controller(args.runplane, out, "backlog", extra=["--gpu-quota", str(quota)])
    try:
        time.sleep(2)
        w = PodWatch("runplane.dev/task")
        t0 = now()
        cpu0 = ctl.cpu_seconds()
        # One loader run, in this order: the accounts and durations interleave.
        lr = load(args, items=[(f"/apis/{GROUP}/namespaces/{ns}/gputasks", task_body(name, b)) for ns, name, b in work])
        t_posted = now()
        ideal = gpu_seconds / quota
        deadline = now() + max(args.phase_timeout, 4 * ideal_limits + 60)
        samples = []
        rss = []
        while now() < deadline and len(w.finished) < n:
            t = now() - t0
            running = len(w.added) - len(w.finished)
            samples.append((t, n - len(w.added) if t >= (t_posted - t0) else None, running, len(w.finished)))
            rss.append((t, ctl.rss_mb()))
            time.sleep(0.5)
        w.close()
        cpu = ctl.cpu_seconds() - cpu0
    finally:
        ctl.stop()
    added = w.added
    finished = w.finished
    dur = {name: buckets[b] for _, name, b in work}
    t_last_add = max(added.values())
    # GPU-seconds held while tasks waited: window from the first pod to the last pod created
    # (until then every freed GPU had a waiting task to take it).
    a0 = min(added.values())
    used = 0.0
    for k, ta in added.items():
        tf = finished.get(k, t_last_add)
        used += max(0.0, min(tf, t_last_add) - max(ta, a0))
    available = quota * (t_last_add - a0)
    # freed -> next pod created, while the backlog lasted
    adds = sorted(added.values())
    gaps = []
    import bisect
    for tf in sorted(finished.values()):
        if tf >= t_last_add:
            break
        j = bisect.bisect_right(adds, tf)
        if j < len(adds):
            gaps.append(adds[j] - tf)
    gaps.sort()

    def pct(p):
        return gaps[min(len(gaps) - 1, int(p / 100 * len(gaps)))] if gaps else None
    makespan = (max(finished.values()) - t0) if finished else None
    res = {"tasks": n, "accounts": n_acc, "quota_gpus": quota, "gpu_seconds_demand": gpu_seconds,
           "started": len(added), "finished": len(finished),
           "post_seconds": t_posted - t0, "loader": loader_summary(lr),
           "utilization": used / available if available else None,
           "utilization_of_allowed": allowed_use(added, finished, {ns: limit[plans[i % 3]] for i, ns in
                                                                  enumerate(namespaces)}, quota),
           "ideal_makespan": ideal + max(buckets.values()) * 0, "measured_makespan": makespan,
           "ideal_makespan_with_account_limits": ideal_limits,
           "freed_to_next_p50_ms": pct(50) * 1000 if gaps else None,
           "freed_to_next_p99_ms": pct(99) * 1000 if gaps else None, "gaps": len(gaps),
           "controller_cpu_seconds": cpu, "samples": samples, "rss": rss,
           "concurrency_limit_sum": sum({"free": 5, "pro": 10, "team": 25}[plans[i % 3]] for i in range(n_acc))}
    print(f"  {n} tasks, quota {quota} GPUs, {gpu_seconds:.0f} GPU-s of work: GPU use while waiting "
          f"{100 * res['utilization']:.1f}% of the quota, {100 * res['utilization_of_allowed']:.1f}% of what the "
          f"accounts' limits allowed, makespan ideal {ideal:.1f}s (with the accounts' limits "
          f"{ideal_limits:.1f}s) / measured {makespan:.1f}s (tasks created in {t_posted - t0:.1f}s), "
          f"freed->next p50 {res['freed_to_next_p50_ms']:.0f} ms p99 {res['freed_to_next_p99_ms']:.0f} ms", flush=True)
    # GPUs in use over time, from the watch
    events = sorted([(t - t0, 1) for t in added.values()] + [(t - t0, -1) for t in finished.values()])
    inuse, level = [], 0
    for t, d in events:
        level += d
        inuse.append((t, level))
    res["inuse"] = inuse[:: max(1, len(inuse) // 4000)]
    delete_namespaces("bench-bl-")
    delete_accounts()
    return res


def memory(args, sizes, out):
    points = sizes["memory"]
    res = {"points": []}
    ns_done, ns_q = "bench-mem", "bench-mem-queued"
    ensure_namespace(ns_done)
    ensure_namespace(ns_q)
    template(ns_done, "t", "1s")
    template(ns_q, "t", "1s")
    done_created = queued_created = 0
    ts = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    # Finished tasks: created, then their status merge-patched as a controller would leave it.
    finished = {"status": {"phase": "Completed", "startedAt": ts, "completedAt": ts, "processingTime": 1.0,
                           "creditsUsed": 0, "output": {"text": "ok"}}}

    def measure(label, tasks):
        ctl = Controller(args.runplane, out, f"memory-{label}")
        try:
            time.sleep(5)
            vals = []
            for _ in range(6):
                vals.append(ctl.rss_mb())
                time.sleep(1)
            return {"tasks": tasks, "rss_mb": max(vals)}
        finally:
            ctl.stop()

    res["points"].append(measure("0", 0))
    print(f"  0 tasks: {res['points'][-1]['rss_mb']:.1f} MB", flush=True)
    for target in points:
        t0 = now()
        queued = target // 100
        done = target - queued
        ld = lq = None
        if done > done_created:
            ld = load(args, f"/apis/{GROUP}/namespaces/{ns_done}/gputasks", task_body("m-{i}", "t"),
                      done - done_created, start=done_created, status_patch=finished)
        if queued > queued_created:
            lq = load(args, f"/apis/{GROUP}/namespaces/{ns_q}/gputasks", task_body("q-{i}", "t"),
                      queued - queued_created, start=queued_created)
        create_seconds = now() - t0
        done_created, queued_created = max(done, done_created), max(queued, queued_created)
        p = measure(str(target), target)
        p["create_seconds"] = create_seconds
        p["loader_finished"] = ld and loader_summary(ld)
        p["loader_queued"] = lq and loader_summary(lq)
        res["points"].append(p)
        print(f"  {target} tasks ({queued} queued): {p['rss_mb']:.1f} MB (the new tasks created in "
              f"{create_seconds:.1f}s, finished ones at {ld['rate'] if ld else 0:.0f}/s with their status patch)",
              flush=True)
    base = res["points"][0]
    for p in res["points"][1:]:
        p["bytes_per_task"] = (p["rss_mb"] - base["rss_mb"]) * 1024 * 1024 / p["tasks"]
    delete_namespaces("bench-mem")
    return res


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


def gateway(args, sizes, out):
    """`runplane api` under wrk: GET /healthz (the server's trivial handler),
    GET /v1/tasks/{id} (API key, the reflector cache), POST /v1/run (each
    creates a GpuTask in the apiserver; no controller runs, so they stay
    queued), then GET /v1/tasks/{id} again with those tasks queued in the
    account, and direct GpuTask creates (bench-load) at as many requests in
    flight, for the POST rate to compare with."""
    if not shutil.which("wrk"):
        print("  skipped: wrk is not installed (run.sh installs Debian's wrk package)", flush=True)
        return {"skipped": "wrk is not installed"}
    ns, keys_ns, acct = "bench-gw", "bench-gw-keys", "bench-gw"
    ensure_namespace(ns)
    ensure_namespace(keys_ns)
    # Limits far above what one run can use, so the rate limiter (and the
    # concurrency limit) never answers instead of the handler.
    account(acct, "custom", [ns], limits={"concurrentTasks": 100000, "requestsPerMinute": 1000000, "gpus": 100000})
    api("POST", f"/apis/{GROUP}/namespaces/{ns}/gputemplates",
        {"apiVersion": GROUP, "kind": "GpuTemplate", "metadata": {"name": "echo"},
         "spec": {"image": "example.com/worker:1", "gpus": 1,
                  "inputSchema": {"type": "object", "required": ["prompt"],
                                  "properties": {"prompt": {"type": "string", "minLength": 1}}},
                  "podMetadata": {"annotations": {"e2e.runplane.dev/duration": "1s"}}}}, ok=(201, 409))
    made = subprocess.run([args.runplane, "apikey", "create", "--kubeconfig", KUBECONFIG, "--account", acct,
                           "--namespace", keys_ns], capture_output=True, text=True, timeout=60)
    if made.returncode != 0:
        raise RuntimeError(f"runplane apikey create: {made.stderr[-500:]}")
    key = made.stdout.strip().splitlines()[-1].strip()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(os.path.join(out, "gateway.log"), "w")
    proc = subprocess.Popen([args.runplane, "api", "--kubeconfig", KUBECONFIG, "--listen", f"127.0.0.1:{port}",
                             "--namespace", keys_ns], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "RUST_LOG": "warn"})
    auth = {"Authorization": f"Bearer {key}"}
    run_body = json.dumps({"template_id": "echo", "input": {"prompt": "a small benchmark input"}})
    http = plain()
    res = {"threads": args.gw_threads, "connections": args.gw_connections, "duration": args.gw_duration,
           "post_duration": args.gw_post_duration, "rows": []}
    try:
        def until(what, check, timeout=120):
            deadline = now() + timeout
            while now() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"the gateway exited; see {out}/gateway.log")
                try:
                    if check():
                        return
                except requests.RequestException:
                    pass
                time.sleep(0.2)
            raise RuntimeError(f"timed out waiting for {what}")

        until("the gateway's /readyz", lambda: http.get(f"{base}/readyz", timeout=2).status_code == 200)
        until("the API key", lambda: http.get(f"{base}/v1/account", headers=auth, timeout=2).status_code == 200)
        until("the template", lambda: http.post(f"{base}/v1/run", data=run_body, timeout=10, headers={
            **auth, "Content-Type": "application/json"}).status_code == 202)
        listed = api("GET", f"/apis/{GROUP}/namespaces/{ns}/gputasks")["items"]
        task_id = listed[0]["metadata"]["name"]
        until("the task in the gateway's cache",
              lambda: http.get(f"{base}/v1/tasks/{task_id}", headers=auth, timeout=2).status_code == 200)
        res["rss_mb_ready"] = proc_rss_mb(proc.pid)

        def phase(key, label, path, duration, method="GET", headers=None, body=None):
            cpu0 = proc_cpu_seconds(proc.pid)
            r = wrk_run(args, base + path, duration, method, headers, body)
            r.update(key=key, endpoint=label, gateway_cpu_seconds=proc_cpu_seconds(proc.pid) - cpu0)
            res["rows"].append(r)
            print(f"    {label:38} {r['rate']:9.0f}/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                  f"non-2xx {r['non_2xx']}", flush=True)
            return r

        phase("healthz", "GET /healthz", "/healthz", args.gw_duration)
        phase("get_task", "GET /v1/tasks/{id}", f"/v1/tasks/{task_id}", args.gw_duration, headers=auth)
        before = len(api("GET", f"/apis/{GROUP}/namespaces/{ns}/gputasks")["items"])
        post = phase("run", "POST /v1/run", "/v1/run", args.gw_post_duration, "POST",
                     {**auth, "Content-Type": "application/json"}, run_body)
        # Tasks the POSTs created, as the apiserver has them (wrk drops the
        # answers still in flight when it stops; their tasks exist all the same).
        time.sleep(1)
        queued = len(api("GET", f"/apis/{GROUP}/namespaces/{ns}/gputasks")["items"])
        post["tasks_created"] = queued - before
        phase("get_task_queued", f"GET /v1/tasks/{{id}} ({queued} queued)", f"/v1/tasks/{task_id}",
              args.gw_duration, headers=auth)
        res["rss_mb_after"] = proc_rss_mb(proc.pid)
        res["cpu_seconds_total"] = proc_cpu_seconds(proc.pid)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
    # The apiserver's own create rate at as many requests in flight, for POST /v1/run to compare with.
    direct_n = max(200, post["tasks_created"])
    lr = load(args, f"/apis/{GROUP}/namespaces/{ns}/gputasks", task_body("direct-{i}", "echo"), direct_n,
              concurrency=args.gw_connections)
    res["direct_creates"] = loader_summary(lr)
    healthz = res["rows"][0]["rate"]
    for r in res["rows"]:
        r["ratio_to_healthz"] = r["rate"] / healthz
    post["ratio_to_direct_creates"] = post["rate"] / lr["rate"]
    print(f"  {'endpoint':38} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'÷ healthz':>9} {'non-2xx':>8} "
          f"{'gw CPU s':>8}")
    for r in res["rows"]:
        print(f"  {r['endpoint']:38} {r['rate']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
              f"{r['ratio_to_healthz']:9.3f} {r['non_2xx']:8} {r['gateway_cpu_seconds']:8.1f}")
    print(f"  POST /v1/run created {post['tasks_created']} GpuTasks in {post['seconds']:.1f}s; direct creates "
          f"(bench-load, {args.gw_connections} in flight): {lr['rate']:.0f}/s, so POST ÷ direct = "
          f"{post['ratio_to_direct_creates']:.2f}")
    print(f"  gateway RSS {res['rss_mb_ready']:.1f} MB when ready, {res['rss_mb_after']:.1f} MB after the run; "
          f"{wrk_version()}", flush=True)
    res["wrk"] = wrk_version()
    if any(r["non_2xx"] or any(r["socket_errors"].values()) for r in res["rows"]):
        print("  WARNING: some requests failed (non-2xx or socket errors); see the rows", flush=True)
    delete_namespaces("bench-gw")
    delete_accounts()
    return res


def wrk_version():
    p = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return " ".join(((p.stdout or p.stderr).split() or ["wrk"])[:2])


SCENARIOS = {"throughput": throughput, "writes": writes_per_task, "backlog": backlog, "memory": memory,
             "gateway": gateway}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scale", default=os.environ.get("BENCH_SCALE", "full"), choices=SCALES)
    # memory last: its namespace (up to 100k tasks) is deleted in the background, not waited for
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
    p.add_argument("--skip-kcm-defaults", action="store_true")
    for k in ("throughput", "backlog", "quota", "accounts", "writes", "job_defaults"):
        p.add_argument(f"--{k.replace('_', '-')}", type=int)
    p.add_argument("--memory-points", help="comma-separated task counts")
    args = p.parse_args()
    sizes = dict(SCALES[args.scale])
    for k in ("throughput", "backlog", "quota", "accounts", "writes", "job_defaults"):
        if getattr(args, k) is not None:
            sizes[k] = getattr(args, k)
    if args.memory_points:
        sizes["memory"] = [int(x) for x in args.memory_points.split(",")]
    os.makedirs(args.out, exist_ok=True)
    delete_namespaces("bench-")
    delete_accounts()
    settle_namespaces("bench-", timeout=900)  # an earlier run's last namespaces may still be going
    started = time.time()
    scenarios = args.scenarios.split(",")
    for name in scenarios:
        print(f"== {name} ({args.scale})", flush=True)
        t = now()
        res = SCENARIOS[name](args, sizes, args.out)
        res["scale"] = args.scale
        res["wall_seconds"] = now() - t
        with open(os.path.join(args.out, f"{name}.json"), "w") as f:
            json.dump(res, f, indent=1)
        if name == scenarios[-1]:
            # Deleting many tasks takes minutes (100k: about 4.5 on 2 cores);
            # the next run waits for it, this one need not.
            print(f"  ({name}: {res['wall_seconds']:.0f}s; its namespaces are being deleted in the background)",
                  flush=True)
        else:
            t_clean = now()
            settle_namespaces("bench-")
            print(f"  ({name}: {res['wall_seconds']:.0f}s, then {now() - t_clean:.0f}s for its namespaces to go)",
                  flush=True)
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
