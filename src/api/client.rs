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

impl ApiClient {
    pub fn new(base: &str, key: &str) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("runplane/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(90))
            .build()?;
        Ok(Self { base: base.trim_end_matches('/').to_string(), key: key.to_string(), http })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, T), ClientError> {
        let response = request.bearer_auth(&self.key).send().await?;
        let status = response.status();
        let body = response.text().await?;
        let value: Value = serde_json::from_str(&body)
            .map_err(|_| ClientError::Unexpected { status: status.as_u16(), body: body.clone() })?;
        if value["code"] == 0
            && status.is_success()
            && let Ok(data) = serde_json::from_value(value["data"].clone())
        {
            return Ok((status, data));
        }
        match serde_json::from_value::<ErrorBody>(value) {
            Ok(error) => Err(ClientError::Api {
                status: status.as_u16(),
                code: error.code,
                msg: error.msg,
                request_id: error.request_id,
            }),
            Err(_) => Err(ClientError::Unexpected { status: status.as_u16(), body }),
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

    /// Polls a task until it ends, showing a progress bar on stderr.
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
            let task = self.get(task_id).await?;
            bar.set_position(task.progress.clamp(0, 100) as u64);
            bar.set_message(describe(&task));
            if task.status.is_terminal() {
                bar.finish_with_message(describe(&task));
                return Ok(task);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
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
