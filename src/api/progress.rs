//! The workloads' progress callback: the only way progress gets onto a task.
//! A workload authenticates with the per-task token the controller gave it
//! (`RUNPLANE_CALLBACK_TOKEN`, an HMAC of the task's UID under the shared
//! callback key), so the gateway checks it without storing anything.

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
    description = "Called by a task's workload with the token in its RUNPLANE_CALLBACK_TOKEN. Sets the task's progress and merges `output` into its output.",
    params(
        ("task_id" = String, Path, description = "The task id (RUNPLANE_TASK_ID)"),
    ),
    request_body(content = ProgressReport, content_type = "application/json"),
    responses(
        (status = 200, description = "Progress recorded", body = Envelope<TaskView>),
        (status = 400, description = "40005 invalid report", body = wire::ErrorBody),
        (status = 401, description = "40001 missing or wrong token", body = wire::ErrorBody),
        (status = 404, description = "40006 task not found", body = wire::ErrorBody),
        (status = 409, description = "40005 the task has already ended", body = wire::ErrorBody),
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
    let candidates = state.caches.tasks.state_filter(|t| t.metadata.name.as_deref() == Some(task_id.as_str()));
    if candidates.is_empty() {
        return Err(ApiError::TaskNotFound(format!("Task {task_id} not found")));
    }
    let task = candidates
        .into_iter()
        .find(|t| {
            let expected = crate::domain::progress_token(key, t.metadata.uid.as_deref().unwrap_or_default());
            expected.len() == token.len() && bool::from(expected.as_bytes().ct_eq(token.as_bytes()))
        })
        .ok_or_else(|| ApiError::Unauthorized("Invalid progress token".into()))?;
    let report = parse_report(&body)?;

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
