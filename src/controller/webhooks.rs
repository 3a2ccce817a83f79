//! Webhook delivery: for every finished task with a destination, POST the
//! signed payload until a 2xx, a 410, a redirect, a refusal, or the give-up
//! age. Each attempt's outcome is written to `status.webhook` (field manager
//! `runplane.dev/webhooks`) before the next is scheduled, so a restarted
//! controller resumes pending deliveries and never re-sends a delivered one.
//! Redelivery is asked for with the annotation `runplane.dev/webhook-redeliver`.
//!
//! ```text
//!  tick ──▶ pass: due tasks ──spawn (≤ PARALLEL)──▶ attempt ──▶ write status ──▶ Done
//!             ▲                                                                   │
//!             └──────────────── Memory (per task UID) ◀──────────────────────────┘
//! ```
//!
//! Attempts run concurrently and each on its own: a pass starts the due ones
//! and never waits for any, so one slow receiver holds up nobody else.
//! [`Memory`] keeps what the cache may not show yet: an attempt under way, a
//! written outcome not yet seen, or an outcome whose write failed — that one
//! is written again after a backoff, never sent again, so an API server that
//! refuses writes does not make a receiver get the event twice a second.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};

use super::Context;
use super::caches::Dirty;
use crate::domain::TaskKey;
use crate::domain::webhook::{self, DeliveryResult, Outcome, WebhookConfig};
use crate::resources::{GpuTask, WebhookStatus, labels, managers};

/// Attempts in flight at once.
const PARALLEL: usize = 16;
const TIMEOUT: Duration = Duration::from_secs(15);
/// How long a write is waited for in the cache before it is forgotten.
const WRITTEN_MEMORY: jiff::SignedDuration = jiff::SignedDuration::from_secs(120);
/// Every task is looked at at least this often.
const FULL_PASS_EVERY: Duration = Duration::from_secs(60);
/// How long a hostname may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

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
    ctx.caches.owner_of(&namespace)?.spec.webhook.as_ref()?.url.clone()
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

/// A Kubernetes Event about a delivery: (reason, note, warning).
type Note = (&'static str, String, bool);

/// An attempt's outcome, to be written on its task.
#[derive(Clone, Debug)]
struct Record {
    task: Arc<GpuTask>,
    status: WebhookStatus,
    note: Option<Note>,
}

/// How the deliverer recognises its own write in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mark {
    attempts: i32,
    last_attempt: Option<i64>,
    next_attempt: Option<i64>,
    settled: bool,
    redelivery: Option<String>,
}

impl Mark {
    fn of(status: &WebhookStatus) -> Self {
        let second = |t: &Option<Time>| t.as_ref().map(|t| t.0.as_second());
        Self {
            attempts: status.attempts,
            last_attempt: second(&status.last_attempt_at),
            next_attempt: second(&status.next_attempt_at),
            settled: status.is_settled(),
            redelivery: status.redelivery.clone(),
        }
    }
}

#[derive(Debug)]
enum Entry {
    /// An attempt, or a write of one, is under way; `failures` counts the
    /// failed writes of the outcome being written again.
    Busy { failures: u32 },
    /// This outcome was written at the time given; until the cache shows
    /// it, the cache shows the status from before and must not be acted on.
    /// (Forgotten after [`WRITTEN_MEMORY`], should someone else have
    /// changed the status meanwhile.)
    Written(Mark, Timestamp),
    /// This outcome could not be written: it is written again (not sent
    /// again) from `not_before`.
    Unrecorded { record: Box<Record>, failures: u32, not_before: Timestamp },
}

/// What to do with a task in this pass.
#[derive(Debug)]
enum Plan {
    /// Leave it: an attempt or write is under way, a failed write waits for
    /// its backoff, or the cache does not show the last write yet.
    Wait,
    /// Write a remembered outcome again.
    Rewrite(Box<Record>),
    /// Go by the status the cache shows.
    Fresh,
}

/// What this replica knows about deliveries that the cache may not show
/// yet, by task UID. Pure: no I/O, time passed in.
#[derive(Debug, Default)]
struct Memory {
    entries: HashMap<String, Entry>,
}

