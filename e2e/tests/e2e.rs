//! End-to-end: the controller against the real local control plane
//! (etcd, kube-apiserver, kube-scheduler, kube-controller-manager, kwok).
//! Run with `make test` (which starts the cluster) or
//! `cargo test --test e2e` with the cluster up.

// Each test holds the cluster (a std mutex, see support::serial) for its
// whole run, on its own runtime and thread: holding it across awaits is the point.
#![allow(clippy::await_holding_lock)]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use runplane::resources::{GpuTask, TaskPhase, WaitReason, codes};
use serde_json::json;
use support::*;

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn sample_from_deploy_examples_completes_with_output() {
    let _cluster = serial();
    sweep().await;
    let controller = Controller::start(&[]).await;
    let examples = repo().join("deploy/examples");
    let (ok, out) = kubectl(&["apply", "-f", &path_str(&examples)], None);
    assert!(ok, "kubectl apply of the examples: {out}");
    let client = client().await;
    let tasks: Api<runplane::resources::GpuTask> = Api::namespaced(client.clone(), "demo");
    let task = wait_for("the sample task to complete", MINUTE, || {
        let tasks = tasks.clone();
        async move { tasks.get("portrait-1").await.ok().filter(|t| t.is_terminal()) }
    })
    .await;
    let status = task.status.clone().unwrap();
    assert_eq!(status.phase, Some(TaskPhase::Completed), "{status:?}");
    assert_eq!(status.output.unwrap()["result_url"], "https://cdn.example.com/results/portrait.png");
    assert!(status.credits_used.unwrap() >= 10);
    assert!(status.processing_time.unwrap() >= 2.0);
    let (ok, out) = kubectl(&["get", "gt", "-n", "demo"], None);
    assert!(ok && out.contains("Completed") && out.contains("portrait-fix"), "{out}");
    let (ok, out) = kubectl(&["describe", "gt", "-n", "demo", "portrait-1"], None);
    assert!(ok && out.contains("Admitted") && out.contains("Completed"), "the conditions tell the story: {out}");
    // The finished pod stays for its logs, released: garbage collection
    // removes it with the task.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "demo");
    let pod =
        wait_for("the finished pod to be released", MINUTE, || {
            let pods = pods.clone();
            async move {
                pods.get("portrait-1").await.ok().filter(|p| !p.finalizers().iter().any(|f| f.contains("runplane")))
            }
        })
        .await;
    assert_eq!(pod.status.unwrap().phase.as_deref(), Some("Succeeded"));
    assert!(pod.metadata.deletion_timestamp.is_none());
    let metrics = controller.metrics().await;
    assert!(metrics.contains("runplane_tasks{phase=\"Completed\"}"), "{metrics}");
    assert!(metrics.contains("runplane_admissions_total"), "{metrics}");
    // Everything the examples made but runplane's own namespace, which
    // later suites (the chart's) use.
    for file in ["task.yaml", "template.yaml", "seed-templates.yaml", "account.yaml", "webhook-secret.yaml"] {
        let (ok, out) = kubectl(&["delete", "-f", &path_str(&examples.join(file)), "--wait=false"], None);
        assert!(ok, "{out}");
    }
    let (ok, out) = kubectl(&["delete", "namespace", "demo", "--wait=false"], None);
    assert!(ok, "{out}");
}

