//! Sharing the rate-limit counts among gateway replicas, over HTTP and
//! without any object in Kubernetes: every replica answers
//! `GET /v1/internal/ratelimit` with its own counts of the current window,
//! and fetches the other replicas' every [`POLL_INTERVAL`] (see
//! [`super::ratelimit`] for how the counts are used and the bounded overshoot).
//!
//! The peers are a static list of base URLs (`--peer`), or the ready
//! endpoints of the gateway's Service, read from its EndpointSlices
//! (`--peer-service`; a replica finds itself in that list and skips itself
//! by its replica id). The endpoint is authenticated with a token derived
//! from the callback key that every replica already has: HMAC-SHA256 of
//! [`TOKEN_CONTEXT`], which no task's progress token can equal (those are
//! HMACs of `runplane-progress:` and a task UID).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use hmac::{Hmac, Mac};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::{ApiError, Result};
use super::http::{json_response, unix_now};
use super::keys;
use super::ratelimit::Counts;

/// How often the other replicas' counts are fetched.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Longest a fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_millis(400);
/// The path of the counts endpoint.
pub const PATH: &str = "/v1/internal/ratelimit";
/// What the peer token is an HMAC of.
pub const TOKEN_CONTEXT: &str = "runplane.dev/rate-limit-peers";

/// Where the other replicas are.
#[derive(Clone, Debug, Default)]
pub struct PeerConfig {
    /// Base URLs (`http://host:port`) of other replicas.
    pub urls: Vec<String>,
    /// (namespace, name) of the Service whose EndpointSlices list the replicas.
    pub service: Option<(String, String)>,
}

impl PeerConfig {
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty() && self.service.is_none()
    }
}

/// The bearer token of the counts endpoint: hex HMAC-SHA256 of [`TOKEN_CONTEXT`] under the callback key.
pub fn peer_token(callback_key: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(callback_key).expect("HMAC takes keys of any length");
    mac.update(TOKEN_CONTEXT.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A peer given as `host:port` or a URL, as a base URL without a trailing slash.
pub fn normalize(peer: &str) -> String {
    let peer = peer.trim().trim_end_matches('/');
    if peer.contains("://") { peer.to_string() } else { format!("http://{peer}") }
}

/// Base URLs of the ready endpoints of a Service's EndpointSlices: port
/// `http` (or the slice's only port), the first address of each endpoint.
pub fn peer_urls<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> BTreeSet<String> {
    let mut urls = BTreeSet::new();
    for slice in slices {
        let ports = slice.ports.as_deref().unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| p.name.as_deref() == Some("http"))
            .or_else(|| (ports.len() == 1).then(|| &ports[0]))
            .and_then(|p| p.port);
        let Some(port) = port else {
            continue;
        };
        for endpoint in &slice.endpoints {
            // A nil condition means "unknown", which consumers take as ready.
            let conditions = endpoint.conditions.as_ref();
            if conditions.and_then(|c| c.ready) == Some(false) || conditions.and_then(|c| c.terminating) == Some(true) {
                continue;
            }
            let Some(address) = endpoint.addresses.first() else {
                continue;
            };
            let host = if slice.address_type == "IPv6" { format!("[{address}]") } else { address.clone() };
            urls.insert(format!("http://{host}:{port}"));
        }
    }
    urls
}

/// `GET /v1/internal/ratelimit`: this replica's counts of the current window.
pub async fn counts(State(state): State<AppState>, headers: HeaderMap) -> Result<Response> {
    let Some(expected) = state.peer_token.as_deref() else {
        return Err(ApiError::Unauthorized("rate-limit sharing is off here (no --callback-key-file)".into()));
    };
    let token = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(keys::bearer);
    let valid = token.is_some_and(|t| t.len() == expected.len() && bool::from(t.as_bytes().ct_eq(expected.as_bytes())));
    if !valid {
        return Err(ApiError::Unauthorized("Invalid peer token".into()));
    }
    Ok(json_response(StatusCode::OK, &state.limiter.own_counts(&state.replica, unix_now())))
}

/// Watches the EndpointSlices of `service` in `namespace`.
fn watch_slices(client: Client, namespace: &str, service: &str) -> Store<EndpointSlice> {
    use futures::StreamExt;
    let (store, writer) = reflector::store::<EndpointSlice>();
    let config = watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}")).any_semantic();
    let stream = watcher(Api::<EndpointSlice>::namespaced(client, namespace), config).default_backoff().reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(error) = event {
                tracing::warn!(%error, "EndpointSlice watch error; retrying");
            }
        }
    });
    store
}

