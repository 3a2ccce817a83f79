//! The admission loop: on every cache change (and once a second), update the
//! queue with the tasks and pods that changed, let [`Queue::admit`] decide,
//! create the chosen pods and record why new arrivals wait.
//!
//! The queue, the pods holding capacity and the blocked tasks are an index
//! of the caches, kept current from the tasks and pods that changed
//! ([`Dirty`]); it is rebuilt from the whole caches after a relist, when an
//! account or template spec changes, and every minute, so it never drifts
//! from what the caches say. Capacity in use is counted from pods that exist
//! plus pods this loop created that the cache has not shown yet. After a
//! restart the caches are fully listed before the first pass, so the count
//! is exact and no limit can be exceeded by forgetting what an earlier
//! process did.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::PostParams;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::{Notify, mpsc};

use super::Context;
use super::accounts::Counts;
use super::caches::Dirty;
use super::error::is_status;
use super::tasks::write_status;
use crate::domain::TaskKey;
use crate::domain::admission::{AccountUsage, Candidate, ClusterUsage, Decision, Queue};
use crate::domain::input::InputSchema;
use crate::domain::lifecycle::set_condition;
use crate::domain::pod::{desired_pod, frozen_price, pod_gpus, pod_name};
use crate::resources::{
    GpuAccount, GpuTask, GpuTaskStatus, MAX_RETRIES, TaskPhase, WaitReason, codes, conditions, labels,
};

/// How long a created pod counts as in use before the cache must have shown it.
const INFLIGHT_TTL: Duration = Duration::from_secs(120);
/// Pod creates and status writes in flight at once.
const PARALLEL_WRITES: usize = 32;
/// The index is rebuilt from the whole caches at least this often.
const FULL_PASS_EVERY: Duration = Duration::from_secs(60);
/// Task counts by phase (a walk over every task) are refreshed this often.
const PHASE_COUNTS_EVERY: Duration = Duration::from_secs(1);

struct Inflight {
    account: String,
    gpus: BTreeMap<String, i64>,
    per_run: i64,
    since: Instant,
}

/// What a pod that holds capacity holds, and for whom.
struct PodUse {
    account: String,
    gpus: BTreeMap<String, i64>,
    per_run: i64,
}

/// A task whose pod could not be created, and that pod.
type FailedCreate = (TaskKey, TaskKey);

/// Why a task waits, or that it can never start.
enum Blocked {
    Waiting(WaitReason, String),
    Invalid(i32, String),
}

/// Which accounts own which namespaces.
type Owners = BTreeMap<String, Result<Arc<GpuAccount>, Vec<String>>>;

/// Specs that the index is built from: (name, uid, generation) of every
/// account and template. A change means a full pass.
type Specs = (Vec<(String, Option<String>, Option<i64>)>, Vec<(String, Option<String>, Option<i64>)>);

pub struct Admitter {
    ctx: Arc<Context>,
    dirty: Arc<Dirty>,
    /// Tasks that may start as soon as capacity allows.
    queue: Queue,
    /// Tasks that cannot start now for a reason capacity does not change,
    /// with their account if known.
    blocked: HashMap<TaskKey, (Blocked, Option<String>)>,
    /// Tasks waiting for a retry: when it is due, and their account.
    retrying: HashMap<TaskKey, (Timestamp, Option<String>)>,
    /// Pods that hold capacity, by namespace/name.
    pods: HashMap<TaskKey, PodUse>,
    /// Pods created and not yet seen in the cache.
    inflight: HashMap<TaskKey, Inflight>,
    /// Queued statuses being written, or written and not yet seen in the
    /// cache, shared with the writes that run beside the passes.
    writes: Arc<Mutex<QueuedWrites>>,
    /// Queued tasks whose input matched their template's schema: task UID →
    /// the template's resourceVersion it was checked against.
    valid_input: HashMap<String, Option<String>>,
    templates: super::templates::Written,
    owners: Owners,
    specs: Specs,
    /// The GPU quota by resource, counted again when a node changes.
    quota: BTreeMap<String, i64>,
    /// Per account, the per-run prices that its credits kept from starting
    /// on the last pass; when that changes, its queued tasks' reasons are
    /// checked again.
    credit_blocked: BTreeMap<String, Vec<i64>>,
    last_full: Option<Instant>,
    last_phase_counts: Option<Instant>,
    /// Pod creates run beside the passes; the tasks whose create failed come
    /// back here (with their pod), to be tried again on a later pass (at the
    /// latest the next second's, which paces retries against an apiserver
    /// that keeps refusing).
    failed_creates: (mpsc::UnboundedSender<FailedCreate>, mpsc::UnboundedReceiver<FailedCreate>),
}

