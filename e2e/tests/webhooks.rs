//! End-to-end: signed, durable webhooks, delivered by the controller to a
//! real HTTP receiver (`e2e/webhook_receiver.py`) that checks the signatures
//! with Python's hmac.
//!
//! Each test makes its tenant first and runs the controller with the
//! tenant's namespace as its own (`--lease-namespace`), since the controller
//! reads webhook signing Secrets only in its own namespace.

// Each test holds the cluster (a std mutex, see support::serial) for its
// whole run, on its own runtime and thread: holding it across awaits is the point.
#![allow(clippy::await_holding_lock)]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use runplane::resources::{GpuAccount, GpuTask, TaskPhase, WebhookStatus};
use serde_json::{Value, json};
use support::*;

const MINUTE: Duration = Duration::from_secs(60);
const SECRET: &str = "whtest-signing-secret";
const RESULTS: [&str; 7] = ["delivered", "failed", "gone", "redirect", "refused", "no_secret", "gave_up"];

/// A Secret `webhook-secret` with `values` in the tenant's namespace.
async fn create_secret(tenant: &Tenant, values: &[(&str, &str)]) {
    let data: serde_json::Map<String, Value> = values.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "webhook-secret"}, "stringData": data})).unwrap();
    Api::<Secret>::namespaced(tenant.client.clone(), &tenant.name)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

