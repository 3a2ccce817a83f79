//! The two wire formats, as types, and the pure functions that build them
//! from GpuTasks: the task view, the queue position, RunningHub's results,
//! list cursors and request hashes. Nothing here performs I/O or reads a clock.

use std::cmp::Ordering;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::resources::{GpuTask, TaskPhase, WaitReason};

/// Annotation on a GpuTask: SHA-256 of the account and the client's Idempotency-Key.
pub const IDEMPOTENCY_KEY_ANNOTATION: &str = "runplane.dev/idempotency-key";
/// Annotation on a GpuTask: SHA-256 of the request that created it.
pub const REQUEST_HASH_ANNOTATION: &str = "runplane.dev/request-hash";
/// Annotation on a GpuTask: the template id as the client spelled it, when
/// it differs from the GpuTemplate's name (`tpl_x` names `tpl-x`).
pub const TEMPLATE_ID_ANNOTATION: &str = "runplane.dev/template-id";

/// The RunKey success envelope.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct Envelope<T> {
    /// Always 0 on success.
    pub code: i32,
    pub data: T,
}

impl<T> Envelope<T> {
    pub fn ok(data: T) -> Self {
        Self { code: 0, data }
    }
}

/// The RunKey error body.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct ErrorBody {
    /// 40001 invalid or missing API key, 40002 insufficient credits, 40003 rate limit exceeded,
    /// 40004 template not found, 40005 invalid input parameters, 40006 task not found,
    /// 50001 internal server error.
    #[schema(example = 40001)]
    pub code: i32,
    #[schema(example = "Invalid API key")]
    pub msg: String,
    #[schema(example = "req_abc123")]
    pub request_id: String,
    /// Seconds until the rate limit window ends (40003 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

/// Body of `POST /v1/run`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct RunRequest {
    /// The template to invoke: a GpuTemplate's name in the account's namespace
    /// (`_` may stand for `-`, so `tpl_portrait_fix` names `tpl-portrait-fix`).
    #[schema(example = "tpl_portrait_fix", min_length = 1, max_length = 253)]
    pub template_id: String,
    /// Template input parameters, checked against the template's inputSchema.
    #[schema(value_type = Object, example = json!({"image_url": "https://example.com/photo.jpg", "style": "portrait"}))]
    pub input: Value,
    /// URL for the completion callback (http or https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "https://your-server.com/callback", max_length = 2048)]
    pub webhook_url: Option<String>,
    /// Also send the webhook (event `task.canceled`) when the task is
    /// canceled; by default only `task.completed` and `task.failed` are sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub webhook_on_cancel: bool,
}

/// `data` of a `POST /v1/run` answered 202.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct RunAccepted {
    #[schema(example = "task-8f3a2b0c1d2e")]
    pub task_id: String,
    pub status: TaskStatus,
    #[schema(example = "2026-03-23T00:00:00Z")]
    pub created_at: String,
}

/// Task status values of the RunKey format.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting for GPU allocation.
    Queued,
    /// Processing on GPU.
    Running,
    /// Successfully finished.
    Completed,
    /// Execution error.
    Failed,
    /// Canceled by user.
    Canceled,
}

impl TaskStatus {
    pub fn of(phase: Option<TaskPhase>) -> Self {
        match phase {
            None | Some(TaskPhase::Queued) => Self::Queued,
            Some(TaskPhase::Running) => Self::Running,
            Some(TaskPhase::Completed) => Self::Completed,
            Some(TaskPhase::Failed) => Self::Failed,
            Some(TaskPhase::Canceled) => Self::Canceled,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Queued, Self::Running, Self::Completed, Self::Failed, Self::Canceled]
            .into_iter()
            .find(|status| status.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Canceled)
    }
}

