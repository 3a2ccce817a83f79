//! A task's life after admission: what its pod says about it, and what the
//! controller must do next. [`plan`] is pure; the controller applies its
//! result in order: charge, write status, release pod, delete pod, delete task.
//!
//! It decides nothing about queued tasks without a pod (that is admission)
//! and never talks to the API server.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{ContainerState, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::credits;
use super::pod::frozen_price;
use crate::resources::{GpuTask, GpuTaskStatus, TaskPhase, WaitReason, codes, conditions, labels};

/// Timing rules of the lifecycle.
#[derive(Clone, Debug, PartialEq)]
pub struct LifecycleConfig {
    /// How long an admitted pod may stay unschedulable or unable to start its
    /// container (image pull errors, crash on start) before the task fails.
    pub start_deadline: SignedDuration,
    /// How long past its timeout a running pod may go on before the controller
    /// stops it itself (the kubelet's activeDeadlineSeconds normally does).
    pub timeout_grace: SignedDuration,
    /// First retry delay; doubles with each attempt up to `retry_backoff_max`.
    pub retry_backoff: SignedDuration,
    pub retry_backoff_max: SignedDuration,
    /// Finished tasks are deleted this long after they end; None keeps them.
    pub finished_ttl: Option<SignedDuration>,
    /// A pod that starts within this long after it was placed on a node goes
    /// straight from Queued to Running on the task, without a status write
    /// (and an event) for the short time it was pending. Slower starts are
    /// recorded (PodStarting: pulling the image, starting the container).
    pub pending_status_delay: SignedDuration,
    /// A pod that no node has taken this long after it was created is
    /// recorded as starting too (a scheduler far behind, or none running).
    /// One the scheduler cannot place is recorded at once, with the reason.
    pub unplaced_status_delay: SignedDuration,
    /// A pod that ends within this long after the controller saw it start
    /// goes straight from Queued to its end on the task: a Running status
    /// (and a Started event) that its end would overwrite a moment later is
    /// not written. Longer runs show Running this long after they were seen
    /// to start. Zero writes it at once.
    pub running_status_delay: SignedDuration,
    /// Record an event at every phase transition (started, completed), not
    /// only for what needs a look (failures, retries, cancels, slow starts).
    pub transition_events: bool,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            start_deadline: SignedDuration::from_mins(5),
            timeout_grace: SignedDuration::from_secs(60),
            retry_backoff: SignedDuration::from_secs(10),
            retry_backoff_max: SignedDuration::from_mins(5),
            finished_ttl: Some(SignedDuration::from_hours(24)),
            pending_status_delay: SignedDuration::from_secs(5),
            unplaced_status_delay: SignedDuration::from_secs(30),
            running_status_delay: SignedDuration::from_secs(2),
            transition_events: true,
        }
    }
}

/// What the controller sees of one task.
#[derive(Clone, Copy, Debug)]
pub struct TaskView<'a> {
    pub task: &'a GpuTask,
    /// The template's maxRetries, if the template still exists.
    pub max_retries: Option<i32>,
    /// The pod of the task's current attempt, if it exists.
    pub pod: Option<&'a Pod>,
    /// The account that owns the task's namespace now; the task is charged
    /// to the account recorded on its status, else this one.
    pub account: Option<&'a str>,
    pub now: Timestamp,
    /// When this controller first saw the current pod running while the
    /// task was not Running yet; None: the container's start.
    pub running_seen: Option<Timestamp>,
    /// A finished task whose webhook is not settled yet is not deleted.
    pub webhook_pending: bool,
}

/// An event to record on the task.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskEvent {
    pub reason: &'static str,
    pub note: String,
    pub warning: bool,
    /// A routine transition (admitted with a slow start, started,
    /// completed): recorded within the controller's event budget, left out
    /// beyond it. Failures, retries and cancels are always recorded.
    pub routine: bool,
}

/// What to do for a task, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Credits to charge to the task's account before the status is written.
    pub charge: Option<i64>,
    /// The status to write; None when it would change nothing.
    pub status: Option<GpuTaskStatus>,
    /// Delete the current pod (it is not deleting yet).
    pub delete_pod: bool,
    /// Remove runplane's finalizer from the current pod: its task is accounted.
    pub release_pod: bool,
    /// Delete the task: its TTL has passed.
    pub delete_task: bool,
    /// Look again after this long even if nothing changes.
    pub requeue_after: Option<SignedDuration>,
    pub event: Option<TaskEvent>,
}

/// How a pod's failure is classified.
#[derive(Clone, Debug, PartialEq)]
enum Failure {
    /// activeDeadlineSeconds passed.
    Deadline,
    /// The workload itself failed.
    Workload(String),
    /// Not the workload's fault: evicted, node lost, pod deleted by someone else.
    Infrastructure(String),
    /// The pod never started within the start deadline.
    CannotStart { code: i32, message: String },
}

/// Pod failure reasons that are not the workload's fault.
const INFRASTRUCTURE_REASONS: &[&str] = &[
    "Evicted",
    "NodeLost",
    "Preempting",
    "Shutdown",
    "NodeShutdown",
    "Terminated",
    "UnexpectedAdmissionError",
    "NodeAffinity",
];

/// Container waiting reasons that mean the container will not start by itself.
const START_ERRORS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
    "RunContainerError",
];