/// Points the tenant's account at a signing Secret.
async fn set_secret_ref(tenant: &Tenant, secret_ref: Value) {
    let patch = json!({"spec": {"webhook": {"secretRef": secret_ref}}});
    Api::<GpuAccount>::all(tenant.client.clone())
        .patch(&tenant.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// A tenant whose account signs with the Secret `webhook-secret` (the
/// given values) in its own namespace, which is the controller's.
async fn tenant_with_secrets(prefix: &str, values: &[(&str, &str)]) -> Tenant {
    let tenant = Tenant::with_spec(prefix, json!({"plan": "pro", "credits": 10_000})).await;
    create_secret(&tenant, values).await;
    set_secret_ref(&tenant, json!({"name": "webhook-secret"})).await;
    tenant
}

async fn tenant_with_secret(prefix: &str) -> Tenant {
    tenant_with_secrets(prefix, &[("primary", SECRET)]).await
}

async fn webhook_status(tenant: &Tenant, name: &str) -> Option<WebhookStatus> {
    tenant.get(name).await.status.and_then(|s| s.webhook)
}

/// The flags of a controller whose namespace is the tenant's, which may
/// deliver to 127.0.0.1 and retries quickly, plus `extra`.
fn flags(home: &Tenant, extra: &[&str]) -> Vec<String> {
    let mut flags = vec![
        format!("--lease-namespace={}", home.name),
        "--webhook-allow-cidr=127.0.0.1/32".into(),
        "--webhook-backoff=1s".into(),
        "--webhook-max-backoff=2s".into(),
    ];
    flags.extend(extra.iter().map(|s| s.to_string()));
    flags
}

async fn controller(home: &Tenant, extra: &[&str]) -> Controller {
    let flags = flags(home, extra);
    Controller::start(&flags.iter().map(String::as_str).collect::<Vec<_>>()).await
}

async fn given_up(tenant: &Tenant, name: &str) -> WebhookStatus {
    wait_for(&format!("{name} to be given up"), MINUTE, || async {
        webhook_status(tenant, name).await.filter(|w| w.gave_up_at.is_some())
    })
    .await
}

fn deliveries(metrics: &str, result: &str) -> f64 {
    let series = format!("runplane_webhook_deliveries_total{{result=\"{result}\"}}");
    metric_line(metrics, &series).unwrap_or_else(|| panic!("{series} is exported:\n{metrics}"))
}

#[tokio::test]
async fn delivered_once_signed_after_the_receiver_comes_up_and_counted() {
    let _cluster = serial();
    sweep().await;
    let tenant = tenant_with_secret("wh-down").await;
    // A proxy in the environment is not used: the connection would go where
    // the SSRF guard did not look. This one would record what reached it.
    let mut proxy = Receiver::planned(SECRET);
    proxy.start().await;
    let proxy_url = proxy.url("");
    let flags = flags(&tenant, &[]);
    let controller = Controller::start_with_env(
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("HTTP_PROXY", &proxy_url), ("http_proxy", &proxy_url), ("ALL_PROXY", &proxy_url)],
    )
    .await;
    // Every result's series exists, at 0, before the first delivery.
    let before = controller.metrics().await;
    for result in RESULTS {
        assert_eq!(deliveries(&before, result), 0.0, "{result}");
    }
    assert_eq!(metric_line(&before, "runplane_webhooks_pending"), Some(0.0));
    assert_eq!(metric_line(&before, "runplane_webhook_delivery_seconds_count"), Some(0.0));

    let mut receiver = Receiver::planned(SECRET);
    tenant.template("quick", "1s", json!({})).await;
    tenant.task("done", "quick", json!({"webhookUrl": receiver.url("/ok")})).await;
    tenant.template("crash", "1s", json!({"podMetadata": {"annotations": {"e2e.runplane.dev/exit-code": "2"}}})).await;
    tenant.task("broken", "crash", json!({"webhookUrl": receiver.url("/ok")})).await;
    // The receiver is down: attempts fail and are recorded, both are pending.
    wait_for("failed attempts to be recorded", MINUTE, || async {
        let done = webhook_status(&tenant, "done").await?;
        let broken = webhook_status(&tenant, "broken").await?;
        let pending = metric_line(&controller.metrics().await, "runplane_webhooks_pending")?;
        let retrying = done.attempts >= 2 && done.delivered_at.is_none() && done.next_attempt_at.is_some();
        (retrying && broken.attempts >= 1 && pending == 2.0).then_some(())
    })
    .await;
    receiver.start().await;
    let mut attempts = 0;
    for name in ["done", "broken"] {
        let status = wait_for(&format!("{name}'s webhook to be delivered"), MINUTE, || async {
            webhook_status(&tenant, name).await.filter(|w| w.delivered_at.is_some())
        })
        .await;
        attempts += status.attempts;
    }
    // Nothing more arrives after delivery.
    holds_for("one request per event", Duration::from_secs(3), || async { receiver.requests().len() == 2 }).await;
    let requests = receiver.requests();
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
    assert!(proxy.requests().is_empty(), "the environment's proxy was used: {:?}", proxy.requests());

    // The metrics tell the same story: every attempt timed, two delivered,
    // the rest failed and retried, nothing pending any more.
    let metrics = wait_for("nothing pending", MINUTE, || async {
        let metrics = controller.metrics().await;
        (metric_line(&metrics, "runplane_webhooks_pending") == Some(0.0)).then_some(metrics)
    })
    .await;
    assert_eq!(deliveries(&metrics, "delivered"), 2.0);
    assert_eq!(deliveries(&metrics, "failed"), f64::from(attempts - 2), "{metrics}");
    for result in ["gone", "redirect", "refused", "no_secret", "gave_up"] {
        assert_eq!(deliveries(&metrics, result), 0.0, "{result}");
    }
    assert_eq!(metric_line(&metrics, "runplane_webhook_delivery_seconds_count"), Some(f64::from(attempts)));
    assert!(metric_line(&metrics, "runplane_webhook_delivery_seconds_sum").unwrap() > 0.0);
    tenant.cleanup().await;
}

#[tokio::test]
async fn a_controller_killed_between_attempts_resumes_and_never_resends() {
    let _cluster = serial();
    sweep().await;
    let tenant = tenant_with_secret("wh-kill").await;
    let mut controller = controller(&tenant, &[]).await;
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
    holds_for("no second successful delivery", Duration::from_secs(3), || async {
        receiver.requests().iter().filter(|r| r["status"] == 200).count() == 1
    })
    .await;
    let requests = receiver.requests();
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
    let again = wait_for("the redelivery to be recorded", MINUTE, || async {
        webhook_status(&tenant, "t").await.filter(|w| w.redelivery.as_deref() == Some("1") && w.delivered_at.is_some())
    })
    .await;
    assert_eq!(again.id, delivered.id);
    tenant.cleanup().await;
}

#[tokio::test]
async fn a_controller_killed_during_a_request_sends_the_same_event_again_once() {
    let _cluster = serial();
    sweep().await;
    let tenant = tenant_with_secret("wh-inflight").await;
    let mut controller = controller(&tenant, &[]).await;
    let mut receiver = Receiver::planned(SECRET);
    receiver.start().await;
    tenant.template("quick", "1s", json!({})).await;
    // The receiver holds every request 3 s before it answers 200.
    tenant.task("t", "quick", json!({"webhookUrl": receiver.url("/slow?seconds=3")})).await;
    wait_for("the request to arrive", MINUTE, || async { (receiver.requests().len() == 1).then_some(()) }).await;
    // Killed while the request is held: the answer reaches nobody, and
    // nothing was written.
    controller.kill9();
    assert!(webhook_status(&tenant, "t").await.is_none_or(|w| w.delivered_at.is_none()));
    controller.restart().await;
    let delivered = wait_for("delivery after the restart", MINUTE, || async {
        webhook_status(&tenant, "t").await.filter(|w| w.delivered_at.is_some())
    })
    .await;
    // At least once: the event came twice, with one id, and was marked
    // delivered once; nothing is sent after that.
    holds_for("nothing sent after the delivery", Duration::from_secs(5), || async {
        let status = webhook_status(&tenant, "t").await;
        receiver.requests().len() == 2 && status.is_some_and(|w| w.delivered_at == delivered.delivered_at)
    })
    .await;
    let requests = receiver.requests();
    assert!(requests.iter().all(|r| r["webhook_id"] == delivered.id.as_str()), "one webhook-id: {requests:?}");
    assert!(requests.iter().all(|r| r["runkey_ok"] == true && r["standard_ok"] == true));
    assert_eq!(requests[0]["body"], requests[1]["body"], "the same body");
    assert_eq!((delivered.attempts, delivered.last_status_code), (1, Some(200)), "{delivered:?}");
    tenant.cleanup().await;
}

#[tokio::test]
async fn gone_redirects_private_destinations_and_foreign_secrets_stop_at_once() {
    let _cluster = serial();
    sweep().await;
    let tenant = tenant_with_secret("wh-refuse").await;
    // Another account keeps its Secret in its own namespace, which is not
    // the controller's: refused, not read.
    let foreign = Tenant::with_spec("wh-foreign", json!({"plan": "pro", "credits": 10_000})).await;
    create_secret(&foreign, &[("primary", SECRET)]).await;
    set_secret_ref(&foreign, json!({"name": "webhook-secret", "namespace": foreign.name})).await;
    // The default give-up age (72 h): none of these may need it.
    let controller = controller(&tenant, &[]).await;
    let mut receiver = Receiver::planned(SECRET);
    receiver.start().await;
    tenant.template("quick", "1s", json!({})).await;
    tenant.task("gone", "quick", json!({"webhookUrl": receiver.url("/gone")})).await;
    tenant.task("moved", "quick", json!({"webhookUrl": receiver.url("/redirect")})).await;
    // A private address and a NAT64 one outside the allowlist: refused
    // before any connection.
    tenant.task("private", "quick", json!({"webhookUrl": "http://10.255.255.1:9/hook"})).await;
    tenant.task("nat64", "quick", json!({"webhookUrl": "http://[64:ff9b::7f00:1]:9/hook"})).await;
    foreign.template("quick", "1s", json!({})).await;
    foreign.task("foreign", "quick", json!({"webhookUrl": receiver.url("/ok")})).await;

    let gone = given_up(&tenant, "gone").await;
    assert_eq!((gone.attempts, gone.last_status_code), (1, Some(410)));
    let moved = given_up(&tenant, "moved").await;
    assert_eq!((moved.attempts, moved.last_status_code), (1, Some(302)));
    assert_eq!(moved.last_error.as_deref(), Some("redirect not followed (Location: /ok)"));
    assert!(moved.delivered_at.is_none() && moved.next_attempt_at.is_none());
    let private = given_up(&tenant, "private").await;
    assert!(private.last_error.as_deref().unwrap().contains("10.255.255.1 is private"), "{private:?}");
    let nat64 = given_up(&tenant, "nat64").await;
    assert!(nat64.last_error.as_deref().unwrap().contains("NAT64"), "{nat64:?}");
    let foreign_status = given_up(&foreign, "foreign").await;
    let why = foreign_status.last_error.unwrap();
    assert!(why.contains(&foreign.name) && why.contains("only in its own namespace"), "{why}");
    assert_eq!(foreign_status.attempts, 0, "nothing was sent");

    let requests = receiver.requests();
    assert!(requests.iter().all(|r| r["path"] != "/ok"), "neither the redirect nor the foreign one: {requests:?}");
    assert_eq!(requests.iter().filter(|r| r["path"] == "/gone").count(), 1);
    assert_eq!(requests.iter().filter(|r| r["path"] == "/redirect").count(), 1);
    let metrics = controller.metrics().await;
    assert_eq!(deliveries(&metrics, "gone"), 1.0);
    assert_eq!(deliveries(&metrics, "redirect"), 1.0);
    assert_eq!(deliveries(&metrics, "refused"), 3.0);
    assert_eq!(deliveries(&metrics, "failed"), 0.0, "nothing is retried");
    let t: GpuTask = tenant.get("gone").await;
    assert_eq!(t.phase(), Some(TaskPhase::Completed));
    foreign.cleanup().await;
    tenant.cleanup().await;
}

#[tokio::test]
async fn a_missing_secret_gives_up_after_the_give_up_age_and_the_ttl_goes_on() {
    let _cluster = serial();
    sweep().await;
    let tenant = Tenant::with_spec("wh-nosecret", json!({"plan": "pro", "credits": 10_000})).await;
    set_secret_ref(&tenant, json!({"name": "never-created"})).await;
    let controller = controller(&tenant, &["--webhook-give-up-after=6s", "--finished-ttl=1s"]).await;
    let mut receiver = Receiver::planned(SECRET);
    receiver.start().await;
    tenant.template("quick", "1s", json!({})).await;
    tenant.task("t", "quick", json!({"webhookUrl": receiver.url("/ok")})).await;
    // Past its TTL the task stays while the delivery is pending: nothing is
    // sent unsigned, and the secret is looked for again.
    let waiting = wait_for("the missing secret to be recorded, past the TTL", MINUTE, || async {
        let task = tenant.get("t").await;
        let completed = task.status.as_ref()?.completed_at.as_ref()?.0;
        let w = task.status?.webhook?;
        let past_ttl = jiff::Timestamp::now().duration_since(completed) > jiff::SignedDuration::from_secs(2);
        (past_ttl && w.last_error.is_some()).then_some(w)
    })
    .await;
    assert!(waiting.last_error.as_deref().unwrap().contains("never-created"), "{waiting:?}");
    assert!(waiting.next_attempt_at.is_some() && waiting.gave_up_at.is_none());
    assert_eq!(waiting.attempts, 0, "nothing sent");
    // Given up after 6 s from the first try; the TTL then deletes the task.
    wait_for("the task to be deleted once the delivery is given up", MINUTE, || async {
        tenant.tasks().get_opt("t").await.ok()?.is_none().then_some(())
    })
    .await;
    // The event follows the status write that let the TTL go on: it may
    // land a moment after the task is gone.
    let events: Api<Event> = Api::namespaced(tenant.client.clone(), &tenant.name);
    let gave_up = wait_for("a WebhookGaveUp event", MINUTE, || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("WebhookGaveUp"))
    })
    .await;
    assert!(gave_up.note.unwrap().contains("never-created"));
    let metrics = controller.metrics().await;
    assert_eq!(deliveries(&metrics, "gave_up"), 1.0);
    assert!(deliveries(&metrics, "no_secret") >= 1.0);
    assert_eq!(metric_line(&metrics, "runplane_webhook_delivery_seconds_count"), Some(0.0), "no request was made");
    assert!(receiver.requests().is_empty());
    tenant.cleanup().await;
}

