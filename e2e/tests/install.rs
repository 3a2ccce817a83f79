//! End-to-end: the Helm chart on the real local control plane.
//!
//! `helm install` creates every object (kwok fakes the pods, so the
//! Deployments even become ready); then the controller and the gateway run
//! outside the cluster, each authenticated as the chart's own ServiceAccount
//! for it, which proves the chart's RBAC is enough for a whole task
//! lifecycle, a signed webhook, the API (runs, progress, cancel, account)
//! and leader election with a failover, and that it stops there. A real
//! Prometheus scrapes both.
//!
//! Run with `make test`, or `bash e2e/install.sh` with the cluster up.

// `serial()` holds the cluster for a whole test, across its awaits, on
// purpose: each test has its own runtime, so the guard cannot deadlock one.
#![allow(clippy::await_holding_lock)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use runplane::resources::{GpuAccount, TaskPhase};
use serde_json::{Value, json};
use support::*;

const MINUTE: Duration = Duration::from_secs(60);
/// Label on everything these tests create in the cluster, to sweep leftovers.
const LABEL: &str = "runplane.dev/e2e-install";
/// The chart's default Lease name (controller.leaderElection.leaseName).
const LEASE: &str = "runplane-controller";
const WEBHOOK_SECRET: &str = "e2e-install-signing-secret";

/// The helm binary: $HELM (e2e/install.sh sets it), else built by e2e/tools/build.sh.
fn helm_bin() -> PathBuf {
    if let Some(helm) = std::env::var_os("HELM") {
        return PathBuf::from(helm);
    }
    let out = Command::new("bash")
        .arg(repo().join("e2e/tools/build.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("e2e/tools/build.sh runs");
    assert!(out.status.success(), "e2e/tools/build.sh failed");
    let dir = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(dir.lines().last().expect("a bin directory")).join("helm")
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("the command starts");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// kubectl with another kubeconfig (a ServiceAccount's).
fn kubectl_as(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    run(Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args))
}

/// A release of the chart in a fresh namespace; [`Release::uninstall`] checks
/// that uninstalling leaves nothing, dropping cleans up in any case.
struct Release {
    name: String,
    namespace: String,
    helm: PathBuf,
    dir: PathBuf,
    done: bool,
}

impl Release {
    async fn install() -> Self {
        sweep_installs();
        let id = rand_u32() & 0xffffff;
        let name = format!("rp-{id:06x}");
        let namespace = format!("e2e-install-{id:06x}");
        let dir = std::env::temp_dir().join(format!("runplane-e2e-{namespace}"));
        std::fs::create_dir_all(&dir).unwrap();
        // The namespace enforces the restricted Pod Security Standard: the
        // chart's pods must meet it, or the ReplicaSets cannot create them.
        let (ok, out) = kubectl(
            &["create", "-f", "-"],
            Some(
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": {
                    LABEL: "true",
                    "pod-security.kubernetes.io/enforce": "restricted",
                }}})
                .to_string(),
            ),
        );
        assert!(ok, "creating the release namespace: {out}");
        // kwok runs the chart's pods like any other: keep them running (by
        // default a fake container exits after a second).
        let values = dir.join("values.yaml");
        std::fs::write(
            &values,
            format!(
                "commonLabels:\n  {LABEL}: \"true\"\n\
                 controller:\n  podAnnotations:\n    e2e.runplane.dev/duration: forever\n\
                 api:\n  podAnnotations:\n    e2e.runplane.dev/duration: forever\n"
            ),
        )
        .unwrap();
        let helm = helm_bin();
        let (ok, out) = run(Command::new(&helm)
            .arg("--kubeconfig")
            .arg(kubeconfig())
            .args(["install", &name])
            .arg(repo().join("charts/runplane"))
            .args(["--namespace", &namespace, "--wait", "--timeout", "90s"])
            .arg("--values")
            .arg(&values));
        assert!(ok, "helm install: {out}");
        Self { name, namespace, helm, dir, done: false }
    }

    fn fullname(&self) -> String {
        format!("{}-runplane", self.name)
    }

    fn controller_sa(&self) -> String {
        format!("{}-controller", self.fullname())
    }

    fn api_sa(&self) -> String {
        format!("{}-api", self.fullname())
    }

    /// A kubeconfig that authenticates as one of the release's ServiceAccounts:
    /// a token from the TokenRequest API, the admin kubeconfig's server and CA.
    fn kubeconfig_for(&self, service_account: &str) -> PathBuf {
        let (ok, token) = kubectl(&["create", "token", service_account, "-n", &self.namespace, "--duration=1h"], None);
        assert!(ok, "kubectl create token: {token}");
        let admin: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(kubeconfig()).unwrap()).unwrap();
        let cluster = &admin["clusters"][0]["cluster"];
        let server = cluster["server"].as_str().expect("server");
        let ca = cluster["certificate-authority-data"].as_str().expect("the admin kubeconfig embeds the CA");
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority-data": ca}}],
            "users": [{"name": service_account, "user": {"token": token.trim()}}],
            "contexts": [{"name": service_account, "context": {"cluster": "e2e", "user": service_account}}],
            "current-context": service_account,
        });
        let path = self.dir.join(format!("{service_account}.kubeconfig"));
        std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
        path
    }

    /// The progress callback key of the release's Secret, as a file (what
    /// the pods get mounted).
    fn callback_key_file(&self) -> PathBuf {
        let (ok, key) = kubectl(
            &[
                "get",
                "secret",
                &format!("{}-callback", self.fullname()),
                "-n",
                &self.namespace,
                "-o",
                "go-template={{.data.key | base64decode}}",
            ],
            None,
        );
        assert!(ok && key.len() >= 32, "the callback key: {key}");
        let path = self.dir.join("callback-key");
        std::fs::write(&path, key).unwrap();
        path
    }

    /// `helm upgrade` with the same values.
    fn upgrade(&self) {
        let (ok, out) = run(Command::new(&self.helm)
            .arg("--kubeconfig")
            .arg(kubeconfig())
            .args(["upgrade", &self.name])
            .arg(repo().join("charts/runplane"))
            .args(["--namespace", &self.namespace, "--reuse-values"])
            .args(["--wait", "--timeout", "90s"]));
        assert!(ok, "helm upgrade: {out}");
    }

    /// `helm uninstall` removes every object it made (the pods go with their
    /// ReplicaSets, by garbage collection); then the namespace goes.
    async fn uninstall(mut self) {
        let (ok, out) = self.helm_uninstall();
        assert!(ok, "helm uninstall: {out}");
        let selector = format!("app.kubernetes.io/instance={}", self.name);
        let kinds = "all,clusterrole,clusterrolebinding,role,rolebinding,serviceaccount,secret,pdb";
        wait_for("nothing of the release to be left", MINUTE, || {
            let selector = selector.clone();
            async move {
                let (ok, out) = kubectl(&["get", kinds, "--all-namespaces", "-l", &selector, "-o", "name"], None);
                (ok && out.trim().is_empty()).then_some(())
            }
        })
        .await;
        self.done = true;
    }

    fn helm_uninstall(&self) -> (bool, String) {
        run(Command::new(&self.helm)
            .arg("--kubeconfig")
            .arg(kubeconfig())
            .args(["uninstall", &self.name, "--namespace", &self.namespace])
            .args(["--wait", "--timeout", "60s"]))
    }
}