impl Memory {
    fn plan(&mut self, uid: &str, cached: Option<&WebhookStatus>, now: Timestamp) -> Plan {
        match self.entries.get(uid) {
            None => Plan::Fresh,
            Some(Entry::Busy { .. }) => Plan::Wait,
            Some(Entry::Written(mark, at)) => {
                if cached.map(Mark::of).as_ref() == Some(mark) || now > *at + WRITTEN_MEMORY {
                    self.entries.remove(uid);
                    Plan::Fresh
                } else {
                    Plan::Wait
                }
            }
            Some(Entry::Unrecorded { not_before, .. }) if now < *not_before => Plan::Wait,
            Some(Entry::Unrecorded { record, .. }) => Plan::Rewrite(record.clone()),
        }
    }

    /// An attempt or a write for `uid` was started.
    fn started(&mut self, uid: &str) {
        let failures = match self.entries.get(uid) {
            Some(Entry::Unrecorded { failures, .. } | Entry::Busy { failures }) => *failures,
            _ => 0,
        };
        self.entries.insert(uid.to_string(), Entry::Busy { failures });
    }

    /// An attempt or write for `uid` ended; `written` tells whether its
    /// outcome is now on the task.
    fn finished(&mut self, uid: &str, record: Record, written: bool, config: &WebhookConfig, now: Timestamp) {
        let entry = if written {
            Entry::Written(Mark::of(&record.status), now)
        } else {
            let failures = match self.entries.get(uid) {
                Some(Entry::Busy { failures }) => failures + 1,
                _ => 1,
            };
            let not_before = now + webhook::record_retry_delay(config, failures);
            Entry::Unrecorded { record: Box::new(record), failures, not_before }
        };
        self.entries.insert(uid.to_string(), entry);
    }

    /// Forgets tasks that are gone, keeping those with work under way.
    fn retain(&mut self, live: &HashSet<String>) {
        self.entries.retain(|uid, entry| live.contains(uid) || matches!(entry, Entry::Busy { .. }));
    }
}

/// What a spawned attempt or write reports back.
struct Done {
    uid: String,
    record: Record,
    written: bool,
}

struct Attempt {
    task: Arc<GpuTask>,
    event: &'static str,
    url: String,
    previous: WebhookStatus,
}

pub struct Deliverer {
    ctx: Arc<Context>,
    config: Arc<WebhookConfig>,
    memory: Memory,
    permits: Arc<Semaphore>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    /// Tasks that changed since the last pass.
    dirty: Arc<Dirty>,
    /// Tasks that owed a delivery on the last pass (due, due later, under
    /// way, or an outcome to write again): looked at on every pass until
    /// they owe nothing. The others are looked at again when they change,
    /// and on every full pass.
    owing: HashSet<TaskKey>,
    last_full: Option<Instant>,
}

impl Deliverer {
    pub fn new(ctx: Arc<Context>, config: WebhookConfig, dirty: Arc<Dirty>) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self {
            ctx,
            config: Arc::new(config),
            memory: Memory::default(),
            permits: Arc::new(Semaphore::new(PARALLEL)),
            done_tx,
            done_rx,
            dirty,
            owing: HashSet::new(),
            last_full: None,
        }
    }

    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let done = tokio::select! {
                _ = tick.tick() => None,
                done = self.done_rx.recv() => done,
            };
            match done {
                Some(Done { uid, record, written }) => {
                    self.memory.finished(&uid, record, written, &self.config, Timestamp::now());
                }
                None => self.pass(),
            }
        }
    }

    /// Starts every due attempt (and every due write of an outcome) that a
    /// permit is free for; the rest wait for a later pass. Looks at the
    /// tasks that changed and those that owe a delivery; at every task after
    /// a relist and every [`FULL_PASS_EVERY`] (a destination set later on an
    /// account or template is found then).
    fn pass(&mut self) {
        let now = Timestamp::now();
        let (changed, relisted) = self.dirty.deliveries.take();
        let full = relisted || self.last_full.is_none_or(|t| t.elapsed() >= FULL_PASS_EVERY);
        let tasks: Vec<Arc<GpuTask>> = if full {
            self.last_full = Some(Instant::now());
            self.ctx.caches.tasks.state()
        } else {
            let keys: HashSet<&TaskKey> = changed.iter().chain(&self.owing).collect();
            keys.into_iter().filter_map(|k| self.ctx.caches.task(&k.namespace, &k.name)).collect()
        };
        let mut owing = HashSet::new();
        let mut live = HashSet::new();
        for task in tasks {
            if !task.is_terminal() {
                continue;
            }
            let Some(event) = webhook::event_for(&task) else { continue };
            let Some(url) = destination(&self.ctx, &task) else { continue };
            let uid = task.metadata.uid.clone().unwrap_or_default();
            if full {
                live.insert(uid.clone());
            }
            // Goes into `owing` below unless the delivery is settled.
            let key = TaskKey::new(task.namespace().unwrap_or_default(), task.name_any());
            let current = task.status.as_ref().and_then(|s| s.webhook.clone());
            let work = match self.memory.plan(&uid, current.as_ref(), now) {
                Plan::Wait => {
                    owing.insert(key);
                    continue;
                }
                Plan::Rewrite(record) => Work::Write(*record),
                Plan::Fresh => {
                    let redeliver = task.annotations().get(labels::REDELIVER).cloned();
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
                            redelivery: redeliver,
                            ..Default::default()
                        },
                        Some(w) if w.is_settled() => continue,
                        Some(w) if w.next_attempt_at.as_ref().is_some_and(|t| t.0 > now) => {
                            owing.insert(key);
                            continue;
                        }
                        Some(w) => w,
                    };
                    Work::Attempt(Attempt { task, event, url, previous })
                }
            };
            owing.insert(key);
            let Ok(permit) = self.permits.clone().try_acquire_owned() else { continue };
            self.memory.started(&uid);
            let (ctx, config, done) = (self.ctx.clone(), self.config.clone(), self.done_tx.clone());
            tokio::spawn(async move {
                let record = match work {
                    Work::Attempt(attempt) => attempt_delivery(&ctx, &config, attempt).await,
                    Work::Write(record) => record,
                };
                let written = write(&ctx, &record).await;
                drop(permit);
                let _ = done.send(Done { uid, record, written });
            });
        }
        if full {
            self.memory.retain(&live);
        }
        // What owes a delivery was all looked at: the count is the whole.
        self.ctx.metrics.webhooks_pending.set(owing.len() as i64);
        self.owing = owing;
    }
}