#[tokio::test]
async fn retry_after_is_honoured_in_seconds_and_as_an_http_date() {
    let _cluster = serial();
    sweep().await;
    let tenant = tenant_with_secret("wh-later").await;
    // Backoff 1 s (at most 1.2 s with jitter): the receiver asks for 5 s.
    let _controller = controller(&tenant, &[]).await;
    let mut receiver = Receiver::planned(SECRET);
    receiver.start().await;
    tenant.template("quick", "1s", json!({})).await;
    tenant.task("seconds", "quick", json!({"webhookUrl": receiver.url("/later?seconds=5")})).await;
    tenant.task("date", "quick", json!({"webhookUrl": receiver.url("/later-date?seconds=5")})).await;
    for (name, path, least) in [("seconds", "/later", 4.8), ("date", "/later-date", 3.8)] {
        let delivered = wait_for(&format!("{name} to be delivered"), MINUTE, || async {
            webhook_status(&tenant, name).await.filter(|w| w.delivered_at.is_some())
        })
        .await;
        assert_eq!(delivered.attempts, 2, "{delivered:?}");
        let times: Vec<f64> =
            receiver.requests().iter().filter(|r| r["path"] == path).map(|r| r["received"].as_f64().unwrap()).collect();
        assert_eq!(times.len(), 2);
        let gap = times[1] - times[0];
        assert!(gap >= least, "{name}: the second attempt came {gap:.2} s after the first");
    }
    tenant.cleanup().await;
}

