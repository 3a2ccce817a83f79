//! End-to-end: the HTTP gateway (`runplane api`) and the controller against
//! the real local control plane. Every test starts both as child processes,
//! talks HTTP to the gateway like a client written against the seeds would,
//! and plays the workload where a test needs one.
//!
//! Run with `cargo test --test api` once `e2e/cluster/up.sh` is up.

// Each test holds the cluster (a std mutex, see support::serial) for its
// whole run, on its own runtime and thread: holding it across awaits is the point.
#![allow(clippy::await_holding_lock)]

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use runplane::resources::{GpuTask, TaskPhase};
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
    async fn start(port: u16, key_namespace: &str, callback_key: &PathBuf) -> Self {
        let log = std::env::temp_dir().join(format!("runplane-e2e-api-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_runplane"))
            .args(["api", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--namespace", key_namespace])
            .arg("--webhook-allow-cidr=127.0.0.1/32")
            .arg("--callback-key-file")
            .arg(callback_key)
            .arg("--kubeconfig")
            .arg(kubeconfig())
            .env("RUST_LOG", "info,kube=warn")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("the runplane binary starts");
        let gateway = Self { child, port, log };
        let url = format!("{}/readyz", gateway.url());
        wait_for(&format!("the gateway to be ready (log: {})", gateway.log.display()), Duration::from_secs(30), || {
            let url = url.clone();
            async move { http_get(&url).await.filter(|(code, _)| *code == 200).map(|_| ()) }
        })
        .await;
        gateway
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The controller and the gateway, sharing a callback key; held for one test.
struct Stack {
    _controller: Controller,
    gateway: Gateway,
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
    /// Starts both; API-key Secrets live in `key_namespace`, which is also
    /// the controller's namespace (where webhook signing Secrets are), as
    /// the chart has it.
    async fn start(key_namespace: &str) -> Self {
        let port = free_port();
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
        let gateway = Gateway::start(port, key_namespace, &key_file.0).await;
        Self { _controller: controller, gateway, callback_key, _key_file: key_file }
    }

    fn client(&self, key: &str) -> Client {
        Client { base: self.gateway.url(), key: key.to_string(), http: reqwest::Client::new() }
    }
}

/// `runplane` with the local control plane's kubeconfig; returns (success, stdout, stderr).
fn runplane(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_runplane"))
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("the runplane binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A new API key for `account`, stored in `namespace`, made with the CLI.
fn create_key(account: &str, namespace: &str) -> String {
    let (ok, stdout, stderr) = runplane(&["apikey", "create", "--account", account, "--namespace", namespace], &[]);
    assert!(ok, "apikey create failed: {stderr}");
    let key = stdout.trim().to_string();
    assert!(key.starts_with("rk_live_") && !key.contains('\n'), "{stdout}");
    key
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

    /// Polls GET /v1/tasks/{id} until `check` holds.
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

/// The seed's RunningHub request parameters as a JSON Schema.
fn rhart_schema() -> Value {
    json!({"type": "object", "required": ["prompt", "imageUrls", "aspectRatio"], "properties": {
        "prompt": {"type": "string", "minLength": 5, "maxLength": 800},
        "imageUrls": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
        "aspectRatio": {"enum": ["auto", "1:1", "3:2", "2:3"]},
    }})
}

fn message(output: Value) -> Value {
    json!({"podMetadata": {"annotations": {"e2e.runplane.dev/message": output.to_string()}}})
}

#[tokio::test]
async fn seed_examples_work_as_written() {
    let _cluster = serial();
    sweep().await;
    // The account signs webhooks (the gateway refuses a webhook_url otherwise).
    let tenant =
        Tenant::with_spec("seed", json!({"plan": "pro", "credits": 5000, "webhook": {"secretRef": {"name": "hooks"}}}))
            .await;
    let key = create_key(&tenant.name, &tenant.name);
    tenant.template("tpl-abc123", "2s", json!({"inputSchema": portrait_schema(), "price": {"perRun": 15}})).await;
    let mut extra = message(
        json!({"result_url": "https://cdn.runkey.ai/results/xxx.png", "thumbnail_url": "https://cdn.runkey.ai/thumbs/xxx.jpg"}),
    );
    merge(&mut extra, json!({"inputSchema": portrait_schema(), "price": {"perRun": 15}}));
    tenant.template("tpl-portrait-fix", "2s", extra).await;
    let mut extra = message(
        json!({"images": ["https://rh-images.example.com/output/ComfyUI_00001_plhjr_1768892915.png"], "text": "one image"}),
    );
    merge(&mut extra, json!({"inputSchema": rhart_schema(), "aliases": ["rhart-image-g-1.5/edit"]}));
    tenant.template("rhart-image-edit", "2s", extra).await;
    let stack = Stack::start(&tenant.name).await;
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
    assert_eq!(quick.header("x-ratelimit-limit"), "60");
    assert!(quick.header("x-ratelimit-remaining").parse::<u32>().unwrap() < 60);
    assert!(quick.header("x-ratelimit-reset").parse::<u64>().unwrap() > 1_700_000_000);
    assert!(quick.header("x-request-id").starts_with("req_"));

    // "Invoke Template", byte for byte but for the webhook host: the gateway
    // refuses a host that does not resolve, as your-server.com does not here.
    let body = "{\n\"template_id\": \"tpl_portrait_fix\",\n\"input\": {\n\"image_url\": \"https://example.com/photo.jpg\",\n\"enhancement\": \"high\",\n\"output_format\": \"png\"\n},\n\"webhook_url\": \"http://localhost:9/callback\"\n}";
    let run = api.post_raw("/v1/run", "application/json", body.into(), &[]).await;
    assert_eq!(run.status, StatusCode::ACCEPTED, "{}", run.body);
    let data = &run.body["data"];
    assert_eq!(data["status"], "queued");
    let created_at = data["created_at"].as_str().unwrap();
    assert!(created_at.len() == 20 && created_at.ends_with('Z'), "{created_at}");
    let id = data["task_id"].as_str().unwrap().to_string();
    let stored = tenant.get(&id).await;
    assert_eq!(stored.spec.template_ref.name, "tpl-portrait-fix");
    assert_eq!(stored.spec.webhook_url.as_deref(), Some("http://localhost:9/callback"));
    assert_eq!(stored.metadata.managed_fields.unwrap()[0].manager.as_deref(), Some("runplane.dev/api"));

    let running = api.wait_task(&id, "running or done", |t| t["status"] != "queued").await;
    if running["status"] == "running" {
        assert!(running["progress"].is_i64() && running["started_at"].is_string(), "{running}");
    }
    tenant.wait_phase(&id, TaskPhase::Completed, MINUTE).await;
    let done = api.wait_status(&id, "completed").await;
    assert_eq!(done["task_id"], id.as_str());
    assert_eq!(done["template_id"], "tpl_portrait_fix");
    assert_eq!(
        done["input"],
        json!({"image_url": "https://example.com/photo.jpg", "enhancement": "high", "output_format": "png"})
    );
    assert_eq!(done["output"]["result_url"], "https://cdn.runkey.ai/results/xxx.png");
    assert_eq!(done["output"]["thumbnail_url"], "https://cdn.runkey.ai/thumbs/xxx.jpg");
    assert!(done["processing_time"].as_f64().unwrap() >= 1.0, "{done}");
    assert_eq!(done["credits_used"], 15);
    assert_eq!(done["progress"], 100);
    for field in ["created_at", "started_at", "completed_at"] {
        assert!(done[field].as_str().is_some_and(|s| s.ends_with('Z')), "{field}: {done}");
    }
    tenant.wait_phase(&quick_id, TaskPhase::Completed, MINUTE).await;
    api.wait_status(&quick_id, "completed").await;

    // "Authentication": GET /v1/account.
    wait_for("the account to be charged", MINUTE, || async {
        (tenant.account().await.credits_used() == 30).then_some(())
    })
    .await;
    let account = wait_for("the gateway to see the charge", MINUTE, || async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let a = api.get("/v1/account").await;
        (a.body["data"]["balance"] == 5000 - 30).then_some(a)
    })
    .await;
    assert_eq!(account.body["code"], 0);
    assert_eq!(account.body["data"]["email"], format!("{}@example.com", tenant.name));
    assert_eq!(account.body["data"]["plan"], "pro");
    assert_eq!(
        account.body["data"]["limits"],
        json!({"concurrent_tasks": 10, "requests_per_minute": 60, "gpus": null})
    );

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
    let query_body = format!("{{\n  \"taskId\": \"{rh_id}\"\n}}");
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
        json!([
            {"url": "https://rh-images.example.com/output/ComfyUI_00001_plhjr_1768892915.png", "outputType": "png", "text": null},
            {"url": "", "outputType": "txt", "text": "one image"},
        ])
    );
    assert_eq!(result["taskId"], rh_id.as_str());
    assert_eq!(result["errorCode"], "");
    assert_eq!(result["clientId"], "");
    // The same task through /v1.
    assert_eq!(api.task(&rh_id).await["status"], "completed");

    tenant.cleanup().await;
    drop(stack);
}

#[tokio::test]
async fn errors_have_the_seed_codes_and_statuses() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::with_spec("errors", roomy(5)).await;
    let key = create_key(&tenant.name, &tenant.name);
    tenant.template("portrait", "1s", json!({"inputSchema": portrait_schema(), "aliases": ["portrait/fix"]})).await;
    tenant.template("pricey", "1s", json!({"price": {"perRun": 10}, "aliases": ["pricey/run"]})).await;
    let stack = Stack::start(&tenant.name).await;
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
    // ... malformed JSON, wrong content type, oversized body, bad fields, bad webhook URL.
    api.post_raw("/v1/run", "application/json", "{\"template_id\": ".into(), &[]).await.assert_error(400, 40005);
    api.post_raw("/v1/run", "text/plain", json!({"template_id": "portrait", "input": {}}).to_string(), &[])
        .await
        .assert_error(400, 40005);
    let big = json!({"template_id": "portrait", "input": {"image_url": "x".repeat(1024 * 1024 + 10)}}).to_string();
    let answer = api.post_raw("/v1/run", "application/json", big, &[]).await;
    answer.assert_error(400, 40005);
    assert!(answer.body["msg"].as_str().unwrap().contains("larger"), "{}", answer.body);
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
    api.get("/v1/tasks?status=done").await.assert_error(400, 40005);
    api.get("/v1/tasks?limit=0").await.assert_error(400, 40005);
    api.get("/v1/tasks?limit=101").await.assert_error(400, 40005);
    api.get("/v1/tasks?cursor=xyz").await.assert_error(400, 40005);

    // 40006: unknown tasks, in both formats.
    api.get("/v1/tasks/task-000000000000").await.assert_error(404, 40006);
    api.post("/v1/tasks/task-000000000000/cancel", &json!({})).await.assert_error(404, 40006);
    api.post("/openapi/v2/query", &json!({"taskId": "task-000000000000"})).await.assert_rh_error(404, "40006");

    // Unknown routes and methods are still JSON with a request id; a sane
    // client request id is echoed.
    api.get("/v1/nothing").await.assert_error(404, 40006);
    let answer = api.send(api.authed(api.http.delete(format!("{}/v1/account", api.base)))).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{}", answer.body);
    let answer = api
        .send(api.authed(api.http.get(format!("{}/v1/account", api.base))).header("X-Request-Id", "trace-1234"))
        .await;
    assert_eq!(answer.header("x-request-id"), "trace-1234");

    // Nothing of the above created a task.
    assert!(tenant.tasks().list(&Default::default()).await.unwrap().items.is_empty());
    tenant.cleanup().await;
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
    let key = create_key(&tenant.name, &tenant.name);
    let stack = Stack::start(&tenant.name).await;
    let api = stack.client(&key);
    // Four requests in one fixed window: start early enough in the minute.
    let second = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() % 60;
    if second > 50 {
        tokio::time::sleep(Duration::from_secs(61 - second)).await;
    }
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
    let (_, metrics) = http_get(&format!("{}/metrics", stack.gateway.url())).await.unwrap();
    assert!(metrics.lines().any(|l| l.starts_with("runplane_rate_limited_total ") && !l.ends_with(" 0")), "{metrics}");
    tenant.cleanup().await;
    drop(stack);
}

#[tokio::test]
async fn a_revoked_key_stops_working_within_seconds() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::new("revoke", "free", 100).await;
    let key = create_key(&tenant.name, &tenant.name);
    let other = create_key(&tenant.name, &tenant.name);
    let (ok, listing, stderr) =
        runplane(&["apikey", "list", "--account", &tenant.name, "--namespace", &tenant.name], &[]);
    assert!(ok, "{stderr}");
    assert_eq!(listing.lines().filter(|l| l.contains(&tenant.name)).count(), 2, "{listing}");
    assert!(!listing.contains(&key) && listing.contains(&key[..12]), "the listing shows prefixes only: {listing}");
    let id =
        listing.lines().find(|l| l.contains(&key[..14])).and_then(|l| l.split_whitespace().next()).unwrap().to_string();
    // Only the hash is stored.
    let (ok, secrets) = kubectl(&["get", "secrets", "-n", &tenant.name, "-o", "json"], None);
    assert!(ok && secrets.contains("runplane.dev/api-key") && !secrets.contains(&key[8..]), "{secrets}");

    let stack = Stack::start(&tenant.name).await;
    let api = stack.client(&key);
    let answer = wait_for("the new key to work", Duration::from_secs(10), || async {
        let a = api.get("/v1/account").await;
        (a.status == StatusCode::OK).then_some(a)
    })
    .await;
    assert_eq!(answer.body["data"]["plan"], "free");

    let (ok, _, stderr) = runplane(&["apikey", "revoke", &id, "--namespace", &tenant.name], &[]);
    assert!(ok, "{stderr}");
    let revoked_at = Instant::now();
    wait_for("the revoked key to be refused", Duration::from_secs(10), || async {
        let a = api.get("/v1/account").await;
        (a.status == StatusCode::UNAUTHORIZED).then_some(a)
    })
    .await
    .assert_error(401, 40001);
    assert!(revoked_at.elapsed() < Duration::from_secs(10));
    // The other key of the account still works; revoking twice is an error.
    assert_eq!(stack.client(&other).get("/v1/account").await.status, StatusCode::OK);
    let (ok, _, stderr) = runplane(&["apikey", "revoke", &id, "--namespace", &tenant.name], &[]);
    assert!(!ok && stderr.contains(&id), "{stderr}");
    // Keys cannot be made for unknown accounts or in missing namespaces.
    let (ok, _, stderr) =
        runplane(&["apikey", "create", "--account", "no-such-account", "--namespace", &tenant.name], &[]);
    assert!(!ok && stderr.contains("no-such-account"), "{stderr}");
    let (ok, _, stderr) =
        runplane(&["apikey", "create", "--account", &tenant.name, "--namespace", "no-such-namespace"], &[]);
    assert!(!ok && stderr.contains("no-such-namespace"), "{stderr}");
    tenant.cleanup().await;
    drop(stack);
}

#[tokio::test]
async fn tenants_see_only_their_own_tasks() {
    let _cluster = serial();
    sweep().await;
    let a = Tenant::with_spec("tenant-a", roomy(1000)).await;
    let b = Tenant::with_spec("tenant-b", roomy(1000)).await;
    let (key_a, key_b) = (create_key(&a.name, &a.name), create_key(&b.name, &a.name));
    a.template("forever", "forever", json!({"aliases": ["secret/model"]})).await;
    b.template("mine", "1s", json!({})).await;
    let stack = Stack::start(&a.name).await;
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
    drop(stack);
}

#[tokio::test]
async fn idempotency_key_returns_the_same_task() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::with_spec("idem", roomy(1000)).await;
    let key = create_key(&tenant.name, &tenant.name);
    tenant.template("short", "1s", json!({"aliases": ["short/run"]})).await;
    let stack = Stack::start(&tenant.name).await;
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
    // The RunningHub route honours keys too.
    let rh1 = api.post_with("/openapi/v2/short/run", &json!({"x": 1}), &[("Idempotency-Key", "rh-1")]).await;
    let rh2 = api.post_with("/openapi/v2/short/run", &json!({"x": 1}), &[("Idempotency-Key", "rh-1")]).await;
    assert_eq!(rh1.body["taskId"], rh2.body["taskId"]);
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
    drop(stack);
}

#[tokio::test]
async fn prefer_wait_returns_the_finished_task() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::with_spec("wait", roomy(1000)).await;
    let key = create_key(&tenant.name, &tenant.name);
    tenant.template("quick", "2s", json!({})).await;
    tenant.template("forever", "forever", json!({})).await;
    let stack = Stack::start(&tenant.name).await;
    let api = stack.client(&key);
    let started = Instant::now();
    let done = api.post_with("/v1/run", &json!({"template_id": "quick", "input": {}}), &[("Prefer", "wait=30")]).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(done.header("preference-applied"), "wait=30");
    assert_eq!(done.body["data"]["status"], "completed");
    assert_eq!(done.body["data"]["output"]["result_url"], "https://cdn.example.com/quick.png");
    assert!(started.elapsed() < Duration::from_secs(30));
    // Not finished in time: the usual 202.
    let started = Instant::now();
    let pending =
        api.post_with("/v1/run", &json!({"template_id": "forever", "input": {}}), &[("Prefer", "wait=2")]).await;
    assert_eq!(pending.status, StatusCode::ACCEPTED, "{}", pending.body);
    assert!(started.elapsed() >= Duration::from_secs(2));
    let id = pending.body["data"]["task_id"].as_str().unwrap();
    let canceled = api.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await;
    assert_eq!(canceled.status, StatusCode::OK);
    api.wait_status(id, "canceled").await;
    tenant.cleanup().await;
    drop(stack);
}

