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
    /// Plan: free (by default 5 concurrent tasks, 30 requests/min), pro (10, 60), team (25, 120) — the operator may change these — or custom (limits required).
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

/// What each plan allows, unless an account sets its own limits. The
/// defaults are the seed's; an operator may change them (`--plan`), and
/// both processes must be given the same table.
#[derive(Clone, Debug, PartialEq)]
pub struct Plans {
    pub free: EffectiveLimits,
    pub pro: EffectiveLimits,
    pub team: EffectiveLimits,
}

impl Default for Plans {
    fn default() -> Self {
        let plan = |concurrent_tasks, requests_per_minute| EffectiveLimits {
            concurrent_tasks,
            requests_per_minute,
            gpus: None,
        };
        Self { free: plan(5, 30), pro: plan(10, 60), team: plan(25, 120) }
    }
}

impl Plans {
    /// The limits of a plan; a custom plan has none of its own.
    pub fn of(&self, plan: Plan) -> EffectiveLimits {
        match plan {
            Plan::Free => self.free,
            Plan::Pro => self.pro,
            Plan::Team => self.team,
            Plan::Custom => EffectiveLimits { concurrent_tasks: 0, requests_per_minute: 0, gpus: None },
        }
    }

    /// Sets one plan from `NAME=CONCURRENT,RPM[,GPUS]`, e.g. `pro=10,60` or
    /// `team=25,120,16`.
    pub fn set(&mut self, spec: &str) -> Result<(), String> {
        let (name, values) =
            spec.split_once('=').ok_or_else(|| format!("{spec:?}: expected NAME=CONCURRENT,RPM[,GPUS]"))?;
        let slot = match name.trim() {
            "free" => &mut self.free,
            "pro" => &mut self.pro,
            "team" => &mut self.team,
            other => return Err(format!("{other:?} is not a plan with defaults (free, pro or team)")),
        };
        let numbers: Vec<&str> = values.split(',').map(str::trim).collect();
        let number = |i: usize, what: &str| -> Result<i64, String> {
            let n: i64 =
                numbers[i].parse().map_err(|_| format!("{spec:?}: {what} {:?} is not a number", numbers[i]))?;
            if n < 0 {
                return Err(format!("{spec:?}: {what} must not be negative"));
            }
            Ok(n)
        };
        if !(2..=3).contains(&numbers.len()) {
            return Err(format!("{spec:?}: expected NAME=CONCURRENT,RPM[,GPUS]"));
        }
        let concurrent = i32::try_from(number(0, "concurrent tasks")?).map_err(|e| e.to_string())?;
        let rpm = i32::try_from(number(1, "requests per minute")?).map_err(|e| e.to_string())?;
        if rpm == 0 {
            return Err(format!("{spec:?}: requests per minute must be at least 1"));
        }
        let gpus = if numbers.len() == 3 { Some(number(2, "GPUs")?) } else { None };
        *slot = EffectiveLimits { concurrent_tasks: concurrent, requests_per_minute: rpm, gpus };
        Ok(())
    }

    /// The table from repeated `--plan` values, on top of the defaults.
    pub fn from_flags<S: AsRef<str>>(flags: &[S]) -> Result<Self, String> {
        let mut plans = Self::default();
        for flag in flags {
            plans.set(flag.as_ref())?;
        }
        Ok(plans)
    }
}

impl GpuAccountSpec {
    /// The account's limits: its own where set, else its plan's.
    pub fn effective_limits(&self, plans: &Plans) -> EffectiveLimits {
        let plan = plans.of(self.plan);
        let limits = self.limits.clone().unwrap_or_default();
        EffectiveLimits {
            concurrent_tasks: limits.concurrent_tasks.unwrap_or(plan.concurrent_tasks),
            requests_per_minute: limits.requests_per_minute.unwrap_or(plan.requests_per_minute),
            gpus: limits.gpus.or(plan.gpus),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> GpuAccountSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn plans_default_to_the_seed_and_accounts_override_them() {
        let plans = Plans::default();
        let limits = |v| spec(v).effective_limits(&plans);
        assert_eq!(limits(serde_json::json!({"plan": "free"})).concurrent_tasks, 5);
        assert_eq!(limits(serde_json::json!({"plan": "pro"})).requests_per_minute, 60);
        assert_eq!(limits(serde_json::json!({"plan": "team"})).concurrent_tasks, 25);
        let own = limits(serde_json::json!({"plan": "team", "limits": {"concurrentTasks": 3, "gpus": 4}}));
        assert_eq!((own.concurrent_tasks, own.requests_per_minute, own.gpus), (3, 120, Some(4)));
    }

    #[test]
    fn an_operator_can_change_a_plan() {
        let plans = Plans::from_flags(&["free=2,10", "team=40,600,32"]).unwrap();
        assert_eq!(plans.free, EffectiveLimits { concurrent_tasks: 2, requests_per_minute: 10, gpus: None });
        assert_eq!(plans.team.gpus, Some(32));
        assert_eq!(plans.pro, Plans::default().pro, "unnamed plans keep their defaults");
        let custom =
            spec(serde_json::json!({"plan": "custom", "limits": {"concurrentTasks": 1, "requestsPerMinute": 5}}));
        assert_eq!(custom.effective_limits(&plans).concurrent_tasks, 1);
        for bad in ["gold=1,2", "free=1", "free=a,2", "free=1,2,3,4", "free=-1,2", "free=1,0", "free"] {
            assert!(Plans::from_flags(&[bad]).is_err(), "{bad} is refused");
        }
    }
}
