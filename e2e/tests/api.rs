//! End-to-end: the HTTP gateway (`runplane api`) and the controller against
//! the real local control plane. Every test starts both as child processes,
//! talks HTTP to the gateway like a client written against the seeds would,
//! and plays the workload where a test needs one. API keys live in a
//! namespace of their own per test, as the gateway requires.
//!
//! Run with `cargo test --test api` once `e2e/cluster/up.sh` is up.

// Each test holds the cluster (a std mutex, see support::serial) for its
// whole run, on its own runtime and thread: holding it across awaits is the point.
#![allow(clippy::await_holding_lock)]

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use runplane::resources::{GpuAccount, GpuTask, GpuTemplate, TaskPhase};
use serde::Deserialize;
use serde_json::{Value, json};
use support::*;

const MINUTE: Duration = Duration::from_secs(60);

/// A `runplane api` child process, killed when dropped.
struct Gateway {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Gateway {
    /// Starts a gateway and waits until it is ready.
    async fn start(port: u16, key_namespace: &str, callback_key: &PathBuf, extra: &[String]) -> Self {
        let gateway = Self::spawn(port, key_namespace, callback_key, &kubeconfig(), extra);
        let url = format!("{}/readyz", gateway.url());
        wait_for(&format!("the gateway to be ready (log: {})", gateway.log.display()), Duration::from_secs(30), || {
            let url = url.clone();
            async move { http_get(&url).await.filter(|(code, _)| *code == 200).map(|_| ()) }
        })
        .await;
        gateway
    }

    fn spawn(port: u16, key_namespace: &str, callback_key: &PathBuf, kubeconfig: &PathBuf, extra: &[String]) -> Self {
        let log = std::env::temp_dir().join(format!("runplane-e2e-api-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_runplane"))
            .args(["api", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--namespace", key_namespace])
            .arg("--webhook-allow-cidr=127.0.0.1/32")
            .arg("--callback-key-file")
            .arg(callback_key)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(extra)
            .env("RUST_LOG", "info,kube=warn")
            .env_remove("POD_NAMESPACE")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("the runplane binary starts");
        Self { child, port, log }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn metrics(&self) -> String {
        http_get(&format!("{}/metrics", self.url())).await.expect("metrics").1
    }

    /// The value of a metric line (`name{labels}` exactly), 0 if absent.
    async fn metric(&self, series: &str) -> f64 {
        let metrics = self.metrics().await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_log_unless_failed(&self.log);
    }
}

/// The controller and one or two gateways sharing a callback key; held for one test.
struct Stack {
    _controller: Controller,
    gateway: Gateway,
    second: Option<Gateway>,
    callback_key: Vec<u8>,
    _key_file: TempFile,
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Stack {
    /// Starts the controller and a gateway; API-key Secrets live in
    /// `key_namespace`, which is also the controller's namespace (where
    /// webhook signing Secrets are), as the chart has it.
    async fn start(key_namespace: &str) -> Self {
        Self::start_with(key_namespace, None).await
    }

    /// Like [`Stack::start`], plus a second gateway replica; with `share`,
    /// the two share rate-limit counts (`--peer`), and `second_extra` are
    /// more flags of the second.
    async fn start_pair(key_namespace: &str, share: bool, second_extra: &[String]) -> Self {
        Self::start_with(key_namespace, Some((share, second_extra))).await
    }

    async fn start_with(key_namespace: &str, second: Option<(bool, &[String])>) -> Self {
        let port = free_port();
        let second_port = free_port();
        let callback_key = format!("e2e-callback-key-{:08x}{:08x}", rand_u32(), rand_u32()).into_bytes();
        let key_file = TempFile(std::env::temp_dir().join(format!("runplane-e2e-callback-{port}.key")));
        std::fs::write(&key_file.0, &callback_key).unwrap();
        let key_path = path_str(&key_file.0);
        let callback_url = format!("http://127.0.0.1:{port}");
        let home = format!("--lease-namespace={key_namespace}");
        let controller = Controller::start(&[
            &home,
            "--callback-key-file",
            &key_path,
            "--callback-url",
            &callback_url,
            "--webhook-allow-cidr=127.0.0.1/32",
            "--webhook-backoff=1s",
        ])
        .await;
        let share = second.is_some_and(|(share, _)| share);
        let peer = |p: u16| if share { vec![format!("--peer=127.0.0.1:{p}")] } else { vec![] };
        let gateway = Gateway::start(port, key_namespace, &key_file.0, &peer(second_port)).await;
        let second = match second {
            Some((_, extra)) => {
                let mut args = peer(port);
                args.extend(extra.iter().cloned());
                Some(Gateway::start(second_port, key_namespace, &key_file.0, &args).await)
            }
            None => None,
        };
        Self { _controller: controller, gateway, second, callback_key, _key_file: key_file }
    }

    fn client(&self, key: &str) -> Client {
        Client { base: self.gateway.url(), key: key.to_string(), http: reqwest::Client::new() }
    }

    fn second_client(&self, key: &str) -> Client {
        let second = self.second.as_ref().expect("a second gateway");
        Client { base: second.url(), key: key.to_string(), http: reqwest::Client::new() }
    }
}

/// `runplane` with the local control plane's kubeconfig; returns (success, stdout, stderr).
fn runplane(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let (code, stdout, stderr) = runplane_status(args, env);
    (code == Some(0), stdout, stderr)
}

/// Like [`runplane`], with the exit code.
fn runplane_status(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_runplane"))
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("the runplane binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A namespace for API keys that no account lists, as the gateway requires.
struct KeyNamespace {
    name: String,
}

impl KeyNamespace {
    async fn new() -> Self {
        let name = format!("e2e-keys-{:06x}", rand_u32() & 0xffffff);
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"runplane.dev/e2e": "true"}}}))
                .unwrap();
        Api::<Namespace>::all(client().await).create(&PostParams::default(), &ns).await.expect("key namespace");
        Self { name }
    }

    /// A new API key for `account`, made with the CLI.
    fn key(&self, account: &str) -> String {
        create_key(account, &self.name)
    }

    async fn cleanup(self) {
        let _ = Api::<Namespace>::all(client().await).delete(&self.name, &DeleteParams::default()).await;
    }
}

/// A new API key for `account`, stored in `namespace`, made with the CLI.
fn create_key(account: &str, namespace: &str) -> String {
    let (ok, stdout, stderr) = runplane(&["apikey", "create", "--account", account, "--namespace", namespace], &[]);
    assert!(ok, "apikey create failed: {stderr}");
    let key = stdout.trim().to_string();
    assert!(key.starts_with("rk_live_") && !key.contains('\n'), "{stdout}");
    key
}

/// Creates the GpuTemplates of a file of deploy/examples in the tenant's namespace.
async fn apply_example_templates(tenant: &Tenant, file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("deploy/examples").join(file)).unwrap();
    let api: Api<GpuTemplate> = Api::namespaced(tenant.client.clone(), &tenant.name);
    let mut names = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let mut template = GpuTemplate::deserialize(document).expect("a GpuTemplate");
        template.metadata.namespace = Some(tenant.name.clone());
        names.push(template.metadata.name.clone().unwrap());
        api.create(&PostParams::default(), &template).await.expect("example template");
    }
    names
}

/// Adds a namespace to the tenant's account (after the one it has).
async fn add_namespace(tenant: &Tenant, suffix: &str) -> String {
    let name = format!("{}-{suffix}", tenant.name);
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"runplane.dev/e2e": "true"}}})).unwrap();
    Api::<Namespace>::all(tenant.client.clone()).create(&PostParams::default(), &ns).await.unwrap();
    let patch = json!({"spec": {"namespaces": [tenant.name, name]}});
    Api::<GpuAccount>::all(tenant.client.clone())
        .patch(&tenant.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    name
}

/// A template in another namespace than the tenant's own.
async fn template_in(tenant: &Tenant, namespace: &str, name: &str, extra: Value) {
    let mut spec = json!({
        "image": "example.com/worker:1",
        "podMetadata": {"annotations": {
            "e2e.runplane.dev/duration": "1s",
            "e2e.runplane.dev/message": format!("{{\"result_url\": \"https://cdn.example.com/{namespace}/{name}.png\"}}"),
        }},
    });
    merge(&mut spec, extra);
    let template: GpuTemplate = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    Api::<GpuTemplate>::namespaced(tenant.client.clone(), namespace)
        .create(&PostParams::default(), &template)
        .await
        .unwrap();
}

/// Waits (on the clock, with a deadline) until the current minute has at
/// least `seconds` left, so that a sequence of requests stays in one
/// rate-limit window.
async fn at_least_left_in_minute(seconds: u64) {
    wait_for("a fresh rate-limit window", Duration::from_secs(61), || async move {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        (60 - now % 60 >= seconds).then_some(())
    })
    .await;
}

/// A response: status, headers and JSON body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    /// Asserts a RunKey error with this HTTP status and code.
    fn assert_error(&self, status: u16, code: i64) {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert_eq!(self.body["code"], code, "{}", self.body);
        assert!(self.body["msg"].as_str().is_some_and(|m| !m.is_empty()), "{}", self.body);
        let id = self.body["request_id"].as_str().unwrap();
        assert!(id.starts_with("req_"), "{}", self.body);
        assert_eq!(self.header("x-request-id"), id);
    }

    /// Asserts a RunningHub error with this HTTP status and code.
    fn assert_rh_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert_eq!(self.body["errorCode"], code, "{}", self.body);
        assert_eq!(self.body["status"], "FAILED", "{}", self.body);
        assert!(self.body["errorMessage"].as_str().is_some_and(|m| !m.is_empty()), "{}", self.body);
        assert_eq!(self.body["results"], Value::Null);
        assert!(self.header("x-request-id").starts_with("req_"));
    }

    /// Asserts the rate-limit headers of an account with `limit` requests a minute.
    fn assert_rate_limit_headers(&self, limit: u32) {
        assert_eq!(self.header("x-ratelimit-limit"), limit.to_string(), "{:?}", self.headers);
        let remaining: u32 = self.header("x-ratelimit-remaining").parse().unwrap();
        assert!(remaining < limit);
        let reset: u64 = self.header("x-ratelimit-reset").parse().unwrap();
        assert_eq!(reset % 60, 0);
    }

    fn remaining(&self) -> u32 {
        self.header("x-ratelimit-remaining").parse().unwrap()
    }
}