/// Decides what to do for a task, given its current pod.
pub fn plan(view: TaskView<'_>, config: &LifecycleConfig) -> Plan {
    let task = view.task;
    let current = task.status.clone().unwrap_or_default();
    if task.is_terminal() {
        return plan_finished(view, &current, config);
    }
    let Some(pod) = view.pod else {
        return plan_without_pod(view, &current);
    };

    let attempt: i32 =
        pod.metadata.labels.as_ref().and_then(|l| l.get(labels::ATTEMPT)).and_then(|a| a.parse().ok()).unwrap_or(0);
    if current.pod_name.is_none() && attempt < current.attempts.unwrap_or(0) {
        // The pod of an attempt that already failed and is being retried:
        // it is only let go. Deciding from it again would push the retry
        // back on every look while it lingers (a lost node's pod can stay
        // Terminating for a long time).
        let mut out = plan_without_pod(view, &current);
        out.release_pod = has_finalizer(pod);
        out.delete_pod = pod.metadata.deletion_timestamp.is_none();
        return out;
    }

    let mut next = current.clone();
    next.observed_generation = task.metadata.generation;
    next.attempts = Some(current.attempts.unwrap_or(0).max(attempt + 1));
    next.pod_name = pod.metadata.name.clone();
    // Never from the pod's labels: whoever can create pods in the namespace
    // could name another account there.
    next.account = next.account.or_else(|| view.account.map(str::to_string));
    next.gpus = Some(frozen_price(pod).gpus as i32).filter(|g| *g > 0).or(next.gpus);
    if next.admitted_at.is_none() {
        next.admitted_at = pod.metadata.creation_timestamp.clone();
    }
    let started = pod_started(pod);
    if next.started_at.is_none() {
        next.started_at = started.map(Time);
    }

    let deleting = pod.metadata.deletion_timestamp.is_some();
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let mut out = Plan::default();

    // A requested cancel wins over whatever the pod is doing.
    if task.spec.cancel || task.metadata.deletion_timestamp.is_some() {
        if !deleting && !matches!(phase, "Succeeded" | "Failed") {
            out.delete_pod = true;
            out.status = changed(&current, next);
            return out;
        }
        let ended = pod_ended(pod).or_else(|| deletion_requested_at(pod)).unwrap_or(view.now);
        return finish(out, &current, next, pod, TaskPhase::Canceled, Finish::canceled(), ended);
    }

    match phase {
        "Succeeded" => {
            let ended = pod_ended(pod).unwrap_or(view.now);
            let output = parse_output(termination_message(pod).as_deref());
            next.output = Some(output);
            next.progress = Some(100);
            finish(out, &current, next, pod, TaskPhase::Completed, Finish::completed(config), ended)
        }
        _ if deleting => {
            // Someone other than runplane deleted the pod of a running task;
            // the kubelet may already have marked it Failed on the way out.
            let ended = deletion_requested_at(pod).unwrap_or(view.now);
            let failure = Failure::Infrastructure("the task's pod was deleted".into());
            fail(view, out, &current, next, pod, failure, ended, config)
        }
        "Failed" => {
            let ended = pod_ended(pod).unwrap_or(view.now);
            let failure = classify_failure(pod);
            fail(view, out, &current, next, pod, failure, ended, config)
        }
        "Running" => {
            let started_at = next.started_at.as_ref().map(|t| t.0).unwrap_or(view.now);
            let timeout = SignedDuration::from_secs(view.task.spec.timeout_seconds.unwrap_or_else(|| {
                pod.spec
                    .as_ref()
                    .and_then(|s| s.active_deadline_seconds)
                    .unwrap_or(crate::resources::DEFAULT_TIMEOUT_SECONDS)
            }));
            let hard_stop = started_at + timeout + config.timeout_grace;
            if view.now >= hard_stop {
                out.delete_pod = true;
                return fail(view, out, &current, next, pod, Failure::Deadline, view.now, config);
            }
            // A short run ends before its Running status would be of use to
            // anyone: wait a moment, and its end is the only write. The
            // moment counts from when the controller saw the start, not from
            // the start itself: on a busy plane the start is seen late, and
            // the end about as late after it.
            let seen = view.running_seen.unwrap_or(started_at).min(view.now);
            let record_from = seen + config.running_status_delay;
            if current.phase != Some(TaskPhase::Running) && view.now < record_from {
                out.requeue_after = Some(look_again_at(record_from, view.now));
                return out;
            }
            if current.phase != Some(TaskPhase::Running) && config.transition_events {
                let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or("its node");
                out.event = Some(TaskEvent {
                    reason: "Started",
                    note: format!("pod {} is running on {node}", pod.metadata.name.as_deref().unwrap_or_default()),
                    warning: false,
                    routine: true,
                });
            }
            next.phase = Some(TaskPhase::Running);
            next.wait_reason = None;
            next.message = None;
            next.retry_at = None;
            set_condition(&mut next, conditions::ADMITTED, true, "PodCreated", "the task's pod was created", view.now);
            out.requeue_after = Some(hard_stop.duration_since(view.now));
            out.status = changed(&current, next);
            out
        }
        _ => {
            // Pending: scheduling, pulling the image or starting the container.
            let admitted = next.admitted_at.as_ref().map(|t| t.0).unwrap_or(view.now);
            let deadline = admitted + config.start_deadline;
            if let Some(failure) = start_failure(pod)
                && view.now >= deadline
            {
                out.delete_pod = true;
                return fail(view, out, &current, next, pod, failure, view.now, config);
            }
            // Most pods start within moments: recording that they are
            // pending would cost a write (and an event) per task and say
            // nothing that the Running status does not. Look again later.
            // The time a pod waits for the scheduler is not the start's: on
            // a busy plane every pod waits seconds for it, and a write for
            // each would only add to that. A start is slow once its node has
            // had it for the delay, or when no node has it for much longer.
            let recorded = current.pod_name.is_some() && current.wait_reason == Some(WaitReason::PodStarting);
            let record_from = match placed_at(pod) {
                Some(placed) => placed.max(admitted) + config.pending_status_delay,
                None => admitted + config.unplaced_status_delay,
            };
            if !recorded && start_failure(pod).is_none() && view.now < record_from {
                out.requeue_after = Some(look_again_at(record_from, view.now));
                return out;
            }
            next.phase = Some(TaskPhase::Queued);
            next.wait_reason = Some(WaitReason::PodStarting);
            next.message = start_failure(pod).map(|f| match f {
                Failure::CannotStart { message, .. } => message,
                other => format!("{other:?}"),
            });
            next.retry_at = None;
            set_condition(&mut next, conditions::ADMITTED, true, "PodCreated", "the task's pod was created", view.now);
            if current.conditions.iter().all(|c| c.type_ != conditions::ADMITTED || c.status != "True") {
                out.event = Some(TaskEvent {
                    reason: "Admitted",
                    note: format!("created pod {}", pod.metadata.name.as_deref().unwrap_or_default()),
                    warning: false,
                    routine: true,
                });
            }
            out.requeue_after = Some(deadline.duration_since(view.now).max(SignedDuration::from_secs(1)));
            out.status = changed(&current, next);
            out
        }
    }
}

/// Queued tasks without a pod belong to admission; only a cancel, or a pod
/// that vanished after admission, is decided here.
fn plan_without_pod(view: TaskView<'_>, current: &GpuTaskStatus) -> Plan {
    let task = view.task;
    let mut out = Plan::default();
    let mut next = current.clone();
    next.observed_generation = task.metadata.generation;
    if task.spec.cancel {
        next.phase = Some(TaskPhase::Canceled);
        next.wait_reason = None;
        next.retry_at = None;
        next.completed_at = Some(Time(view.now));
        next.credits_used = Some(0);
        next.message = Some("canceled before it started".into());
        set_condition(&mut next, conditions::FINISHED, true, "Canceled", "canceled before it started", view.now);
        out.event = Some(TaskEvent {
            reason: "Canceled",
            note: "canceled before it started".into(),
            warning: false,
            routine: false,
        });
        out.status = changed(current, next);
        return out;
    }
    if current.phase == Some(TaskPhase::Running) {
        // The pod is gone without runplane having let it go (finalizer removed by hand).
        let failure = Failure::Infrastructure("the task's pod disappeared".into());
        return retry_or_fail(view, out, current, next, failure, view.now, None);
    }
    out
}

