//! Kubernetes I/O of the controller: caches, the task reconciler, the
//! admission loop, the account writer, leader election and the metrics
//! endpoint. Decisions are made in [`crate::domain`]; this module only reads,
//! calls them, writes and records.
//!
//! ```text
//!  reflectors ──▶ Caches ──▶ admitter ──creates──▶ Pods
//!      │                        │ waiting reasons ──▶ GpuTask status
//!      └─▶ task reconciler ──▶ lifecycle::plan ──▶ charge (AccountWriter) → status → pod cleanup
//! ```

mod accounts;
mod admitter;
mod caches;
pub mod error;
mod events;
mod own_writes;
mod server;
mod tasks;
mod templates;
mod webhooks;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, ResourceExt};
use tokio::sync::Notify;

pub use accounts::{AccountWriter, Counts};
pub use caches::Caches;
pub use events::EventBudget;

use crate::domain::lifecycle::LifecycleConfig;
use crate::domain::pod::PodConfig;
use crate::resources::GpuTask;
use crate::telemetry::ControllerMetrics;

/// Everything the controller is configured with.
#[derive(Clone, Debug)]
pub struct Config {
    pub pod: PodConfig,
    pub lifecycle: LifecycleConfig,
    /// GPU quota by resource; None derives it from the nodes.
    pub gpu_quota: Option<BTreeMap<String, i64>>,
    /// Key that derives per-task progress tokens (shared with the gateway).
    pub callback_key: Option<Vec<u8>>,
    pub metrics_addr: SocketAddr,
    pub leader_election: Option<LeaderElection>,
    pub reconcile_concurrency: u16,
    /// How many routine events (queued, started, completed) may be recorded.
    pub event_budget: EventBudget,
    /// The controller's own namespace (default home of webhook signing Secrets).
    pub namespace: String,
    pub webhooks: crate::domain::webhook::WebhookConfig,
    /// What each plan allows.
    pub plans: crate::resources::Plans,
}

#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub lease_name: String,
    pub lease_namespace: String,
    pub identity: String,
    pub lease_duration_secs: u64,
}

impl Config {
    /// The token a task's workload presents to the progress callback.
    pub fn progress_token(&self, task: &GpuTask) -> Option<String> {
        let key = self.callback_key.as_ref()?;
        Some(crate::domain::progress_token(key, task.metadata.uid.as_deref().unwrap_or_default()))
    }
}

/// Shared state of the reconciler and the admitter.
pub struct Context {
    pub client: Client,
    pub caches: Caches,
    pub config: Config,
    pub events: events::Events,
    pub metrics: Arc<ControllerMetrics>,
    pub accounts: AccountWriter,
    /// UIDs of the pods this process released. runplane puts its finalizer
    /// on a pod only when it creates it, so a released pod is never
    /// released again, whatever older version of it the cache still shows.
    pub released: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Task statuses this process wrote that the cache may not show yet.
    pub own_writes: own_writes::OwnWrites<GpuTask>,
    pub running_seen: tasks::RunningSeen,
}

/// How often every task is reconciled even if nothing changed.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(300);

fn ticks(period: std::time::Duration) -> impl futures::Stream<Item = ()> {
    futures::stream::unfold(
        tokio::time::interval_at(tokio::time::Instant::now() + period, period),
        |mut i| async move {
            i.tick().await;
            Some(((), i))
        },
    )
}

