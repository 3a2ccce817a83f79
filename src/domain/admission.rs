//! Admission: which queued tasks get a pod now.
//!
//! [`Queue`] holds the tasks that could start, grouped by account and, within
//! an account, by *shape* (GPU resource, GPU count, per-run price), each shape
//! in queue order. [`Queue::admit`] takes what the caches say is in use
//! (pods that hold capacity, accounts, quota) and returns the tasks to start
//! now; nothing is remembered between calls but the queue itself, which the
//! controller rebuilds from its caches after a restart, so a restarted
//! controller decides exactly as the old one would.
//!
//! Order within an account: priority (high first), then age, then name.
//! Across accounts: the account using the smallest share of its concurrency
//! limit goes next, so a deep queue in one account never holds back another.
//! A task that does not fit the free GPUs (or the account's credits) is
//! passed over for the first one behind it that does (backfill), which keeps
//! GPUs busy under a mixed backlog.
//!
//! Cost: a pass looks only at the head of each shape of each account, so it
//! is O(admissions × accounts × shapes), however deep the queue is.

use std::cmp::Reverse;
use std::collections::btree_set;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::iter::Peekable;

use jiff::Timestamp;

use super::TaskKey;
use crate::resources::{EffectiveLimits, WaitReason};

/// A queued task that could be admitted if capacity allows.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub key: TaskKey,
    pub account: String,
    pub priority: i32,
    pub created: Timestamp,
    pub gpus: i64,
    pub resource: String,
    /// Credits the account must hold to start it (the template's per-run price).
    pub per_run_price: i64,
}

impl Candidate {
    fn order(&self) -> Order {
        Order { priority: Reverse(self.priority), created: self.created, key: self.key.clone() }
    }

    fn shape(&self) -> Shape {
        Shape { resource: self.resource.clone(), gpus: self.gpus, per_run_price: self.per_run_price }
    }
}

/// Queue order within an account.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Order {
    priority: Reverse<i32>,
    created: Timestamp,
    key: TaskKey,
}

/// What a task needs to start: tasks of one shape are interchangeable for
/// every limit, so only the first of each shape can be the next to start.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Shape {
    resource: String,
    gpus: i64,
    per_run_price: i64,
}

/// The next tasks of one shape of an account, during a pass.
type ShapeCursor<'a> = (&'a Shape, Peekable<btree_set::Iter<'a, Order>>);

/// What an account holds now and may hold.
#[derive(Clone, Debug, PartialEq)]
pub struct AccountUsage {
    pub limits: EffectiveLimits,
    /// Pods of the account that hold capacity (not yet terminal).
    pub running: i64,
    pub gpus_in_use: i64,
    /// Balance less the per-run price of the account's running tasks.
    pub available_credits: i64,
}

impl AccountUsage {
    fn at_limit(&self) -> bool {
        self.running >= i64::from(self.limits.concurrent_tasks)
    }

    /// Share of the concurrency limit in use; the fairness key across accounts.
    fn share(&self) -> f64 {
        let limit = i64::from(self.limits.concurrent_tasks).max(1);
        self.running as f64 / limit as f64
    }

    /// Why a task of `shape` cannot start for this account, if it cannot.
    fn blocks(&self, shape: &Shape) -> Option<WaitReason> {
        if self.at_limit() || self.limits.gpus.is_some_and(|limit| self.gpus_in_use + shape.gpus > limit) {
            Some(WaitReason::AccountLimit)
        } else if shape.per_run_price > self.available_credits {
            Some(WaitReason::InsufficientCredits)
        } else {
            None
        }
    }

    fn take(&mut self, shape: &Shape) {
        self.running += 1;
        self.gpus_in_use += shape.gpus;
        self.available_credits -= shape.per_run_price;
    }
}

/// GPU quota and use of the cluster, by extended resource name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterUsage {
    pub quota: BTreeMap<String, i64>,
    pub in_use: BTreeMap<String, i64>,
}

impl ClusterUsage {
    pub fn free(&self, resource: &str) -> i64 {
        self.quota.get(resource).copied().unwrap_or(0) - self.in_use.get(resource).copied().unwrap_or(0)
    }

    fn fits(&self, shape: &Shape) -> bool {
        self.free(&shape.resource) >= shape.gpus
    }