#[tokio::test]
async fn metrics_describe_tasks_gpus_and_reconciles() {
    let _cluster = serial();
    sweep().await;
    let controller = Controller::start(&[]).await;
    let offered: i64 = node_gpus().await.values().sum();
    let tenant = Tenant::new("metrics", "pro", 1000).await;
    let gpu = [("resource", "nvidia.com/gpu")];
    // A task holding 2 GPUs shows in the gauge while it runs.
    tenant.template("hold", "forever", json!({"gpus": 2})).await;
    tenant.task("hold", "hold", json!({})).await;
    tenant.wait_phase("hold", TaskPhase::Running, MINUTE).await;
    wait_for("runplane_gpus_in_use to be 2", MINUTE, || async {
        (metric(&controller.metrics().await, "runplane_gpus_in_use", &gpu) == Some(2.0)).then_some(())
    })
    .await;
    tenant.cancel("hold").await;
    tenant.wait_phase("hold", TaskPhase::Canceled, MINUTE).await;
    // One that completes.
    tenant.template("work", "2s", json!({"price": {"perRun": 1}})).await;
    tenant.task("work", "work", json!({})).await;
    let run = tenant.wait_phase("work", TaskPhase::Completed, MINUTE).await.status.unwrap().processing_time.unwrap();
    // Counts by phase are refreshed every second, not on every change.
    let text = wait_for("the gauges to show no GPU in use and the finished tasks", MINUTE, || async {
        let text = controller.metrics().await;
        let finished = ["Completed", "Canceled"]
            .iter()
            .all(|p| metric(&text, "runplane_tasks", &[("phase", p)]).is_some_and(|n| n >= 1.0));
        (metric(&text, "runplane_gpus_in_use", &gpu) == Some(0.0) && finished).then_some(text)
    })
    .await;
    let value = |name: &str, labels: &[(&str, &str)]| {
        metric(&text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{text}"))
    };
    for phase in ["Queued", "Running", "Completed", "Failed", "Canceled"] {
        value("runplane_tasks", &[("phase", phase)]);
    }
    assert!(value("runplane_tasks", &[("phase", "Completed")]) >= 1.0, "{text}");
    assert!(value("runplane_tasks", &[("phase", "Canceled")]) >= 1.0, "{text}");
    assert_eq!(value("runplane_gpu_quota", &gpu), offered as f64, "the quota is the nodes' GPUs: {text}");
    assert!(value("runplane_admissions_total", &[]) >= 2.0, "{text}");
    assert!(value("runplane_queue_wait_seconds_count", &[]) >= 2.0, "{text}");
    assert!(value("runplane_queue_wait_seconds_sum", &[]) >= 0.0, "{text}");
    // Both finished runs are observed: the canceled one and the 2 s one.
    assert!(value("runplane_task_run_seconds_count", &[]) >= 2.0, "{text}");
    assert!(value("runplane_task_run_seconds_sum", &[]) >= run, "{text}");
    let reconciles = value("runplane_reconcile_total", &[]);
    assert!(reconciles >= 2.0, "{text}");
    let timed = value("runplane_reconcile_duration_seconds_count", &[]);
    assert!(timed >= 1.0 && timed <= reconciles, "{timed} timed of {reconciles} reconciles: {text}");
    // Only benign races (a stale write, an object already gone) may fail.
    let errors = metric_sum(&text, "runplane_reconcile_errors_total").unwrap_or(0.0);
    let benign = ["conflict", "not_found"]
        .iter()
        .filter_map(|c| metric(&text, "runplane_reconcile_errors_total", &[("category", c)]))
        .sum::<f64>();
    assert_eq!(errors, benign, "reconcile errors: {text}");
    assert!(errors < reconciles, "{text}");
    tenant.cleanup().await;
}

#[tokio::test]
async fn twelve_tasks_on_a_free_account_never_run_more_than_five_at_once() {
    let _cluster = serial();
    sweep().await;
    let _controller = Controller::start(&[]).await;
    let tenant = Tenant::new("free", "free", 1000).await;
    let (per_run, per_gpu_second) = (3, 1.25);
    tenant.template("short", "2s", json!({"price": {"perRun": per_run, "perGpuSecond": per_gpu_second}})).await;
    for i in 0..12 {
        tenant.task(&format!("t{i}"), "short", json!({})).await;
    }
    let (all_done, most) = tenant.finish_all(2 * MINUTE, 0).await;
    assert!(most <= 5, "{most} pods ran at once on a free account");
    assert!(most >= 2, "tasks ran in parallel ({most})");
    assert!(all_done.iter().all(|t| t.phase() == Some(TaskPhase::Completed)));
    // Each task costs its run: the per-run price plus 1 GPU × its seconds,
    // rounded up (a price of 1.25 makes whole seconds cost a fraction).
    // processingTime is rounded to the millisecond, so the run lasted within
    // half a millisecond of it.
    let cost = |seconds: f64| per_run + ((per_gpu_second * seconds * 1e6).round() / 1e6).ceil() as i64;
    for t in &all_done {
        let s = t.status.as_ref().unwrap();
        let (credits, seconds) = (s.credits_used.unwrap(), s.processing_time.unwrap());
        assert!(seconds > 0.0 && credits > per_run, "{}: {credits} credits for {seconds} s", t.name_any());
        assert!(
            (cost(seconds - 0.0005)..=cost(seconds + 0.0005)).contains(&credits),
            "{}: {credits} credits for {seconds} s at {per_run} + {per_gpu_second}/GPU-s",
            t.name_any()
        );
    }
    // Charged exactly once each: the account's total is the sum over tasks.
    let total: i64 = all_done.iter().map(|t| t.status.as_ref().unwrap().credits_used.unwrap()).sum();
    let account = wait_for("the account to record its charges", MINUTE, || async {
        Some(tenant.account().await).filter(|a| a.credits_used() == total)
    })
    .await;
    assert_eq!(account.balance(), 1000 - total);
    tenant.cleanup().await;
}

#[tokio::test]
async fn queued_tasks_are_not_written_while_others_finish() {
    let _cluster = serial();
    sweep().await;
    let _controller = Controller::start(&[]).await;
    let tenant = Tenant::with_spec(
        "writes",
        json!({"plan": "custom", "credits": 100_000, "limits": {"concurrentTasks": 1, "requestsPerMinute": 60}}),
    )
    .await;
    let changes = Recorder::start(tenant.tasks(), "").await;
    tenant.template("work", "2s", json!({})).await;
    for i in 0..5 {
        tenant.task(&format!("t{i}"), "work", json!({})).await;
    }
    let (tasks, most) = tenant.finish_all(2 * MINUTE, 0).await;
    assert_eq!(most, 1, "one at a time");
    assert!(tasks.iter().all(|t| t.phase() == Some(TaskPhase::Completed)));
    // Every write to a task, in order. Once a task waits on its account's
    // limit, the next write to it is its own admission: the other tasks
    // finishing (one, two or more of them) changes nothing on it.
    let changes = changes.changes();
    let mut waited = 0;
    for task in &tasks {
        let name = task.name_any();
        let writes: Vec<&GpuTask> = changes.iter().map(|c| &c.object).filter(|t| t.name_any() == name).collect();
        let waiting = |t: &GpuTask| {
            let s = t.status.as_ref();
            t.phase() == Some(TaskPhase::Queued)
                && s.is_some_and(|s| s.wait_reason == Some(WaitReason::AccountLimit) && s.pod_name.is_none())
        };
        let Some(first) = writes.iter().position(|t| waiting(t)) else { continue };
        waited += 1;
        let next = writes.get(first + 1).expect("the waiting task was admitted later");
        let status = next.status.clone().unwrap_or_default();
        assert!(
            status.pod_name.is_some(),
            "{name} was written while it waited (resourceVersion {:?} → {:?}): {status:?}",
            writes[first].resource_version(),
            next.resource_version()
        );
    }
    assert!(waited >= 3, "only {waited} of 5 tasks waited on the limit of 1");
    tenant.cleanup().await;
}

#[tokio::test]
async fn cluster_gpu_quota_holds_across_two_accounts() {
    let _cluster = serial();
    sweep().await;
    let _controller = Controller::start(&[]).await;
    let nodes = node_gpus().await;
    let quota: i64 = nodes.values().sum();
    // A task takes a whole node (the smallest), so a wave of `wave` tasks
    // fills the cluster.
    let per_task = nodes.values().copied().min().unwrap_or(0);
    assert!(per_task > 0, "the fake nodes offer GPUs: {nodes:?}");
    let wave = quota / per_task;
    let a = Tenant::new("quota-a", "team", 100_000).await;
    let b = Tenant::new("quota-b", "team", 100_000).await;
    // One watch of both tenants' pods: the GPUs they held together, exactly.
    let pods = Recorder::start(Api::<Pod>::all(a.client.clone()), TASK_PODS).await;
    // A queues two cluster-fulls, then B one: B must not wait behind all of A.
    for (tenant, count) in [(&a, 2 * wave), (&b, wave)] {
        tenant.template("big", "3s", json!({"gpus": per_task})).await;
        for i in 0..count {
            tenant.task(&format!("t{i}"), "big", json!({})).await;
        }
    }
    for tenant in [&a, &b] {
        tenant.finish_all(2 * MINUTE, 0).await;
    }
    let ours: Vec<_> = pods
        .changes()
        .into_iter()
        .filter(|c| [&a.name, &b.name].contains(&&c.object.namespace().unwrap_or_default()))
        .collect();
    assert_eq!(holding(&ours), Vec::<String>::new(), "every pod ended");
    let most_gpus = peak_held(&ours, pod_gpus);
    assert!(most_gpus <= quota, "{most_gpus} GPUs in use > quota {quota}");
    assert_eq!(most_gpus, quota, "a wave fills the cluster");
    let mut starts = Vec::new();
    for tenant in [&a, &b] {
        let tasks = tenant.tasks().list(&ListParams::default()).await.unwrap().items;
        assert!(tasks.iter().all(|t| t.phase() == Some(TaskPhase::Completed)));
        starts.push(tasks.iter().filter_map(|t| Some(t.status.as_ref()?.started_at.as_ref()?.0)).collect::<Vec<_>>());
    }
    // Waves are 3 s apart: in strict arrival order B's first task would
    // start after A's last; sharing fairly, it starts in the second wave.
    let (last_a, first_b) = (starts[0].iter().max().unwrap(), starts[1].iter().min().unwrap());
    assert!(first_b < last_a, "B's first start {first_b} is not before A's last {last_a} (fair share)");
    for tenant in [a, b] {
        tenant.cleanup().await;
    }
}

#[tokio::test]
async fn gpu_quota_flag_caps_gpus_below_what_the_nodes_offer() {
    let _cluster = serial();
    sweep().await;
    let nodes = node_gpus().await;
    let offered: i64 = nodes.values().sum();
    let quota = 3.min(offered - 1);
    assert!(quota >= 1, "the nodes offer more than one GPU: {nodes:?}");
    let controller = Controller::start(&[&format!("--gpu-quota={quota}")]).await;
    let tenant = Tenant::with_spec(
        "gpuquota",
        json!({"plan": "custom", "credits": 100_000, "limits": {"concurrentTasks": 20, "requestsPerMinute": 60}}),
    )
    .await;
    tenant.template("one", "2s", json!({})).await;
    for i in 0..8 {
        tenant.task(&format!("t{i}"), "one", json!({})).await;
    }
    let (tasks, _) = tenant.finish_all(2 * MINUTE, 0).await;
    assert!(tasks.iter().all(|t| t.phase() == Some(TaskPhase::Completed)));
    let most = tenant.peak_gpus();
    assert!(most <= quota, "{most} GPUs in use with --gpu-quota={quota}");
    assert_eq!(most, quota, "the quota is used in full");
    let text = controller.metrics().await;
    assert_eq!(metric(&text, "runplane_gpu_quota", &[("resource", "nvidia.com/gpu")]), Some(quota as f64), "{text}");
    tenant.cleanup().await;
}

#[tokio::test]
async fn the_gpu_quota_follows_a_node_change_at_once() {
    let _cluster = serial();
    sweep().await;
    // A node of its own GPU resource, which nothing else counts or uses; no
    // kwok annotation, so its status is what this test writes, and no room
    // for pods ("pods" is not allocatable).
    let nodes: Api<Node> = Api::all(client().await);
    let name = "quota-probe";
    let resource = "example.com/probe-gpu";
    let _ = nodes.delete(name, &DeleteParams::default()).await;
    let node = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})).unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let offer = |gpus: i64| {
        let nodes = nodes.clone();
        async move {
            let now = jiff::Timestamp::now().to_string();
            let status = json!({"status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "Probe", "message": "test node",
                                "lastHeartbeatTime": now, "lastTransitionTime": now}],
                "capacity": {resource: gpus.to_string()}, "allocatable": {resource: gpus.to_string()}}});
            nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
        }
    };
    offer(4).await;
    let controller = Controller::start(&[]).await;
    let quota = |want: f64| {
        let controller = &controller;
        async move {
            let text = controller.metrics().await;
            (metric(&text, "runplane_gpu_quota", &[("resource", resource)]) == Some(want)).then_some(())
        }
    };
    wait_for("the probe node's 4 GPUs in the quota", MINUTE, || quota(4.0)).await;
    // Admission rebuilds everything once a minute; a node's change must not
    // wait for that.
    offer(6).await;
    wait_for("the probe node's 6 GPUs in the quota", Duration::from_secs(20), || quota(6.0)).await;
    nodes.delete(name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn cancel_stops_the_pod_and_charges_what_ran() {
    let _cluster = serial();
    sweep().await;
    let _controller = Controller::start(&[]).await;
    let tenant = Tenant::new("cancel", "pro", 1000).await;
    tenant.template("forever", "forever", json!({"price": {"perRun": 5, "perGpuSecond": 1}})).await;
    tenant.task("long", "forever", json!({})).await;
    tenant.wait_phase("long", TaskPhase::Running, MINUTE).await;
    tenant.cancel("long").await;
    let task = tenant.wait_phase("long", TaskPhase::Canceled, MINUTE).await;
    assert!(task.status.unwrap().credits_used.unwrap() >= 5, "a started task is charged");
    let pods = tenant.pods();
    wait_for("the canceled task's pod to be gone", MINUTE, || {
        let pods = pods.clone();
        async move { pods.get_opt("long").await.ok().filter(|p| p.is_none()).map(|_| ()) }
    })
    .await;
    // Canceling a queued task: never started, never charged.
    let queued = Tenant::with_spec(
        "cancel-q",
        json!({"plan": "custom", "credits": 100, "limits": {"concurrentTasks": 0, "requestsPerMinute": 10}}),
    )
    .await;
    queued.template("forever", "forever", json!({})).await;
    queued.task("waiting", "forever", json!({})).await;
    let t = wait_for("the task to wait on its account limit", MINUTE, || async {
        Some(queued.get("waiting").await)
            .filter(|t| t.status.as_ref().and_then(|s| s.wait_reason) == Some(WaitReason::AccountLimit))
    })
    .await;
    assert_eq!(t.phase(), Some(TaskPhase::Queued));
    queued.cancel("waiting").await;
    let t = queued.wait_phase("waiting", TaskPhase::Canceled, MINUTE).await;
    assert_eq!(t.status.unwrap().credits_used, Some(0));
    tenant.cleanup().await;
    queued.cleanup().await;
}

#[tokio::test]
async fn timeout_fails_with_50003() {
    let _cluster = serial();
    sweep().await;
    let _controller = Controller::start(&[]).await;
    let tenant = Tenant::new("timeout", "pro", 1000).await;
    tenant.template("slow", "forever", json!({"timeoutSeconds": 2})).await;
    tenant.task("slow", "slow", json!({})).await;
    let task = tenant.wait_phase("slow", TaskPhase::Failed, MINUTE).await;
    let status = task.status.unwrap();
    assert_eq!(status.error_code, Some(codes::TIMEOUT), "{status:?}");
    assert!(status.error_message.unwrap().contains("timeout"));
    tenant.cleanup().await;
}

#[tokio::test]
async fn routine_events_stay_within_their_budget_and_failures_always_get_one() {
    let _cluster = serial();
    sweep().await;
    // A budget of two routine events, refilled one every 100 s: the first
    // tasks' transitions use it up, the rest are left out and counted. Each
    // 1 s task shows Running (and gets its Started event) at once.
    let controller =
        Controller::start(&["--transition-event-rate=0.01", "--transition-event-burst=2", "--running-status-delay=0s"])
            .await;
    let tenant = Tenant::new("budget", "pro", 1000).await;
    tenant.template("quick", "1s", json!({})).await;
    tenant.template("crash", "1s", json!({"podMetadata": {"annotations": {"e2e.runplane.dev/exit-code": "3"}}})).await;
    let names: Vec<String> = (0..6).map(|i| format!("quick-{i}")).collect();
    for name in &names {
        tenant.task(name, "quick", json!({})).await;
    }
    for name in &names {
        tenant.wait_phase(name, TaskPhase::Completed, MINUTE).await;
    }
    // Then a failure: its event is recorded although the budget is spent.
    tenant.task("crash", "crash", json!({})).await;
    tenant.wait_phase("crash", TaskPhase::Failed, MINUTE).await;
    wait_for("the failure's event", MINUTE, || {
        let name = tenant.name.clone();
        async move { Some(task_events(&name, "crash").await).filter(|e| e.iter().any(|(r, _)| r == "Failed")) }
    })
    .await;
    let mut routine = Vec::new();
    for name in &names {
        let events = task_events(&tenant.name, name).await;
        routine.extend(
            events.into_iter().filter(|(r, _)| ["Queued", "Admitted", "Started", "Completed"].contains(&r.as_str())),
        );
    }
    // Six tasks have at least twelve routine transitions (started,
    // completed; queued if one had to wait): two were recorded, the rest
    // left out and counted.
    let dropped = metric_line(&controller.metrics().await, "runplane_events_dropped_total").unwrap_or(0.0);
    assert_eq!(routine.len(), 2, "the budget's two routine events: {routine:?}");
    assert!(dropped >= 10.0, "{dropped} routine events counted as left out");
    tenant.cleanup().await;
}

#[tokio::test]
async fn failures_map_to_error_codes() {
    let _cluster = serial();
    sweep().await;
    let _controller = Controller::start(&[]).await;
    let biggest = node_gpus().await.values().copied().max().unwrap_or(0);
    let tenant = Tenant::new("fail", "pro", 1000).await;
    // The workload exits non-zero: Failed with its message.
    tenant
        .template("crash", "1s", json!({"podMetadata": {"annotations": {"e2e.runplane.dev/exit-code": "3", "e2e.runplane.dev/message": "CUDA error: out of memory"}}}))
        .await;
    tenant.task("crash", "crash", json!({})).await;
    // More GPUs than any node has: the real scheduler leaves it Pending → 50002.
    tenant.template("huge", "1s", json!({"gpus": biggest + 1})).await;
    tenant.task("huge", "huge", json!({})).await;
    // The image cannot be pulled: fails fast after the start deadline.
    tenant
        .template(
            "badimage",
            "1s",
            json!({"podMetadata": {"annotations": {"e2e.runplane.dev/waiting-reason": "ImagePullBackOff"}}}),
        )
        .await;
    tenant.task("badimage", "badimage", json!({})).await;
    // Input that does not match the template's schema: 40005 without a pod.
    tenant.template("strict", "1s", json!({"inputSchema": {"type": "object", "required": ["image_url"]}})).await;
    tenant.task("bad-input", "strict", json!({})).await;

    let crash = tenant.wait_phase("crash", TaskPhase::Failed, MINUTE).await.status.unwrap();
    assert_eq!(crash.error_code, Some(codes::INTERNAL));
    assert!(crash.error_message.unwrap().contains("out of memory"));
    let huge = tenant.wait_phase("huge", TaskPhase::Failed, MINUTE).await.status.unwrap();
    assert_eq!(huge.error_code, Some(codes::GPU_UNAVAILABLE), "{huge:?}");
    assert_eq!(huge.credits_used, Some(0));
    let bad = tenant.wait_phase("badimage", TaskPhase::Failed, MINUTE).await.status.unwrap();
    assert!(bad.error_message.unwrap().contains("ImagePullBackOff"));
    let input = tenant.wait_phase("bad-input", TaskPhase::Failed, MINUTE).await.status.unwrap();
    assert_eq!(input.error_code, Some(codes::INVALID_INPUT));
    assert!(input.error_message.unwrap().contains("image_url"));
    assert!(tenant.pods().get_opt("bad-input").await.unwrap().is_none());
    tenant.cleanup().await;
}

#[tokio::test]
async fn deleting_a_task_removes_its_pod_and_still_charges_it() {
    let _cluster = serial();
    sweep().await;
    let _controller = Controller::start(&[]).await;
    let tenant = Tenant::new("delete", "pro", 1000).await;
    tenant.template("forever", "forever", json!({"price": {"perRun": 7}})).await;
    tenant.task("doomed", "forever", json!({})).await;
    tenant.wait_phase("doomed", TaskPhase::Running, MINUTE).await;
    tenant.tasks().delete("doomed", &DeleteParams::default()).await.unwrap();
    let pods = tenant.pods();
    wait_for("the deleted task's pod to be gone", MINUTE, || {
        let pods = pods.clone();
        async move { pods.get_opt("doomed").await.ok().filter(|p| p.is_none()).map(|_| ()) }
    })
    .await;
    let account = wait_for("the deleted task to be charged", MINUTE, || async {
        Some(tenant.account().await).filter(|a| a.credits_used() >= 7)
    })
    .await;
    assert_eq!(account.status.unwrap().recent_charges.len(), 1);
    tenant.cleanup().await;
}

#[tokio::test]
async fn waiting_reasons_clear_when_the_cause_goes() {
    let _cluster = serial();
    sweep().await;
    let _controller = Controller::start(&[]).await;
    let tenant = Tenant::new("wait", "pro", 0).await;
    tenant.task("early", "later", json!({})).await;
    let t = wait_for("TemplateNotFound", MINUTE, || async {
        Some(tenant.get("early").await)
            .filter(|t| t.status.as_ref().and_then(|s| s.wait_reason) == Some(WaitReason::TemplateNotFound))
    })
    .await;
    assert_eq!(t.phase(), Some(TaskPhase::Queued));
    tenant.template("later", "1s", json!({"price": {"perRun": 10}})).await;
    wait_for("InsufficientCredits", MINUTE, || async {
        Some(tenant.get("early").await)
            .filter(|t| t.status.as_ref().and_then(|s| s.wait_reason) == Some(WaitReason::InsufficientCredits))
    })
    .await;
    let (ok, out) =
        kubectl(&["patch", "gacct", &tenant.name, "--type=merge", "-p", r#"{"spec":{"credits":100}}"#], None);
    assert!(ok, "{out}");
    tenant.wait_phase("early", TaskPhase::Completed, MINUTE).await;
    // A namespace no account owns.
    let orphan_ns = format!("e2e-noacct-{:06x}", rand_u32() & 0xffffff);
    let (ok, out) = kubectl(&["create", "namespace", &orphan_ns], None);
    assert!(ok, "{out}");
    kubectl(&["label", "namespace", &orphan_ns, "runplane.dev/e2e=true"], None);
    let task = json!({"apiVersion": "runplane.dev/v1alpha1", "kind": "GpuTask", "metadata": {"name": "x", "namespace": orphan_ns}, "spec": {"templateRef": {"name": "any"}}});
    let (ok, out) = kubectl(&["apply", "-f", "-"], Some(&task.to_string()));
    assert!(ok, "{out}");
    let tasks: Api<runplane::resources::GpuTask> = Api::namespaced(tenant.client.clone(), &orphan_ns);
    wait_for("NoAccount", MINUTE, || {
        let tasks = tasks.clone();
        async move {
            tasks
                .get("x")
                .await
                .ok()
                .filter(|t| t.status.as_ref().and_then(|s| s.wait_reason) == Some(WaitReason::NoAccount))
        }
    })
    .await;
    tenant.cleanup().await;
}

#[tokio::test]
async fn controller_killed_mid_run_loses_no_task_and_starts_no_pod_twice() {
    let _cluster = serial();
    sweep().await;
    let mut controller = Controller::start(&[]).await;
    let tenant = Tenant::with_spec(
        "restart",
        json!({"plan": "custom", "credits": 100_000, "limits": {"concurrentTasks": 3, "requestsPerMinute": 60}}),
    )
    .await;
    tenant.template("work", "3s", json!({"price": {"perRun": 10, "perGpuSecond": 1}})).await;
    for i in 0..9 {
        tenant.task(&format!("t{i}"), "work", json!({})).await;
    }
    // Kill it while the first wave runs, then again a little later.
    for _ in 0..2 {
        wait_for("tasks to be running", MINUTE, || async { (!tenant.live_pods().await.is_empty()).then_some(()) })
            .await;
        controller.kill9();
        // While no controller runs, pods finish on their own: restart once
        // a pod has finished that its task does not know of yet.
        wait_for("a pod to finish while no controller runs", MINUTE, || async {
            let pods = tenant.pods().list(&ListParams::default().labels(TASK_PODS)).await.ok()?.items;
            let finished =
                pods.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"));
            for pod in finished {
                if !tenant.get(&pod.name_any()).await.is_terminal() {
                    return Some(());
                }
            }
            None
        })
        .await;
        controller.restart().await;
    }
    let (tasks, most) = tenant.finish_all(2 * MINUTE, 0).await;
    assert!(most <= 3, "{most} pods at once with a limit of 3");
    let mut total = 0;
    for t in &tasks {
        let s = t.status.as_ref().unwrap();
        assert_eq!(s.phase, Some(TaskPhase::Completed), "{}: {s:?}", t.name_any());
        assert_eq!(s.attempts, Some(1), "{} started one pod", t.name_any());
        assert_eq!(s.pod_name.as_deref(), Some(t.name_any().as_str()));
        total += s.credits_used.unwrap();
    }
    let account = wait_for("charges to settle", MINUTE, || async {
        Some(tenant.account().await).filter(|a| a.credits_used() == total)
    })
    .await;
    assert_eq!(account.status.unwrap().recent_charges.len(), 9, "each task charged once");
    tenant.cleanup().await;
}

/// The controller-manager's pod GC deletes finished pods past a threshold
/// (12,500 by default), whether or not runplane has recorded their end; a
/// controller that trails (or is down) must still complete, charge and
/// let go of the task from the pod its finalizer holds.
#[tokio::test]
async fn a_finished_pod_deleted_before_its_task_knew_still_completes_and_charges_it() {
    let _cluster = serial();
    sweep().await;
    let mut controller = Controller::start(&[]).await;
    let tenant = Tenant::new("podgc", "pro", 1000).await;
    tenant.template("work", "2s", json!({"price": {"perRun": 10, "perGpuSecond": 1}})).await;
    tenant.task("t", "work", json!({})).await;
    let pods = tenant.pods();
    wait_for("the task's pod", MINUTE, || {
        let pods = pods.clone();
        async move { pods.get_opt("t").await.ok().flatten() }
    })
    .await;
    controller.kill9();
    wait_for("the pod to finish while no controller runs", MINUTE, || {
        let pods = pods.clone();
        async move {
            let pod = pods.get("t").await.ok()?;
            (pod.status.as_ref()?.phase.as_deref() == Some("Succeeded")).then_some(())
        }
    })
    .await;
    assert!(!tenant.get("t").await.is_terminal(), "the task cannot know yet");
    // What the pod GC sends: a delete with no grace period.
    pods.delete("t", &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() }).await.unwrap();
    let held = pods.get("t").await.expect("runplane's finalizer holds the deleted pod");
    assert!(held.metadata.deletion_timestamp.is_some());

    controller.restart().await;
    let t = tenant.wait_phase("t", TaskPhase::Completed, MINUTE).await;
    let status = t.status.unwrap();
    assert_eq!(status.output.unwrap()["result_url"], "https://cdn.example.com/work.png");
    let credits = status.credits_used.unwrap();
    assert!(credits > 10, "10 a run and 1 a GPU-second for what ran: {credits}");
    wait_for("the pod to be let go and gone", MINUTE, || {
        let pods = pods.clone();
        async move { pods.get_opt("t").await.ok()?.is_none().then_some(()) }
    })
    .await;
    let account = wait_for("the charge", MINUTE, || async {
        Some(tenant.account().await).filter(|a| a.credits_used() == credits)
    })
    .await;
    assert_eq!(account.status.unwrap().recent_charges.len(), 1, "charged once");
    tenant.cleanup().await;
}

#[tokio::test]
async fn invalid_objects_are_rejected_at_apply_time() {
    let _cluster = serial();
    let cases = [
        (
            json!({"apiVersion": "runplane.dev/v1alpha1", "kind": "GpuTemplate", "metadata": {"name": "x", "namespace": "default"}, "spec": {"image": "i", "gpus": 0}}),
            "spec.gpus",
        ),
        (
            json!({"apiVersion": "runplane.dev/v1alpha1", "kind": "GpuTemplate", "metadata": {"name": "x", "namespace": "default"}, "spec": {"image": "i", "timeoutSeconds": -5}}),
            "spec.timeoutSeconds",
        ),
        (
            json!({"apiVersion": "runplane.dev/v1alpha1", "kind": "GpuTemplate", "metadata": {"name": "x", "namespace": "default"}, "spec": {"image": "i", "env": [{"name": "RUNPLANE_INPUT", "value": "x"}]}}),
            "reserved",
        ),
        (
            json!({"apiVersion": "runplane.dev/v1alpha1", "kind": "GpuTask", "metadata": {"name": "x", "namespace": "default"}, "spec": {"input": {}}}),
            "spec.templateRef",
        ),
        (
            json!({"apiVersion": "runplane.dev/v1alpha1", "kind": "GpuTask", "metadata": {"name": "x", "namespace": "default"}, "spec": {"templateRef": {"name": "t"}, "webhookUrl": "ftp://example.com"}}),
            "http or https",
        ),
        (
            json!({"apiVersion": "runplane.dev/v1alpha1", "kind": "GpuAccount", "metadata": {"name": "x"}, "spec": {"plan": "gold"}}),
            "spec.plan",
        ),
        (
            json!({"apiVersion": "runplane.dev/v1alpha1", "kind": "GpuAccount", "metadata": {"name": "x"}, "spec": {"plan": "custom"}}),
            "custom plan needs",
        ),
        (
            json!({"apiVersion": "runplane.dev/v1alpha1", "kind": "GpuAccount", "metadata": {"name": "x"}, "spec": {"plan": "free", "namespaces": ["a", "a"]}}),
            "spec.namespaces",
        ),
    ];
    for (object, expected) in cases {
        let (ok, out) = kubectl(&["apply", "-f", "-"], Some(&object.to_string()));
        assert!(!ok, "{object} was accepted");
        assert!(out.contains(expected), "rejection of {object} should mention {expected:?}: {out}");
    }
    // The spec of a task cannot change once created, but cancel can be set.
    let tenant = Tenant::new("immutable", "pro", 0).await;
    tenant.task("t", "nothing", json!({})).await;
    let (ok, out) =
        kubectl(&["patch", "gt", "t", "-n", &tenant.name, "--type=merge", "-p", r#"{"spec":{"priority":5}}"#], None);
    assert!(!ok && out.contains("cannot change"), "{out}");
    let (ok, out) =
        kubectl(&["patch", "gt", "t", "-n", &tenant.name, "--type=merge", "-p", r#"{"spec":{"cancel":true}}"#], None);
    assert!(ok, "{out}");
    let (ok, out) =
        kubectl(&["patch", "gt", "t", "-n", &tenant.name, "--type=merge", "-p", r#"{"spec":{"cancel":false}}"#], None);
    assert!(!ok && out.contains("cannot be withdrawn"), "{out}");
    let (ok, out) = kubectl(&["explain", "gputask.spec.input"], None);
    assert!(ok && out.contains("RUNPLANE_INPUT"), "kubectl explain describes fields: {out}");
    tenant.cleanup().await;
}

#[tokio::test]
async fn pod_deleted_by_someone_else_is_retried() {
    let _cluster = serial();
    sweep().await;
    let _controller = Controller::start(&[]).await;
    let tenant = Tenant::new("retry", "pro", 1000).await;
    tenant.template("work", "forever", json!({"maxRetries": 1})).await;
    tenant.task("t", "work", json!({})).await;
    tenant.wait_phase("t", TaskPhase::Running, MINUTE).await;
    tenant.pods().delete("t", &DeleteParams::default()).await.unwrap();
    let pods = tenant.pods();
    wait_for("the retry's pod", MINUTE, || {
        let pods = pods.clone();
        async move { pods.get_opt("t-retry-1").await.ok().flatten() }
    })
    .await;
    let t = tenant.wait_phase("t", TaskPhase::Running, MINUTE).await;
    assert_eq!(t.status.unwrap().attempts, Some(2));
    tenant.cancel("t").await;
    tenant.wait_phase("t", TaskPhase::Canceled, MINUTE).await;
    tenant.cleanup().await;
}

#[tokio::test]
async fn the_real_scheduler_keeps_an_oversized_pod_pending() {
    let _cluster = serial();
    let gpus = node_gpus().await;
    // As e2e/cluster/up.sh made them: the same number on every node.
    let per_node = gpus.values().next().copied().unwrap_or(0);
    assert!(gpus.len() >= 2 && per_node > 0 && gpus.values().all(|g| *g == per_node), "fake GPU nodes: {gpus:?}");
    if let Ok(configured) = std::env::var("RUNPLANE_E2E_NODE_GPUS") {
        assert_eq!(per_node.to_string(), configured, "fake GPU nodes: {gpus:?}");
    }
    let tenant = Tenant::new("sched", "pro", 0).await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "too-big"},
        "spec": {"containers": [{"name": "c", "image": "x", "resources": {"limits": {"nvidia.com/gpu": (per_node + 1).to_string()}}}]}
    }))
    .unwrap();
    tenant.pods().create(&PostParams::default(), &pod).await.unwrap();
    let pods = tenant.pods();
    let pod = wait_for("the scheduler to give up on the pod", MINUTE, || {
        let pods = pods.clone();
        async move {
            let pod = pods.get("too-big").await.ok()?;
            let cond = pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "PodScheduled")?.clone();
            (cond.reason.as_deref() == Some("Unschedulable")).then_some(pod)
        }
    })
    .await;
    assert_eq!(pod.status.unwrap().phase.as_deref(), Some("Pending"));
    tenant.cleanup().await;
}

#[tokio::test]
async fn two_replicas_one_leader_and_a_failover_within_the_lease() {
    let _cluster = serial();
    sweep().await;
    let lease = format!("runplane-e2e-{:06x}", rand_u32() & 0xffffff);
    let flags = ["--leader-election=true", "--lease-duration=4", "--lease-namespace=default"];
    let mut args: Vec<&str> = flags.to_vec();
    let lease_flag = format!("--lease-name={lease}");
    args.push(&lease_flag);
    let first = Controller::start_raw(&[&args[..], &["--identity=replica-a"]].concat()).await;
    let second = Controller::start_raw(&[&args[..], &["--identity=replica-b"]].concat()).await;
    let (leader, standby) = wait_for("one replica to lead", MINUTE, || async {
        match (first.is_leader().await, second.is_leader().await) {
            (true, false) => Some((0, 1)),
            (false, true) => Some((1, 0)),
            _ => None,
        }
    })
    .await;
    let mut replicas = [first, second];
    let tenant = Tenant::with_spec(
        "ha",
        json!({"plan": "custom", "credits": 100_000, "limits": {"concurrentTasks": 2, "requestsPerMinute": 60}}),
    )
    .await;
    // Long enough to show Running (2 s after the controller saw it start),
    // and to be running when the leader dies.
    tenant.template("work", "6s", json!({})).await;
    for i in 0..6 {
        tenant.task(&format!("t{i}"), "work", json!({})).await;
    }
    tenant.wait_phase("t0", TaskPhase::Running, MINUTE).await;
    // The standby acts on nothing: both tasks running were started by the leader.
    assert!(!replicas[standby].is_leader().await);
    replicas[leader].kill9();
    let killed = std::time::Instant::now();
    wait_for("the standby to take the lease", Duration::from_secs(20), || async {
        replicas[standby].is_leader().await.then_some(())
    })
    .await;
    assert!(killed.elapsed() < Duration::from_secs(12), "failover took {:?}", killed.elapsed());
    let (tasks, most) = tenant.finish_all(2 * MINUTE, 0).await;
    assert!(most <= 2, "{most} pods at once with a limit of 2");
    assert!(tasks.iter().all(|t| t.phase() == Some(TaskPhase::Completed)));
    assert!(tasks.iter().all(|t| t.status.as_ref().unwrap().attempts == Some(1)));
    tenant.cleanup().await;
    let _ = kubectl(&["delete", "lease", "-n", "default", &lease], None);
}

/// Events on a task, oldest first, as (reason, note).
async fn task_events(namespace: &str, task: &str) -> Vec<(String, String)> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client().await, namespace);
    let mut list: Vec<_> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(task))
        .collect();
    list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0).or(e.metadata.creation_timestamp.as_ref().map(|t| t.0)));
    list.into_iter().map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default())).collect()
}

