//! The only writer of GpuAccount status. Charges arrive from the task
//! reconciler and usage counts from admission; both are folded into as few
//! status writes as possible.
//!
//! Charging is exactly once: a charge carries the task's UID, and the account
//! keeps the UIDs of its most recent charges (`status.recentCharges`) in the
//! same write that adds the credits. A reconciler that crashed after the
//! charge but before it let the task's pod go finds the UID there on retry
//! and does not charge again. Each account has at most one write in flight,
//! holding one batch of charges, so the window that must be remembered is a
//! few batches, far below the list's length.
//!
//! Accounts are written side by side, each as soon as it has charges and no
//! write in flight: an account whose writes are slow (or keep conflicting)
//! holds up only its own tasks. A write starts from the newest version of
//! the account this writer knows (the cache's, or the one its own last write
//! returned while the cache still shows a version that write replaced: see
//! `own_writes`) and reads the account from the apiserver only after a
//! conflict. Every write carries the resourceVersion it was computed from,
//! so a stale start costs a conflict, never a lost or doubled charge.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use kube::api::PostParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::error::{Error, Result, is_status};
use super::own_writes::OwnWrites;
use crate::domain::credits::apply_charges;
use crate::resources::{GpuAccount, GpuAccountStatus};
use crate::telemetry::ControllerMetrics;

/// How many charged task UIDs an account remembers.
pub const RECENT_CHARGES: usize = 512;
/// Most charges folded into one account write.
const BATCH: usize = 128;
/// Account writes in flight at once (each to a different account).
const PARALLEL_WRITES: usize = 8;
/// Tries of one batch against conflicts before its tasks are told to retry.
const ATTEMPTS: usize = 8;
/// Live usage counts are written at most this often per account. They are
/// for people (the Running and Queued columns of `kubectl get gpuaccounts`):
/// admission and the API count from their own caches. Every active account
/// would otherwise cost the apiserver a write every tick, however many
/// tasks it runs.
const COUNTS_INTERVAL: Duration = Duration::from_secs(10);
/// How often the writer looks for accounts whose status is stale. A changed
/// spec (credits topped up) is written at the next look, not after
/// COUNTS_INTERVAL.
const TICK: Duration = Duration::from_secs(1);

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
pub fn start(client: Client, accounts: Store<GpuAccount>, metrics: Arc<ControllerMetrics>) -> AccountWriter {
    let (tx, rx) = mpsc::channel(1024);
    let writer = Writer {
        api: Api::all(client),
        cache: accounts,
        metrics,
        counts: BTreeMap::new(),
        last_count_write: BTreeMap::new(),
        own_writes: OwnWrites::default(),
        pending: BTreeMap::new(),
        ready: VecDeque::new(),
        busy: BTreeSet::new(),
    };
    tokio::spawn(writer.run(rx));
    AccountWriter { tx }
}

type PendingCharge = (String, i64, oneshot::Sender<Result<()>>);

/// What a finished account write leaves for the writer to remember.
struct Outcome {
    account: String,
    /// The version the write replaced, and the account as the write left it.
    written: Option<(GpuAccount, GpuAccount)>,
    /// The write started from a version that was no longer current.
    stale: bool,
}

