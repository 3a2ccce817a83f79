use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The GPU resource name used when a template names none.
pub const DEFAULT_GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Timeout of a task whose template and task name none.
pub const DEFAULT_TIMEOUT_SECONDS: i64 = 3600;
/// Most retries a template may allow (`maxRetries`), so a task has at most
/// `MAX_RETRIES + 1` pods.
pub const MAX_RETRIES: i32 = 10;

/// A saved compute template: what a GpuTask runs, on how many GPUs, for how
/// long and at what price. Tasks refer to it by name in the same namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "runplane.dev",
    version = "v1alpha1",
    kind = "GpuTemplate",
    namespaced,
    shortname = "gtpl",
    category = "runplane",
    status = "GpuTemplateStatus",
    doc = "A saved GPU compute template that GpuTasks run.",
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image"),
    printcolumn(name = "GPUs", type_ = "integer", json_path = ".spec.gpus"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Timeout", type_ = "integer", json_path = ".spec.timeoutSeconds", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct GpuTemplateSpec {
    /// Container image that runs the task.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Entrypoint of the container; the image's when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub command: Vec<String>,
    /// Arguments to the entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 4096)))]
    pub args: Vec<String>,
    /// Environment of the container. RUNPLANE_INPUT and RUNPLANE_TASK_ID are set by runplane and cannot be overridden.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    #[x_kube(validation = kube::core::Rule::new("self.all(e, !e.name.startsWith('RUNPLANE_'))").message("environment variables starting with RUNPLANE_ are reserved"))]
    #[x_kube(validation = kube::core::Rule::new("self.all(e, size(e.name) <= 256 && (!has(e.value) || size(e.value) <= 32768))").message("environment variable names are at most 256 characters and values at most 32768"))]
    pub env: Vec<EnvVar>,
    /// Number of GPUs each task's pod requests.
    #[serde(default = "default_gpus")]
    #[schemars(range(min = 1, max = 64))]
    pub gpus: i32,
    /// Extended resource name of the GPU; the controller's --gpu-resource when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 3, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
    )]
    pub gpu_resource: Option<String>,
    /// CPU request and limit of the pod, e.g. "4" or "500m".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = positive_quantity())]
    pub cpu: Option<Quantity>,
    /// Memory request and limit of the pod, e.g. "16Gi".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = positive_quantity())]
    pub memory: Option<Quantity>,
    /// Node labels the pod must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = kube::core::Rule::new("self.all(k, size(k) <= 317 && size(self[k]) <= 63)").message("label keys are at most 317 characters and values at most 63"))]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the pod, e.g. for tainted GPU nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("self.all(t, (!has(t.key) || size(t.key) <= 317) && (!has(t.value) || size(t.value) <= 63))").message("toleration keys are at most 317 characters and values at most 63"))]
    pub tolerations: Vec<Toleration>,
    /// Labels and annotations added to each task's pod.
    #[serde(default, skip_serializing_if = "PodMetadata::is_empty")]
    pub pod_metadata: PodMetadata,
    /// Service account of the pod; the namespace's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub service_account_name: Option<String>,
    /// JSON Schema (draft 2020-12) that a task's input must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::optional_free_object")]
    pub input_schema: Option<serde_json::Value>,
    /// Longest a task may run, in seconds, once its pod started (the pod's activeDeadlineSeconds).
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 604800))]
    pub timeout_seconds: i64,
    /// How often a task is retried after a failure that is not its own (node lost, evicted, pod deleted).
    #[serde(default)]
    #[schemars(range(min = 0, max = MAX_RETRIES))]
    pub max_retries: i32,
    /// Credits charged per task.
    #[serde(default, skip_serializing_if = "Price::is_free")]
    pub price: Price,
    /// Names under which the gateway's /openapi/v2/{model}/{action} finds this template, as "model/action".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(length(min = 3, max = 201), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub aliases: Vec<String>,
    /// Webhook URL for tasks that name none (http or https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = kube::core::Rule::new("isURL(self) && (self.startsWith('https://') || self.startsWith('http://'))").message("must be an http or https URL"))]
    pub webhook_url: Option<String>,
}

/// A well-formed, positive resource quantity such as "500m", "4" or "16Gi".
fn positive_quantity() -> kube::core::Rule {
    kube::core::Rule::new(
        "string(self).matches('^[+]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?$') && !string(self).matches('^[+]?[0.]*([eE].*|[A-Za-z]+)?$')",
    )
    .message("must be a positive quantity such as 500m, 4 or 16Gi")
}

fn default_gpus() -> i32 {
    1
}

fn default_timeout() -> i64 {
    DEFAULT_TIMEOUT_SECONDS
}

/// Labels and annotations for a task's pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodMetadata {
    /// Labels added to the pod (runplane's own labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = kube::core::Rule::new("self.all(k, size(k) <= 317 && size(self[k]) <= 63)").message("label keys are at most 317 characters and values at most 63"))]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = kube::core::Rule::new("self.all(k, size(k) <= 317 && size(self[k]) <= 4096)").message("annotation keys are at most 317 characters and values at most 4096"))]
    pub annotations: BTreeMap<String, String>,
}

impl PodMetadata {
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.annotations.is_empty()
    }
}

/// What a task costs, in credits.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Price {
    /// Credits charged for every task that started; an account must hold this many to start a task.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000000000))]
    pub per_run: i64,
    /// Credits per GPU-second of run time, added to perRun (the sum is rounded up).
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1000000.0))]
    pub per_gpu_second: f64,
}

impl Price {
    pub fn is_free(&self) -> bool {
        self.per_run == 0 && self.per_gpu_second == 0.0
    }
}

impl GpuTemplateSpec {
    /// The GPU resource name, given the controller's default.
    pub fn gpu_resource<'a>(&'a self, default: &'a str) -> &'a str {
        self.gpu_resource.as_deref().unwrap_or(default)
    }
}

/// What the controller found of a template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuTemplateStatus {
    /// Ready: whether tasks can run from this template (its inputSchema compiles).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
