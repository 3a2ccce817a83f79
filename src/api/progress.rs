//! The workloads' progress callback: the only way progress gets onto a task.
//! A workload authenticates with the per-task token the controller gave it
//! (`RUNPLANE_CALLBACK_TOKEN`, an HMAC of the task's UID under the shared
//! callback key), so the gateway checks it without storing anything.
//!
//! A report for a name no task has and a report with the wrong token get the
//! same 401, so the endpoint tells nobody which task names exist. Each task
//! may write at most [`WRITES_PER_SECOND`] reports a second (per gateway
//! replica); a faster report is refused with 429 and `Retry-After: 1`
//! rather than queued, so the workload knows its report was not recorded
//! and sends its latest one again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::{ApiError, Result};
use super::http::{JsonBody, json_response};
use super::keys;
use super::wire::{self, Envelope, ProgressReport, TaskView};
use crate::resources::{GpuTask, managers};

/// Progress writes a task may make per second.
pub const WRITES_PER_SECOND: u32 = 2;
const THROTTLE_WINDOW: Duration = Duration::from_secs(1);

/// Recent progress writes by task UID: a fixed one-second window each.
#[derive(Default)]
pub struct Throttle {
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

/// Whether one more write fits the window (`start`, `count`) at `now`;
/// returns the window with it counted.
pub fn admit(window: Option<(Instant, u32)>, now: Instant) -> ((Instant, u32), bool) {
    match window {
        Some((start, count)) if now.duration_since(start) < THROTTLE_WINDOW => {
            if count < WRITES_PER_SECOND {
                ((start, count + 1), true)
            } else {
                ((start, count), false)
            }
        }
        _ => ((now, 1), true),
    }
}

impl Throttle {
    /// Counts a write of the task `uid`; false if it already wrote its share this second.
    pub fn allow(&self, uid: &str, now: Instant) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() > 4096 {
            windows.retain(|_, (start, _)| now.duration_since(*start) < THROTTLE_WINDOW);
        }
        let (window, allowed) = admit(windows.get(uid).copied(), now);
        windows.insert(uid.to_string(), window);
        allowed
    }
}

/// Checks a progress report body.
pub fn parse_report(body: &Value) -> Result<ProgressReport> {
    let invalid = |m: &str| ApiError::InvalidInput(m.to_string());
    let object = body.as_object().ok_or_else(|| invalid("body: must be a JSON object"))?;
    let progress = match object.get("progress") {
        None | Some(Value::Null) => return Err(invalid("progress: required")),
        Some(Value::Number(n)) => n
            .as_i64()
            .filter(|p| (0..=100).contains(p))
            .ok_or_else(|| invalid("progress: must be an integer from 0 to 100"))?,
        Some(_) => return Err(invalid("progress: must be an integer from 0 to 100")),
    };
    let output = match object.get("output") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => return Err(invalid("output: must be a JSON object")),
    };
    Ok(ProgressReport { progress: progress as i32, output })
}