enum Work {
    Attempt(Attempt),
    Write(Record),
}

/// Why no signing secret could be had.
enum SecretError {
    /// Missing or unreadable: it may appear; looked for again until the give-up age.
    Unreadable(String),
    /// The account names a Secret the controller may not read: not retried.
    Refused(String),
}

/// One attempt: finds the signing secrets, sends, and works out the new
/// delivery state. Counts it in the metrics; writing it is the caller's.
async fn attempt_delivery(ctx: &Context, config: &WebhookConfig, job: Attempt) -> Record {
    let now = Timestamp::now();
    let mut next = job.previous.clone();
    next.url = job.url.clone();
    next.first_attempt_at = next.first_attempt_at.or(Some(Time(now)));
    next.last_attempt_at = Some(Time(now));
    next.next_attempt_at = None;
    let first = next.first_attempt_at.as_ref().map(|t| t.0).unwrap_or(now);

    let (result, note) = match signing_secrets(ctx, &job.task).await {
        Err(SecretError::Refused(why)) => {
            next.last_error = Some(why.clone());
            next.last_status_code = None;
            next.gave_up_at = Some(Time(now));
            (DeliveryResult::Refused, Some(("WebhookRefused", why, true)))
        }
        Err(SecretError::Unreadable(why)) => {
            // Nothing is sent unsigned, so this is no attempt; but the
            // give-up age counts, or the task would wait for it forever.
            next.last_error = Some(why.clone());
            next.last_status_code = None;
            match webhook::next_unsent_attempt(config, first, now) {
                Some(at) => {
                    next.next_attempt_at = Some(Time(at));
                    (DeliveryResult::NoSecret, None)
                }
                None => {
                    next.gave_up_at = Some(Time(now));
                    (DeliveryResult::GaveUp, Some(("WebhookGaveUp", format!("gave up: {why}"), true)))
                }
            }
        }
        Ok(secrets) => {
            next.attempts += 1;
            let started = Instant::now();
            let sent = send(config, &job, &secrets).await;
            ctx.metrics.webhook_delivery_seconds.observe(started.elapsed().as_secs_f64());
            // Backoff and Retry-After count from the answer, not from when
            // the request set out (a slow receiver would shorten them).
            conclude(config, &job, &mut next, first, Timestamp::now(), sent)
        }
    };
    ctx.metrics.webhook_deliveries.with_label_values(&[result.as_label()]).inc();
    Record { task: job.task, status: next, note }
}

