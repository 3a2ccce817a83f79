//! The admission loop: on every cache change (and once a second), snapshot
//! the caches, let [`admission::admit`] decide, create the chosen pods and
//! record why the others wait.
//!
//! Capacity in use is counted from pods that exist (from the cache) plus pods
//! this loop created that the cache has not shown yet. After a restart the
//! caches are fully listed before the first pass, so the count is exact and
//! no limit can be exceeded by forgetting what an earlier process did.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::PostParams;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::Notify;

use super::Context;
use super::accounts::Counts;
use super::error::is_status;
use super::tasks::write_status;
use crate::domain::TaskKey;
use crate::domain::admission::{self, AccountUsage, Candidate, ClusterUsage};
use crate::domain::input::InputSchema;
use crate::domain::lifecycle::set_condition;
use crate::domain::pod::{desired_pod, frozen_price, pod_gpus, pod_name};
use crate::resources::{GpuTask, GpuTaskStatus, TaskPhase, WaitReason, codes, conditions};

/// How long a created pod counts as in use before the cache must have shown it.
const INFLIGHT_TTL: Duration = Duration::from_secs(120);
/// Pod creates and status writes in flight at once.
const PARALLEL_WRITES: usize = 32;

struct Inflight {
    account: String,
    gpus: BTreeMap<String, i64>,
    per_run: i64,
    since: Instant,
}

pub struct Admitter {
    ctx: Arc<Context>,
    /// Pods created and not yet seen in the cache, by (namespace, name).
    inflight: HashMap<(String, String), Inflight>,
    /// Queued statuses being written, or written and not yet seen in the
    /// cache, shared with the writes that run beside the passes.
    writes: Arc<Mutex<QueuedWrites>>,
    /// Queued tasks whose input matched their template's schema: task UID →
    /// the template's resourceVersion it was checked against.
    valid_input: HashMap<String, Option<String>>,
    templates: super::templates::Written,
}

#[derive(Default)]
struct QueuedWrites {
    /// Being written now: not to be written again until that ends.
    pending: HashSet<TaskKey>,
    /// Written: (resourceVersion written against, reason).
    written: HashMap<TaskKey, (Option<String>, WaitReason)>,
}

/// Why a task waits, or that it can never start.
enum Blocked {
    Waiting(WaitReason, String),
    Invalid(i32, String),
}

