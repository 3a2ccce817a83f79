//! Harness for the end-to-end suites: the real local control plane
//! (`e2e/cluster/up.sh`), the `runplane` binary as a child process, a fresh
//! namespace and account per test, and waits with deadlines.
//!
//! Only one controller may act on the cluster at a time, so tests that start
//! one hold [`serial`] for their whole run.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use runplane::resources::{GpuAccount, GpuTask, GpuTemplate, TaskPhase};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the cluster for one test at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The admin kubeconfig of the local control plane.
pub fn kubeconfig() -> PathBuf {
    let path = std::env::var_os("RUNPLANE_E2E_KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("e2e/.cluster/kubeconfig"));
    assert!(
        path.exists(),
        "no local control plane at {}: start it with `make cluster-up` (or run `make test`)",
        path.display()
    );
    path
}

pub async fn client() -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig()).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.expect("config");
    Client::try_from(config).expect("client")
}

/// The kubectl to run: `$KUBECTL`, else the one built with the running
/// control plane (the server's own release, see e2e/cluster/build.sh; its
/// bin directory is in the state directory's cluster.env), else `kubectl`.
pub fn kubectl_program() -> PathBuf {
    if let Some(program) = std::env::var_os("KUBECTL") {
        return program.into();
    }
    let env = std::fs::read_to_string(kubeconfig().with_file_name("cluster.env")).unwrap_or_default();
    env.lines()
        .find_map(|line| line.strip_prefix("BIN="))
        .map(|bin| Path::new(bin).join("kubectl"))
        .filter(|kubectl| kubectl.is_file())
        .unwrap_or_else(|| "kubectl".into())
}