/// Terminal tasks: let their pod go, then delete them after the TTL.
fn plan_finished(view: TaskView<'_>, current: &GpuTaskStatus, config: &LifecycleConfig) -> Plan {
    let mut out = Plan::default();
    if let Some(pod) = view.pod {
        if has_finalizer(pod) {
            // Charged (again: charges are idempotent by task UID) before the
            // pod is let go; a crash between the terminal status and the
            // charge ends here.
            out.charge = current.credits_used.filter(|c| *c > 0);
            out.release_pod = true;
        }
        // A finished pod stays (its logs can be read) until garbage
        // collection removes it with its task; one still running is stopped.
        // Tasks kept forever do not keep their pods forever.
        let keep = pod_is_terminal(pod) && config.finished_ttl.is_some();
        if pod.metadata.deletion_timestamp.is_none() && !keep {
            out.delete_pod = true;
        }
    }
    if let (Some(ttl), Some(done)) = (config.finished_ttl, current.completed_at.as_ref()) {
        let expires = done.0 + ttl;
        if view.now >= expires && view.webhook_pending {
            out.requeue_after = Some(SignedDuration::from_secs(30));
        } else if view.now >= expires {
            out.delete_task = true;
        } else {
            out.requeue_after = Some(expires.duration_since(view.now));
        }
    }
    out
}

struct Finish {
    reason: &'static str,
    message: String,
    code: Option<i32>,
    warning: bool,
    /// Record an event even for a success.
    event: bool,
}

impl Finish {
    fn completed(config: &LifecycleConfig) -> Self {
        let event = config.transition_events;
        Self { reason: "Completed", message: "the task completed".into(), code: None, warning: false, event }
    }

    fn canceled() -> Self {
        Self { reason: "Canceled", message: "the task was canceled".into(), code: None, warning: false, event: true }
    }

    fn failed(message: String, code: i32) -> Self {
        Self { reason: "Failed", message, code: Some(code), warning: true, event: true }
    }
}

/// Moves the task to a terminal phase: charge, status, pod released.
fn finish(
    mut out: Plan,
    current: &GpuTaskStatus,
    mut next: GpuTaskStatus,
    pod: &Pod,
    phase: TaskPhase,
    how: Finish,
    ended: Timestamp,
) -> Plan {
    let started = next.started_at.as_ref().map(|t| t.0);
    let credits = credits::charge(&frozen_price(pod), started, ended);
    next.phase = Some(phase);
    next.wait_reason = None;
    next.retry_at = None;
    next.completed_at = Some(Time(ended));
    next.processing_time = started.map(|s| (credits::run_seconds(s, ended) * 1000.0).round() / 1000.0);
    next.credits_used = Some(credits);
    next.error_code = how.code;
    next.error_message = how.code.map(|_| how.message.clone());
    next.message = Some(how.message.clone());
    set_condition(&mut next, conditions::FINISHED, true, how.reason, &how.message, ended);
    out.charge = (credits > 0).then_some(credits);
    if how.reason != "Completed" || how.event {
        let note = match next.processing_time {
            Some(seconds) if how.reason == "Completed" => format!("{} in {seconds} s, {credits} credits", how.message),
            _ => how.message,
        };
        out.event =
            Some(TaskEvent { reason: how.reason, note, warning: how.warning, routine: how.reason == "Completed" });
    }
    out.delete_pod = pod.metadata.deletion_timestamp.is_none() && !pod_is_terminal(pod);
    out.release_pod = has_finalizer(pod);
    out.status = changed(current, next);
    out
}

#[allow(clippy::too_many_arguments)]
fn fail(
    view: TaskView<'_>,
    out: Plan,
    current: &GpuTaskStatus,
    next: GpuTaskStatus,
    pod: &Pod,
    failure: Failure,
    ended: Timestamp,
    config: &LifecycleConfig,
) -> Plan {
    match failure {
        Failure::Infrastructure(_) => retry_or_fail(view, out, current, next, failure, ended, Some((pod, config))),
        failure => {
            let (code, message) = describe(&failure, view, pod);
            finish(out, current, next, pod, TaskPhase::Failed, Finish::failed(message, code), ended)
        }
    }
}

/// An attempt failed through no fault of the task: retry it if the template
/// allows, uncharged; otherwise the task fails.
fn retry_or_fail(
    view: TaskView<'_>,
    mut out: Plan,
    current: &GpuTaskStatus,
    mut next: GpuTaskStatus,
    failure: Failure,
    ended: Timestamp,
    pod: Option<(&Pod, &LifecycleConfig)>,
) -> Plan {
    let attempts = next.attempts.unwrap_or(1);
    let max_retries = view.max_retries.unwrap_or(0);
    let Failure::Infrastructure(why) = &failure else { unreachable!("only infrastructure failures retry") };
    if attempts <= max_retries {
        let config = pod.map(|(_, c)| c.clone()).unwrap_or_default();
        let factor = 2i32.saturating_pow(u32::try_from(attempts - 1).unwrap_or(0)).min(1 << 16);
        let delay = (config.retry_backoff * factor).min(config.retry_backoff_max);
        next.phase = Some(TaskPhase::Queued);
        next.wait_reason = Some(WaitReason::RetryBackoff);
        next.retry_at = Some(Time(view.now + delay));
        next.message = Some(format!("attempt {attempts} failed ({why}); retrying"));
        next.pod_name = None;
        next.started_at = None;
        next.admitted_at = None;
        set_condition(&mut next, conditions::ADMITTED, false, "Retrying", why, view.now);
        out.event = Some(TaskEvent {
            reason: "Retrying",
            note: format!("attempt {attempts} of {} failed: {why}", max_retries + 1),
            warning: true,
            routine: false,
        });
        if let Some((pod, _)) = pod {
            out.delete_pod = pod.metadata.deletion_timestamp.is_none();
            out.release_pod = has_finalizer(pod);
        }
        out.requeue_after = Some(delay);
        out.status = changed(current, next);
        return out;
    }
    let message = format!("{why} (after {attempts} attempt{})", if attempts == 1 { "" } else { "s" });
    match pod {
        Some((pod, _)) => {
            finish(out, current, next, pod, TaskPhase::Failed, Finish::failed(message, codes::INTERNAL), ended)
        }
        None => {
            next.phase = Some(TaskPhase::Failed);
            next.completed_at = Some(Time(ended));
            next.credits_used = Some(0);
            next.error_code = Some(codes::INTERNAL);
            next.error_message = Some(message.clone());
            next.message = Some(message.clone());
            set_condition(&mut next, conditions::FINISHED, true, "Failed", &message, ended);
            out.event = Some(TaskEvent { reason: "Failed", note: message, warning: true, routine: false });
            out.status = changed(current, next);
            out
        }
    }
}