#[tokio::test]
async fn a_new_task_reads_queued_at_once_and_its_events_tell_the_story() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::new("story", "pro", 1000).await;
    // Long enough to show Running (2 s after the controller saw it start).
    tenant.template("quick", "6s", json!({"price": {"perRun": 3}})).await;
    tenant.template("broken", "1s", json!({"inputSchema": {"type": "no-such-type"}})).await;
    // No controller yet: the apiserver itself shows a new task as Queued.
    tenant.task("first", "quick", json!({})).await;
    assert_eq!(tenant.get("first").await.phase(), Some(TaskPhase::Queued));
    let (ok, out) = kubectl(&["get", "gt", "-n", &tenant.name, "first"], None);
    assert!(ok && out.contains("Queued"), "{out}");

    let _controller = Controller::start(&[]).await;
    let task = tenant.wait_phase("first", TaskPhase::Completed, MINUTE).await;
    assert_eq!(task.status.unwrap().credits_used, Some(3));
    let events = wait_for("the completion event", MINUTE, || {
        let name = tenant.name.clone();
        async move { Some(task_events(&name, "first").await).filter(|e| e.iter().any(|(r, _)| r == "Completed")) }
    })
    .await;
    let reasons: Vec<&str> = events.iter().map(|(r, _)| r.as_str()).collect();
    assert!(reasons.contains(&"Started"), "every transition is an event: {events:?}");
    assert!(events.iter().any(|(r, n)| r == "Completed" && n.contains("3 credits")), "{events:?}");
    let (ok, out) = kubectl(&["describe", "gt", "-n", &tenant.name, "first"], None);
    assert!(ok && out.contains("Started") && out.contains("Completed"), "kubectl describe tells the story: {out}");

    // Templates say whether tasks can run from them.
    let templates: Api<runplane::resources::GpuTemplate> = Api::namespaced(tenant.client.clone(), &tenant.name);
    for (name, ready, reason) in [("quick", "True", "Valid"), ("broken", "False", "InvalidInputSchema")] {
        let template = wait_for(&format!("template {name} to get its status"), MINUTE, || {
            let templates = templates.clone();
            async move { templates.get(name).await.ok().filter(|t| t.status.is_some()) }
        })
        .await;
        let condition = template.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!((condition.status.as_str(), condition.reason.as_str()), (ready, reason), "{name}");
    }
    let (ok, out) = kubectl(&["get", "gtpl", "-n", &tenant.name], None);
    assert!(ok && out.contains("READY") && out.contains("False"), "{out}");
    tenant.cleanup().await;
}

