use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// One run request: a template and its input. The controller queues it,
/// admits it under its account's limits and the cluster's GPU quota, runs it
/// as a pod and records the outcome here.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "runplane.dev",
    version = "v1alpha1",
    kind = "GpuTask",
    namespaced,
    shortname = "gt",
    category = "runplane",
    status = "GpuTaskStatus",
    doc = "One run of a GpuTemplate with a JSON input, queued and run on GPUs.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Template", type_ = "string", json_path = ".spec.templateRef.name"),
    printcolumn(name = "GPUs", type_ = "integer", json_path = ".status.gpus"),
    printcolumn(name = "Progress", type_ = "integer", json_path = ".status.progress"),
    printcolumn(name = "Waiting", type_ = "string", json_path = ".status.waitReason", priority = 1),
    printcolumn(name = "Credits", type_ = "integer", json_path = ".status.creditsUsed", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    selectable = ".spec.templateRef.name",
    selectable = ".status.phase"
)]
#[x_kube(validation = kube::core::Rule::new("self.templateRef == oldSelf.templateRef && self.input == oldSelf.input && self.priority == oldSelf.priority && ((has(self.timeoutSeconds) && has(oldSelf.timeoutSeconds) && self.timeoutSeconds == oldSelf.timeoutSeconds) || (!has(self.timeoutSeconds) && !has(oldSelf.timeoutSeconds)))").message("templateRef, input, priority and timeoutSeconds cannot change after creation"))]
#[x_kube(validation = kube::core::Rule::new("!oldSelf.cancel || self.cancel").message("a cancel request cannot be withdrawn"))]
#[serde(rename_all = "camelCase")]
pub struct GpuTaskSpec {
    /// The GpuTemplate to run, in the task's namespace.
    pub template_ref: TemplateRef,
    /// Input of the run, a JSON object; checked against the template's inputSchema and passed to the pod as RUNPLANE_INPUT.
    #[serde(default = "empty_object")]
    #[schemars(schema_with = "super::schema::free_object")]
    pub input: serde_json::Value,
    /// URL that receives the task.completed / task.failed webhook (http or https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = kube::core::Rule::new("isURL(self) && (self.startsWith('https://') || self.startsWith('http://'))").message("must be an http or https URL"))]
    pub webhook_url: Option<String>,
    /// Also send a webhook (task.canceled) when the task is canceled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub webhook_on_cancel: bool,
    /// Higher runs first within the account's queue; ties go to the oldest task.
    #[serde(default)]
    #[schemars(range(min = -1000, max = 1000))]
    pub priority: i32,
    /// Overrides the template's timeoutSeconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub timeout_seconds: Option<i64>,
    /// Set to true to cancel the task: its pod is stopped and it ends Canceled.
    #[serde(default)]
    pub cancel: bool,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// Names a GpuTemplate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct TemplateRef {
    /// Name of the GpuTemplate in the task's namespace.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

/// Where a task is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, schemars::JsonSchema)]
pub enum TaskPhase {
    /// Waiting for admission or for its pod to start.
    Queued,
    /// Its pod is running.
    Running,
    /// Finished successfully; output holds the result.
    Completed,
    /// Finished with an error; errorCode and errorMessage say why.
    Failed,
    /// Stopped on request.
    Canceled,
}

impl TaskPhase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Canceled)
    }

    /// The lower-case form used by the RunKey wire format.
    pub fn as_wire(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "Queued",
            Self::Running => "Running",
            Self::Completed => "Completed",
            Self::Failed => "Failed",
            Self::Canceled => "Canceled",
        }
    }

    pub const ALL: [TaskPhase; 5] = [Self::Queued, Self::Running, Self::Completed, Self::Failed, Self::Canceled];
}

