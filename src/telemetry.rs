//! Logs (`tracing`, text or JSON, filtered by `RUST_LOG`) and the Prometheus
//! metrics of both processes. Metric names start with `runplane_`, use base
//! units, and carry only labels of bounded cardinality.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Output format of the logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber; `RUST_LOG` overrides the default level (info).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry.with(fmt::layer().with_target(false)).init(),
        LogFormat::Json => registry.with(fmt::layer().json().flatten_event(true)).init(),
    }
}

/// The controller's metrics.
#[derive(Clone)]
pub struct ControllerMetrics {
    pub registry: Registry,
    pub tasks: IntGaugeVec,
    pub queue_wait: Histogram,
    pub run_time: Histogram,
    pub gpus_in_use: IntGaugeVec,
    pub gpu_quota: IntGaugeVec,
    pub admissions: IntCounter,
    pub reconciles: IntCounter,
    pub reconcile_errors: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    pub admission_pass: Histogram,
    pub charges: IntCounter,
    pub credits_charged: IntCounter,
    pub is_leader: IntGauge,
    pub webhook_deliveries: IntCounterVec,
    pub webhook_delivery_seconds: Histogram,
    pub webhooks_pending: IntGauge,
    pub events_dropped: IntCounter,
}

const WAIT_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0];