#[tokio::test]
async fn a_task_canceled_while_its_image_cannot_be_pulled_is_not_charged() {
    let _cluster = serial();
    sweep().await;
    let _controller = Controller::start(&[]).await;
    let tenant = Tenant::new("pull", "pro", 1000).await;
    tenant
        .template(
            "unpullable",
            "forever",
            json!({"price": {"perRun": 7, "perGpuSecond": 1},
                   "podMetadata": {"annotations": {"e2e.runplane.dev/waiting-reason": "ImagePullBackOff"}}}),
        )
        .await;
    tenant.task("stuck", "unpullable", json!({})).await;
    wait_for("the pull error to show on the task", MINUTE, || async {
        Some(tenant.get("stuck").await).filter(|t| {
            t.status.as_ref().and_then(|s| s.message.as_deref()).is_some_and(|m| m.contains("ImagePullBackOff"))
        })
    })
    .await;
    tenant.cancel("stuck").await;
    let task = tenant.wait_phase("stuck", TaskPhase::Canceled, MINUTE).await;
    let status = task.status.unwrap();
    assert_eq!((&status.started_at, status.credits_used), (&None, Some(0)), "it never ran: {status:?}");
    let pods = tenant.pods();
    wait_for("the pod to be let go", MINUTE, || {
        let pods = pods.clone();
        async move { pods.get_opt("stuck").await.ok().filter(|p| p.is_none()).map(|_| ()) }
    })
    .await;
    let account = tenant.account().await;
    assert_eq!(account.status.unwrap_or_default().credits_used, 0, "nothing was charged");
    tenant.cleanup().await;
}