#[derive(Default)]
struct QueuedWrites {
    /// Being written now: not to be written again until that ends.
    pending: HashSet<TaskKey>,
    /// Written: (resourceVersion written against, reason).
    written: HashMap<TaskKey, (Option<String>, WaitReason)>,
}

impl Admitter {
    pub fn new(ctx: Arc<Context>, dirty: Arc<Dirty>) -> Self {
        Self {
            ctx,
            dirty,
            queue: Queue::default(),
            blocked: HashMap::new(),
            retrying: HashMap::new(),
            pods: HashMap::new(),
            inflight: HashMap::new(),
            writes: Arc::default(),
            valid_input: HashMap::new(),
            templates: Default::default(),
            owners: BTreeMap::new(),
            specs: Default::default(),
            quota: BTreeMap::new(),
            credit_blocked: BTreeMap::new(),
            last_full: None,
            last_phase_counts: None,
            failed_creates: mpsc::unbounded_channel(),
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
            // passes take at most half of a core.
            tokio::time::sleep(Duration::from_millis(2).max(last)).await;
            let started = Instant::now();
            last = self.pass().await;
            self.ctx.metrics.admission_pass.observe(started.elapsed().as_secs_f64());
        }
    }

    /// One admission pass. Returns the time it spent deciding (not waiting
    /// for the API server).
    pub async fn pass(&mut self) -> Duration {
        let started = Instant::now();
        let now = Timestamp::now();
        let ctx = self.ctx.clone();
        let caches = &ctx.caches;

        // What changed since the last pass; everything, when the index must be rebuilt.
        let (mut dirty_tasks, dirty_pods, relisted) = self.dirty.take();
        let mut failed = Vec::new();
        while let Ok((task, pod)) = self.failed_creates.1.try_recv() {
            self.inflight.remove(&pod);
            failed.push(task);
        }
        let mut full = relisted || self.last_full.is_none_or(|t| t.elapsed() >= FULL_PASS_EVERY);
        // Accounts and templates are compared only after one of them changed.
        if self.dirty.specs.swap(false, Ordering::SeqCst) || self.last_full.is_none() {
            let specs = specs(&ctx);
            if specs != self.specs {
                self.specs = specs;
                full = true;
            }
        }
        let changed_pods: Vec<Arc<Pod>> = if full {
            self.owners = caches.accounts_by_namespace();
            self.last_full = Some(Instant::now());
            self.queue = Queue::default();
            self.blocked.clear();
            self.retrying.clear();
            self.pods.clear();
            dirty_tasks = caches
                .tasks
                .state()
                .iter()
                .filter(|t| !t.is_terminal())
                .map(|t| TaskKey::new(t.namespace().unwrap_or_default(), t.name_any()))
                .collect();
            let pods = caches.pods.state();
            for pod in &pods {
                self.pod_changed(&key_of(pod), Some(pod), &mut dirty_tasks);
            }
            let live: HashSet<String> = self.valid_input_keep(&dirty_tasks);
            self.valid_input.retain(|uid, _| live.contains(uid));
            pods
        } else {
            let mut changed = Vec::with_capacity(dirty_pods.len());
            for key in &dirty_pods {
                let pod = caches.pod(&key.namespace, &key.name);
                self.pod_changed(key, pod.as_ref(), &mut dirty_tasks);
                changed.extend(pod);
            }
            // A pod that was already being deleted does not change when its
            // task goes, yet it may still hold runplane's finalizer (its task
            // went between the pod's last change and its release): look at
            // the pods of deleted tasks now, not at the next full pass.
            for key in dirty_tasks.iter().filter(|k| caches.task(&k.namespace, &k.name).is_none()) {
                for attempt in 0..=MAX_RETRIES {
                    let name = pod_name(&key.name, attempt);
                    if !dirty_pods.contains(&TaskKey::new(key.namespace.clone(), name.clone())) {
                        changed.extend(caches.pod(&key.namespace, &name));
                    }
                }
            }
            changed
        };
        self.inflight.retain(|_, f| f.since.elapsed() < INFLIGHT_TTL);

        // Retries that are due.
        let due: Vec<TaskKey> =
            self.retrying.iter().filter(|(_, (at, _))| *at <= now).map(|(k, _)| k.clone()).collect();
        dirty_tasks.extend(due);
        for key in &dirty_tasks {
            self.task_changed(key, now);
        }

        // Capacity in use, from the pods that hold it and the pods created but not yet seen.
        let nodes_changed = self.dirty.nodes.swap(false, Ordering::SeqCst);
        if full || nodes_changed {
            self.quota = self.quota(&caches.nodes.state());
        }
        let mut cluster = ClusterUsage { quota: self.quota.clone(), in_use: BTreeMap::new() };
        let mut running: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new(); // account → (pods, gpus, per-run reserved)
        for used in self.pods.values() {
            add_usage(&mut running, &mut cluster, &used.account, &used.gpus, used.per_run);
        }
        for f in self.inflight.values() {
            add_usage(&mut running, &mut cluster, &f.account, &f.gpus, f.per_run);
        }
        let mut usage = BTreeMap::new();
        for account in caches.accounts.state() {
            let (pods, gpus, reserved) = running.get(&account.name_any()).copied().unwrap_or_default();
            usage.insert(
                account.name_any(),
                AccountUsage {
                    limits: account.spec.effective_limits(&ctx.config.plans),
                    running: pods,
                    gpus_in_use: gpus,
                    available_credits: account.balance() - reserved,
                },
            );
        }

        // A task whose pod could not be created is looked at again.
        self.dirty_again(failed);
        let decision = self.queue.admit(&usage, &cluster);
        let deciding = started.elapsed();
        let vanished = self.start(&decision, now);
        self.dirty_again(vanished);

        // Record why the tasks that changed wait, when that is news.
        let mut check: HashSet<TaskKey> = dirty_tasks;
        check.extend(self.credit_changes(&decision));
        self.record_waiting(&check, &decision, now);

        super::tasks::reap_orphans(&ctx, changed_pods).await;
        super::templates::sync(&ctx, &self.templates, full).await;
        self.report(&decision);
        deciding
    }

