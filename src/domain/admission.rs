//! Admission: which queued tasks get a pod now.
//!
//! Inputs are what the caches show (pods that hold capacity, accounts,
//! quota); the output is a list of tasks to start and, for every other
//! candidate, the reason it waits. The function holds no memory between
//! calls, so a restarted controller decides exactly as the old one would.
//!
//! Order within an account: priority (high first), then age, then name.
//! Across accounts: the account using the smallest share of its concurrency
//! limit goes next, so a deep queue in one account never holds back another.
//! A task that does not fit the free GPUs is passed over for smaller ones
//! behind it (backfill), which keeps GPUs busy under a mixed backlog.

use std::collections::BTreeMap;

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
}

/// The outcome of one admission pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// Tasks to start, in the order they were chosen.
    pub admitted: Vec<TaskKey>,
    /// Every other candidate and why it waits.
    pub waiting: BTreeMap<TaskKey, WaitReason>,
}

fn queue_order(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.priority.cmp(&a.priority).then(a.created.cmp(&b.created)).then(a.key.cmp(&b.key))
}

struct AccountQueue {
    tasks: Vec<Candidate>,
    cursor: usize,
    usage: AccountUsage,
}

impl AccountQueue {
    fn at_limit(&self) -> bool {
        self.usage.running >= i64::from(self.usage.limits.concurrent_tasks)
    }

    /// Share of the concurrency limit in use; the fairness key across accounts.
    fn share(&self) -> f64 {
        let limit = i64::from(self.usage.limits.concurrent_tasks).max(1);
        self.usage.running as f64 / limit as f64
    }

    /// Moves the cursor to the next task that can start now, recording why
    /// the ones passed over wait. None when the account can start nothing more.
    fn next_admissible(
        &mut self,
        cluster: &ClusterUsage,
        waiting: &mut BTreeMap<TaskKey, WaitReason>,
    ) -> Option<usize> {
        while self.cursor < self.tasks.len() {
            let task = &self.tasks[self.cursor];
            if self.at_limit() {
                return None;
            }
            let reason = if self.usage.limits.gpus.is_some_and(|limit| self.usage.gpus_in_use + task.gpus > limit) {
                Some(WaitReason::AccountLimit)
            } else if task.per_run_price > self.usage.available_credits {
                Some(WaitReason::InsufficientCredits)
            } else if cluster.free(&task.resource) < task.gpus {
                Some(WaitReason::ClusterQuota)
            } else {
                None
            };
            match reason {
                None => return Some(self.cursor),
                Some(reason) => {
                    waiting.insert(task.key.clone(), reason);
                    self.cursor += 1;
                }
            }
        }
        None
    }

    /// Marks every task not yet decided as waiting on the account's limit.
    fn drain_at_limit(&mut self, waiting: &mut BTreeMap<TaskKey, WaitReason>) {
        for task in &self.tasks[self.cursor..] {
            waiting.entry(task.key.clone()).or_insert(WaitReason::AccountLimit);
        }
        self.cursor = self.tasks.len();
    }
}