#[derive(Clone)]
struct Client {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Client {
    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("the gateway answers");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        Answer { status, headers, body }
    }

    fn authed(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.header("Authorization", format!("Bearer {}", self.key))
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.authed(self.http.get(format!("{}{path}", self.base)))).await
    }

    async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = self.authed(self.http.get(format!("{}{path}", self.base)));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request).await
    }

    async fn post(&self, path: &str, body: &Value) -> Answer {
        self.post_raw(path, "application/json", body.to_string(), &[]).await
    }

    async fn post_with(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
        self.post_raw(path, "application/json", body.to_string(), headers).await
    }

    async fn post_raw(&self, path: &str, content_type: &str, body: String, headers: &[(&str, &str)]) -> Answer {
        let mut request =
            self.authed(self.http.post(format!("{}{path}", self.base))).header("Content-Type", content_type).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request).await
    }

    async fn run(&self, template: &str, input: Value) -> String {
        let answer = self.post("/v1/run", &json!({"template_id": template, "input": input})).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
        answer.body["data"]["task_id"].as_str().unwrap().to_string()
    }

    async fn task(&self, id: &str) -> Value {
        let answer = self.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.body["data"].clone()
    }

    /// Polls GET /v1/tasks/{id} (twice a second, to stay under plan rate
    /// limits) until `check` holds.
    async fn wait_task(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + MINUTE;
        loop {
            let task = self.task(id).await;
            if check(&task) {
                return task;
            }
            assert!(Instant::now() < deadline, "timed out waiting for task {id}: {what}; last seen {task}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn wait_status(&self, id: &str, status: &str) -> Value {
        self.wait_task(id, status, |t| t["status"] == status).await
    }
}

/// An account spec whose rate limit polling never reaches.
fn roomy(credits: i64) -> Value {
    json!({"plan": "custom", "credits": credits, "limits": {"concurrentTasks": 10, "requestsPerMinute": 100000}})
}

/// The seed's "Invoke Template" input schema, as a saved template has it.
fn portrait_schema() -> Value {
    json!({"type": "object", "required": ["image_url"], "properties": {
        "image_url": {"type": "string", "minLength": 1},
        "enhancement": {"enum": ["low", "medium", "high"]},
        "output_format": {"enum": ["png", "jpg", "webp"]},
        "style": {"type": "string"},
    }})
}

/// The workload's side of a running task: its callback URL and token.
async fn workload_of(stack: &Stack, tenant: &Tenant, id: &str) -> (Client, String) {
    let pod = tenant.pods().get(id).await.unwrap();
    let env = pod.spec.unwrap().containers[0].env.clone().unwrap();
    let var = |name: &str| env.iter().find(|e| e.name == name).and_then(|e| e.value.clone()).unwrap();
    let token = var("RUNPLANE_CALLBACK_TOKEN");
    let task: GpuTask = tenant.get(id).await;
    assert_eq!(token, runplane::domain::progress_token(&stack.callback_key, task.metadata.uid.as_deref().unwrap()));
    let callback = var("RUNPLANE_CALLBACK_URL");
    assert_eq!(callback, format!("{}/v1/internal/tasks/{id}/progress", stack.gateway.url()));
    let workload = Client { base: stack.gateway.url(), key: token, http: reqwest::Client::new() };
    (workload, format!("/v1/internal/tasks/{id}/progress"))
}

/// Posts a progress report, retrying while the task's report throttle refuses it.
async fn report_progress(workload: &Client, path: &str, report: Value) -> Answer {
    wait_for("a progress report to be accepted", Duration::from_secs(10), || async {
        let answer = workload.post(path, &report).await;
        (answer.status != StatusCode::TOO_MANY_REQUESTS).then_some(answer)
    })
    .await
}

#[tokio::test]
async fn seed_examples_work_as_written() {
    let _cluster = serial();
    sweep().await;
    // The account signs webhooks (the gateway refuses a webhook_url otherwise).
    let tenant =
        Tenant::with_spec("seed", json!({"plan": "pro", "credits": 5000, "webhook": {"secretRef": {"name": "hooks"}}}))
            .await;
    let keys = KeyNamespace::new().await;
    let key = keys.key(&tenant.name);
    // The templates the seeds' commands name, from deploy/examples as shipped.
    let names = apply_example_templates(&tenant, "seed-templates.yaml").await;
    assert_eq!(names, ["tpl-abc123", "tpl-portrait-fix", "rhart-image-g-1-5-edit"]);
    tenant.template("forever", "forever", json!({})).await;
    let stack = Stack::start(&keys.name).await;
    let api = stack.client(&key);

    // RunKey quick example, byte for byte.
    let quick = api
        .post_raw(
            "/v1/run",
            "application/json",
            "{\n\"template_id\": \"tpl_abc123\",\n\"input\": {\n\"image_url\": \"https://example.com/photo.jpg\",\n\"style\": \"portrait\"\n}\n}".into(),
            &[],
        )
        .await;
    assert_eq!(quick.status, StatusCode::ACCEPTED, "{}", quick.body);
    assert_eq!(quick.body["code"], 0);
    assert_eq!(quick.body["data"]["status"], "queued");
    let quick_id = quick.body["data"]["task_id"].as_str().unwrap().to_string();
    assert!(quick_id.starts_with("task-"), "{quick_id}");
    quick.assert_rate_limit_headers(60);
    assert!(quick.header("x-request-id").starts_with("req_"));
    assert_eq!(tenant.get(&quick_id).await.spec.template_ref.name, "tpl-abc123");

    // "Invoke Template", byte for byte. Its webhook host does not resolve
    // here: accepted (nothing proves it private), and retried at delivery.
    let body = "{\n\"template_id\": \"tpl_portrait_fix\",\n\"input\": {\n\"image_url\": \"https://example.com/photo.jpg\",\n\"enhancement\": \"high\",\n\"output_format\": \"png\"\n},\n\"webhook_url\": \"https://your-server.com/callback\"\n}";
    let run = api.post_raw("/v1/run", "application/json", body.into(), &[]).await;
    assert_eq!(run.status, StatusCode::ACCEPTED, "{}", run.body);
    let data = &run.body["data"];
    assert_eq!(data["status"], "queued");
    let created_at = data["created_at"].as_str().unwrap();
    assert!(created_at.len() == 20 && created_at.ends_with('Z'), "{created_at}");
    let id = data["task_id"].as_str().unwrap().to_string();
    let stored = tenant.get(&id).await;
    assert_eq!(stored.spec.template_ref.name, "tpl-portrait-fix");
    assert_eq!(stored.spec.webhook_url.as_deref(), Some("https://your-server.com/callback"));
    assert_eq!(stored.metadata.managed_fields.unwrap()[0].manager.as_deref(), Some("runplane.dev/api"));

    // "Response (Completed)" and the "Task Result" structure.
    tenant.wait_phase(&id, TaskPhase::Completed, MINUTE).await;
    let done = api.wait_status(&id, "completed").await;
    assert_eq!(done["task_id"], id.as_str());
    assert_eq!(done["template_id"], "tpl_portrait_fix");
    assert_eq!(
        done["input"],
        json!({"image_url": "https://example.com/photo.jpg", "enhancement": "high", "output_format": "png"})
    );
    assert_eq!(done["output"]["result_url"], "https://cdn.example.com/results/portrait-fix.png");
    assert_eq!(done["output"]["thumbnail_url"], "https://cdn.example.com/thumbs/portrait-fix.jpg");
    assert!(done["processing_time"].as_f64().unwrap() >= 1.0, "{done}");
    assert_eq!(done["credits_used"], 15);
    assert_eq!(done["progress"], 100);
    for field in ["created_at", "started_at", "completed_at"] {
        assert!(done[field].as_str().is_some_and(|s| s.ends_with('Z')), "{field}: {done}");
    }
    tenant.wait_phase(&quick_id, TaskPhase::Completed, MINUTE).await;
    assert_eq!(api.wait_status(&quick_id, "completed").await["credits_used"], 5);

    // "Authentication": GET /v1/account.
    wait_for("the account to be charged", MINUTE, || async {
        (tenant.account().await.credits_used() == 20).then_some(())
    })
    .await;
    let account = wait_for("the gateway to see the charge", MINUTE, || async {
        let a = api.get("/v1/account").await;
        (a.body["data"]["balance"] == 5000 - 20).then_some(a)
    })
    .await;
    assert_eq!(account.body["code"], 0);
    assert_eq!(account.body["data"]["email"], format!("{}@example.com", tenant.name));
    assert_eq!(account.body["data"]["plan"], "pro");
    assert_eq!(
        account.body["data"]["limits"],
        json!({"concurrent_tasks": 10, "requests_per_minute": 60, "gpus": null})
    );

    // "Response (Running)": a task that keeps running, with the progress its
    // workload reported.
    let running_id = api.run("forever", json!({"image_url": "https://example.com/photo.jpg"})).await;
    api.wait_status(&running_id, "running").await;
    let (workload, path) = workload_of(&stack, &tenant, &running_id).await;
    let reported = report_progress(&workload, &path, json!({"progress": 65})).await;
    assert_eq!(reported.status, StatusCode::OK, "{}", reported.body);
    // The gateway answers from its cache, which shows the write once its
    // watch has delivered it.
    let running = api.wait_task(&running_id, "progress 65", |t| t["progress"] == 65).await;
    assert_eq!(running["task_id"], running_id.as_str());
    assert_eq!(running["template_id"], "forever");
    assert_eq!(running["status"], "running");
    assert_eq!(running["progress"], 65);
    assert!(running["created_at"].as_str().is_some_and(|s| s.ends_with('Z')), "{running}");
    assert!(running["started_at"].as_str().is_some_and(|s| s.ends_with('Z')), "{running}");
    for absent in ["completed_at", "output", "processing_time", "credits_used", "queue_position"] {
        assert!(running.get(absent).is_none(), "{absent}: {running}");
    }
    assert_eq!(api.post(&format!("/v1/tasks/{running_id}/cancel"), &json!({})).await.status, StatusCode::OK);

    // RunningHub "Submit a request", byte for byte (host and key aside).
    let rh_body = r#"{
  "prompt": "A sudden, massive explosion erupts in the background—blazing fireball, thick black smoke, and debris flying through the air. In the foreground, three people react in sheer panic: one screams with mouth wide open, another instinctively raises an arm to shield against the blast wave, and the third stumbles backward with eyes wide in terror. Harsh orange-red light from the explosion casts dramatic highlights on their faces and silhouettes their figures. The scene is chaotic, intense, and hyper-realistic, conveying raw human fear.",
  "imageUrls": [
    "https://www.runninghub.cn/view?filename=745f35f4b7d1bb6a478f887c6793fb1e646cbcab066ee8d1b36259c6e8552d75.png&type=input&subfolder=&Rh-Comfy-Auth=eyJ1c2VySWQiOiI2YmM2OGI0OTM1OWJkYjU2YzNlYWExYjdlN2JkZGIyYyIsInNpZ25FeHBpcmUiOjE3Njg4OTU2ODgzMTQsInRzIjoxNzY4MjkwODg4MzE0LCJzaWduIjoiZmFiNzMwMDQ3YzMxYWRiNjY4YTg3MzZmYTdmZTA2NDMifQ==&Rh-Identify=6bc68b49359bdb56c3eaa1b7e7bddb2c&rand=0.5644738392840696"
  ],
  "aspectRatio": "2:3"
}"#;
    let submit = api.post_raw("/openapi/v2/rhart-image-g-1.5/edit", "application/json", rh_body.into(), &[]).await;
    assert_eq!(submit.status, StatusCode::OK, "{}", submit.body);
    assert_eq!(submit.body["status"], "QUEUED");
    assert_eq!(submit.body["errorCode"], "");
    assert_eq!(submit.body["errorMessage"], "");
    assert_eq!(submit.body["results"], Value::Null);
    assert_eq!(submit.body["promptTips"], "");
    assert!(submit.body["clientId"].is_string());
    let rh_id = submit.body["taskId"].as_str().unwrap().to_string();
    assert_eq!(tenant.get(&rh_id).await.spec.template_ref.name, "rhart-image-g-1-5-edit");
    // "Query Result", with the seed's body (its placeholder filled in).
    let query_body = "{\n  \"taskId\": \"${RUNNINGHUB_TASKID}\"\n}".replace("${RUNNINGHUB_TASKID}", &rh_id);
    tenant.wait_phase(&rh_id, TaskPhase::Completed, MINUTE).await;
    let result = wait_for("the RunningHub task to succeed", MINUTE, || async {
        let q = api.post_raw("/openapi/v2/query", "application/json", query_body.clone(), &[]).await;
        assert_eq!(q.status, StatusCode::OK, "{}", q.body);
        let status = q.body["status"].as_str().unwrap().to_string();
        assert!(["QUEUED", "RUNNING", "SUCCESS"].contains(&status.as_str()), "{}", q.body);
        (status == "SUCCESS").then_some(q.body)
    })
    .await;
    assert_eq!(
        result["results"],
        json!([{"url": "https://cdn.example.com/output/ComfyUI_00001.png", "outputType": "png", "text": null}])
    );
    assert_eq!(result["taskId"], rh_id.as_str());
    assert_eq!(result["errorCode"], "");
    assert_eq!(result["clientId"], "");
    // The same task through /v1.
    assert_eq!(api.task(&rh_id).await["status"], "completed");

    tenant.cleanup().await;
    keys.cleanup().await;
    drop(stack);
}

