//! The RunKey-compatible `/v1` routes.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde::Deserialize;
use serde_json::json;
use utoipa::IntoParams;

use super::AppState;
use super::error::{ApiError, Result};
use super::http::{JsonBody, Tenant, json_response};
use super::index::ListFilter;
use super::submit::{self, Submission};
use super::wire::{self, AccountLimits, AccountView, Cursor, Envelope, RunAccepted, TaskList, TaskStatus, TaskView};
use crate::resources::{GpuTask, managers};

/// How long a cancel waits for the task to end before it answers.
const CANCEL_WAIT: Duration = Duration::from_secs(3);

/// Longest `Prefer: wait` honoured, in seconds.
pub const MAX_WAIT_SECONDS: u64 = 60;

/// The `wait=N` preference of a `Prefer` header, capped at [`MAX_WAIT_SECONDS`].
pub fn prefer_wait(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .find_map(|pref| {
            let (name, value) = pref.trim().split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            value.trim().trim_matches('"').parse::<u64>().ok()
        })
        .map(|n| n.min(MAX_WAIT_SECONDS))
}

/// The view of a task with its queue position among the tenant's tasks.
pub fn view(state: &AppState, tenant: &Tenant, task: &GpuTask) -> TaskView {
    let position = if wire::TaskStatus::of(task.phase()) == TaskStatus::Queued {
        let (namespace, name) = (task.namespace().unwrap_or_default(), task.name_any());
        state.caches.task_index.read().queue_position(&tenant.namespaces, &namespace, &name)
    } else {
        None
    };
    wire::task_view(task, position)
}

/// Whether `s` can be the name of a Kubernetes object (a DNS-1123 subdomain).
pub fn is_object_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    (1..=253).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Finds a tenant's task. The cache answers nearly always; a task this
/// replica just created gets a moment for the cache to catch up, and any
/// other miss of a well-formed id costs one apiserver GET per namespace of
/// the account (usually one), since the task may have been created a moment
/// ago through another replica. Requests are rate-limited per account, so
/// these reads are too.
pub async fn find_task(state: &AppState, tenant: &Tenant, task_id: &str) -> Result<Arc<GpuTask>> {
    let not_found = || ApiError::TaskNotFound(format!("Task {task_id} not found"));
    if let Some(task) = state.caches.task(&tenant.namespaces, task_id) {
        return Ok(task);
    }
    if !is_object_name(task_id) {
        return Err(not_found());
    }
    if let Some(namespace) = state.recently_created(&tenant.namespaces, task_id) {
        let waited = state.wait_for_task(&namespace, task_id, Duration::from_secs(1), |_| true).await;
        if let Some(task) = waited {
            return Ok(task);
        }
    }
    for namespace in &tenant.namespaces {
        let api: Api<GpuTask> = Api::namespaced(state.client.clone(), namespace);
        if let Some(task) = api.get_opt(task_id).await? {
            tracing::debug!(task = task_id, %namespace, "task read from the apiserver: not in the cache yet");
            return Ok(Arc::new(task));
        }
    }
    Err(not_found())
}