    /// Updates the pods that hold capacity after `key` changed; the task it
    /// belongs to is looked at again.
    fn pod_changed(&mut self, key: &TaskKey, pod: Option<&Arc<Pod>>, tasks: &mut HashSet<TaskKey>) {
        self.pods.remove(key);
        let Some(pod) = pod else { return };
        self.inflight.remove(key);
        if let Some(task) = pod.labels().get(labels::TASK) {
            tasks.insert(TaskKey::new(key.namespace.clone(), task.clone()));
        }
        if holds_capacity(pod) && owned_by_a_task(pod) {
            // Counted against the account that owns the namespace, never
            // the one the pod's labels name: a tenant who can create pods
            // must not be able to use up another account's limits.
            let account = match self.owners.get(&key.namespace) {
                Some(Ok(account)) => account.name_any(),
                _ => String::new(),
            };
            self.pods.insert(key.clone(), PodUse { account, gpus: pod_gpus(pod), per_run: frozen_price(pod).per_run });
        }
    }

    /// Puts a task where it belongs now: the queue, the blocked tasks, the
    /// retries, or nowhere (running, finished, gone).
    fn task_changed(&mut self, key: &TaskKey, now: Timestamp) {
        self.queue.remove(key);
        self.blocked.remove(key);
        self.retrying.remove(key);
        let ctx = self.ctx.clone();
        let caches = &ctx.caches;
        let Some(task) = caches.task(&key.namespace, &key.name) else {
            return;
        };
        if task.is_terminal() || task.metadata.deletion_timestamp.is_some() || task.spec.cancel {
            return;
        }
        let status = task.status.as_ref();
        if status.is_some_and(|s| s.pod_name.is_some()) {
            return;
        }
        let attempts = status.and_then(|s| s.attempts).unwrap_or(0);
        let pod_key = TaskKey::new(key.namespace.clone(), pod_name(&key.name, attempts));
        if self.inflight.contains_key(&pod_key) || caches.pod(&pod_key.namespace, &pod_key.name).is_some() {
            return;
        }
        let account = match self.owners.get(&key.namespace) {
            None => {
                let why = format!("no GpuAccount lists namespace {}", key.namespace);
                self.blocked.insert(key.clone(), (Blocked::Waiting(WaitReason::NoAccount, why), None));
                return;
            }
            Some(Err(names)) => {
                let why = format!("namespace {} is claimed by several accounts: {}", key.namespace, names.join(", "));
                self.blocked.insert(key.clone(), (Blocked::Waiting(WaitReason::NoAccount, why), None));
                return;
            }
            Some(Ok(account)) => account.name_any(),
        };
        if let Some(at) = status.and_then(|s| s.retry_at.as_ref()).filter(|t| t.0 > now) {
            self.retrying.insert(key.clone(), (at.0, Some(account)));
            return;
        }
        let template_name = &task.spec.template_ref.name;
        let Some(template) = caches.template(&key.namespace, template_name) else {
            let why = format!("GpuTemplate {template_name} not found in {}", key.namespace);
            self.blocked.insert(key.clone(), (Blocked::Waiting(WaitReason::TemplateNotFound, why), Some(account)));
            return;
        };
        // The input is immutable: check it once per template version.
        let uid = task.metadata.uid.clone().unwrap_or_default();
        let template_version = template.resource_version();
        if self.valid_input.get(&uid) != Some(&template_version) {
            let checked = InputSchema::compile(template.spec.input_schema.as_ref())
                .and_then(|schema| schema.check(&task.spec.input));
            if let Err(why) = checked {
                self.blocked.insert(key.clone(), (Blocked::Invalid(codes::INVALID_INPUT, why), Some(account)));
                return;
            }
            self.valid_input.insert(uid, template_version);
        }
        self.queue.upsert(Candidate {
            key: key.clone(),
            account,
            priority: task.spec.priority,
            created: task.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(now),
            gpus: i64::from(template.spec.gpus),
            resource: template.spec.gpu_resource(&ctx.config.pod.gpu_resource).to_string(),
            per_run_price: template.spec.price.per_run,
        });
    }

