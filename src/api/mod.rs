//! The HTTP gateway (`runplane api`): RunKey's `/v1` and RunningHub's
//! `/openapi/v2` wire formats on top of GpuTasks.
//!
//! ```text
//!  client ──Bearer rk_live_…──▶ outer (request id, errors, metrics, rate-limit headers)
//!                                 └▶ authenticate (key index → GpuAccount, rate limit)
//!                                      └▶ /v1, /openapi/v2 handlers ──reads──▶ reflector caches + indexes
//!                                                 └──creates / cancels──▶ GpuTask (field manager runplane.dev/api)
//!  workload ──Bearer <progress token>──▶ /v1/internal/tasks/{id}/progress ──▶ GpuTask status (progress, output)
//!  replica ◀──GET /v1/internal/ratelimit (peer token)──▶ replica   (shared rate-limit counts)
//! ```
//!
//! The gateway is stateless apart from its caches and the rate-limit windows
//! of the current minute; it decides nothing about admission or accounting,
//! and it writes no other object than GpuTasks: creates (`POST /v1/run`,
//! RunningHub submits), cancels (`spec.cancel`), webhook redelivery requests
//! (an annotation) and the workloads' progress (status).

pub mod caches;
pub mod client;
pub mod error;
pub mod http;
pub mod index;
pub mod keys;
mod openapi;
pub mod peers;
pub mod progress;
pub mod ratelimit;
pub mod runninghub;
pub mod submit;
pub mod v1;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::middleware::{from_fn, from_fn_with_state};
use kube::Client;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

pub use caches::Caches;
pub use openapi::document;

use crate::domain::input::InputSchema;
use crate::resources::{GpuTask, GpuTemplate};
use crate::telemetry::ApiMetrics;
use error::ApiError;

/// Everything the gateway is configured with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Namespace of the API-key Secrets.
    pub key_namespace: String,
    /// Key that derives per-task progress tokens (shared with the controller);
    /// None disables the progress callback and the sharing of rate-limit counts.
    pub callback_key: Option<Vec<u8>>,
    /// The other replicas, to share rate-limit counts with.
    pub peers: peers::PeerConfig,
    /// Private or loopback ranges a submitted webhook URL may still name.
    pub webhook_allow: Vec<ipnet::IpNet>,
    /// What each plan allows (the controller must have the same table).
    pub plans: crate::resources::Plans,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub client: Client,
    pub caches: Caches,
    pub metrics: Arc<ApiMetrics>,
    pub limiter: Arc<ratelimit::RateLimiter>,
    pub ready: Arc<AtomicBool>,
    pub callback_key: Option<Arc<[u8]>>,
    /// This replica's id among its peers (random per process).
    pub replica: Arc<str>,
    /// The token the replicas present to each other; None without a callback key.
    pub peer_token: Option<Arc<str>>,
    /// Progress writes per task, for their throttle.
    pub progress_throttle: Arc<progress::Throttle>,
    /// When a key from a tenant's namespace was last logged, to log loudly but not endlessly.
    pub tenant_key_logged: Arc<Mutex<Option<Instant>>>,
    /// Private or loopback ranges a submitted webhook URL may still name.
    pub webhook_allow: Arc<[ipnet::IpNet]>,
    /// What each plan allows.
    pub plans: Arc<crate::resources::Plans>,
    openapi: Arc<String>,
    /// Tasks this replica created lately, so that a GET right after the POST
    /// waits for the cache instead of answering "not found".
    recent: Arc<Mutex<HashMap<(String, String), Instant>>>,
    /// Compiled input schemas by template, with the resourceVersion they were compiled from.
    schemas: Arc<Mutex<HashMap<(String, String), CompiledSchema>>>,
}

/// A template's input schema and the resourceVersion it was compiled from.
type CompiledSchema = (String, Arc<InputSchema>);

/// How long a created task counts as recent.
const RECENT: Duration = Duration::from_secs(60);

