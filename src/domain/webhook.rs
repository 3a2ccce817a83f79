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
    /// Retrying stops this long after the delivery's first attempt.
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

/// What an attempt came to, as the `result` label of
/// `runplane_webhook_deliveries_total` (a bounded set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryResult {
    /// A 2xx answer.
    Delivered,
    /// No 2xx (or no answer); another attempt is scheduled.
    Failed,
    /// 410 Gone: the receiver does not want it; not retried.
    Gone,
    /// A 3xx answer: redirects are not followed, and not retried.
    Redirect,
    /// The destination may not be called (SSRF guard, bad URL, a signing
    /// Secret outside the controller's namespace); not retried.
    Refused,
    /// Nothing was sent: the signing secret could not be read; tried again.
    NoSecret,
    /// Retrying stopped: the give-up age was reached.
    GaveUp,
}

impl DeliveryResult {
    pub const ALL: [Self; 7] =
        [Self::Delivered, Self::Failed, Self::Gone, Self::Redirect, Self::Refused, Self::NoSecret, Self::GaveUp];

    pub fn as_label(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Gone => "gone",
            Self::Redirect => "redirect",
            Self::Refused => "refused",
            Self::NoSecret => "no_secret",
            Self::GaveUp => "gave_up",
        }
    }
}

/// What an attempt's response means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try again, not before `after` if the receiver asked (Retry-After).
    Retry {
        after: Option<SignedDuration>,
    },
    /// 410: the receiver said it is gone.
    Gone,
    /// A redirect, not followed: following one would send the signed event
    /// (and the SSRF guard's trust) to a destination nobody checked.
    Redirect {
        location: Option<String>,
    },
}

/// Classifies a response: 2xx delivered, 3xx and 410 stop, anything else
/// retries (honouring `Retry-After`, in seconds or as an HTTP date).
pub fn outcome(status: u16, retry_after: Option<&str>, location: Option<&str>, now: Timestamp) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        300..=399 => Outcome::Redirect { location: location.map(String::from) },
        410 => Outcome::Gone,
        _ => Outcome::Retry { after: retry_after.and_then(|v| parse_retry_after(v, now)) },
    }
}

/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: SignedDuration = SignedDuration::from_hours(24);

/// `Retry-After` (RFC 9110): delay-seconds or an HTTP date; a date in the
/// past means now. None when it is neither.
fn parse_retry_after(value: &str, now: Timestamp) -> Option<SignedDuration> {
    let value = value.trim();
    let delay = match value.parse::<i64>() {
        Ok(seconds) if seconds >= 0 => SignedDuration::from_secs(seconds.min(MAX_RETRY_AFTER.as_secs())),
        Ok(_) => return None,
        Err(_) => {
            let at = Timestamp::try_from(httpdate::parse_http_date(value).ok()?).ok()?;
            at.duration_since(now).max(SignedDuration::ZERO)
        }
    };
    Some(delay.min(MAX_RETRY_AFTER))
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
    let at = ceil_second(now + delay);
    (at <= first_attempt + config.give_up_after).then_some(at)
}

/// Rounds up to a whole second: the status keeps times to the second, and a
/// time rounded down would come before what a receiver's Retry-After asked.
fn ceil_second(t: Timestamp) -> Timestamp {
    if t.subsec_nanosecond() == 0 {
        return t;
    }
    Timestamp::from_second(t.as_second() + 1).unwrap_or(t)
}

/// How often a delivery whose signing secret cannot be read looks again.
const UNSIGNED_RETRY: SignedDuration = SignedDuration::from_secs(30);

/// When to look for the signing secret again, or None to give up: nothing
/// was sent, but the give-up age still counts from the first try, so a
/// secret that never appears cannot keep the task (and its TTL) forever.
pub fn next_unsent_attempt(config: &WebhookConfig, first_attempt: Timestamp, now: Timestamp) -> Option<Timestamp> {
    let at = now + UNSIGNED_RETRY.min(config.max_backoff);
    (at <= first_attempt + config.give_up_after).then_some(at)
}