#[tokio::test]
async fn workloads_report_progress_with_their_token() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::with_spec("progress", roomy(1000)).await;
    let key = create_key(&tenant.name, &tenant.name);
    tenant.template("forever", "forever", json!({})).await;
    let stack = Stack::start(&tenant.name).await;
    let api = stack.client(&key);
    let id = api.run("forever", json!({})).await;
    api.wait_status(&id, "running").await;

    // The workload's side: its env carries the callback URL and token.
    let pods: Api<Pod> = tenant.pods();
    let pod = pods.get(&id).await.unwrap();
    let env = pod.spec.unwrap().containers[0].env.clone().unwrap();
    let var = |name: &str| env.iter().find(|e| e.name == name).and_then(|e| e.value.clone()).unwrap();
    let token = var("RUNPLANE_CALLBACK_TOKEN");
    let task: GpuTask = tenant.get(&id).await;
    assert_eq!(token, runplane::domain::progress_token(&stack.callback_key, task.metadata.uid.as_deref().unwrap()));
    let callback = var("RUNPLANE_CALLBACK_URL");
    assert_eq!(callback, format!("{}/v1/internal/tasks/{id}/progress", stack.gateway.url()));
    let workload = Client { base: stack.gateway.url(), key: token.clone(), http: reqwest::Client::new() };
    let path = format!("/v1/internal/tasks/{id}/progress");

    let answer = workload
        .post(&path, &json!({"progress": 40, "output": {"preview_url": "https://cdn.example.com/p.jpg"}}))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["data"]["progress"], 40);
    let seen = api.wait_task(&id, "progress 40", |t| t["progress"] == 40).await;
    assert_eq!(seen["status"], "running");
    assert_eq!(seen["output"]["preview_url"], "https://cdn.example.com/p.jpg");
    let stored = tenant.get(&id).await;
    assert_eq!(stored.status.unwrap().progress, Some(40));

    // Wrong or missing tokens, API keys and bad reports are refused.
    Client { key: "0".repeat(64), ..workload.clone() }
        .post(&path, &json!({"progress": 50}))
        .await
        .assert_error(401, 40001);
    Client { key: String::new(), ..workload.clone() }
        .post(&path, &json!({"progress": 50}))
        .await
        .assert_error(401, 40001);
    api.post(&path, &json!({"progress": 50})).await.assert_error(401, 40001);
    workload.post(&path, &json!({"progress": 150})).await.assert_error(400, 40005);
    workload
        .post("/v1/internal/tasks/task-000000000000/progress", &json!({"progress": 5}))
        .await
        .assert_error(404, 40006);
    assert_eq!(api.task(&id).await["progress"], 40);

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
    let rh = api.post("/openapi/v2/query", &json!({"taskId": id})).await;
    assert_eq!(rh.body["status"], "FAILED");
    assert_eq!(rh.body["errorMessage"], "canceled");
    tenant.cleanup().await;
    drop(stack);
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
    let key = create_key(&tenant.name, &tenant.name);
    tenant.template("forever", "forever", json!({})).await;
    tenant.template("broken", "1s", json!({"podMetadata": {"annotations": {"e2e.runplane.dev/exit-code": "3", "e2e.runplane.dev/message": "out of memory"}}})).await;
    let stack = Stack::start(&tenant.name).await;
    let api = stack.client(&key);
    let first = api.run("forever", json!({"n": 1})).await;
    api.wait_status(&first, "running").await;
    let second = api.run("forever", json!({"n": 2})).await;
    let third = api.run("forever", json!({"n": 3})).await;
    let queued = api.wait_task(&third, "waiting on the account limit", |t| t["wait_reason"] == "account_limit").await;
    assert_eq!(queued["status"], "queued");
    // Priority, then age (in whole seconds), then name decide the order.
    let waiting = api.task(&second).await;
    let mut order = [(&waiting, second.as_str()), (&queued, third.as_str())];
    order.sort_by_key(|(t, id)| (t["created_at"].as_str().unwrap().to_string(), id.to_string()));
    assert_eq!(order[0].0["queue_position"], 1, "{order:?}");
    assert_eq!(order[1].0["queue_position"], 2, "{order:?}");
    let account = api.get("/v1/account").await;
    assert_eq!(account.body["data"]["running"], 1);
    assert_eq!(account.body["data"]["queued"], 2);

    // Listing: newest first, filtered, paginated with an opaque cursor.
    let page1 = api.get("/v1/tasks?limit=2").await;
    let ids = |a: &Answer| -> Vec<String> {
        a.body["data"]["tasks"].as_array().unwrap().iter().map(|t| t["task_id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(page1.body["data"]["tasks"].as_array().unwrap().len(), 2);
    let cursor = page1.body["data"]["next_cursor"].as_str().unwrap().to_string();
    let page2 = api.get(&format!("/v1/tasks?limit=2&cursor={cursor}")).await;
    assert_eq!(page2.body["data"]["next_cursor"], Value::Null);
    let mut all = ids(&page1);
    all.extend(ids(&page2));
    let mut expected = vec![first.clone(), second.clone(), third.clone()];
    let mut sorted = all.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "every task once");
    let running = api.get("/v1/tasks?status=running").await;
    assert_eq!(ids(&running), vec![first.clone()]);
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
    drop(stack);
}

#[tokio::test]
async fn cli_runs_waits_and_manages_tasks() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::with_spec("cli", roomy(1000)).await;
    let key = create_key(&tenant.name, &tenant.name);
    tenant.template("quick", "2s", json!({"inputSchema": portrait_schema()})).await;
    tenant.template("forever", "forever", json!({})).await;
    let stack = Stack::start(&tenant.name).await;
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
    drop(stack);
}