impl ControllerMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let tasks = IntGaugeVec::new(
            Opts::new("runplane_tasks", "GpuTasks by phase, as the controller's cache sees them"),
            &["phase"],
        )
        .unwrap();
        let queue_wait = Histogram::with_opts(
            HistogramOpts::new("runplane_queue_wait_seconds", "Time from a task's creation to its admission")
                .buckets(WAIT_BUCKETS.to_vec()),
        )
        .unwrap();
        let run_time = Histogram::with_opts(
            HistogramOpts::new("runplane_task_run_seconds", "Run time of finished tasks, from pod start to end")
                .buckets(WAIT_BUCKETS.to_vec()),
        )
        .unwrap();
        let gpus_in_use =
            IntGaugeVec::new(Opts::new("runplane_gpus_in_use", "GPUs held by runplane's pods"), &["resource"]).unwrap();
        let gpu_quota =
            IntGaugeVec::new(Opts::new("runplane_gpu_quota", "GPUs runplane may hand out"), &["resource"]).unwrap();
        let admissions = IntCounter::new("runplane_admissions_total", "Tasks admitted (pods created)").unwrap();
        let reconciles = IntCounter::new("runplane_reconcile_total", "Task reconciliations").unwrap();
        let reconcile_errors = IntCounterVec::new(
            Opts::new("runplane_reconcile_errors_total", "Failed task reconciliations by error category"),
            &["category"],
        )
        .unwrap();
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new("runplane_reconcile_duration_seconds", "Duration of task reconciliations")
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            &[],
        )
        .unwrap();
        let admission_pass = Histogram::with_opts(
            HistogramOpts::new(
                "runplane_admission_pass_seconds",
                "Duration of admission passes over the queue, pod creates included",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
        )
        .unwrap();
        let charges = IntCounter::new("runplane_charges_total", "Tasks charged to their account").unwrap();
        let credits_charged = IntCounter::new("runplane_credits_charged_total", "Credits charged to accounts").unwrap();
        let is_leader = IntGauge::new("runplane_leader", "1 while this replica holds the controller lease").unwrap();
        let webhook_deliveries = IntCounterVec::new(
            Opts::new("runplane_webhook_deliveries_total", "Webhook delivery attempts by result"),
            &["result"],
        )
        .unwrap();
        let webhook_delivery_seconds = Histogram::with_opts(
            HistogramOpts::new("runplane_webhook_delivery_seconds", "Duration of webhook delivery attempts")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0]),
        )
        .unwrap();
        let webhooks_pending =
            IntGauge::new("runplane_webhooks_pending", "Finished tasks whose webhook is not settled").unwrap();
        let events_dropped = IntCounter::new(
            "runplane_events_dropped_total",
            "Events left out: routine ones (queued, admitted, started, completed) beyond the event budget, and any while 1,024 wait to be written",
        )
        .unwrap();
        for collector in [
            Box::new(tasks.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(queue_wait.clone()),
            Box::new(run_time.clone()),
            Box::new(gpus_in_use.clone()),
            Box::new(gpu_quota.clone()),
            Box::new(admissions.clone()),
            Box::new(reconciles.clone()),
            Box::new(reconcile_errors.clone()),
            Box::new(reconcile_duration.clone()),
            Box::new(admission_pass.clone()),
            Box::new(charges.clone()),
            Box::new(credits_charged.clone()),
            Box::new(is_leader.clone()),
            Box::new(webhook_deliveries.clone()),
            Box::new(webhook_delivery_seconds.clone()),
            Box::new(webhooks_pending.clone()),
            Box::new(events_dropped.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        for phase in crate::resources::TaskPhase::ALL {
            tasks.with_label_values(&[phase.as_str()]).set(0);
        }
        // Every result exists from the start, at 0, so that rate() and
        // alerts see the first one.
        for result in crate::domain::webhook::DeliveryResult::ALL {
            webhook_deliveries.with_label_values(&[result.as_label()]);
        }
        Self {
            registry,
            tasks,
            queue_wait,
            run_time,
            gpus_in_use,
            gpu_quota,
            admissions,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            admission_pass,
            charges,
            credits_charged,
            is_leader,
            webhook_deliveries,
            webhook_delivery_seconds,
            webhooks_pending,
            events_dropped,
        }
    }
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The registry in Prometheus' text format.
pub fn encode(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buffer).expect("text encoding cannot fail");
    String::from_utf8(buffer).expect("the text format is UTF-8")
}

/// The gateway's metrics.
#[derive(Clone)]
pub struct ApiMetrics {
    pub registry: Registry,
    /// Requests by route template and HTTP status code.
    pub requests: IntCounterVec,
    /// Request duration by route template.
    pub duration: HistogramVec,
    /// Requests refused by the per-account rate limit.
    pub rate_limited: IntCounter,
    /// Fetches of the other replicas' rate-limit counts, by result (ok, error).
    pub peer_syncs: IntCounterVec,
    /// Other replicas this one shares rate-limit counts with.
    pub peers: IntGauge,
    /// Progress reports refused because the task reported too often.
    pub progress_throttled: IntCounter,
}

impl ApiMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("runplane_api_requests_total", "Gateway requests by matched route template and HTTP status code"),
            &["route", "code"],
        )
        .unwrap();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "runplane_api_request_duration_seconds",
                "Gateway request duration by matched route template",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0]),
            &["route"],
        )
        .unwrap();
        let rate_limited =
            IntCounter::new("runplane_rate_limited_total", "Gateway requests refused by the per-account rate limit")
                .unwrap();
        let peer_syncs = IntCounterVec::new(
            Opts::new(
                "runplane_api_peer_syncs_total",
                "Fetches of the other gateway replicas' rate-limit counts, by result",
            ),
            &["result"],
        )
        .unwrap();
        let peers =
            IntGauge::new("runplane_api_peers", "Other gateway replicas this one shares rate-limit counts with")
                .unwrap();
        let progress_throttled = IntCounter::new(
            "runplane_api_progress_throttled_total",
            "Progress reports refused because their task reported too often",
        )
        .unwrap();
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(rate_limited.clone()),
            Box::new(peer_syncs.clone()),
            Box::new(peers.clone()),
            Box::new(progress_throttled.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        for result in ["ok", "error"] {
            peer_syncs.with_label_values(&[result]);
        }
        Self { registry, requests, duration, rate_limited, peer_syncs, peers, progress_throttled }
    }
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}