/// Why a queued task waits.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitReasonView {
    /// Not yet looked at by the scheduler.
    Pending,
    /// The task's namespace belongs to no account.
    NoAccount,
    /// The template was deleted after the task was created.
    TemplateNotFound,
    /// The account runs as many tasks (or GPUs) as its plan allows.
    AccountLimit,
    /// All GPUs of the cluster are in use.
    ClusterQuota,
    /// The balance does not cover the template's per-run price.
    InsufficientCredits,
    /// A failed attempt waits before it is retried.
    RetryBackoff,
    /// A GPU is allocated; the task is starting.
    PodStarting,
}

impl From<Option<WaitReason>> for WaitReasonView {
    fn from(reason: Option<WaitReason>) -> Self {
        match reason {
            None => Self::Pending,
            Some(WaitReason::NoAccount) => Self::NoAccount,
            Some(WaitReason::TemplateNotFound) => Self::TemplateNotFound,
            Some(WaitReason::AccountLimit) => Self::AccountLimit,
            Some(WaitReason::ClusterQuota) => Self::ClusterQuota,
            Some(WaitReason::InsufficientCredits) => Self::InsufficientCredits,
            Some(WaitReason::RetryBackoff) => Self::RetryBackoff,
            Some(WaitReason::PodStarting) => Self::PodStarting,
        }
    }
}

/// A failed task's error.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct TaskError {
    /// 50001 internal error, 50002 GPU unavailable, 50003 task execution timeout, ...
    #[schema(example = 50003)]
    pub code: i32,
    pub message: String,
}

/// A task as `GET /v1/tasks/{task_id}` shows it. Fields that do not apply to
/// the task's status yet are left out.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct TaskView {
    #[schema(example = "task-8f3a2b0c1d2e")]
    pub task_id: String,
    #[schema(example = "tpl_portrait_fix")]
    pub template_id: String,
    pub status: TaskStatus,
    /// 0 to 100.
    #[schema(minimum = 0, maximum = 100)]
    pub progress: i32,
    /// The input the task was started with.
    #[schema(value_type = Object)]
    pub input: Value,
    /// Template output (URLs, data, ...), once the task has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    #[schema(example = "2026-03-23T00:00:00Z")]
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// Execution time in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_time: Option<f64>,
    /// Credits consumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_used: Option<i64>,
    /// Why the task failed (failed tasks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    /// While queued: 1-based position among the account's queued tasks (priority, then age).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub queue_position: Option<u32>,
    /// While queued: why the task waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_reason: Option<WaitReasonView>,
    /// Delivery of the task's webhook, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookView>,
}

/// Where a task's webhook delivery stands.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct WebhookView {
    /// The event's id (the `webhook-id` header), the same on every attempt.
    pub id: String,
    /// `task.completed`, `task.failed` or `task.canceled`.
    pub event: String,
    /// The destination.
    pub url: String,
    /// `pending`, `delivered` or `failed` (given up: see `last_error`).
    pub state: String,
    /// Requests sent so far.
    pub attempts: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_attempt_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<String>,
    /// HTTP status of the last answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status_code: Option<i32>,
    /// Why the last attempt failed, or why the delivery was given up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the next attempt is due (while pending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
    /// When retrying stopped without delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gave_up_at: Option<String>,
}

impl WebhookView {
    pub fn of(w: &crate::resources::WebhookStatus) -> Self {
        let state = if w.delivered_at.is_some() {
            "delivered"
        } else if w.gave_up_at.is_some() {
            "failed"
        } else {
            "pending"
        };
        Self {
            id: w.id.clone(),
            event: w.event.clone(),
            url: w.url.clone(),
            state: state.into(),
            attempts: w.attempts,
            first_attempt_at: w.first_attempt_at.as_ref().map(timestamp),
            last_attempt_at: w.last_attempt_at.as_ref().map(timestamp),
            last_status_code: w.last_status_code,
            last_error: w.last_error.clone(),
            next_attempt_at: w.next_attempt_at.as_ref().map(timestamp),
            delivered_at: w.delivered_at.as_ref().map(timestamp),
            gave_up_at: w.gave_up_at.as_ref().map(timestamp),
        }
    }
}