impl Drop for Release {
    /// Also after a failed assertion: the release, its namespace and the
    /// files with its tokens and key go.
    fn drop(&mut self) {
        if !self.done {
            let _ = self.helm_uninstall();
        }
        let _ = kubectl(&["delete", "namespace", &self.namespace, "--wait=false"], None);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes releases that failed runs of this suite left behind.
fn sweep_installs() {
    let selector = format!("{LABEL}=true");
    let _ = kubectl(&["delete", "clusterrole,clusterrolebinding,namespace", "-l", &selector, "--wait=false"], None);
}

/// Every object of the chart's default install exists, the Deployments
/// became available, and `helm install` left nothing out.
fn assert_installed(release: &Release) {
    let full = release.fullname();
    let ns = release.namespace.as_str();
    let controller = format!("{full}-controller");
    let api = format!("{full}-api");
    let objects = [
        ("deployment", controller.as_str(), true),
        ("deployment", api.as_str(), true),
        ("service", controller.as_str(), true),
        ("service", api.as_str(), true),
        ("serviceaccount", controller.as_str(), true),
        ("serviceaccount", api.as_str(), true),
        ("poddisruptionbudget", controller.as_str(), true),
        ("poddisruptionbudget", api.as_str(), true),
        ("role", controller.as_str(), true),
        ("rolebinding", controller.as_str(), true),
        ("role", api.as_str(), true),
        ("rolebinding", api.as_str(), true),
        ("secret", &format!("{full}-callback"), true),
        ("clusterrole", controller.as_str(), false),
        ("clusterrolebinding", controller.as_str(), false),
        ("clusterrole", api.as_str(), false),
        ("clusterrolebinding", api.as_str(), false),
        ("crd", "gputasks.runplane.dev", false),
        ("crd", "gputemplates.runplane.dev", false),
        ("crd", "gpuaccounts.runplane.dev", false),
    ];
    for (kind, name, namespaced) in objects {
        let mut args = vec!["get", kind, name, "-o", "name"];
        if namespaced {
            args.extend(["-n", ns]);
        }
        let (ok, out) = kubectl(&args, None);
        assert!(ok, "{kind} {name} was not created: {out}");
    }
    // Off by default: no NetworkPolicy, no ServiceMonitor.
    let (ok, out) = kubectl(&["get", "networkpolicy", "-n", ns, "-o", "name"], None);
    assert!(ok && out.trim().is_empty(), "{out}");
    let (ok, out) =
        kubectl(&["get", "deployment", &controller, "-n", ns, "-o", "jsonpath={.status.availableReplicas}"], None);
    assert!(ok && out.trim() == "2", "two controller replicas: {out}");
}

/// Calls the chart does not grant are refused.
fn assert_forbidden_outside_rbac(release: &Release, controller_kubeconfig: &Path) {
    let refused = |args: &[&str]| {
        let (ok, out) = kubectl_as(controller_kubeconfig, args);
        assert!(
            !ok && out.to_lowercase().contains("forbidden"),
            "the controller's ServiceAccount may `kubectl {}`: {out}",
            args.join(" ")
        );
    };
    refused(&["get", "secrets", "--all-namespaces"]);
    // Secrets: get, by name, in the release namespace only (the webhook
    // signing Secrets); never listed, watched, written, or read elsewhere.
    let ns = release.namespace.as_str();
    let callback = format!("{}-callback", release.fullname());
    let (ok, out) = kubectl_as(controller_kubeconfig, &["get", "secret", &callback, "-n", ns, "-o", "name"]);
    assert!(ok, "the controller's ServiceAccount may get a Secret of its namespace: {out}");
    refused(&["get", "secrets", "-n", ns]);
    let controller = format!("system:serviceaccount:{ns}:{}", release.controller_sa());
    for verb in ["list", "watch", "create", "update", "patch", "delete"] {
        let (may, _) = kubectl(&["auth", "can-i", verb, "secrets", "-n", ns, "--as", &controller], None);
        assert!(!may, "the controller's ServiceAccount may {verb} Secrets");
    }
    refused(&["get", "secret", "anything", "-n", "kube-system"]);
    refused(&["get", "secret", "anything", "-n", "default"]);
    refused(&["create", "secret", "generic", "x", "-n", ns, "--dry-run=server"]);
    refused(&["delete", "secret", &callback, "-n", ns, "--dry-run=server"]);
    refused(&["annotate", "secret", &callback, "-n", ns, "e2e=1", "--dry-run=server"]);
    // Dry run: were it allowed, nothing would be deleted.
    refused(&["delete", "node", "gpu-node-0", "--dry-run=server"]);
    refused(&["get", "leases", "-n", "kube-system"]);
    refused(&["get", "lease", "some-other-lease", "-n", &release.namespace]);
    refused(&["create", "configmap", "x", "-n", &release.namespace, "--dry-run=server"]);
    // Allowed, for contrast: the same identity reads what the controller watches.
    let (ok, out) = kubectl_as(controller_kubeconfig, &["get", "nodes", "-o", "name"]);
    assert!(ok && out.contains("gpu-node-0"), "{out}");
}

/// Calls the chart does not grant the gateway are refused, made with its
/// ServiceAccount's token (what it is granted, the API flow of the test
/// uses for real).
fn assert_gateway_forbidden_outside_rbac(release: &Release, api_kubeconfig: &Path, tenant: &Tenant) {
    let refused = |args: &[&str]| {
        let (ok, out) = kubectl_as(api_kubeconfig, args);
        assert!(
            !ok && out.to_lowercase().contains("forbidden"),
            "the gateway's ServiceAccount may `kubectl {}`: {out}",
            args.join(" ")
        );
    };
    let ns = release.namespace.as_str();
    // API keys are read in the release namespace only.
    refused(&["get", "secrets", "-n", &tenant.name]);
    refused(&["get", "secrets", "-n", "kube-system"]);
    refused(&["create", "secret", "generic", "x", "-n", ns, "--dry-run=server"]);
    // Its own Service's EndpointSlices only.
    refused(&["get", "endpointslices", "-n", &tenant.name]);
    // Dry runs: were they allowed, nothing would change.
    refused(&["delete", "gputask", "probe", "-n", &tenant.name, "--dry-run=server"]);
    refused(&["run", "x", "--image=example.com/x", "-n", &tenant.name, "--dry-run=server"]);
    refused(&[
        "patch",
        "gpuaccount",
        &tenant.name,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"creditsUsed":0}}"#,
        "--dry-run=server",
    ]);
    refused(&[
        "patch",
        "gpuaccount",
        &tenant.name,
        "--type=merge",
        "-p",
        r#"{"spec":{"credits":1}}"#,
        "--dry-run=server",
    ]);
    refused(&["get", "nodes"]);
    refused(&["get", "leases", "-n", ns]);
}