#[tokio::test]
async fn errors_have_the_seed_codes_and_statuses() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::with_spec("errors", roomy(5)).await;
    let keys = KeyNamespace::new().await;
    let key = keys.key(&tenant.name);
    tenant.template("portrait", "1s", json!({"inputSchema": portrait_schema(), "aliases": ["portrait/fix"]})).await;
    tenant.template("pricey", "1s", json!({"price": {"perRun": 10}, "aliases": ["pricey/run"]})).await;
    let stack = Stack::start(&keys.name).await;
    let api = stack.client(&key);

    // 40001: missing, malformed and unknown keys, in both formats.
    let anonymous = Client { key: String::new(), ..api.clone() };
    anonymous.get("/v1/account").await.assert_error(401, 40001);
    let bad = stack.client("rk_live_doesnotexist");
    let answer = bad.get("/v1/account").await;
    answer.assert_error(401, 40001);
    assert_eq!(answer.header("x-ratelimit-limit"), "", "no rate limit headers before the key is known");
    bad.post("/openapi/v2/query", &json!({"taskId": "x"})).await.assert_rh_error(401, "40001");
    let raw = api
        .send(api.http.get(format!("{}/v1/account", api.base)).header("Authorization", format!("Basic {key}")))
        .await;
    raw.assert_error(401, 40001);

    // 40002: the balance (5) does not cover the price (10).
    api.post("/v1/run", &json!({"template_id": "pricey", "input": {}})).await.assert_error(403, 40002);
    api.post("/openapi/v2/pricey/run", &json!({})).await.assert_rh_error(403, "40002");

    // 40004: unknown templates and aliases.
    api.post("/v1/run", &json!({"template_id": "tpl_nope", "input": {}})).await.assert_error(404, 40004);
    api.post("/openapi/v2/nope/edit", &json!({"prompt": "x"})).await.assert_rh_error(404, "40004");

    // 40005: the input against the template's schema, with the field path.
    let answer = api
        .post(
            "/v1/run",
            &json!({"template_id": "portrait", "input": {"image_url": "https://x/a.png", "enhancement": "ultra"}}),
        )
        .await;
    answer.assert_error(400, 40005);
    assert!(answer.body["msg"].as_str().unwrap().starts_with("input.enhancement:"), "{}", answer.body);
    let answer = api.post("/v1/run", &json!({"template_id": "portrait", "input": {}})).await;
    answer.assert_error(400, 40005);
    assert!(answer.body["msg"].as_str().unwrap().contains("image_url"), "{}", answer.body);
    let answer = api.post("/openapi/v2/portrait/fix", &json!({"enhancement": "high"})).await;
    answer.assert_rh_error(400, "40005");
    assert!(answer.body["errorMessage"].as_str().unwrap().contains("image_url"), "{}", answer.body);
    // ... malformed JSON, wrong content type, oversized body, in both formats ...
    let big = json!({"template_id": "portrait", "input": {"image_url": "x".repeat(1024 * 1024 + 10)}}).to_string();
    for path in ["/v1/run", "/openapi/v2/portrait/fix", "/openapi/v2/query"] {
        let rh = path.starts_with("/openapi");
        let check = |answer: Answer, what: &str| {
            if rh {
                answer.assert_rh_error(400, "40005");
                assert!(answer.body["errorMessage"].as_str().unwrap().contains(what), "{path}: {}", answer.body);
            } else {
                answer.assert_error(400, 40005);
                assert!(answer.body["msg"].as_str().unwrap().contains(what), "{path}: {}", answer.body);
            }
        };
        check(api.post_raw(path, "application/json", "{\"template_id\": ".into(), &[]).await, "invalid JSON");
        check(api.post_raw(path, "text/plain", json!({"taskId": "x"}).to_string(), &[]).await, "Content-Type");
        check(api.post_raw(path, "application/json", big.clone(), &[]).await, "larger");
    }
    // ... and bad fields.
    for (body, field) in [
        (json!({"input": {}}), "template_id:"),
        (json!({"template_id": "portrait"}), "input:"),
        (json!({"template_id": "portrait", "input": [1]}), "input:"),
        (
            json!({"template_id": "portrait", "input": {"image_url": "u"}, "webhook_url": "ftp://example.com/x"}),
            "webhook_url:",
        ),
        (json!({"template_id": "portrait", "input": {"image_url": "u"}, "webhook_url": "not a url"}), "webhook_url:"),
        // Webhooks are only sent signed: not without the account's secretRef.
        (
            json!({"template_id": "portrait", "input": {"image_url": "u"}, "webhook_url": "http://127.0.0.1:9/x"}),
            "webhook_url: account",
        ),
        (json!({"template_id": "portrait", "input": {"image_url": "u"}, "webhook_on_cancel": 1}), "webhook_on_cancel:"),
    ] {
        let answer = api.post("/v1/run", &body).await;
        answer.assert_error(400, 40005);
        assert!(answer.body["msg"].as_str().unwrap().starts_with(field), "{body}: {}", answer.body);
    }
    api.post("/openapi/v2/query", &json!({})).await.assert_rh_error(400, "40005");
    api.post("/openapi/v2/portrait/fix", &json!([1])).await.assert_rh_error(400, "40005");
    api.get("/v1/tasks?status=done").await.assert_error(400, 40005);
    api.get("/v1/tasks?limit=0").await.assert_error(400, 40005);
    api.get("/v1/tasks?limit=101").await.assert_error(400, 40005);
    api.get("/v1/tasks?cursor=xyz").await.assert_error(400, 40005);

    // 40006: unknown tasks, in both formats (also ids that cannot be names).
    api.get("/v1/tasks/task-000000000000").await.assert_error(404, 40006);
    api.get("/v1/tasks/NOT_A_NAME").await.assert_error(404, 40006);
    api.post("/v1/tasks/task-000000000000/cancel", &json!({})).await.assert_error(404, 40006);
    api.post("/openapi/v2/query", &json!({"taskId": "task-000000000000"})).await.assert_rh_error(404, "40006");

    // Unknown routes and methods are still JSON with a request id, and with a
    // valid key they carry the rate-limit headers (and count).
    let before = api.get("/v1/account").await.remaining();
    let nothing = api.get("/v1/nothing").await;
    nothing.assert_error(404, 40006);
    nothing.assert_rate_limit_headers(100000);
    assert_eq!(nothing.remaining(), before - 1);
    let wrong_method = api.send(api.authed(api.http.delete(format!("{}/v1/account", api.base)))).await;
    wrong_method.assert_error(405, 40005);
    wrong_method.assert_rate_limit_headers(100000);
    assert_eq!(wrong_method.remaining(), before - 2);
    assert!(wrong_method.header("allow").contains("GET"), "{:?}", wrong_method.headers);
    let rh_wrong_method = api.get("/openapi/v2/query").await;
    rh_wrong_method.assert_rh_error(405, "40005");
    rh_wrong_method.assert_rate_limit_headers(100000);
    // Without a key: no rate-limit headers, still a request id.
    let anonymous_nothing = anonymous.get("/v1/nothing").await;
    anonymous_nothing.assert_error(404, 40006);
    assert_eq!(anonymous_nothing.header("x-ratelimit-limit"), "");
    // A sane client request id is echoed.
    let answer = api
        .send(api.authed(api.http.get(format!("{}/v1/account", api.base))).header("X-Request-Id", "trace-1234"))
        .await;
    assert_eq!(answer.header("x-request-id"), "trace-1234");

    // Nothing of the above created a task.
    assert!(tenant.tasks().list(&Default::default()).await.unwrap().items.is_empty());
    tenant.cleanup().await;
    keys.cleanup().await;
    drop(stack);
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::with_spec(
        "ratelimit",
        json!({"plan": "custom", "credits": 100, "limits": {"concurrentTasks": 2, "requestsPerMinute": 3}}),
    )
    .await;
    let keys = KeyNamespace::new().await;
    let key = keys.key(&tenant.name);
    let stack = Stack::start(&keys.name).await;
    let api = stack.client(&key);
    // Four requests in one fixed window.
    at_least_left_in_minute(10).await;
    for remaining in ["2", "1", "0"] {
        let answer = api.get("/v1/account").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.header("x-ratelimit-limit"), "3");
        assert_eq!(answer.header("x-ratelimit-remaining"), remaining);
    }
    let limited = api.get("/v1/account").await;
    limited.assert_error(429, 40003);
    let retry_after = limited.body["retry_after"].as_u64().unwrap();
    assert!((1..=60).contains(&retry_after), "{}", limited.body);
    assert_eq!(limited.header("retry-after"), retry_after.to_string());
    assert_eq!(limited.header("x-ratelimit-remaining"), "0");
    assert_eq!(limited.body["msg"], format!("Rate limit exceeded. Please retry after {retry_after} seconds."));
    let reset: u64 = limited.header("x-ratelimit-reset").parse().unwrap();
    assert_eq!(reset % 60, 0);
    api.post("/openapi/v2/query", &json!({"taskId": "x"})).await.assert_rh_error(429, "40003");
    // Unknown routes count too.
    let nothing = api.get("/v1/nothing").await;
    nothing.assert_error(429, 40003);
    assert_eq!(nothing.header("retry-after"), nothing.body["retry_after"].to_string());
    let (_, metrics) = http_get(&format!("{}/metrics", stack.gateway.url())).await.unwrap();
    assert!(metrics.lines().any(|l| l == "runplane_rate_limited_total 3"), "{metrics}");
    tenant.cleanup().await;
    keys.cleanup().await;
    drop(stack);
}

