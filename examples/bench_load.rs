//! The benchmarks' load generator (`e2e/bench/bench.py`): creates Kubernetes
//! objects concurrently from a JSON body template, optionally merge-patching
//! each one's `/status` after creating it, and prints one JSON line:
//! `{"created", "seconds", "requests", "errors", …}`.
//!
//! ```sh
//! cargo run --release --example bench-load -- --kubeconfig e2e/.cluster/kubeconfig \
//!   --path /api/v1/namespaces/bench/pods --from 0 --to 1000 \
//!   --body '{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p-{i}"},"spec":{…}}'
//! ```
//!
//! `{i}` anywhere in the body (and the status patch) becomes the index. With
//! `--items FILE` each line of FILE is `{"path": …, "body": {…}}` instead, for
//! objects spread over several collections. 429, 5xx and connection errors
//! are retried with a short backoff; a 409 on create means the object is
//! already there (a retried create that had gone through), and counts as
//! created. The client has no rate limiter of its own: `--concurrency` requests
//! are in flight at once, each on its own connection. With `--times FILE`, the
//! moment each object's create succeeded (Unix seconds) is written to FILE, one
//! line per object in input order, for the harness to line up with what it
//! watches.
//!
//! `--keep N` runs a closed loop instead (the objects must be pods): at most N
//! of the created pods are unfinished at once. A pod watcher on
//! `--keep-selector` has listed what is there before the first create; each
//! pod it then sees end (Succeeded, Failed or deleted; once per uid) lets the
//! next item in input order be created, and a create that fails gives its
//! turn back. With `--keep-for SECS` no create starts later than SECS after
//! the first: the items left are skipped (time 0 in `--times`, no error). The
//! report adds `"ended_seen"` (pod ends the watcher saw) and `"skipped"`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

#[derive(Parser)]
#[command(about = "Creates Kubernetes objects concurrently for the benchmarks")]
struct Args {
    /// Kubeconfig file; $KUBECONFIG or in-cluster config when unset.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Collection to create in, e.g. /api/v1/namespaces/NS/pods or /apis/GROUP/VERSION/namespaces/NS/RESOURCE.
    #[arg(long, required_unless_present = "items")]
    path: Option<String>,
    /// JSON body template; `{i}` is replaced by the index.
    #[arg(long, conflicts_with = "body_file", required_unless_present_any = ["body_file", "items"])]
    body: Option<String>,
    /// File holding the JSON body template.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// First index.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// End index (exclusive).
    #[arg(long, required_unless_present = "items")]
    to: Option<u64>,
    /// JSON lines of {"path": COLLECTION, "body": OBJECT}, created in this order (instead of --path/--body/--from/--to).
    #[arg(long, conflicts_with_all = ["path", "body", "body_file", "to"])]
    items: Option<PathBuf>,
    /// JSON merge patch sent to the /status subresource of each object after it is created (`{i}` replaced too).
    #[arg(long)]
    status_patch: Option<String>,
    /// Attempts per request before the object counts as an error.
    #[arg(long, default_value_t = 10)]
    attempts: u32,
    /// Write when each object's create succeeded (Unix seconds; 0 for an error) to this file, one line per object in input order.
    #[arg(long)]
    times: Option<PathBuf>,
    /// Closed loop: at most this many of the created pods unfinished at once; the next is created when one ends.
    #[arg(long, requires = "keep_selector")]
    keep: Option<usize>,
    /// Label selector of the pods --keep watches end (those this run creates).
    #[arg(long, requires = "keep")]
    keep_selector: Option<String>,
    /// With --keep: start no create later than this many seconds after the first; skip the items left.
    #[arg(long, requires = "keep")]
    keep_for: Option<f64>,
}

/// One object to create: its collection, name and body.
struct Item {
    path: String,
    name: String,
    body: Vec<u8>,
    status_patch: Option<Value>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    create_requests: AtomicU64,
    patch_requests: AtomicU64,
    created: AtomicU64,
    already_there: AtomicU64,
    patched: AtomicU64,
    retries: AtomicU64,
    errors: AtomicU64,
}

enum Op<'a> {
    Create,
    PatchStatus(&'a Value),
}

enum Outcome {
    Done,
    AlreadyThere,
}