#[utoipa::path(
    post,
    path = "/v1/run",
    tag = "runkey",
    summary = "Invoke a template",
    description = "Starts a task. Answers 202 at once; with `Prefer: wait=N` (N ≤ 60) waits up to N seconds for the task to end and then answers 200 with the task as GET /v1/tasks/{task_id} shows it. An `Idempotency-Key` makes a retry within 24 h return the same task.",
    request_body(content = wire::RunRequest, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Repeats of a request with the same key and body within 24 h return the same task."),
        ("Prefer" = Option<String>, Header, description = "`wait=N`: wait up to N seconds (at most 60) for the task to end."),
    ),
    responses(
        (status = 202, description = "Task queued", body = Envelope<RunAccepted>),
        (status = 200, description = "Task ended within the `Prefer: wait` time", body = Envelope<TaskView>),
        (status = 400, description = "40005 invalid input parameters", body = wire::ErrorBody),
        (status = 401, description = "40001 invalid or missing API key", body = wire::ErrorBody),
        (status = 403, description = "40002 insufficient credits", body = wire::ErrorBody),
        (status = 404, description = "40004 template not found", body = wire::ErrorBody),
        (status = 409, description = "40005 Idempotency-Key reused with a different body", body = wire::ErrorBody),
        (status = 429, description = "40003 rate limit exceeded", body = wire::ErrorBody),
        (status = 500, description = "50001 internal server error", body = wire::ErrorBody),
        (status = 503, description = "50001 the gateway is starting", body = wire::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn run(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    let request = submit::parse_run_request(&body)?;
    let template = state
        .caches
        .template_by_id(&tenant.namespaces, &request.template_id)
        .ok_or_else(|| ApiError::TemplateNotFound(format!("Template {} not found", request.template_id)))?;
    let body = serde_json::to_value(&request).expect("JSON serializes");
    let submission = Submission {
        template,
        template_id: request.template_id,
        input: request.input,
        webhook_url: request.webhook_url,
        webhook_on_cancel: request.webhook_on_cancel,
        operation: "POST /v1/run".into(),
        body,
    };
    let idempotency_key = headers.get("idempotency-key").map(|v| v.to_str().unwrap_or("\u{0}"));
    let task = submit::submit(&state, &tenant, submission, idempotency_key).await?;
    let namespace = task.namespace().unwrap_or_default();
    let name = task.name_any();

    let mut current = Arc::new(task);
    let mut applied = None;
    if let Some(seconds) = prefer_wait(&headers) {
        applied = Some(seconds);
        if let Some(done) =
            state.wait_for_task(&namespace, &name, Duration::from_secs(seconds), GpuTask::is_terminal).await
        {
            let mut response = json_response(StatusCode::OK, &Envelope::ok(view(&state, &tenant, &done)));
            prefer_applied(&mut response, seconds);
            return Ok(response);
        }
        if let Some(latest) = state.caches.task(std::slice::from_ref(&namespace), &name) {
            current = latest;
        }
    }
    let accepted = RunAccepted {
        task_id: name,
        status: TaskStatus::of(current.phase()),
        created_at: current.metadata.creation_timestamp.as_ref().map(wire::timestamp).unwrap_or_default(),
    };
    let mut response = json_response(StatusCode::ACCEPTED, &Envelope::ok(accepted));
    if let Some(seconds) = applied {
        prefer_applied(&mut response, seconds);
    }
    Ok(response)
}

fn prefer_applied(response: &mut Response, seconds: u64) {
    if let Ok(value) = HeaderValue::from_str(&format!("wait={seconds}")) {
        response.headers_mut().insert("preference-applied", value);
    }
}

#[utoipa::path(
    get,
    path = "/v1/tasks/{task_id}",
    tag = "runkey",
    summary = "Get task status",
    description = "The task. With `Prefer: wait=N` (N ≤ 60) the answer waits up to N seconds for the task to change its status or progress (or to end), so that a client following a task needs few requests; `Preference-Applied` echoes the wait honoured.",
    params(
        ("task_id" = String, Path, description = "The task id returned by POST /v1/run"),
        ("Prefer" = Option<String>, Header, description = "`wait=N`: wait up to N seconds (at most 60) for the task's status or progress to change."),
    ),
    responses(
        (status = 200, description = "The task", body = Envelope<TaskView>),
        (status = 401, description = "40001 invalid or missing API key", body = wire::ErrorBody),
        (status = 404, description = "40006 task not found", body = wire::ErrorBody),
        (status = 429, description = "40003 rate limit exceeded", body = wire::ErrorBody),
        (status = 500, description = "50001 internal server error", body = wire::ErrorBody),
        (status = 503, description = "50001 the gateway is starting", body = wire::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn get_task(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(task_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let mut task = find_task(&state, &tenant, &task_id).await?;
    let applied = prefer_wait(&headers);
    if let Some(seconds) = applied
        && !task.is_terminal()
    {
        let seen = (TaskStatus::of(task.phase()), task.status.as_ref().and_then(|s| s.progress));
        let namespace = task.namespace().unwrap_or_default();
        let changed = |t: &GpuTask| {
            t.is_terminal() || (TaskStatus::of(t.phase()), t.status.as_ref().and_then(|s| s.progress)) != seen
        };
        if let Some(latest) = state.wait_for_task(&namespace, &task_id, Duration::from_secs(seconds), changed).await {
            task = latest;
        } else if let Some(latest) = state.caches.task(std::slice::from_ref(&namespace), &task_id) {
            task = latest;
        }
    }
    let mut response = json_response(StatusCode::OK, &Envelope::ok(view(&state, &tenant, &task)));
    if let Some(seconds) = applied {
        prefer_applied(&mut response, seconds);
    }
    Ok(response)
}

#[utoipa::path(
    post,
    path = "/v1/tasks/{task_id}/cancel",
    tag = "runkey",
    summary = "Cancel a task",
    description = "Requests the task's cancelation and answers once the task has ended `canceled`, or after 3 s with the task as it is then (it ends `canceled` shortly after). Canceling a task that has ended changes nothing and answers the task as it is.",
    params(("task_id" = String, Path, description = "The task id returned by POST /v1/run")),
    responses(
        (status = 200, description = "The task, with its cancelation requested", body = Envelope<TaskView>),
        (status = 401, description = "40001 invalid or missing API key", body = wire::ErrorBody),
        (status = 404, description = "40006 task not found", body = wire::ErrorBody),
        (status = 429, description = "40003 rate limit exceeded", body = wire::ErrorBody),
        (status = 500, description = "50001 internal server error", body = wire::ErrorBody),
        (status = 503, description = "50001 the gateway is starting", body = wire::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn cancel_task(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(task_id): Path<String>,
) -> Result<Response> {
    let task = find_task(&state, &tenant, &task_id).await?;
    if task.is_terminal() || task.spec.cancel {
        return Ok(json_response(StatusCode::OK, &Envelope::ok(view(&state, &tenant, &task))));
    }
    let patched = patch_task(&state, &task, json!({"spec": {"cancel": true}})).await?;
    // The controller stops the task within moments; answering with the
    // ended task spares the client a poll in the common case.
    let namespace = patched.namespace().unwrap_or_default();
    let task = match state.wait_for_task(&namespace, &task_id, CANCEL_WAIT, GpuTask::is_terminal).await {
        Some(ended) => (*ended).clone(),
        None => patched,
    };
    Ok(json_response(StatusCode::OK, &Envelope::ok(view(&state, &tenant, &task))))
}

#[utoipa::path(
    post,
    path = "/v1/tasks/{task_id}/webhook/redeliver",
    tag = "runkey",
    summary = "Send a task's webhook again",
    description = "Asks the controller to deliver the finished task's webhook event once more, with the same `webhook-id`. Answers 202 with the task; its `webhook` shows the new delivery. A task that has not finished, or has no webhook destination, answers 400 (40005).",
    params(("task_id" = String, Path, description = "The task id returned by POST /v1/run")),
    responses(
        (status = 202, description = "Redelivery requested", body = Envelope<TaskView>),
        (status = 400, description = "40005 the task has no webhook to send", body = wire::ErrorBody),
        (status = 401, description = "40001 invalid or missing API key", body = wire::ErrorBody),
        (status = 404, description = "40006 task not found", body = wire::ErrorBody),
        (status = 429, description = "40003 rate limit exceeded", body = wire::ErrorBody),
        (status = 500, description = "50001 internal server error", body = wire::ErrorBody),
        (status = 503, description = "50001 the gateway is starting", body = wire::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn redeliver_webhook(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(task_id): Path<String>,
) -> Result<Response> {
    let task = find_task(&state, &tenant, &task_id).await?;
    let has_webhook = task.status.as_ref().is_some_and(|s| s.webhook.is_some());
    if !task.is_terminal() || !has_webhook {
        return Err(ApiError::InvalidInput(format!(
            "task {task_id} has no webhook to send again (it must have finished with a webhook destination)"
        )));
    }
    let request = jiff::Timestamp::now().as_nanosecond().to_string();
    let patch = json!({"metadata": {"annotations": {crate::resources::labels::REDELIVER: request}}});
    let patched = patch_task(&state, &task, patch).await?;
    Ok(json_response(StatusCode::ACCEPTED, &Envelope::ok(view(&state, &tenant, &patched))))
}

/// Merge-patches a task as the gateway; a task gone meanwhile is 40006.
pub(super) async fn patch_task(state: &AppState, task: &GpuTask, patch: serde_json::Value) -> Result<GpuTask> {
    let name = task.name_any();
    let api: Api<GpuTask> = Api::namespaced(state.client.clone(), &task.namespace().unwrap_or_default());
    let params = PatchParams { field_manager: Some(managers::API.into()), ..Default::default() };
    match api.patch(&name, &params, &Patch::Merge(patch)).await {
        Ok(patched) => Ok(patched),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(ApiError::TaskNotFound(format!("Task {name} not found"))),
        Err(e) => Err(e.into()),
    }
}

/// Query of `GET /v1/tasks`.
#[derive(Deserialize, IntoParams, Debug, Default)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only tasks in this status.
    #[param(value_type = Option<TaskStatus>)]
    pub status: Option<String>,
    /// Only tasks of this template.
    pub template_id: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/tasks",
    tag = "runkey",
    summary = "List tasks",
    description = "The account's tasks, newest first, filtered and paginated.",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of tasks", body = Envelope<TaskList>),
        (status = 400, description = "40005 invalid parameters", body = wire::ErrorBody),
        (status = 401, description = "40001 invalid or missing API key", body = wire::ErrorBody),
        (status = 429, description = "40003 rate limit exceeded", body = wire::ErrorBody),
        (status = 503, description = "50001 the gateway is starting", body = wire::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn list_tasks(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Query(query): Query<ListQuery>,
) -> Result<Response> {
    let status = match query.status.as_deref() {
        None => None,
        Some(s) => Some(TaskStatus::parse(s).ok_or_else(|| {
            ApiError::InvalidInput(format!("status: {s:?} is not one of queued, running, completed, failed, canceled"))
        })?),
    };
    let limit = match query.limit.as_deref() {
        None => 20,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| ApiError::InvalidInput(format!("limit: {s:?} is not a number from 1 to 100")))?,
    };
    let cursor = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Cursor::decode(s).ok_or_else(|| ApiError::InvalidInput("cursor: invalid".into()))?),
    };
    let template = query.template_id.as_deref().filter(|t| !t.is_empty());
    let filter = ListFilter { status, template };
    state.wait_for_recent(&tenant.namespaces, Duration::from_secs(1)).await;
    let (keys, next) = state.caches.task_index.read().page(&tenant.namespaces, &filter, cursor.as_ref(), limit);
    let tasks = keys.iter().filter_map(|key| state.caches.task_at(key)).map(|t| view(&state, &tenant, &t)).collect();
    let list = TaskList { tasks, next_cursor: next.map(|c| c.encode()) };
    Ok(json_response(StatusCode::OK, &Envelope::ok(list)))
}

#[utoipa::path(
    get,
    path = "/v1/account",
    tag = "runkey",
    summary = "Get account",
    description = "The account of the API key: email, balance, plan, limits and task counts.",
    responses(
        (status = 200, description = "The account", body = Envelope<AccountView>),
        (status = 401, description = "40001 invalid or missing API key", body = wire::ErrorBody),
        (status = 429, description = "40003 rate limit exceeded", body = wire::ErrorBody),
        (status = 503, description = "50001 the gateway is starting", body = wire::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn account(State(state): State<AppState>, Extension(tenant): Extension<Tenant>) -> Result<Response> {
    state.wait_for_recent(&tenant.namespaces, Duration::from_secs(1)).await;
    let (running, queued) = {
        let index = state.caches.task_index.read();
        (index.count(&tenant.namespaces, TaskStatus::Running), index.count(&tenant.namespaces, TaskStatus::Queued))
    };
    let spec = &tenant.account.spec;
    let limits = spec.effective_limits(&state.plans);
    let view = AccountView {
        email: spec.email.clone().unwrap_or_default(),
        balance: tenant.account.balance(),
        plan: spec.plan.as_str().to_string(),
        limits: AccountLimits {
            concurrent_tasks: limits.concurrent_tasks,
            requests_per_minute: limits.requests_per_minute,
            gpus: limits.gpus,
        },
        running,
        queued,
    };
    Ok(json_response(StatusCode::OK, &Envelope::ok(view)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefer(values: &[&str]) -> Option<u64> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("prefer", HeaderValue::from_str(v).unwrap());
        }
        prefer_wait(&headers)
    }

    #[test]
    fn prefer_wait_is_parsed_and_capped() {
        assert_eq!(prefer(&[]), None);
        assert_eq!(prefer(&["wait=10"]), Some(10));
        assert_eq!(prefer(&["respond-async, wait=5"]), Some(5));
        assert_eq!(prefer(&["return=minimal", "Wait = 7"]), Some(7));
        assert_eq!(prefer(&["wait=600"]), Some(60));
        assert_eq!(prefer(&["wait=soon"]), None);
    }
}