#[utoipa::path(
    post,
    path = "/v1/internal/tasks/{task_id}/progress",
    tag = "internal",
    summary = "Report progress (workloads only)",
    description = "Called by a task's workload with the token in its RUNPLANE_CALLBACK_TOKEN. Sets the task's progress and merges `output` into its output. An unknown task and a wrong token both answer 401. A task may report at most twice a second; a faster report answers 429 with Retry-After and is not recorded.",
    params(
        ("task_id" = String, Path, description = "The task id (RUNPLANE_TASK_ID)"),
    ),
    request_body(content = ProgressReport, content_type = "application/json"),
    responses(
        (status = 200, description = "Progress recorded", body = Envelope<TaskView>),
        (status = 400, description = "40005 invalid report", body = wire::ErrorBody),
        (status = 401, description = "40001 missing or wrong token, or no such task", body = wire::ErrorBody),
        (status = 404, description = "40006 the task was deleted meanwhile", body = wire::ErrorBody),
        (status = 409, description = "40005 the task has already ended", body = wire::ErrorBody),
        (status = 429, description = "40003 the task reports too often", body = wire::ErrorBody),
        (status = 500, description = "50001 internal server error", body = wire::ErrorBody),
    ),
    security(("progress_token" = []))
)]
pub async fn report(
    State(state): State<AppState>,
    Path(task_id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    let Some(key) = state.callback_key.as_deref() else {
        return Err(ApiError::Unauthorized(
            "progress callbacks are not enabled on this gateway (no --callback-key-file)".into(),
        ));
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(keys::bearer)
        .ok_or_else(|| ApiError::Unauthorized("Missing progress token".into()))?;
    // Tasks of that name (usually one) are found through the index; the
    // token must match one of them, else the answer is the same 401 whether
    // or not the name exists.
    let task = state
        .caches
        .tasks_named(&task_id)
        .into_iter()
        .find(|t| {
            let expected = crate::domain::progress_token(key, t.metadata.uid.as_deref().unwrap_or_default());
            expected.len() == token.len() && bool::from(expected.as_bytes().ct_eq(token.as_bytes()))
        })
        .ok_or_else(|| ApiError::Unauthorized("Invalid progress token".into()))?;
    let report = parse_report(&body)?;
    if !task.is_terminal()
        && !state.progress_throttle.allow(task.metadata.uid.as_deref().unwrap_or_default(), Instant::now())
    {
        state.metrics.progress_throttled.inc();
        return Err(ApiError::RateLimited { retry_after: 1 });
    }

    let api: Api<GpuTask> = Api::namespaced(state.client.clone(), &task.namespace().unwrap_or_default());
    let params = PatchParams { field_manager: Some(managers::API.into()), ..Default::default() };
    let mut current = (*task).clone();
    for _ in 0..5 {
        if current.is_terminal() {
            return Err(ApiError::Conflict(format!("Task {task_id} has already ended")));
        }
        let mut status = json!({ "progress": report.progress });
        if let Some(output) = &report.output {
            status["output"] = output.clone();
        }
        // The resourceVersion makes the write conditional: progress never
        // lands on a task that ended since it was read.
        let patch = json!({
            "metadata": { "resourceVersion": current.resource_version() },
            "status": status,
        });
        match api.patch_status(&task_id, &params, &Patch::Merge(&patch)).await {
            Ok(updated) => {
                let view = wire::task_view(&updated, None);
                return Ok(json_response(StatusCode::OK, &Envelope::ok(view)));
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                current = match api.get_opt(&task_id).await? {
                    Some(t) if t.metadata.uid == task.metadata.uid => t,
                    _ => return Err(ApiError::TaskNotFound(format!("Task {task_id} not found"))),
                };
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return Err(ApiError::TaskNotFound(format!("Task {task_id} not found")));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Conflict(format!("Task {task_id} changes too fast; report again")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_writes_at_most_twice_a_second() {
        let t0 = Instant::now();
        let throttle = Throttle::default();
        assert!(throttle.allow("uid-1", t0));
        assert!(throttle.allow("uid-1", t0 + Duration::from_millis(100)));
        assert!(!throttle.allow("uid-1", t0 + Duration::from_millis(200)));
        assert!(!throttle.allow("uid-1", t0 + Duration::from_millis(999)));
        // Another task has its own share.
        assert!(throttle.allow("uid-2", t0 + Duration::from_millis(200)));
        // The next second starts afresh.
        assert!(throttle.allow("uid-1", t0 + Duration::from_millis(1000)));
        assert_eq!(admit(Some((t0, 2)), t0 + Duration::from_millis(10)), ((t0, 2), false));
    }

    #[test]
    fn reports_are_checked() {
        assert_eq!(parse_report(&json!({"progress": 40})).unwrap(), ProgressReport { progress: 40, output: None });
        let with_output = parse_report(&json!({"progress": 100, "output": {"url": "x"}})).unwrap();
        assert_eq!(with_output.output, Some(json!({"url": "x"})));
        for bad in [
            json!({}),
            json!({"progress": 101}),
            json!({"progress": -1}),
            json!({"progress": 4.5}),
            json!({"progress": "50"}),
            json!({"progress": 5, "output": [1]}),
            json!([]),
        ] {
            assert!(parse_report(&bad).is_err(), "{bad}");
        }
    }
}