/// Fetches the other replicas' counts every [`POLL_INTERVAL`], for ever.
pub async fn run(state: AppState, client: Client, config: PeerConfig) {
    if config.is_empty() {
        return;
    }
    let Some(token) = state.peer_token.clone() else {
        tracing::warn!(
            "--peer/--peer-service need --callback-key-file (its key authenticates the replicas): rate limits are counted per replica"
        );
        return;
    };
    let slices = config.service.as_ref().map(|(ns, name)| watch_slices(client, ns, name));
    let http = match reqwest::Client::builder().timeout(FETCH_TIMEOUT).connect_timeout(FETCH_TIMEOUT).build() {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(%error, "no HTTP client for the peers: rate limits are counted per replica");
            return;
        }
    };
    tracing::info!(peers = ?config.urls, service = ?config.service, "sharing rate-limit counts");
    let mut myself: HashSet<String> = HashSet::new();
    let mut warned: HashMap<String, Instant> = HashMap::new();
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut urls: BTreeSet<String> = config.urls.iter().map(|u| normalize(u)).collect();
        if let Some(store) = &slices {
            let state = store.state();
            urls.extend(peer_urls(state.iter().map(Arc::as_ref)));
        }
        urls.retain(|u| !myself.contains(u));
        state.metrics.peers.set(urls.len() as i64);
        let fetches = urls.iter().map(|url| fetch(&http, url, &token));
        let results = futures::future::join_all(fetches).await;
        for (url, result) in urls.into_iter().zip(results) {
            match result {
                Ok(report) if *report.replica == *state.replica => {
                    myself.insert(url);
                }
                Ok(report) => {
                    state.metrics.peer_syncs.with_label_values(&["ok"]).inc();
                    state.limiter.record_peer(report, unix_now());
                }
                Err(error) => {
                    state.metrics.peer_syncs.with_label_values(&["error"]).inc();
                    let now = Instant::now();
                    if warned.get(&url).is_none_or(|at| now.duration_since(*at) > Duration::from_secs(60)) {
                        tracing::warn!(peer = %url, %error, "cannot fetch a replica's rate-limit counts");
                        warned.insert(url, now);
                    }
                }
            }
        }
    }
}

async fn fetch(http: &reqwest::Client, base: &str, token: &str) -> std::result::Result<Counts, String> {
    let response =
        http.get(format!("{base}{PATH}")).bearer_auth(token).send().await.map_err(|e| e.without_url().to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    response.json::<Counts>().await.map_err(|e| e.without_url().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ready_endpoints_of_the_slices_are_the_peers() {
        let slices: Vec<EndpointSlice> = serde_json::from_value(json!([
            {
                "metadata": {"name": "api-a"},
                "addressType": "IPv4",
                "ports": [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8000}],
                "endpoints": [
                    {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                    {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                    {"addresses": ["10.0.0.3"]},
                    {"addresses": ["10.0.0.4"], "conditions": {"ready": true, "terminating": true}},
                ],
            },
            {
                "metadata": {"name": "api-b"},
                "addressType": "IPv6",
                "ports": [{"port": 8001}],
                "endpoints": [{"addresses": ["fd00::5"]}],
            },
            {
                "metadata": {"name": "no-port"},
                "addressType": "IPv4",
                "ports": [{"name": "a", "port": 1}, {"name": "b", "port": 2}],
                "endpoints": [{"addresses": ["10.0.0.9"]}],
            },
        ]))
        .unwrap();
        let urls: Vec<String> = peer_urls(&slices).into_iter().collect();
        assert_eq!(urls, vec!["http://10.0.0.1:8000", "http://10.0.0.3:8000", "http://[fd00::5]:8001"]);
    }

    #[test]
    fn peers_are_base_urls() {
        assert_eq!(normalize("127.0.0.1:8000"), "http://127.0.0.1:8000");
        assert_eq!(normalize("https://api-1.example:8443/"), "https://api-1.example:8443");
    }

    #[test]
    fn the_peer_token_depends_on_the_key() {
        let token = peer_token(b"key-1");
        assert_eq!(token.len(), 64);
        assert_eq!(token, peer_token(b"key-1"));
        assert_ne!(token, peer_token(b"key-2"));
    }
}