impl AppState {
    pub fn new(client: Client, caches: Caches, callback_key: Option<Vec<u8>>) -> Self {
        let openapi = serde_json::to_string_pretty(&document()).expect("the document serializes");
        Self {
            client,
            caches,
            metrics: Arc::new(ApiMetrics::new()),
            limiter: Arc::default(),
            ready: Arc::new(AtomicBool::new(false)),
            peer_token: callback_key.as_deref().map(|k| Arc::from(peers::peer_token(k))),
            callback_key: callback_key.map(Arc::from),
            replica: Arc::from(hex::encode(rand::RngExt::random::<[u8; 8]>(&mut rand::rng()))),
            progress_throttle: Arc::default(),
            tenant_key_logged: Arc::default(),
            webhook_allow: Arc::from([]),
            plans: Arc::default(),
            openapi: Arc::new(openapi),
            recent: Arc::default(),
            schemas: Arc::default(),
        }
    }

    /// The template's compiled input schema (compiled once per template version).
    pub fn input_schema(&self, template: &GpuTemplate) -> Result<Arc<InputSchema>, ApiError> {
        let key = (template.namespace().unwrap_or_default(), template.name_any());
        let version = template.resource_version().unwrap_or_default();
        let mut schemas = self.schemas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((v, schema)) = schemas.get(&key)
            && *v == version
        {
            return Ok(schema.clone());
        }
        let schema = InputSchema::compile(template.spec.input_schema.as_ref()).map_err(|e| {
            tracing::warn!(template = %key.1, namespace = %key.0, error = %e, "template has an invalid inputSchema");
            ApiError::Internal(format!("template {} cannot be run: {e}", key.1))
        })?;
        let schema = Arc::new(schema);
        if schemas.len() > 4096 {
            schemas.clear();
        }
        schemas.insert(key, (version, schema.clone()));
        Ok(schema)
    }

    pub fn remember_created(&self, namespace: &str, name: &str) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        recent.retain(|_, at| now.duration_since(*at) < RECENT);
        recent.insert((namespace.to_string(), name.to_string()), now);
    }

    /// The namespace of `name` if this replica created it lately in one of `namespaces`.
    pub fn recently_created(&self, namespaces: &[String], name: &str) -> Option<String> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        namespaces
            .iter()
            .find(|ns| recent.get(&((*ns).clone(), name.to_string())).is_some_and(|at| at.elapsed() < RECENT))
            .cloned()
    }

    /// Waits up to `timeout` for the cache to hold every task this replica
    /// created lately in `namespaces`, so that a list or a count right after
    /// a POST includes the task the POST made. A task the cache has shown is
    /// no longer waited for, and neither is one that did not show up in time
    /// (deleted at once, say): each costs a list at most one wait.
    pub async fn wait_for_recent(&self, namespaces: &[String], timeout: Duration) {
        let mut changes = self.caches.task_changes.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            let timed_out = tokio::time::Instant::now() >= deadline;
            let missing = {
                let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
                let mut missing = false;
                recent.retain(|(ns, name), at| {
                    if at.elapsed() >= RECENT {
                        return false;
                    }
                    if !namespaces.contains(ns) {
                        return true;
                    }
                    let waiting = self.caches.tasks.get(&ObjectRef::new(name).within(ns)).is_none() && !timed_out;
                    missing |= waiting;
                    waiting
                });
                missing
            };
            if !missing {
                return;
            }
            // On a timeout the next pass forgets what is still missing.
            if let Ok(Err(_)) = tokio::time::timeout_at(deadline, changes.changed()).await {
                return;
            }
        }
    }

    /// Waits up to `timeout` for the cache to show the task in a state that
    /// satisfies `done`; returns it then, or None.
    pub async fn wait_for_task(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
        done: impl Fn(&GpuTask) -> bool,
    ) -> Option<Arc<GpuTask>> {
        let key = ObjectRef::new(name).within(namespace);
        let mut changes = self.caches.task_changes.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            if let Some(task) = self.caches.tasks.get(&key).filter(|t| done(t)) {
                return Some(task);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }
}

/// The gateway's routes, with the OpenAPI document they generate.
fn routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;

    let tenant = OpenApiRouter::new()
        .routes(routes!(v1::run))
        .routes(routes!(v1::list_tasks))
        .routes(routes!(v1::get_task))
        .routes(routes!(v1::cancel_task))
        .routes(routes!(v1::redeliver_webhook))
        .routes(routes!(v1::account))
        .routes(routes!(runninghub::query))
        .routes(routes!(runninghub::submit))
        .route_layer(from_fn(http::authenticate));
    OpenApiRouter::with_openapi(openapi::base())
        .merge(tenant)
        .routes(routes!(progress::report))
        .routes(routes!(openapi::healthz))
        .routes(routes!(openapi::readyz))
        .routes(routes!(openapi::metrics))
        .routes(routes!(openapi::openapi_json))
}