/// Sum of a gateway's successful fetches of its peers' counts.
async fn peer_syncs(gateway: &Gateway) -> f64 {
    gateway.metric(r#"runplane_api_peer_syncs_total{result="ok"}"#).await
}

#[tokio::test]
async fn replicas_share_one_rate_limit() {
    let _cluster = serial();
    sweep().await;
    let limited = |rpm: u32| json!({"plan": "custom", "credits": 100, "limits": {"concurrentTasks": 2, "requestsPerMinute": rpm}});
    let tenant = Tenant::with_spec("shared", limited(6)).await;
    let busy = Tenant::with_spec("shared-busy", limited(10)).await;
    let keys = KeyNamespace::new().await;
    let (key, busy_key) = (keys.key(&tenant.name), keys.key(&busy.name));
    // The second replica also discovers peers from a Service's
    // EndpointSlices: one that lists an address nothing answers on.
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(tenant.client.clone(), &keys.name);
    let slice = serde_json::from_value(json!({
        "metadata": {"name": "gateway-peers-1", "labels": {"kubernetes.io/service-name": "gateway-peers"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["192.0.2.1"], "conditions": {"ready": true}}],
    }))
    .unwrap();
    slices.create(&PostParams::default(), &slice).await.unwrap();
    let stack = Stack::start_pair(&keys.name, true, &["--peer-service=gateway-peers".into()]).await;
    let (a, b) = (&stack.gateway, stack.second.as_ref().unwrap());
    let (api_a, api_b) = (stack.client(&key), stack.second_client(&key));

    wait_for("the second replica to know its two peers", Duration::from_secs(10), || async {
        (b.metric("runplane_api_peers").await == 2.0).then_some(())
    })
    .await;
    wait_for("a failed fetch from the unreachable peer", Duration::from_secs(10), || async {
        (b.metric(r#"runplane_api_peer_syncs_total{result="error"}"#).await >= 1.0).then_some(())
    })
    .await;
    wait_for("both replicas to fetch each other's counts", Duration::from_secs(10), || async {
        (peer_syncs(a).await >= 1.0 && peer_syncs(b).await >= 1.0).then_some(())
    })
    .await;

    // Requests alternate between the replicas; once each replica has fetched
    // the other's counts, the limit holds exactly and the headers count down
    // across both.
    at_least_left_in_minute(40).await;
    let mut reset = String::new();
    for i in 0..6u32 {
        let (api, other) = if i % 2 == 0 { (&api_a, b) } else { (&api_b, a) };
        let answer = api.get("/v1/account").await;
        assert_eq!(answer.status, StatusCode::OK, "request {i}: {}", answer.body);
        assert_eq!(answer.header("x-ratelimit-limit"), "6");
        assert_eq!(answer.remaining(), 5 - i, "request {i}");
        if i == 0 {
            reset = answer.header("x-ratelimit-reset").to_string();
        }
        assert_eq!(answer.header("x-ratelimit-reset"), reset, "one window");
        let seen = peer_syncs(other).await;
        wait_for("the other replica to fetch the counts again", Duration::from_secs(10), || async {
            (peer_syncs(other).await >= seen + 2.0).then_some(())
        })
        .await;
    }
    for api in [&api_a, &api_b] {
        let refused = api.get("/v1/account").await;
        refused.assert_error(429, 40003);
        assert_eq!(refused.header("x-ratelimit-remaining"), "0");
        assert_eq!(refused.header("x-ratelimit-reset"), reset);
        assert_eq!(refused.header("retry-after"), refused.body["retry_after"].to_string());
    }

    // At a steady 4 requests a second, alternating, the replicas let through
    // at most the limit plus what arrives within the second that counts take
    // to travel (README, "rate limits"); counted alone, each would let 10 through.
    let (busy_a, busy_b) = (stack.client(&busy_key), stack.second_client(&busy_key));
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    let mut accepted = 0;
    for i in 0..24 {
        ticks.tick().await;
        let answer = if i % 2 == 0 { busy_a.get("/v1/account").await } else { busy_b.get("/v1/account").await };
        assert_eq!(answer.header("x-ratelimit-reset"), reset, "one window");
        if answer.status == StatusCode::OK {
            accepted += 1;
        } else {
            answer.assert_error(429, 40003);
        }
    }
    assert!((10..=14).contains(&accepted), "{accepted} requests accepted against a limit of 10");

    // The discovered peer goes when its EndpointSlice does.
    slices.delete("gateway-peers-1", &DeleteParams::default()).await.unwrap();
    wait_for("the second replica to drop the discovered peer", Duration::from_secs(10), || async {
        (b.metric("runplane_api_peers").await == 1.0).then_some(())
    })
    .await;
    tenant.cleanup().await;
    busy.cleanup().await;
    keys.cleanup().await;
    drop(stack);
}

#[tokio::test]
async fn another_replica_finds_a_task_created_a_moment_ago() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::with_spec("replicas", roomy(1000)).await;
    let keys = KeyNamespace::new().await;
    let key = keys.key(&tenant.name);
    tenant.template("forever", "forever", json!({"aliases": ["forever/run"]})).await;
    let stack = Stack::start_pair(&keys.name, false, &[]).await;
    let (api_a, api_b) = (stack.client(&key), stack.second_client(&key));
    // Created through one replica, read at once through the other: its cache
    // may not have the task yet, the apiserver has.
    for _ in 0..8 {
        let id = api_a.run("forever", json!({})).await;
        let seen = api_b.get(&format!("/v1/tasks/{id}")).await;
        assert_eq!(seen.status, StatusCode::OK, "{}", seen.body);
        assert_eq!(seen.body["data"]["task_id"], id.as_str());
    }
    for _ in 0..4 {
        let submitted = api_a.post("/openapi/v2/forever/run", &json!({})).await;
        let id = submitted.body["taskId"].as_str().unwrap().to_string();
        let queried = api_b.post("/openapi/v2/query", &json!({"taskId": id})).await;
        assert_eq!(queried.status, StatusCode::OK, "{}", queried.body);
        assert_eq!(queried.body["taskId"], id.as_str());
    }
    let id = api_a.run("forever", json!({})).await;
    let canceled = api_b.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await;
    assert_eq!(canceled.status, StatusCode::OK, "{}", canceled.body);
    assert!(tenant.get(&id).await.spec.cancel);
    // Unknown ids still answer 40006 on both.
    api_b.get("/v1/tasks/task-000000000000").await.assert_error(404, 40006);
    tenant.cleanup().await;
    keys.cleanup().await;
    drop(stack);
}

#[tokio::test]
async fn a_revoked_key_stops_working_within_seconds() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::new("revoke", "free", 100).await;
    let keys = KeyNamespace::new().await;
    let key = keys.key(&tenant.name);
    let other = keys.key(&tenant.name);
    let (ok, listing, stderr) =
        runplane(&["apikey", "list", "--account", &tenant.name, "--namespace", &keys.name], &[]);
    assert!(ok, "{stderr}");
    assert_eq!(listing.lines().filter(|l| l.contains(&tenant.name)).count(), 2, "{listing}");
    assert!(!listing.contains(&key) && listing.contains(&key[..12]), "the listing shows prefixes only: {listing}");
    let id =
        listing.lines().find(|l| l.contains(&key[..14])).and_then(|l| l.split_whitespace().next()).unwrap().to_string();
    // Only the SHA-256 of the key is stored.
    let (ok, secret) = kubectl(&["get", "secret", &id, "-n", &keys.name, "-o", "json"], None);
    assert!(ok, "{secret}");
    let secret: Value = serde_json::from_str(&secret).unwrap();
    assert_eq!(secret["type"], "runplane.dev/api-key");
    assert_eq!(secret["metadata"]["labels"]["runplane.dev/account"], tenant.name.as_str());
    let data = secret["data"].as_object().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["sha256"]);
    use base64::Engine;
    let stored = base64::engine::general_purpose::STANDARD.decode(data["sha256"].as_str().unwrap()).unwrap();
    assert_eq!(String::from_utf8(stored).unwrap(), runplane::api::keys::hash_key(&key));
    assert!(!secret.to_string().contains(&key[8..]));

    let stack = Stack::start(&keys.name).await;
    let api = stack.client(&key);
    let answer = api.get("/v1/account").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["data"]["plan"], "free");
    assert_eq!(answer.header("x-ratelimit-limit"), "30");

    let (ok, _, stderr) = runplane(&["apikey", "revoke", &id, "--namespace", &keys.name], &[]);
    assert!(ok, "{stderr}");
    wait_for("the revoked key to be refused", Duration::from_secs(10), || async {
        let a = api.get("/v1/account").await;
        (a.status == StatusCode::UNAUTHORIZED).then_some(a)
    })
    .await
    .assert_error(401, 40001);
    // The other key of the account still works; revoking twice is an error.
    assert_eq!(stack.client(&other).get("/v1/account").await.status, StatusCode::OK);
    let (ok, _, stderr) = runplane(&["apikey", "revoke", &id, "--namespace", &keys.name], &[]);
    assert!(!ok && stderr.contains(&id), "{stderr}");
    // Keys cannot be made for unknown accounts, in missing namespaces, or in
    // a namespace an account lists.
    let (ok, _, stderr) =
        runplane(&["apikey", "create", "--account", "no-such-account", "--namespace", &keys.name], &[]);
    assert!(!ok && stderr.contains("no-such-account"), "{stderr}");
    let (ok, _, stderr) =
        runplane(&["apikey", "create", "--account", &tenant.name, "--namespace", "no-such-namespace"], &[]);
    assert!(!ok && stderr.contains("no-such-namespace"), "{stderr}");
    let (ok, _, stderr) = runplane(&["apikey", "create", "--account", &tenant.name, "--namespace", &tenant.name], &[]);
    assert!(!ok && stderr.contains("is listed by GpuAccount"), "{stderr}");
    tenant.cleanup().await;
    keys.cleanup().await;
    drop(stack);
}

