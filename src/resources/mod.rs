//! The three custom resources of `runplane.dev/v1alpha1` and the vocabulary
//! (labels, condition types, reasons, error codes) shared by the controller
//! and the gateway.
//!
//! ```text
//!   GpuAccount (cluster) ──owns namespaces──▶ GpuTemplate (ns) ◀──templateRef── GpuTask (ns)
//!        ▲ credits, limits                                                         │ owns
//!        └──────────────────── charged once, when the task ends ◀── Pod (nvidia.com/gpu)
//! ```
//!
//! These types are the single source of the CRD YAML in `crds/`; nothing
//! here talks to the API server.

// `printcolumn(...)` repeats keys by design.
#![allow(clippy::duplicated_attributes)]

mod account;
mod schema;
mod task;
mod template;

pub use account::*;
pub use task::*;
pub use template::*;

use kube::CustomResourceExt;

/// The API group of every runplane resource.
pub const GROUP: &str = "runplane.dev";

/// Labels and annotations that runplane puts on the objects it creates.
pub mod labels {
    /// On a pod: the name of the GpuTask it runs.
    pub const TASK: &str = "runplane.dev/task";
    /// On a pod: the GpuAccount charged for it.
    pub const ACCOUNT: &str = "runplane.dev/account";
    /// On a pod: the GpuTemplate it was built from.
    pub const TEMPLATE: &str = "runplane.dev/template";
    /// On a pod: which attempt of the task this pod is (0 for the first).
    pub const ATTEMPT: &str = "runplane.dev/attempt";
    /// On every object runplane creates.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const MANAGED_BY_VALUE: &str = "runplane";
    /// On a task: set (to any new value) to send its webhook again.
    pub const REDELIVER: &str = "runplane.dev/webhook-redeliver";
    /// Finalizer on task pods: the pod is not let go before its task is accounted.
    pub const ACCOUNTING_FINALIZER: &str = "runplane.dev/accounting";
}

/// Field managers for server-side apply.
pub mod managers {
    pub const CONTROLLER: &str = "runplane.dev/controller";
    pub const API: &str = "runplane.dev/api";
    pub const WEBHOOKS: &str = "runplane.dev/webhooks";
}

/// Condition types on a GpuTask.
pub mod conditions {
    /// True once a pod has been created for the task.
    pub const ADMITTED: &str = "Admitted";
    /// True once the task reached a terminal phase; the reason says which.
    pub const FINISHED: &str = "Finished";
    /// On a GpuTemplate: tasks can run from it.
    pub const READY: &str = "Ready";
}

/// The error codes of the RunKey wire format, used on task status and over HTTP.
pub mod codes {
    pub const INVALID_API_KEY: i32 = 40001;
    pub const INSUFFICIENT_CREDITS: i32 = 40002;
    pub const RATE_LIMITED: i32 = 40003;
    pub const TEMPLATE_NOT_FOUND: i32 = 40004;
    pub const INVALID_INPUT: i32 = 40005;
    pub const TASK_NOT_FOUND: i32 = 40006;
    pub const INTERNAL: i32 = 50001;
    pub const GPU_UNAVAILABLE: i32 = 50002;
    pub const TIMEOUT: i32 = 50003;
}

/// Every CRD, in a stable order, as `runplane crds` prints and `crds/` holds them.
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    vec![GpuAccount::crd(), GpuTemplate::crd(), with_queued_default(GpuTask::crd())]
}

/// A new GpuTask reads as Queued from the moment it is created: the
/// apiserver applies the status default when it serves the object, so this
/// costs no write per task (most tasks go from here straight to Running).
fn with_queued_default(
    mut crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON;
    for version in &mut crd.spec.versions {
        let status = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("status"));
        if let Some(status) = status {
            status.default = Some(JSON(serde_json::json!({ "phase": TaskPhase::Queued.as_str() })));
        }
    }
    crd
}

/// The CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd).expect("a CRD always serializes"));
    }
    out
}
