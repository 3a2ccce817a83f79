//! End-to-end: signed, durable webhooks, delivered by the controller to a
//! real HTTP receiver that checks the signatures with Python's hmac.

// Each test holds the cluster (a std mutex, see support::serial) for its
// whole run, on its own runtime and thread: holding it across awaits is the point.
#![allow(clippy::await_holding_lock)]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use runplane::resources::{GpuTask, TaskPhase, WebhookStatus};
use serde_json::json;
use support::*;

const MINUTE: Duration = Duration::from_secs(60);
const SECRET: &str = "whtest-signing-secret";

async fn tenant_with_secret(prefix: &str) -> Tenant {
    let tenant = Tenant::with_spec(prefix, json!({"plan": "pro", "credits": 10_000})).await;
    let secrets: Api<Secret> = Api::namespaced(tenant.client.clone(), &tenant.name);
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "webhook-secret"}, "stringData": {"primary": SECRET}}))
            .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let patch = json!({"spec": {"webhook": {"secretRef": {"name": "webhook-secret", "namespace": tenant.name}}}});
    Api::<runplane::resources::GpuAccount>::all(tenant.client.clone())
        .patch(&tenant.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    tenant
}

async fn webhook_status(tenant: &Tenant, name: &str) -> Option<WebhookStatus> {
    tenant.get(name).await.status.and_then(|s| s.webhook)
}

async fn controller() -> Controller {
    Controller::start(&["--webhook-allow-cidr=127.0.0.1/32", "--webhook-backoff=1s", "--webhook-max-backoff=2s"]).await
}

#[tokio::test]
async fn delivered_once_signed_after_the_receiver_comes_up() {
    let _cluster = serial();
    sweep().await;
    let _controller = controller().await;
    let tenant = tenant_with_secret("wh-down").await;
    let mut receiver = Receiver::planned(SECRET);
    tenant.template("quick", "1s", json!({})).await;
    tenant.task("done", "quick", json!({"webhookUrl": receiver.url("/ok")})).await;
    tenant.template("crash", "1s", json!({"podMetadata": {"annotations": {"e2e.runplane.dev/exit-code": "2"}}})).await;
    tenant.task("broken", "crash", json!({"webhookUrl": receiver.url("/ok")})).await;
    // The receiver is down: attempts fail and are recorded.
    wait_for("failed attempts to be recorded", MINUTE, || async {
        let w = webhook_status(&tenant, "done").await?;
        (w.attempts >= 2 && w.delivered_at.is_none() && w.next_attempt_at.is_some()).then_some(())
    })
    .await;
    receiver.start().await;
    for name in ["done", "broken"] {
        wait_for(&format!("{name}'s webhook to be delivered"), MINUTE, || async {
            webhook_status(&tenant, name).await.filter(|w| w.delivered_at.is_some())
        })
        .await;
    }
    // Nothing more arrives after delivery.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2, "one delivery per event: {requests:?}");
    for r in &requests {
        assert!(r["runkey_ok"].as_bool().unwrap(), "X-RunKey-Signature verifies: {r}");
        assert!(r["standard_ok"].as_bool().unwrap(), "webhook-signature verifies: {r}");
    }
    let completed = requests.iter().find(|r| r["body"]["data"]["task_id"] == "done").unwrap();
    assert_eq!(completed["body"]["event"], "task.completed");
    assert_eq!(completed["body"]["data"]["status"], "completed");
    assert!(completed["body"]["data"]["output"]["result_url"].is_string());
    assert!(completed["body"]["data"]["credits_used"].is_number());
    let failed = requests.iter().find(|r| r["body"]["data"]["task_id"] == "broken").unwrap();
    assert_eq!(failed["body"]["event"], "task.failed");
    assert_eq!(failed["body"]["data"]["error"]["code"], 50001);
    let status = webhook_status(&tenant, "done").await.unwrap();
    assert_eq!(status.id, completed["webhook_id"].as_str().unwrap());
    assert_eq!(status.last_status_code, Some(200));
    tenant.cleanup().await;
}

