//! The gateway's errors and how each wire format spells them.
//!
//! Handlers return [`ApiError`]; it travels to the outermost middleware as a
//! response extension and is rendered there, where the request id and the
//! wire format (RunKey `/v1` or RunningHub `/openapi/v2`) are known.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::wire::{ErrorBody, RhStatus, RhTask};

use crate::resources::codes;

/// An error answered to a client: a RunKey code, an HTTP status and a message.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// Missing, malformed, unknown or revoked API key (or progress token).
    #[error("{0}")]
    Unauthorized(String),
    /// The account's balance does not cover the template's per-run price.
    #[error("{0}")]
    InsufficientCredits(String),
    /// The account used up its requests of the current minute.
    #[error("Rate limit exceeded. Please retry after {retry_after} seconds.")]
    RateLimited { retry_after: u64 },
    #[error("{0}")]
    TemplateNotFound(String),
    /// The request is malformed or its input does not match the template.
    #[error("{0}")]
    InvalidInput(String),
    /// The request conflicts with the state of a task (already finished,
    /// Idempotency-Key reused with another body).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TaskNotFound(String),
    /// No such route.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The gateway's caches are not filled yet.
    #[error("{0}")]
    Unavailable(String),
    /// Something failed on our side; details are logged, not answered.
    #[error("{0}")]
    Internal(String),
}

/// Which wire format an error is rendered in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `{code, msg, request_id}`
    RunKey,
    /// `{taskId, status, errorCode, errorMessage, results, clientId, promptTips}`
    RunningHub,
}

impl Format {
    /// RunningHub's format under `/openapi/v2/`, RunKey's everywhere else.
    pub fn for_path(path: &str) -> Self {
        if path.starts_with("/openapi/v2/") { Self::RunningHub } else { Self::RunKey }
    }
}