fn describe(failure: &Failure, view: TaskView<'_>, pod: &Pod) -> (i32, String) {
    match failure {
        Failure::Deadline => {
            let limit = view
                .task
                .spec
                .timeout_seconds
                .or_else(|| pod.spec.as_ref().and_then(|s| s.active_deadline_seconds))
                .unwrap_or_default();
            (codes::TIMEOUT, format!("Task execution timeout: ran longer than {limit} s"))
        }
        Failure::Workload(message) => (codes::INTERNAL, message.clone()),
        Failure::CannotStart { code, message } => (*code, message.clone()),
        Failure::Infrastructure(message) => (codes::INTERNAL, message.clone()),
    }
}

fn classify_failure(pod: &Pod) -> Failure {
    let status = pod.status.as_ref();
    let reason = status.and_then(|s| s.reason.as_deref()).unwrap_or_default();
    if reason == "DeadlineExceeded" {
        if pod_started(pod).is_none() {
            // The deadline passed while the container was still waiting
            // (pulling its image, say): the task never ran.
            let waiting = status
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
            let why = waiting.map(|w| format!(" ({w})")).unwrap_or_default();
            return Failure::CannotStart {
                code: codes::INTERNAL,
                message: format!("the container did not start before the task's deadline{why}"),
            };
        }
        return Failure::Deadline;
    }
    if INFRASTRUCTURE_REASONS.contains(&reason) || reason.starts_with("OutOf") {
        let detail = status.and_then(|s| s.message.clone()).unwrap_or_default();
        return Failure::Infrastructure(format!("pod failed: {reason} {detail}").trim().to_string());
    }
    match terminated(pod) {
        Some((code, message)) => {
            let message = message.filter(|m| !m.trim().is_empty());
            Failure::Workload(match message {
                Some(m) => format!("exit code {code}: {}", truncate(m.trim(), 1024)),
                None => format!("exit code {code}"),
            })
        }
        None => Failure::Workload(format!("pod failed: {reason}").trim_end_matches(": ").to_string()),
    }
}

/// Why an admitted pod cannot start, if it cannot.
fn start_failure(pod: &Pod) -> Option<Failure> {
    let status = pod.status.as_ref()?;
    for container in status.container_statuses.iter().flatten() {
        if let Some(waiting) = container.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = waiting.reason.as_deref().unwrap_or_default();
            if START_ERRORS.contains(&reason) {
                let detail = waiting.message.as_deref().unwrap_or_default();
                return Some(Failure::CannotStart {
                    code: codes::INTERNAL,
                    message: format!("container cannot start: {reason} {detail}").trim().to_string(),
                });
            }
        }
    }
    let unschedulable =
        status.conditions.iter().flatten().find(|c| {
            c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
        })?;
    Some(Failure::CannotStart {
        code: codes::GPU_UNAVAILABLE,
        message: format!("GPU unavailable: {}", unschedulable.message.as_deref().unwrap_or("no node fits the pod")),
    })
}

/// How long until `at`, for a look then at what a delay held back; at least
/// a moment, so that a clock at `at` already does not spin the reconciler.
fn look_again_at(at: Timestamp, now: Timestamp) -> SignedDuration {
    at.duration_since(now).max(SignedDuration::from_millis(100))
}

/// When the pod was bound to a node: its PodScheduled condition's last
/// change (the apiserver sets it True on binding), or, for a pod that names
/// a node without one, its creation.
fn placed_at(pod: &Pod) -> Option<Timestamp> {
    let scheduled = pod.status.as_ref()?.conditions.iter().flatten().find(|c| c.type_ == "PodScheduled");
    match scheduled {
        Some(c) if c.status == "True" => c.last_transition_time.as_ref().map(|t| t.0),
        Some(_) => None,
        None => pod.spec.as_ref()?.node_name.as_ref().and(pod.metadata.creation_timestamp.as_ref()).map(|t| t.0),
    }
}

fn main_state(pod: &Pod) -> Option<&ContainerState> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == super::pod::CONTAINER)
        .or_else(|| pod.status.as_ref()?.container_statuses.as_ref()?.first())?
        .state
        .as_ref()
}

fn terminated(pod: &Pod) -> Option<(i32, Option<String>)> {
    let t = main_state(pod)?.terminated.as_ref()?;
    Some((t.exit_code, t.message.clone()))
}

fn termination_message(pod: &Pod) -> Option<String> {
    main_state(pod)?.terminated.as_ref()?.message.clone()
}

/// When the workload started: its container's start, else the pod's.
fn pod_started(pod: &Pod) -> Option<Timestamp> {
    let state = main_state(pod);
    if let Some(t) = state.and_then(|s| s.running.as_ref()).and_then(|r| r.started_at.as_ref()) {
        return Some(t.0);
    }
    if let Some(t) = state.and_then(|s| s.terminated.as_ref()).and_then(|t| t.started_at.as_ref()) {
        return Some(t.0);
    }
    // A pod that reports no container times: its start time, but only when
    // it is running or succeeded. A failed pod without a container start
    // never ran (stopped while pulling its image, or while waiting past its
    // deadline) and must not be charged; status.startTime is set when the
    // pod is bound, before anything starts.
    let phase = pod.status.as_ref()?.phase.as_deref()?;
    if matches!(phase, "Running" | "Succeeded") {
        return pod.status.as_ref()?.start_time.as_ref().map(|t| t.0);
    }
    None
}

fn pod_ended(pod: &Pod) -> Option<Timestamp> {
    main_state(pod)?.terminated.as_ref()?.finished_at.as_ref().map(|t| t.0)
}

/// When the pod's deletion was requested (its deletion timestamp less the grace period).
fn deletion_requested_at(pod: &Pod) -> Option<Timestamp> {
    let at = pod.metadata.deletion_timestamp.as_ref()?.0;
    let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(0);
    Some(at - SignedDuration::from_secs(grace))
}

fn has_finalizer(pod: &Pod) -> bool {
    pod.metadata.finalizers.iter().flatten().any(|f| f == labels::ACCOUNTING_FINALIZER)
}

/// Credits owed for the pod of a task that was deleted: its run up to its
/// end, or up to when its deletion was requested.
pub fn orphan_charge(pod: &Pod, now: Timestamp) -> i64 {
    let ended = pod_ended(pod).or_else(|| deletion_requested_at(pod)).unwrap_or(now);
    credits::charge(&frozen_price(pod), pod_started(pod), ended)
}