#[tokio::test]
async fn two_active_secrets_sign_every_delivery_and_canceled_is_opt_in() {
    let _cluster = serial();
    sweep().await;
    const OLD: &str = "whtest-old-secret";
    const NEW: &str = "whtest-new-secret";
    let tenant = tenant_with_secrets("wh-rotate", &[("a-old", OLD), ("b-new", NEW)]).await;
    let _controller = controller(&tenant, &[]).await;
    // Receivers that know only one of the two secrets both verify.
    let mut knows_old = Receiver::planned(OLD);
    let mut knows_new = Receiver::planned(NEW);
    let mut knows_neither = Receiver::planned_with(&["something-else", "another"]);
    for receiver in [&mut knows_old, &mut knows_new, &mut knows_neither] {
        receiver.start().await;
    }
    tenant.template("quick", "1s", json!({})).await;
    tenant.template("long", "forever", json!({})).await;
    tenant.task("done", "quick", json!({"webhookUrl": knows_old.url("/ok")})).await;
    tenant.task("probe", "quick", json!({"webhookUrl": knows_neither.url("/ok")})).await;
    tenant.task("stopped", "long", json!({"webhookUrl": knows_new.url("/ok"), "webhookOnCancel": true})).await;
    tenant.task("quiet", "long", json!({"webhookUrl": knows_new.url("/quiet")})).await;
    for name in ["stopped", "quiet"] {
        tenant.wait_phase(name, TaskPhase::Running, MINUTE).await;
        tenant.cancel(name).await;
        tenant.wait_phase(name, TaskPhase::Canceled, MINUTE).await;
    }
    for name in ["done", "probe", "stopped"] {
        wait_for(&format!("{name}'s webhook to be delivered"), MINUTE, || async {
            webhook_status(&tenant, name).await.filter(|w| w.delivered_at.is_some())
        })
        .await;
    }
    for (receiver, event) in [(&knows_old, "task.completed"), (&knows_new, "task.canceled")] {
        let requests = receiver.requests();
        assert_eq!(requests.len(), 1, "{requests:?}");
        let r = &requests[0];
        assert_eq!(r["body"]["event"], event);
        assert!(r["runkey_ok"] == true && r["standard_ok"] == true, "verifies with one of the secrets: {r}");
        assert_eq!((r["runkey_signatures"].as_u64(), r["standard_signatures"].as_u64()), (Some(2), Some(2)));
    }
    assert_eq!(knows_new.requests()[0]["body"]["data"]["status"], "canceled");
    let unknown = &knows_neither.requests()[0];
    assert!(unknown["runkey_ok"] == false && unknown["standard_ok"] == false, "{unknown}");
    // Canceled without opting in: no webhook.
    holds_for("no task.canceled without webhookOnCancel", Duration::from_secs(2), || async {
        knows_new.requests().iter().all(|r| r["path"] != "/quiet")
    })
    .await;
    assert!(webhook_status(&tenant, "quiet").await.is_none());
    tenant.cleanup().await;
}

