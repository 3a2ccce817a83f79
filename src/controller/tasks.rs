//! The task reconciler: reads a task and its pod from the caches, asks
//! [`lifecycle::plan`] what to do, and does it — charge, status, pod, task.
//! Queued tasks without a pod are left to admission.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::Context;
use super::error::{Error, Result, is_status};
use crate::domain::lifecycle::{self, Plan, TaskView};
use crate::resources::{GpuTask, GpuTaskStatus, labels, managers};

#[tracing::instrument(skip_all, fields(task = %task.namespace().unwrap_or_default(), name = %task.name_any()))]
pub async fn reconcile(task: Arc<GpuTask>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&task, &ctx).await;
    ctx.metrics.reconcile_duration.with_label_values(&[] as &[&str]).observe(started.elapsed().as_secs_f64());
    result
}

pub fn error_policy(_task: Arc<GpuTask>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.with_label_values(&[error.category()]).inc();
    if !matches!(error, Error::Kube(kube::Error::Api(s)) if s.code == 409) {
        tracing::warn!(%error, "reconcile failed");
    }
    Action::requeue(Duration::from_secs(if error.category() == "conflict" { 1 } else { 5 }))
}

async fn reconcile_inner(task: &Arc<GpuTask>, ctx: &Context) -> Result<Action> {
    let task = &ctx.own_writes.fresher(task.clone());
    let namespace = task.namespace().unwrap_or_default();
    let pod = ctx.caches.current_pod(task);
    let max_retries = ctx.caches.template(&namespace, &task.spec.template_ref.name).map(|t| t.spec.max_retries);
    let webhook_pending = task.is_terminal() && super::webhooks::pending(ctx, task);
    let account = ctx.caches.account_of(&namespace);
    let now = Timestamp::now();
    let view = TaskView {
        task,
        max_retries,
        pod: pod.as_deref(),
        account: account.as_deref(),
        now,
        running_seen: ctx.running_seen.note(task, pod.as_deref(), now),
        webhook_pending,
    };
    let plan = lifecycle::plan(view, &ctx.config.lifecycle);
    apply(task, pod.as_deref(), plan, ctx).await
}

/// When the controller first saw each task's pod running while its task was
/// not Running yet (by pod UID): the running status delay counts from then.
/// An entry goes once its task is Running or ended, or its pod stops
/// running; a restart forgets them all, which only delays a Running status.
#[derive(Default)]
pub struct RunningSeen(std::sync::Mutex<std::collections::HashMap<String, Timestamp>>);

impl RunningSeen {
    /// Entries are pruned past this many (a task deleted while its entry was
    /// there leaves it behind): those older than `STALE` go.
    const PRUNE_ABOVE: usize = 4096;
    const STALE: jiff::SignedDuration = jiff::SignedDuration::from_mins(10);

    pub fn note(&self, task: &GpuTask, pod: Option<&Pod>, now: Timestamp) -> Option<Timestamp> {
        let pod = pod?;
        let uid = pod.metadata.uid.as_deref()?;
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            && pod.metadata.deletion_timestamp.is_none();
        let recorded = task.is_terminal() || task.phase() == Some(crate::resources::TaskPhase::Running);
        let mut seen = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !running || recorded {
            seen.remove(uid);
            return None;
        }
        if seen.len() > Self::PRUNE_ABOVE {
            seen.retain(|_, at| now.duration_since(*at) < Self::STALE);
        }
        Some(*seen.entry(uid.to_string()).or_insert(now))
    }
}