    /// UIDs of the tasks among `keys`, whose input checks are worth keeping.
    fn valid_input_keep(&self, keys: &HashSet<TaskKey>) -> HashSet<String> {
        keys.iter()
            .filter_map(|k| self.ctx.caches.task(&k.namespace, &k.name))
            .filter_map(|t| t.metadata.uid.clone())
            .collect()
    }

    /// Starts creating the pods of the admitted tasks, beside the passes: a
    /// slow create must not hold up the next pass, which may have GPUs to
    /// hand out. Until the cache shows a pod, its capacity is counted as in
    /// flight, and the task is not admitted again. Returns the tasks that
    /// went (or whose template went) before their pod could be made.
    fn start(&mut self, decision: &Decision, now: Timestamp) -> Vec<TaskKey> {
        let ctx = self.ctx.clone();
        let mut creates = Vec::new();
        let mut vanished = Vec::new();
        for key in &decision.admitted {
            let Some(candidate) = self.queue.remove(key) else { continue };
            let task_ref = kube::runtime::reflector::ObjectRef::new(&key.name).within(&key.namespace);
            let task = ctx.caches.tasks.get(&task_ref);
            let template = task.as_ref().and_then(|t| ctx.caches.template(&key.namespace, &t.spec.template_ref.name));
            let (Some(task), Some(template)) = (task, template) else {
                vanished.push(key.clone());
                continue;
            };
            let attempt = task.status.as_ref().and_then(|s| s.attempts).unwrap_or(0);
            let token = ctx.config.progress_token(&task);
            let pod = desired_pod(&task, &template, &candidate.account, attempt, &ctx.config.pod, token.as_deref());
            let pod_key = TaskKey::new(key.namespace.clone(), pod.name_any());
            self.inflight.insert(
                pod_key.clone(),
                Inflight {
                    account: candidate.account.clone(),
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
            creates.push((key.clone(), pod_key, pod));
        }
        if !creates.is_empty() {
            tokio::spawn(create_pods(ctx, creates, self.failed_creates.0.clone()));
        }
        vanished
    }

    fn dirty_again(&mut self, tasks: Vec<TaskKey>) {
        let now = Timestamp::now();
        for key in tasks {
            self.task_changed(&key, now);
        }
    }

    /// Queued tasks of accounts whose credits now keep other shapes from
    /// starting than on the last pass: their reasons may have changed.
    fn credit_changes(&mut self, decision: &Decision) -> Vec<TaskKey> {
        let now = self.queue.credit_blocked_prices(decision);
        let mut recheck = Vec::new();
        for account in now.keys().chain(self.credit_blocked.keys()) {
            if now.get(account) != self.credit_blocked.get(account) {
                recheck.extend(self.queue.keys_of(account).cloned());
            }
        }
        self.credit_blocked = now;
        recheck
    }

    /// Writes why the tasks among `keys` wait, where that is news.
    fn record_waiting(&self, keys: &HashSet<TaskKey>, decision: &Decision, now: Timestamp) {
        let ctx = &self.ctx;
        let mut status_writes = Vec::new();
        {
            let mut shared = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
            for key in keys {
                let (blocked, account) = if let Some(candidate) = self.queue.get(key) {
                    let Some(reason) = self.queue.wait_reason(key, decision) else { continue };
                    (Blocked::Waiting(reason, wait_message(reason)), Some(candidate.account.clone()))
                } else if let Some((blocked, account)) = self.blocked.get(key) {
                    let blocked = match blocked {
                        Blocked::Waiting(reason, why) => Blocked::Waiting(*reason, why.clone()),
                        Blocked::Invalid(code, why) => Blocked::Invalid(*code, why.clone()),
                    };
                    (blocked, account.clone())
                } else {
                    continue;
                };
                if shared.pending.contains(key) {
                    continue;
                }
                let task_ref = kube::runtime::reflector::ObjectRef::new(&key.name).within(&key.namespace);
                let Some(task) = ctx.caches.tasks.get(&task_ref) else { continue };
                if let Some(next) = queued_status(&shared.written, &task, &blocked, account, now) {
                    shared.pending.insert(key.clone());
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
    }

    /// Usage for the accounts' status and the metrics.
    fn report(&mut self, decision: &Decision) {
        let ctx = &self.ctx;
        let mut queued: BTreeMap<&str, i32> =
            self.queue.depth_by_account().into_iter().map(|(a, n)| (a, n as i32)).collect();
        let waiting = self.blocked.values().map(|(_, a)| a).chain(self.retrying.values().map(|(_, a)| a));
        for account in waiting.flatten() {
            *queued.entry(account.as_str()).or_default() += 1;
        }
        let mut counts = BTreeMap::new();
        for (name, usage) in &decision.accounts {
            counts.insert(
                name.clone(),
                Counts {
                    running: usage.running as i32,
                    queued: queued.get(name.as_str()).copied().unwrap_or(0),
                    gpus_in_use: usage.gpus_in_use,
                },
            );
        }
        ctx.accounts.counts(counts);
        for (resource, quota) in &decision.cluster.quota {
            ctx.metrics.gpu_quota.with_label_values(&[resource.as_str()]).set(*quota);
        }
        for resource in decision.cluster.quota.keys().chain(decision.cluster.in_use.keys()) {
            let used = decision.cluster.in_use.get(resource).copied().unwrap_or(0);
            ctx.metrics.gpus_in_use.with_label_values(&[resource.as_str()]).set(used);
        }
        // Counting every task by phase walks the whole cache: not on every
        // pass, and not while no task changes (most of them finished, kept
        // for their TTL).
        if self.last_phase_counts.is_none_or(|t| t.elapsed() >= PHASE_COUNTS_EVERY)
            && self.dirty.phases.swap(false, Ordering::SeqCst)
        {
            self.last_phase_counts = Some(Instant::now());
            let mut phases: BTreeMap<TaskPhase, i64> = BTreeMap::new();
            for task in ctx.caches.tasks.state() {
                *phases.entry(task.phase().unwrap_or(TaskPhase::Queued)).or_default() += 1;
            }
            for phase in TaskPhase::ALL {
                ctx.metrics.tasks.with_label_values(&[phase.as_str()]).set(phases.get(&phase).copied().unwrap_or(0));
            }
        }
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

/// Creates admitted tasks' pods (an existing pod of the same name is the
/// same attempt's: created already); sends back the ones that failed.
async fn create_pods(
    ctx: Arc<Context>,
    creates: Vec<(TaskKey, TaskKey, Pod)>,
    failed: mpsc::UnboundedSender<FailedCreate>,
) {
    let created = futures::stream::iter(creates)
        .map(|(task, key, pod)| {
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &key.namespace);
            let failed = failed.clone();
            async move {
                match api.create(&PostParams::default(), &pod).await {
                    Ok(_) => 1,
                    Err(e) if is_status(&e, 409) => 1,
                    Err(error) => {
                        tracing::warn!(pod = %key.name, namespace = %key.namespace, %error, "creating a task pod failed");
                        // The receiver lives as long as the loop.
                        let _ = failed.send((task, key));
                        0
                    }
                }
            }
        })
        .buffer_unordered(PARALLEL_WRITES)
        .fold(0_u64, |n, c| async move { n + c })
        .await;
    ctx.metrics.admissions.inc_by(created);
}

/// A pod's namespace and name.
fn key_of(pod: &Pod) -> TaskKey {
    TaskKey::new(pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default())
}

/// The specs the index depends on: every account's and template's identity and generation.
fn specs(ctx: &Context) -> Specs {
    let mut accounts: Vec<_> = ctx
        .caches
        .accounts
        .state()
        .iter()
        .map(|a| (a.name_any(), a.metadata.uid.clone(), a.metadata.generation))
        .collect();
    accounts.sort();
    let mut templates: Vec<_> = ctx
        .caches
        .templates
        .state()
        .iter()
        .map(|t| {
            (
                format!("{}/{}", t.namespace().unwrap_or_default(), t.name_any()),
                t.metadata.uid.clone(),
                t.metadata.generation,
            )
        })
        .collect();
    templates.sort();
    (accounts, templates)
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
                let written = match write_status(&ctx, &api, &task, &next).await {
                    Ok(_) => {
                        // A rejection is always an event; the first reason
                        // a task waits is a routine one, when transitions
                        // are recorded and the event budget allows.
                        let routine = matches!(blocked, Blocked::Waiting(..));
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
                            ctx.events.publish(event, task.object_ref(&()), routine);
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
    // Runs for every pod that holds capacity on every pass: no allocation
    // for an account or resource that is counted already.
    let entry = match running.get_mut(account) {
        Some(entry) => entry,
        None => running.entry(account.to_string()).or_default(),
    };
    entry.0 += 1;
    entry.1 += gpus.values().sum::<i64>();
    entry.2 += per_run;
    for (resource, n) in gpus {
        match cluster.in_use.get_mut(resource) {
            Some(used) => *used += n,
            None => {
                cluster.in_use.insert(resource.clone(), *n);
            }
        }
    }
}