#[tokio::test]
async fn health_metrics_and_openapi_document() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::with_spec("ops", roomy(1000)).await;
    let key = create_key(&tenant.name, &tenant.name);
    let stack = Stack::start(&tenant.name).await;
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
    tenant.cleanup().await;
    drop(stack);
}

#[tokio::test]
async fn webhook_state_is_shown_and_redelivery_sends_the_same_event() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::with_spec("redeliver", roomy(1000)).await;
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(json!({"metadata": {"name": "hooks"}, "stringData": {"primary": "s3cret"}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(tenant.client.clone(), &tenant.name)
        .create(&Default::default(), &secret)
        .await
        .unwrap();
    let patch = json!({"spec": {"webhook": {"secretRef": {"name": "hooks", "namespace": tenant.name}}}});
    Api::<runplane::resources::GpuAccount>::all(tenant.client.clone())
        .patch(&tenant.name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .unwrap();
    let key = create_key(&tenant.name, &tenant.name);
    tenant.template("quick", "1s", json!({})).await;
    tenant.template("long", "forever", json!({})).await;
    let mut receiver = Receiver::planned("s3cret");
    receiver.start().await;
    let stack = Stack::start(&tenant.name).await;
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
    // (127.0.0.1 above), and a host that resolves.
    for (url, why) in [
        ("http://10.0.0.1/hook", "10.0.0.1 is private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[64:ff9b::a00:1]/hook", "NAT64"),
        ("http://[::1]:9/hook", "loopback"),
        ("https://user:pw@hooks.example.com/in", "credentials"),
        ("http://nowhere.invalid/hook", "nowhere.invalid does not resolve"),
    ] {
        let answer = api.post("/v1/run", &json!({"template_id": "quick", "input": {}, "webhook_url": url})).await;
        answer.assert_error(400, 40005);
        let msg = answer.body["msg"].as_str().unwrap();
        assert!(msg.starts_with("webhook_url:") && msg.contains(why), "{url}: {msg}");
    }
    tenant.cleanup().await;
}
