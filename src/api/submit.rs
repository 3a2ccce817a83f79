//! Running a template: the checks before a GpuTask is created (input schema,
//! credits, idempotency) and the create itself — shared by `POST /v1/run`
//! and RunningHub's `POST /openapi/v2/{model}/{action}`.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use rand::RngExt;
use serde_json::Value;

use super::AppState;
use super::error::{ApiError, Result};
use super::http::Tenant;
use super::wire::{self, IDEMPOTENCY_KEY_ANNOTATION, REQUEST_HASH_ANNOTATION, TEMPLATE_ID_ANNOTATION};
use crate::domain::webhook;
use crate::resources::{GpuTask, GpuTaskSpec, GpuTemplate, TemplateRef, managers};

/// How long an Idempotency-Key is remembered.
pub const IDEMPOTENCY_WINDOW: SignedDuration = SignedDuration::from_hours(24);

/// A request to run a template.
pub struct Submission {
    pub template: Arc<GpuTemplate>,
    /// The template id as the client sent it.
    pub template_id: String,
    pub input: Value,
    pub webhook_url: Option<String>,
    /// Also send the webhook when the task is canceled.
    pub webhook_on_cancel: bool,
    /// What the request asked for, for the Idempotency-Key check:
    /// the operation and the canonical body.
    pub operation: String,
    pub body: Value,
}

/// Parses and checks a `POST /v1/run` body. Unknown fields are ignored.
pub fn parse_run_request(body: &Value) -> Result<wire::RunRequest> {
    let invalid = |m: &str| ApiError::InvalidInput(m.to_string());
    let object = body.as_object().ok_or_else(|| invalid("body: must be a JSON object"))?;
    let template_id = match object.get("template_id") {
        None | Some(Value::Null) => return Err(invalid("template_id: required")),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 253 => s.clone(),
        Some(Value::String(_)) => {
            return Err(invalid("template_id: must be 1 to 253 characters"));
        }
        Some(_) => return Err(invalid("template_id: must be a string")),
    };
    let input = match object.get("input") {
        None | Some(Value::Null) => return Err(invalid("input: required")),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return Err(invalid("input: must be a JSON object")),
    };
    let webhook_url = match object.get("webhook_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(check_webhook_url(s)?),
        Some(_) => return Err(invalid("webhook_url: must be a string")),
    };
    let webhook_on_cancel = match object.get("webhook_on_cancel") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("webhook_on_cancel: must be a boolean")),
    };
    Ok(wire::RunRequest { template_id, input, webhook_url, webhook_on_cancel })
}

/// A webhook URL must be an absolute http(s) URL with a host and no
/// credentials. (Where it may point is [`check_webhook_destination`]'s.)
pub fn check_webhook_url(s: &str) -> Result<String> {
    if s.len() > 2048 {
        return Err(ApiError::InvalidInput("webhook_url: longer than 2048 characters".into()));
    }
    match wire::http_url(s) {
        Some(_) if !s.chars().any(char::is_whitespace) => {
            webhook::check_url(s).map_err(|why| ApiError::InvalidInput(format!("webhook_url: {why}")))?;
            Ok(s.to_string())
        }
        _ => Err(ApiError::InvalidInput(format!("webhook_url: {s:?} is not an http or https URL"))),
    }
}

/// How long a webhook URL's host may take to resolve.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a webhook URL must also pass once the tenant is known, so that a
/// delivery the controller would refuse is refused now (40005): the account
/// signs its webhooks (`spec.webhook.secretRef`; nothing is sent unsigned),
/// and the host is neither an IP literal in a refused range nor a name that
/// resolves only to refused addresses, unless `--webhook-allow-cidr` covers
/// them. A name that does not resolve now is accepted: nothing shows it is
/// private, DNS may be failing for a moment, and the controller checks every
/// address again at each delivery (as it does for a name with both kinds).
pub async fn check_webhook_destination(state: &AppState, tenant: &Tenant, url: &str) -> Result<()> {
    let invalid = |why: String| ApiError::InvalidInput(format!("webhook_url: {why}"));
    if tenant.account.spec.webhook.as_ref().and_then(|w| w.secret_ref.as_ref()).is_none() {
        return Err(invalid(format!(
            "account {} has no webhook signing secret (spec.webhook.secretRef) and webhooks are only sent signed; \
             ask the administrator to set one",
            tenant.name
        )));
    }
    let parsed = webhook::check_url(url).map_err(invalid)?;
    let addresses = match webhook::ip_literal(&parsed) {
        Some(ip) => vec![ip],
        None => {
            let host = parsed.host_str().unwrap_or_default();
            let port = parsed.port_or_known_default().unwrap_or(443);
            let found = match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await {
                Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
                _ => Vec::new(),
            };
            if found.is_empty() {
                return Ok(());
            }
            found
        }
    };
    webhook::check_any_address(&addresses, &state.webhook_allow).map_err(invalid)
}