    fn take(&mut self, shape: &Shape) {
        *self.in_use.entry(shape.resource.clone()).or_default() += shape.gpus;
    }
}

/// The outcome of one admission pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// Tasks to start, in the order they were chosen.
    pub admitted: Vec<TaskKey>,
    /// What every account holds once they have started.
    pub accounts: BTreeMap<String, AccountUsage>,
    /// What the cluster holds once they have started.
    pub cluster: ClusterUsage,
}

/// The tasks that could start, in admission order.
#[derive(Clone, Debug, Default)]
pub struct Queue {
    tasks: HashMap<TaskKey, Candidate>,
    accounts: BTreeMap<String, BTreeMap<Shape, BTreeSet<Order>>>,
}

impl Queue {
    /// Adds a task, or moves it if it changed.
    pub fn upsert(&mut self, candidate: Candidate) {
        if self.tasks.get(&candidate.key) == Some(&candidate) {
            return;
        }
        self.remove(&candidate.key);
        self.accounts
            .entry(candidate.account.clone())
            .or_default()
            .entry(candidate.shape())
            .or_default()
            .insert(candidate.order());
        self.tasks.insert(candidate.key.clone(), candidate);
    }

    pub fn remove(&mut self, key: &TaskKey) -> Option<Candidate> {
        let candidate = self.tasks.remove(key)?;
        if let Some(shapes) = self.accounts.get_mut(&candidate.account) {
            let shape = candidate.shape();
            if let Some(set) = shapes.get_mut(&shape) {
                set.remove(&candidate.order());
                if set.is_empty() {
                    shapes.remove(&shape);
                }
            }
            if shapes.is_empty() {
                self.accounts.remove(&candidate.account);
            }
        }
        Some(candidate)
    }

