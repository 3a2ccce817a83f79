"""PNG plots of the benchmark results (matplotlib, headless)."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402


def plot(name, res, out):
    fn = {"throughput": throughput, "backlog": backlog, "memory": memory, "writes": writes, "gateway": gateway}.get(name)
    if fn and not res.get("skipped"):
        fn(res, os.path.join(out, f"{name}.png"))


def throughput(res, path):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, label, style in (("raw", "raw pod creates", "-"), ("job_raised_qps", "Job controller (QPS 1000)", "-"),
                              ("job_defaults", "Job controller (default QPS 20)", "-"), ("runplane", "runplane", "-"),
                              ("runplane_backlog", "runplane from a standing backlog (from the release)", "--")):
        r = res.get(key)
        if r and r.get("series"):
            s = r["series"]
            ax.plot(s, range(1, len(s) + 1), style, label=f"{label}: {r['rate']:.0f}/s")
    ax.set_xlabel("seconds since the first create (standing backlog: since the release)")
    ax.set_ylabel("pods created")
    ax.set_title(f"Pods created, {res['tasks']} one-GPU tasks/Jobs/pods, {res['connections']} creates in flight")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def backlog(res, path):
    fig, (ax, axg) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [2, 1]})
    inuse = res["inuse"]
    t = [x[0] for x in inuse]
    ax.plot(t, [x[3] for x in inuse], color="tab:blue", lw=0.8, label="tasks waiting (no pod yet)")
    ax.plot(t, [x[4] for x in inuse], color="tab:green", label="done")
    ax.set_xlabel("seconds since the first create")
    ax.set_ylabel("tasks")
    ax2 = ax.twinx()
    ax2.plot(t, [x[1] for x in inuse], color="tab:red", lw=0.8, label="GPUs held by a pod")
    if inuse and len(inuse[0]) > 5:
        ax2.plot(t, [x[5] for x in inuse], color="tab:purple", lw=0.8, label="GPUs running a pod")
    ax2.plot(t, [x[2] for x in inuse], color="tab:orange", lw=0.8, ls=":",
             label="GPUs allowed (quota, waiting accounts' limits)")
    ax2.axhline(res["quota_gpus"], color="tab:red", ls="--", lw=0.8, label="GPU quota")
    lo, hi = res["window_seconds"]
    ax2.axvspan(lo, hi, color="grey", alpha=0.08, label="tasks waited")
    ax2.axvline(res["post_seconds"], color="grey", ls="--", lw=0.8, label="the loader's last create")
    # The closed-loop baseline (its own run, from its own first create).
    base = (res.get("baseline") or {}).get("inuse")
    if base:
        tb = [x[0] for x in base]
        ax2.plot(tb, [x[1] for x in base], color="dimgrey", lw=0.6, label="closed-loop baseline: GPUs held")
        ax2.plot(tb, [x[2] for x in base], color="darkgrey", lw=0.6, ls="-.",
                 label="closed-loop baseline: GPUs running")
    ax2.set_ylabel("GPUs")
    ax2.set_ylim(0, res["quota_gpus"] * 1.4)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=7)
    title = (f"Backlog: {res['tasks']} tasks, {res['accounts']} accounts, quota {res['quota_gpus']} GPUs; "
             f"held {100 * (res['utilization'] or 0):.1f}% of quota"
             + (f", running {100 * res['utilization_running']:.1f}%" if res.get("utilization_running") else ""))
    if base:
        b = res["baseline"]
        title += (f"\nclosed-loop baseline: held {100 * (b['utilization'] or 0):.1f}%, "
                  f"running {100 * (b['utilization_running'] or 0):.1f}%")
    ax.set_title(title, fontsize=9)
    gaps = res.get("gaps_ms") or []
    if gaps:
        axg.plot(gaps, [(i + 1) / len(gaps) for i in range(len(gaps))])
        axg.set_xscale("log")
        # A narrow range would label every minor tick on top of the others.
        axg.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        for p, ls in ((50, "--"), (99, ":")):
            v = res[f"freed_to_next_p{p}_ms"]
            axg.axvline(v, color="grey", ls=ls, lw=0.8, label=f"p{p} {v:.0f} ms")
        if base and res["baseline"].get("freed_to_next_p50_ms") is not None:
            v = res["baseline"]["freed_to_next_p50_ms"]
            axg.axvline(v, color="dimgrey", ls="-.", lw=0.6, label=f"closed-loop baseline p50 {v:.0f} ms")
        axg.legend(fontsize=8)
    axg.set_xlabel("freed GPU → next pod created (ms, log)")
    axg.set_ylabel("fraction of gaps")
    axg.set_title(f"{len(gaps)} gaps", fontsize=9)
    axg.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def memory(res, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    pts = res["points"]
    ax.plot([p["tasks"] for p in pts], [p["rss_mb"] for p in pts], marker="o", label="controller")
    if all("gateway_rss_mb" in p for p in pts):
        ax.plot([p["tasks"] for p in pts], [p["gateway_rss_mb"] for p in pts], marker="s", label="gateway")
    ax.set_xlabel("GpuTasks in the cluster")
    ax.set_ylabel("RSS (MB)")
    ax.set_title("Memory: a fresh process per point")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def writes(res, path):
    runs = res["runs"]
    labels = sorted({f"{r['verb']} {r['resource']}" for run in runs for r in run["rows"]})
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * len(labels)))
    height = 0.8 / len(runs)
    for i, run in enumerate(runs):
        per = {f"{r['verb']} {r['resource']}": r["per_task"] for r in run["rows"]}
        y = [j + (i - (len(runs) - 1) / 2) * height for j in range(len(labels))]
        ax.barh(y, [per.get(k, 0) for k in labels], height=height,
                label=f"{run['label']}: {run['writes_per_task']:.2f} per task")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlabel("apiserver writes per task")
    ax.set_title(f"runplane writes per task, {res['tasks']} tasks per run")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="x")
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