/// The delivery state after a send.
fn conclude(
    config: &WebhookConfig,
    job: &Attempt,
    next: &mut WebhookStatus,
    first: Timestamp,
    now: Timestamp,
    sent: Result<Answer, SendError>,
) -> (DeliveryResult, Option<Note>) {
    let answer = match sent {
        Ok(answer) => answer,
        Err(SendError::Refused(why)) => {
            next.last_error = Some(why.clone());
            next.last_status_code = None;
            next.gave_up_at = Some(Time(now));
            return (DeliveryResult::Refused, Some(("WebhookRefused", why, true)));
        }
        Err(SendError::Failed(why)) => {
            next.last_error = Some(why);
            next.last_status_code = None;
            return schedule(config, next, first, now, None);
        }
    };
    let status = answer.status;
    next.last_status_code = Some(i32::from(status));
    match webhook::outcome(status, answer.retry_after.as_deref(), answer.location.as_deref(), now) {
        Outcome::Delivered => {
            next.last_error = None;
            next.delivered_at = Some(Time(now));
            let note = format!("{} delivered to {} ({status})", job.event, job.url);
            (DeliveryResult::Delivered, Some(("WebhookDelivered", note, false)))
        }
        Outcome::Gone => {
            next.last_error = Some(format!("the receiver answered {status}; not retrying"));
            next.gave_up_at = Some(Time(now));
            (DeliveryResult::Gone, Some(("WebhookGaveUp", format!("{} answered {status}", job.url), true)))
        }
        Outcome::Redirect { location } => {
            let why = format!("redirect not followed (Location: {})", location.as_deref().unwrap_or("none"));
            next.last_error = Some(why.clone());
            next.gave_up_at = Some(Time(now));
            (DeliveryResult::Redirect, Some(("WebhookRefused", format!("{} answered {status}: {why}", job.url), true)))
        }
        Outcome::Retry { after } => {
            next.last_error = Some(format!("the receiver answered {status}"));
            schedule(config, next, first, now, after)
        }
    }
}

fn schedule(
    config: &WebhookConfig,
    next: &mut WebhookStatus,
    first: Timestamp,
    now: Timestamp,
    after: Option<jiff::SignedDuration>,
) -> (DeliveryResult, Option<Note>) {
    let attempts = u32::try_from(next.attempts).unwrap_or(0);
    match webhook::next_attempt(config, &next.id, attempts, first, now, after) {
        Some(at) => {
            next.next_attempt_at = Some(Time(at));
            (DeliveryResult::Failed, None)
        }
        None => {
            next.gave_up_at = Some(Time(now));
            let why = next.last_error.clone().unwrap_or_default();
            let note = format!("gave up after {} attempts: {why}", next.attempts);
            (DeliveryResult::GaveUp, Some(("WebhookGaveUp", note, true)))
        }
    }
}

/// Writes an attempt's outcome on its task, then its Event. False when the
/// write failed (the caller writes it again later).
async fn write(ctx: &Context, record: &Record) -> bool {
    let task = &record.task;
    let api: Api<GpuTask> = Api::namespaced(ctx.client.clone(), &task.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": GpuTask::api_version(&()),
        "kind": GpuTask::kind(&()),
        "metadata": {"name": task.name_any()},
        "status": {"webhook": record.status},
    });
    if let Err(error) =
        api.patch_status(&task.name_any(), &PatchParams::apply(managers::WEBHOOKS).force(), &Patch::Apply(&patch)).await
    {
        tracing::warn!(task = %task.name_any(), %error, "recording a webhook attempt failed; writing it again later");
        return false;
    }
    if let Some((reason, note, warning)) = &record.note {
        let event = Event {
            type_: if *warning { EventType::Warning } else { EventType::Normal },
            reason: (*reason).into(),
            note: Some(note.clone()),
            action: "Webhook".into(),
            secondary: None,
        };
        ctx.events.publish(event, task.object_ref(&()), false);
    }
    let status = &record.status;
    tracing::info!(
        task = %task.name_any(),
        attempts = status.attempts,
        code = status.last_status_code,
        error = status.last_error.as_deref(),
        "webhook attempt"
    );
    true
}

/// Why an attempt got no HTTP status.
#[derive(Debug)]
enum SendError {
    /// The destination may not be called (SSRF guard, bad URL): not retried.
    Refused(String),
    /// Connection, TLS, DNS or timeout failure: retried.
    Failed(String),
}

/// What the receiver answered.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    location: Option<String>,
}

