//! The pod a task runs as. Its name is derived from the task and attempt, so
//! creating it twice is harmless: the second create finds the first.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, Pod, PodSecurityContext, PodSpec, ResourceRequirements, SeccompProfile,
    SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use super::credits::FrozenPrice;
use crate::resources::{GpuTask, GpuTemplate, labels};

/// Annotation on a pod holding the price frozen at admission (JSON).
pub const PRICE_ANNOTATION: &str = "runplane.dev/price";
/// Container name of the workload.
pub const CONTAINER: &str = "task";

/// Settings of the pods the controller builds.
#[derive(Clone, Debug, PartialEq)]
pub struct PodConfig {
    /// GPU resource name for templates that name none.
    pub gpu_resource: String,
    /// UID the workload runs as (the pod runs as non-root).
    pub run_as_user: i64,
    /// URL of the gateway's progress callback, passed to the workload when set.
    pub callback_url: Option<String>,
}

impl Default for PodConfig {
    fn default() -> Self {
        Self { gpu_resource: crate::resources::DEFAULT_GPU_RESOURCE.into(), run_as_user: 1000, callback_url: None }
    }
}

/// Name of the pod of a task's attempt: the task's name for the first, then `-retry-N`.
pub fn pod_name(task: &str, attempt: i32) -> String {
    if attempt == 0 { task.to_string() } else { format!("{task}-retry-{attempt}") }
}

/// Builds the pod for `attempt` of `task`, charged to `account`.
/// `progress_token` authorizes the workload's progress callbacks.
pub fn desired_pod(
    task: &GpuTask,
    template: &GpuTemplate,
    account: &str,
    attempt: i32,
    config: &PodConfig,
    progress_token: Option<&str>,
) -> Pod {
    let spec = &template.spec;
    let task_name = task.metadata.name.clone().unwrap_or_default();
    let template_name = template.metadata.name.clone().unwrap_or_default();
    let resource = spec.gpu_resource(&config.gpu_resource).to_string();

    let mut pod_labels = spec.pod_metadata.labels.clone();
    pod_labels.insert(labels::TASK.into(), task_name.clone());
    pod_labels.insert(labels::ACCOUNT.into(), account.into());
    pod_labels.insert(labels::TEMPLATE.into(), template_name);
    pod_labels.insert(labels::ATTEMPT.into(), attempt.to_string());
    pod_labels.insert(labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into());

    let mut annotations = spec.pod_metadata.annotations.clone();
    let price = FrozenPrice::new(&spec.price, i64::from(spec.gpus));
    annotations.insert(PRICE_ANNOTATION.into(), serde_json::to_string(&price).expect("price serializes"));

    let mut env = spec.env.clone();
    let input = serde_json::to_string(&task.spec.input).expect("JSON value serializes");
    env.push(env_var("RUNPLANE_INPUT", input));
    env.push(env_var("RUNPLANE_TASK_ID", task_name.clone()));
    env.push(env_var("RUNPLANE_OUTPUT_PATH", "/dev/termination-log".into()));
    if let Some(url) = &config.callback_url {
        env.push(env_var(
            "RUNPLANE_CALLBACK_URL",
            format!("{}/v1/internal/tasks/{}/progress", url.trim_end_matches('/'), task_name),
        ));
    }
    if let Some(token) = progress_token {
        env.push(env_var("RUNPLANE_CALLBACK_TOKEN", token.into()));
    }

    let mut limits = BTreeMap::new();
    limits.insert(resource, Quantity(spec.gpus.to_string()));
    if let Some(cpu) = &spec.cpu {
        limits.insert("cpu".into(), cpu.clone());
    }
    if let Some(memory) = &spec.memory {
        limits.insert("memory".into(), memory.clone());
    }

    let owner = OwnerReference {
        api_version: GpuTask::api_version(&()).into(),
        kind: GpuTask::kind(&()).into(),
        name: task_name,
        uid: task.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };

    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(task.metadata.name.as_deref().unwrap_or_default(), attempt)),
            namespace: task.metadata.namespace.clone(),
            labels: Some(pod_labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            finalizers: Some(vec![labels::ACCOUNTING_FINALIZER.into()]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(task.timeout_seconds(spec)),
            node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
            tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
            service_account_name: spec.service_account_name.clone(),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(config.run_as_user),
                run_as_group: Some(config.run_as_user),
                seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
                ..Default::default()
            }),
            containers: vec![Container {
                name: CONTAINER.into(),
                image: Some(spec.image.clone()),
                command: (!spec.command.is_empty()).then(|| spec.command.clone()),
                args: (!spec.args.is_empty()).then(|| spec.args.clone()),
                env: Some(env),
                resources: Some(ResourceRequirements { limits: Some(limits), ..Default::default() }),
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    privileged: Some(false),
                    run_as_non_root: Some(true),
                    capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

fn env_var(name: &str, value: String) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value), value_from: None }
}

