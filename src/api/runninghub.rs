//! The RunningHub-compatible `/openapi/v2` routes: a template found by its
//! alias `{model}/{action}` runs with the request body as its input, and
//! `/openapi/v2/query` reports QUEUED / RUNNING / SUCCESS / FAILED with
//! `results` built from the task's output (see [`wire::rh_results`]).

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use kube::ResourceExt;
use serde_json::Value;

use super::AppState;
use super::error::{ApiError, Result};
use super::http::{JsonBody, RequestId, Tenant, json_response};
use super::submit::{self, Submission};
use super::v1::find_task;
use super::wire::{self, RhStatus, RhTask};

#[utoipa::path(
    post,
    path = "/openapi/v2/{model}/{action}",
    tag = "runninghub",
    summary = "Submit a task to a model",
    description = "Runs the template whose `aliases` contain `{model}/{action}`, with the request body as its input. Answers status QUEUED and `results: null`.",
    params(
        ("model" = String, Path, description = "Model name", example = "rhart-image-g-1.5"),
        ("action" = String, Path, description = "Action", example = "edit"),
        ("Idempotency-Key" = Option<String>, Header, description = "Repeats of a request with the same key and body within 24 h return the same task."),
    ),
    request_body(content = Object, content_type = "application/json", description = "The model's input parameters"),
    responses(
        (status = 200, description = "Task submitted", body = RhTask),
        (status = 400, description = "40005 invalid input parameters", body = RhTask),
        (status = 401, description = "40001 invalid or missing API key", body = RhTask),
        (status = 403, description = "40002 insufficient credits", body = RhTask),
        (status = 404, description = "40004 no template has this alias", body = RhTask),
        (status = 409, description = "40005 Idempotency-Key reused with a different body", body = RhTask),
        (status = 429, description = "40003 rate limit exceeded", body = RhTask),
        (status = 500, description = "50001 internal server error", body = RhTask),
        (status = 503, description = "50001 the gateway is starting", body = RhTask),
    ),
    security(("api_key" = []))
)]
pub async fn submit(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Path((model, action)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    let alias = format!("{model}/{action}");
    let template = state
        .caches
        .template_by_alias(&tenant.namespaces, &alias)
        .ok_or_else(|| ApiError::TemplateNotFound(format!("Model {alias} not found")))?;
    if !body.is_object() {
        return Err(ApiError::InvalidInput("body: must be a JSON object".into()));
    }
    let submission = Submission {
        template_id: template.name_any(),
        template,
        input: body.clone(),
        webhook_url: None,
        webhook_on_cancel: false,
        operation: format!("POST /openapi/v2/{alias}"),
        body,
    };
    let idempotency_key = headers.get("idempotency-key").map(|v| v.to_str().unwrap_or("\u{0}"));
    let task = submit::submit(&state, &tenant, submission, idempotency_key).await?;
    let mut answer = wire::rh_task(&task, request_id);
    answer.status = RhStatus::Queued;
    Ok(json_response(StatusCode::OK, &answer))
}

#[utoipa::path(
    post,
    path = "/openapi/v2/query",
    tag = "runninghub",
    summary = "Query a task",
    description = "Status and results of a task: QUEUED, RUNNING, SUCCESS or FAILED (a canceled task reports FAILED with errorCode \"canceled\" and errorMessage \"Canceled by user\"; a failed one its RunKey error code as errorCode). `results` is null until SUCCESS, then built from the task's output in key order: every http(s) URL string becomes `{url, outputType: the extension of the URL's path (lower-case) or \"\", text: null}`; every other string under a key named `text` becomes `{url: \"\", outputType: \"txt\", text}`.",
    request_body(content = wire::RhQuery, content_type = "application/json"),
    responses(
        (status = 200, description = "The task", body = RhTask),
        (status = 400, description = "40005 invalid parameters", body = RhTask),
        (status = 401, description = "40001 invalid or missing API key", body = RhTask),
        (status = 404, description = "40006 task not found", body = RhTask),
        (status = 429, description = "40003 rate limit exceeded", body = RhTask),
        (status = 503, description = "50001 the gateway is starting", body = RhTask),
    ),
    security(("api_key" = []))
)]
pub async fn query(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    let task_id = match body.get("taskId") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        None | Some(Value::Null) => return Err(ApiError::InvalidInput("taskId: required".into())),
        Some(_) => {
            return Err(ApiError::InvalidInput("taskId: must be a non-empty string".into()));
        }
    };
    let task = find_task(&state, &tenant, &task_id).await?;
    Ok(json_response(StatusCode::OK, &wire::rh_task(&task, String::new())))
}