async fn apply(task: &GpuTask, pod: Option<&Pod>, plan: Plan, ctx: &Context) -> Result<Action> {
    let namespace = task.namespace().unwrap_or_default();
    let name = task.name_any();
    let tasks: Api<GpuTask> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);

    // The status first: a terminal status records what the task costs, so
    // that a charge retried after a crash or a conflict charges exactly
    // what the task says, and the pod's finalizer (released below, after
    // the charge) marks the charge as done.
    if let Some(status) = &plan.status {
        write_status(ctx, &tasks, task, status).await?;
        observe_transition(ctx, task, status);
    }

    if let Some(credits) = plan.charge
        && !pod.is_some_and(|p| released_already(ctx, p))
    {
        let account = plan
            .status
            .as_ref()
            .or(task.status.as_ref())
            .and_then(|s| s.account.clone())
            .or_else(|| ctx.caches.account_of(&namespace))
            .ok_or_else(|| Error::NoAccount(format!("{namespace}/{name}")))?;
        ctx.accounts.charge(&account, task.metadata.uid.as_deref().unwrap_or_default(), credits).await?;
    }

    if let Some(event) = plan.event {
        let routine = event.routine;
        let event = Event {
            type_: if event.warning { EventType::Warning } else { EventType::Normal },
            reason: event.reason.into(),
            note: Some(event.note),
            action: "Reconcile".into(),
            secondary: None,
        };
        ctx.events.publish(event, task.object_ref(&()), routine);
    }

    if let Some(pod) = pod {
        let pod_name = pod.name_any();
        // Released before it is deleted, so that a pod that the delete
        // leaves terminating does not wait for another pass on the finalizer.
        if plan.release_pod && !released_already(ctx, pod) {
            release(&pods, pod).await?;
            remember_release(ctx, pod);
        }
        if plan.delete_pod {
            let params = DeleteParams { preconditions: uid_precondition(pod), ..DeleteParams::background() };
            match pods.delete(&pod_name, &params).await {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    if plan.delete_task {
        let params = DeleteParams { preconditions: uid_precondition(task), ..DeleteParams::background() };
        match tasks.delete(&name, &params).await {
            Ok(_) => tracing::info!("deleted finished task after its TTL"),
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::await_change());
    }

    Ok(match plan.requeue_after {
        Some(after) => Action::requeue(after.unsigned_abs().max(Duration::from_millis(100))),
        None => Action::await_change(),
    })
}

/// Writes a task's whole status with server-side apply, only if the task is
/// still at the version the decision was made from, and records the write
/// for reads until the cache shows it.
pub async fn write_status(ctx: &Context, api: &Api<GpuTask>, task: &GpuTask, status: &GpuTaskStatus) -> Result<()> {
    // status.webhook belongs to the webhook deliverer's field manager.
    let status = GpuTaskStatus { webhook: None, ..status.clone() };
    let patch = json!({
        "apiVersion": GpuTask::api_version(&()),
        "kind": GpuTask::kind(&()),
        "metadata": { "name": task.name_any(), "resourceVersion": task.resource_version() },
        "status": status,
    });
    let params = PatchParams::apply(managers::CONTROLLER).force();
    let written = api.patch_status(&task.name_any(), &params, &Patch::Apply(&patch)).await?;
    ctx.own_writes.record(task, written);
    Ok(())
}

fn released_already(ctx: &Context, pod: &Pod) -> bool {
    let released = ctx.released.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    pod.metadata.uid.as_ref().is_some_and(|uid| released.contains(uid))
}

fn remember_release(ctx: &Context, pod: &Pod) {
    let mut released = ctx.released.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if released.len() >= 10_000 {
        released.clear();
    }
    if let Some(uid) = pod.metadata.uid.clone() {
        released.insert(uid);
    }
}

/// Removes runplane's finalizer from a pod, leaving any others. A strategic
/// merge patch deletes just that entry of the list on the server, so it
/// needs no resourceVersion: a status write by the kubelet in between (the
/// pod's end, written while the task was charged) no longer makes the
/// release fail with a conflict and cost another write and reconcile.
async fn release(pods: &Api<Pod>, pod: &Pod) -> Result<()> {
    if !lifecycle::holds_finalizer(pod) {
        return Ok(());
    }
    let patch = json!({ "metadata": { "$deleteFromPrimitiveList/finalizers": [labels::ACCOUNTING_FINALIZER] } });
    match pods.patch(&pod.name_any(), &PatchParams::default(), &Patch::Strategic(&patch)).await {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn uid_precondition<K: Resource>(obj: &K) -> Option<Preconditions> {
    Some(Preconditions { uid: obj.meta().uid.clone(), resource_version: None })
}

fn observe_transition(ctx: &Context, task: &GpuTask, status: &GpuTaskStatus) {
    let before = task.status.as_ref().and_then(|s| s.phase);
    if before == status.phase {
        return;
    }
    if status.phase.is_some_and(|p| p.is_terminal()) {
        if let Some(seconds) = status.processing_time {
            ctx.metrics.run_time.observe(seconds);
        }
        tracing::info!(phase = ?status.phase, credits = status.credits_used, code = status.error_code, "task finished");
    } else {
        tracing::info!(phase = ?status.phase, "task moved");
    }
}

/// Those of `pods` whose task was deleted: charge what they ran (once, by the task's
/// UID), then let them go. Garbage collection marks them deleting when the
/// task goes; runplane's finalizer holds them until they are accounted.
pub async fn reap_orphans(ctx: &Context, pods: impl IntoIterator<Item = Arc<Pod>>) {
    for pod in pods {
        if !lifecycle::holds_finalizer(&pod) {
            continue;
        }
        let Some(owner) = pod.owner_references().iter().find(|o| o.kind == "GpuTask").cloned() else {
            continue;
        };
        let namespace = pod.namespace().unwrap_or_default();
        let live = ctx.caches.task(&namespace, &owner.name);
        if let Some(task) = live.filter(|t| t.metadata.uid.as_deref() == Some(owner.uid.as_str())) {
            // A pod of an earlier attempt that a retry could not let go.
            let current = ctx.caches.current_pod(&task).is_some_and(|c| c.name_any() == pod.name_any());
            let attempt: i32 = pod.labels().get(labels::ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or(0);
            let attempts = task.status.as_ref().and_then(|s| s.attempts).unwrap_or(0);
            if !current && attempt < attempts && !task.is_terminal() {
                let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
                if release(&pods, &pod).await.is_ok() && pod.metadata.deletion_timestamp.is_none() {
                    let _ = pods.delete(&pod.name_any(), &DeleteParams::background()).await;
                }
            }
            continue;
        }
        if pod.metadata.deletion_timestamp.is_none() {
            continue;
        }
        let tasks: Api<GpuTask> = Api::namespaced(ctx.client.clone(), &namespace);
        // The cache may lag: only a task that is really gone makes an orphan.
        match tasks.get_opt(&owner.name).await {
            Ok(Some(task)) if task.metadata.uid.as_deref() == Some(owner.uid.as_str()) => continue,
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, "checking a pod's task failed");
                continue;
            }
        }
        let credits = lifecycle::orphan_charge(&pod, Timestamp::now());
        if credits > 0 {
            // The account that owns the namespace, not what the pod's labels
            // claim: a tenant must not be able to bill another account.
            let Some(account) = ctx.caches.account_of(&namespace) else {
                tracing::warn!(pod = %pod.name_any(), %namespace, "no account owns the namespace; the run is not charged");
                let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
                let _ = release(&pods, &pod).await;
                continue;
            };
            if let Err(error) = ctx.accounts.charge(&account, &owner.uid, credits).await {
                tracing::warn!(%error, pod = %pod.name_any(), "charging a deleted task failed; will retry");
                continue;
            }
        }
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
        match release(&pods, &pod).await {
            Ok(()) => {
                tracing::info!(pod = %pod.name_any(), task = %owner.name, credits, "released the pod of a deleted task")
            }
            Err(error) => tracing::debug!(%error, "releasing an orphaned pod failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;
    use crate::resources::TaskPhase;

    #[test]
    fn the_first_sight_of_a_running_pod_is_kept_until_its_task_says_running() {
        let seen = RunningSeen::default();
        let t = task("t").build();
        let (pending, running) = (pod_for(&t, 0).placed(1).build(), pod_for(&t, 0).running(5).build());
        assert_eq!(seen.note(&t, Some(&pending), ts(4)), None, "not running yet");
        assert_eq!(seen.note(&t, Some(&running), ts(6)), Some(ts(6)));
        assert_eq!(seen.note(&t, Some(&running), ts(7)), Some(ts(6)), "the first sight stays");
        // Once the task says Running the entry goes; so it does when the pod
        // is not running any more.
        let recorded = TaskBuilder::from(t.clone()).status(|s| s.phase = Some(TaskPhase::Running)).build();
        assert_eq!(seen.note(&recorded, Some(&running), ts(8)), None);
        assert_eq!(seen.note(&t, Some(&running), ts(9)), Some(ts(9)), "forgotten, seen anew");
        let ended = pod_for(&t, 0).succeeded(5, 9, "{}").build();
        assert_eq!(seen.note(&t, Some(&ended), ts(10)), None);
        assert!(seen.0.lock().unwrap().is_empty());
    }
}