/// How long to wait before writing an attempt's outcome again after
/// `failures` failed writes: the delivery backoff, doubling, so that an
/// unhappy API server is not hammered and nothing is sent meanwhile.
pub fn record_retry_delay(config: &WebhookConfig, failures: u32) -> SignedDuration {
    let factor = 1i32 << failures.saturating_sub(1).min(20);
    config.backoff.checked_mul(factor).unwrap_or(config.max_backoff).min(config.max_backoff)
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

/// The IP address a URL's host is, when it is a literal rather than a name.
pub fn ip_literal(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

/// Why `address` may not be called, unless the allowlist covers it.
pub fn refused(address: IpAddr, allow: &[IpNet]) -> Option<String> {
    let address = match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(address),
        v4 => v4,
    };
    if allow.iter().any(|net| net.contains(&address)) {
        return None;
    }
    let (_, kind) = refused_ranges().iter().find(|(net, _)| net.contains(&address))?;
    Some(format!("the webhook destination {address} is {kind}; refused (see --webhook-allow-cidr)"))
}

/// Refuses loopback, private, link-local, unique-local, CGNAT, multicast,
/// reserved, cloud-metadata and IPv4-embedding addresses unless the
/// allowlist covers them. Every address a name resolves to must pass: the
/// connection may go to any of them.
pub fn check_addresses(addresses: &[IpAddr], allow: &[IpNet]) -> Result<(), String> {
    if addresses.is_empty() {
        return Err("the webhook host resolves to no address".into());
    }
    match addresses.iter().find_map(|a| refused(*a, allow)) {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// At submit time: refuses a destination none of whose addresses may be
/// called (the controller checks every address again when it delivers).
pub fn check_any_address(addresses: &[IpAddr], allow: &[IpNet]) -> Result<(), String> {
    let mut refusals: Vec<String> = addresses.iter().filter_map(|a| refused(*a, allow)).collect();
    match refusals.len() {
        _ if addresses.is_empty() => Err("the webhook host resolves to no address".into()),
        n if n == addresses.len() => Err(refusals.swap_remove(0)),
        _ => Ok(()),
    }
}

/// Ranges no webhook may reach, with what they are: IANA's special-purpose
/// registries (RFC 6890 and successors) less what is globally reachable, plus
/// the IPv6 prefixes that embed an IPv4 address (NAT64, 6to4, Teredo,
/// IPv4-compatible), since a gateway may turn those into an internal IPv4
/// destination. Kept here rather than taken from a crate: `is_global` is not
/// stable in std, and "globally reachable" alone lets those prefixes through.
fn refused_ranges() -> &'static [(IpNet, &'static str)] {
    static RANGES: std::sync::LazyLock<Vec<(IpNet, &'static str)>> = std::sync::LazyLock::new(|| {
        [
            ("0.0.0.0/8", "\"this network\" (unspecified)"),
            ("10.0.0.0/8", "private"),
            ("100.64.0.0/10", "shared address space (CGNAT)"),
            ("127.0.0.0/8", "loopback"),
            ("169.254.0.0/16", "link-local (cloud metadata)"),
            ("172.16.0.0/12", "private"),
            ("192.0.0.0/24", "IETF protocol assignments"),
            ("192.0.2.0/24", "documentation"),
            ("192.88.99.0/24", "6to4 relay anycast"),
            ("192.168.0.0/16", "private"),
            ("198.18.0.0/15", "benchmarking"),
            ("198.51.100.0/24", "documentation"),
            ("203.0.113.0/24", "documentation"),
            ("224.0.0.0/4", "multicast"),
            ("240.0.0.0/4", "reserved (or broadcast)"),
            ("::/128", "unspecified"),
            ("::1/128", "loopback"),
            ("::/96", "IPv4-compatible (deprecated)"),
            ("64:ff9b::/96", "NAT64"),
            ("64:ff9b:1::/48", "local-use NAT64"),
            ("100::/64", "discard-only"),
            ("2001::/32", "Teredo"),
            ("2001:2::/48", "benchmarking"),
            ("2001:10::/28", "ORCHID"),
            ("2001:db8::/32", "documentation"),
            ("2002::/16", "6to4"),
            ("3fff::/20", "documentation"),
            ("fc00::/7", "unique-local"),
            ("fe80::/10", "link-local"),
            ("fec0::/10", "site-local (deprecated)"),
            ("ff00::/8", "multicast"),
        ]
        .into_iter()
        .map(|(net, kind)| (net.parse().expect("a valid CIDR"), kind))
        .collect()
    });
    &RANGES
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
        let now = ts(0);
        assert_eq!(outcome(204, None, None, now), Outcome::Delivered);
        assert_eq!(outcome(410, None, None, now), Outcome::Gone);
        for status in [301, 302, 304, 307, 308] {
            assert_eq!(
                outcome(status, Some("5"), Some("https://elsewhere/"), now),
                Outcome::Redirect { location: Some("https://elsewhere/".into()) },
                "{status} is final"
            );
        }
        assert_eq!(
            outcome(503, Some("120"), None, now),
            Outcome::Retry { after: Some(SignedDuration::from_secs(120)) }
        );
        assert_eq!(outcome(500, None, None, now), Outcome::Retry { after: None });
        assert_eq!(outcome(429, Some("soon"), None, now), Outcome::Retry { after: None });
        assert_eq!(outcome(429, Some("-3"), None, now), Outcome::Retry { after: None });
        assert_eq!(
            outcome(429, Some("999999999"), None, now),
            Outcome::Retry { after: Some(SignedDuration::from_hours(24)) },
            "capped"
        );
        // An HTTP date: the delay until then; one in the past means now.
        let in_90s = httpdate::fmt_http_date((now + SignedDuration::from_secs(90)).into());
        assert_eq!(
            outcome(503, Some(&in_90s), None, now),
            Outcome::Retry { after: Some(SignedDuration::from_secs(90)) }
        );
        let past = httpdate::fmt_http_date((now - SignedDuration::from_secs(90)).into());
        assert_eq!(outcome(503, Some(&past), None, now), Outcome::Retry { after: Some(SignedDuration::ZERO) });
    }

    #[test]
    fn an_unreadable_secret_is_looked_for_again_until_the_give_up_age() {
        let config = WebhookConfig {
            backoff: SignedDuration::from_secs(1),
            max_backoff: SignedDuration::from_secs(2),
            give_up_after: SignedDuration::from_secs(5),
            allow: vec![],
        };
        let first = ts(0);
        assert_eq!(next_unsent_attempt(&config, first, first), Some(ts(2)), "at most max_backoff apart");
        assert_eq!(next_unsent_attempt(&config, first, ts(3)), Some(ts(5)));
        assert_eq!(next_unsent_attempt(&config, first, ts(4)), None, "past the give-up age");
        let default = WebhookConfig::default();
        assert_eq!(next_unsent_attempt(&default, first, first), Some(ts(30)));
        assert_eq!(next_unsent_attempt(&default, first, first + SignedDuration::from_hours(72)), None);
    }

    #[test]
    fn failed_writes_back_off() {
        let config = WebhookConfig::default();
        assert_eq!(record_retry_delay(&config, 1), SignedDuration::from_secs(5));
        assert_eq!(record_retry_delay(&config, 2), SignedDuration::from_secs(10));
        assert_eq!(record_retry_delay(&config, 4), SignedDuration::from_secs(40));
        assert_eq!(record_retry_delay(&config, 60), SignedDuration::from_hours(1));
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
        // Kept to the second on the status, the time is rounded up, never
        // to before what Retry-After asked.
        let now = first + SignedDuration::from_millis(700);
        let asked = next_attempt(&config, "id", 1, first, now, Some(SignedDuration::from_secs(600))).unwrap();
        assert_eq!(asked, ts(601));
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
            "0.1.2.3",
            "192.0.0.170",
            "192.0.2.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::10.0.0.1",
            "::8.8.8.8",
            "64:ff9b::a00:1",
            "64:ff9b::808:808",
            "64:ff9b:1::1",
            "2002:a00:1::1",
            "2001:0:4136:e378::1",
            "2001:db8::1",
            "100::1",
        ] {
            assert!(refuse(bad), "{bad} must be refused");
        }
        for good in ["93.184.216.34", "8.8.8.8", "198.20.0.1", "::ffff:93.184.216.34", "2606:4700::1", "2a00:1450::1"] {
            assert!(!refuse(good), "{good} is a public address");
        }
        let why = check_addresses(&["64:ff9b::a00:1".parse().unwrap()], &[]).unwrap_err();
        assert!(why.contains("NAT64"), "{why}");
        // Every address must pass: one public and one private is refused.
        let mixed = ["93.184.216.34".parse().unwrap(), "10.0.0.1".parse().unwrap()];
        assert!(check_addresses(&mixed, &[]).unwrap_err().contains("10.0.0.1 is private"));
        assert!(check_addresses(&[], &[]).is_err());
        // At submit time only a destination with no callable address is refused.
        assert!(check_any_address(&mixed, &[]).is_ok());
        assert!(check_any_address(&[mixed[1], "127.0.0.1".parse().unwrap()], &[]).unwrap_err().contains("10.0.0.1"));
        assert!(check_any_address(&[], &[]).is_err());
        let allow = vec!["127.0.0.0/8".parse().unwrap()];
        assert!(check_any_address(&["127.0.0.1".parse().unwrap()], &allow).is_ok());
        assert!(check_addresses(&["127.0.0.1".parse().unwrap()], &allow).is_ok());
        assert!(check_addresses(&["::ffff:127.0.0.1".parse().unwrap()], &allow).is_ok(), "mapped, then allowed");
        assert!(check_addresses(&["10.0.0.1".parse().unwrap()], &allow).is_err());
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("https://user:pw@example.com/").is_err());
        assert!(check_url("https://user@example.com/").is_err());
        assert!(check_url("https://example.com/hook").is_ok());
        let literal = |u: &str| ip_literal(&check_url(u).unwrap());
        assert_eq!(literal("http://[::1]:8080/x"), Some("::1".parse().unwrap()));
        assert_eq!(literal("http://10.0.0.1/x"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(literal("http://hooks.example.com/x"), None);
    }

    /// The test vector README.md shows under "Verifying a delivery": what a
    /// receiver must compute for a fixed secret, id, timestamp and body.
    #[test]
    fn the_readme_test_vector() {
        let secrets = vec![secret_bytes(b"whsec_ZXhhbXBsZS1zaWduaW5nLXNlY3JldA==")];
        assert_eq!(secrets[0], b"example-signing-secret");
        let body = br#"{"event":"task.completed","data":{"task_id":"task-1"}}"#;
        let id = "msg_2f6b0e1c9d8a7b6c5d4e3f2a1b0c9d8e";
        let runkey = runkey_signature(&secrets, body);
        let standard = standard_signature(&secrets, id, 1767225600, body);
        assert_eq!(runkey, "sha256=68b9fa4a6395a6dbf2c6da5bfedbf9b677d784b9564a58fa314c9a7c6595299e");
        assert_eq!(standard, "v1,GgYQS20jGwBivDCxuuBs0y6lsl6k2vCvQ0QGXkXdW6w=");
        let readme = include_str!("../../README.md");
        for shown in [runkey.as_str(), standard.as_str(), id, "1767225600", "whsec_ZXhhbXBsZS1zaWduaW5nLXNlY3JldA=="] {
            assert!(readme.contains(shown), "README.md shows {shown}");
        }
        assert!(readme.contains(r#"b'{"event":"task.completed","data":{"task_id":"task-1"}}'"#));
    }
}