/// Sends one request, retrying what may succeed on a later attempt.
async fn call(client: &Client, item: &Item, op: &Op<'_>, counters: &Counters, attempts: u32) -> Result<Outcome> {
    let request = kube::core::Request::new(item.path.as_str());
    let mut attempt = 0;
    loop {
        attempt += 1;
        let http_request = match op {
            Op::Create => request.create(&PostParams::default(), item.body.clone()),
            Op::PatchStatus(patch) => {
                request.patch_subresource("status", &item.name, &PatchParams::default(), &Patch::Merge(*patch))
            }
        }
        .context("building the request")?;
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let counter = match op {
            Op::Create => &counters.create_requests,
            Op::PatchStatus(_) => &counters.patch_requests,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let retry = match client.request_text(http_request).await {
            Ok(_) => return Ok(Outcome::Done),
            Err(kube::Error::Api(status)) if status.code == 409 && matches!(op, Op::Create) => {
                return Ok(Outcome::AlreadyThere);
            }
            Err(kube::Error::Api(status)) if status.code == 429 || status.code >= 500 => {
                format!("{} {}", status.code, status.message)
            }
            Err(kube::Error::Api(status)) => {
                bail!("{} {}/{}: {} {}", http_method(op), item.path, item.name, status.code, status.message)
            }
            // Connection errors and timeouts.
            Err(e) => e.to_string(),
        };
        if attempt >= attempts {
            bail!("{} {}/{}: gave up after {attempt} attempts: {retry}", http_method(op), item.path, item.name);
        }
        counters.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis((50 << attempt.min(5)).min(1000))).await;
    }
}

fn http_method(op: &Op<'_>) -> &'static str {
    match op {
        Op::Create => "POST",
        Op::PatchStatus(_) => "PATCH",
    }
}

/// Creates one object (and patches its status); errors are counted, the
/// first few printed. `created_at` gets the Unix time (as f64 bits) at which
/// the create succeeded. Returns whether it did (or the object was there).
async fn load_one(client: &Client, item: Item, counters: &Counters, attempts: u32, created_at: &AtomicU64) -> bool {
    let result = async {
        match call(client, &item, &Op::Create, counters, attempts).await? {
            Outcome::Done => counters.created.fetch_add(1, Ordering::Relaxed),
            Outcome::AlreadyThere => counters.already_there.fetch_add(1, Ordering::Relaxed),
        };
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        created_at.store(unix.to_bits(), Ordering::Relaxed);
        if let Some(patch) = &item.status_patch {
            call(client, &item, &Op::PatchStatus(patch), counters, attempts).await?;
            counters.patched.fetch_add(1, Ordering::Relaxed);
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result
        && counters.errors.fetch_add(1, Ordering::Relaxed) < 5
    {
        eprintln!("bench-load: {e:#}");
    }
    created_at.load(Ordering::Relaxed) != 0
}

/// The closed loop of `--keep`: one permit a pod that may be created, given
/// back by the watcher as the created pods end.
struct Keep {
    slots: Arc<Semaphore>,
    ended: Arc<AtomicU64>,
    skipped: AtomicU64,
    watcher: JoinHandle<()>,
}

impl Keep {
    /// Starts the pod watcher and returns once its first list is done, so
    /// that the pods listed there (not this run's) are known and ignored.
    async fn start(client: &Client, n: usize, selector: &str) -> Result<Keep> {
        let slots = Arc::new(Semaphore::new(n));
        let ended = Arc::new(AtomicU64::new(0));
        let (listed_tx, listed_rx) = oneshot::channel();
        let config = watcher::Config::default().labels(selector);
        let stream = watcher(Api::<Pod>::all(client.clone()), config).default_backoff();
        let watcher = tokio::spawn(watch_ends(stream, slots.clone(), ended.clone(), listed_tx));
        match tokio::time::timeout(Duration::from_secs(60), listed_rx).await {
            Ok(Ok(())) => Ok(Keep { slots, ended, skipped: AtomicU64::new(0), watcher }),
            _ => {
                watcher.abort();
                bail!("the pod watcher on {selector} did not list the pods within 60 s")
            }
        }
    }

    /// Closes the loop SECS from now: the items still waiting for a permit
    /// then, and all after them, are skipped.
    fn close_after(&self, secs: f64) {
        let slots = self.slots.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            slots.close();
        });
    }

    /// Creates one item once a pod has ended to make room for it (or at once,
    /// within the first N); a failed create gives its permit back.
    async fn load_one(&self, client: &Client, item: Item, counters: &Counters, attempts: u32, at: &AtomicU64) {
        match self.slots.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if !load_one(client, item, counters, attempts, at).await {
            self.slots.add_permits(1);
        }
    }
}

/// Adds a permit for each pod seen ended for the first time, except those
/// of the first list (there before the run). `listed` is told when that
/// list is done.
async fn watch_ends(
    stream: impl futures::Stream<Item = watcher::Result<watcher::Event<Pod>>>,
    slots: Arc<Semaphore>,
    ended: Arc<AtomicU64>,
    listed: oneshot::Sender<()>,
) {
    let mut listed = Some(listed);
    let mut before = HashSet::new();
    let mut seen = HashSet::new();
    let mut errors = 0;
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        let (pod, gone) = match event {
            Ok(watcher::Event::InitApply(pod)) if listed.is_some() => {
                before.extend(pod.metadata.uid);
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(tx) = listed.take() {
                    let _ = tx.send(());
                }
                continue;
            }
            Ok(watcher::Event::Init) => continue,
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => (pod, false),
            Ok(watcher::Event::Delete(pod)) => (pod, true),
            Err(e) => {
                errors += 1;
                if errors <= 5 {
                    eprintln!("bench-load: pod watcher: {e}");
                }
                continue;
            }
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if !(gone || matches!(phase, Some("Succeeded" | "Failed"))) {
            continue;
        }
        if let Some(uid) = pod.metadata.uid
            && !before.contains(&uid)
            && seen.insert(uid)
        {
            ended.fetch_add(1, Ordering::Relaxed);
            slots.add_permits(1);
        }
    }
}

fn item(path: String, body: &str, status_patch: Option<&str>) -> Result<Item> {
    let value: Value = serde_json::from_str(body).with_context(|| format!("the body is not JSON: {body}"))?;
    let Some(name) = value["metadata"]["name"].as_str() else {
        bail!("the body has no metadata.name: {body}");
    };
    let status_patch = match status_patch {
        Some(p) => Some(serde_json::from_str(p).with_context(|| format!("the status patch is not JSON: {p}"))?),
        None => None,
    };
    Ok(Item { path, name: name.to_string(), body: serde_json::to_vec(&value)?, status_patch })
}

fn items(args: &Args) -> Result<Vec<Item>> {
    let patch = args.status_patch.as_deref();
    if let Some(file) = &args.items {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).with_context(|| format!("{}:{}", file.display(), n + 1))?;
            let (Some(path), Some(body)) = (v["path"].as_str(), v.get("body")) else {
                bail!("{}:{}: want {{\"path\": …, \"body\": {{…}}}}", file.display(), n + 1);
            };
            out.push(item(path.to_string(), &body.to_string(), patch)?);
        }
        return Ok(out);
    }
    let template = match (&args.body, &args.body_file) {
        (Some(body), _) => body.clone(),
        (None, Some(file)) => std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?,
        (None, None) => bail!("give --body, --body-file or --items"),
    };
    let path = args.path.clone().context("--path is required")?;
    let to = args.to.context("--to is required")?;
    (args.from..to)
        .map(|i| {
            let i = i.to_string();
            item(path.clone(), &template.replace("{i}", &i), patch.map(|p| p.replace("{i}", &i)).as_deref())
        })
        .collect()
}

