//! The OpenAPI document (generated from the handlers' annotations) and the
//! operational routes: `/openapi.json`, `/healthz`, `/readyz`, `/metrics`.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use utoipa::openapi::header::Header;
use utoipa::openapi::link::{Link, LinkBuilder};
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi, RefOr};
use utoipa::{Modify, OpenApi as _};

use super::AppState;
use super::wire::{ErrorBody, RhTask};
use crate::telemetry::encode;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "runplane API",
        description = "On-demand GPU tasks on Kubernetes. `/v1` speaks the RunKey wire format, `/openapi/v2` the RunningHub one. Authenticate with `Authorization: Bearer rk_live_…` (keys are made with `runplane apikey create`). Every response carries `X-Request-Id`; every response to a valid API key carries `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (a fixed one-minute window per account, shared by the gateway replicas).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody, RhTask)),
    modifiers(&Security),
    tags(
        (name = "runkey", description = "RunKey-compatible API"),
        (name = "runninghub", description = "RunningHub-compatible API"),
        (name = "internal", description = "Called by task workloads"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("rk_live_…")
                    .description(Some("An API key from `runplane apikey create`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "progress_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The task's RUNPLANE_CALLBACK_TOKEN"))
                    .build(),
            ),
        );
    }
}

/// The document before the routes add their paths.
pub(super) fn base() -> OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The complete OpenAPI document of the gateway.
pub fn document() -> OpenApi {
    let (_, mut doc) = super::routes().split_for_parts();
    for item in doc.paths.paths.values_mut() {
        for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
            add_headers(operation);
        }
    }
    add_links(&mut doc);
    doc
}

/// A link to the operation `operation_id` passing a task id taken from the
/// response (a runtime expression such as `$response.body#/data/task_id`):
/// as the `task_id` path parameter, or as RunningHub's `{taskId}` body.
fn task_link(operation_id: &str, task_id: &str, description: &str) -> RefOr<Link> {
    let builder = LinkBuilder::new().operation_id(operation_id).description(description);
    let builder = if operation_id == "query" {
        builder.request_body(Some(serde_json::json!({ "taskId": task_id })))
    } else {
        builder.parameter("task_id", task_id)
    };
    RefOr::T(builder.build())
}