#[tokio::test]
async fn keys_stored_in_a_tenant_namespace_do_not_authenticate() {
    let _cluster = serial();
    sweep().await;
    let victim = Tenant::with_spec("victim", roomy(1000)).await;
    let tenant = Tenant::with_spec("planter", roomy(1000)).await;
    // A tenant who may create Secrets in its own namespace plants a key
    // Secret, well-formed in every way, that claims the victim's account; a
    // gateway misconfigured to read keys from that namespace sees it.
    let planted = "rk_live_plantedplantedplantedplantedplanted";
    let secret = runplane::api::keys::key_secret("rk-planted", &tenant.name, &victim.name, planted);
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(tenant.client.clone(), &tenant.name)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let stack = Stack::start(&tenant.name).await;
    let api = stack.client(planted);
    let refused = api.get("/v1/account").await;
    refused.assert_error(401, 40001);
    assert_eq!(refused.header("x-ratelimit-limit"), "");
    api.post("/v1/run", &json!({"template_id": "x", "input": {}})).await.assert_error(401, 40001);
    api.post("/openapi/v2/query", &json!({"taskId": "x"})).await.assert_rh_error(401, "40001");
    let log = stack.gateway.log_text();
    assert!(log.contains("refused an API key stored in a namespace that a GpuAccount lists"), "{log}");
    assert!(log.contains(&victim.name), "the log names the account the key claims: {log}");
    wait_for("the startup warning about the key namespace", Duration::from_secs(10), || async {
        stack.gateway.log_text().contains("the API-key namespace is listed by a GpuAccount").then_some(())
    })
    .await;
    drop(stack);
    tenant.cleanup().await;
    victim.cleanup().await;
}