/// `data` of `GET /v1/tasks`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct TaskList {
    /// Newest first.
    pub tasks: Vec<TaskView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `data` of `GET /v1/account`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct AccountView {
    /// The account's email; "" when it has none.
    #[schema(example = "user@example.com")]
    pub email: String,
    /// Credits left.
    #[schema(example = 5000)]
    pub balance: i64,
    #[schema(example = "pro")]
    pub plan: String,
    pub limits: AccountLimits,
    /// Tasks running now.
    pub running: u32,
    /// Tasks waiting for a GPU.
    pub queued: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct AccountLimits {
    #[schema(example = 10)]
    pub concurrent_tasks: i32,
    #[schema(example = 60)]
    pub requests_per_minute: i32,
    /// GPUs the account may hold at once; null: no limit of its own.
    pub gpus: Option<i64>,
}

/// Body of the workload's progress callback.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
pub struct ProgressReport {
    #[schema(minimum = 0, maximum = 100)]
    pub progress: i32,
    /// Partial output so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
}

/// Body of `POST /openapi/v2/query`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RhQuery {
    #[schema(example = "task-8f3a2b0c1d2e", min_length = 1)]
    pub task_id: String,
}

/// RunningHub task statuses.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum RhStatus {
    Queued,
    Running,
    Success,
    Failed,
}

/// A RunningHub task (submit and query answer the same shape; errors too,
/// with status FAILED, an empty taskId and errorCode set).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RhTask {
    pub task_id: String,
    pub status: RhStatus,
    /// The RunKey error code as a string; "" unless failed.
    pub error_code: String,
    pub error_message: String,
    /// Generation results; null until the task succeeded.
    pub results: Option<Vec<RhResult>>,
    /// The request id on submit and on errors; "" on query.
    pub client_id: String,
    /// Always "" (there is no ComfyUI backend to report on).
    pub prompt_tips: String,
}

/// One RunningHub result: a file (`url`, `outputType` = its extension) or a text.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RhResult {
    pub url: String,
    #[schema(example = "png")]
    pub output_type: String,
    pub text: Option<String>,
}

/// An RFC 3339 timestamp in whole seconds, as the seed writes them.
pub fn timestamp(time: &Time) -> String {
    format_ts(time.0)
}

pub fn format_ts(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The template id a task reports: the client's spelling if recorded, else the template's name.
pub fn template_id(task: &GpuTask) -> String {
    task.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TEMPLATE_ID_ANNOTATION))
        .cloned()
        .unwrap_or_else(|| task.spec.template_ref.name.clone())
}

/// The GpuTemplate names a template id may stand for, in the order to try.
pub fn template_names(template_id: &str) -> Vec<String> {
    let mut names = vec![template_id.to_string()];
    if template_id.contains('_') {
        names.push(template_id.replace('_', "-"));
    }
    names
}

/// The view of a task. `queue_position` is computed by the caller (it needs
/// the account's other tasks) and only kept while the task is queued.
pub fn task_view(task: &GpuTask, queue_position: Option<u32>) -> TaskView {
    let status_obj = task.status.clone().unwrap_or_default();
    let status = TaskStatus::of(status_obj.phase);
    let queued = status == TaskStatus::Queued;
    let progress = match status {
        TaskStatus::Completed => 100,
        TaskStatus::Queued => 0,
        _ => status_obj.progress.unwrap_or(0),
    }
    .clamp(0, 100);
    let error = (status == TaskStatus::Failed).then(|| TaskError {
        code: status_obj.error_code.unwrap_or(crate::resources::codes::INTERNAL),
        message: status_obj
            .error_message
            .clone()
            .or_else(|| status_obj.message.clone())
            .unwrap_or_else(|| "the task failed".into()),
    });
    TaskView {
        task_id: task.metadata.name.clone().unwrap_or_default(),
        template_id: template_id(task),
        status,
        progress,
        input: task.spec.input.clone(),
        output: status_obj.output.clone(),
        created_at: task.metadata.creation_timestamp.as_ref().map(timestamp).unwrap_or_default(),
        started_at: status_obj.started_at.as_ref().map(timestamp),
        completed_at: status_obj.completed_at.as_ref().map(timestamp),
        processing_time: status_obj.processing_time,
        credits_used: status_obj.credits_used,
        error,
        queue_position: queue_position.filter(|_| queued),
        wait_reason: queued.then(|| status_obj.wait_reason.into()),
        webhook: status_obj.webhook.as_ref().map(WebhookView::of),
    }
}