#[tokio::test]
async fn a_slow_receiver_does_not_hold_up_other_deliveries() {
    let _cluster = serial();
    sweep().await;
    let tenant = tenant_with_secret("wh-slow").await;
    let _controller = controller(&tenant, &[]).await;
    let mut receiver = Receiver::planned(SECRET);
    receiver.start().await;
    tenant.template("quick", "1s", json!({})).await;
    tenant.task("slow", "quick", json!({"webhookUrl": receiver.url("/slow?seconds=12")})).await;
    let held_since = wait_for("the slow request to arrive", MINUTE, || async {
        receiver.requests().first().map(|r| r["received"].as_f64().unwrap())
    })
    .await;
    // Finished while the slow request is held: delivered all the same.
    tenant.task("fast", "quick", json!({"webhookUrl": receiver.url("/ok")})).await;
    wait_for("the fast one to be delivered", MINUTE, || async {
        webhook_status(&tenant, "fast").await.filter(|w| w.delivered_at.is_some())
    })
    .await;
    let fast = receiver.requests().into_iter().find(|r| r["path"] == "/ok").unwrap();
    let after = fast["received"].as_f64().unwrap() - held_since;
    assert!(after < 10.0, "the fast delivery waited {after:.1} s for the slow one");
    assert!(webhook_status(&tenant, "slow").await.is_none_or(|w| w.delivered_at.is_none()), "still held");
    wait_for("the slow one to be delivered too", MINUTE, || async {
        webhook_status(&tenant, "slow").await.filter(|w| w.delivered_at.is_some() && w.attempts == 1)
    })
    .await;
    tenant.cleanup().await;
}