/// kubectl against the local control plane; returns (success, stdout+stderr).
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(kubectl_program());
    cmd.arg("--kubeconfig").arg(kubeconfig()).args(args);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl runs");
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` until it returns Some, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// For what must not happen: checks `check` every 100 ms for `duration`,
/// and panics, naming `what`, as soon as it is false.
pub async fn holds_for<F, Fut>(what: &str, duration: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + duration;
    while Instant::now() < end {
        assert!(check().await, "{what} stopped holding");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of one series in a Prometheus exposition, e.g.
/// `runplane_webhook_deliveries_total{result="delivered"}`.
pub fn metric_line(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A `runplane controller` child process, killed when dropped.
pub struct Controller {
    child: Option<Child>,
    pub metrics_port: u16,
    args: Vec<String>,
    kubeconfig: PathBuf,
    env: Vec<(String, String)>,
    pub log: PathBuf,
}

impl Controller {
    /// Starts a controller with test-friendly timings plus `extra` flags.
    pub async fn start(extra: &[&str]) -> Self {
        let mut args = vec!["--leader-election=false"];
        args.extend_from_slice(extra);
        Self::start_raw(&args).await
    }

    /// Starts a controller with exactly the test timings and `extra` (no
    /// leader-election default), e.g. for replicas that elect a leader.
    pub async fn start_raw(extra: &[&str]) -> Self {
        Self::start_as(&kubeconfig(), extra).await
    }

    /// Like [`Controller::start_raw`], authenticated by another kubeconfig
    /// (e.g. a ServiceAccount token, to test its RBAC).
    pub async fn start_as(kubeconfig: &Path, extra: &[&str]) -> Self {
        Self::start_as_with_env(kubeconfig, extra, &[]).await
    }

    /// Like [`Controller::start`], with extra environment variables.
    pub async fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut args = vec!["--leader-election=false"];
        args.extend_from_slice(extra);
        Self::start_as_with_env(&kubeconfig(), &args, env).await
    }

    async fn start_as_with_env(kubeconfig: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let metrics_port = free_port();
        let mut args: Vec<String> = vec![
            "controller".into(),
            format!("--metrics-addr=127.0.0.1:{metrics_port}"),
            "--start-deadline=6s".into(),
            "--retry-backoff=1s".into(),
            "--timeout-grace=5s".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = std::env::temp_dir().join(format!("runplane-e2e-controller-{metrics_port}.log"));
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut controller = Self { child: None, metrics_port, args, kubeconfig: kubeconfig.to_path_buf(), env, log };
        controller.spawn().await;
        controller
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_runplane"))
            .args(&self.args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the runplane binary starts");
        self.child = Some(child);
        let url = format!("http://127.0.0.1:{}/readyz", self.metrics_port);
        let log = self.log.clone();
        wait_for(&format!("the controller to be ready (log: {})", log.display()), Duration::from_secs(30), || {
            let url = url.clone();
            async move { http_get(&url).await.filter(|(code, _)| *code == 200).map(|_| ()) }
        })
        .await;
    }

    /// SIGKILL: no chance to clean up, as when a node dies.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    pub async fn metrics(&self) -> String {
        http_get(&format!("http://127.0.0.1:{}/metrics", self.metrics_port)).await.expect("metrics").1
    }

    /// True while this replica holds the controller lease (its `runplane_leader` gauge).
    pub async fn is_leader(&self) -> bool {
        match http_get(&format!("http://127.0.0.1:{}/metrics", self.metrics_port)).await {
            Some((200, body)) => body.lines().any(|l| l.trim() == "runplane_leader 1"),
            _ => false,
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill9();
        remove_log_unless_failed(&self.log);
    }
}

/// A test's process log goes with the test when it passed; a failed test
/// leaves it for a look and says where it is.
pub fn remove_log_unless_failed(log: &Path) {
    if std::thread::panicking() {
        eprintln!("log kept: {}", log.display());
    } else {
        let _ = std::fs::remove_file(log);
    }
}

/// A plain HTTP/1.1 GET over loopback (no client crate needed for two endpoints).
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

/// A fresh namespace with a GpuAccount of the same name that owns it.
pub struct Tenant {
    pub client: Client,
    pub name: String,
    /// Every change to the tenant's task pods since the namespace was made.
    pub pod_changes: Recorder<Pod>,
}

impl Tenant {
    pub async fn new(prefix: &str, plan: &str, credits: i64) -> Self {
        Self::with_spec(prefix, json!({"plan": plan, "credits": credits})).await
    }

    pub async fn with_spec(prefix: &str, mut spec: Value) -> Self {
        let client = client().await;
        let name = format!("e2e-{prefix}-{:06x}", rand_u32() & 0xffffff);
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"runplane.dev/e2e": "true"}}}))
                .unwrap();
        namespaces.create(&PostParams::default(), &ns).await.expect("namespace");
        let pod_changes = Recorder::start(Api::namespaced(client.clone(), &name), TASK_PODS).await;
        spec["namespaces"] = json!([name]);
        spec["email"] = json!(format!("{name}@example.com"));
        let account: GpuAccount =
            serde_json::from_value(json!({"apiVersion": "runplane.dev/v1alpha1", "kind": "GpuAccount", "metadata": {"name": name, "labels": {"runplane.dev/e2e": "true"}}, "spec": spec})).unwrap();
        Api::<GpuAccount>::all(client.clone()).create(&PostParams::default(), &account).await.expect("account");
        // The default service account appears shortly after the namespace.
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), &name);
        wait_for("the default service account", Duration::from_secs(30), || async {
            sa.get_opt("default").await.ok().flatten()
        })
        .await;
        Self { client, name, pod_changes }
    }

    pub fn tasks(&self) -> Api<GpuTask> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub async fn account(&self) -> GpuAccount {
        Api::<GpuAccount>::all(self.client.clone()).get(&self.name).await.unwrap()
    }

    /// A template whose fake workload runs for `duration` and writes `message`
    /// (kwok scripts it from the pod annotations); `extra` is merged into the spec.
    pub async fn template(&self, name: &str, duration: &str, extra: Value) -> GpuTemplate {
        let mut spec = json!({
            "image": "example.com/worker:1",
            "gpus": 1,
            "podMetadata": {"annotations": {
                "e2e.runplane.dev/duration": duration,
                "e2e.runplane.dev/message": format!("{{\"result_url\": \"https://cdn.example.com/{name}.png\"}}"),
            }},
        });
        merge(&mut spec, extra);
        let template: GpuTemplate = serde_json::from_value(
            json!({"apiVersion": "runplane.dev/v1alpha1", "kind": "GpuTemplate", "metadata": {"name": name}, "spec": spec}),
        )
        .unwrap();
        let api: Api<GpuTemplate> = Api::namespaced(self.client.clone(), &self.name);
        api.create(&PostParams::default(), &template).await.expect("template")
    }

    pub async fn task(&self, name: &str, template: &str, extra: Value) -> GpuTask {
        let mut spec = json!({"templateRef": {"name": template}, "input": {"prompt": name}});
        merge(&mut spec, extra);
        let task: GpuTask = serde_json::from_value(
            json!({"apiVersion": "runplane.dev/v1alpha1", "kind": "GpuTask", "metadata": {"name": name}, "spec": spec}),
        )
        .unwrap();
        self.tasks().create(&PostParams::default(), &task).await.expect("task")
    }

    pub async fn get(&self, name: &str) -> GpuTask {
        self.tasks().get(name).await.unwrap()
    }

    /// Waits until the task reaches `phase` and returns it.
    pub async fn wait_phase(&self, name: &str, phase: TaskPhase, timeout: Duration) -> GpuTask {
        let api = self.tasks();
        wait_for(&format!("task {name} to be {phase:?}"), timeout, || {
            let api = api.clone();
            async move { api.get(name).await.ok().filter(|t| t.phase() == Some(phase)) }
        })
        .await
    }

    pub async fn cancel(&self, name: &str) {
        self.tasks()
            .patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"cancel": true}})))
            .await
            .unwrap();
    }

    /// Pods of the tenant that still hold capacity (not yet finished).
    pub async fn live_pods(&self) -> Vec<Pod> {
        self.pods()
            .list(&ListParams::default().labels("runplane.dev/task"))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")))
            .collect()
    }

    /// Waits until every task of the tenant has finished and the watch of its
    /// pods has seen every pod end. Returns the tasks and the most pods that
    /// held capacity at once since the tenant was made (exact, see
    /// [`peak_held`]), or `peak` if that is more.
    pub async fn finish_all(&self, timeout: Duration, peak: usize) -> (Vec<GpuTask>, usize) {
        let tasks = wait_for("every task to finish", timeout, || async {
            let tasks = self.tasks().list(&ListParams::default()).await.ok()?.items;
            tasks.iter().all(|t| t.is_terminal()).then_some(tasks)
        })
        .await;
        self.wait_pods_ended(timeout).await;
        (tasks, peak.max(self.peak_pods() as usize))
    }

    /// Waits until the watch of the tenant's pods has seen each of them end.
    pub async fn wait_pods_ended(&self, timeout: Duration) {
        wait_for("the watch to see every task pod end", timeout, || async {
            holding(&self.pod_changes.changes()).is_empty().then_some(())
        })
        .await;
    }

    /// The most task pods of the tenant that held capacity at once so far.
    pub fn peak_pods(&self) -> i64 {
        peak_held(&self.pod_changes.changes(), |_| 1)
    }

    /// The most GPUs that the tenant's task pods held at once so far.
    pub fn peak_gpus(&self) -> i64 {
        peak_held(&self.pod_changes.changes(), pod_gpus)
    }

    /// Deletes the tenant's tasks (the controller lets their pods go), then
    /// the namespace and the account.
    pub async fn cleanup(self) {
        let _ = self.tasks().delete_collection(&DeleteParams::default(), &ListParams::default()).await;
        let pods = self.pods();
        let tasks_pods = ListParams::default().labels("runplane.dev/task");
        wait_for("the tenant's task pods to be gone", Duration::from_secs(60), || {
            let (pods, lp) = (pods.clone(), tasks_pods.clone());
            async move { pods.list(&lp).await.ok().filter(|l| l.items.is_empty()).map(|_| ()) }
        })
        .await;
        let _ = Api::<Namespace>::all(self.client.clone()).delete(&self.name, &DeleteParams::default()).await;
        let _ = Api::<GpuAccount>::all(self.client.clone()).delete(&self.name, &DeleteParams::default()).await;
    }
}

/// The label selector of the pods runplane makes for tasks.
pub const TASK_PODS: &str = "runplane.dev/task";

/// One change seen by a [`Recorder`]: the object as it was after it.
#[derive(Clone, Debug)]
pub struct Change<K> {
    pub object: K,
    pub deleted: bool,
}

/// Records every change to the objects one watch selects, in the API
/// server's order: one list, then one watch from the list's
/// resourceVersion, resumed from the last version seen when the connection
/// ends, so that no change is missed (unlike polling with LIST, which misses
/// what lasts less than the interval). Stops when dropped.
pub struct Recorder<K> {
    changes: Arc<Mutex<Vec<Change<K>>>>,
    broken: Arc<Mutex<Option<String>>>,
    watch: tokio::task::JoinHandle<()>,
}

impl<K> Recorder<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Starts recording the objects of `api` that match `labels` ("" for all);
    /// those that exist already are recorded first, as they are.
    pub async fn start(api: Api<K>, labels: &str) -> Self {
        let mut lp = ListParams::default();
        let mut wp = WatchParams::default().timeout(60);
        if !labels.is_empty() {
            lp = lp.labels(labels);
            wp = wp.labels(labels);
        }
        let list = api.list(&lp).await.expect("the list that starts a watch");
        let mut version = list.metadata.resource_version.clone().expect("a list has a resourceVersion");
        let initial: Vec<Change<K>> = list.items.into_iter().map(|object| Change { object, deleted: false }).collect();
        let changes = Arc::new(Mutex::new(initial));
        let broken = Arc::new(Mutex::new(None));
        let (sink, failure) = (changes.clone(), broken.clone());
        let watch = tokio::spawn(async move {
            let fail = |why: String| *failure.lock().unwrap() = Some(why);
            loop {
                let stream = match api.watch(&wp, &version).await {
                    Ok(stream) => stream,
                    Err(kube::Error::Api(status)) => return fail(format!("the watch was refused: {status:?}")),
                    Err(_) => {
                        // Not connected (yet): try again from the same version.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let mut stream = std::pin::pin!(stream);
                while let Some(event) = stream.next().await {
                    let (object, deleted) = match event {
                        Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)) => (o, false),
                        Ok(WatchEvent::Deleted(o)) => (o, true),
                        Ok(WatchEvent::Bookmark(b)) => {
                            version = b.metadata.resource_version;
                            continue;
                        }
                        // 410 Gone: changes since `version` are lost to this watch.
                        Ok(WatchEvent::Error(status)) => return fail(format!("the watch failed: {status:?}")),
                        Err(_) => break,
                    };
                    version = object.meta().resource_version.clone().unwrap_or(version);
                    sink.lock().unwrap().push(Change { object, deleted });
                }
            }
        });
        Self { changes, broken, watch }
    }

    /// The changes recorded so far, oldest first.
    pub fn changes(&self) -> Vec<Change<K>> {
        if let Some(why) = self.broken.lock().unwrap().as_ref() {
            panic!("the recording is incomplete: {why}");
        }
        self.changes.lock().unwrap().clone()
    }
}

impl<K> Drop for Recorder<K> {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// nvidia.com/gpu a pod's containers ask for.
pub fn pod_gpus(pod: &Pod) -> i64 {
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    containers
        .iter()
        .filter_map(|c| {
            let resources = c.resources.as_ref()?;
            let gpus = resources.limits.as_ref().and_then(|l| l.get("nvidia.com/gpu"));
            gpus.or_else(|| resources.requests.as_ref()?.get("nvidia.com/gpu"))?.0.parse::<i64>().ok()
        })
        .sum()
}

fn pod_finished(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// Replays recorded pod changes: a pod holds capacity from its creation
/// until it first reaches Succeeded or Failed or is deleted, the way the
/// controller counts it. Calls `seen` after each change with the pods then
/// holding capacity (by UID).
fn replay(changes: &[Change<Pod>], mut seen: impl FnMut(&HashMap<String, &Pod>)) {
    let mut holding: HashMap<String, &Pod> = HashMap::new();
    let mut ended: HashSet<String> = HashSet::new();
    for change in changes {
        let uid = change.object.uid().unwrap_or_default();
        if change.deleted || pod_finished(&change.object) {
            holding.remove(&uid);
            ended.insert(uid);
        } else if !ended.contains(&uid) {
            holding.insert(uid, &change.object);
        }
        seen(&holding);
    }
}

/// The most `weight` (1 per pod, or [`pod_gpus`]) that pods held at once,
/// over every state the recorded changes went through. Exact: each change is
/// one step of the API server's history.
pub fn peak_held(changes: &[Change<Pod>], weight: impl Fn(&Pod) -> i64) -> i64 {
    let mut peak = 0;
    replay(changes, |holding| peak = peak.max(holding.values().map(|p| weight(p)).sum()));
    peak
}

/// Names of the pods that hold capacity after the recorded changes.
pub fn holding(changes: &[Change<Pod>]) -> Vec<String> {
    let mut names = Vec::new();
    replay(changes, |holding| names = holding.values().map(|p| p.name_any()).collect());
    names
}

/// Allocatable nvidia.com/gpu of each node: what the controller's default
/// GPU quota adds up.
pub async fn node_gpus() -> BTreeMap<String, i64> {
    Api::<Node>::all(client().await)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|n| {
            let gpus = n.status.as_ref()?.allocatable.as_ref()?.get("nvidia.com/gpu")?.0.parse::<i64>().ok()?;
            Some((n.name_any(), gpus))
        })
        .collect()
}

/// The value of one series in Prometheus' text format, e.g.
/// `metric(&text, "runplane_tasks", &[("phase", "Completed")])`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    want.sort();
    series(text).find(|(n, l, _)| n == name && *l == want).map(|(_, _, v)| v)
}

/// The sum of every series of `name` (all label values); None if it has none.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    series(text).filter(|(n, _, _)| n == name).map(|(_, _, v)| v).reduce(|a, b| a + b)
}

/// (name, sorted labels, value) of each sample line.
fn series(text: &str) -> impl Iterator<Item = (String, Vec<(String, String)>, f64)> + '_ {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let value = value.parse::<f64>().ok()?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        let mut pairs: Vec<(String, String)> = labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (k, v) = p.split_once("=\"")?;
                Some((k.trim_start_matches(',').to_string(), v.trim_end_matches('"').to_string()))
            })
            .collect();
        pairs.sort();
        Some((name.to_string(), pairs, value))
    })
}

/// Removes what failed tests left behind (their tasks, namespaces, accounts).
pub async fn sweep() {
    sweep_prefix("").await
}

/// Like [`sweep`], only for tenants made with a prefix starting with
/// `prefix`, so that a suite leaves other suites' tenants alone.
pub async fn sweep_prefix(prefix: &str) {
    let client = client().await;
    let lp = ListParams::default().labels("runplane.dev/e2e=true");
    let ours = |name: &str| name.starts_with(&format!("e2e-{prefix}"));
    for ns in Api::<Namespace>::all(client.clone())
        .list(&lp)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|ns| ours(&ns.name_any()))
    {
        let tasks: Api<GpuTask> = Api::namespaced(client.clone(), &ns.name_any());
        let _ = tasks.delete_collection(&DeleteParams::default(), &ListParams::default()).await;
        // Pods left with runplane's finalizer and no controller to release them.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name_any());
        for pod in pods.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default() {
            let _ = pods
                .patch(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                )
                .await;
        }
        let _ = Api::<Namespace>::all(client.clone()).delete(&ns.name_any(), &DeleteParams::default()).await;
    }
    let accounts = Api::<GpuAccount>::all(client);
    if prefix.is_empty() {
        let _ = accounts.delete_collection(&DeleteParams::default(), &lp).await;
        return;
    }
    for account in accounts.list(&lp).await.map(|l| l.items).unwrap_or_default() {
        if ours(&account.name_any()) {
            let _ = accounts.delete(&account.name_any(), &DeleteParams::default()).await;
        }
    }
}

pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

pub fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.finish() as u32
}

pub fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The Python webhook receiver (`e2e/webhook_receiver.py`), killed when dropped.
pub struct Receiver {
    child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
    pub fail_flag: PathBuf,
    secrets: Vec<String>,
}

impl Receiver {
    /// A receiver that is not listening yet (deliveries to it fail).
    pub fn planned(secret: &str) -> Self {
        Self::planned_with(&[secret])
    }

    /// Like [`Receiver::planned`], verifying with any of several secrets.
    pub fn planned_with(secrets: &[&str]) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir();
        let log = dir.join(format!("runplane-e2e-webhooks-{port}.jsonl"));
        let fail_flag = dir.join(format!("runplane-e2e-webhooks-{port}.fail"));
        let _ = std::fs::remove_file(&log);
        Self { child: None, port, log, fail_flag, secrets: secrets.iter().map(|s| s.to_string()).collect() }
    }

    pub async fn start(&mut self) {
        let child = Command::new("python3")
            .arg(repo().join("e2e/webhook_receiver.py"))
            .args(["--port", &self.port.to_string(), "--lifetime", "600"])
            .args(self.secrets.iter().flat_map(|s| ["--secret", s.as_str()]))
            .arg("--log")
            .arg(&self.log)
            .arg("--fail-flag")
            .arg(&self.fail_flag)
            .spawn()
            .expect("python3 runs the receiver");
        self.child = Some(child);
        let port = self.port;
        wait_for("the webhook receiver to listen", Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.fail_flag);
        remove_log_unless_failed(&self.log);
    }
}