#[tokio::test]
async fn pods_that_name_another_account_do_not_use_up_its_limit() {
    let _cluster = serial();
    sweep().await;
    let _controller = Controller::start(&[]).await;
    let victim = Tenant::with_spec(
        "victim",
        json!({"plan": "custom", "credits": 1000, "limits": {"concurrentTasks": 2, "requestsPerMinute": 10}}),
    )
    .await;
    let attacker = Tenant::new("attacker", "pro", 1000).await;
    attacker.template("forever", "forever", json!({})).await;
    let decoy = attacker.task("decoy", "forever", json!({})).await;
    attacker.wait_phase("decoy", TaskPhase::Running, MINUTE).await;
    // Two pods in the attacker's own namespace that claim to be the victim's
    // running tasks: one owned by the attacker's task, one owned by nothing.
    for (name, owned) in [("spoof-owned", true), ("spoof-bare", false)] {
        let mut pod = json!({
            "metadata": {"name": name, "labels": {
                "runplane.dev/task": name, "runplane.dev/account": victim.name, "runplane.dev/template": "forever"},
                "annotations": {"e2e.runplane.dev/duration": "forever"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "task", "image": "example.com/x:1",
                "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
        });
        if owned {
            pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "runplane.dev/v1alpha1", "kind": "GpuTask",
                "name": "decoy", "uid": decoy.metadata.uid, "controller": true}]);
        }
        let pod: Pod = serde_json::from_value(pod).unwrap();
        attacker.pods().create(&PostParams::default(), &pod).await.expect("the attacker's pod");
    }
    victim.template("forever", "forever", json!({})).await;
    victim.task("one", "forever", json!({})).await;
    victim.task("two", "forever", json!({})).await;
    for name in ["one", "two"] {
        victim.wait_phase(name, TaskPhase::Running, MINUTE).await;
    }
    for name in ["spoof-owned", "spoof-bare"] {
        let _ = attacker.pods().delete(name, &DeleteParams::default().grace_period(0)).await;
    }
    victim.cleanup().await;
    attacker.cleanup().await;
}