#[tokio::test]
async fn tenants_see_only_their_own_tasks() {
    let _cluster = serial();
    sweep().await;
    let a = Tenant::with_spec("tenant-a", roomy(1000)).await;
    let b = Tenant::with_spec("tenant-b", roomy(1000)).await;
    let keys = KeyNamespace::new().await;
    let (key_a, key_b) = (keys.key(&a.name), keys.key(&b.name));
    a.template("forever", "forever", json!({"aliases": ["secret/model"]})).await;
    b.template("mine", "1s", json!({})).await;
    let stack = Stack::start(&keys.name).await;
    let api_a = stack.client(&key_a);
    let api_b = stack.client(&key_b);

    let id = api_a.run("forever", json!({"secret": 1})).await;
    api_a.wait_status(&id, "running").await;
    // B can neither see, cancel, query, nor run A's task or template.
    api_b.get(&format!("/v1/tasks/{id}")).await.assert_error(404, 40006);
    api_b.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await.assert_error(404, 40006);
    api_b.post("/openapi/v2/query", &json!({"taskId": id})).await.assert_rh_error(404, "40006");
    api_b.post("/v1/run", &json!({"template_id": "forever", "input": {}})).await.assert_error(404, 40004);
    api_b.post("/openapi/v2/secret/model", &json!({})).await.assert_rh_error(404, "40004");
    let list = api_b.get("/v1/tasks").await;
    assert_eq!(list.body["data"]["tasks"], json!([]), "{}", list.body);
    let account_b = api_b.get("/v1/account").await;
    assert_eq!(account_b.body["data"]["running"], 0);
    assert_eq!(account_b.body["data"]["balance"], 1000);
    // B's own task is B's alone.
    let mine = api_b.run("mine", json!({})).await;
    api_a.get(&format!("/v1/tasks/{mine}")).await.assert_error(404, 40006);
    // A sees its own.
    let account_a = api_a.get("/v1/account").await;
    assert_eq!(account_a.body["data"]["running"], 1);
    let list = api_a.get("/v1/tasks").await;
    let ids: Vec<&str> =
        list.body["data"]["tasks"].as_array().unwrap().iter().map(|t| t["task_id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![id.as_str()]);
    // Cancel through the API ends the task canceled.
    let canceled = api_a.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await;
    assert_eq!(canceled.status, StatusCode::OK, "{}", canceled.body);
    api_a.wait_status(&id, "canceled").await;
    assert!(a.get(&id).await.spec.cancel);
    a.cleanup().await;
    b.cleanup().await;
    keys.cleanup().await;
    drop(stack);
}

#[tokio::test]
async fn idempotency_key_returns_the_same_task() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::with_spec("idem", roomy(1000)).await;
    let keys = KeyNamespace::new().await;
    let key = keys.key(&tenant.name);
    tenant.template("short", "1s", json!({"aliases": ["short/run"]})).await;
    let stack = Stack::start(&keys.name).await;
    let api = stack.client(&key);
    let body = json!({"template_id": "short", "input": {"a": 1, "b": [1, 2]}});
    let first = api.post_with("/v1/run", &body, &[("Idempotency-Key", "order-42")]).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let id = first.body["data"]["task_id"].as_str().unwrap().to_string();
    // The same request again (keys in another order) is the same task.
    let same = api
        .post_raw(
            "/v1/run",
            "application/json",
            r#"{"input": {"b": [1, 2], "a": 1}, "template_id": "short"}"#.into(),
            &[("Idempotency-Key", "order-42")],
        )
        .await;
    assert_eq!(same.status, StatusCode::ACCEPTED, "{}", same.body);
    assert_eq!(same.body["data"]["task_id"], id.as_str());
    assert_eq!(same.body["data"]["created_at"], first.body["data"]["created_at"]);
    // Another body with the same key is refused.
    let other = api
        .post_with("/v1/run", &json!({"template_id": "short", "input": {"a": 2}}), &[("Idempotency-Key", "order-42")])
        .await;
    other.assert_error(409, 40005);
    assert!(other.body["msg"].as_str().unwrap().contains("Idempotency-Key"));
    // So is the same key on the other route.
    api.post_with("/openapi/v2/short/run", &json!({"a": 1, "b": [1, 2]}), &[("Idempotency-Key", "order-42")])
        .await
        .assert_rh_error(409, "40005");
    // Concurrent first attempts with a new key make one task.
    let body2 = json!({"template_id": "short", "input": {"c": 3}});
    let attempts =
        futures::future::join_all((0..4).map(|_| api.post_with("/v1/run", &body2, &[("Idempotency-Key", "order-43")])))
            .await;
    let ids: std::collections::BTreeSet<String> = attempts
        .iter()
        .map(|a| {
            assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
            a.body["data"]["task_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    // The RunningHub route honours keys too, and refuses a reused key with another body.
    let rh1 = api.post_with("/openapi/v2/short/run", &json!({"x": 1}), &[("Idempotency-Key", "rh-1")]).await;
    let rh2 = api.post_with("/openapi/v2/short/run", &json!({"x": 1}), &[("Idempotency-Key", "rh-1")]).await;
    assert_eq!(rh1.status, StatusCode::OK, "{}", rh1.body);
    assert_eq!(rh1.body["taskId"], rh2.body["taskId"]);
    let rh3 = api.post_with("/openapi/v2/short/run", &json!({"x": 2}), &[("Idempotency-Key", "rh-1")]).await;
    rh3.assert_rh_error(409, "40005");
    assert!(rh3.body["errorMessage"].as_str().unwrap().contains("Idempotency-Key"));
    // Without a key, every request is a new task.
    let plain = api.run("short", json!({"a": 1, "b": [1, 2]})).await;
    assert_ne!(plain, id);
    let tasks = tenant.tasks().list(&Default::default()).await.unwrap().items;
    assert_eq!(tasks.len(), 4, "{:?}", tasks.iter().map(|t| t.metadata.name.clone()).collect::<Vec<_>>());
    let task = tenant.get(&id).await;
    let annotations = task.metadata.annotations.unwrap();
    assert_eq!(annotations["runplane.dev/idempotency-key"].len(), 64, "a hash, not the key");
    assert_eq!(annotations["runplane.dev/request-hash"].len(), 64);
    tenant.cleanup().await;
    keys.cleanup().await;
    drop(stack);
}

#[tokio::test]
async fn an_account_with_two_namespaces() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::with_spec("two-ns", roomy(1000)).await;
    let second = add_namespace(&tenant, "b").await;
    let keys = KeyNamespace::new().await;
    let key = keys.key(&tenant.name);
    // A template only in the second namespace, one in both, and an alias in the second.
    template_in(&tenant, &second, "only-second", json!({})).await;
    template_in(&tenant, &tenant.name, "both", json!({})).await;
    template_in(&tenant, &second, "both", json!({})).await;
    template_in(&tenant, &second, "aliased", json!({"aliases": ["model/second"]})).await;
    let stack = Stack::start_pair(&keys.name, false, &[]).await;
    let (api, api_b) = (stack.client(&key), stack.second_client(&key));

    // /v1/run finds templates in every namespace of the account; a name in
    // several is the one of the first namespace the account lists.
    let id = api.run("only-second", json!({})).await;
    assert_eq!(
        Api::<GpuTask>::namespaced(tenant.client.clone(), &second).get(&id).await.unwrap().spec.template_ref.name,
        "only-second"
    );
    let id = api.run("both", json!({})).await;
    tenant.get(&id).await;
    let rh = api.post("/openapi/v2/model/second", &json!({})).await;
    assert_eq!(rh.status, StatusCode::OK, "{}", rh.body);
    let in_second = Api::<GpuTask>::namespaced(tenant.client.clone(), &second);
    in_second.get(rh.body["taskId"].as_str().unwrap()).await.unwrap();
    let listed = api.get("/v1/tasks").await;
    assert_eq!(listed.body["data"]["tasks"].as_array().unwrap().len(), 3, "{}", listed.body);

    // One Idempotency-Key on two routes whose templates live in different
    // namespaces: the second request is refused, also through the other
    // replica right away, and no second task is made.
    let first =
        api.post_with("/v1/run", &json!({"template_id": "both", "input": {}}), &[("Idempotency-Key", "k-1")]).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    api_b
        .post_with("/openapi/v2/model/second", &json!({}), &[("Idempotency-Key", "k-1")])
        .await
        .assert_rh_error(409, "40005");
    api.post_with("/openapi/v2/model/second", &json!({}), &[("Idempotency-Key", "k-1")])
        .await
        .assert_rh_error(409, "40005");
    // At the same moment, on both replicas: at most one task keeps going.
    let (run_body, rh_body) = (json!({"template_id": "both", "input": {}}), json!({}));
    let (x, y) = futures::join!(
        api.post_with("/v1/run", &run_body, &[("Idempotency-Key", "k-2")]),
        api_b.post_with("/openapi/v2/model/second", &rh_body, &[("Idempotency-Key", "k-2")]),
    );
    assert!(!(x.status.is_success() && y.status.is_success()), "{} / {}", x.body, y.body);
    let name = |ns: &str| {
        let api: Api<GpuTask> = Api::namespaced(tenant.client.clone(), ns);
        async move { api.list(&Default::default()).await.unwrap().items }
    };
    let mut tasks = name(&tenant.name).await;
    tasks.extend(name(&second).await);
    let keyed: Vec<&GpuTask> = tasks
        .iter()
        .filter(|t| t.metadata.annotations.as_ref().is_some_and(|a| a.contains_key("runplane.dev/idempotency-key")))
        .collect();
    let live = keyed.iter().filter(|t| !t.spec.cancel).count();
    // k-1's task, and k-2's if one of the two was accepted: an accepted
    // request's task is never the one canceled. (If both looked before
    // either canceled, both yield and both answer 409: no task, none lost.)
    let accepted = usize::from(x.status.is_success()) + usize::from(y.status.is_success());
    assert_eq!(
        live,
        1 + accepted,
        "one live task per accepted request: {} / {}; {:?}",
        x.body,
        y.body,
        keyed.iter().map(|t| (&t.metadata.namespace, &t.metadata.name, t.spec.cancel)).collect::<Vec<_>>()
    );
    for ns in [&second] {
        let _ = Api::<Namespace>::all(tenant.client.clone()).delete(ns, &DeleteParams::default()).await;
    }
    tenant.cleanup().await;
    keys.cleanup().await;
    drop(stack);
}

#[tokio::test]
async fn prefer_wait_returns_the_finished_task() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::with_spec("wait", roomy(1000)).await;
    let keys = KeyNamespace::new().await;
    let key = keys.key(&tenant.name);
    tenant.template("quick", "2s", json!({})).await;
    tenant.template("forever", "forever", json!({})).await;
    let stack = Stack::start(&keys.name).await;
    let api = stack.client(&key);
    let done = api.post_with("/v1/run", &json!({"template_id": "quick", "input": {}}), &[("Prefer", "wait=30")]).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(done.header("preference-applied"), "wait=30");
    assert_eq!(done.body["data"]["status"], "completed");
    assert_eq!(done.body["data"]["output"]["result_url"], "https://cdn.example.com/quick.png");
    // A longer wait is capped at 60 s (the task ends well before).
    let capped =
        api.post_with("/v1/run", &json!({"template_id": "quick", "input": {}}), &[("Prefer", "wait=600")]).await;
    assert_eq!(capped.status, StatusCode::OK, "{}", capped.body);
    assert_eq!(capped.header("preference-applied"), "wait=60");
    // Not finished in time: the usual 202, after the wait.
    let started = Instant::now();
    let pending =
        api.post_with("/v1/run", &json!({"template_id": "forever", "input": {}}), &[("Prefer", "wait=2")]).await;
    assert_eq!(pending.status, StatusCode::ACCEPTED, "{}", pending.body);
    assert_eq!(pending.header("preference-applied"), "wait=2");
    assert!(started.elapsed() >= Duration::from_secs(2));
    let id = pending.body["data"]["task_id"].as_str().unwrap().to_string();
    api.wait_status(&id, "running").await;
    // GET waits for a change as long as asked (nothing changes here) ...
    let started = Instant::now();
    let unchanged = api.get_with(&format!("/v1/tasks/{id}"), &[("Prefer", "wait=2")]).await;
    assert_eq!(unchanged.status, StatusCode::OK);
    assert_eq!(unchanged.header("preference-applied"), "wait=2");
    assert_eq!(unchanged.body["data"]["status"], "running");
    assert!(started.elapsed() >= Duration::from_secs(2));
    // ... and answers at once for a task that has ended.
    let canceled = api.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await;
    assert_eq!(canceled.status, StatusCode::OK);
    api.wait_status(&id, "canceled").await;
    let ended = api.get_with(&format!("/v1/tasks/{id}"), &[("Prefer", "wait=60")]).await;
    assert_eq!(ended.body["data"]["status"], "canceled");
    assert_eq!(ended.header("preference-applied"), "wait=60");
    tenant.cleanup().await;
    keys.cleanup().await;
    drop(stack);
}

#[tokio::test]
async fn workloads_report_progress_with_their_token() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::with_spec("progress", roomy(1000)).await;
    let keys = KeyNamespace::new().await;
    let key = keys.key(&tenant.name);
    tenant.template("forever", "forever", json!({})).await;
    let stack = Stack::start(&keys.name).await;
    let api = stack.client(&key);
    let id = api.run("forever", json!({})).await;
    api.wait_status(&id, "running").await;

    // The workload's side: its env carries the callback URL and token.
    let (workload, path) = workload_of(&stack, &tenant, &id).await;
    let answer = report_progress(
        &workload,
        &path,
        json!({"progress": 40, "output": {"preview_url": "https://cdn.example.com/p.jpg"}}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["data"]["progress"], 40);
    let seen = api.wait_task(&id, "progress 40", |t| t["progress"] == 40).await;
    assert_eq!(seen["status"], "running");
    assert_eq!(seen["output"]["preview_url"], "https://cdn.example.com/p.jpg");
    let stored = tenant.get(&id).await;
    assert_eq!(stored.status.unwrap().progress, Some(40));

    // A task reports at most twice a second: a burst is partly refused with
    // 429 and Retry-After, and what was refused is not recorded.
    let reports: Vec<Value> = (0..5).map(|i| json!({"progress": 41 + i})).collect();
    let burst = futures::future::join_all(reports.iter().map(|r| workload.post(&path, r))).await;
    let refused: Vec<&Answer> = burst.iter().filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS).collect();
    assert!(refused.len() >= 3, "{:?}", burst.iter().map(|a| a.status).collect::<Vec<_>>());
    for answer in &refused {
        answer.assert_error(429, 40003);
        assert_eq!(answer.header("retry-after"), "1");
    }
    let written: Vec<i64> = burst
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .map(|a| a.body["data"]["progress"].as_i64().unwrap())
        .collect();
    assert!(written.len() <= 2, "{written:?}");
    let (_, metrics) = http_get(&format!("{}/metrics", stack.gateway.url())).await.unwrap();
    assert!(
        metrics.lines().any(|l| l == format!("runplane_api_progress_throttled_total {}", refused.len())),
        "{metrics}"
    );

    // A GET that waits for a change answers as soon as progress moves.
    report_progress(&workload, &path, json!({"progress": 49})).await;
    api.wait_task(&id, "progress 49", |t| t["progress"] == 49).await;
    let waiting = {
        let api = api.clone();
        let path = format!("/v1/tasks/{id}");
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = api.get_with(&path, &[("Prefer", "wait=30")]).await;
            (answer.status, answer.body, started.elapsed())
        })
    };
    let mut progress = 50;
    while !waiting.is_finished() {
        assert!(progress < 90, "the waiting GET did not answer on a change");
        report_progress(&workload, &path, json!({"progress": progress})).await;
        progress += 1;
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let (status, body, took) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body["data"]["progress"].as_i64().unwrap() >= 50, "{body}");
    assert!(took < Duration::from_secs(25), "answered after {took:?}");

    // Wrong or missing tokens, API keys and bad reports are refused; a task
    // name that does not exist answers the same 401 as a wrong token.
    Client { key: "0".repeat(64), ..workload.clone() }
        .post(&path, &json!({"progress": 50}))
        .await
        .assert_error(401, 40001);
    Client { key: String::new(), ..workload.clone() }
        .post(&path, &json!({"progress": 50}))
        .await
        .assert_error(401, 40001);
    api.post(&path, &json!({"progress": 50})).await.assert_error(401, 40001);
    report_progress(&workload, &path, json!({"progress": 150})).await.assert_error(400, 40005);
    let unknown = workload.post("/v1/internal/tasks/task-000000000000/progress", &json!({"progress": 5})).await;
    unknown.assert_error(401, 40001);
    let wrong = Client { key: "0".repeat(64), ..workload.clone() }.post(&path, &json!({"progress": 5})).await;
    assert_eq!(unknown.body["msg"], wrong.body["msg"], "an unknown task looks like a wrong token");

    // Once the task has ended, progress is refused.
    let canceled = api.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await;
    assert_eq!(canceled.status, StatusCode::OK, "{}", canceled.body);
    api.wait_status(&id, "canceled").await;
    wait_for("progress to be refused after the end", Duration::from_secs(10), || async {
        let a = workload.post(&path, &json!({"progress": 60})).await;
        (a.status == StatusCode::CONFLICT).then_some(a)
    })
    .await
    .assert_error(409, 40005);
    // RunningHub reports a canceled task as FAILED with a code and message.
    let rh = api.post("/openapi/v2/query", &json!({"taskId": id})).await;
    assert_eq!(rh.body["status"], "FAILED");
    assert_eq!(rh.body["errorCode"], "canceled");
    assert_eq!(rh.body["errorMessage"], "Canceled by user");
    tenant.cleanup().await;
    keys.cleanup().await;
    drop(stack);
}

