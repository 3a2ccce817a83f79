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
    b.priority
        .cmp(&a.priority)
        .then(a.created.cmp(&b.created))
        .then(a.key.cmp(&b.key))
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
    fn next_admissible(&mut self, cluster: &ClusterUsage, waiting: &mut BTreeMap<TaskKey, WaitReason>) -> Option<usize> {
        while self.cursor < self.tasks.len() {
            let task = &self.tasks[self.cursor];
            if self.at_limit() {
                return None;
            }
            let reason = if self
                .usage
                .limits
                .gpus
                .is_some_and(|limit| self.usage.gpus_in_use + task.gpus > limit)
            {
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
pub fn admit(candidates: Vec<Candidate>, accounts: &BTreeMap<String, AccountUsage>, cluster: &ClusterUsage) -> Decision {
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
            let better = best.as_ref().is_none_or(|b| {
                entry.0 < b.0 || (entry.0 == b.0 && (entry.1, &entry.2) < (b.1, &b.2))
            });
            if better {
                best = Some(entry);
            }
        }
        let Some((_, _, _, name, index)) = best else { break };
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