/// (path, response statuses, method, [(link name, target operation, task id expression)]).
type LinkSet<'a> = (&'a str, &'a [&'a str], &'a str, &'a [(&'a str, &'a str, &'a str)]);

/// Links from the operations that make or show a task to those that take
/// its id, so that clients (and schemathesis' stateful runs) can follow a
/// task from its creation.
fn add_links(doc: &mut OpenApi) {
    let v1_id = "$response.body#/data/task_id";
    let rh_id = "$response.body#/taskId";
    let links: [LinkSet; 3] = [
        (
            "/v1/run",
            &["200", "202"],
            "post",
            &[("GetTask", "get_task", v1_id), ("CancelTask", "cancel_task", v1_id), ("QueryTask", "query", v1_id)],
        ),
        (
            "/v1/tasks/{task_id}",
            &["200"],
            "get",
            &[("CancelTask", "cancel_task", v1_id), ("QueryTask", "query", v1_id)],
        ),
        (
            "/openapi/v2/{model}/{action}",
            &["200"],
            "post",
            &[("QueryTask", "query", rh_id), ("GetTask", "get_task", rh_id), ("CancelTask", "cancel_task", rh_id)],
        ),
    ];
    for (path, statuses, method, targets) in links {
        let Some(item) = doc.paths.paths.get_mut(path) else {
            continue;
        };
        let operation = if method == "get" { item.get.as_mut() } else { item.post.as_mut() };
        let Some(operation) = operation else {
            continue;
        };
        for status in statuses {
            let Some(RefOr::T(response)) = operation.responses.responses.get_mut(*status) else {
                continue;
            };
            for (name, target, expression) in targets {
                let description = format!("The task's id, for {target}");
                response.links.insert(name.to_string(), task_link(target, expression, &description));
            }
        }
    }
}

fn header(description: &str, ty: Type) -> RefOr<Header> {
    let schema = ObjectBuilder::new().schema_type(ty).build();
    RefOr::T(utoipa::openapi::header::HeaderBuilder::new().schema(Some(schema)).description(Some(description)).build())
}

/// Documents the headers the middleware puts on responses.
fn add_headers(operation: &mut Operation) {
    let key_auth = operation
        .security
        .as_ref()
        .is_some_and(|reqs| serde_json::to_value(reqs).map(|v| v.to_string().contains("api_key")).unwrap_or(false));
    for (status, response) in operation.responses.responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        response.headers.insert(
            "X-Request-Id".into(),
            header("Id of the request (`req_<hex>`, or the client's own)", Type::String),
        );
        // Rate limit headers are set once the key is known (not on 401 or 503).
        if key_auth && status != "401" && status != "503" {
            response.headers.insert("X-RateLimit-Limit".into(), header("Requests allowed per minute", Type::Integer));
            response
                .headers
                .insert("X-RateLimit-Remaining".into(), header("Requests left in the current minute", Type::Integer));
            response.headers.insert(
                "X-RateLimit-Reset".into(),
                header("Unix time at which the current window ends", Type::Integer),
            );
        }
        if status == "429" {
            response
                .headers
                .insert("Retry-After".into(), header("Seconds until requests are accepted again", Type::Integer));
        }
    }
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness",
    responses((status = 200, description = "The process serves requests", body = String, content_type = "text/plain"))
)]
pub async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness",
    responses(
        (status = 200, description = "The caches are filled", body = String, content_type = "text/plain"),
        (status = 503, description = "The caches are not filled yet", body = String, content_type = "text/plain"),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready").into_response()
    } else {
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, "caches not ready").into_response();
        response.extensions_mut().insert(super::http::AsIs);
        response
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    responses((status = 200, description = "Metrics in the Prometheus text format", body = String, content_type = "text/plain"))
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], encode(&state.metrics.registry))
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This OpenAPI document",
    responses((status = 200, description = "The OpenAPI 3.1 document of the gateway", body = Object, content_type = "application/json"))
)]
pub async fn openapi_json(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], state.openapi.as_ref().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_with_its_errors() {
        let doc = serde_json::to_value(document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for (path, method) in [
            ("/v1/run", "post"),
            ("/v1/tasks", "get"),
            ("/v1/tasks/{task_id}", "get"),
            ("/v1/tasks/{task_id}/cancel", "post"),
            ("/v1/account", "get"),
            ("/v1/internal/tasks/{task_id}/progress", "post"),
            ("/openapi/v2/{model}/{action}", "post"),
            ("/openapi/v2/query", "post"),
            ("/healthz", "get"),
            ("/readyz", "get"),
            ("/metrics", "get"),
            ("/openapi.json", "get"),
        ] {
            assert!(paths[path][method].is_object(), "{method} {path} is missing");
        }
        let run = &paths["/v1/run"]["post"]["responses"];
        for status in ["200", "202", "400", "401", "403", "404", "409", "429", "500"] {
            assert!(run[status].is_object(), "POST /v1/run lacks {status}");
        }
        assert!(run["429"]["headers"]["Retry-After"].is_object());
        assert!(run["202"]["headers"]["X-RateLimit-Remaining"].is_object());
        assert!(run["401"]["headers"]["X-RateLimit-Remaining"].is_null());
        assert!(run["401"]["headers"]["X-Request-Id"].is_object());
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
    }

    #[test]
    fn a_new_task_links_to_the_operations_that_take_its_id() {
        let doc = serde_json::to_value(document()).unwrap();
        let operation_ids: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .filter_map(|op| op["operationId"].as_str())
            .collect();
        let run = &doc["paths"]["/v1/run"]["post"]["responses"]["202"]["links"];
        assert_eq!(run["GetTask"]["operationId"], "get_task");
        assert_eq!(run["GetTask"]["parameters"]["task_id"], "$response.body#/data/task_id");
        assert_eq!(run["QueryTask"]["operationId"], "query");
        assert_eq!(run["QueryTask"]["requestBody"], serde_json::json!({"taskId": "$response.body#/data/task_id"}));
        let submit = &doc["paths"]["/openapi/v2/{model}/{action}"]["post"]["responses"]["200"]["links"];
        assert_eq!(submit["QueryTask"]["requestBody"]["taskId"], "$response.body#/taskId");
        // Every link names an operation that exists.
        for (path, item) in doc["paths"].as_object().unwrap() {
            for op in item.as_object().unwrap().values() {
                for response in op["responses"].as_object().into_iter().flat_map(|r| r.values()) {
                    for link in response["links"].as_object().into_iter().flat_map(|l| l.values()) {
                        let target = link["operationId"].as_str().unwrap();
                        assert!(operation_ids.contains(&target), "{path}: link to unknown {target}");
                    }
                }
            }
        }
    }
}