impl ApiError {
    /// The RunKey error code.
    pub fn code(&self) -> i32 {
        match self {
            Self::Unauthorized(_) => codes::INVALID_API_KEY,
            Self::InsufficientCredits(_) => codes::INSUFFICIENT_CREDITS,
            Self::RateLimited { .. } => codes::RATE_LIMITED,
            Self::TemplateNotFound(_) => codes::TEMPLATE_NOT_FOUND,
            Self::InvalidInput(_) | Self::Conflict(_) | Self::MethodNotAllowed(_) => codes::INVALID_INPUT,
            Self::TaskNotFound(_) | Self::NotFound(_) => codes::TASK_NOT_FOUND,
            Self::Unavailable(_) | Self::Internal(_) => codes::INTERNAL,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::InsufficientCredits(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::TemplateNotFound(_) | Self::TaskNotFound(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::InvalidInput(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The error a bare status (from axum or a layer) stands for; `detail` is
    /// what that layer said.
    pub fn from_status(status: StatusCode, detail: &str) -> Self {
        let msg = if detail.trim().is_empty() {
            status.canonical_reason().unwrap_or("error").to_string()
        } else {
            detail.trim().to_string()
        };
        match status {
            StatusCode::UNAUTHORIZED => Self::Unauthorized(msg),
            StatusCode::NOT_FOUND => Self::NotFound(msg),
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed(msg),
            StatusCode::CONFLICT => Self::Conflict(msg),
            StatusCode::SERVICE_UNAVAILABLE => Self::Unavailable(msg),
            s if s.is_client_error() => Self::InvalidInput(msg),
            _ => Self::Internal(msg),
        }
    }

    /// The body in the given format, with its fields in the seeds' order.
    pub fn body(&self, format: Format, request_id: &str) -> Vec<u8> {
        let body = match format {
            Format::RunKey => serde_json::to_vec(&ErrorBody {
                code: self.code(),
                msg: self.to_string(),
                request_id: request_id.to_string(),
                retry_after: match self {
                    Self::RateLimited { retry_after } => Some(*retry_after),
                    _ => None,
                },
            }),
            Format::RunningHub => serde_json::to_vec(&RhTask {
                task_id: String::new(),
                status: RhStatus::Failed,
                error_code: self.code().to_string(),
                error_message: self.to_string(),
                results: None,
                client_id: request_id.to_string(),
                prompt_tips: String::new(),
            }),
        };
        body.expect("JSON serializes")
    }
}

impl From<kube::Error> for ApiError {
    fn from(error: kube::Error) -> Self {
        tracing::error!(%error, "kubernetes API call failed");
        Self::Internal("internal server error".into())
    }
}

impl IntoResponse for ApiError {
    /// An empty response that carries the error; the outer middleware renders it.
    fn into_response(self) -> Response {
        let mut response = self.status().into_response();
        if let Self::RateLimited { retry_after } = &self {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(*retry_after));
        }
        response.extensions_mut().insert(self);
        response
    }
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn body(error: ApiError, format: Format, id: &str) -> Value {
        serde_json::from_slice(&error.body(format, id)).unwrap()
    }

    #[test]
    fn every_error_has_the_seed_code_and_status() {
        let cases = [
            (ApiError::Unauthorized("x".into()), 40001, 401),
            (ApiError::InsufficientCredits("x".into()), 40002, 403),
            (ApiError::RateLimited { retry_after: 3 }, 40003, 429),
            (ApiError::TemplateNotFound("x".into()), 40004, 404),
            (ApiError::InvalidInput("x".into()), 40005, 400),
            (ApiError::Conflict("x".into()), 40005, 409),
            (ApiError::TaskNotFound("x".into()), 40006, 404),
            (ApiError::Internal("x".into()), 50001, 500),
            (ApiError::Unavailable("x".into()), 50001, 503),
        ];
        for (error, code, status) in cases {
            assert_eq!(error.code(), code, "{error:?}");
            assert_eq!(error.status().as_u16(), status, "{error:?}");
        }
    }

    #[test]
    fn runkey_body_matches_the_seed() {
        let raw = ApiError::Unauthorized("Invalid API key".into()).body(Format::RunKey, "req_1");
        assert_eq!(String::from_utf8(raw).unwrap(), r#"{"code":40001,"msg":"Invalid API key","request_id":"req_1"}"#);
        let body = body(ApiError::Unauthorized("Invalid API key".into()), Format::RunKey, "req_1");
        assert_eq!(body, json!({"code": 40001, "msg": "Invalid API key", "request_id": "req_1"}));
        let body = super::tests::body(ApiError::RateLimited { retry_after: 30 }, Format::RunKey, "req_1");
        assert_eq!(body["retry_after"], 30);
        assert_eq!(body["msg"], "Rate limit exceeded. Please retry after 30 seconds.");
    }

    #[test]
    fn runninghub_body_has_a_string_error_code() {
        let raw = ApiError::TemplateNotFound("no such model".into()).body(Format::RunningHub, "req_2");
        assert!(String::from_utf8(raw).unwrap().starts_with(r#"{"taskId":"","status":"FAILED","errorCode":"40004""#));
        let body = body(ApiError::TemplateNotFound("no such model".into()), Format::RunningHub, "req_2");
        assert_eq!(body["errorCode"], "40004");
        assert_eq!(body["errorMessage"], "no such model");
        assert_eq!(body["status"], "FAILED");
        assert_eq!(body["results"], Value::Null);
        assert_eq!(body["clientId"], "req_2");
    }

    #[test]
    fn bare_statuses_map_to_codes() {
        assert_eq!(ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE, "").code(), 40005);
        assert_eq!(ApiError::from_status(StatusCode::NOT_FOUND, "").to_string(), "Not Found");
        assert_eq!(ApiError::from_status(StatusCode::BAD_GATEWAY, "boom").code(), 50001);
        assert_eq!(Format::for_path("/openapi/v2/query"), Format::RunningHub);
        assert_eq!(Format::for_path("/v1/run"), Format::RunKey);
    }
}
