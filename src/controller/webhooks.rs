//! Webhook delivery: for every finished task with a destination, POST the
//! signed payload until a 2xx, a 410, or the give-up age. Each attempt's
//! outcome is written to `status.webhook` (field manager
//! `runplane.dev/webhooks`) before the next is scheduled, so a restarted
//! controller resumes pending deliveries and never re-sends a delivered one.
//! Redelivery is asked for with the annotation `runplane.dev/webhook-redeliver`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::Context;
use crate::domain::webhook::{self, Outcome, WebhookConfig};
use crate::resources::{GpuTask, WebhookStatus, labels, managers};

/// Deliveries in flight at once.
const PARALLEL: usize = 16;
const TIMEOUT: Duration = Duration::from_secs(15);

/// Where a finished task's webhook goes: the task's URL, else its template's,
/// else its account's.
pub fn destination(ctx: &Context, task: &GpuTask) -> Option<String> {
    if let Some(url) = &task.spec.webhook_url {
        return Some(url.clone());
    }
    let namespace = task.namespace()?;
    if let Some(url) =
        ctx.caches.template(&namespace, &task.spec.template_ref.name).and_then(|t| t.spec.webhook_url.clone())
    {
        return Some(url);
    }
    let account = ctx.caches.accounts_by_namespace().get(&namespace)?.as_ref().ok()?.clone();
    account.spec.webhook.as_ref()?.url.clone()
}

/// True while a finished task still owes a delivery (its TTL waits for it).
pub fn pending(ctx: &Context, task: &GpuTask) -> bool {
    if webhook::event_for(task).is_none() || destination(ctx, task).is_none() {
        return false;
    }
    match task.status.as_ref().and_then(|s| s.webhook.as_ref()) {
        None => true,
        Some(w) => !w.is_settled() || redelivery_requested(task, w),
    }
}

fn redelivery_requested(task: &GpuTask, status: &WebhookStatus) -> bool {
    let asked = task.annotations().get(labels::REDELIVER);
    asked.is_some() && asked != status.redelivery.as_ref()
}

pub struct Deliverer {
    ctx: Arc<Context>,
    config: WebhookConfig,
    /// Attempts written and not yet seen in the cache, by task UID.
    written: HashMap<String, (i32, Option<String>)>,
}

struct Job {
    task: Arc<GpuTask>,
    event: &'static str,
    url: String,
    previous: WebhookStatus,
}

impl Deliverer {
    pub fn new(ctx: Arc<Context>, config: WebhookConfig) -> Self {
        Self { ctx, config, written: HashMap::new() }
    }

    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.pass().await;
        }
    }

    async fn pass(&mut self) {
        let now = Timestamp::now();
        let mut jobs = Vec::new();
        let mut waiting = 0i64;
        for task in self.ctx.caches.tasks.state() {
            if !task.is_terminal() {
                continue;
            }
            let Some(event) = webhook::event_for(&task) else { continue };
            let Some(url) = destination(&self.ctx, &task) else { continue };
            let uid = task.metadata.uid.clone().unwrap_or_default();
            let current = task.status.as_ref().and_then(|s| s.webhook.clone());
            let redeliver = task.annotations().get(labels::REDELIVER).cloned();
            // Our last write has not reached the cache yet.
            if let Some((attempts, redelivery)) = self.written.get(&uid) {
                let seen = current.as_ref().map(|w| (w.attempts, w.redelivery.clone()));
                if seen.as_ref() != Some(&(*attempts, redelivery.clone())) {
                    waiting += 1;
                    continue;
                }
                self.written.remove(&uid);
            }
            let previous = match current {
                None => WebhookStatus {
                    id: webhook::event_id(&task, event),
                    event: event.into(),
                    url: url.clone(),
                    ..Default::default()
                },
                Some(w) if redelivery_requested(&task, &w) => WebhookStatus {
                    id: w.id.clone(),
                    event: w.event.clone(),
                    url: url.clone(),
                    redelivery: redeliver.clone(),
                    ..Default::default()
                },
                Some(w) if w.is_settled() => continue,
                Some(w) => {
                    waiting += 1;
                    if w.next_attempt_at.as_ref().is_some_and(|t| t.0 > now) {
                        continue;
                    }
                    w
                }
            };
            jobs.push(Job { task, event, url, previous });
        }
        self.ctx.metrics.webhooks_pending.set(waiting + jobs.len() as i64);
        if jobs.is_empty() {
            return;
        }
        let ctx = self.ctx.clone();
        let config = self.config.clone();
        let results: Vec<(String, i32, Option<String>)> = futures::stream::iter(jobs)
            .map(|job| {
                let (ctx, config) = (ctx.clone(), config.clone());
                async move { attempt(&ctx, &config, job).await }
            })
            .buffer_unordered(PARALLEL)
            .filter_map(|r| async move { r })
            .collect()
            .await;
        for (uid, attempts, redelivery) in results {
            self.written.insert(uid, (attempts, redelivery));
        }
    }
}