impl Admitter {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            inflight: HashMap::new(),
            writes: Arc::default(),
            valid_input: HashMap::new(),
            templates: Default::default(),
        }
    }

    pub async fn run(mut self, changed: Arc<Notify>) {
        let mut last = Duration::ZERO;
        loop {
            tokio::select! {
                _ = changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            // Let a burst of events land before deciding; under constant
            // change, rest as long as the last pass spent deciding, so that
            // passes over a deep queue take at most half of a core.
            tokio::time::sleep(Duration::from_millis(5).max(last)).await;
            let started = Instant::now();
            last = self.pass().await;
            self.ctx.metrics.admission_pass.observe(started.elapsed().as_secs_f64());
        }
    }

    /// One admission pass over the whole queue. Returns the time it spent
    /// deciding (not waiting for the API server).
    pub async fn pass(&mut self) -> Duration {
        let started = Instant::now();
        let now = Timestamp::now();
        let ctx = self.ctx.clone();
        let caches = &ctx.caches;

        let owners = caches.accounts_by_namespace();
        // Capacity held by existing pods and pods created but not yet seen.
        let mut cluster = ClusterUsage { quota: self.quota(&caches.nodes.state()), in_use: BTreeMap::new() };
        let mut running: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new(); // account → (pods, gpus, per-run reserved)
        let pods = caches.pods.state();
        let mut live: HashSet<(&str, &str)> = HashSet::with_capacity(pods.len());
        for pod in &pods {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            if !self.inflight.is_empty() {
                self.inflight.remove(&(namespace.to_string(), name.to_string()));
            }
            live.insert((namespace, name));
            if holds_capacity(pod) && owned_by_a_task(pod) {
                // Counted against the account that owns the namespace, never
                // the one the pod's labels name: a tenant who can create pods
                // must not be able to use up another account's limits.
                let account = match owners.get(namespace) {
                    Some(Ok(account)) => account.name_any(),
                    _ => String::new(),
                };
                add_usage(&mut running, &mut cluster, &account, &pod_gpus(pod), frozen_price(pod).per_run);
            }
        }
        self.inflight.retain(|_, f| f.since.elapsed() < INFLIGHT_TTL);
        for (key, f) in &self.inflight {
            live.insert((key.0.as_str(), key.1.as_str()));
            add_usage(&mut running, &mut cluster, &f.account, &f.gpus, f.per_run);
        }

        let mut usage = BTreeMap::new();
        for account in caches.accounts.state() {
            let (pods, gpus, reserved) = running.get(&account.name_any()).copied().unwrap_or_default();
            usage.insert(
                account.name_any(),
                AccountUsage {
                    limits: account.spec.effective_limits(),
                    running: pods,
                    gpus_in_use: gpus,
                    available_credits: account.balance() - reserved,
                },
            );
        }

        // The queue: tasks without a pod that may start now.
        let mut schemas: HashMap<(String, String), Result<InputSchema, String>> = HashMap::new();
        let mut valid_input = HashMap::new();
        let mut candidates = Vec::new();
        let mut blocked: Vec<(Arc<GpuTask>, Blocked, Option<String>)> = Vec::new();
        let mut by_key: HashMap<TaskKey, (Arc<GpuTask>, String)> = HashMap::new();
        let mut phases: BTreeMap<TaskPhase, i64> = BTreeMap::new();
        let mut queued: BTreeMap<String, i32> = BTreeMap::new();
        for task in caches.tasks.state() {
            *phases.entry(task.phase().unwrap_or(TaskPhase::Queued)).or_default() += 1;
            // Most cached tasks are finished: skip them before copying anything.
            if task.is_terminal() || task.metadata.deletion_timestamp.is_some() || task.spec.cancel {
                continue;
            }
            let status = task.status.as_ref();
            if status.is_some_and(|s| s.pod_name.is_some()) {
                continue;
            }
            let namespace = task.metadata.namespace.as_deref().unwrap_or_default();
            let attempts = status.and_then(|s| s.attempts).unwrap_or(0);
            let name = pod_name(task.metadata.name.as_deref().unwrap_or_default(), attempts);
            if live.contains(&(namespace, name.as_str())) {
                continue;
            }
            let namespace = namespace.to_string();
            let account = owners.get(&namespace).and_then(|o| o.as_ref().ok()).map(|a| a.name_any());
            if let Some(account) = &account {
                *queued.entry(account.clone()).or_default() += 1;
            }
            if status.and_then(|s| s.retry_at.as_ref()).is_some_and(|t| t.0 > now) {
                continue;
            }
            let account = match owners.get(&namespace) {
                None => {
                    let why = format!("no GpuAccount lists namespace {namespace}");
                    blocked.push((task, Blocked::Waiting(WaitReason::NoAccount, why), None));
                    continue;
                }
                Some(Err(names)) => {
                    let why = format!("namespace {namespace} is claimed by several accounts: {}", names.join(", "));
                    blocked.push((task, Blocked::Waiting(WaitReason::NoAccount, why), None));
                    continue;
                }
                Some(Ok(account)) => account.name_any(),
            };
            let template_name = &task.spec.template_ref.name;
            let Some(template) = caches.template(&namespace, template_name) else {
                let why = format!("GpuTemplate {template_name} not found in {namespace}");
                blocked.push((task, Blocked::Waiting(WaitReason::TemplateNotFound, why), Some(account)));
                continue;
            };
            // The input is immutable: check it once per template version,
            // not on every pass over a deep queue.
            let uid = task.metadata.uid.clone().unwrap_or_default();
            let template_version = template.resource_version();
            if self.valid_input.get(&uid) != Some(&template_version) {
                let schema = schemas
                    .entry((namespace.clone(), template_name.clone()))
                    .or_insert_with(|| InputSchema::compile(template.spec.input_schema.as_ref()));
                let checked = match schema {
                    Ok(schema) => schema.check(&task.spec.input),
                    Err(e) => Err(e.clone()),
                };
                if let Err(why) = checked {
                    blocked.push((task, Blocked::Invalid(codes::INVALID_INPUT, why), Some(account)));
                    continue;
                }
            }
            valid_input.insert(uid, template_version);
            let key = TaskKey::new(namespace, task.name_any());
            candidates.push(Candidate {
                key: key.clone(),
                account: account.clone(),
                priority: task.spec.priority,
                created: task.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(now),
                gpus: i64::from(template.spec.gpus),
                resource: template.spec.gpu_resource(&ctx.config.pod.gpu_resource).to_string(),
                per_run_price: template.spec.price.per_run,
            });
            by_key.insert(key, (task, account));
        }

        self.valid_input = valid_input;
        let decision = admission::admit(candidates, &usage, &cluster);

        // Start the admitted tasks.
        let mut creates = Vec::new();
        for key in &decision.admitted {
            let (task, account) = &by_key[key];
            let Some(template) = caches.template(&key.namespace, &task.spec.template_ref.name) else {
                continue;
            };
            let attempt = task.status.as_ref().and_then(|s| s.attempts).unwrap_or(0);
            let token = ctx.config.progress_token(task);
            let pod = desired_pod(task, &template, account, attempt, &ctx.config.pod, token.as_deref());
            let pod_key = (key.namespace.clone(), pod.name_any());
            self.inflight.insert(
                pod_key.clone(),
                Inflight {
                    account: account.clone(),
                    gpus: pod_gpus(&pod),
                    per_run: frozen_price(&pod).per_run,
                    since: Instant::now(),
                },
            );
            if attempt == 0
                && let Some(created) = &task.metadata.creation_timestamp
            {
                ctx.metrics.queue_wait.observe(now.duration_since(created.0).as_secs_f64().max(0.0));
            }
            creates.push((pod_key, pod));
        }
        let deciding = started.elapsed();
        let client = ctx.client.clone();
        let failed: Vec<(String, String)> = futures::stream::iter(creates)
            .map(|(key, pod)| {
                let api: Api<Pod> = Api::namespaced(client.clone(), &key.0);
                async move {
                    match api.create(&PostParams::default(), &pod).await {
                        Ok(_) => None,
                        Err(e) if is_status(&e, 409) => None,
                        Err(error) => {
                            tracing::warn!(pod = %key.1, namespace = %key.0, %error, "creating a task pod failed");
                            Some(key)
                        }
                    }
                }
            })
            .buffer_unordered(PARALLEL_WRITES)
            .filter_map(|k| async move { k })
            .collect()
            .await;
        ctx.metrics.admissions.inc_by((decision.admitted.len() - failed.len()) as u64);
        for key in failed {
            self.inflight.remove(&key);
        }

        // Record why the others wait.
        let mut writes = Vec::new();
        for (key, reason) in &decision.waiting {
            let (task, account) = &by_key[key];
            let message = wait_message(*reason);
            writes.push((task.clone(), Blocked::Waiting(*reason, message), Some(account.clone())));
        }
        writes.extend(blocked);
        let mut status_writes = Vec::new();
        {
            let mut shared = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
            for (task, blocked, account) in writes {
                let key = TaskKey::new(task.namespace().unwrap_or_default(), task.name_any());
                if shared.pending.contains(&key) {
                    continue;
                }
                if let Some(next) = queued_status(&shared.written, &task, &blocked, account, now) {
                    shared.pending.insert(key);
                    status_writes.push((task, next, blocked));
                }
            }
            if shared.written.len() > 100_000 {
                shared.written.clear();
            }
        }
        // The writes run beside the next passes: a deep queue arriving at
        // once (thousands of first Queued statuses) must not hold up the
        // admission of pods for the GPUs that free up meanwhile.
        if !status_writes.is_empty() {
            tokio::spawn(write_queued(ctx.clone(), self.writes.clone(), status_writes));
        }

        super::tasks::reap_orphans(&ctx).await;
        super::templates::sync(&ctx, &self.templates).await;

        // Usage for account status and metrics.
        let mut counts = BTreeMap::new();
        for account in caches.accounts.state() {
            let name = account.name_any();
            let (pods, gpus, _) = running.get(&name).copied().unwrap_or_default();
            let queued = queued.get(&name).copied().unwrap_or(0);
            counts.insert(name, Counts { running: pods as i32, queued, gpus_in_use: gpus });
        }
        ctx.accounts.counts(counts);
        for phase in TaskPhase::ALL {
            ctx.metrics.tasks.with_label_values(&[phase.as_str()]).set(phases.get(&phase).copied().unwrap_or(0));
        }
        for (resource, quota) in &cluster.quota {
            ctx.metrics.gpu_quota.with_label_values(&[resource.as_str()]).set(*quota);
        }
        for resource in cluster.quota.keys().chain(cluster.in_use.keys()) {
            let used = cluster.in_use.get(resource).copied().unwrap_or(0);
            ctx.metrics.gpus_in_use.with_label_values(&[resource.as_str()]).set(used);
        }
        deciding
    }

    /// GPU quota by resource: the flag's, else the allocatable GPUs of Ready, schedulable nodes.
    fn quota(&self, nodes: &[Arc<Node>]) -> BTreeMap<String, i64> {
        let mut quota = BTreeMap::new();
        for node in nodes {
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let schedulable = !node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
            if !ready || !schedulable {
                continue;
            }
            for (name, quantity) in node.status.as_ref().and_then(|s| s.allocatable.as_ref()).into_iter().flatten() {
                if name.contains('/')
                    && let Ok(n) = quantity.0.parse::<i64>()
                {
                    *quota.entry(name.clone()).or_default() += n;
                }
            }
        }
        // The flag overrides what the nodes offer, resource by resource.
        if let Some(fixed) = &self.ctx.config.gpu_quota {
            quota.extend(fixed.iter().map(|(k, v)| (k.clone(), *v)));
        }
        quota
    }
}