#[tokio::test]
async fn a_controller_killed_between_attempts_resumes_and_never_resends() {
    let _cluster = serial();
    sweep().await;
    let mut controller = controller().await;
    let tenant = tenant_with_secret("wh-kill").await;
    let mut receiver = Receiver::planned(SECRET);
    std::fs::write(&receiver.fail_flag, b"fail").unwrap();
    receiver.start().await;
    tenant.template("quick", "1s", json!({})).await;
    tenant.task("t", "quick", json!({"webhookUrl": receiver.url("/flaky")})).await;
    wait_for("a failed attempt", MINUTE, || async {
        webhook_status(&tenant, "t").await.filter(|w| w.attempts >= 1 && w.last_status_code == Some(503))
    })
    .await;
    controller.kill9();
    std::fs::remove_file(&receiver.fail_flag).unwrap();
    controller.restart().await;
    let delivered = wait_for("delivery after the restart", MINUTE, || async {
        webhook_status(&tenant, "t").await.filter(|w| w.delivered_at.is_some())
    })
    .await;
    // Restart again: a delivered event is not sent again.
    controller.restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests = receiver.requests();
    let ok: Vec<_> = requests.iter().filter(|r| r["status"] == 200).collect();
    assert_eq!(ok.len(), 1, "exactly one successful delivery: {requests:?}");
    assert!(requests.iter().all(|r| r["webhook_id"] == delivered.id.as_str()), "the same id on every attempt");
    assert_eq!(webhook_status(&tenant, "t").await.unwrap().attempts, delivered.attempts);
    // Redelivery on request: the same event id, once more.
    let patch = json!({"metadata": {"annotations": {"runplane.dev/webhook-redeliver": "1"}}});
    tenant.tasks().patch("t", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_for("the redelivery", MINUTE, || async {
        let ok = receiver.requests().into_iter().filter(|r| r["status"] == 200).count();
        (ok == 2).then_some(())
    })
    .await;
    let again = webhook_status(&tenant, "t").await.unwrap();
    assert_eq!(again.id, delivered.id);
    assert_eq!(again.redelivery.as_deref(), Some("1"));
    tenant.cleanup().await;
}

#[tokio::test]
async fn gone_redirects_and_private_destinations_stop_or_are_refused() {
    let _cluster = serial();
    sweep().await;
    let _controller = Controller::start(&[
        "--webhook-allow-cidr=127.0.0.1/32",
        "--webhook-backoff=1s",
        "--webhook-max-backoff=1s",
        "--webhook-give-up-after=4s",
    ])
    .await;
    let tenant = tenant_with_secret("wh-refuse").await;
    let mut receiver = Receiver::planned(SECRET);
    receiver.start().await;
    tenant.template("quick", "1s", json!({})).await;
    tenant.task("gone", "quick", json!({"webhookUrl": receiver.url("/gone")})).await;
    tenant.task("moved", "quick", json!({"webhookUrl": receiver.url("/redirect")})).await;
    // A private address outside the allowlist: refused before any connection.
    tenant.task("private", "quick", json!({"webhookUrl": "http://10.255.255.1:9/hook"})).await;
    let gone = wait_for("410 to stop retries", MINUTE, || async {
        webhook_status(&tenant, "gone").await.filter(|w| w.gave_up_at.is_some())
    })
    .await;
    assert_eq!((gone.attempts, gone.last_status_code), (1, Some(410)));
    let private = wait_for("the private destination to be refused", MINUTE, || async {
        webhook_status(&tenant, "private").await.filter(|w| w.gave_up_at.is_some())
    })
    .await;
    assert!(private.last_error.unwrap().contains("private"));
    let moved = wait_for("the redirect to be given up on", MINUTE, || async {
        webhook_status(&tenant, "moved").await.filter(|w| w.gave_up_at.is_some())
    })
    .await;
    assert_eq!(moved.last_status_code, Some(302));
    assert!(moved.delivered_at.is_none());
    let requests = receiver.requests();
    assert!(requests.iter().all(|r| r["path"] != "/ok"), "the redirect was not followed: {requests:?}");
    assert_eq!(requests.iter().filter(|r| r["path"] == "/gone").count(), 1);
    let t: GpuTask = tenant.get("gone").await;
    assert_eq!(t.phase(), Some(TaskPhase::Completed));
    tenant.cleanup().await;
}
