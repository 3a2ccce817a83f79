//! Webhooks: the seed's payload, its signatures, when to try again, and
//! which destinations may be called. Pure; the controller's deliverer does
//! the HTTP and keeps the state on the task.
//!
//! Two signatures travel with every delivery, both over the raw body:
//! - `X-RunKey-Signature: sha256=<hex HMAC-SHA256(secret, body)>` (the seed's);
//! - Standard Webhooks: `webhook-id`, `webhook-timestamp` and
//!   `webhook-signature: v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`,
//!   which lets receivers reject replays.
//!
//! With several active secrets (rotation) each header carries one signature
//! per secret, separated by a space.

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use ipnet::IpNet;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::resources::{GpuTask, TaskPhase};

/// Delivery rules.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookConfig {
    /// First retry delay; doubles per attempt up to `max_backoff`.
    pub backoff: SignedDuration,
    pub max_backoff: SignedDuration,
    /// Retrying stops this long after the event.
    pub give_up_after: SignedDuration,
    /// Destinations allowed even though they are private or loopback.
    pub allow: Vec<IpNet>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            backoff: SignedDuration::from_secs(5),
            max_backoff: SignedDuration::from_hours(1),
            give_up_after: SignedDuration::from_hours(72),
            allow: Vec::new(),
        }
    }
}

/// The event a finished task sends, if any.
pub fn event_for(task: &GpuTask) -> Option<&'static str> {
    match task.phase()? {
        TaskPhase::Completed => Some("task.completed"),
        TaskPhase::Failed => Some("task.failed"),
        TaskPhase::Canceled if task.spec.webhook_on_cancel => Some("task.canceled"),
        _ => None,
    }
}

/// The stable id of a task's event, the same on every retry and redelivery.
pub fn event_id(task: &GpuTask, event: &str) -> String {
    let digest = Sha256::digest(format!("{}/{event}", task.metadata.uid.as_deref().unwrap_or_default()));
    format!("msg_{}", &hex::encode(digest)[..32])
}

/// The seed's payload, serialized deterministically (sorted keys), so every
/// attempt sends the same bytes. `signature` carries the RunKey signature of
/// the payload without that field, for receivers that read it from the body.
pub fn payload(task: &GpuTask, event: &str, secrets: &[Vec<u8>]) -> Vec<u8> {
    let status = task.status.clone().unwrap_or_default();
    let mut data = json!({
        "task_id": task.metadata.name,
        "template_id": task.spec.template_ref.name,
        "status": status.phase.map(|p| p.as_wire()),
        "output": status.output,
        "processing_time": status.processing_time,
        "credits_used": status.credits_used,
        "created_at": task.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
        "started_at": status.started_at.as_ref().map(|t| t.0.to_string()),
        "completed_at": status.completed_at.as_ref().map(|t| t.0.to_string()),
    });
    if let Some(code) = status.error_code {
        data["error"] = json!({"code": code, "message": status.error_message});
    }
    let timestamp = status.completed_at.as_ref().map(|t| t.0.to_string());
    let mut body = json!({"event": event, "timestamp": timestamp, "data": data});
    let unsigned = serde_json::to_vec(&body).expect("JSON serializes");
    body["signature"] = Value::String(runkey_signature(secrets, &unsigned));
    serde_json::to_vec(&body).expect("JSON serializes")
}

