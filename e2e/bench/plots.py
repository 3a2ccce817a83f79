"""PNG plots of the benchmark results (matplotlib, headless)."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(name, res, out):
    fn = {"throughput": throughput, "backlog": backlog, "memory": memory, "writes": writes, "gateway": gateway}.get(name)
    if fn and not res.get("skipped"):
        fn(res, os.path.join(out, f"{name}.png"))


def throughput(res, path):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, label in (("raw", "raw pod creates"), ("job_raised_qps", "Job controller (QPS 1000)"),
                       ("job_defaults", "Job controller (default QPS 20)"), ("runplane", "runplane")):
        r = res.get(key)
        if r and r.get("series"):
            s = r["series"]
            ax.plot(s, range(1, len(s) + 1), label=f"{label}: {r['rate']:.0f}/s")
    ax.set_xlabel("seconds since the first create")
    ax.set_ylabel("pods created")
    ax.set_title(f"Pods created, {res['tasks']} one-GPU tasks/Jobs/pods, {res['connections']} creates in flight")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def backlog(res, path):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    s = [x for x in res["samples"] if x[1] is not None]
    ax.plot([x[0] for x in s], [x[1] for x in s], label="queued (no pod yet)")
    ax.plot([x[0] for x in res["samples"]], [x[3] for x in res["samples"]], label="done")
    ax.set_xlabel("seconds since the first create")
    ax.set_ylabel("tasks")
    ax2 = ax.twinx()
    ax2.plot([x[0] for x in res["inuse"]], [x[1] for x in res["inuse"]], color="tab:red", lw=0.8,
             label="GPUs in use")
    ax2.axhline(res["quota_gpus"], color="tab:red", ls="--", lw=0.8, label="GPU quota")
    ax2.set_ylabel("GPUs")
    ax2.set_ylim(0, res["quota_gpus"] * 1.3)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper right")
    ax.set_title(f"Backlog: {res['tasks']} tasks, {res['accounts']} accounts, quota {res['quota_gpus']} GPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def memory(res, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    pts = res["points"]
    ax.plot([p["tasks"] for p in pts], [p["rss_mb"] for p in pts], marker="o")
    ax.set_xlabel("GpuTasks in the cluster")
    ax.set_ylabel("controller RSS (MB)")
    ax.set_title("Controller memory")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def writes(res, path):
    fig, ax = plt.subplots(figsize=(7, 4))
    rows = res["rows"]
    ax.barh([f"{r['verb']} {r['resource']}" for r in rows], [r["per_task"] for r in rows])
    ax.set_xlabel("apiserver writes per task")
    ax.set_title(f"runplane writes per task ({res['writes_per_task']:.2f} in all)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gateway(res, path):
    rows = res["rows"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    labels = [r["endpoint"] for r in rows]
    ax.barh(labels, [r["rate"] for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        ax.text(r["rate"], i, f" {r['rate']:.0f}/s ({r['ratio_to_healthz']:.2f}×)", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("requests/s")
    ax.set_xlim(0, max(r["rate"] for r in rows) * 1.35)
    ax.set_title(f"runplane api under wrk ({res['threads']} threads, {res['connections']} connections)")
    y = range(len(rows))
    ax2.barh([i - 0.2 for i in y], [r["p50_ms"] for r in rows], height=0.4, label="p50")
    ax2.barh([i + 0.2 for i in y], [r["p99_ms"] for r in rows], height=0.4, label="p99")
    ax2.set_yticks(list(y))
    ax2.set_yticklabels([])
    ax2.invert_yaxis()
    ax2.set_xscale("log")
    ax2.set_xlabel("latency (ms, log scale)")
    ax2.legend()
    ax2.set_title("latency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