/// One attempt; writes its outcome. Returns what was written, to wait for it in the cache.
async fn attempt(ctx: &Context, config: &WebhookConfig, job: Job) -> Option<(String, i32, Option<String>)> {
    let task = &job.task;
    let now = Timestamp::now();
    let mut next = job.previous.clone();
    next.attempts += 1;
    next.url = job.url.clone();
    next.first_attempt_at = next.first_attempt_at.or(Some(Time(now)));
    next.last_attempt_at = Some(Time(now));
    next.next_attempt_at = None;

    let secrets = match signing_secrets(ctx, task).await {
        Ok(s) => s,
        Err(e) => {
            // Nothing is sent unsigned; a missing secret may be created later.
            next.last_error = Some(e);
            next.last_status_code = None;
            next.attempts -= 1;
            next.next_attempt_at = Some(Time(now + jiff::SignedDuration::from_secs(30)));
            return record(ctx, task, next, "no_secret", None).await;
        }
    };
    let started = Instant::now();
    let result = send(config, &job, &secrets).await;
    ctx.metrics.webhook_delivery_seconds.observe(started.elapsed().as_secs_f64());
    let first = next.first_attempt_at.as_ref().map(|t| t.0).unwrap_or(now);
    let (result_label, event) = match result {
        Err(SendErrorKind::Refused(message)) => {
            next.last_error = Some(message.clone());
            next.last_status_code = None;
            next.gave_up_at = Some(Time(now));
            ("refused", Some(("WebhookRefused", message, true)))
        }
        Ok((status, retry_after)) => {
            next.last_status_code = Some(i32::from(status));
            match webhook::outcome(status, retry_after.as_deref()) {
                Outcome::Delivered => {
                    next.last_error = None;
                    next.delivered_at = Some(Time(now));
                    (
                        "delivered",
                        Some(("WebhookDelivered", format!("{} delivered to {} ({status})", job.event, job.url), false)),
                    )
                }
                Outcome::Stop => {
                    next.last_error = Some(format!("the receiver answered {status}; not retrying"));
                    next.gave_up_at = Some(Time(now));
                    ("gone", Some(("WebhookGaveUp", format!("{} answered {status}", job.url), true)))
                }
                Outcome::Retry { after } => {
                    next.last_error = Some(format!("the receiver answered {status}"));
                    schedule(config, &mut next, first, now, after)
                }
            }
        }
        Err(SendErrorKind::Failed(message)) => {
            next.last_error = Some(message);
            next.last_status_code = None;
            schedule(config, &mut next, first, now, None)
        }
    };
    record(ctx, task, next, result_label, event).await
}

fn schedule(
    config: &WebhookConfig,
    next: &mut WebhookStatus,
    first: Timestamp,
    now: Timestamp,
    after: Option<jiff::SignedDuration>,
) -> (&'static str, Option<(&'static str, String, bool)>) {
    let attempts = u32::try_from(next.attempts).unwrap_or(0);
    match webhook::next_attempt(config, &next.id, attempts, first, now, after) {
        Some(at) => {
            next.next_attempt_at = Some(Time(at));
            ("failed", None)
        }
        None => {
            next.gave_up_at = Some(Time(now));
            let why = next.last_error.clone().unwrap_or_default();
            ("gave_up", Some(("WebhookGaveUp", format!("gave up after {} attempts: {why}", next.attempts), true)))
        }
    }
}

