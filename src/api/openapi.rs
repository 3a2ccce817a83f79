//! The OpenAPI document (generated from the handlers' annotations) and the
//! operational routes: `/openapi.json`, `/healthz`, `/readyz`, `/metrics`.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use utoipa::openapi::header::Header;
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
        description = "On-demand GPU tasks on Kubernetes. `/v1` speaks the RunKey wire format, `/openapi/v2` the RunningHub one. Authenticate with `Authorization: Bearer rk_live_…` (keys are made with `runplane apikey create`). Every response carries `X-Request-Id`; authenticated ones carry `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (a fixed one-minute window per account, counted per gateway replica).",
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
    doc
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
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not ready")
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
}