/// Decides which candidates start now. Candidates whose account is missing
/// from `accounts` wait with [`WaitReason::NoAccount`].
pub fn admit(
    candidates: Vec<Candidate>,
    accounts: &BTreeMap<String, AccountUsage>,
    cluster: &ClusterUsage,
) -> Decision {
    let mut decision = Decision::default();
    let mut cluster = cluster.clone();
    let mut queues: BTreeMap<String, AccountQueue> = BTreeMap::new();
    for candidate in candidates {
        let Some(usage) = accounts.get(&candidate.account) else {
            decision.waiting.insert(candidate.key, WaitReason::NoAccount);
            continue;
        };
        queues
            .entry(candidate.account.clone())
            .or_insert_with(|| AccountQueue { tasks: Vec::new(), cursor: 0, usage: usage.clone() })
            .tasks
            .push(candidate);
    }
    for queue in queues.values_mut() {
        queue.tasks.sort_by(queue_order);
    }

    loop {
        // Each account's next admissible task; the least-served account wins,
        // ties going to the older task.
        let mut best: Option<(f64, Timestamp, TaskKey, String, usize)> = None;
        for (name, queue) in queues.iter_mut() {
            let Some(index) = queue.next_admissible(&cluster, &mut decision.waiting) else {
                queue.drain_at_limit(&mut decision.waiting);
                continue;
            };
            let head = &queue.tasks[index];
            let entry = (queue.share(), head.created, head.key.clone(), name.clone(), index);
            let better =
                best.as_ref().is_none_or(|b| entry.0 < b.0 || (entry.0 == b.0 && (entry.1, &entry.2) < (b.1, &b.2)));
            if better {
                best = Some(entry);
            }
        }
        let Some((_, _, _, name, index)) = best else {
            break;
        };
        let queue = queues.get_mut(&name).expect("chosen account has a queue");
        let task = queue.tasks[index].clone();
        queue.cursor = index + 1;
        queue.usage.running += 1;
        queue.usage.gpus_in_use += task.gpus;
        queue.usage.available_credits -= task.per_run_price;
        *cluster.in_use.entry(task.resource.clone()).or_default() += task.gpus;
        decision.waiting.remove(&task.key);
        decision.admitted.push(task.key);
    }
    decision
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

    fn names(d: &Decision) -> Vec<&str> {
        d.admitted.iter().map(|k| k.name.as_str()).collect()
    }

    #[test]
    fn priority_then_age_within_an_account() {
        let accounts = [("a".to_string(), usage(2, 0, 100))].into();
        let d = admit(
            vec![cand("a", "old", 0, 1, 1), cand("a", "new-high", 5, 9, 1), cand("a", "older", 0, 0, 1)],
            &accounts,
            &cluster(10, 0),
        );
        assert_eq!(names(&d), vec!["new-high", "older"]);
        assert_eq!(d.waiting[&TaskKey::new("a", "old")], WaitReason::AccountLimit);
    }

    #[test]
    fn a_deep_queue_does_not_block_another_account() {
        let accounts = [("a".to_string(), usage(25, 0, 1000)), ("b".to_string(), usage(5, 0, 1000))].into();
        let mut candidates: Vec<_> = (0..100).map(|i| cand("a", &format!("a{i}"), 0, i, 1)).collect();
        candidates.push(cand("b", "b0", 0, 500, 1));
        let d = admit(candidates, &accounts, &cluster(4, 0));
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
        let d = admit(
            vec![
                cand("full", "f", 0, 0, 1),
                cand("poor", "p", 0, 0, 1),
                cand("ok", "big", 0, 0, 8),
                cand("ok", "small", 0, 1, 1),
                cand("nobody", "n", 0, 0, 1),
            ],
            &accounts,
            &cluster(4, 1),
        );
        assert_eq!(names(&d), vec!["small"], "backfill: the small task passes the big one");
        assert_eq!(d.waiting[&TaskKey::new("full", "f")], WaitReason::AccountLimit);
        assert_eq!(d.waiting[&TaskKey::new("poor", "p")], WaitReason::InsufficientCredits);
        assert_eq!(d.waiting[&TaskKey::new("ok", "big")], WaitReason::ClusterQuota);
        assert_eq!(d.waiting[&TaskKey::new("nobody", "n")], WaitReason::NoAccount);
    }

    #[test]
    fn account_gpu_limit_holds() {
        let mut u = usage(10, 0, 100);
        u.limits.gpus = Some(3);
        let accounts = [("a".to_string(), u)].into();
        let d = admit(vec![cand("a", "x", 0, 0, 2), cand("a", "y", 0, 1, 2)], &accounts, &cluster(10, 0));
        assert_eq!(names(&d), vec!["x"]);
        assert_eq!(d.waiting[&TaskKey::new("a", "y")], WaitReason::AccountLimit);
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
            let mut queue: Vec<Candidate> = Vec::new();
            let mut running: Vec<Candidate> = Vec::new();
            let mut spent = [0i64; 4];
            let mut done = 0usize;
            let mut arrived = 0usize;
            for (i, step) in steps.into_iter().enumerate() {
                match step {
                    Step::Arrive { account, priority, gpus } => {
                        arrived += 1;
                        queue.push(cand(&format!("acct{account}"), &format!("t{i}"), priority, i as i64, gpus));
                    }
                    Step::Finish(n) if !running.is_empty() => {
                        running.remove(n % running.len());
                        done += 1;
                    }
                    Step::Finish(_) | Step::Restart => {}
                }
                // Usage derived from what runs now (a restart changes nothing).
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
                let decision = admit(queue.clone(), &accounts, &cluster(quota, in_use));
                for key in &decision.admitted {
                    let pos = queue.iter().position(|c| &c.key == key).expect("admitted from the queue");
                    let task = queue.remove(pos);
                    let a: usize = task.account[4..].parse().unwrap();
                    spent[a] += task.per_run_price;
                    running.push(task);
                }
                // Every queued task has a reason; no admitted task is still queued.
                prop_assert_eq!(decision.waiting.len(), queue.len());
                for (a, limit) in limits_of.iter().enumerate() {
                    let n = running.iter().filter(|c| c.account == format!("acct{a}")).count();
                    prop_assert!(n as i32 <= *limit, "account {} runs {} > {}", a, n, limit);
                    prop_assert!(spent[a] <= credits_of[a]);
                }
                prop_assert!(running.iter().map(|c| c.gpus).sum::<i64>() <= quota);
                prop_assert_eq!(arrived, queue.len() + running.len() + done);
                // Work-conserving: a queued task that fits everything is never left waiting.
                for c in &queue {
                    let a: usize = c.account[4..].parse().unwrap();
                    let n = running.iter().filter(|r| r.account == c.account).count() as i32;
                    let free = quota - running.iter().map(|r| r.gpus).sum::<i64>();
                    let fits = n < limits_of[a] && c.gpus <= free && c.per_run_price <= credits_of[a] - spent[a];
                    prop_assert!(!fits, "{} could run but waits", c.key);
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
            let d = admit(c, &accounts, &cluster(quota, 0));
            let b = d.admitted.iter().filter(|k| k.namespace == "b").count() as i64;
            prop_assert!(b >= (depth_b as i64).min(quota / 2), "b got {} of quota {}", b, quota);
        }
    }
}