/// True once the pod's containers have ended for good.
pub fn pod_is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// True while runplane's finalizer holds the pod.
pub fn holds_finalizer(pod: &Pod) -> bool {
    has_finalizer(pod)
}

/// The workload's termination message as output: a JSON object as is,
/// anything else as `{"text": …}`.
pub fn parse_output(message: Option<&str>) -> serde_json::Value {
    let message = message.unwrap_or_default().trim();
    if message.is_empty() {
        return serde_json::json!({});
    }
    match serde_json::from_str::<serde_json::Value>(message) {
        Ok(value @ serde_json::Value::Object(_)) => value,
        _ => serde_json::json!({ "text": message }),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Sets a condition, moving lastTransitionTime only when its status changes.
pub fn set_condition(
    status: &mut GpuTaskStatus,
    type_: &str,
    value: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let generation = status.observed_generation;
    upsert_condition(&mut status.conditions, generation, type_, value, reason, message, now);
}

/// Sets a condition in a list, moving lastTransitionTime only when its status changes.
pub fn upsert_condition(
    conditions: &mut Vec<Condition>,
    generation: Option<i64>,
    type_: &str,
    value: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let value = if value { "True" } else { "False" };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != value {
                c.last_transition_time = Time(now);
            }
            c.status = value.into();
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: value.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Time(now),
            observed_generation: generation,
        }),
    }
}