/// Why a queued task has not been admitted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum WaitReason {
    /// No GpuAccount owns the task's namespace.
    NoAccount,
    /// The referenced GpuTemplate does not exist.
    TemplateNotFound,
    /// The account is at its concurrency or GPU limit.
    AccountLimit,
    /// The cluster's GPU quota is in use.
    ClusterQuota,
    /// The account's balance does not cover the template's per-run price.
    InsufficientCredits,
    /// A failed attempt is waiting for its retry backoff.
    RetryBackoff,
    /// Admitted; the pod is being scheduled or started.
    PodStarting,
}

impl WaitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoAccount => "NoAccount",
            Self::TemplateNotFound => "TemplateNotFound",
            Self::AccountLimit => "AccountLimit",
            Self::ClusterQuota => "ClusterQuota",
            Self::InsufficientCredits => "InsufficientCredits",
            Self::RetryBackoff => "RetryBackoff",
            Self::PodStarting => "PodStarting",
        }
    }

    /// Reasons that flip as capacity comes and goes; not rewritten on every flip
    /// so that one finishing task causes no write per queued task.
    pub fn is_capacity(self) -> bool {
        matches!(self, Self::AccountLimit | Self::ClusterQuota)
    }
}

/// What the controller observed of a task.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuTaskStatus {
    /// Queued, Running, Completed, Failed or Canceled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TaskPhase>,
    /// While Queued: why the task waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_reason: Option<WaitReason>,
    /// Human-readable detail of the current state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The GpuAccount the task is charged to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// GPUs the task's pod requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<i32>,
    /// Progress reported by the workload, 0 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<i32>,
    /// Output of the workload: the JSON object it wrote as its termination message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::optional_free_object")]
    pub output: Option<serde_json::Value>,
    /// Name of the pod of the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Attempts started so far (pods created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    /// When the current attempt's pod was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted_at: Option<Time>,
    /// When the pod started running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the task reached a terminal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// While waiting for a retry: when the next attempt may start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Time>,
    /// Seconds from start to end of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_time: Option<f64>,
    /// Credits charged to the account for this task, once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_used: Option<i64>,
    /// RunKey error code of a failed task (e.g. 50003 for a timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i32>,
    /// What went wrong, for a failed task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Delivery of the task's webhook, kept here so that a restart neither drops nor repeats it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookStatus>,
    /// Standard conditions: Admitted, Finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl GpuTask {
    pub fn phase(&self) -> Option<TaskPhase> {
        self.status.as_ref().and_then(|s| s.phase)
    }

    pub fn is_terminal(&self) -> bool {
        self.phase().is_some_and(TaskPhase::is_terminal)
    }

    /// Timeout of the task: its own override, else the template's.
    pub fn timeout_seconds(&self, template: &super::GpuTemplateSpec) -> i64 {
        self.spec.timeout_seconds.unwrap_or(template.timeout_seconds)
    }
}

/// Where a task's webhook delivery stands.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookStatus {
    /// The event's id (the webhook-id header), the same on every attempt.
    #[serde(default)]
    pub id: String,
    /// task.completed, task.failed or task.canceled.
    #[serde(default)]
    pub event: String,
    /// Destination of the deliveries.
    #[serde(default)]
    pub url: String,
    /// Attempts made so far.
    #[serde(default)]
    pub attempts: i32,
    /// When the first attempt of this delivery was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_attempt_at: Option<Time>,
    /// When the last attempt was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<Time>,
    /// HTTP status of the last attempt's response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status_code: Option<i32>,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the next attempt is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Time>,
    /// When a 2xx response was received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<Time>,
    /// When retrying stopped without delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gave_up_at: Option<Time>,
    /// The redelivery request (annotation runplane.dev/webhook-redeliver) this delivery serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivery: Option<String>,
}

impl WebhookStatus {
    /// Delivered, or given up: nothing more will be sent unless redelivery is asked.
    pub fn is_settled(&self) -> bool {
        self.delivered_at.is_some() || self.gave_up_at.is_some()
    }
}