struct Writer {
    api: Api<GpuAccount>,
    cache: Store<GpuAccount>,
    metrics: Arc<ControllerMetrics>,
    counts: BTreeMap<String, Counts>,
    last_count_write: BTreeMap<String, Instant>,
    /// This writer's writes the cache has not shown yet (the next write
    /// starts from the last of them).
    own_writes: OwnWrites<GpuAccount>,
    /// Charges not yet being written, by account.
    pending: BTreeMap<String, Vec<PendingCharge>>,
    /// The accounts of `pending` that have no write in flight, in the order
    /// their charges arrived.
    ready: VecDeque<String>,
    /// Accounts with a write in flight.
    busy: BTreeSet<String>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut writes: FuturesUnordered<BoxFuture<'static, Outcome>> = FuturesUnordered::new();
        loop {
            let mut counts_due = false;
            tokio::select! {
                message = rx.recv() => match message {
                    Some(Message::Charge { account, task_uid, credits, done }) => {
                        self.queue(account, (task_uid, credits, done));
                    }
                    Some(Message::Counts(counts)) => self.counts = counts,
                    None => return,
                },
                Some(outcome) = writes.next(), if !writes.is_empty() => self.settle(outcome),
                _ = tick.tick() => counts_due = true,
            }
            // Charges first: tasks wait for them.
            while writes.len() < PARALLEL_WRITES
                && let Some(account) = self.ready.pop_front()
            {
                writes.push(self.write_charges(account));
            }
            if counts_due {
                self.write_counts(&mut writes);
            }
        }
    }

    fn queue(&mut self, account: String, charge: PendingCharge) {
        let charges = self.pending.entry(account.clone()).or_default();
        charges.push(charge);
        if charges.len() == 1 && !self.busy.contains(&account) {
            self.ready.push_back(account);
        }
    }

    fn settle(&mut self, outcome: Outcome) {
        let Outcome { account, written, stale } = outcome;
        self.busy.remove(&account);
        if let Some((before, after)) = written {
            self.last_count_write.insert(account.clone(), Instant::now());
            self.own_writes.record(&before, after);
        } else if stale && let Some(uid) = self.cache.get(&ObjectRef::new(&account)).and_then(|a| a.uid()) {
            self.own_writes.forget(&uid);
        }
        if self.pending.contains_key(&account) {
            self.ready.push_back(account);
        }
    }

    /// The newest version of an account this writer knows, if any.
    fn latest(&self, name: &str) -> Option<GpuAccount> {
        let cached = self.cache.get(&ObjectRef::new(name))?;
        Some((*self.own_writes.fresher(cached)).clone())
    }

    /// Starts a write of up to one batch of an account's pending charges.
    fn write_charges(&mut self, account: String) -> BoxFuture<'static, Outcome> {
        let mut batch = self.pending.remove(&account).unwrap_or_default();
        if batch.len() > BATCH {
            let rest = batch.split_off(BATCH);
            self.pending.insert(account.clone(), rest);
        }
        self.busy.insert(account.clone());
        let start = self.latest(&account);
        let counts = self.counts.get(&account).copied().unwrap_or_default();
        charge(self.api.clone(), self.metrics.clone(), account, start, counts, batch).boxed()
    }

    /// Starts writes of the accounts whose counts or balance are stale, in the
    /// room the charges leave: an account's counts at most every
    /// COUNTS_INTERVAL, a spec its status has not seen at once.
    fn write_counts(&mut self, writes: &mut FuturesUnordered<BoxFuture<'static, Outcome>>) {
        for account in self.cache.state() {
            if writes.len() >= PARALLEL_WRITES {
                return;
            }
            let name = account.name_any();
            // A charge on its way writes the counts too.
            if self.busy.contains(&name) || self.pending.contains_key(&name) {
                continue;
            }
            let latest = self.own_writes.fresher(account);
            let spec_unseen = latest.metadata.generation != latest.status.as_ref().and_then(|s| s.observed_generation);
            if !spec_unseen && self.last_count_write.get(&name).is_some_and(|t| t.elapsed() < COUNTS_INTERVAL) {
                continue;
            }
            let mut latest = (*latest).clone();
            let current = latest.status.clone().unwrap_or_default();
            let mut desired = current.clone();
            fill(&latest, &mut desired, self.counts.get(&name).copied().unwrap_or_default());
            if desired == current && latest.status.is_some() {
                continue;
            }
            latest.status = Some(desired);
            self.busy.insert(name.clone());
            writes.push(write_status(self.api.clone(), name, latest).boxed());
        }
    }
}