fn changed(current: &GpuTaskStatus, next: GpuTaskStatus) -> Option<GpuTaskStatus> {
    (current != &next).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;

    fn run(task: &GpuTask, pod: Option<&Pod>, now: i64) -> Plan {
        plan(
            TaskView { max_retries: Some(1), account: Some("acct"), ..view(task, pod, now) },
            &LifecycleConfig::default(),
        )
    }

    /// What the controller sees of a task with no template, no account and
    /// no webhook, at `now`.
    fn view<'a>(task: &'a GpuTask, pod: Option<&'a Pod>, now: i64) -> TaskView<'a> {
        TaskView {
            task,
            max_retries: None,
            pod,
            account: None,
            now: ts(now),
            running_seen: None,
            webhook_pending: false,
        }
    }

    fn admitted(task: GpuTask) -> GpuTask {
        crate::fixtures::TaskBuilder::from(task)
            .status(|s| {
                s.phase = Some(TaskPhase::Queued);
                s.pod_name = Some("t".into());
                s.attempts = Some(1);
                s.admitted_at = Some(Time(ts(1)));
            })
            .build()
    }

    #[test]
    fn a_pod_that_starts_quickly_costs_no_pending_write() {
        // pod_for creates the pod at 1, placed on a node at 1; the default delay is 5 s.
        let t = task("t").build();
        let pod = pod_for(&t, 0).placed(1).build();
        let p = run(&t, Some(&pod), 2);
        assert_eq!(p.status, None);
        assert_eq!(p.event, None);
        assert_eq!(p.requeue_after, Some(SignedDuration::from_secs(4)), "looks again when the delay is over");
        // Running straight from Queued (once it has run for the running
        // status delay): one write, with the admission facts.
        let running = pod_for(&t, 0).running(2).build();
        let p = run(&t, Some(&running), 4);
        let status = p.status.unwrap();
        assert_eq!(status.phase, Some(TaskPhase::Running));
        assert_eq!((status.pod_name.as_deref(), status.attempts), (Some("t"), Some(1)));
        assert_eq!(status.admitted_at, Some(Time(ts(1))));
        assert_eq!(p.event.map(|e| e.reason), Some("Started"), "the transition is an event");
        // Without transition events, a quick start records none.
        let quiet = LifecycleConfig { transition_events: false, ..LifecycleConfig::default() };
        assert_eq!(plan(view(&t, Some(&running), 4), &quiet).event, None);
    }

    #[test]
    fn a_pod_failing_to_start_is_recorded_at_once() {
        let t = task("t").build();
        let pod = pod_for(&t, 0).waiting("ErrImagePull").build();
        let status = run(&t, Some(&pod), 2).status.expect("a start problem is shown at once");
        assert_eq!(status.wait_reason, Some(WaitReason::PodStarting));
        assert!(status.message.unwrap().contains("ErrImagePull"));
    }

    #[test]
    fn pending_pod_is_recorded_as_admitted_once() {
        let t = task("t").build();
        let pod = pod_for(&t, 0).placed(1).build();
        let p = run(&t, Some(&pod), 6);
        let status = p.status.clone().expect("a pod pending past the delay is written");
        assert_eq!(status.phase, Some(TaskPhase::Queued));
        assert_eq!(status.wait_reason, Some(WaitReason::PodStarting));
        assert_eq!(status.pod_name.as_deref(), Some("t"));
        assert_eq!(status.attempts, Some(1));
        assert_eq!(status.gpus, Some(2));
        assert_eq!(p.event.as_ref().map(|e| e.reason), Some("Admitted"));
        // Nothing changes on the next look: no write.
        let mut t2 = t.clone();
        t2.status = Some(status);
        let again = run(&t2, Some(&pod), 7);
        assert_eq!((again.status, again.event), (None, None));
    }

    #[test]
    fn the_wait_for_a_node_is_not_a_slow_start() {
        // Created at 1; the scheduler is busy and places it at 20.
        let t = task("t").build();
        let unplaced = pod_for(&t, 0).build();
        let p = run(&t, Some(&unplaced), 10);
        assert_eq!((p.status, p.event), (None, None), "waiting for a node is not recorded");
        assert_eq!(p.requeue_after, Some(SignedDuration::from_secs(21)), "until 30 s after its creation");
        // Placed at 20: slow from 25 on, counted from its placing.
        let placed = pod_for(&t, 0).placed(20).build();
        let p = run(&t, Some(&placed), 22);
        assert_eq!((p.status, p.requeue_after), (None, Some(SignedDuration::from_secs(3))));
        let slow = run(&t, Some(&placed), 25).status.expect("a start slow on its node is recorded");
        assert_eq!(slow.wait_reason, Some(WaitReason::PodStarting));
        // No node at all after 30 s (no scheduler running): recorded.
        let stuck = run(&t, Some(&unplaced), 31).status.expect("a pod no node took for 30 s is recorded");
        assert_eq!(stuck.wait_reason, Some(WaitReason::PodStarting));
        // One the scheduler cannot place says so at once.
        let unschedulable = pod_for(&t, 0).unschedulable().build();
        let status = run(&t, Some(&unschedulable), 2).status.expect("unschedulable is shown at once");
        assert!(status.message.unwrap().contains("Insufficient nvidia.com/gpu"));
    }

    #[test]
    fn running_pod_sets_started_at_and_requeues_for_the_hard_stop() {
        let t = admitted(task("t").build());
        let pod = pod_for(&t, 0).running(5).build();
        let p = run(&t, Some(&pod), 7);
        let status = p.status.unwrap();
        assert_eq!(status.phase, Some(TaskPhase::Running));
        assert_eq!(status.started_at, Some(Time(ts(5))));
        assert_eq!(status.wait_reason, None);
        // timeout 60 s + grace 60 s from the start at 5, seen at 7
        assert_eq!(p.requeue_after, Some(SignedDuration::from_secs(118)));
        assert!(!p.delete_pod && p.charge.is_none());
    }

    #[test]
    fn a_run_that_ends_within_the_running_status_delay_is_written_only_at_its_end() {
        // Default delay 2 s; the pod started at 5.
        let t = admitted(task("t").build());
        let running = pod_for(&t, 0).running(5).build();
        let p = run(&t, Some(&running), 6);
        assert_eq!((p.status, p.event), (None, None), "no Running status yet, and no Started event");
        assert_eq!(p.requeue_after, Some(SignedDuration::from_secs(1)), "looks again when the delay is over");
        // It ended at 6: one write, its end, with its start.
        let ended = pod_for(&t, 0).succeeded(5, 6, "{}").build();
        let p = run(&t, Some(&ended), 6);
        let status = p.status.unwrap();
        assert_eq!(status.phase, Some(TaskPhase::Completed));
        assert_eq!((status.started_at, status.processing_time), (Some(Time(ts(5))), Some(1.0)));
        assert_eq!(p.event.map(|e| e.reason), Some("Completed"));
        // A node whose clock is ahead does not stretch the wait beyond the delay.
        let ahead = pod_for(&t, 0).running(30).build();
        assert_eq!(run(&t, Some(&ahead), 6).requeue_after, Some(SignedDuration::from_secs(2)));
        // Seen running only at 9 (a busy plane shows the start late, and the
        // end as late): the delay counts from then.
        let seen_at = |now: i64| {
            let seen = TaskView { running_seen: Some(ts(9)), ..view(&t, Some(&running), now) };
            plan(seen, &LifecycleConfig::default())
        };
        let p = seen_at(9);
        assert_eq!((p.status, p.requeue_after), (None, Some(SignedDuration::from_secs(2))));
        assert_eq!(seen_at(11).status.and_then(|s| s.phase), Some(TaskPhase::Running));
        // A delay of zero writes Running at once.
        let at_once = LifecycleConfig { running_status_delay: SignedDuration::ZERO, ..LifecycleConfig::default() };
        assert_eq!(plan(view(&t, Some(&running), 5), &at_once).status.and_then(|s| s.phase), Some(TaskPhase::Running));
    }

    #[test]
    fn succeeded_pod_completes_with_output_and_one_charge() {
        let t = admitted(task("t").build());
        let pod = pod_for(&t, 0).succeeded(5, 15, r#"{"result_url": "https://x/y.png"}"#).build();
        let p = run(&t, Some(&pod), 16);
        let status = p.status.unwrap();
        assert_eq!(status.phase, Some(TaskPhase::Completed));
        assert_eq!(status.output, Some(serde_json::json!({"result_url": "https://x/y.png"})));
        assert_eq!(status.processing_time, Some(10.0));
        // 10 per run + 0.5 × 2 GPUs × 10 s
        assert_eq!(status.credits_used, Some(20));
        assert_eq!(p.charge, Some(20));
        assert_eq!(status.completed_at, Some(Time(ts(15))));
        // The finished pod is released, not deleted: garbage collection
        // removes it with the task.
        assert!(p.release_pod && !p.delete_pod);
        let event = p.event.expect("completion is an event");
        assert_eq!((event.reason, event.warning), ("Completed", false));
        assert!(event.note.contains("10 s, 20 credits"), "{}", event.note);
        assert_eq!(status.conditions.iter().find(|c| c.type_ == "Finished").unwrap().reason, "Completed");
    }

    #[test]
    fn a_pod_canceled_before_its_container_started_is_not_charged() {
        // Canceled while pulling its image: the pod ends Failed with a
        // terminated container that never started (exit 137).
        let t = crate::fixtures::TaskBuilder::from(admitted(task("t").build())).cancel().build();
        let pod = pod_for(&t, 0).failed_unstarted(None, 137, 9).deleting(8).build();
        let p = run(&t, Some(&pod), 10);
        let status = p.status.unwrap();
        assert_eq!(status.phase, Some(TaskPhase::Canceled));
        assert_eq!((status.started_at, status.credits_used, p.charge), (None, Some(0), None));
    }

    #[test]
    fn a_deadline_passed_before_the_container_started_is_not_a_charged_timeout() {
        let t = admitted(task("t").build());
        let pod = pod_for(&t, 0).failed_unstarted(Some("DeadlineExceeded"), 137, 62).build();
        let p = run(&t, Some(&pod), 63);
        let status = p.status.unwrap();
        assert_eq!(status.phase, Some(TaskPhase::Failed));
        assert_eq!(status.error_code, Some(codes::INTERNAL));
        assert!(status.error_message.unwrap().contains("did not start"));
        assert_eq!((status.credits_used, p.charge), (Some(0), None));
    }

    #[test]
    fn the_account_comes_from_the_namespace_not_the_pods_labels() {
        let t = admitted(task("t").build());
        let mut pod = pod_for(&t, 0).running(5).build();
        pod.metadata.labels.get_or_insert_default().insert(labels::ACCOUNT.into(), "victim".into());
        assert_eq!(run(&t, Some(&pod), 7).status.unwrap().account.as_deref(), Some("acct"));
        // Once recorded, the task's account stays, even if the namespace moves.
        let recorded = crate::fixtures::TaskBuilder::from(t).status(|s| s.account = Some("first".into())).build();
        let moved = TaskView { account: Some("second"), ..view(&recorded, Some(&pod), 7) };
        assert_eq!(plan(moved, &LifecycleConfig::default()).status.unwrap().account.as_deref(), Some("first"));
    }

    #[test]
    fn a_lingering_pod_of_a_failed_attempt_does_not_push_the_retry_back() {
        let t = admitted(task("t").build());
        let pod = pod_for(&t, 0).running(5).deleting(8).build();
        let retrying = run(&t, Some(&pod), 9).status.unwrap();
        assert_eq!(retrying.wait_reason, Some(WaitReason::RetryBackoff));
        let t = crate::fixtures::TaskBuilder::from(t).status(|s| *s = retrying.clone()).build();
        // The old pod is still there (Terminating on a lost node) later on.
        let later = run(&t, Some(&pod), 15);
        assert_eq!(later.status, None, "the retry time stays where it was");
        assert_eq!(later.event, None);
        assert!(later.release_pod, "the old pod is only let go");
    }

    #[test]
    fn a_finished_task_whose_pod_is_held_is_charged_what_its_status_says() {
        // A crash between the terminal status and the charge: the next look
        // charges exactly the recorded credits, then lets the pod go.
        let t = task("t")
            .status(|s| {
                s.phase = Some(TaskPhase::Completed);
                s.completed_at = Some(Time(ts(10)));
                s.credits_used = Some(17);
            })
            .build();
        let pod = pod_for(&t, 0).succeeded(2, 10, "").build();
        let p = run(&t, Some(&pod), 50);
        assert_eq!((p.charge, p.release_pod, p.status), (Some(17), true, None));
    }

    #[test]
    fn non_json_output_becomes_text() {
        assert_eq!(parse_output(Some("done: 3 images")), serde_json::json!({"text": "done: 3 images"}));
        assert_eq!(parse_output(Some("[1,2]")), serde_json::json!({"text": "[1,2]"}));
        assert_eq!(parse_output(None), serde_json::json!({}));
    }

    #[test]
    fn deadline_exceeded_is_a_timeout() {
        let t = admitted(task("t").build());
        let pod = pod_for(&t, 0).failed(Some("DeadlineExceeded"), 137, 5, 65, "").build();
        let status = run(&t, Some(&pod), 66).status.unwrap();
        assert_eq!(status.phase, Some(TaskPhase::Failed));
        assert_eq!(status.error_code, Some(codes::TIMEOUT));
    }

    #[test]
    fn controller_stops_a_pod_running_past_timeout_and_grace() {
        let t = admitted(task("t").build());
        let pod = pod_for(&t, 0).running(5).build();
        let p = run(&t, Some(&pod), 5 + 60 + 60);
        assert!(p.delete_pod);
        assert_eq!(p.status.unwrap().error_code, Some(codes::TIMEOUT));
    }

    #[test]
    fn workload_failure_is_not_retried_and_keeps_its_message() {
        let t = admitted(task("t").build());
        let pod = pod_for(&t, 0).failed(None, 3, 5, 9, "CUDA out of memory").build();
        let p = run(&t, Some(&pod), 10);
        let status = p.status.unwrap();
        assert_eq!(status.phase, Some(TaskPhase::Failed));
        assert_eq!(status.error_code, Some(codes::INTERNAL));
        assert_eq!(status.error_message.as_deref(), Some("exit code 3: CUDA out of memory"));
        assert!(p.event.as_ref().is_some_and(|e| e.warning && e.reason == "Failed"), "failures are events");
        assert_eq!(p.charge, Some(10 + 4), "a run that started is charged");
    }

    #[test]
    fn eviction_is_retried_uncharged_then_fails() {
        let t = admitted(task("t").build());
        let pod = pod_for(&t, 0).failed(Some("Evicted"), 137, 5, 9, "").build();
        let p = run(&t, Some(&pod), 10);
        let status = p.status.clone().unwrap();
        assert_eq!(status.phase, Some(TaskPhase::Queued));
        assert_eq!(status.wait_reason, Some(WaitReason::RetryBackoff));
        assert_eq!(status.retry_at, Some(Time(ts(20))));
        assert_eq!(status.pod_name, None);
        assert_eq!(p.charge, None);
        assert!(p.release_pod && p.delete_pod);

        // Second attempt (max_retries = 1) fails for good.
        let mut t2 = t.clone();
        t2.status = Some(GpuTaskStatus { pod_name: Some("t-retry-1".into()), attempts: Some(2), ..status });
        let pod2 = pod_for(&t2, 1).failed(Some("Evicted"), 137, 25, 30, "").build();
        let p2 = run(&t2, Some(&pod2), 31);
        let status2 = p2.status.unwrap();
        assert_eq!(status2.phase, Some(TaskPhase::Failed));
        assert!(status2.error_message.unwrap().contains("after 2 attempts"));
    }

    #[test]
    fn pod_deleted_by_someone_else_is_an_infrastructure_failure() {
        let t = admitted(task("t").build());
        let pod = pod_for(&t, 0).running(5).deleting(8).build();
        let status = run(&t, Some(&pod), 9).status.unwrap();
        assert_eq!(status.wait_reason, Some(WaitReason::RetryBackoff));
        // Also when the kubelet already marked it Failed on the way out.
        let pod = pod_for(&t, 0).failed(None, 143, 5, 9, "").deleting(8).build();
        let status = run(&t, Some(&pod), 10).status.unwrap();
        assert_eq!(status.wait_reason, Some(WaitReason::RetryBackoff));
    }

    #[test]
    fn unschedulable_fails_with_gpu_unavailable_after_the_start_deadline() {
        let t = admitted(task("t").build());
        let pod = pod_for(&t, 0).unschedulable().build();
        let early = run(&t, Some(&pod), 60);
        assert_eq!(early.status.as_ref().and_then(|s| s.phase), Some(TaskPhase::Queued));
        assert!(!early.delete_pod);
        let late = run(&t, Some(&pod), 1 + 300);
        assert!(late.delete_pod);
        let status = late.status.unwrap();
        assert_eq!(status.error_code, Some(codes::GPU_UNAVAILABLE));
        assert_eq!(late.charge, None, "a task that never started is never charged");
    }

    #[test]
    fn image_pull_errors_fail_fast_after_the_start_deadline() {
        let t = admitted(task("t").build());
        let pod = pod_for(&t, 0).waiting("ImagePullBackOff").build();
        let status = run(&t, Some(&pod), 1 + 300).status.unwrap();
        assert_eq!(status.phase, Some(TaskPhase::Failed));
        assert!(status.error_message.unwrap().contains("ImagePullBackOff"));
    }

    #[test]
    fn cancel_deletes_the_pod_then_charges_up_to_the_request() {
        let t = crate::fixtures::TaskBuilder::from(admitted(task("t").build())).cancel().build();
        let running = pod_for(&t, 0).running(5).build();
        let first = run(&t, Some(&running), 10);
        assert!(first.delete_pod);
        assert_eq!(first.charge, None);
        let deleting = pod_for(&t, 0).running(5).deleting(10).build();
        let second = run(&t, Some(&deleting), 11);
        let status = second.status.unwrap();
        assert_eq!(status.phase, Some(TaskPhase::Canceled));
        // 10 + 0.5 × 2 × (10 − 5)
        assert_eq!(second.charge, Some(15));
        assert!(second.release_pod && !second.delete_pod);
    }

    #[test]
    fn cancel_before_admission_costs_nothing() {
        let t = task("t").cancel().build();
        let p = run(&t, None, 3);
        let status = p.status.unwrap();
        assert_eq!(status.phase, Some(TaskPhase::Canceled));
        assert_eq!(status.credits_used, Some(0));
        assert_eq!(p.charge, None);
    }

    #[test]
    fn queued_task_without_pod_is_left_to_admission() {
        let t = task("t").build();
        assert_eq!(run(&t, None, 3), Plan::default());
    }

    #[test]
    fn finished_task_releases_its_pod_and_expires_after_the_ttl() {
        let t = task("t")
            .status(|s| {
                s.phase = Some(TaskPhase::Completed);
                s.completed_at = Some(Time(ts(10)));
            })
            .build();
        let pod = pod_for(&t, 0).succeeded(2, 10, "").build();
        let p = run(&t, Some(&pod), 11);
        assert!(p.release_pod && !p.delete_pod && !p.delete_task, "the finished pod goes with its task");
        assert_eq!(p.status, None);
        assert_eq!(p.requeue_after, Some(SignedDuration::from_hours(24) - SignedDuration::from_secs(1)));
        assert!(run(&t, None, 10 + 24 * 3600).delete_task);
        let pending =
            plan(TaskView { webhook_pending: true, ..view(&t, None, 10 + 24 * 3600) }, &LifecycleConfig::default());
        assert!(!pending.delete_task, "the TTL waits for the webhook to settle");

        // Kept forever, the task does not keep its pod forever.
        let keep = LifecycleConfig { finished_ttl: None, ..LifecycleConfig::default() };
        assert!(plan(view(&t, Some(&pod), 11), &keep).delete_pod);
        // A pod still running under a finished task is stopped.
        let running = pod_for(&t, 0).running(2).build();
        assert!(run(&t, Some(&running), 11).delete_pod);
    }

    /// What the pod of the current attempt looks like at one look.
    #[derive(Clone, Copy, Debug)]
    enum Seen {
        Gone,
        Pending,
        PullError,
        Unschedulable,
        Running,
        Succeeded,
        WorkloadFailed,
        Evicted,
        DeadlineBeforeStart,
        StoppedBeforeStart,
        RunningDeleted,
    }

    fn seen() -> impl proptest::strategy::Strategy<Value = Seen> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Seen::Gone),
            Just(Seen::Pending),
            Just(Seen::PullError),
            Just(Seen::Unschedulable),
            Just(Seen::Running),
            Just(Seen::Succeeded),
            Just(Seen::WorkloadFailed),
            Just(Seen::Evicted),
            Just(Seen::DeadlineBeforeStart),
            Just(Seen::StoppedBeforeStart),
            Just(Seen::RunningDeleted),
        ]
    }

    proptest::proptest! {
        /// Whatever the pods of a task go through, in any order: a finished
        /// task stays finished and is never written again, nothing is
        /// charged unless a container started, a charge is what the status
        /// records, and looking twice at the same thing writes nothing.
        #[test]
        fn a_tasks_life_keeps_its_promises(
            looks in proptest::collection::vec((seen(), 0i64..400, proptest::bool::weighted(0.1)), 1..40),
        ) {
            let mut task = task("t").build();
            let mut now = 1;
            // Whether a container of the current attempt was ever seen started.
            let (mut ran, mut ran_attempt) = (false, 0);
            for (seen, dt, cancel) in looks {
                now += dt;
                if cancel {
                    task.spec.cancel = true;
                }
                let attempts = task.status.as_ref().and_then(|s| s.attempts).unwrap_or(0);
                let attempt = if task.status.as_ref().is_some_and(|s| s.pod_name.is_some()) { attempts - 1 } else { attempts };
                let base = pod_for(&task, attempt.max(0));
                if attempt != ran_attempt {
                    (ran, ran_attempt) = (false, attempt);
                }
                ran |= matches!(
                    seen,
                    Seen::Running | Seen::Succeeded | Seen::WorkloadFailed | Seen::Evicted | Seen::RunningDeleted
                );
                let started = now - dt.min(now - 1);
                let pod = match seen {
                    Seen::Gone => None,
                    Seen::Pending => Some(base.build()),
                    Seen::PullError => Some(base.waiting("ImagePullBackOff").build()),
                    Seen::Unschedulable => Some(base.unschedulable().build()),
                    Seen::Running => Some(base.running(started).build()),
                    Seen::Succeeded => Some(base.succeeded(started, now, "{}").build()),
                    Seen::WorkloadFailed => Some(base.failed(None, 1, started, now, "boom").build()),
                    Seen::Evicted => Some(base.failed(Some("Evicted"), 137, started, now, "").build()),
                    Seen::DeadlineBeforeStart => Some(base.failed_unstarted(Some("DeadlineExceeded"), 137, now).build()),
                    Seen::StoppedBeforeStart => Some(base.failed_unstarted(None, 137, now).deleting(now).build()),
                    Seen::RunningDeleted => Some(base.running(started).deleting(now).build()),
                };
                let before = task.status.clone().unwrap_or_default();
                let p = run(&task, pod.as_ref(), now);
                if before.phase.is_some_and(TaskPhase::is_terminal) {
                    proptest::prop_assert_eq!(&p.status, &None, "a finished task is never written again");
                    if let Some(charge) = p.charge {
                        proptest::prop_assert_eq!(Some(charge), before.credits_used, "the charge is what the status says");
                    }
                    continue;
                }
                if let Some(next) = &p.status {
                    if next.credits_used.is_some_and(|c| c > 0) {
                        proptest::prop_assert!(ran && next.started_at.is_some(), "charged without a start: {:?}", next);
                    }
                    if let Some(charge) = p.charge {
                        proptest::prop_assert_eq!(Some(charge), next.credits_used);
                    }
                    task.status = Some(next.clone());
                    // The same look again changes nothing.
                    let again = run(&task, pod.as_ref(), now);
                    if !next.phase.is_some_and(TaskPhase::is_terminal) {
                        proptest::prop_assert_eq!(&again.status, &None, "a second look wrote again");
                    }
                } else {
                    proptest::prop_assert_eq!(p.charge, None, "no charge without a terminal status");
                }
            }
        }
    }

    #[test]
    fn conditions_keep_their_transition_time_when_unchanged() {
        let mut status = GpuTaskStatus::default();
        set_condition(&mut status, "Admitted", true, "PodCreated", "m", ts(1));
        set_condition(&mut status, "Admitted", true, "PodCreated", "m", ts(9));
        assert_eq!(status.conditions[0].last_transition_time, Time(ts(1)));
        set_condition(&mut status, "Admitted", false, "Retrying", "m", ts(9));
        assert_eq!(status.conditions[0].last_transition_time, Time(ts(9)));
    }
}