fn created(task: &GpuTask) -> Timestamp {
    task.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn name(task: &GpuTask) -> (&str, &str) {
    (task.metadata.namespace.as_deref().unwrap_or_default(), task.metadata.name.as_deref().unwrap_or_default())
}

/// Queue order, as admission uses it: priority (high first), then age, then name.
pub fn queue_order(a: &GpuTask, b: &GpuTask) -> Ordering {
    b.spec.priority.cmp(&a.spec.priority).then(created(a).cmp(&created(b))).then(name(a).cmp(&name(b)))
}

/// 1-based position of `task` among `tasks` (an account's tasks) that are
/// queued; None when `task` is not queued.
pub fn queue_position<'a>(task: &GpuTask, tasks: impl IntoIterator<Item = &'a GpuTask>) -> Option<u32> {
    if TaskStatus::of(task.phase()) != TaskStatus::Queued || task.spec.cancel {
        return None;
    }
    let ahead = tasks
        .into_iter()
        .filter(|t| TaskStatus::of(t.phase()) == TaskStatus::Queued && !t.spec.cancel)
        .filter(|t| name(t) != name(task))
        .filter(|t| queue_order(t, task) == Ordering::Less)
        .count();
    Some(u32::try_from(ahead).unwrap_or(u32::MAX).saturating_add(1))
}

/// List order: newest first, ties broken by namespace and name (descending).
pub fn list_order(a: &GpuTask, b: &GpuTask) -> Ordering {
    created(b).cmp(&created(a)).then(name(b).cmp(&name(a)))
}

/// A position in the list: just after the task it was made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub created: i64,
    pub namespace: String,
    pub name: String,
}

impl Cursor {
    pub fn after(task: &GpuTask) -> Self {
        let (namespace, name) = name(task);
        Self { created: created(task).as_second(), namespace: namespace.into(), name: name.into() }
    }

    /// Opaque to clients: hex of `v1:<created>:<namespace>:<name>`.
    pub fn encode(&self) -> String {
        hex::encode(format!("v1:{}:{}:{}", self.created, self.namespace, self.name))
    }

    pub fn decode(s: &str) -> Option<Self> {
        let raw = String::from_utf8(hex::decode(s).ok()?).ok()?;
        let mut parts = raw.splitn(4, ':');
        if parts.next()? != "v1" {
            return None;
        }
        let created = parts.next()?.parse().ok()?;
        let namespace = parts.next()?.to_string();
        let name = parts.next()?.to_string();
        if namespace.is_empty() || name.is_empty() {
            return None;
        }
        Some(Self { created, namespace, name })
    }
}

/// RunningHub's errorCode of a canceled task (which reports FAILED): the
/// RunKey status name, since neither seed has a code for it.
pub const CANCELED_ERROR_CODE: &str = "canceled";
/// RunningHub's errorMessage of a canceled task, in the seed's words.
pub const CANCELED_MESSAGE: &str = "Canceled by user";