/// The Queued (or, for invalid input, Failed) status to write, if it
/// would say something new. Flips between capacity reasons are not
/// written: they follow every start and finish, and would cost a write
/// per queued task.
fn queued_status(
    written: &HashMap<TaskKey, (Option<String>, WaitReason)>,
    task: &GpuTask,
    blocked: &Blocked,
    account: Option<String>,
    now: Timestamp,
) -> Option<GpuTaskStatus> {
    // Most queued tasks wait as they did on the last pass: decide that
    // before copying anything.
    if let (Blocked::Waiting(reason, message), Some(current)) = (blocked, task.status.as_ref()) {
        let capacity_flip = current.wait_reason.is_some_and(|r| r.is_capacity()) && reason.is_capacity();
        let same = current.wait_reason == Some(*reason) && current.message.as_ref() == Some(message);
        if current.phase == Some(TaskPhase::Queued) && current.account == account && (capacity_flip || same) {
            return None;
        }
    }
    let current = task.status.clone().unwrap_or_default();
    let mut next = current.clone();
    next.observed_generation = task.metadata.generation;
    next.account = account;
    match blocked {
        Blocked::Invalid(code, message) => {
            next.phase = Some(TaskPhase::Failed);
            next.wait_reason = None;
            next.error_code = Some(*code);
            next.error_message = Some(message.clone());
            next.message = Some(message.clone());
            next.completed_at = Some(Time(now));
            next.credits_used = Some(0);
            set_condition(&mut next, conditions::FINISHED, true, "InvalidInput", message, now);
        }
        Blocked::Waiting(reason, message) => {
            let key = TaskKey::new(task.namespace().unwrap_or_default(), task.name_any());
            if written.get(&key).is_some_and(|(rv, r)| rv == &task.resource_version() && r == reason) {
                return None; // our write has not reached the cache yet
            }
            if current.phase == Some(TaskPhase::Queued)
                && current.wait_reason.is_some_and(|r| r.is_capacity())
                && reason.is_capacity()
            {
                return None;
            }
            next.phase = Some(TaskPhase::Queued);
            next.wait_reason = Some(*reason);
            next.message = Some(message.clone());
            set_condition(&mut next, conditions::ADMITTED, false, reason.as_str(), message, now);
        }
    }
    (next != current).then_some(next)
}