/// The addresses to connect to for `url`: its IP literal, or every address
/// its host resolves to, each of which must pass the SSRF guard (the
/// connection may go to any of them).
async fn resolve<F, Fut>(url: &url::Url, allow: &[ipnet::IpNet], lookup: F) -> Result<Vec<SocketAddr>, SendError>
where
    F: FnOnce(String, u16) -> Fut,
    Fut: Future<Output = std::io::Result<Vec<SocketAddr>>>,
{
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses = match webhook::ip_literal(url) {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => {
            let host = url.host_str().unwrap_or_default().to_string();
            match tokio::time::timeout(RESOLVE_TIMEOUT, lookup(host.clone(), port)).await {
                Ok(Ok(addresses)) => addresses,
                Ok(Err(e)) => return Err(SendError::Failed(format!("resolving {host}: {e}"))),
                Err(_) => return Err(SendError::Failed(format!("resolving {host}: timed out"))),
            }
        }
    };
    let ips: Vec<IpAddr> = addresses.iter().map(SocketAddr::ip).collect();
    webhook::check_addresses(&ips, allow).map_err(SendError::Refused)?;
    Ok(addresses)
}

async fn system_lookup(host: String, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    Ok(tokio::net::lookup_host((host.as_str(), port)).await?.collect())
}