/// RunningHub status of a task.
pub fn rh_status(phase: Option<TaskPhase>) -> RhStatus {
    match phase {
        None | Some(TaskPhase::Queued) => RhStatus::Queued,
        Some(TaskPhase::Running) => RhStatus::Running,
        Some(TaskPhase::Completed) => RhStatus::Success,
        Some(TaskPhase::Failed) | Some(TaskPhase::Canceled) => RhStatus::Failed,
    }
}

/// The RunningHub view of a task.
pub fn rh_task(task: &GpuTask, client_id: String) -> RhTask {
    let status = task.status.clone().unwrap_or_default();
    let (error_code, error_message) = match status.phase {
        Some(TaskPhase::Failed) => (
            status.error_code.unwrap_or(crate::resources::codes::INTERNAL).to_string(),
            status.error_message.or(status.message).unwrap_or_else(|| "the task failed".into()),
        ),
        Some(TaskPhase::Canceled) => (CANCELED_ERROR_CODE.to_string(), CANCELED_MESSAGE.to_string()),
        _ => (String::new(), String::new()),
    };
    let results = (status.phase == Some(TaskPhase::Completed))
        .then(|| rh_results(status.output.as_ref().unwrap_or(&Value::Null)));
    RhTask {
        task_id: task.metadata.name.clone().unwrap_or_default(),
        status: rh_status(status.phase),
        error_code,
        error_message,
        results,
        client_id,
        prompt_tips: String::new(),
    }
}

/// RunningHub's `results` from a task's output, in document order (object
/// keys sorted):
/// - every string that is an http(s) URL → `{url, outputType: extension of
///   the URL's path, lower-case, or "", text: null}`;
/// - every other string under a key named `text` → `{url: "", outputType: "txt", text}`;
/// - anything else is not a result.
pub fn rh_results(output: &Value) -> Vec<RhResult> {
    let mut out = Vec::new();
    collect_results(output, None, &mut out);
    out
}

fn collect_results(value: &Value, key: Option<&str>, out: &mut Vec<RhResult>) {
    match value {
        Value::String(s) => {
            if let Some(url) = http_url(s) {
                out.push(RhResult { url: s.clone(), output_type: extension(&url), text: None });
            } else if key == Some("text") {
                out.push(RhResult { url: String::new(), output_type: "txt".into(), text: Some(s.clone()) });
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_results(v, key, out)),
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for k in keys {
                collect_results(&map[k], Some(k), out);
            }
        }
        _ => {}
    }
}

/// The string as an http(s) URL with a host, if it is one.
pub fn http_url(s: &str) -> Option<url::Url> {
    let url = url::Url::parse(s).ok()?;
    (matches!(url.scheme(), "http" | "https") && url.host().is_some()).then_some(url)
}

fn extension(url: &url::Url) -> String {
    let last = url.path().rsplit('/').next().unwrap_or_default();
    match last.rsplit_once('.') {
        Some((stem, ext))
            if !stem.is_empty()
                && !ext.is_empty()
                && ext.len() <= 10
                && ext.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            ext.to_ascii_lowercase()
        }
        _ => String::new(),
    }
}

