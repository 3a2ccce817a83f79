use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A tenant: the namespaces it owns, its plan and limits, its credits.
/// Cluster-scoped so that only a cluster admin can create or change it; a
/// tenant's own objects can never move it or spend another account's credits.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "runplane.dev",
    version = "v1alpha1",
    kind = "GpuAccount",
    shortname = "gacct",
    category = "runplane",
    status = "GpuAccountStatus",
    doc = "A tenant of runplane: namespaces, plan, limits and credits.",
    printcolumn(name = "Plan", type_ = "string", json_path = ".spec.plan"),
    printcolumn(name = "Balance", type_ = "integer", json_path = ".status.balance"),
    printcolumn(name = "Running", type_ = "integer", json_path = ".status.running"),
    printcolumn(name = "Queued", type_ = "integer", json_path = ".status.queued"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = kube::core::Rule::new("self.plan != 'custom' || (has(self.limits) && has(self.limits.concurrentTasks) && has(self.limits.requestsPerMinute))").message("a custom plan needs limits.concurrentTasks and limits.requestsPerMinute"))]
#[serde(rename_all = "camelCase")]
pub struct GpuAccountSpec {
    /// Plan: free (5 concurrent tasks, 30 requests/min), pro (10, 60), team (25, 120) or custom (limits required).
    pub plan: Plan,
    /// Contact address of the account, shown by GET /v1/account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 254))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[^@\\\\s]+@[^@\\\\s]+$')").message("must be an email address"))]
    pub email: Option<String>,
    /// Namespaces whose GpuTasks run on this account (each listed once).
    #[serde(default)]
    #[schemars(
        length(max = 256),
        inner(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub namespaces: Vec<String>,
    /// Overrides of the plan's limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Credits granted to the account; balance = granted - used.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub credits: i64,
    /// Default webhook destination and signing secret for the account's tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<AccountWebhook>,
}

/// A plan, with the seed's default limits.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    Free,
    Pro,
    Team,
    Custom,
}

impl Plan {
    /// (concurrent tasks, requests per minute) of the plan; custom has none of its own.
    pub fn defaults(self) -> (i32, i32) {
        match self {
            Plan::Free => (5, 30),
            Plan::Pro => (10, 60),
            Plan::Team => (25, 120),
            Plan::Custom => (0, 0),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Pro => "pro",
            Plan::Team => "team",
            Plan::Custom => "custom",
        }
    }
}

/// Limits of an account; unset ones come from the plan.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Tasks that may run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub concurrent_tasks: Option<i32>,
    /// API requests per minute through the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub requests_per_minute: Option<i32>,
    /// GPUs the account's running tasks may hold at once; no limit of its own when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub gpus: Option<i64>,
}

/// Where the account's webhooks go by default and how they are signed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountWebhook {
    /// Default destination for tasks and templates that name none (http or https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = kube::core::Rule::new("isURL(self) && (self.startsWith('https://') || self.startsWith('http://'))").message("must be an http or https URL"))]
    pub url: Option<String>,
    /// Secret in the controller's namespace (the chart's release namespace) whose values are the active signing secrets; one in another namespace is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
}

/// Names a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Secret; if given, it must be the controller's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// Usage and balance of an account, kept by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuAccountStatus {
    /// Credits left: spec.credits - creditsUsed (may go below zero by the run time of the last tasks).
    #[serde(default)]
    pub balance: i64,
    /// Credits charged for finished tasks, ever.
    #[serde(default)]
    pub credits_used: i64,
    /// Tasks running or starting.
    #[serde(default)]
    pub running: i32,
    /// Tasks waiting for admission.
    #[serde(default)]
    pub queued: i32,
    /// GPUs held by the account's pods.
    #[serde(default)]
    pub gpus_in_use: i64,
    /// UIDs of the most recently charged tasks, newest last; makes charging idempotent across restarts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub recent_charges: Vec<String>,
    /// Standard conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Effective limits of an account: plan defaults overridden by spec.limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EffectiveLimits {
    pub concurrent_tasks: i32,
    pub requests_per_minute: i32,
    pub gpus: Option<i64>,
}

impl GpuAccountSpec {
    pub fn effective_limits(&self) -> EffectiveLimits {
        let (concurrent, rpm) = self.plan.defaults();
        let limits = self.limits.clone().unwrap_or_default();
        EffectiveLimits {
            concurrent_tasks: limits.concurrent_tasks.unwrap_or(concurrent),
            requests_per_minute: limits.requests_per_minute.unwrap_or(rpm),
            gpus: limits.gpus,
        }
    }
}

impl GpuAccount {
    /// Credits used so far, as last recorded by the controller.
    pub fn credits_used(&self) -> i64 {
        self.status.as_ref().map_or(0, |s| s.credits_used)
    }

    pub fn balance(&self) -> i64 {
        self.spec.credits - self.credits_used()
    }
}