/// Resolves, checks every address, connects only to checked ones, POSTs.
async fn send(config: &WebhookConfig, job: &Attempt, secrets: &[Vec<u8>]) -> Result<Answer, SendError> {
    let url = webhook::check_url(&job.url).map_err(SendError::Refused)?;
    let addresses = resolve(&url, &config.allow, system_lookup).await?;
    let mut client = reqwest::Client::builder()
        // A proxy from the environment (HTTP_PROXY, …) would make the
        // connection somewhere the guard did not check.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .user_agent(concat!("runplane-webhooks/", env!("CARGO_PKG_VERSION")));
    if let Some(host) = url.domain() {
        // The connection goes to the addresses checked above, not to what
        // a second lookup might return.
        client = client.resolve_to_addrs(host, &addresses);
    }
    let client = client.build().map_err(|e| SendError::Failed(e.to_string()))?;
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
        .map_err(|e| SendError::Failed(format!("POST {}: {}", job.url, error_chain(&e))))?;
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(String::from);
    Ok(Answer { status: response.status().as_u16(), retry_after: header("retry-after"), location: header("location") })
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

/// The account's active signing secrets: every value of its Secret, by key
/// order. The Secret must be in the controller's own namespace: that is the
/// only one whose Secrets the controller may read (the chart's RBAC).
async fn signing_secrets(ctx: &Context, task: &GpuTask) -> Result<Vec<Vec<u8>>, SecretError> {
    let namespace = task.namespace().unwrap_or_default();
    let account = ctx
        .caches
        .accounts_by_namespace()
        .get(&namespace)
        .and_then(|a| a.as_ref().ok().cloned())
        .ok_or_else(|| SecretError::Unreadable(format!("no account owns namespace {namespace}")))?;
    let reference = account.spec.webhook.as_ref().and_then(|w| w.secret_ref.clone()).ok_or_else(|| {
        SecretError::Unreadable(format!(
            "account {} has no webhook.secretRef; nothing is sent unsigned",
            account.name_any()
        ))
    })?;
    let home = &ctx.config.namespace;
    if let Some(other) = reference.namespace.as_ref().filter(|ns| *ns != home) {
        return Err(SecretError::Refused(format!(
            "account {} names its webhook Secret in namespace {other}; the controller reads signing Secrets only in its own namespace {home}",
            account.name_any()
        )));
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), home);
    let secret = secrets
        .get(&reference.name)
        .await
        .map_err(|e| SecretError::Unreadable(format!("reading Secret {home}/{}: {e}", reference.name)))?;
    let data: BTreeMap<String, k8s_openapi::ByteString> = secret.data.unwrap_or_default();
    let values: Vec<Vec<u8>> =
        data.into_values().map(|v| webhook::secret_bytes(&v.0)).filter(|v| !v.is_empty()).collect();
    if values.is_empty() {
        return Err(SecretError::Unreadable(format!("Secret {home}/{} holds no signing secret", reference.name)));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{task, ts};
    use jiff::SignedDuration;

    fn config() -> WebhookConfig {
        WebhookConfig {
            backoff: SignedDuration::from_secs(2),
            max_backoff: SignedDuration::from_secs(60),
            give_up_after: SignedDuration::from_hours(1),
            allow: vec![],
        }
    }

    fn delivered_at(now: Timestamp) -> Record {
        let status = WebhookStatus {
            id: "msg_1".into(),
            attempts: 1,
            last_attempt_at: Some(Time(now)),
            delivered_at: Some(Time(now)),
            ..Default::default()
        };
        Record { task: Arc::new(task("t").build()), status, note: None }
    }

    fn is_wait(plan: Plan) -> bool {
        matches!(plan, Plan::Wait)
    }

    #[test]
    fn a_failed_write_is_written_again_after_a_backoff_and_never_sent_again() {
        let config = config();
        let mut memory = Memory::default();
        let before = WebhookStatus { id: "msg_1".into(), ..Default::default() };
        assert!(matches!(memory.plan("u", Some(&before), ts(0)), Plan::Fresh));
        memory.started("u");
        assert!(is_wait(memory.plan("u", Some(&before), ts(0))), "an attempt is under way");
        // The receiver answered 2xx, but the status write failed.
        memory.finished("u", delivered_at(ts(0)), false, &config, ts(0));
        // The cache still shows the status from before the send: nothing
        // happens until the backoff has passed, and then the outcome is
        // written again instead of being sent again.
        for now in [ts(0), ts(1)] {
            assert!(is_wait(memory.plan("u", Some(&before), now)), "not before the backoff ({now})");
        }
        let Plan::Rewrite(record) = memory.plan("u", Some(&before), ts(2)) else {
            panic!("the outcome is written again")
        };
        assert!(record.status.delivered_at.is_some());
        memory.started("u");
        // It fails again: the wait doubles.
        memory.finished("u", *record, false, &config, ts(2));
        assert!(is_wait(memory.plan("u", Some(&before), ts(5))));
        let Plan::Rewrite(record) = memory.plan("u", Some(&before), ts(6)) else { panic!("written again at 2 + 4 s") };
        memory.started("u");
        memory.finished("u", (*record).clone(), true, &config, ts(6));
        // Written: the stale cache is not acted on, the fresh one is.
        assert!(is_wait(memory.plan("u", Some(&before), ts(7))));
        assert!(matches!(memory.plan("u", Some(&record.status), ts(7)), Plan::Fresh));
        assert!(memory.entries.is_empty());
    }

    #[test]
    fn memory_of_deleted_tasks_goes_unless_work_is_under_way() {
        let config = config();
        let mut memory = Memory::default();
        memory.started("busy");
        memory.started("gone");
        memory.finished("gone", delivered_at(ts(0)), false, &config, ts(0));
        memory.retain(&HashSet::new());
        assert!(memory.entries.contains_key("busy"));
        assert!(!memory.entries.contains_key("gone"));
    }

    #[tokio::test]
    async fn every_address_a_name_resolves_to_is_checked() {
        let url = url::Url::parse("https://hooks.example.com/in").unwrap();
        let mixed = |host: String, port: u16| async move {
            assert_eq!((host.as_str(), port), ("hooks.example.com", 443));
            Ok(vec![SocketAddr::from(([93, 184, 216, 34], port)), SocketAddr::from(([10, 0, 0, 7], port))])
        };
        match resolve(&url, &[], mixed).await {
            Err(SendError::Refused(why)) => assert!(why.contains("10.0.0.7 is private"), "{why}"),
            other => panic!("one private address among several must refuse: {other:?}"),
        }
        let public = |_: String, port: u16| async move { Ok(vec![SocketAddr::from(([93, 184, 216, 34], port))]) };
        assert_eq!(resolve(&url, &[], public).await.unwrap(), vec![SocketAddr::from(([93, 184, 216, 34], 443))]);
        let allow = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(resolve(&url, &allow, mixed).await.unwrap().len(), 2, "the allowlist lets it through");
        let failing = |_: String, _: u16| async { Err(std::io::Error::other("no such host")) };
        assert!(matches!(resolve(&url, &[], failing).await, Err(SendError::Failed(_))), "DNS failures are retried");
        // An IP literal is checked without a lookup.
        let literal = url::Url::parse("http://[64:ff9b::a9fe:a9fe]/x").unwrap();
        let failing_again = |_: String, _: u16| async { Err(std::io::Error::other("no lookup for a literal")) };
        assert!(matches!(resolve(&literal, &[], failing_again).await, Err(SendError::Refused(_))));
    }
}