/// Runs the controller until it is stopped or loses its lease.
pub async fn run(client: Client, config: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(ControllerMetrics::new());
    let changed = Arc::new(Notify::new());
    let dirty = Arc::new(caches::Dirty::default());
    let (caches, triggers, _reflectors) = caches::start(client.clone(), changed.clone(), dirty.clone());
    let ready = Arc::new(AtomicBool::new(false));
    let server = tokio::spawn(server::serve(config.metrics_addr, metrics.clone(), ready.clone()));

    caches.wait_until_ready().await.map_err(|e| anyhow::anyhow!("caches never filled: {e}"))?;
    ready.store(true, Ordering::SeqCst);
    tracing::info!("caches ready");

    // Only the lease holder acts; a standby keeps its caches warm.
    let _lease = match &config.leader_election {
        Some(le) => Some(leader::acquire(client.clone(), le, metrics.clone()).await?),
        None => {
            metrics.is_leader.set(1);
            None
        }
    };

    let identity = config.leader_election.as_ref().map(|l| l.identity.clone());
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: crate::resources::managers::CONTROLLER.into(), instance: identity },
    );
    let accounts = accounts::start(client.clone(), caches.accounts.clone(), metrics.clone());
    let ctx = Arc::new(Context {
        client,
        caches: caches.clone(),
        config: config.clone(),
        events: events::Events::new(recorder, config.event_budget, metrics.events_dropped.clone()),
        metrics,
        accounts,
        released: Default::default(),
        own_writes: Default::default(),
        running_seen: Default::default(),
    });

    let admitter = tokio::spawn(admitter::Admitter::new(ctx.clone(), dirty.clone()).run(changed));
    let deliverer = tokio::spawn(webhooks::Deliverer::new(ctx.clone(), config.webhooks.clone(), dirty.clone()).run());
    // From here on the reflectors forward changes; a full pass now and every
    // few minutes covers what happened before and anything a stream missed.
    triggers.active.store(true, Ordering::SeqCst);
    let resync = futures::stream::once(async {}).chain(ticks(RESYNC).map(|_| ())).boxed();
    let reconciler = Controller::for_stream(triggers.tasks.map(Ok), caches.tasks.clone())
        .owns_stream(triggers.pods.map(Ok))
        .reconcile_all_on(resync)
        .with_config(ControllerConfig::default().concurrency(config.reconcile_concurrency))
        .shutdown_on_signal()
        .run(tasks::reconcile, tasks::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile loop");
            }
        });

    tokio::select! {
        _ = reconciler => tracing::info!("shutting down"),
        r = admitter => tracing::error!(?r, "admission loop stopped"),
        r = deliverer => tracing::error!(?r, "webhook deliverer stopped"),
        r = server => tracing::error!(?r, "metrics server stopped"),
        lost = async {
            match &_lease {
                Some(lease) => lease.lost().await,
                None => std::future::pending().await,
            }
        } => {
            anyhow::bail!("lost the controller lease ({lost}); exiting so that no two replicas act at once");
        }
    }
    Ok(())
}

mod leader {
    //! One controller at a time: a coordination.k8s.io Lease.

    use std::sync::Arc;

    use kube::Client;
    use kube_lease_manager::LeaseManagerBuilder;
    use tokio::sync::watch;

    use super::LeaderElection;
    use crate::telemetry::ControllerMetrics;

    pub struct Lease {
        state: watch::Receiver<bool>,
    }

    impl Lease {
        /// Resolves when the lease is lost.
        pub async fn lost(&self) -> String {
            let mut state = self.state.clone();
            loop {
                if !*state.borrow_and_update() {
                    return "lease released or taken".into();
                }
                if state.changed().await.is_err() {
                    return "lease manager stopped".into();
                }
            }
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(
        client: Client,
        config: &LeaderElection,
        metrics: Arc<ControllerMetrics>,
    ) -> anyhow::Result<Lease> {
        let manager = LeaseManagerBuilder::new(client, &config.lease_name)
            .with_namespace(&config.lease_namespace)
            .with_identity(&config.identity)
            .with_duration(config.lease_duration_secs)
            .with_grace((config.lease_duration_secs / 3).max(1))
            .build()
            .await?;
        let (mut state, task) = manager.watch().await;
        tokio::spawn(async move {
            if let Ok(Err(error)) = task.await {
                tracing::error!(%error, "lease manager failed");
            }
        });
        tracing::info!(lease = %config.lease_name, identity = %config.identity, "waiting for the controller lease");
        while !*state.borrow_and_update() {
            state.changed().await?;
        }
        metrics.is_leader.set(1);
        tracing::info!("holding the controller lease");
        Ok(Lease { state })
    }
}

/// Prints a short summary of a task for logs.
pub fn describe(task: &GpuTask) -> String {
    format!("{}/{}", task.namespace().unwrap_or_default(), task.name_any())
}