/// Waits until the clock has left the second of `created_at` (RFC 3339,
/// whole seconds), so that the next task is created in a later second.
async fn after_second_of(created_at: &str) {
    let created: jiff::Timestamp = created_at.parse().unwrap();
    wait_for("the next second", Duration::from_secs(3), || async move {
        (jiff::Timestamp::now().as_second() > created.as_second()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn queue_positions_listing_and_failures() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::with_spec(
        "queue",
        json!({"plan": "custom", "credits": 1000, "limits": {"concurrentTasks": 1, "requestsPerMinute": 1000}}),
    )
    .await;
    let keys = KeyNamespace::new().await;
    let key = keys.key(&tenant.name);
    tenant.template("forever", "forever", json!({})).await;
    tenant.template("broken", "1s", json!({"podMetadata": {"annotations": {"e2e.runplane.dev/exit-code": "3", "e2e.runplane.dev/message": "out of memory"}}})).await;
    let stack = Stack::start(&keys.name).await;
    let api = stack.client(&key);
    // Three tasks created in three different seconds.
    let first = api.run("forever", json!({"n": 1})).await;
    api.wait_status(&first, "running").await;
    after_second_of(api.task(&first).await["created_at"].as_str().unwrap()).await;
    let second = api.run("forever", json!({"n": 2})).await;
    after_second_of(api.task(&second).await["created_at"].as_str().unwrap()).await;
    let third = api.run("forever", json!({"n": 3})).await;
    let queued = api.wait_task(&third, "waiting on the account limit", |t| t["wait_reason"] == "account_limit").await;
    assert_eq!(queued["status"], "queued");
    // The older waits ahead.
    assert_eq!(api.task(&second).await["queue_position"], 1);
    assert_eq!(queued["queue_position"], 2);
    assert!(api.task(&first).await.get("queue_position").is_none());
    let account = api.get("/v1/account").await;
    assert_eq!(account.body["data"]["running"], 1);
    assert_eq!(account.body["data"]["queued"], 2);

    // Listing: newest first, filtered, paginated with an opaque cursor.
    let ids = |a: &Answer| -> Vec<String> {
        a.body["data"]["tasks"].as_array().unwrap().iter().map(|t| t["task_id"].as_str().unwrap().to_string()).collect()
    };
    let page1 = api.get("/v1/tasks?limit=2").await;
    assert_eq!(ids(&page1), vec![third.clone(), second.clone()]);
    assert_eq!(page1.body["data"]["tasks"][1]["queue_position"], 1);
    let cursor = page1.body["data"]["next_cursor"].as_str().unwrap().to_string();
    let page2 = api.get(&format!("/v1/tasks?limit=2&cursor={cursor}")).await;
    assert_eq!(ids(&page2), vec![first.clone()]);
    assert_eq!(page2.body["data"]["next_cursor"], Value::Null);
    assert_eq!(ids(&api.get("/v1/tasks").await), vec![third.clone(), second.clone(), first.clone()]);
    let running = api.get("/v1/tasks?status=running").await;
    assert_eq!(ids(&running), vec![first.clone()]);
    assert_eq!(ids(&api.get("/v1/tasks?status=queued&limit=1").await), vec![third.clone()]);
    assert_eq!(ids(&api.get("/v1/tasks?template_id=broken").await), Vec::<String>::new());

    // Cancel all three; then a failing task reports its error in both formats.
    for id in [&third, &second, &first] {
        assert_eq!(api.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await.status, StatusCode::OK);
    }
    for id in [&first, &second, &third] {
        api.wait_status(id, "canceled").await;
    }
    let broken = api.run("broken", json!({})).await;
    let failed = api.wait_status(&broken, "failed").await;
    assert!(failed["error"]["code"].as_i64().unwrap() >= 50001, "{failed}");
    assert!(failed["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{failed}");
    let rh = api.post("/openapi/v2/query", &json!({"taskId": broken})).await;
    assert_eq!(rh.body["status"], "FAILED");
    assert_eq!(rh.body["errorCode"], failed["error"]["code"].to_string());
    assert_eq!(ids(&api.get("/v1/tasks?status=failed&template_id=broken").await), vec![broken.clone()]);
    tenant.cleanup().await;
    keys.cleanup().await;
    drop(stack);
}

#[tokio::test]
async fn cli_runs_waits_and_manages_tasks() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::with_spec("cli", roomy(1000)).await;
    let keys = KeyNamespace::new().await;
    let key = keys.key(&tenant.name);
    tenant.template("quick", "2s", json!({"inputSchema": portrait_schema()})).await;
    tenant.template("forever", "forever", json!({})).await;
    let stack = Stack::start(&keys.name).await;
    let url = stack.gateway.url();
    let env = [("RUNPLANE_API_URL", url.as_str()), ("RUNPLANE_API_KEY", key.as_str())];

    let (ok, stdout, stderr) =
        runplane(&["run", "quick", "--input", r#"{"image_url": "https://example.com/a.jpg"}"#, "--wait"], &env);
    assert!(ok, "{stderr}");
    let output: Value = serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("output JSON: {stdout}"));
    assert_eq!(output, json!({"result_url": "https://cdn.example.com/quick.png"}));
    assert!(stderr.contains("task-") && stderr.contains("completed"), "{stderr}");

    let (ok, stdout, stderr) = runplane(&["run", "quick", "--input", "{}"], &env);
    assert!(!ok && stdout.is_empty() && stderr.contains("40005") && stderr.contains("image_url"), "{stderr}");

    let (ok, stdout, stderr) = runplane(&["run", "forever"], &env);
    assert!(ok, "{stderr}");
    let id = stdout.trim().to_string();
    assert!(id.starts_with("task-"), "{stdout}");
    let (ok, stdout, stderr) = runplane(&["task", "get", &id], &env);
    assert!(ok, "{stderr}");
    let task: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(task["task_id"], id.as_str());
    let (ok, stdout, stderr) = runplane(&["task", "list", "--template", "forever"], &env);
    assert!(ok, "{stderr}");
    let list: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list["tasks"][0]["task_id"], id.as_str());
    let (ok, _, stderr) = runplane(&["task", "cancel", &id], &env);
    assert!(ok, "{stderr}");
    let client = stack.client(&key);
    client.wait_status(&id, "canceled").await;
    let (ok, _, stderr) = runplane(&["task", "get", "task-000000000000"], &env);
    assert!(!ok && stderr.contains("40006"), "{stderr}");
    let (ok, _, stderr) =
        runplane(&["task", "get", &id], &[("RUNPLANE_API_URL", url.as_str()), ("RUNPLANE_API_KEY", "rk_live_bad")]);
    assert!(!ok && stderr.contains("40001"), "{stderr}");
    tenant.cleanup().await;
    keys.cleanup().await;
    drop(stack);
}

#[tokio::test]
async fn cli_waits_for_a_long_task_within_a_free_plan() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::new("cli-free", "free", 1000).await;
    let keys = KeyNamespace::new().await;
    let key = keys.key(&tenant.name);
    // Polled twice a second, 20 s would take 40 requests: more than the
    // free plan's 30 a minute.
    tenant.template("slow", "20s", json!({})).await;
    tenant.template("broken", "1s", json!({"podMetadata": {"annotations": {"e2e.runplane.dev/exit-code": "3", "e2e.runplane.dev/message": "out of memory"}}})).await;
    tenant.template("forever", "forever", json!({})).await;
    let stack = Stack::start(&keys.name).await;
    let url = stack.gateway.url();
    let env = [("RUNPLANE_API_URL", url.as_str()), ("RUNPLANE_API_KEY", key.as_str())];

    // A failed task: exit status 3 and its error.
    let (code, stdout, stderr) = runplane_status(&["run", "broken", "--wait"], &env);
    assert_eq!(code, Some(3), "{stdout}{stderr}");
    assert!(stdout.is_empty() && stderr.contains("failed"), "{stderr}");

    // A canceled task: exit status 4.
    let mut waiting = Command::new(env!("CARGO_BIN_EXE_runplane"))
        .args(["run", "forever", "--wait"])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let task = wait_for("the CLI's task to run", MINUTE, || async {
        let tasks = tenant.tasks().list(&Default::default()).await.ok()?.items;
        tasks.into_iter().find(|t| t.spec.template_ref.name == "forever" && t.phase() == Some(TaskPhase::Running))
    })
    .await;
    tenant.cancel(task.metadata.name.as_deref().unwrap()).await;
    let deadline = Instant::now() + MINUTE;
    let status = loop {
        if let Some(status) = waiting.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the CLI did not exit after its task was canceled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(4));

    let requests_before =
        stack.gateway.metric(r#"runplane_api_requests_total{code="200",route="/v1/tasks/{task_id}"}"#).await;
    let (code, stdout, stderr) = runplane_status(&["run", "slow", "--wait"], &env);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let output: Value = serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("output JSON: {stdout}"));
    assert_eq!(output, json!({"result_url": "https://cdn.example.com/slow.png"}));
    assert!(stderr.contains("completed") && !stderr.contains("40003"), "{stderr}");
    let metrics = stack.gateway.metrics().await;
    assert!(metrics.lines().any(|l| l == "runplane_rate_limited_total 0"), "{metrics}");
    let polls = stack.gateway.metric(r#"runplane_api_requests_total{code="200",route="/v1/tasks/{task_id}"}"#).await
        - requests_before;
    assert!(polls <= 6.0, "{polls} polls for a 20 s task");
    tenant.cleanup().await;
    keys.cleanup().await;
    drop(stack);
}

#[tokio::test]
async fn health_metrics_and_openapi_document() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::with_spec("ops", roomy(1000)).await;
    let keys = KeyNamespace::new().await;
    let key = keys.key(&tenant.name);
    let stack = Stack::start(&keys.name).await;
    let api = stack.client(&key);
    let base = stack.gateway.url();
    assert_eq!(http_get(&format!("{base}/healthz")).await.unwrap(), (200, "ok".to_string()));
    assert_eq!(http_get(&format!("{base}/readyz")).await.unwrap().0, 200);
    assert_eq!(api.get("/v1/account").await.status, StatusCode::OK);
    api.get("/v1/tasks/task-000000000000").await.assert_error(404, 40006);
    let (code, metrics) = http_get(&format!("{base}/metrics")).await.unwrap();
    assert_eq!(code, 200);
    for line in [
        r#"runplane_api_requests_total{code="200",route="/v1/account"} 1"#,
        r#"runplane_api_requests_total{code="404",route="/v1/tasks/{task_id}"} 1"#,
        r#"runplane_api_request_duration_seconds_count{route="/v1/account"} 1"#,
        "runplane_rate_limited_total 0",
        "runplane_api_peers 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from {metrics}");
    }
    let (code, doc) = http_get(&format!("{base}/openapi.json")).await.unwrap();
    assert_eq!(code, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/run",
        "/v1/tasks/{task_id}",
        "/v1/account",
        "/openapi/v2/{model}/{action}",
        "/openapi/v2/query",
        "/v1/internal/tasks/{task_id}/progress",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert_eq!(doc["paths"]["/v1/run"]["post"]["responses"]["202"]["links"]["GetTask"]["operationId"], "get_task");

    // A replica whose caches cannot fill (its apiserver is unreachable) is
    // alive but not ready, and answers API calls 503.
    let kubeconfig = std::fs::read_to_string(kubeconfig()).unwrap();
    let unreachable = format!("https://127.0.0.1:{}", free_port());
    let kubeconfig =
        kubeconfig
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("server:") { format!("    server: {unreachable}") } else { l.to_string() }
            })
            .collect::<Vec<_>>()
            .join("\n");
    let broken_config =
        TempFile(std::env::temp_dir().join(format!("runplane-e2e-unreachable-{}.kubeconfig", rand_u32())));
    std::fs::write(&broken_config.0, kubeconfig).unwrap();
    let callback = TempFile(std::env::temp_dir().join(format!("runplane-e2e-cb-{}.key", rand_u32())));
    std::fs::write(&callback.0, "k").unwrap();
    let starting = Gateway::spawn(free_port(), &keys.name, &callback.0, &broken_config.0, &[]);
    let health = format!("{}/healthz", starting.url());
    wait_for("the starting gateway to answer /healthz", Duration::from_secs(30), || {
        let health = health.clone();
        async move { http_get(&health).await.filter(|(c, _)| *c == 200) }
    })
    .await;
    assert_eq!(http_get(&format!("{}/readyz", starting.url())).await.unwrap(), (503, "caches not ready".to_string()));
    let not_ready = Client { base: starting.url(), ..api.clone() }.get("/v1/account").await;
    not_ready.assert_error(503, 50001);
    tenant.cleanup().await;
    keys.cleanup().await;
    drop(stack);
}