async fn record(
    ctx: &Context,
    task: &GpuTask,
    next: WebhookStatus,
    result: &'static str,
    event: Option<(&'static str, String, bool)>,
) -> Option<(String, i32, Option<String>)> {
    ctx.metrics.webhook_deliveries.with_label_values(&[result]).inc();
    let api: Api<GpuTask> = Api::namespaced(ctx.client.clone(), &task.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": GpuTask::api_version(&()),
        "kind": GpuTask::kind(&()),
        "metadata": {"name": task.name_any()},
        "status": {"webhook": next},
    });
    if let Err(error) =
        api.patch_status(&task.name_any(), &PatchParams::apply(managers::WEBHOOKS).force(), &Patch::Apply(&patch)).await
    {
        tracing::warn!(task = %task.name_any(), %error, "recording a webhook attempt failed");
        return None;
    }
    if let Some((reason, note, warning)) = event {
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(note),
            action: "Webhook".into(),
            secondary: None,
        };
        let _ = ctx.recorder.publish(&event, &task.object_ref(&())).await;
    }
    tracing::info!(task = %task.name_any(), result, attempts = next.attempts, "webhook attempt");
    Some((task.metadata.uid.clone().unwrap_or_default(), next.attempts, next.redelivery))
}

/// Why an attempt got no HTTP status.
enum SendErrorKind {
    /// The destination may not be called (SSRF guard, bad URL): not retried.
    Refused(String),
    /// Connection, TLS, DNS or timeout failure: retried.
    Failed(String),
}

/// Resolves, checks every address, connects to a checked one, POSTs.
async fn send(config: &WebhookConfig, job: &Job, secrets: &[Vec<u8>]) -> Result<(u16, Option<String>), SendErrorKind> {
    let url = webhook::check_url(&job.url).map_err(SendErrorKind::Refused)?;
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| SendErrorKind::Failed(format!("resolving {host}: {e}")))?
            .collect(),
    };
    let ips: Vec<IpAddr> = addresses.iter().map(|a| a.ip()).collect();
    webhook::check_addresses(&ips, &config.allow).map_err(SendErrorKind::Refused)?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .resolve(&host, addresses[0])
        .user_agent(concat!("runplane-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| SendErrorKind::Failed(e.to_string()))?;
    let body = webhook::payload(&job.task, job.event, secrets);
    let timestamp = Timestamp::now().as_second();
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-runkey-signature", webhook::runkey_signature(secrets, &body))
        .header("webhook-id", &job.previous.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", webhook::standard_signature(secrets, &job.previous.id, timestamp, &body))
        .body(body)
        .send()
        .await
        .map_err(|e| SendErrorKind::Failed(format!("POST {}: {}", job.url, error_chain(&e))))?;
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(String::from);
    Ok((response.status().as_u16(), retry_after))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The account's active signing secrets: every value of its Secret, by key order.
async fn signing_secrets(ctx: &Context, task: &GpuTask) -> Result<Vec<Vec<u8>>, String> {
    let namespace = task.namespace().unwrap_or_default();
    let account = ctx
        .caches
        .accounts_by_namespace()
        .get(&namespace)
        .and_then(|a| a.as_ref().ok().cloned())
        .ok_or_else(|| format!("no account owns namespace {namespace}"))?;
    let reference =
        account.spec.webhook.as_ref().and_then(|w| w.secret_ref.clone()).ok_or_else(|| {
            format!("account {} has no webhook.secretRef; nothing is sent unsigned", account.name_any())
        })?;
    let secret_ns = reference.namespace.clone().unwrap_or_else(|| ctx.config.namespace.clone());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &secret_ns);
    let secret = secrets
        .get(&reference.name)
        .await
        .map_err(|e| format!("reading secret {secret_ns}/{}: {e}", reference.name))?;
    let data: BTreeMap<String, k8s_openapi::ByteString> = secret.data.unwrap_or_default();
    let values: Vec<Vec<u8>> =
        data.into_values().map(|v| webhook::secret_bytes(&v.0)).filter(|v| !v.is_empty()).collect();
    if values.is_empty() {
        return Err(format!("secret {secret_ns}/{} holds no signing secret", reference.name));
    }
    Ok(values)
}