/// A JSON value with object keys sorted, so equal documents hash equal
/// whatever their key order or whitespace.
pub fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for k in keys {
                out.insert(k.clone(), canonical(&map[k]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// SHA-256 (hex) of what a request asks for: the operation and its canonical body.
pub fn request_hash(operation: &str, body: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(operation.as_bytes());
    hasher.update(b"\n");
    hasher.update(serde_json::to_string(&canonical(body)).expect("a JSON value serializes").as_bytes());
    hex::encode(hasher.finalize())
}

/// SHA-256 (hex) of an account's Idempotency-Key: keys of different accounts never meet.
pub fn idempotency_hash(account: &str, key: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(account.as_bytes());
    hasher.update(b"\n");
    hasher.update(key.as_bytes());
    hex::encode(hasher.finalize())
}

/// A usable Idempotency-Key: 1 to 255 visible ASCII characters.
pub fn valid_idempotency_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::resources::{GpuTaskSpec, GpuTaskStatus, TemplateRef};
    use serde_json::json;

    /// A task for tests: namespace, name, creation second, priority, phase.
    pub(crate) fn task(ns: &str, name: &str, created: i64, priority: i32, phase: Option<TaskPhase>) -> GpuTask {
        let mut task = GpuTask::new(
            name,
            GpuTaskSpec {
                template_ref: TemplateRef { name: "tpl".into() },
                input: json!({"a": 1}),
                webhook_url: None,
                webhook_on_cancel: false,
                priority,
                timeout_seconds: None,
                cancel: false,
            },
        );
        task.metadata.namespace = Some(ns.into());
        task.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        task.status = Some(GpuTaskStatus { phase, ..Default::default() });
        task
    }

    #[test]
    fn queue_position_follows_priority_then_age() {
        let a = task("ns", "a", 100, 0, Some(TaskPhase::Queued));
        let b = task("ns", "b", 50, 0, Some(TaskPhase::Queued));
        let c = task("ns2", "c", 200, 5, None);
        let running = task("ns", "r", 10, 100, Some(TaskPhase::Running));
        let mut canceled = task("ns", "x", 1, 100, Some(TaskPhase::Queued));
        canceled.spec.cancel = true;
        let all = [&a, &b, &c, &running, &canceled];
        assert_eq!(queue_position(&c, all), Some(1));
        assert_eq!(queue_position(&b, all), Some(2));
        assert_eq!(queue_position(&a, all), Some(3));
        assert_eq!(queue_position(&running, all), None);
        assert_eq!(queue_position(&canceled, all), None);
    }

    #[test]
    fn queue_position_breaks_ties_by_name() {
        let a = task("ns", "a", 100, 0, None);
        let b = task("ns", "b", 100, 0, None);
        assert_eq!(queue_position(&a, [&a, &b]), Some(1));
        assert_eq!(queue_position(&b, [&a, &b]), Some(2));
    }

    #[test]
    fn views_follow_the_seed_shapes() {
        let queued = task_view(&task("ns", "t", 0, 0, None), Some(4));
        assert_eq!(queued.status, TaskStatus::Queued);
        assert_eq!(queued.queue_position, Some(4));
        assert_eq!(queued.wait_reason, Some(WaitReasonView::Pending));
        assert_eq!(queued.created_at, "1970-01-01T00:00:00Z");
        let json = serde_json::to_value(&queued).unwrap();
        assert!(json.get("output").is_none() && json.get("error").is_none(), "{json}");

        let mut done = task("ns", "t", 1_774_224_000, 0, Some(TaskPhase::Completed));
        let status = done.status.as_mut().unwrap();
        status.output = Some(json!({"result_url": "https://cdn/x.png"}));
        status.processing_time = Some(8.2);
        status.credits_used = Some(15);
        status.started_at = Some(Time(Timestamp::from_second(1_774_224_002).unwrap()));
        let view = task_view(&done, Some(1));
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["status"], "completed");
        assert_eq!(json["progress"], 100);
        assert_eq!(json["created_at"], "2026-03-23T00:00:00Z");
        assert_eq!(json["started_at"], "2026-03-23T00:00:02Z");
        assert_eq!(json["processing_time"], 8.2);
        assert_eq!(json["credits_used"], 15);
        assert!(json.get("queue_position").is_none() && json.get("wait_reason").is_none());

        let mut failed = task("ns", "t", 0, 0, Some(TaskPhase::Failed));
        let status = failed.status.as_mut().unwrap();
        status.error_code = Some(50003);
        status.error_message = Some("timed out".into());
        let json = serde_json::to_value(task_view(&failed, None)).unwrap();
        assert_eq!(json["error"], json!({"code": 50003, "message": "timed out"}));
    }

    #[test]
    fn template_ids_with_underscores_name_templates_with_dashes() {
        assert_eq!(template_names("tpl-a"), vec!["tpl-a"]);
        assert_eq!(template_names("tpl_a_b"), vec!["tpl_a_b", "tpl-a-b"]);
        let mut t = task("ns", "t", 0, 0, None);
        assert_eq!(template_id(&t), "tpl");
        t.metadata.annotations = Some([(TEMPLATE_ID_ANNOTATION.to_string(), "tpl_x".to_string())].into());
        assert_eq!(template_id(&t), "tpl_x");
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let cursor = Cursor { created: 1_700_000_000, namespace: "team-a".into(), name: "task-abc".into() };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("zz"), None);
        assert_eq!(Cursor::decode(&hex::encode("v2:1:a:b")), None);
        assert_eq!(Cursor::decode(&hex::encode("v1:x:a:b")), None);
        assert_eq!(Cursor::decode(&hex::encode("v1:1::b")), None);
    }

    #[test]
    fn results_map_urls_and_text() {
        let output = json!({
            "thumbnail_url": "https://cdn.example.com/thumbs/x.JPG?sig=1",
            "result_url": "https://cdn.example.com/results/x.png",
            "frames": ["http://cdn.example.com/a/b.mp4", "ftp://nope/x.png", 3],
            "text": "a cat",
            "meta": {"text": "https://cdn.example.com/caption", "seed": 42, "note": "not a url"},
        });
        let results = rh_results(&output);
        let summary: Vec<(String, String, Option<String>)> =
            results.into_iter().map(|r| (r.url, r.output_type, r.text)).collect();
        assert_eq!(
            summary,
            vec![
                ("http://cdn.example.com/a/b.mp4".into(), "mp4".into(), None),
                ("https://cdn.example.com/caption".into(), "".into(), None),
                ("https://cdn.example.com/results/x.png".into(), "png".into(), None),
                ("".into(), "txt".into(), Some("a cat".into())),
                ("https://cdn.example.com/thumbs/x.JPG?sig=1".into(), "jpg".into(), None),
            ]
        );
        assert!(rh_results(&json!({})).is_empty());
        assert!(rh_results(&Value::Null).is_empty());
    }

    #[test]
    fn runninghub_statuses() {
        assert_eq!(rh_status(None), RhStatus::Queued);
        assert_eq!(rh_status(Some(TaskPhase::Running)), RhStatus::Running);
        assert_eq!(rh_status(Some(TaskPhase::Completed)), RhStatus::Success);
        let canceled = rh_task(&task("ns", "t", 0, 0, Some(TaskPhase::Canceled)), String::new());
        assert_eq!(canceled.status, RhStatus::Failed);
        assert_eq!(canceled.error_code, "canceled");
        assert_eq!(canceled.error_message, "Canceled by user");
        assert_eq!(canceled.results, None);
        let mut done = task("ns", "t", 0, 0, Some(TaskPhase::Completed));
        done.status.as_mut().unwrap().output = Some(json!({"url": "https://x.io/a.webp"}));
        let json = serde_json::to_value(rh_task(&done, String::new())).unwrap();
        assert_eq!(json["status"], "SUCCESS");
        assert_eq!(json["results"], json!([{"url": "https://x.io/a.webp", "outputType": "webp", "text": null}]));
        assert_eq!(json["errorCode"], "");
        assert_eq!(json["promptTips"], "");
    }

    #[test]
    fn request_hash_ignores_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": null}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":null,"y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(request_hash("run", &a), request_hash("run", &b));
        assert_ne!(request_hash("run", &a), request_hash("alias", &a));
        let c = json!({"a": {"x": null, "y": [2, 1]}, "b": 1});
        assert_ne!(request_hash("run", &a), request_hash("run", &c));
        assert_ne!(idempotency_hash("acct-a", "k"), idempotency_hash("acct-b", "k"));
        assert!(valid_idempotency_key("order-42"));
        assert!(!valid_idempotency_key(""));
        assert!(!valid_idempotency_key("has space"));
    }
}