/// The price frozen on a pod; a pod without one (not ours) costs nothing.
pub fn frozen_price(pod: &Pod) -> FrozenPrice {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PRICE_ANNOTATION))
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

/// GPUs of `resource` that a pod requests (limits, as extended resources have no overcommit).
pub fn pod_gpus(pod: &Pod) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let Some(spec) = &pod.spec else { return out };
    for container in &spec.containers {
        let Some(limits) = container.resources.as_ref().and_then(|r| r.limits.as_ref()) else {
            continue;
        };
        for (name, quantity) in limits {
            if name.contains('/')
                && let Ok(n) = quantity.0.parse::<i64>()
            {
                *out.entry(name.clone()).or_default() += n;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{task, template};

    #[test]
    fn pod_runs_the_template_as_the_task_asks() {
        let t = task("t").build();
        let pod = desired_pod(&t, &template(), "acct", 0, &PodConfig::default(), Some("tok"));
        assert_eq!(pod.metadata.name.as_deref(), Some("t"));
        let labels = pod.metadata.labels.clone().unwrap();
        assert_eq!(labels[crate::resources::labels::TASK], "t");
        assert_eq!(labels[crate::resources::labels::ACCOUNT], "acct");
        assert_eq!(labels[crate::resources::labels::TEMPLATE], "tpl");
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("GpuTask", "t-uid", Some(true)));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.active_deadline_seconds, Some(60));
        let c = &spec.containers[0];
        assert_eq!(c.resources.as_ref().unwrap().limits.as_ref().unwrap()["nvidia.com/gpu"].0, "2");
        let env: BTreeMap<_, _> = c.env.iter().flatten().map(|e| (e.name.as_str(), e.value.clone().unwrap())).collect();
        assert_eq!(env["RUNPLANE_INPUT"], r#"{"prompt":"hello"}"#);
        assert_eq!(env["RUNPLANE_TASK_ID"], "t");
        assert_eq!(env["RUNPLANE_CALLBACK_TOKEN"], "tok");
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.as_ref().unwrap().drop, Some(vec!["ALL".to_string()]));
        assert_eq!(spec.security_context.as_ref().unwrap().run_as_non_root, Some(true));
        assert_eq!(frozen_price(&pod), FrozenPrice { per_run: 10, per_gpu_second: 0.5, gpus: 2 });
        assert_eq!(pod_gpus(&pod)["nvidia.com/gpu"], 2);
        assert!(pod.metadata.finalizers.unwrap().contains(&crate::resources::labels::ACCOUNTING_FINALIZER.to_string()));
    }

    #[test]
    fn retries_get_their_own_pod_name_and_the_task_timeout_wins() {
        assert_eq!(pod_name("t", 0), "t");
        assert_eq!(pod_name("t", 2), "t-retry-2");
        let mut t = task("t").build();
        t.spec.timeout_seconds = Some(5);
        let pod = desired_pod(
            &t,
            &template(),
            "acct",
            2,
            &PodConfig { gpu_resource: "amd.com/gpu".into(), ..Default::default() },
            None,
        );
        assert_eq!(pod.metadata.name.as_deref(), Some("t-retry-2"));
        assert_eq!(pod.spec.as_ref().unwrap().active_deadline_seconds, Some(5));
        assert!(pod_gpus(&pod).contains_key("amd.com/gpu"), "the controller's default resource is used");
    }
}