/// The gateway as an axum app.
pub fn app(state: AppState) -> Router {
    let (router, _) = routes().split_for_parts();
    // The replicas' counts endpoint is for the replicas alone: not in the document.
    router
        .route(peers::PATH, axum::routing::get(peers::counts))
        .fallback(http::no_route)
        .layer(from_fn_with_state(state.clone(), http::outer))
        .with_state(state)
}

/// Serves the gateway until SIGTERM or Ctrl-C.
pub async fn run(client: Client, config: Config) -> anyhow::Result<()> {
    let (caches, _reflectors) = caches::start(client.clone(), &config.key_namespace);
    let client_for_peers = client.clone();
    let mut state = AppState::new(client, caches.clone(), config.callback_key.clone());
    state.webhook_allow = Arc::from(config.webhook_allow.as_slice());
    state.plans = Arc::new(config.plans.clone());
    if state.callback_key.is_none() {
        tracing::warn!("no --callback-key-file: progress callbacks are refused");
    }
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(addr = %config.listen, keys = %config.key_namespace, replica = %state.replica, "serving the API");
    tokio::spawn(peers::run(state.clone(), client_for_peers, config.peers.clone()));
    let ready = state.ready.clone();
    let key_namespace = config.key_namespace.clone();
    tokio::spawn(async move {
        match caches.wait_until_ready().await {
            Ok(()) => {
                ready.store(true, Ordering::SeqCst);
                tracing::info!("caches ready");
                if caches.account_index.read().is_listed(&key_namespace) {
                    tracing::error!(
                        namespace = %key_namespace,
                        "the API-key namespace is listed by a GpuAccount: its tenant could mint keys there, so every key in it is refused; keep keys in a namespace of their own (--namespace)"
                    );
                }
            }
            Err(error) => tracing::error!(%error, "caches never filled"),
        }
    });
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown()).await?;
    Ok(())
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher;

    fn task(namespace: &str, name: &str) -> GpuTask {
        wire::tests::task(namespace, name, 0, 0, None)
    }

    fn state() -> (AppState, kube::runtime::reflector::store::Writer<GpuTask>, tokio::sync::watch::Sender<u64>) {
        let (caches, writer, changes) = caches::detached();
        // Never connected to: these tests make no requests.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        (AppState::new(client, caches, None), writer, changes)
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_waits_for_the_tasks_this_replica_just_created() {
        let (state, mut writer, changes) = state();
        let namespaces = vec!["team".to_string()];
        state.remember_created("team", "t-1");
        state.remember_created("elsewhere", "t-2");
        let started = tokio::time::Instant::now();
        let feed = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            writer.apply_watcher_event(&watcher::Event::Apply(task("team", "t-1")));
            changes.send_modify(|n| *n += 1);
            (writer, changes)
        });
        state.wait_for_recent(&namespaces, Duration::from_secs(5)).await;
        // It returned when t-1 arrived, not at the timeout, and t-2 (another
        // account's namespace) was not waited for.
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert!(state.caches.task(&namespaces, "t-1").is_some());
        let (_writer, _changes) = feed.await.unwrap();
        // Seen once, it is not looked for again.
        assert!(state.recently_created(&namespaces, "t-1").is_none());
        assert!(state.recently_created(&["elsewhere".to_string()], "t-2").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_never_shows_up_costs_one_wait() {
        let (state, _writer, _changes) = state();
        let namespaces = vec!["team".to_string()];
        state.remember_created("team", "deleted-at-once");
        let started = tokio::time::Instant::now();
        state.wait_for_recent(&namespaces, Duration::from_secs(1)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        let again = tokio::time::Instant::now();
        state.wait_for_recent(&namespaces, Duration::from_secs(1)).await;
        assert_eq!(again.elapsed(), Duration::ZERO);
    }
}
