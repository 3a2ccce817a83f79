//! Middleware and extractors shared by every route: the request id, error
//! rendering, metrics, API-key authentication with the rate limit, and the
//! JSON body reader.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngExt;
use serde_json::Value;

use super::AppState;
use super::caches::KeyRefusal;
use super::error::{ApiError, Format};
use super::keys;
use super::ratelimit::Verdict;
use crate::resources::{GpuAccount, Plans};

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 1024 * 1024;
/// Largest body read to its end before it is refused.
const DRAIN_LIMIT: usize = 8 * BODY_LIMIT;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The id of the current request (`req_<hex>`, or the client's own if sane).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The authenticated account of the current request.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub name: String,
    pub account: Arc<GpuAccount>,
    /// The namespaces it owns, in its spec's order (the order templates are looked up in).
    pub namespaces: Vec<String>,
}

/// A client-provided request id is echoed if it is 1–128 characters of
/// `[A-Za-z0-9._-]`; otherwise a new one is made.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            (1..=128).contains(&s.len())
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
        .map(str::to_string)
        .unwrap_or_else(|| format!("req_{}", hex::encode(rand::rng().random::<[u8; 8]>())))
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Outermost layer: gives the request its id, renders errors in the route's
/// wire format, stamps `X-Request-Id` and records metrics. A response that
/// [`authenticate`] did not see (an unknown route, a method the route does
/// not have, an operational route) still counts against the rate limit of
/// a valid API key it carries, and gets the `X-RateLimit-*` headers too.
pub async fn outer(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(request.headers());
    let format = Format::for_path(request.uri().path());
    let route =
        request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let method = request.method().clone();
    let key = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(keys::bearer)
        .filter(|k| k.starts_with(keys::KEY_PREFIX))
        .map(str::to_string);
    request.extensions_mut().insert(RequestId(id.clone()));
    request.extensions_mut().insert(state.clone());

    let mut response = next.run(request).await;
    if !response.headers().contains_key(&X_RATELIMIT_LIMIT)
        && let Some(key) = key
        && state.ready.load(Ordering::SeqCst)
        && let Ok((name, account)) = account_of_key(&state, &key)
    {
        let verdict = rate_limit(&state, &name, &account);
        if !verdict.allowed {
            response = ApiError::RateLimited { retry_after: verdict.retry_after }.into_response();
        }
        set_rate_limit_headers(&mut response, &verdict);
    }
    let mut response = render(response, format, &id).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID, value);
    }

    let status = response.status();
    state.metrics.requests.with_label_values(&[route.as_str(), status.as_str()]).inc();
    state.metrics.duration.with_label_values(&[route.as_str()]).observe(started.elapsed().as_secs_f64());
    if status.is_server_error() {
        tracing::warn!(request_id = %id, %method, %route, status = status.as_u16(), "request failed");
    } else {
        tracing::debug!(request_id = %id, %method, %route, status = status.as_u16(), "request");
    }
    response
}

/// Marks a response whose error status and body are meant as they are (the
/// plain-text `/readyz`), not to be rendered in a wire format.
#[derive(Clone, Copy, Debug)]
pub struct AsIs;

/// Turns an [`ApiError`] carried by a response (or a bare error status from
/// axum) into the body of the wire format.
async fn render(response: Response, format: Format, request_id: &str) -> Response {
    let (mut parts, body) = response.into_parts();
    let error = match parts.extensions.get::<ApiError>() {
        Some(error) => error.clone(),
        None if parts.extensions.get::<AsIs>().is_some() => return Response::from_parts(parts, body),
        None => {
            let status = parts.status;
            let is_json = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            if !(status.is_client_error() || status.is_server_error()) || is_json {
                return Response::from_parts(parts, body);
            }
            let text = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
            ApiError::from_status(status, &String::from_utf8_lossy(&text))
        }
    };
    parts.status = error.status();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(error.body(format, request_id)))
}

/// Requests a minute an account may make: its own limit, else its plan's
/// (by default free 30, pro 60, team 120; custom has only its own).
pub fn requests_per_minute(account: &GpuAccount, plans: &Plans) -> u32 {
    u32::try_from(account.spec.effective_limits(plans).requests_per_minute).unwrap_or(0)
}

/// The account an API key acts for. A key stored in a namespace that a
/// GpuAccount lists is refused (and logged loudly): whoever may create
/// Secrets in a tenant's namespace could have minted it for any account.
fn account_of_key(state: &AppState, key: &str) -> Result<(String, Arc<GpuAccount>), ApiError> {
    let name = match state.caches.account_for_key(key) {
        Ok(name) => name,
        Err(KeyRefusal::Unknown) => return Err(ApiError::Unauthorized("Invalid API key".into())),
        Err(KeyRefusal::TenantNamespace { namespace, account }) => {
            let mut logged = state.tenant_key_logged.lock().unwrap_or_else(|e| e.into_inner());
            if logged.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                tracing::error!(
                    %namespace,
                    %account,
                    "refused an API key stored in a namespace that a GpuAccount lists: a tenant could have minted it; keep API keys in a namespace no account lists (the gateway's --namespace)"
                );
                *logged = Some(Instant::now());
            }
            return Err(ApiError::Unauthorized("Invalid API key".into()));
        }
    };
    let account = state
        .caches
        .account(&name)
        .ok_or_else(|| ApiError::Unauthorized("Invalid API key: its account no longer exists".into()))?;
    Ok((name, account))
}

