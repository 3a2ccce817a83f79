//! The only writer of GpuAccount status. Charges arrive from the task
//! reconciler and usage counts from admission; both are folded into as few
//! status writes as possible.
//!
//! Charging is exactly once: a charge carries the task's UID, and the account
//! keeps the UIDs of its most recent charges (`status.recentCharges`) in the
//! same write that adds the credits. A reconciler that crashed after the
//! charge but before the task's terminal status finds the UID there on retry
//! and does not charge again. Charges are applied one batch at a time and a
//! task's status is written right after its batch, so the window that must
//! be remembered is one batch, far below the list's length.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use tokio::sync::{mpsc, oneshot};

use super::error::{Error, Result, is_status};
use crate::domain::credits::apply_charges;
use crate::resources::{GpuAccount, GpuAccountStatus};
use crate::telemetry::ControllerMetrics;

/// How many charged task UIDs an account remembers.
pub const RECENT_CHARGES: usize = 512;
/// Most charges folded into one account write.
const BATCH: usize = 128;
/// Usage counts are written at most this often per account.
const COUNTS_INTERVAL: Duration = Duration::from_secs(2);

/// Live usage of an account, as admission computed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub running: i32,
    pub queued: i32,
    pub gpus_in_use: i64,
}

enum Message {
    Charge { account: String, task_uid: String, credits: i64, done: oneshot::Sender<Result<()>> },
    Counts(BTreeMap<String, Counts>),
}

/// Handle to the account writer.
#[derive(Clone)]
pub struct AccountWriter {
    tx: mpsc::Sender<Message>,
}

impl AccountWriter {
    /// Charges `credits` to `account` for the task `task_uid`, once.
    pub async fn charge(&self, account: &str, task_uid: &str, credits: i64) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Message::Charge { account: account.into(), task_uid: task_uid.into(), credits, done })
            .await
            .map_err(|_| Error::AccountWriterGone)?;
        wait.await.map_err(|_| Error::AccountWriterGone)?
    }

    /// Latest usage counts of every account (dropped if the writer is busy).
    pub fn counts(&self, counts: BTreeMap<String, Counts>) {
        let _ = self.tx.try_send(Message::Counts(counts));
    }
}

/// Starts the writer.
pub fn start(
    client: Client,
    accounts: kube::runtime::reflector::Store<GpuAccount>,
    metrics: Arc<ControllerMetrics>,
) -> AccountWriter {
    let (tx, rx) = mpsc::channel(1024);
    let writer = Writer {
        api: Api::all(client),
        cache: accounts,
        metrics,
        counts: BTreeMap::new(),
        last_count_write: BTreeMap::new(),
    };
    tokio::spawn(writer.run(rx));
    AccountWriter { tx }
}

struct Writer {
    api: Api<GpuAccount>,
    cache: kube::runtime::reflector::Store<GpuAccount>,
    metrics: Arc<ControllerMetrics>,
    counts: BTreeMap<String, Counts>,
    last_count_write: BTreeMap<String, Instant>,
}

type PendingCharge = (String, i64, oneshot::Sender<Result<()>>);

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        let mut tick = tokio::time::interval(COUNTS_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                m = rx.recv() => match m { Some(m) => Some(m), None => return },
                _ = tick.tick() => None,
            };
            let mut charges: BTreeMap<String, Vec<PendingCharge>> = BTreeMap::new();
            let mut batch = 0;
            let mut next = first;
            loop {
                match next.take() {
                    Some(Message::Charge { account, task_uid, credits, done }) => {
                        charges.entry(account).or_default().push((task_uid, credits, done));
                        batch += 1;
                    }
                    Some(Message::Counts(counts)) => self.counts = counts,
                    None => {}
                }
                if batch >= BATCH {
                    break;
                }
                match rx.try_recv() {
                    Ok(m) => next = Some(m),
                    Err(_) => break,
                }
            }
            for (account, pending) in charges {
                self.charge(&account, pending).await;
            }
            self.write_counts().await;
        }
    }

    /// Applies a batch of charges to one account, with optimistic concurrency.
    async fn charge(&mut self, account: &str, pending: Vec<PendingCharge>) {
        let mut result = Err(Error::NoAccount(account.into()));
        for _ in 0..8 {
            result = self.try_charge(account, &pending).await;
            match &result {
                Err(Error::Charge { source, .. }) if is_status(source, 409) => continue,
                _ => break,
            }
        }
        for (_, _, done) in pending {
            let reply = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(Error::NoAccount(format!("{account}: {e}"))),
            };
            let _ = done.send(reply);
        }
        if let Err(error) = result {
            tracing::warn!(account, %error, "charging failed; the tasks will retry");
        }
    }

    async fn try_charge(&mut self, account: &str, pending: &[PendingCharge]) -> Result<()> {
        let charge_err = |source| Error::Charge { account: account.into(), source };
        let mut current = match self.api.get(account).await {
            Ok(current) => current,
            Err(e) if is_status(&e, 404) => {
                // Nothing to charge any more; holding the tasks' pods for an
                // account that will not come back would keep them forever.
                tracing::warn!(account, tasks = pending.len(), "the account is gone; its tasks' charges are dropped");
                return Ok(());
            }
            Err(e) => return Err(charge_err(e)),
        };
        let mut status = current.status.clone().unwrap_or_default();
        let charges: Vec<(String, i64)> = pending.iter().map(|(uid, credits, _)| (uid.clone(), *credits)).collect();
        let (added, charged) = apply_charges(&mut status, &charges, RECENT_CHARGES);
        if charged == 0 {
            return Ok(());
        }
        self.fill(&current, &mut status);
        current.status = Some(status);
        self.api.replace_status(account, &PostParams::default(), &current).await.map_err(charge_err)?;
        self.last_count_write.insert(account.into(), Instant::now());
        self.metrics.charges.inc_by(charged);
        self.metrics.credits_charged.inc_by(added.max(0) as u64);
        tracing::info!(account, credits = added, tasks = charged, "charged");
        Ok(())
    }

    /// Balance, counts and observed generation, derived from the spec and the latest counts.
    fn fill(&self, account: &GpuAccount, status: &mut GpuAccountStatus) {
        let counts = self.counts.get(&account.name_any()).copied().unwrap_or_default();
        status.balance = account.spec.credits - status.credits_used;
        status.running = counts.running;
        status.queued = counts.queued;
        status.gpus_in_use = counts.gpus_in_use;
        status.observed_generation = account.metadata.generation;
    }

    /// Writes accounts whose counts or balance are stale, at most every COUNTS_INTERVAL each.
    async fn write_counts(&mut self) {
        for account in self.cache.state() {
            let name = account.name_any();
            if self.last_count_write.get(&name).is_some_and(|t| t.elapsed() < COUNTS_INTERVAL) {
                continue;
            }
            let current = account.status.clone().unwrap_or_default();
            let mut desired = current.clone();
            self.fill(&account, &mut desired);
            if desired == current && account.status.is_some() {
                continue;
            }
            let mut updated = (*account).clone();
            updated.status = Some(desired);
            match self.api.replace_status(&name, &PostParams::default(), &updated).await {
                Ok(_) => {
                    self.last_count_write.insert(name, Instant::now());
                }
                Err(e) if is_status(&e, 409) || is_status(&e, 404) => {}
                Err(error) => {
                    tracing::warn!(account = name, %error, "writing account status failed")
                }
            }
        }
    }
}