/// A new task name: `task-<12 hex>`.
pub fn random_task_name() -> String {
    format!("task-{}", hex::encode(rand::rng().random::<[u8; 6]>()))
}

/// The task name an Idempotency-Key maps to, so that two concurrent requests
/// with the same key collide on create instead of both creating a task.
pub fn idempotent_task_name(key_hash: &str) -> String {
    format!("task-{}", &key_hash[..12])
}

fn annotation<'a>(task: &'a GpuTask, key: &str) -> Option<&'a str> {
    task.metadata.annotations.as_ref()?.get(key).map(String::as_str)
}

/// What an existing task says about a repeated Idempotency-Key: Some(task)
/// if it answers the request, an error if the key was used for another
/// request, None if it has nothing to do with it (other key, or too old).
pub fn idempotent_match(task: &GpuTask, key_hash: &str, request_hash: &str, now: Timestamp) -> Option<Result<()>> {
    if annotation(task, IDEMPOTENCY_KEY_ANNOTATION) != Some(key_hash) {
        return None;
    }
    let created = task.metadata.creation_timestamp.as_ref()?.0;
    if now.duration_since(created) > IDEMPOTENCY_WINDOW {
        return None;
    }
    if annotation(task, REQUEST_HASH_ANNOTATION) == Some(request_hash) {
        Some(Ok(()))
    } else {
        Some(Err(ApiError::Conflict("Idempotency-Key was already used with a different request; use a new key".into())))
    }
}