/// Counts one request of the account against its limit.
fn rate_limit(state: &AppState, name: &str, account: &GpuAccount) -> Verdict {
    let verdict = state.limiter.check(name, requests_per_minute(account, &state.plans), unix_now());
    if !verdict.allowed {
        state.metrics.rate_limited.inc();
    }
    verdict
}

fn set_rate_limit_headers(response: &mut Response, verdict: &Verdict) {
    let headers = response.headers_mut();
    headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(verdict.limit));
    headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(verdict.remaining));
    headers.insert(X_RATELIMIT_RESET, HeaderValue::from(verdict.reset));
}

/// Authenticates the API key, applies the account's rate limit and hands the
/// account to the handler; sets `X-RateLimit-*` on every answer.
pub async fn authenticate(mut request: Request, next: Next) -> Response {
    let Some(state) = request.extensions().get::<AppState>().cloned() else {
        return ApiError::Internal("the gateway state is missing".into()).into_response();
    };
    if !state.ready.load(Ordering::SeqCst) {
        return ApiError::Unavailable("the gateway is starting; retry shortly".into()).into_response();
    }
    let key = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(keys::bearer)
        .map(str::to_string);
    let Some(key) = key else {
        return ApiError::Unauthorized("Missing API key: send Authorization: Bearer <key>".into()).into_response();
    };
    let (account_name, account) = match account_of_key(&state, &key) {
        Ok(found) => found,
        Err(error) => return error.into_response(),
    };
    let verdict = rate_limit(&state, &account_name, &account);
    let mut response = if verdict.allowed {
        let namespaces = state.caches.namespaces_of(&account);
        request.extensions_mut().insert(Tenant { name: account_name, account, namespaces });
        next.run(request).await
    } else {
        ApiError::RateLimited { retry_after: verdict.retry_after }.into_response()
    };
    set_rate_limit_headers(&mut response, &verdict);
    response
}

/// Answers routes that do not exist.
pub async fn no_route(request: Request) -> ApiError {
    ApiError::NotFound(format!("no route for {} {}", request.method(), request.uri().path()))
}

/// A JSON request body: `Content-Type: application/json`, at most
/// [`BODY_LIMIT`] bytes, well-formed. Errors are 40005.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let content_type =
            request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !is_json_content_type(content_type) {
            return Err(ApiError::InvalidInput(format!(
                "body: Content-Type must be application/json, not {:?}",
                content_type
            )));
        }
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > DRAIN_LIMIT) {
            return Err(too_large());
        }
        let bytes = read_body(request.into_body()).await?;
        let value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::InvalidInput(format!("body: invalid JSON: {e}")))?;
        Ok(Self(value))
    }
}

/// Reads a body of at most [`BODY_LIMIT`] bytes. A somewhat larger body is
/// read to its end (up to [`DRAIN_LIMIT`]) and thrown away, so that the
/// client gets the 400 instead of a connection closed under its upload.
async fn read_body(body: Body) -> Result<Vec<u8>, ApiError> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::InvalidInput(format!("body: {e}")))?;
        seen = seen.saturating_add(chunk.len());
        if seen <= BODY_LIMIT {
            bytes.extend_from_slice(&chunk);
        } else if seen > DRAIN_LIMIT {
            return Err(too_large());
        }
    }
    if seen > BODY_LIMIT {
        return Err(too_large());
    }
    Ok(bytes)
}

fn too_large() -> ApiError {
    ApiError::InvalidInput(format!("body: larger than {BODY_LIMIT} bytes"))
}

/// `application/json` or `application/<x>+json`, with any parameters.
pub fn is_json_content_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Status and message of a JSON response that is not an error.
pub fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_request_ids_are_echoed() {
        let mut headers = HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("trace-42.a_b"));
        assert_eq!(request_id(&headers), "trace-42.a_b");
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        let generated = request_id(&headers);
        assert!(generated.starts_with("req_") && generated.len() == 20, "{generated}");
        assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
    }

    #[test]
    fn plans_default_to_the_seed_limits() {
        let account = |spec: serde_json::Value| -> GpuAccount {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "a"}, "spec": spec})).unwrap()
        };
        assert_eq!(requests_per_minute(&account(serde_json::json!({"plan": "free"})), &Plans::default()), 30);
        assert_eq!(requests_per_minute(&account(serde_json::json!({"plan": "pro"})), &Plans::default()), 60);
        assert_eq!(requests_per_minute(&account(serde_json::json!({"plan": "team"})), &Plans::default()), 120);
        let own = account(serde_json::json!({"plan": "free", "limits": {"requestsPerMinute": 7}}));
        assert_eq!(requests_per_minute(&own, &Plans::default()), 7, "the account's own limit wins");
        let negative = account(serde_json::json!({"plan": "pro", "limits": {"requestsPerMinute": -1}}));
        assert_eq!(requests_per_minute(&negative, &Plans::default()), 0);
    }

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("Application/JSON; charset=utf-8"));
        assert!(is_json_content_type("application/merge-patch+json"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type(""));
        assert!(!is_json_content_type("application/jsonx"));
    }
}
