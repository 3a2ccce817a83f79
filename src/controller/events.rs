//! The controller's events, within a budget.
//!
//! Events are best effort in Kubernetes, and each is an API write. A task's
//! routine transitions (queued, admitted, started, completed) are worth an event when
//! someone runs `kubectl describe` on a few tasks, but at thousands of tasks
//! they would spend a large share of the apiserver's write capacity on
//! records that nobody reads, ahead of the pods and statuses that do the
//! work. So routine events pass a token bucket (like the kubelet's
//! `--event-qps` and `--event-burst`), and those beyond it are left out and
//! counted; the phase, reason and times on the task's status say the same.
//! Events that need a look (failures, retries, cancels, rejected input,
//! webhook trouble) are always recorded.
//!
//! Recording is asynchronous, as with client-go's event broadcaster: a
//! reconcile hands its event to a queue and goes on, and a few writers
//! publish the queue. A reconcile slot is then never held by a record that
//! is best effort, while the task statuses and pod releases behind it wait.
//! Events the queue cannot take (the apiserver far behind) are dropped and
//! counted like those beyond the budget.

use std::num::NonZeroU32;
use std::time::Duration;

use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder};
use prometheus::IntCounter;
use tokio::sync::mpsc;

/// Events waiting to be published, at most.
const QUEUE: usize = 1024;
/// Events published at once.
const PARALLEL: usize = 8;

/// How many routine events the controller may record (the defaults are the
/// controller's flags).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EventBudget {
    /// Sustained rate per second (above 0); None records every one.
    pub per_second: Option<f64>,
    /// How many may be recorded at once after a quiet spell.
    pub burst: NonZeroU32,
}

/// Decides which routine events fit the budget.
pub struct Budget {
    limiter: Option<DefaultDirectRateLimiter>,
}

impl Budget {
    pub fn new(budget: EventBudget) -> Self {
        let limiter = budget.per_second.filter(|rate| *rate > 0.0).and_then(|rate| {
            let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rate))?.allow_burst(budget.burst);
            Some(RateLimiter::direct(quota))
        });
        Self { limiter }
    }

    /// Whether one more routine event fits now (and takes its place if so).
    pub fn admit(&self) -> bool {
        self.limiter.as_ref().is_none_or(|l| l.check().is_ok())
    }
}

/// Records the controller's events on its objects.
pub struct Events {
    queue: mpsc::Sender<(Event, ObjectReference)>,
    budget: Budget,
    dropped: IntCounter,
}

impl Events {
    /// Starts the writers that publish the queued events through `recorder`.
    pub fn new(recorder: Recorder, budget: EventBudget, dropped: IntCounter) -> Self {
        let (queue, queued) = mpsc::channel::<(Event, ObjectReference)>(QUEUE);
        let queued =
            futures::stream::unfold(queued, |mut queued| async move { queued.recv().await.map(|e| (e, queued)) });
        tokio::spawn(queued.for_each_concurrent(PARALLEL, move |(event, reference)| {
            let recorder = recorder.clone();
            async move {
                if let Err(error) = recorder.publish(&event, &reference).await {
                    tracing::debug!(%error, reason = %event.reason, "recording an event failed");
                }
            }
        }));
        Self { queue, budget: Budget::new(budget), dropped }
    }

    /// Records an event; a routine one only if it fits the budget.
    pub fn publish(&self, event: Event, reference: ObjectReference, routine: bool) {
        if routine && !self.budget.admit() {
            self.dropped.inc();
            return;
        }
        if self.queue.try_send((event, reference)).is_err() {
            self.dropped.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let budget = Budget::new(EventBudget { per_second: Some(1.0), burst: NonZeroU32::new(3).unwrap() });
        let admitted = (0..10).filter(|_| budget.admit()).count();
        // Three at once; the fourth would need a second to pass.
        assert_eq!(admitted, 3);
    }

    #[test]
    fn the_budget_refills_over_time() {
        let budget = Budget::new(EventBudget { per_second: Some(20.0), burst: NonZeroU32::new(1).unwrap() });
        assert!(budget.admit());
        assert!(!budget.admit());
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert!(budget.admit(), "one event every 50 ms");
    }

    /// An apiserver that never answers.
    fn stuck_apiserver() -> kube::Client {
        let service = tower::service_fn(|_: http::Request<kube::client::Body>| async {
            std::future::pending::<Result<http::Response<kube::client::Body>, std::convert::Infallible>>().await
        });
        kube::Client::new(service, "default")
    }

    #[tokio::test]
    async fn no_one_waits_for_an_event_and_what_the_queue_cannot_take_is_counted() {
        let recorder = Recorder::new(stuck_apiserver(), "runplane-test".into());
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let budget = EventBudget { per_second: None, burst: NonZeroU32::new(1).unwrap() };
        let events = Events::new(recorder, budget, dropped.clone());
        let event = || Event {
            type_: kube::runtime::events::EventType::Warning,
            reason: "Failed".into(),
            note: None,
            action: "Reconcile".into(),
            secondary: None,
        };
        let reference = ObjectReference { name: Some("a".into()), namespace: Some("n".into()), ..Default::default() };
        // Each returns at once although the apiserver never answers.
        let publish = async {
            for _ in 0..QUEUE + 100 {
                events.publish(event(), reference.clone(), false);
            }
        };
        tokio::time::timeout(Duration::from_secs(5), publish).await.expect("publishing waited");
        assert_eq!(dropped.get(), 100, "what the queue could not take");

        // The writers take the first few off the queue; it fills up again.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..PARALLEL + 1 {
            events.publish(event(), reference.clone(), false);
        }
        assert_eq!(dropped.get(), 101, "{PARALLEL} writers each hold one event");
    }

    #[test]
    fn no_rate_means_no_limit() {
        let budget = Budget::new(EventBudget { per_second: None, burst: NonZeroU32::new(1).unwrap() });
        assert!((0..10_000).all(|_| budget.admit()));
    }
}