/// Runs a template for a tenant: returns the new task, or the task an
/// earlier request with the same Idempotency-Key created.
pub async fn submit(
    state: &AppState,
    tenant: &Tenant,
    submission: Submission,
    idempotency_key: Option<&str>,
) -> Result<GpuTask> {
    let idempotency = match idempotency_key {
        None => None,
        Some(key) if wire::valid_idempotency_key(key) => Some((
            wire::idempotency_hash(&tenant.name, key),
            wire::request_hash(&submission.operation, &submission.body),
        )),
        Some(_) => {
            return Err(ApiError::InvalidInput("Idempotency-Key: must be 1 to 255 visible ASCII characters".into()));
        }
    };
    let now = Timestamp::now();
    let template = &submission.template;
    let namespace = template.namespace().unwrap_or_default();
    if let Some((key_hash, request_hash)) = &idempotency {
        let keys = state.caches.task_index.read().with_idempotency_key(&tenant.namespaces, key_hash);
        let earlier = keys
            .iter()
            .filter_map(|key| state.caches.task_at(key))
            .find_map(|t| idempotent_match(&t, key_hash, request_hash, now).map(|m| (t, m)));
        if let Some((task, verdict)) = earlier {
            verdict?;
            return Ok((*task).clone());
        }
        // The key may have been used a moment ago through another replica,
        // for a template in another of the account's namespaces (in the
        // same namespace the task name collides instead).
        let elsewhere = same_key_elsewhere(state, tenant, &namespace, key_hash, request_hash).await?;
        if let Some((task, verdict)) = elsewhere.into_iter().next() {
            verdict?;
            return Ok(task);
        }
    }

    state.input_schema(template)?.check(&submission.input).map_err(ApiError::InvalidInput)?;

    let price = template.spec.price.per_run;
    let balance = tenant.account.balance();
    if balance < price {
        return Err(ApiError::InsufficientCredits(format!(
            "Insufficient credits: the balance is {balance} and template {} costs {price} per run",
            submission.template_id
        )));
    }

    if let Some(url) = &submission.webhook_url {
        check_webhook_destination(state, tenant, url).await?;
    }

    let template_name = template.name_any();
    let mut annotations = std::collections::BTreeMap::new();
    if submission.template_id != template_name {
        annotations.insert(TEMPLATE_ID_ANNOTATION.to_string(), submission.template_id.clone());
    }
    if let Some((key_hash, request_hash)) = &idempotency {
        annotations.insert(IDEMPOTENCY_KEY_ANNOTATION.to_string(), key_hash.clone());
        annotations.insert(REQUEST_HASH_ANNOTATION.to_string(), request_hash.clone());
    }
    let mut task = GpuTask {
        metadata: ObjectMeta {
            namespace: Some(namespace.clone()),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        spec: GpuTaskSpec {
            template_ref: TemplateRef { name: template_name },
            input: submission.input,
            webhook_url: submission.webhook_url,
            webhook_on_cancel: submission.webhook_on_cancel,
            priority: 0,
            timeout_seconds: None,
            cancel: false,
        },
        status: None,
    };

    let api: Api<GpuTask> = Api::namespaced(state.client.clone(), &namespace);
    let params = PostParams { field_manager: Some(managers::API.into()), ..Default::default() };
    let mut name = match &idempotency {
        Some((key_hash, _)) => idempotent_task_name(key_hash),
        None => random_task_name(),
    };
    for _ in 0..4 {
        task.metadata.name = Some(name.clone());
        match api.create(&params, &task).await {
            Ok(created) => {
                state.remember_created(&namespace, &name);
                if let Some((key_hash, request_hash)) = &idempotency {
                    return settle_race(state, tenant, created, key_hash, request_hash).await;
                }
                return Ok(created);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // The name is taken: by the same Idempotency-Key (a concurrent
                // or cache-missed repeat), or by chance.
                if let Some((key_hash, request_hash)) = &idempotency
                    && let Some(existing) = api.get_opt(&name).await?
                    && let Some(verdict) = idempotent_match(&existing, key_hash, request_hash, Timestamp::now())
                {
                    verdict?;
                    return Ok(existing);
                }
                name = random_task_name();
            }
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                return Err(ApiError::InvalidInput(s.message));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Internal("could not find a free task name".into()))
}

/// Tasks in the account's namespaces other than `namespace` that carry
/// the Idempotency-Key, read from the apiserver (idempotent tasks share
/// their name in every namespace). Only accounts with several namespaces pay
/// these reads.
async fn same_key_elsewhere(
    state: &AppState,
    tenant: &Tenant,
    namespace: &str,
    key_hash: &str,
    request_hash: &str,
) -> Result<Vec<(GpuTask, Result<()>)>> {
    let name = idempotent_task_name(key_hash);
    let mut found = Vec::new();
    for other in tenant.namespaces.iter().filter(|ns| *ns != namespace) {
        let api: Api<GpuTask> = Api::namespaced(state.client.clone(), other);
        if let Some(task) = api.get_opt(&name).await?
            && let Some(verdict) = idempotent_match(&task, key_hash, request_hash, Timestamp::now())
        {
            found.push((task, verdict));
        }
    }
    Ok(found)
}

/// Settles two requests with the same Idempotency-Key that created tasks in
/// two namespaces of the account at the same moment (templates in different
/// namespaces; within one namespace the shared name lets only one create
/// succeed). After its create, a request looks for a live task with the key
/// elsewhere; if there is one, it cancels its own task and answers as if the
/// other had come first: that task if it is the same request, else 409. Of
/// two such creates, the later one always sees the earlier, so at most one
/// task keeps running (both yield only if both look before either cancels).
async fn settle_race(
    state: &AppState,
    tenant: &Tenant,
    created: GpuTask,
    key_hash: &str,
    request_hash: &str,
) -> Result<GpuTask> {
    if tenant.namespaces.len() < 2 {
        return Ok(created);
    }
    let namespace = created.namespace().unwrap_or_default();
    let others = same_key_elsewhere(state, tenant, &namespace, key_hash, request_hash).await?;
    let Some((other, verdict)) = others.into_iter().find(|(t, _)| !t.spec.cancel) else {
        return Ok(created);
    };
    tracing::info!(
        task = %created.name_any(),
        %namespace,
        other = %other.namespace().unwrap_or_default(),
        "an Idempotency-Key was used for two tasks at once; canceling this one"
    );
    super::v1::patch_task(state, &created, serde_json::json!({"spec": {"cancel": true}})).await?;
    verdict.map(|()| other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    #[test]
    fn run_requests_name_the_failing_field() {
        let ok = parse_run_request(&json!({
            "template_id": "tpl_portrait_fix",
            "input": {"image_url": "https://example.com/photo.jpg"},
            "webhook_url": "https://your-server.com/callback",
            "extra": 1
        }))
        .unwrap();
        assert_eq!(ok.template_id, "tpl_portrait_fix");
        assert_eq!(ok.webhook_url.as_deref(), Some("https://your-server.com/callback"));
        let msg = |body: Value| parse_run_request(&body).unwrap_err().to_string();
        assert!(msg(json!([])).starts_with("body:"));
        assert!(msg(json!({"input": {}})).starts_with("template_id:"));
        assert!(msg(json!({"template_id": 3, "input": {}})).starts_with("template_id:"));
        assert!(msg(json!({"template_id": "", "input": {}})).starts_with("template_id:"));
        assert!(msg(json!({"template_id": "t"})).starts_with("input:"));
        assert!(msg(json!({"template_id": "t", "input": "x"})).starts_with("input:"));
        for bad in ["ftp://x.org/a", "not a url", "https://", "/relative", "https://a b.com"] {
            let m = msg(json!({"template_id": "t", "input": {}, "webhook_url": bad}));
            assert!(m.starts_with("webhook_url:"), "{bad}: {m}");
        }
        for with_credentials in ["https://user:pw@example.com/hook", "https://token@example.com/hook"] {
            let m = msg(json!({"template_id": "t", "input": {}, "webhook_url": with_credentials}));
            assert!(m.starts_with("webhook_url:") && m.contains("credentials"), "{with_credentials}: {m}");
        }
        assert!(!ok.webhook_on_cancel, "off unless asked");
        let on = parse_run_request(&json!({"template_id": "t", "input": {}, "webhook_on_cancel": true})).unwrap();
        assert!(on.webhook_on_cancel);
        assert!(
            msg(json!({"template_id": "t", "input": {}, "webhook_on_cancel": "yes"})).starts_with("webhook_on_cancel:")
        );
        // Not asked for, it is left out of the canonical body (and so of
        // the Idempotency-Key's request hash of earlier requests).
        assert_eq!(serde_json::to_value(&ok).unwrap().get("webhook_on_cancel"), None);
        assert_eq!(serde_json::to_value(&on).unwrap()["webhook_on_cancel"], true);
        assert!(
            parse_run_request(&json!({"template_id": "t", "input": {}, "webhook_url": null}))
                .unwrap()
                .webhook_url
                .is_none()
        );
    }

    #[test]
    fn task_names_are_valid_and_idempotent_names_are_stable() {
        let name = random_task_name();
        assert!(name.starts_with("task-") && name.len() == 17, "{name}");
        assert!(name[5..].chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        let hash = wire::idempotency_hash("acct", "key-1");
        assert_eq!(idempotent_task_name(&hash), idempotent_task_name(&hash));
        assert_eq!(idempotent_task_name(&hash).len(), 17);
    }

    #[test]
    fn idempotency_matches_within_a_day_only() {
        let created = Timestamp::from_second(1_000_000).unwrap();
        let mut task = GpuTask::new(
            "task-1",
            GpuTaskSpec {
                template_ref: TemplateRef { name: "t".into() },
                input: json!({}),
                webhook_url: None,
                webhook_on_cancel: false,
                priority: 0,
                timeout_seconds: None,
                cancel: false,
            },
        );
        task.metadata.creation_timestamp = Some(Time(created));
        task.metadata.annotations = Some(
            [
                (IDEMPOTENCY_KEY_ANNOTATION.to_string(), "k".to_string()),
                (REQUEST_HASH_ANNOTATION.to_string(), "r".to_string()),
            ]
            .into(),
        );
        let soon = created + SignedDuration::from_hours(1);
        assert_eq!(idempotent_match(&task, "k", "r", soon), Some(Ok(())));
        assert!(matches!(idempotent_match(&task, "k", "other", soon), Some(Err(ApiError::Conflict(_)))));
        assert_eq!(idempotent_match(&task, "other", "r", soon), None);
        let late = created + SignedDuration::from_hours(25);
        assert_eq!(idempotent_match(&task, "k", "r", late), None);
    }
}