#[tokio::test]
async fn webhook_state_is_shown_and_redelivery_sends_the_same_event() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::with_spec("redeliver", roomy(1000)).await;
    // The signing Secret lives in the controller's namespace, with the keys.
    let keys = KeyNamespace::new().await;
    let key = keys.key(&tenant.name);
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(json!({"metadata": {"name": "hooks"}, "stringData": {"primary": "s3cret"}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(tenant.client.clone(), &keys.name)
        .create(&Default::default(), &secret)
        .await
        .unwrap();
    let patch = json!({"spec": {"webhook": {"secretRef": {"name": "hooks"}}}});
    Api::<GpuAccount>::all(tenant.client.clone())
        .patch(&tenant.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    tenant.template("quick", "1s", json!({})).await;
    tenant.template("long", "forever", json!({})).await;
    let mut receiver = Receiver::planned("s3cret");
    receiver.start().await;
    let stack = Stack::start(&keys.name).await;
    let api = stack.client(&key);
    let answer =
        api.post("/v1/run", &json!({"template_id": "quick", "input": {}, "webhook_url": receiver.url("/ok")})).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    let id = answer.body["data"]["task_id"].as_str().unwrap().to_string();
    let done = api.wait_task(&id, "webhook delivered", |t| t["webhook"]["state"] == "delivered").await;
    assert_eq!(done["webhook"]["attempts"], 1);
    let event_id = done["webhook"]["id"].as_str().unwrap().to_string();
    let again = api.post(&format!("/v1/tasks/{id}/webhook/redeliver"), &json!({})).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.body);
    wait_for("the redelivered event", MINUTE, || async {
        let ok: Vec<_> = receiver.requests().into_iter().filter(|r| r["status"] == 200).collect();
        (ok.len() == 2).then_some(ok)
    })
    .await
    .iter()
    .for_each(|r| {
        assert_eq!(r["webhook_id"], event_id.as_str(), "the same event id");
        assert!(r["runkey_ok"].as_bool().unwrap() && r["standard_ok"].as_bool().unwrap());
    });
    // A task without a webhook cannot be redelivered.
    let plain = api.run("quick", json!({})).await;
    api.wait_status(&plain, "completed").await;
    let refused = api.post(&format!("/v1/tasks/{plain}/webhook/redeliver"), &json!({})).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.body["code"], 40005);

    // A delivery given up shows when and why.
    let answer =
        api.post("/v1/run", &json!({"template_id": "quick", "input": {}, "webhook_url": receiver.url("/gone")})).await;
    let gone = answer.body["data"]["task_id"].as_str().unwrap().to_string();
    let failed = api.wait_task(&gone, "webhook given up", |t| t["webhook"]["state"] == "failed").await;
    let view = &failed["webhook"];
    assert!(view["gave_up_at"].is_string() && view["first_attempt_at"].is_string(), "{view}");
    assert_eq!((view["attempts"].as_i64(), view["last_status_code"].as_i64()), (Some(1), Some(410)), "{view}");
    assert_eq!(view["url"], receiver.url("/gone").as_str());
    assert!(view["last_error"].as_str().unwrap().contains("410") && view.get("next_attempt_at").is_none(), "{view}");

    // Canceled tasks send task.canceled when the request opts in.
    let answer = api
        .post(
            "/v1/run",
            &json!({"template_id": "long", "input": {}, "webhook_url": receiver.url("/ok"), "webhook_on_cancel": true}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    let long = answer.body["data"]["task_id"].as_str().unwrap().to_string();
    assert!(tenant.get(&long).await.spec.webhook_on_cancel);
    api.wait_status(&long, "running").await;
    api.post(&format!("/v1/tasks/{long}/cancel"), &json!({})).await;
    let canceled = api.wait_task(&long, "task.canceled delivered", |t| t["webhook"]["state"] == "delivered").await;
    assert_eq!(canceled["webhook"]["event"], "task.canceled");
    let sent = receiver.requests().into_iter().find(|r| r["body"]["data"]["task_id"] == long.as_str()).unwrap();
    assert_eq!(sent["body"]["event"], "task.canceled");
    assert!(sent["runkey_ok"].as_bool().unwrap() && sent["standard_ok"].as_bool().unwrap());

    // The OpenAPI document describes both.
    let (_, doc) = http_get(&format!("{}/openapi.json", stack.gateway.url())).await.unwrap();
    let schemas = serde_json::from_str::<Value>(&doc).unwrap()["components"]["schemas"].take();
    assert_eq!(schemas["RunRequest"]["properties"]["webhook_on_cancel"]["type"], "boolean");
    assert!(schemas["WebhookView"]["properties"]["gave_up_at"].is_object(), "{}", schemas["WebhookView"]);

    // Where a webhook may go is checked at submit time too (40005): no
    // credentials, no refused address unless --webhook-allow-cidr allows it
    // (127.0.0.1 above), no name that resolves only to refused addresses.
    for (url, why) in [
        ("http://10.0.0.1/hook", "10.0.0.1 is private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[64:ff9b::a00:1]/hook", "NAT64"),
        ("http://[::1]:9/hook", "loopback"),
        ("https://user:pw@hooks.example.com/in", "credentials"),
    ] {
        let answer = api.post("/v1/run", &json!({"template_id": "quick", "input": {}, "webhook_url": url})).await;
        answer.assert_error(400, 40005);
        let msg = answer.body["msg"].as_str().unwrap();
        assert!(msg.starts_with("webhook_url:") && msg.contains(why), "{url}: {msg}");
    }
    // A name that does not resolve (now) proves nothing private: accepted,
    // and checked again at every delivery.
    let answer = api
        .post("/v1/run", &json!({"template_id": "quick", "input": {}, "webhook_url": "http://nowhere.invalid/hook"}))
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    tenant.cleanup().await;
    keys.cleanup().await;
}

#[tokio::test]
async fn plan_limits_come_from_the_operators_table() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::new("plans", "free", 100).await;
    let keys = KeyNamespace::new().await;
    let key = keys.key(&tenant.name);
    let key_file = TempFile(std::env::temp_dir().join(format!("runplane-e2e-plans-{:08x}.key", rand_u32())));
    std::fs::write(&key_file.0, b"e2e-plans-callback-key").unwrap();
    // The free plan, changed by the operator: 7 requests a minute, 2 tasks, 3 GPUs.
    let gateway = Gateway::start(free_port(), &keys.name, &key_file.0, &["--plan=free=2,7,3".to_string()]).await;
    let api = Client { base: gateway.url(), key, http: reqwest::Client::new() };
    at_least_left_in_minute(10).await;
    let account = api.get("/v1/account").await;
    assert_eq!(account.status, StatusCode::OK, "{}", account.body);
    assert_eq!(account.body["data"]["limits"], json!({"concurrent_tasks": 2, "requests_per_minute": 7, "gpus": 3}));
    account.assert_rate_limit_headers(7);
    for _ in 0..6 {
        api.get("/v1/account").await;
    }
    api.get("/v1/account").await.assert_error(429, 40003);
    tenant.cleanup().await;
    keys.cleanup().await;
}
