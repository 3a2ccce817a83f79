//! A client of the gateway's `/v1` API, used by `runplane run` and
//! `runplane task`.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::wire::{ErrorBody, RunAccepted, TaskList, TaskStatus, TaskView};

/// What can go wrong talking to the gateway.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{msg} (code {code}, HTTP {status}, request {request_id})")]
    Api { status: u16, code: i32, msg: String, request_id: String },
    #[error("the gateway answered HTTP {status}: {body}")]
    Unexpected { status: u16, body: String },
    #[error("cannot reach the gateway: {0}")]
    Http(#[from] reqwest::Error),
}

/// A `/v1` client with one API key.
#[derive(Clone, Debug)]
pub struct ApiClient {
    base: String,
    key: String,
    http: reqwest::Client,
}

/// Filters of a task listing.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub status: Option<String>,
    pub template_id: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// What the last answer's `X-RateLimit-*` headers said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateInfo {
    pub remaining: Option<u32>,
    /// Unix time the window resets.
    pub reset: Option<u64>,
}

impl RateInfo {
    fn of(headers: &reqwest::header::HeaderMap) -> Self {
        let number = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
        Self { remaining: number("x-ratelimit-remaining").map(|n: u64| n as u32), reset: number("x-ratelimit-reset") }
    }
}

/// How long to wait before the next poll so that the account's remaining
/// requests last until its window resets: the time left divided by the
/// requests left; until the reset when none are left.
pub fn spread(rate: RateInfo, now: u64) -> Duration {
    match (rate.remaining, rate.reset) {
        (Some(0), Some(reset)) => Duration::from_secs(reset.saturating_sub(now).max(1)),
        (Some(n), Some(reset)) => Duration::from_secs_f64(reset.saturating_sub(now) as f64 / f64::from(n)),
        _ => Duration::ZERO,
    }
}

/// How long a 429 asks to wait: `Retry-After`, else the body's
/// `retry_after`, else a second; at most a minute (a window).
pub fn retry_after(headers: &reqwest::header::HeaderMap, body: &Value) -> Duration {
    let seconds = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or_else(|| body["retry_after"].as_u64())
        .unwrap_or(1);
    Duration::from_secs(seconds.clamp(1, 60))
}

/// A fresh Idempotency-Key, so that a request may be sent again safely.
pub fn new_idempotency_key() -> String {
    use rand::RngExt;
    format!("runplane-cli-{}", hex::encode(rand::rng().random::<[u8; 16]>()))
}