/// Writes queued statuses, a few at a time, and records which were written.
async fn write_queued(
    ctx: Arc<Context>,
    shared: Arc<Mutex<QueuedWrites>>,
    writes: Vec<(Arc<GpuTask>, GpuTaskStatus, Blocked)>,
) {
    futures::stream::iter(writes)
        .for_each_concurrent(PARALLEL_WRITES, |(task, next, blocked)| {
            let (ctx, shared) = (ctx.clone(), shared.clone());
            async move {
                let api: Api<GpuTask> = Api::namespaced(ctx.client.clone(), &task.namespace().unwrap_or_default());
                let key = TaskKey::new(task.namespace().unwrap_or_default(), task.name_any());
                let written = match write_status(&api, &task, &next).await {
                    Ok(_) => {
                        // A rejection is always an event; the first reason
                        // a task waits is one when transitions are recorded.
                        let event = match &blocked {
                            Blocked::Invalid(_, message) => Some(Event {
                                type_: EventType::Warning,
                                reason: "Failed".into(),
                                note: Some(format!("InvalidInput: {message}")),
                                action: "Admit".into(),
                                secondary: None,
                            }),
                            Blocked::Waiting(reason, message)
                                if ctx.config.lifecycle.transition_events
                                    && task.status.as_ref().and_then(|s| s.wait_reason).is_none() =>
                            {
                                Some(Event {
                                    type_: EventType::Normal,
                                    reason: "Queued".into(),
                                    note: Some(format!("{}: {message}", reason.as_str())),
                                    action: "Admit".into(),
                                    secondary: None,
                                })
                            }
                            Blocked::Waiting(..) => None,
                        };
                        if let Some(event) = event {
                            let _ = ctx.recorder.publish(&event, &task.object_ref(&())).await;
                        }
                        next.wait_reason.map(|r| (task.resource_version(), r))
                    }
                    Err(error) => {
                        tracing::debug!(%key, %error, "writing a queued status failed; retrying on the next pass");
                        None
                    }
                };
                let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
                shared.pending.remove(&key);
                if let Some(written) = written {
                    shared.written.insert(key, written);
                }
            }
        })
        .await;
}

fn wait_message(reason: WaitReason) -> String {
    match reason {
        WaitReason::AccountLimit => "the account is at its concurrency or GPU limit".into(),
        WaitReason::ClusterQuota => "waiting for free GPUs in the cluster".into(),
        WaitReason::InsufficientCredits => "the account's balance does not cover the template's per-run price".into(),
        other => other.as_str().into(),
    }
}

/// A pod of runplane's holds a GpuTask as its controller.
fn owned_by_a_task(pod: &Pod) -> bool {
    pod.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.kind == "GpuTask" && o.api_version.starts_with("runplane.dev/"))
}

/// A pod holds capacity until it has finished.
fn holds_capacity(pod: &Pod) -> bool {
    !matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn add_usage(
    running: &mut BTreeMap<String, (i64, i64, i64)>,
    cluster: &mut ClusterUsage,
    account: &str,
    gpus: &BTreeMap<String, i64>,
    per_run: i64,
) {
    let entry = running.entry(account.to_string()).or_default();
    entry.0 += 1;
    entry.1 += gpus.values().sum::<i64>();
    entry.2 += per_run;
    for (resource, n) in gpus {
        *cluster.in_use.entry(resource.clone()).or_default() += n;
    }
}