async fn client(kubeconfig: Option<&PathBuf>) -> Result<Client> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?
        }
        None => Config::infer().await?,
    };
    // A request stuck this long is retried rather than holding up the run.
    config.read_timeout = Some(Duration::from_secs(60));
    Ok(Client::try_from(config)?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.concurrency == 0 || args.attempts == 0 {
        bail!("--concurrency and --attempts must be at least 1");
    }
    let items = items(&args)?;
    if args.keep == Some(0) || args.keep_for.is_some_and(|s| !(s >= 0.0 && s.is_finite())) {
        bail!("--keep must be at least 1 and --keep-for a number of seconds");
    }
    if args.keep.is_some()
        && let Some(other) = items.iter().find(|i| !i.path.ends_with("/pods"))
    {
        bail!("--keep creates pods only, not in {}", other.path);
    }
    let client = client(args.kubeconfig.as_ref()).await?;
    let keep = match (args.keep, &args.keep_selector) {
        (Some(n), Some(selector)) => Some(Keep::start(&client, n, selector).await?),
        _ => None,
    };
    let counters = Counters::default();
    let created_at: Vec<AtomicU64> = items.iter().map(|_| AtomicU64::new(0)).collect();
    let started = Instant::now();
    if let (Some(keep), Some(secs)) = (&keep, args.keep_for) {
        keep.close_after(secs);
    }
    futures::stream::iter(items.into_iter().zip(&created_at))
        .for_each_concurrent(args.concurrency, |(item, at)| {
            let (client, counters, keep) = (&client, &counters, keep.as_ref());
            async move {
                match keep {
                    Some(keep) => keep.load_one(client, item, counters, args.attempts, at).await,
                    None => {
                        load_one(client, item, counters, args.attempts, at).await;
                    }
                }
            }
        })
        .await;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(keep) = &keep {
        keep.watcher.abort();
    }
    if let Some(file) = &args.times {
        let lines: String =
            created_at.iter().map(|t| format!("{:.6}\n", f64::from_bits(t.load(Ordering::Relaxed)))).collect();
        std::fs::write(file, lines).with_context(|| format!("writing {}", file.display()))?;
    }
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let created = n(&counters.created) + n(&counters.already_there);
    let errors = n(&counters.errors);
    let mut report = json!({
        "created": created,
        "seconds": seconds,
        "requests": n(&counters.requests),
        "errors": errors,
        "rate": created as f64 / seconds.max(1e-9),
        "create_requests": n(&counters.create_requests),
        "patch_requests": n(&counters.patch_requests),
        "already_there": n(&counters.already_there),
        "patched": n(&counters.patched),
        "retries": n(&counters.retries),
        "concurrency": args.concurrency,
    });
    if let Some(keep) = &keep {
        report["ended_seen"] = json!(n(&keep.ended));
        report["skipped"] = json!(n(&keep.skipped));
    }
    println!("{report}");
    if errors > 0 {
        std::process::exit(1);
    }
    Ok(())
}