/// Longest a request waits in total for rate limits before giving up.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(300);
/// The `Prefer: wait` of each poll of [`ApiClient::wait`], in seconds.
pub const POLL_WAIT_SECONDS: u64 = 30;

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl ApiClient {
    pub fn new(base: &str, key: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("runplane/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(90))
            .build()?;
        Ok(Self { base: base.trim_end_matches('/').to_string(), key: key.to_string(), http })
    }

    /// Sends a request; a 429 is waited out (its `Retry-After`) and the
    /// request sent again, for up to [`MAX_RATE_LIMIT_WAIT`] in all.
    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, T, RateInfo), ClientError> {
        let mut waited = Duration::ZERO;
        loop {
            let attempt = request.try_clone().expect("requests have buffered bodies");
            let response = attempt.bearer_auth(&self.key).send().await?;
            let status = response.status();
            let headers = response.headers().clone();
            let rate = RateInfo::of(&headers);
            let body = response.text().await?;
            let value: Value = serde_json::from_str(&body)
                .map_err(|_| ClientError::Unexpected { status: status.as_u16(), body: body.clone() })?;
            if status == StatusCode::TOO_MANY_REQUESTS && waited < MAX_RATE_LIMIT_WAIT {
                let pause = retry_after(&headers, &value);
                eprintln!("rate limited; retrying in {} s", pause.as_secs());
                tokio::time::sleep(pause).await;
                waited += pause;
                continue;
            }
            if value["code"] == 0
                && status.is_success()
                && let Ok(data) = serde_json::from_value(value["data"].clone())
            {
                return Ok((status, data, rate));
            }
            return match serde_json::from_value::<ErrorBody>(value) {
                Ok(error) => Err(ClientError::Api {
                    status: status.as_u16(),
                    code: error.code,
                    msg: error.msg,
                    request_id: error.request_id,
                }),
                Err(_) => Err(ClientError::Unexpected { status: status.as_u16(), body }),
            };
        }
    }

    /// `POST /v1/run`.
    pub async fn run(
        &self,
        template_id: &str,
        input: Value,
        webhook_url: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<RunAccepted, ClientError> {
        let mut body = json!({"template_id": template_id, "input": input});
        if let Some(url) = webhook_url {
            body["webhook_url"] = json!(url);
        }
        let mut request = self.http.post(format!("{}/v1/run", self.base)).json(&body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        Ok(self.send(request).await?.1)
    }

    /// `GET /v1/tasks/{task_id}`.
    pub async fn get(&self, task_id: &str) -> Result<TaskView, ClientError> {
        let url = format!("{}/v1/tasks/{}", self.base, encode_segment(task_id));
        Ok(self.send(self.http.get(url)).await?.1)
    }

    /// `GET /v1/tasks/{task_id}` with `Prefer: wait=N`: answers once the
    /// task's status or progress changes, or after N seconds.
    pub async fn get_waiting(&self, task_id: &str, seconds: u64) -> Result<(TaskView, RateInfo), ClientError> {
        let url = format!("{}/v1/tasks/{}", self.base, encode_segment(task_id));
        let request = self.http.get(url).header("Prefer", format!("wait={seconds}"));
        let (_, task, rate) = self.send(request).await?;
        Ok((task, rate))
    }

    /// `POST /v1/tasks/{task_id}/cancel`.
    pub async fn cancel(&self, task_id: &str) -> Result<TaskView, ClientError> {
        let url = format!("{}/v1/tasks/{}/cancel", self.base, encode_segment(task_id));
        Ok(self.send(self.http.post(url)).await?.1)
    }

    /// `GET /v1/tasks`.
    pub async fn list(&self, filter: &ListFilter) -> Result<TaskList, ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(s) = &filter.status {
            query.push(("status", s.clone()));
        }
        if let Some(t) = &filter.template_id {
            query.push(("template_id", t.clone()));
        }
        if let Some(l) = filter.limit {
            query.push(("limit", l.to_string()));
        }
        if let Some(c) = &filter.cursor {
            query.push(("cursor", c.clone()));
        }
        let mut url = url::Url::parse(&format!("{}/v1/tasks", self.base))
            .map_err(|e| ClientError::Unexpected { status: 0, body: format!("bad --api-url: {e}") })?;
        url.query_pairs_mut().extend_pairs(query);
        Ok(self.send(self.http.get(url)).await?.1)
    }

    /// Follows a task until it ends, showing a progress bar on stderr. Each
    /// poll waits on the gateway for a change (`Prefer: wait`), and polls
    /// are spaced so that the account's remaining requests last until its
    /// rate-limit window resets: a task of any length needs few requests and
    /// never runs into the limit on its own.
    pub async fn wait(&self, task_id: &str, show: bool) -> Result<TaskView, ClientError> {
        let bar = if show { ProgressBar::new(100) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos:>3}% {msg}")
                .expect("the template is valid")
                .progress_chars("=> "),
        );
        bar.set_prefix(task_id.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        loop {
            let (task, rate) = self.get_waiting(task_id, POLL_WAIT_SECONDS).await?;
            bar.set_position(task.progress.clamp(0, 100) as u64);
            bar.set_message(describe(&task));
            if task.status.is_terminal() {
                bar.finish_with_message(describe(&task));
                return Ok(task);
            }
            let pause = spread(rate, unix_now());
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// One line about where a task is.
pub fn describe(task: &TaskView) -> String {
    match task.status {
        TaskStatus::Queued => {
            let mut line = "queued".to_string();
            if let Some(p) = task.queue_position {
                line.push_str(&format!(" (position {p}"));
                if let Some(reason) = task.wait_reason {
                    let reason = serde_json::to_value(reason).unwrap_or_default();
                    line.push_str(&format!(", {}", reason.as_str().unwrap_or_default()));
                }
                line.push(')');
            }
            line
        }
        TaskStatus::Failed => match &task.error {
            Some(e) => format!("failed: {} ({})", e.message, e.code),
            None => "failed".into(),
        },
        status => status.as_str().to_string(),
    }
}

fn encode_segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn polls_spread_the_remaining_requests_until_the_reset() {
        let rate = |remaining, reset| RateInfo { remaining: Some(remaining), reset: Some(reset) };
        assert_eq!(spread(rate(10, 1_000), 980), Duration::from_secs(2));
        assert_eq!(spread(rate(0, 1_000), 980), Duration::from_secs(20));
        assert_eq!(spread(rate(0, 1_000), 1_000), Duration::from_secs(1));
        assert_eq!(spread(rate(40, 1_000), 1_000), Duration::ZERO);
        assert_eq!(spread(RateInfo::default(), 0), Duration::ZERO);
    }

    #[test]
    fn a_429_says_how_long_to_wait() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers, &json!({"retry_after": 7})), Duration::from_secs(7));
        assert_eq!(retry_after(&headers, &json!({})), Duration::from_secs(1));
        headers.insert(reqwest::header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&headers, &json!({"retry_after": 7})), Duration::from_secs(3));
        headers.insert(reqwest::header::RETRY_AFTER, "3600".parse().unwrap());
        assert_eq!(retry_after(&headers, &json!({})), Duration::from_secs(60));
    }

    /// A gateway stand-in: the first poll is rate-limited, the second shows
    /// the task running, the third completed.
    #[tokio::test]
    async fn wait_honours_429_and_long_polls() {
        use axum::http::HeaderMap;
        use axum::response::IntoResponse;
        let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let log = seen.clone();
        let app = axum::Router::new().route(
            "/v1/tasks/{id}",
            axum::routing::get(move |headers: HeaderMap| {
                let log = log.clone();
                async move {
                    let prefer = headers.get("prefer").and_then(|v| v.to_str().ok()).map(str::to_string);
                    let n = {
                        let mut log = log.lock().unwrap();
                        log.push(prefer);
                        log.len()
                    };
                    let reset = unix_now() + 60;
                    let task = |status: &str, progress: i32| {
                        json!({"code": 0, "data": {"task_id": "t", "template_id": "x", "status": status,
                            "progress": progress, "input": {}, "created_at": "2026-03-23T00:00:00Z",
                            "output": {"url": "https://x/y.png"}}})
                    };
                    let limit_headers = |remaining: u32| {
                        [("x-ratelimit-remaining", remaining.to_string()), ("x-ratelimit-reset", reset.to_string())]
                    };
                    match n {
                        1 => (
                            axum::http::StatusCode::TOO_MANY_REQUESTS,
                            [("retry-after", "1".to_string())],
                            axum::Json(json!({"code": 40003, "msg": "Rate limit exceeded.", "request_id": "r", "retry_after": 1})),
                        )
                            .into_response(),
                        2 => (limit_headers(600), axum::Json(task("running", 50))).into_response(),
                        _ => (limit_headers(599), axum::Json(task("completed", 100))).into_response(),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let client = ApiClient::new(&format!("http://{addr}"), "rk_live_x").unwrap();
        let started = std::time::Instant::now();
        let task = client.wait("t", false).await.unwrap();
        assert_eq!(task.status, TaskStatus::Completed);
        assert!(started.elapsed() >= Duration::from_secs(1), "the Retry-After was honoured");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "one retry after the 429, then one poll per change");
        let prefer = format!("wait={POLL_WAIT_SECONDS}");
        assert!(seen.iter().all(|p| p.as_deref() == Some(prefer.as_str())), "{seen:?}");
    }
}
