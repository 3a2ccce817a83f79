//! Test-only builders for tasks, templates and pods in the states the
//! lifecycle and admission meet.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Pod,
    PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::domain::pod::{PodConfig, desired_pod};
use crate::resources::*;

pub fn ts(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

pub fn template() -> GpuTemplate {
    let mut t = GpuTemplate::new(
        "tpl",
        serde_json::from_value(serde_json::json!({
            "image": "example/worker:1",
            "gpus": 2,
            "timeoutSeconds": 60,
            "maxRetries": 1,
            "price": {"perRun": 10, "perGpuSecond": 0.5},
        }))
        .unwrap(),
    );
    t.metadata.namespace = Some("team-a".into());
    t.metadata.uid = Some("tpl-uid".into());
    t
}

pub struct TaskBuilder(GpuTask);

pub fn task(name: &str) -> TaskBuilder {
    let mut t = GpuTask::new(
        name,
        GpuTaskSpec {
            template_ref: TemplateRef { name: "tpl".into() },
            input: serde_json::json!({"prompt": "hello"}),
            webhook_url: None,
            webhook_on_cancel: false,
            priority: 0,
            timeout_seconds: None,
            cancel: false,
        },
    );
    t.metadata = ObjectMeta {
        name: Some(name.into()),
        namespace: Some("team-a".into()),
        uid: Some(format!("{name}-uid")),
        generation: Some(1),
        resource_version: Some("1".into()),
        creation_timestamp: Some(Time(ts(0))),
        ..Default::default()
    };
    TaskBuilder(t)
}

impl TaskBuilder {
    pub fn cancel(mut self) -> Self {
        self.0.spec.cancel = true;
        self
    }
    pub fn status(mut self, f: impl FnOnce(&mut GpuTaskStatus)) -> Self {
        let mut s = self.0.status.take().unwrap_or_default();
        f(&mut s);
        self.0.status = Some(s);
        self
    }
    pub fn build(self) -> GpuTask {
        self.0
    }
}

pub struct PodBuilder(Pod);

/// The pod runplane would create for `task`'s attempt, as created (no status).
pub fn pod_for(task: &GpuTask, attempt: i32) -> PodBuilder {
    let mut pod = desired_pod(task, &template(), "acct", attempt, &PodConfig::default(), None);
    pod.metadata.creation_timestamp = Some(Time(ts(1)));
    pod.metadata.resource_version = Some("10".into());
    pod.metadata.uid = Some("pod-uid".into());
    PodBuilder(pod)
}

fn container(state: ContainerState) -> ContainerStatus {
    ContainerStatus { name: "task".into(), state: Some(state), ..Default::default() }
}

impl PodBuilder {
    fn status(mut self, phase: &str, reason: Option<&str>, containers: Vec<ContainerStatus>) -> Self {
        self.0.status = Some(PodStatus {
            phase: Some(phase.into()),
            reason: reason.map(Into::into),
            start_time: Some(Time(ts(2))),
            container_statuses: Some(containers),
            ..Default::default()
        });
        self
    }
    pub fn running(self, started: i64) -> Self {
        let state = ContainerState {
            running: Some(ContainerStateRunning { started_at: Some(Time(ts(started))) }),
            ..Default::default()
        };
        self.status("Running", None, vec![container(state)])
    }
    pub fn terminated(
        self,
        phase: &str,
        reason: Option<&str>,
        exit: i32,
        started: i64,
        ended: i64,
        message: &str,
    ) -> Self {
        let state = ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: exit,
                started_at: Some(Time(ts(started))),
                finished_at: Some(Time(ts(ended))),
                message: Some(message.into()).filter(|m: &String| !m.is_empty()),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.status(phase, reason, vec![container(state)])
    }
    pub fn succeeded(self, started: i64, ended: i64, message: &str) -> Self {
        self.terminated("Succeeded", None, 0, started, ended, message)
    }
    pub fn failed(self, reason: Option<&str>, exit: i32, started: i64, ended: i64, message: &str) -> Self {
        self.terminated("Failed", reason, exit, started, ended, message)
    }
    /// Failed before its container ever started (no container start time),
    /// as a pod stopped while pulling its image ends.
    pub fn failed_unstarted(self, reason: Option<&str>, exit: i32, ended: i64) -> Self {
        let state = ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: exit,
                reason: Some("ContainerStatusUnknown".into()),
                finished_at: Some(Time(ts(ended))),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.status("Failed", reason, vec![container(state)])
    }
    pub fn waiting(self, reason: &str) -> Self {
        let state = ContainerState {
            waiting: Some(ContainerStateWaiting { reason: Some(reason.into()), message: Some("back-off".into()) }),
            ..Default::default()
        };
        self.status("Pending", None, vec![container(state)])
    }
    /// Pending, bound to a node at `at` (seconds), its container not started.
    pub fn placed(mut self, at: i64) -> Self {
        self.0.spec.get_or_insert_default().node_name = Some("gpu-1".into());
        self.0.status = Some(PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "True".into(),
                last_transition_time: Some(Time(ts(at))),
                ..Default::default()
            }]),
            ..Default::default()
        });
        self
    }
    pub fn unschedulable(mut self) -> Self {
        self.0.status = Some(PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                message: Some("0/4 nodes are available: 4 Insufficient nvidia.com/gpu.".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        self
    }
    pub fn deleting(mut self, requested: i64) -> Self {
        self.0.metadata.deletion_timestamp = Some(Time(ts(requested + 30)));
        self.0.metadata.deletion_grace_period_seconds = Some(30);
        self
    }
    pub fn build(self) -> Pod {
        self.0
    }
}

impl From<GpuTask> for TaskBuilder {
    fn from(task: GpuTask) -> Self {
        TaskBuilder(task)
    }
}