fn hmac(secret: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// `sha256=<hex>` per secret.
pub fn runkey_signature(secrets: &[Vec<u8>], body: &[u8]) -> String {
    secrets.iter().map(|s| format!("sha256={}", hex::encode(hmac(s, &[body])))).collect::<Vec<_>>().join(" ")
}

/// `v1,<base64>` per secret, over `{id}.{timestamp}.{body}`.
pub fn standard_signature(secrets: &[Vec<u8>], id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    secrets
        .iter()
        .map(|s| format!("v1,{}", BASE64.encode(hmac(s, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A signing secret as stored: `whsec_<base64>` (Standard Webhooks) is
/// decoded, anything else is used as its bytes.
pub fn secret_bytes(stored: &[u8]) -> Vec<u8> {
    if let Some(encoded) = stored.strip_prefix(b"whsec_")
        && let Ok(bytes) = BASE64.decode(encoded)
    {
        return bytes;
    }
    stored.to_vec()
}

/// What an attempt's response means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try again, not before `after` if the receiver asked (Retry-After).
    Retry {
        after: Option<SignedDuration>,
    },
    /// The receiver said it is gone (410), or the destination is refused.
    Stop,
}

/// Classifies a response status: 2xx delivered, 410 stops, anything else retries.
/// Redirects are not followed, and count as failures.
pub fn outcome(status: u16, retry_after: Option<&str>) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        410 => Outcome::Stop,
        _ => Outcome::Retry { after: retry_after.and_then(parse_retry_after) },
    }
}

/// `Retry-After` in seconds (HTTP dates are not honoured; the backoff applies).
fn parse_retry_after(value: &str) -> Option<SignedDuration> {
    let seconds: i64 = value.trim().parse().ok()?;
    (seconds >= 0).then(|| SignedDuration::from_secs(seconds.min(24 * 3600)))
}

/// When to try again after `attempts` failed attempts, or None to give up.
/// Jitter (±20 %) is derived from the event id, so it is stable and spreads
/// receivers' retries apart.
pub fn next_attempt(
    config: &WebhookConfig,
    id: &str,
    attempts: u32,
    first_attempt: Timestamp,
    now: Timestamp,
    retry_after: Option<SignedDuration>,
) -> Option<Timestamp> {
    let exp = config.backoff.checked_mul(1i32 << attempts.saturating_sub(1).min(20)).unwrap_or(config.max_backoff);
    let base = exp.min(config.max_backoff);
    let digest = Sha256::digest(format!("{id}/{attempts}"));
    let unit = f64::from(u16::from_be_bytes([digest[0], digest[1]])) / f64::from(u16::MAX); // 0..1
    let jittered = base.mul_f64(0.8 + 0.4 * unit);
    let delay = retry_after.map_or(jittered, |r| r.max(jittered));
    let at = now + delay;
    (at <= first_attempt + config.give_up_after).then_some(at)
}

/// Why a destination may not be called, if it may not.
pub fn check_url(url: &str) -> Result<url::Url, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("invalid webhook URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("the webhook URL must be http or https".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("the webhook URL has no host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("the webhook URL must not carry credentials".into());
    }
    Ok(parsed)
}

/// Refuses loopback, private, link-local, unique-local, CGNAT, multicast and
/// cloud-metadata addresses unless the allowlist covers them. Every address
/// a name resolves to must pass.
pub fn check_addresses(addresses: &[IpAddr], allow: &[IpNet]) -> Result<(), String> {
    if addresses.is_empty() {
        return Err("the webhook host resolves to no address".into());
    }
    for address in addresses {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(*address),
            v4 => *v4,
        };
        if allow.iter().any(|net| net.contains(&address)) {
            continue;
        }
        if let Some(kind) = forbidden(&address) {
            return Err(format!("the webhook destination {address} is {kind}; refused (see --webhook-allow-cidr)"));
        }
    }
    Ok(())
}

fn forbidden(address: &IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(ip) => {
            let o = ip.octets();
            if ip.is_loopback() {
                Some("loopback")
            } else if ip.is_private() {
                Some("private")
            } else if ip.is_link_local() {
                Some("link-local (cloud metadata)")
            } else if ip.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if ip.is_broadcast() || ip.is_multicast() {
                Some("broadcast or multicast")
            } else if o[0] == 100 && (64..128).contains(&o[1]) {
                Some("shared address space (CGNAT)")
            } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
                Some("IETF protocol assignments")
            } else if o[0] >= 240 {
                Some("reserved")
            } else {
                None
            }
        }
        IpAddr::V6(ip) => {
            let s = ip.segments();
            if ip.is_loopback() {
                Some("loopback")
            } else if ip.is_unspecified() {
                Some("unspecified")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("unique-local")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if ip.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{task, ts};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn done() -> GpuTask {
        task("t")
            .status(|s| {
                s.phase = Some(TaskPhase::Completed);
                s.output = Some(json!({"result_url": "https://cdn/x.png"}));
                s.completed_at = Some(Time(ts(10)));
                s.credits_used = Some(15);
                s.processing_time = Some(8.2);
            })
            .build()
    }

    #[test]
    fn payload_is_the_seeds_and_stable() {
        let secrets = vec![b"secret".to_vec()];
        let body = payload(&done(), "task.completed", &secrets);
        assert_eq!(body, payload(&done(), "task.completed", &secrets), "same bytes on every attempt");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["event"], "task.completed");
        assert_eq!(v["data"]["task_id"], "t");
        assert_eq!(v["data"]["template_id"], "tpl");
        assert_eq!(v["data"]["status"], "completed");
        assert_eq!(v["data"]["credits_used"], 15);
        assert_eq!(v["data"]["processing_time"], 8.2);
        assert_eq!(v["data"]["output"]["result_url"], "https://cdn/x.png");
        assert!(v["signature"].as_str().unwrap().starts_with("sha256="));
    }

    #[test]
    fn signatures_match_known_vectors() {
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog")
        let sig = runkey_signature(&[b"key".to_vec()], b"The quick brown fox jumps over the lazy dog");
        assert_eq!(sig, "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8");
        let two = runkey_signature(&[b"a".to_vec(), b"b".to_vec()], b"x");
        assert_eq!(two.split(' ').count(), 2);
        let std = standard_signature(&[b"key".to_vec()], "msg_1", 1700000000, b"{}");
        assert!(std.starts_with("v1,"));
        assert_eq!(secret_bytes(b"whsec_c2VjcmV0"), b"secret");
        assert_eq!(secret_bytes(b"plain"), b"plain");
    }

    #[test]
    fn events_by_phase() {
        assert_eq!(event_for(&done()), Some("task.completed"));
        let mut canceled = done();
        canceled.status.as_mut().unwrap().phase = Some(TaskPhase::Canceled);
        assert_eq!(event_for(&canceled), None, "canceled is opt-in");
        canceled.spec.webhook_on_cancel = true;
        assert_eq!(event_for(&canceled), Some("task.canceled"));
        assert_ne!(event_id(&done(), "task.completed"), event_id(&done(), "task.failed"));
    }

    #[test]
    fn responses() {
        assert_eq!(outcome(204, None), Outcome::Delivered);
        assert_eq!(outcome(410, None), Outcome::Stop);
        assert_eq!(outcome(302, None), Outcome::Retry { after: None });
        assert_eq!(outcome(503, Some("120")), Outcome::Retry { after: Some(SignedDuration::from_secs(120)) });
    }

    #[test]
    fn backoff_grows_with_jitter_and_gives_up() {
        let config = WebhookConfig::default();
        let first = ts(0);
        let d1 = next_attempt(&config, "id", 1, first, first, None).unwrap().duration_since(first);
        let d4 = next_attempt(&config, "id", 4, first, first, None).unwrap().duration_since(first);
        assert!(d1 >= SignedDuration::from_secs(4) && d1 <= SignedDuration::from_secs(6), "{d1:?}");
        assert!(d4 >= SignedDuration::from_secs(32) && d4 <= SignedDuration::from_secs(48), "{d4:?}");
        let late = first + SignedDuration::from_hours(72);
        assert_eq!(next_attempt(&config, "id", 30, first, late, None), None);
        let asked = next_attempt(&config, "id", 1, first, first, Some(SignedDuration::from_secs(600))).unwrap();
        assert_eq!(asked.duration_since(first), SignedDuration::from_secs(600), "Retry-After is honoured");
    }

    #[test]
    fn private_destinations_are_refused_unless_allowed() {
        let refuse = |a: &str| check_addresses(&[a.parse().unwrap()], &[]).is_err();
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(refuse(bad), "{bad} must be refused");
        }
        assert!(!refuse("93.184.216.34"));
        assert!(!refuse("2606:4700::1"));
        // Every address must pass: one public and one private is refused.
        assert!(check_addresses(&["93.184.216.34".parse().unwrap(), "10.0.0.1".parse().unwrap()], &[]).is_err());
        let allow = vec!["127.0.0.0/8".parse().unwrap()];
        assert!(check_addresses(&["127.0.0.1".parse().unwrap()], &allow).is_ok());
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("https://user:pw@example.com/").is_err());
        assert!(check_url("https://example.com/hook").is_ok());
    }
}