    pub fn get(&self, key: &TaskKey) -> Option<&Candidate> {
        self.tasks.get(key)
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &TaskKey> {
        self.tasks.keys()
    }

    /// The queued tasks of one account.
    pub fn keys_of<'a>(&'a self, account: &str) -> impl Iterator<Item = &'a TaskKey> {
        self.accounts.get(account).into_iter().flat_map(|shapes| shapes.values().flatten().map(|o| &o.key))
    }

    /// Per account with queued tasks, the per-run prices of its shapes that
    /// its credits cannot cover after `decision`.
    pub fn credit_blocked_prices(&self, decision: &Decision) -> BTreeMap<String, Vec<i64>> {
        let mut out = BTreeMap::new();
        for (account, shapes) in &self.accounts {
            let Some(usage) = decision.accounts.get(account) else { continue };
            let prices: Vec<i64> =
                shapes.keys().filter(|s| s.per_run_price > usage.available_credits).map(|s| s.per_run_price).collect();
            if !prices.is_empty() {
                out.insert(account.clone(), prices);
            }
        }
        out
    }

    /// Queued tasks of each account.
    pub fn depth_by_account(&self) -> BTreeMap<&str, usize> {
        self.accounts.iter().map(|(a, shapes)| (a.as_str(), shapes.values().map(BTreeSet::len).sum())).collect()
    }

    /// Decides which tasks start now, given what is in use. Tasks of
    /// accounts missing from `accounts` do not start. The queue is not
    /// changed: the caller removes what it actually started.
    pub fn admit(&self, accounts: &BTreeMap<String, AccountUsage>, cluster: &ClusterUsage) -> Decision {
        let mut decision = Decision { admitted: Vec::new(), accounts: accounts.clone(), cluster: cluster.clone() };
        // One cursor per shape of every account that has tasks and a usage.
        let mut cursors: Vec<(&str, Vec<ShapeCursor<'_>>)> = self
            .accounts
            .iter()
            .filter(|(name, _)| accounts.contains_key(name.as_str()))
            .map(|(name, shapes)| (name.as_str(), shapes.iter().map(|(s, set)| (s, set.iter().peekable())).collect()))
            .collect();
        loop {
            // Each account's next task that can start now; the least-served
            // account wins, ties going to the older task.
            let mut best: Option<(f64, &Order, usize, usize)> = None;
            for (a, (name, shapes)) in cursors.iter_mut().enumerate() {
                let usage = &decision.accounts[*name];
                if usage.at_limit() {
                    continue;
                }
                let mut head: Option<(&Order, usize)> = None;
                for (s, (shape, tasks)) in shapes.iter_mut().enumerate() {
                    if usage.blocks(shape).is_some() || !decision.cluster.fits(shape) {
                        continue;
                    }
                    if let Some(order) = tasks.peek().copied()
                        && head.is_none_or(|(h, _)| order < h)
                    {
                        head = Some((order, s));
                    }
                }
                let Some((order, s)) = head else { continue };
                let share = usage.share();
                let better = best.is_none_or(|(bs, bo, _, _)| {
                    share < bs || (share == bs && (order.created, &order.key) < (bo.created, &bo.key))
                });
                if better {
                    best = Some((share, order, a, s));
                }
            }
            let Some((_, order, a, s)) = best else { break };
            let (name, shapes) = &mut cursors[a];
            let (shape, tasks) = &mut shapes[s];
            tasks.next();
            decision.accounts.get_mut(*name).expect("cursors only for accounts with usage").take(shape);
            decision.cluster.take(shape);
            decision.admitted.push(order.key.clone());
        }
        decision
    }

    /// Why a queued task waits after a pass that ended in `decision`; None
    /// if it could start (the next pass starts it) or is not queued.
    pub fn wait_reason(&self, key: &TaskKey, decision: &Decision) -> Option<WaitReason> {
        let candidate = self.tasks.get(key)?;
        let Some(usage) = decision.accounts.get(&candidate.account) else {
            return Some(WaitReason::NoAccount);
        };
        let shape = candidate.shape();
        usage.blocks(&shape).or_else(|| (!decision.cluster.fits(&shape)).then_some(WaitReason::ClusterQuota))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::ts;
    use proptest::prelude::*;

    const GPU: &str = "nvidia.com/gpu";

    fn limits(concurrent: i32) -> EffectiveLimits {
        EffectiveLimits { concurrent_tasks: concurrent, requests_per_minute: 60, gpus: None }
    }

    fn usage(concurrent: i32, running: i64, credits: i64) -> AccountUsage {
        AccountUsage { limits: limits(concurrent), running, gpus_in_use: running, available_credits: credits }
    }

    fn cand(account: &str, name: &str, priority: i32, created: i64, gpus: i64) -> Candidate {
        Candidate {
            key: TaskKey::new(account, name),
            account: account.into(),
            priority,
            created: ts(created),
            gpus,
            resource: GPU.into(),
            per_run_price: 1,
        }
    }

    fn cluster(quota: i64, in_use: i64) -> ClusterUsage {
        ClusterUsage { quota: [(GPU.to_string(), quota)].into(), in_use: [(GPU.to_string(), in_use)].into() }
    }

    fn queue(candidates: impl IntoIterator<Item = Candidate>) -> Queue {
        let mut q = Queue::default();
        for c in candidates {
            q.upsert(c);
        }
        q
    }

    fn names(d: &Decision) -> Vec<&str> {
        d.admitted.iter().map(|k| k.name.as_str()).collect()
    }

    fn reason(q: &Queue, d: &Decision, account: &str, name: &str) -> Option<WaitReason> {
        q.wait_reason(&TaskKey::new(account, name), d)
    }

    #[test]
    fn priority_then_age_within_an_account() {
        let accounts = [("a".to_string(), usage(2, 0, 100))].into();
        let q = queue([cand("a", "old", 0, 1, 1), cand("a", "new-high", 5, 9, 1), cand("a", "older", 0, 0, 1)]);
        let d = q.admit(&accounts, &cluster(10, 0));
        assert_eq!(names(&d), vec!["new-high", "older"]);
        assert_eq!(reason(&q, &d, "a", "old"), Some(WaitReason::AccountLimit));
    }

    #[test]
    fn a_deep_queue_does_not_block_another_account() {
        let accounts = [("a".to_string(), usage(25, 0, 1000)), ("b".to_string(), usage(5, 0, 1000))].into();
        let mut candidates: Vec<_> = (0..100).map(|i| cand("a", &format!("a{i}"), 0, i, 1)).collect();
        candidates.push(cand("b", "b0", 0, 500, 1));
        let d = queue(candidates).admit(&accounts, &cluster(4, 0));
        assert_eq!(d.admitted.len(), 4);
        assert!(names(&d).contains(&"b0"), "the newer account's only task gets a GPU: {:?}", names(&d));
    }

    #[test]
    fn reasons_name_the_binding_limit() {
        let accounts = [
            ("full".to_string(), usage(1, 1, 100)),
            ("poor".to_string(), usage(5, 0, 0)),
            ("ok".to_string(), usage(5, 0, 100)),
        ]
        .into();
        let q = queue([
            cand("full", "f", 0, 0, 1),
            cand("poor", "p", 0, 0, 1),
            cand("ok", "big", 0, 0, 8),
            cand("ok", "small", 0, 1, 1),
            cand("nobody", "n", 0, 0, 1),
        ]);
        let d = q.admit(&accounts, &cluster(4, 1));
        assert_eq!(names(&d), vec!["small"], "backfill: the small task passes the big one");
        assert_eq!(reason(&q, &d, "full", "f"), Some(WaitReason::AccountLimit));
        assert_eq!(reason(&q, &d, "poor", "p"), Some(WaitReason::InsufficientCredits));
        assert_eq!(reason(&q, &d, "ok", "big"), Some(WaitReason::ClusterQuota));
        assert_eq!(reason(&q, &d, "nobody", "n"), Some(WaitReason::NoAccount));
        assert_eq!(reason(&q, &d, "ok", "small"), None, "admitted: nothing holds it back");
    }

    #[test]
    fn account_gpu_limit_holds() {
        let mut u = usage(10, 0, 100);
        u.limits.gpus = Some(3);
        let accounts = [("a".to_string(), u)].into();
        let q = queue([cand("a", "x", 0, 0, 2), cand("a", "y", 0, 1, 2)]);
        let d = q.admit(&accounts, &cluster(10, 0));
        assert_eq!(names(&d), vec!["x"]);
        assert_eq!(reason(&q, &d, "a", "y"), Some(WaitReason::AccountLimit));
    }

    #[test]
    fn cheaper_tasks_pass_one_the_balance_cannot_cover() {
        let accounts = [("a".to_string(), usage(10, 0, 5))].into();
        let mut dear = cand("a", "dear", 0, 0, 1);
        dear.per_run_price = 10;
        let q = queue([dear, cand("a", "cheap", 0, 1, 1)]);
        let d = q.admit(&accounts, &cluster(10, 0));
        assert_eq!(names(&d), vec!["cheap"]);
        assert_eq!(reason(&q, &d, "a", "dear"), Some(WaitReason::InsufficientCredits));
    }

    #[test]
    fn upsert_moves_a_changed_task_and_remove_forgets_it() {
        let mut q = queue([cand("a", "x", 0, 0, 1), cand("a", "y", 0, 1, 1)]);
        q.upsert(cand("a", "y", 9, 1, 1));
        let accounts = [("a".to_string(), usage(1, 0, 100))].into();
        assert_eq!(names(&q.admit(&accounts, &cluster(10, 0))), vec!["y"], "its new priority counts");
        q.upsert(cand("a", "y", 9, 1, 2));
        assert_eq!(q.len(), 2, "a new shape replaces the old entry");
        assert!(q.remove(&TaskKey::new("a", "y")).is_some());
        assert_eq!(names(&q.admit(&accounts, &cluster(10, 0))), vec!["x"]);
        q.remove(&TaskKey::new("a", "x"));
        assert!(q.is_empty() && q.depth_by_account().is_empty());
    }

    /// A small model of the cluster: tasks arrive, get admitted, finish;
    /// admission is called after every event with usage recomputed from
    /// what runs, exactly as the controller recomputes it from its caches.
    #[derive(Clone, Debug)]
    enum Step {
        Arrive { account: usize, priority: i32, gpus: i64 },
        Finish(usize),
        Restart,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0usize..4, -2i32..3, 1i64..4).prop_map(|(account, priority, gpus)| Step::Arrive { account, priority, gpus }),
            2 => any::<usize>().prop_map(Step::Finish),
            1 => Just(Step::Restart),
        ]
    }

    proptest! {
        #[test]
        fn no_limit_is_ever_exceeded_and_nothing_is_lost(steps in prop::collection::vec(step(), 1..120), quota in 1i64..12) {
            let limits_of = [1, 2, 5, 3];
            let credits_of = [1000, 1000, 1000, 6];
            let mut q = Queue::default();
            let mut running: Vec<Candidate> = Vec::new();
            let mut spent = [0i64; 4];
            let mut done = 0usize;
            let mut arrived = 0usize;
            for (i, step) in steps.into_iter().enumerate() {
                match step {
                    Step::Arrive { account, priority, gpus } => {
                        arrived += 1;
                        q.upsert(cand(&format!("acct{account}"), &format!("t{i}"), priority, i as i64, gpus));
                    }
                    Step::Finish(n) if !running.is_empty() => {
                        running.remove(n % running.len());
                        done += 1;
                    }
                    // A restarted controller rebuilds its queue from what it observes.
                    Step::Restart => q = queue(q.keys().cloned().collect::<Vec<_>>().into_iter().map(|k| q.get(&k).unwrap().clone())),
                    Step::Finish(_) => {}
                }
                // Usage derived from what runs now.
                let mut accounts = BTreeMap::new();
                for (a, limit) in limits_of.iter().enumerate() {
                    let name = format!("acct{a}");
                    let mine: Vec<_> = running.iter().filter(|c| c.account == name).collect();
                    accounts.insert(name, AccountUsage {
                        limits: limits(*limit),
                        running: mine.len() as i64,
                        gpus_in_use: mine.iter().map(|c| c.gpus).sum(),
                        available_credits: credits_of[a] - spent[a],
                    });
                }
                let in_use: i64 = running.iter().map(|c| c.gpus).sum();
                let decision = q.admit(&accounts, &cluster(quota, in_use));
                for key in &decision.admitted {
                    let task = q.remove(key).expect("admitted from the queue");
                    let a: usize = task.account[4..].parse().unwrap();
                    spent[a] += task.per_run_price;
                    running.push(task);
                }
                for (a, limit) in limits_of.iter().enumerate() {
                    let n = running.iter().filter(|c| c.account == format!("acct{a}")).count();
                    prop_assert!(n as i32 <= *limit, "account {} runs {} > {}", a, n, limit);
                    prop_assert!(spent[a] <= credits_of[a]);
                }
                prop_assert!(running.iter().map(|c| c.gpus).sum::<i64>() <= quota);
                prop_assert_eq!(arrived, q.len() + running.len() + done);
                // Work-conserving, and every queued task has a reason: a
                // queued task that fits everything is never left waiting.
                for key in q.keys() {
                    prop_assert!(q.wait_reason(key, &decision).is_some(), "{} could run but waits", key);
                }
            }
        }

        #[test]
        fn fair_share_across_accounts(depth_a in 5usize..60, depth_b in 1usize..5, quota in 2i64..10) {
            // Two accounts with equal limits and ample credits: B gets
            // min(its demand, half the quota, rounded down) at least.
            let accounts = [("a".to_string(), usage(100, 0, 10_000)), ("b".to_string(), usage(100, 0, 10_000))].into();
            let mut c: Vec<_> = (0..depth_a).map(|i| cand("a", &format!("a{i}"), 0, i as i64, 1)).collect();
            c.extend((0..depth_b).map(|i| cand("b", &format!("b{i}"), 0, 1000 + i as i64, 1)));
            let d = queue(c).admit(&accounts, &cluster(quota, 0));
            let b = d.admitted.iter().filter(|k| k.namespace == "b").count() as i64;
            prop_assert!(b >= (depth_b as i64).min(quota / 2), "b got {} of quota {}", b, quota);
        }

        #[test]
        fn within_an_account_admission_follows_queue_order(tasks in prop::collection::vec((-2i32..3, 0i64..50), 1..40), slots in 1i32..10) {
            // One shape, ample quota and credits: the admitted tasks are
            // exactly the first `slots` in (priority desc, age, name) order.
            let candidates: Vec<_> =
                tasks.iter().enumerate().map(|(i, (p, t))| cand("a", &format!("t{i:02}"), *p, *t, 1)).collect();
            let mut expected = candidates.clone();
            expected.sort_by_key(Candidate::order);
            let expected: Vec<_> = expected.into_iter().take(slots as usize).map(|c| c.key).collect();
            let accounts = [("a".to_string(), usage(slots, 0, 10_000))].into();
            let d = queue(candidates).admit(&accounts, &cluster(1000, 0));
            prop_assert_eq!(d.admitted, expected);
        }
    }
}