#[tokio::test]
async fn plan_limits_come_from_the_operators_table() {
    let _cluster = serial();
    sweep().await;
    // The free plan, changed by the operator: 2 tasks at once instead of 5.
    let _controller = Controller::start(&["--plan=free=2,30"]).await;
    let tenant = Tenant::new("plan", "free", 1000).await;
    tenant.template("forever", "forever", json!({})).await;
    for i in 0..4 {
        tenant.task(&format!("t{i}"), "forever", json!({})).await;
    }
    wait_for("two tasks running and two waiting on the account's limit", MINUTE, || async {
        let tasks = tenant.tasks().list(&ListParams::default()).await.ok()?.items;
        let running = tasks.iter().filter(|t| t.phase() == Some(TaskPhase::Running)).count();
        let waiting = tasks
            .iter()
            .filter(|t| t.status.as_ref().and_then(|s| s.wait_reason) == Some(WaitReason::AccountLimit))
            .count();
        (running == 2 && waiting == 2).then_some(())
    })
    .await;
    assert_eq!(tenant.live_pods().await.len(), 2, "no more pods than the plan allows");
    tenant.cleanup().await;
}

#[tokio::test]
async fn a_pod_the_apiserver_refuses_is_created_once_it_may_be() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::new("refused", "pro", 1000).await;
    // A ResourceQuota that allows no pods: the apiserver refuses the task's pod.
    let quota = json!({"apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "no-pods", "namespace": tenant.name}, "spec": {"hard": {"pods": "0"}}});
    let (ok, out) = kubectl(&["apply", "-f", "-"], Some(&quota.to_string()));
    assert!(ok, "{out}");
    let controller = Controller::start(&[]).await;
    tenant.template("work", "1s", json!({})).await;
    tenant.task("t", "work", json!({})).await;
    wait_for("the controller to be refused the pod", MINUTE, || async {
        let log = std::fs::read_to_string(&controller.log).unwrap_or_default();
        log.contains("creating a task pod failed").then_some(())
    })
    .await;
    let t = tenant.get("t").await;
    assert_eq!(t.phase(), Some(TaskPhase::Queued), "a refused pod leaves the task queued");
    let (ok, out) = kubectl(&["delete", "resourcequota", "no-pods", "-n", &tenant.name], None);
    assert!(ok, "{out}");
    // Well before the two minutes after which an unseen create stops
    // counting: the failed create itself gave the task back to admission.
    let t = tenant.wait_phase("t", TaskPhase::Completed, Duration::from_secs(45)).await;
    assert_eq!(t.status.unwrap().attempts, Some(1), "one attempt: the refused creates were not attempts");
    tenant.cleanup().await;
}