/// Creates a task before any controller of this test runs and checks that
/// nobody acts on it: another controller on the cluster would make what
/// follows prove nothing.
async fn assert_no_other_controller(tenant: &Tenant) {
    tenant.task("probe", "work", json!({})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let probe = tenant.get("probe").await;
    // What the apiserver shows of a task nobody wrote to: the CRD's default.
    let untouched = runplane::resources::GpuTaskStatus {
        phase: Some(runplane::resources::TaskPhase::Queued),
        ..Default::default()
    };
    assert!(
        probe.status.as_ref() == Some(&untouched),
        "another runplane controller acts on this cluster (it wrote {:?}); stop it and run again",
        probe.status
    );
}

/// A Prometheus on 127.0.0.1 that scrapes the given targets every second,
/// killed when dropped (and by `timeout` if this process dies first).
struct Prometheus {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    async fn start(jobs: &[(&str, u16)]) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("runplane-e2e-prometheus-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n");
        for (job, target) in jobs {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("timeout")
            .args(["--signal=KILL", "600", "prometheus"])
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus starts (e2e/tools/prometheus.sh installs it)");
        let prometheus = Self { child: Some(child), port, dir };
        let ready = format!("http://127.0.0.1:{port}/-/ready");
        wait_for("Prometheus to be ready", Duration::from_secs(30), || {
            let ready = ready.clone();
            async move { http_get(&ready).await.filter(|(c, _)| *c == 200).map(|_| ()) }
        })
        .await;
        prometheus
    }

    /// An instant query; Prometheus' whole answer (status, data or error).
    async fn query_raw(&self, promql: &str) -> Value {
        let url = format!("http://127.0.0.1:{}/api/v1/query?query={}", self.port, percent_encode(promql));
        match http10_get(&url).await {
            Some(body) => serde_json::from_str(&body).unwrap_or(Value::String(body)),
            None => Value::Null,
        }
    }

    /// An instant query; the `data.result` vector.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let body = self.query_raw(promql).await;
        body["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `promql` returns a sample whose value satisfies `ok`.
    async fn wait_value(&self, promql: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let ok = &ok;
        wait_for(&format!("Prometheus: {promql}"), MINUTE, || async move {
            self.query(promql).await.iter().find_map(|sample| {
                let value: f64 = sample["value"][1].as_str()?.parse().ok()?;
                ok(value).then_some(value)
            })
        })
        .await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM, which `timeout` passes on to Prometheus (a SIGKILL
            // would end `timeout` alone and orphan Prometheus).
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// GET over HTTP/1.0, so that the answer is never chunked (Prometheus'
/// larger answers would be, to an HTTP/1.1 client); the body, whatever the status.
async fn http10_get(url: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/')?;
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    let request = format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `promtool check metrics`: the exposition parses and follows the naming
/// conventions (units, _total counters, help texts).
fn promtool_check(what: &str, exposition: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts (e2e/tools/prometheus.sh installs it)");
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics on the {what}'s /metrics:\n{report}"
    );
}

/// Every query of the Grafana dashboard (deploy/grafana/runplane.json) is
/// valid PromQL, and those over the controller's metrics return data.
async fn check_dashboard(prometheus: &Prometheus, controller_metrics: &str) {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("deploy/grafana/runplane.json")).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() > 20, "{exprs:?}");
    for expr in exprs {
        let promql = expr.replace("$namespace", ".*").replace("$__rate_interval", "1m");
        let response = prometheus.query_raw(&promql).await;
        assert_eq!(response["status"], "success", "dashboard query {expr}: {response}");
        // Metric names in the query that the controller exports (the others
        // are the gateway's, or the webhook deliverer's, not in every build).
        let names: Vec<&str> = promql
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("runplane_"))
            .collect();
        let exported = |name: &str| {
            let family = name.strip_suffix("_bucket").unwrap_or(name);
            controller_metrics.contains(&format!("# TYPE {family} "))
        };
        if names.iter().all(|n| exported(n)) {
            let result = &response["data"]["result"];
            assert!(
                result.as_array().is_some_and(|r| !r.is_empty()),
                "dashboard query {expr} returns nothing: {response}"
            );
        }
    }
}

/// `runplane api` as a child process, killed when dropped.
struct Gateway {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Gateway {
    /// Starts the gateway with the chart's arguments and the given identity:
    /// API keys in the release namespace, the other replicas found through
    /// the EndpointSlices of the release's gateway Service, the callback key
    /// of the release's Secret. Listens on a free loopback port.
    async fn start(kubeconfig: &Path, release: &Release, callback_key: &Path) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("runplane-e2e-api-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_runplane"))
            .arg("api")
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg(format!("--namespace={}", release.namespace))
            .arg(format!("--callback-key-file={}", callback_key.display()))
            .arg(format!("--peer-service={}-api", release.fullname()))
            .arg("--log-format=json")
            // The test's webhook receiver listens on loopback.
            .arg("--webhook-allow-cidr=127.0.0.1/32")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            // What the chart sets from the pod's metadata.
            .env("POD_NAMESPACE", &release.namespace)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("runplane api starts");
        let gateway = Self { child, port, log };
        let ready = format!("{}/readyz", gateway.url());
        wait_for(&format!("the gateway to be ready (log: {})", gateway.log.display()), Duration::from_secs(30), || {
            let ready = ready.clone();
            async move { http_get(&ready).await.filter(|(c, _)| *c == 200).map(|_| ()) }
        })
        .await;
        gateway
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn metrics(&self) -> String {
        let (code, body) = http_get(&format!("{}/metrics", self.url())).await.expect("the gateway answers");
        assert_eq!(code, 200, "{body}");
        body
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_log_unless_failed(&self.log);
    }
}

/// A client of the gateway's RunKey API with one API key.
struct ApiClient {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl ApiClient {
    fn new(gateway: &Gateway, key: &str) -> Self {
        Self { base: gateway.url(), key: key.to_string(), http: reqwest::Client::new() }
    }

    /// Sends a request with the key as bearer token; (status, JSON body).
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("the gateway answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        (status, body)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    /// GET /v1/tasks/{id}, twice a second (well within the plan's rate
    /// limit), until `check` holds; the task as the API shows it.
    async fn wait_task(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + MINUTE;
        loop {
            let (status, body) = self.get(&format!("/v1/tasks/{id}")).await;
            assert_eq!(status, 200, "GET /v1/tasks/{id}: {body}");
            let task = &body["data"];
            if check(task) {
                return task.clone();
            }
            assert!(Instant::now() < deadline, "timed out waiting for task {id} to be {what}; last seen {task}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// A new API key for `account`, stored in `namespace`, made with the CLI as
/// an administrator would.
fn create_key(account: &str, namespace: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_runplane"))
        .args(["apikey", "create", "--account", account, "--namespace", namespace])
        .env("KUBECONFIG", kubeconfig())
        .stdin(Stdio::null())
        .output()
        .expect("the runplane binary runs");
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && key.starts_with("rk_live_") && !key.contains('\n'),
        "runplane apikey create: {key}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    key
}

#[tokio::test]
async fn helm_install_creates_every_object_and_its_service_accounts_run_a_task_lifecycle() {
    let _cluster = serial();
    sweep_prefix("install-").await;
    let release = Release::install().await;
    assert_installed(&release);

    let controller_kubeconfig = release.kubeconfig_for(&release.controller_sa());
    assert_forbidden_outside_rbac(&release, &controller_kubeconfig);
    let callback_key = release.callback_key_file();
    let key = std::fs::read(&callback_key).unwrap();
    release.upgrade();
    assert_eq!(std::fs::read(release.callback_key_file()).unwrap(), key, "an upgrade keeps the callback key");

    // The account signs its webhooks with a Secret in the release namespace,
    // the only one whose Secrets the controller may read.
    let (ok, out) = kubectl(
        &[
            "create",
            "secret",
            "generic",
            "e2e-webhook-signing",
            "-n",
            &release.namespace,
            &format!("--from-literal=primary={WEBHOOK_SECRET}"),
        ],
        None,
    );
    assert!(ok, "creating the signing Secret: {out}");
    let tenant = Tenant::with_spec(
        "install-life",
        json!({"plan": "pro", "credits": 10_000, "webhook": {"secretRef": {"name": "e2e-webhook-signing"}}}),
    )
    .await;
    let mut receiver = Receiver::planned(WEBHOOK_SECRET);
    receiver.start().await;
    tenant.template("work", "1s", json!({"price": {"perRun": 7}})).await;
    tenant.template("long", "forever", json!({"price": {"perRun": 7}})).await;
    assert_no_other_controller(&tenant).await;
    let api_kubeconfig = release.kubeconfig_for(&release.api_sa());
    assert_gateway_forbidden_outside_rbac(&release, &api_kubeconfig, &tenant);

    // The gateway as the chart runs it, out of the cluster, as the chart's
    // gateway ServiceAccount.
    let gateway = Gateway::start(&api_kubeconfig, &release, &callback_key).await;

    // The controller as the chart runs it, as the chart's controller
    // ServiceAccount: its Lease in the release namespace, JSON logs, the
    // gateway as the workloads' progress callback.
    let lease_namespace = format!("--lease-namespace={}", release.namespace);
    let key_flag = format!("--callback-key-file={}", callback_key.display());
    let callback_url = format!("--callback-url={}", gateway.url());
    let controller = Controller::start_as(
        &controller_kubeconfig,
        &[
            "--leader-election=true",
            &lease_namespace,
            "--lease-duration=4",
            "--identity=e2e-install",
            // Counted from the pod's scripted end: long enough that a
            // Completed status written seconds late (kwok or the
            // controller behind on a busy machine) is still seen before
            // the task goes, short enough for the test's last wait.
            "--finished-ttl=20s",
            "--log-format=json",
            "--webhook-allow-cidr=127.0.0.1/32",
            &key_flag,
            &callback_url,
        ],
    )
    .await;

    let prometheus =
        Prometheus::start(&[("runplane-controller", controller.metrics_port), ("runplane-api", gateway.port)]).await;

    wait_for("the controller to lead", MINUTE, || async { controller.is_leader().await.then_some(()) }).await;

    // A task runs to completion: pods created, status written, the account
    // charged.
    let done = tenant.wait_phase("probe", TaskPhase::Completed, MINUTE).await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.output.as_ref().unwrap()["result_url"], "https://cdn.example.com/work.png");
    assert_eq!(status.credits_used, Some(7));

    // One more, surely seen Completed by Prometheus, which scrapes by now.
    prometheus.wait_value(r#"up{job="runplane-controller"}"#, |v| v == 1.0).await;
    tenant.task("scraped", "work", json!({"webhookUrl": receiver.url("/ok")})).await;
    tenant.wait_phase("scraped", TaskPhase::Completed, MINUTE).await;
    // Its webhook, signed with the Secret that the chart's RBAC lets the
    // controller read.
    let delivered = wait_for("the signed webhook", MINUTE, || async { receiver.requests().into_iter().next() }).await;
    assert_eq!((delivered["status"].as_u64(), delivered["path"].as_str()), (Some(200), Some("/ok")));
    assert_eq!(delivered["body"]["event"], "task.completed");
    assert_eq!(delivered["body"]["data"]["task_id"], "scraped");
    assert!(delivered["runkey_ok"] == true && delivered["standard_ok"] == true, "signed: {delivered}");

    // A canceled task: its pod is released (finalizer patched) and deleted.
    tenant.task("stop", "long", json!({})).await;
    tenant.wait_phase("stop", TaskPhase::Running, MINUTE).await;
    tenant.cancel("stop").await;
    tenant.wait_phase("stop", TaskPhase::Canceled, MINUTE).await;
    wait_for("the canceled task's pod to go", MINUTE, || async { tenant.live_pods().await.is_empty().then_some(()) })
        .await;

    // --- the API, served by the gateway as the chart's ServiceAccount --------
    // A key in the release namespace, which no account lists; the gateway
    // reads it there.
    let api_key = create_key(&tenant.name, &release.namespace);
    let api = ApiClient::new(&gateway, &api_key);
    // The gateway knows a key once its watch of Secrets brings it: at once
    // on a quiet machine, later on a busy one.
    wait_for("the gateway to know the new key", MINUTE, || async {
        (api.get("/v1/account").await.0 == 200).then_some(())
    })
    .await;
    // An unknown key is refused.
    let (code, body) = ApiClient::new(&gateway, "rk_live_notakey").get("/v1/account").await;
    assert_eq!((code, &body["code"]), (401, &json!(40001)), "{body}");

    // A run: the gateway creates the task, the controller runs it.
    let (code, body) = api
        .post(
            "/v1/run",
            &json!({"template_id": "work", "input": {"prompt": "through the API"}, "webhook_url": receiver.url("/api")}),
        )
        .await;
    assert_eq!(code, 202, "POST /v1/run: {body}");
    assert_eq!(body["data"]["status"], "queued", "{body}");
    let run_id = body["data"]["task_id"].as_str().expect("a task id").to_string();
    let completed = api
        .wait_task(&run_id, "completed", |t| {
            assert!(!matches!(t["status"].as_str(), Some("failed" | "canceled")), "{t}");
            t["status"] == "completed"
        })
        .await;
    assert_eq!(completed["template_id"], "work", "{completed}");
    assert_eq!(completed["input"], json!({"prompt": "through the API"}), "{completed}");
    assert_eq!(completed["output"]["result_url"], "https://cdn.example.com/work.png", "{completed}");
    assert_eq!((&completed["credits_used"], &completed["progress"]), (&json!(7), &json!(100)), "{completed}");
    let delivered = wait_for("the API task's signed webhook", MINUTE, || async {
        receiver.requests().into_iter().find(|r| r["path"] == "/api")
    })
    .await;
    assert_eq!(delivered["body"]["event"], "task.completed");
    assert_eq!(delivered["body"]["data"]["task_id"], run_id.as_str());
    assert!(delivered["runkey_ok"] == true && delivered["standard_ok"] == true, "signed: {delivered}");

    // Another run, which keeps running: its workload reports progress to the
    // callback URL the controller gave its pod, with the token derived from
    // the chart's callback key; the gateway writes it into the task's status.
    let (code, body) = api.post("/v1/run", &json!({"template_id": "long", "input": {}})).await;
    assert_eq!(code, 202, "POST /v1/run: {body}");
    let long_id = body["data"]["task_id"].as_str().expect("a task id").to_string();
    api.wait_task(&long_id, "running", |t| t["status"] == "running").await;
    let pod = tenant
        .pods()
        .list(&ListParams::default().labels(&format!("{TASK_PODS}={long_id}")))
        .await
        .unwrap()
        .items
        .pop()
        .expect("the running task's pod");
    let env = pod.spec.unwrap().containers[0].env.clone().unwrap_or_default();
    let var = |name: &str| env.iter().find(|e| e.name == name).and_then(|e| e.value.clone()).unwrap_or_default();
    assert_eq!(var("RUNPLANE_CALLBACK_URL"), format!("{}/v1/internal/tasks/{long_id}/progress", gateway.url()));
    let report = reqwest::Client::new()
        .post(var("RUNPLANE_CALLBACK_URL"))
        .bearer_auth(var("RUNPLANE_CALLBACK_TOKEN"))
        .json(&json!({"progress": 40}))
        .send()
        .await
        .expect("the gateway answers");
    let code = report.status();
    assert_eq!(code, 200, "the progress report: {}", report.text().await.unwrap_or_default());
    let running = api.wait_task(&long_id, "at 40 %", |t| t["progress"] == 40).await;
    assert_eq!(running["status"], "running", "{running}");
    // Canceled through the API: the controller stops it and lets its pod go.
    let (code, body) = api.post(&format!("/v1/tasks/{long_id}/cancel"), &json!({})).await;
    assert_eq!(code, 200, "POST /v1/tasks/{long_id}/cancel: {body}");
    api.wait_task(&long_id, "canceled", |t| t["status"] == "canceled").await;
    wait_for("the canceled task's pod to go", MINUTE, || async { tenant.live_pods().await.is_empty().then_some(()) })
        .await;
    // ------------------------------------------------------------------------

    // Five runs at 7 credits: probe, scraped, stop, and the API's two.
    let accounts: Api<GpuAccount> = Api::all(tenant.client.clone());
    wait_for("the account's status to show the five charges", MINUTE, || {
        let accounts = accounts.clone();
        let name = tenant.name.clone();
        async move {
            let account = accounts.get(&name).await.ok()?;
            let status = account.status?;
            (status.credits_used == 35 && status.balance == 10_000 - 35).then_some(())
        }
    })
    .await;
    // GET /v1/account shows it too (from the gateway's cache, moments later).
    let deadline = Instant::now() + MINUTE;
    let account = loop {
        let (code, body) = api.get("/v1/account").await;
        assert_eq!(code, 200, "GET /v1/account: {body}");
        if body["data"]["balance"] == 10_000 - 35 {
            break body["data"].clone();
        }
        assert!(Instant::now() < deadline, "GET /v1/account never showed the five charges: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(account["email"], format!("{}@example.com", tenant.name), "{account}");
    assert_eq!(account["plan"], "pro", "{account}");

    let events: Api<Event> = Api::namespaced(tenant.client.clone(), &tenant.name);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("stop"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.iter().any(|r| r == "Canceled"), "events of the canceled task: {reasons:?}");
    let finished = status.conditions.iter().find(|c| c.type_ == "Finished").map(|c| c.reason.as_str());
    assert_eq!(finished, Some("Completed"), "{:?}", status.conditions);

    // Finished tasks are deleted after the TTL.
    wait_for("finished tasks to be deleted after their TTL", MINUTE, || async {
        let left = tenant.tasks().list(&ListParams::default()).await.ok()?;
        left.items.is_empty().then_some(())
    })
    .await;

    let log = std::fs::read_to_string(&controller.log).unwrap();
    assert!(!log.to_lowercase().contains("forbidden"), "the controller was refused something:\n{log}");
    // Nor the gateway, also not in its watch of its Service's EndpointSlices
    // (which stay empty here: the API server refuses the fake pods' loopback
    // addresses as endpoints, so no peer is ever found).
    let log = std::fs::read_to_string(&gateway.log).unwrap();
    assert!(log.contains("sharing rate-limit counts"), "the gateway watches its Service's EndpointSlices:\n{log}");
    assert!(!log.to_lowercase().contains("forbidden"), "the gateway was refused something:\n{log}");

    // Metrics: valid exposition, scraped by a real Prometheus.
    promtool_check("controller", &controller.metrics().await);
    prometheus
        .wait_value(r#"max_over_time(runplane_tasks{job="runplane-controller",phase="Completed"}[5m])"#, |v| v >= 1.0)
        .await;
    prometheus.wait_value("runplane_admissions_total", |v| v >= 5.0).await;
    let phases = prometheus.query("runplane_tasks").await;
    assert!(phases.len() >= 5, "runplane_tasks by phase through Prometheus: {phases:?}");
    check_dashboard(&prometheus, &controller.metrics().await).await;
    // The gateway's too, with the requests above counted by route and code.
    promtool_check("gateway", &gateway.metrics().await);
    for (route, code, least) in
        [("/v1/run", 202, 2.0), ("/v1/tasks/{task_id}/cancel", 200, 1.0), ("/v1/account", 401, 1.0)]
    {
        let series = format!(r#"runplane_api_requests_total{{job="runplane-api",route="{route}",code="{code}"}}"#);
        prometheus.wait_value(&series, |v| v >= least).await;
    }

    tenant.cleanup().await;
    drop(gateway);
    drop(controller);
    drop(prometheus);
    release.uninstall().await;
}

/// The replicas' --lease-duration in the failover test, in seconds.
const LEASE_SECONDS: u64 = 4;
/// How much more than LEASE_SECONDS after the leader's death its successor
/// may take to create its first pod. The Lease expires LEASE_SECONDS after
/// the dead leader's last renewal, which came before the kill, and the
/// standby sleeps until exactly that expiry (the Lease's renewTime plus its
/// duration) before it looks again. Then:
/// - up to 1 s: kube-lease-manager waits a random 0.1 to 1 s after it
///   force-releases an expired Lease, before taking it (to keep competing
///   replicas apart);
/// - up to 1 s for the rest: the API writes of the release and the take,
///   the new leader's first admission pass (its caches are warm as a
///   standby) and the pod create, and the watch that shows the pod to the
///   test (measured: about 0.1 s from the Lease changing hands).
const TAKEOVER_MARGIN: Duration = Duration::from_secs(2);

#[tokio::test]
async fn two_replicas_with_the_chart_service_account_fail_over_within_the_lease() {
    let _cluster = serial();
    sweep_prefix("install-").await;
    let release = Release::install().await;
    let kubeconfig = release.kubeconfig_for(&release.controller_sa());

    let tenant = Tenant::with_spec(
        "install-ha",
        json!({"plan": "custom", "credits": 100_000, "limits": {"concurrentTasks": 2, "requestsPerMinute": 60}}),
    )
    .await;
    tenant.template("work", "2s", json!({})).await;
    tenant.template("hold", "forever", json!({})).await;
    assert_no_other_controller(&tenant).await;
    // Takes one of the account's two slots, across the failover.
    tenant.task("hold", "hold", json!({})).await;

    let lease_namespace = format!("--lease-namespace={}", release.namespace);
    let lease_duration = format!("--lease-duration={LEASE_SECONDS}");
    let flags = ["--leader-election=true", lease_namespace.as_str(), lease_duration.as_str()];
    let first = Controller::start_as(&kubeconfig, &[&flags[..], &["--identity=replica-a"]].concat()).await;
    let second = Controller::start_as(&kubeconfig, &[&flags[..], &["--identity=replica-b"]].concat()).await;
    let (leader, standby) = wait_for("one replica to lead", MINUTE, || async {
        match (first.is_leader().await, second.is_leader().await) {
            (true, false) => Some((0, 1)),
            (false, true) => Some((1, 0)),
            _ => None,
        }
    })
    .await;
    let identities = ["replica-a", "replica-b"];
    let leases: Api<Lease> = Api::namespaced(tenant.client.clone(), &release.namespace);
    let holder = leases.get(LEASE).await.unwrap().spec.unwrap().holder_identity;
    assert_eq!(holder.as_deref(), Some(identities[leader]));

    let mut replicas = [first, second];
    tenant.wait_phase("hold", TaskPhase::Running, MINUTE).await;
    tenant.wait_phase("probe", TaskPhase::Completed, MINUTE).await;
    assert!(!replicas[standby].is_leader().await);
    let standby_metrics = replicas[standby].metrics().await;
    assert_eq!(
        metric_line(&standby_metrics, "runplane_admissions_total"),
        Some(0.0),
        "the standby admitted nothing: {standby_metrics}"
    );

    // The leader dies with one slot taken and one free. The tasks queued
    // after its death only the new leader can admit, and it must count
    // "hold": one of them at a time while it runs.
    let killed = Instant::now();
    replicas[leader].kill9();
    let queued: Vec<String> = (0..5).map(|i| format!("t{i}")).collect();
    for name in &queued {
        tenant.task(name, "work", json!({})).await;
    }
    let lease_taken = wait_for("the standby to take the Lease", MINUTE, || async {
        let holder = leases.get(LEASE).await.ok()?.spec?.holder_identity;
        (holder.as_deref() == Some(identities[standby])).then(|| killed.elapsed())
    })
    .await;
    let first_pod = wait_for("the new leader's first pod", MINUTE, || async {
        let changes = tenant.pod_changes.changes();
        let admitted = changes.iter().any(|c| c.object.labels().get(TASK_PODS).is_some_and(|t| queued.contains(t)));
        admitted.then(|| killed.elapsed())
    })
    .await;
    eprintln!("after the kill: the Lease changed hands in {lease_taken:?}, the first pod came in {first_pod:?}");
    let bound = Duration::from_secs(LEASE_SECONDS) + TAKEOVER_MARGIN;
    assert!(first_pod < bound, "the new leader's first pod came {first_pod:?} after the kill (bound {bound:?})");
    assert!(replicas[standby].is_leader().await);

    for name in &queued {
        tenant.wait_phase(name, TaskPhase::Completed, MINUTE).await;
    }
    tenant.cancel("hold").await;
    // Exact: the most pods that held capacity at once, over every change the
    // watch of the tenant's pods saw (a LIST now and then misses overlaps).
    let (tasks, peak) = tenant.finish_all(MINUTE, 0).await;
    assert_eq!(peak, 2, "{peak} pods held capacity at once, with a limit of 2");
    assert_eq!(tasks.len(), 7);
    for task in &tasks {
        let ended = if task.name_any() == "hold" { TaskPhase::Canceled } else { TaskPhase::Completed };
        assert_eq!(task.phase(), Some(ended), "{task:?}");
        // Nothing ran twice across the failover.
        assert_eq!(task.status.as_ref().unwrap().attempts, Some(1), "{task:?}");
    }
    // Only the leader admits: the new one, exactly the five queued after the
    // old one's death.
    let metrics = replicas[standby].metrics().await;
    assert_eq!(metric_line(&metrics, "runplane_admissions_total"), Some(5.0), "{metrics}");
    let log = std::fs::read_to_string(&replicas[standby].log).unwrap();
    assert!(!log.to_lowercase().contains("forbidden"), "the new leader was refused something:\n{log}");

    tenant.cleanup().await;
    drop(replicas);
    release.uninstall().await;
}