/// Applies a batch of charges to one account, with optimistic concurrency,
/// and tells each charge's task how it went.
async fn charge(
    api: Api<GpuAccount>,
    metrics: Arc<ControllerMetrics>,
    account: String,
    mut start: Option<GpuAccount>,
    counts: Counts,
    batch: Vec<PendingCharge>,
) -> Outcome {
    let charges: Vec<(String, i64)> = batch.iter().map(|(uid, credits, _)| (uid.clone(), *credits)).collect();
    let mut outcome = Outcome { account, written: None, stale: false };
    let mut result = Ok(());
    for _ in 0..ATTEMPTS {
        let mut current = match start.take() {
            Some(current) => current,
            None => match api.get(&outcome.account).await {
                Ok(current) => current,
                Err(e) if is_status(&e, 404) => {
                    // Nothing to charge any more; holding the tasks' pods for
                    // an account that will not come back would keep them forever.
                    tracing::warn!(
                        account = outcome.account,
                        tasks = batch.len(),
                        "the account is gone; its tasks' charges are dropped"
                    );
                    result = Ok(());
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            },
        };
        let mut status = current.status.clone().unwrap_or_default();
        let (added, charged) = apply_charges(&mut status, &charges, RECENT_CHARGES);
        if charged == 0 {
            result = Ok(());
            break;
        }
        fill(&current, &mut status, counts);
        current.status = Some(status);
        match api.replace_status(&outcome.account, &PostParams::default(), &current).await {
            Ok(written) => {
                metrics.charges.inc_by(charged);
                metrics.credits_charged.inc_by(added.max(0) as u64);
                tracing::info!(account = outcome.account, credits = added, tasks = charged, "charged");
                outcome.written = Some((current, written));
                result = Ok(());
                break;
            }
            // Changed (or deleted) since the version this write started from.
            Err(e) if is_status(&e, 409) || is_status(&e, 404) => {
                outcome.stale = true;
                result = Err(e);
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if let Err(error) = &result {
        tracing::warn!(account = outcome.account, %error, "charging failed; the tasks will retry");
    }
    for (_, _, done) in batch {
        let reply = match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(Error::NoAccount(format!("{}: {e}", outcome.account))),
        };
        let _ = done.send(reply);
    }
    outcome
}

/// Writes an account's status as given (its counts and balance).
async fn write_status(api: Api<GpuAccount>, name: String, account: GpuAccount) -> Outcome {
    let mut outcome = Outcome { account: name, written: None, stale: false };
    match api.replace_status(&outcome.account, &PostParams::default(), &account).await {
        Ok(written) => outcome.written = Some((account, written)),
        Err(e) if is_status(&e, 409) || is_status(&e, 404) => outcome.stale = true,
        Err(error) => tracing::warn!(account = outcome.account, %error, "writing account status failed"),
    }
    outcome
}

/// Balance, counts and observed generation, derived from the spec and the latest counts.
fn fill(account: &GpuAccount, status: &mut GpuAccountStatus, counts: Counts) {
    status.balance = account.spec.credits - status.credits_used;
    status.running = counts.running;
    status.queued = counts.queued;
    status.gpus_in_use = counts.gpus_in_use;
    status.observed_generation = account.metadata.generation;
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use http::{Request, Response};
    use http_body_util::BodyExt;
    use kube::client::Body;
    use kube::runtime::{reflector, watcher};

    use super::*;
    use crate::resources::{GpuAccountSpec, Plan};

    const PATH: &str = "/apis/runplane.dev/v1alpha1/gpuaccounts/";

    /// The apiserver's part in charging: GET of an account and PUT of its
    /// status, which fails with 409 unless it carries the current
    /// resourceVersion. Accounts named `slow-*` answer after 30 s.
    #[derive(Default)]
    struct Apiserver {
        accounts: Mutex<BTreeMap<String, GpuAccount>>,
        requests: Mutex<Vec<String>>,
    }

    fn reply(code: u16, body: serde_json::Value) -> Response<Body> {
        Response::builder().status(code).body(Body::from(body.to_string().into_bytes())).unwrap()
    }

    fn failure(code: u16, reason: &str) -> Response<Body> {
        let status = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "reason": reason, "message": reason, "code": code,
        });
        reply(code, status)
    }

    impl Apiserver {
        async fn serve(self: Arc<Self>, request: Request<Body>) -> Result<Response<Body>, std::convert::Infallible> {
            let method = request.method().to_string();
            let path = request.uri().path().to_string();
            let rest = path.strip_prefix(PATH).expect("only gpuaccounts are asked for");
            self.requests.lock().unwrap().push(format!("{method} {rest}"));
            let name = rest.trim_end_matches("/status").to_string();
            if name.starts_with("slow") {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let mut accounts = self.accounts.lock().unwrap();
            let Some(stored) = accounts.get_mut(&name) else { return Ok(failure(404, "NotFound")) };
            Ok(match method.as_str() {
                "GET" => reply(200, serde_json::to_value(&*stored).unwrap()),
                "PUT" => {
                    let sent: GpuAccount = serde_json::from_slice(&body).unwrap();
                    if sent.resource_version() != stored.resource_version() {
                        return Ok(failure(409, "Conflict"));
                    }
                    stored.status = sent.status;
                    bump(stored);
                    reply(200, serde_json::to_value(&*stored).unwrap())
                }
                _ => failure(405, "MethodNotAllowed"),
            })
        }

        fn requests(&self) -> Vec<String> {
            std::mem::take(&mut *self.requests.lock().unwrap())
        }

        fn account(&self, name: &str) -> GpuAccount {
            self.accounts.lock().unwrap()[name].clone()
        }

        /// Someone else raises an account's credits.
        fn top_up(&self, name: &str, credits: i64) {
            let mut accounts = self.accounts.lock().unwrap();
            let account = accounts.get_mut(name).unwrap();
            account.spec.credits += credits;
            account.metadata.generation = account.metadata.generation.map(|g| g + 1);
            bump(account);
        }
    }

    fn bump(account: &mut GpuAccount) {
        let version: u64 = account.resource_version().unwrap().parse().unwrap();
        account.metadata.resource_version = Some((version + 1).to_string());
    }

    fn account(name: &str, credits: i64) -> GpuAccount {
        let spec =
            GpuAccountSpec { plan: Plan::Free, email: None, namespaces: vec![], limits: None, credits, webhook: None };
        let mut account = GpuAccount::new(name, spec);
        account.metadata.uid = Some(format!("uid-{name}"));
        account.metadata.resource_version = Some("1".into());
        account.metadata.generation = Some(1);
        account.status =
            Some(GpuAccountStatus { balance: credits, observed_generation: Some(1), ..GpuAccountStatus::default() });
        account
    }

    /// A writer whose cache and apiserver both hold `names` (100 credits each).
    fn writer(names: &[&str]) -> (Arc<Apiserver>, AccountWriter, reflector::store::Writer<GpuAccount>) {
        let apiserver = Arc::new(Apiserver::default());
        let (store, mut cache) = reflector::store();
        for name in names {
            let account = account(name, 100);
            cache.apply_watcher_event(&watcher::Event::Apply(account.clone()));
            apiserver.accounts.lock().unwrap().insert(name.to_string(), account);
        }
        let server = apiserver.clone();
        let client = Client::new(tower::service_fn(move |request| server.clone().serve(request)), "default");
        (apiserver, start(client, store, Arc::new(ControllerMetrics::new())), cache)
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_account_holds_up_only_its_own_charges() {
        let (apiserver, writer, _cache) = writer(&["slow-a", "b"]);
        let slow = tokio::spawn({
            let writer = writer.clone();
            async move { writer.charge("slow-a", "task-1", 5).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(apiserver.requests(), ["PUT slow-a/status"], "the slow account's write is in flight");

        let fast = tokio::time::timeout(Duration::from_secs(1), writer.charge("b", "task-2", 7)).await;
        assert!(matches!(fast, Ok(Ok(()))), "another account's charge waited for the slow one: {fast:?}");
        assert!(!slow.is_finished());
        slow.await.unwrap().unwrap();
        assert_eq!(apiserver.account("slow-a").status.unwrap().credits_used, 5);
        assert_eq!(apiserver.account("b").status.unwrap().credits_used, 7);
    }

    #[tokio::test(start_paused = true)]
    async fn live_counts_are_written_at_most_every_interval_and_a_top_up_at_once() {
        let (apiserver, writer, mut cache) = writer(&["a"]);
        let counts = |running| BTreeMap::from([("a".to_string(), Counts { running, queued: 0, gpus_in_use: 0 })]);
        writer.counts(counts(1));
        tokio::time::sleep(TICK + Duration::from_millis(100)).await;
        assert_eq!(apiserver.requests(), ["PUT a/status"]);
        assert_eq!(apiserver.account("a").status.unwrap().running, 1);

        writer.counts(counts(2));
        tokio::time::sleep(COUNTS_INTERVAL / 2).await;
        assert_eq!(apiserver.requests(), Vec::<String>::new(), "counts wait for the interval");

        apiserver.top_up("a", 50);
        cache.apply_watcher_event(&watcher::Event::Apply(apiserver.account("a")));
        tokio::time::sleep(TICK + Duration::from_millis(100)).await;
        assert_eq!(apiserver.requests(), ["PUT a/status"], "a new spec is shown at the next tick");
        let status = apiserver.account("a").status.unwrap();
        assert_eq!((status.balance, status.observed_generation, status.running), (150, Some(2), 2));

        writer.counts(counts(3));
        tokio::time::sleep(COUNTS_INTERVAL - TICK * 2).await;
        assert_eq!(apiserver.requests(), Vec::<String>::new());
        tokio::time::sleep(TICK * 3).await;
        assert_eq!(apiserver.requests(), ["PUT a/status"]);
        assert_eq!(apiserver.account("a").status.unwrap().running, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_charge_reads_the_account_only_after_a_conflict() {
        let (apiserver, writer, _cache) = writer(&["a"]);
        writer.charge("a", "task-1", 3).await.unwrap();
        assert_eq!(apiserver.requests(), ["PUT a/status"], "the first write starts from the cache");
        // The cache has not shown that write: the next starts from what it returned.
        writer.charge("a", "task-2", 4).await.unwrap();
        assert_eq!(apiserver.requests(), ["PUT a/status"]);

        apiserver.top_up("a", 50);
        writer.charge("a", "task-3", 5).await.unwrap();
        assert_eq!(apiserver.requests(), ["PUT a/status", "GET a", "PUT a/status"], "a conflict, then a read");

        writer.charge("a", "task-2", 4).await.unwrap();
        assert_eq!(apiserver.requests(), Vec::<String>::new(), "a task already charged costs no write");

        let status = apiserver.account("a").status.unwrap();
        assert_eq!(status.credits_used, 12);
        assert_eq!(status.recent_charges, ["task-1", "task-2", "task-3"]);
        assert_eq!((status.balance, status.observed_generation), (150 - 12, Some(2)), "from the account as it is now");
    }
}
