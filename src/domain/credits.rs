//! What a task costs: the per-run price plus GPU-seconds, rounded up to whole
//! credits. Only a task whose pod started is charged.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::resources::{GpuAccountStatus, Price};

/// The price frozen on a pod when it is created, so that editing or deleting
/// the template later does not change what a running task costs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrozenPrice {
    pub per_run: i64,
    pub per_gpu_second: f64,
    pub gpus: i64,
}

impl FrozenPrice {
    pub fn new(price: &Price, gpus: i64) -> Self {
        Self { per_run: price.per_run, per_gpu_second: price.per_gpu_second, gpus }
    }
}

/// Seconds between start and end, never negative.
pub fn run_seconds(started: Timestamp, ended: Timestamp) -> f64 {
    let seconds = ended.duration_since(started).as_secs_f64();
    seconds.max(0.0)
}

/// Credits for a run that started at `started` (None: never started) and ended at `ended`.
pub fn charge(price: &FrozenPrice, started: Option<Timestamp>, ended: Timestamp) -> i64 {
    let Some(started) = started else { return 0 };
    let usage = price.per_gpu_second * price.gpus as f64 * run_seconds(started, ended);
    // Rounded to the microcredit first so that float noise never adds a credit.
    let usage = ((usage * 1e6).round() / 1e6).ceil() as i64;
    price.per_run.saturating_add(usage)
}

/// Adds charges to an account's status, each task at most once: a charge
/// whose task UID is among the account's recent charges is skipped. Keeps
/// the newest `keep` UIDs. Returns (credits added, tasks charged).
pub fn apply_charges(status: &mut GpuAccountStatus, charges: &[(String, i64)], keep: usize) -> (i64, u64) {
    let mut added = 0i64;
    let mut charged = 0u64;
    for (uid, credits) in charges {
        if status.recent_charges.iter().any(|u| u == uid) {
            continue;
        }
        added = added.saturating_add(*credits);
        charged += 1;
        status.recent_charges.push(uid.clone());
    }
    let overflow = status.recent_charges.len().saturating_sub(keep);
    status.recent_charges.drain(..overflow);
    status.credits_used = status.credits_used.saturating_add(added);
    (added, charged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn never_started_costs_nothing() {
        let price = FrozenPrice { per_run: 10, per_gpu_second: 1.0, gpus: 2 };
        assert_eq!(charge(&price, None, ts(100)), 0);
    }

    #[test]
    fn per_run_plus_gpu_seconds_rounded_up() {
        let price = FrozenPrice { per_run: 10, per_gpu_second: 0.25, gpus: 2 };
        // 2 GPUs × 5 s × 0.25 = 2.5 → 3
        assert_eq!(charge(&price, Some(ts(100)), ts(105)), 13);
        // exact values are not rounded up by float noise: 0.1 × 3 × 10 = 3
        let price = FrozenPrice { per_run: 0, per_gpu_second: 0.1, gpus: 3 };
        assert_eq!(charge(&price, Some(ts(0)), ts(10)), 3);
    }

    #[test]
    fn clock_skew_never_refunds() {
        let price = FrozenPrice { per_run: 4, per_gpu_second: 1.0, gpus: 1 };
        assert_eq!(charge(&price, Some(ts(100)), ts(90)), 4);
    }

    #[test]
    fn a_task_is_charged_once_even_if_sent_twice() {
        let mut status = GpuAccountStatus::default();
        let first = apply_charges(&mut status, &[("a".into(), 5), ("b".into(), 7)], 16);
        assert_eq!(first, (12, 2));
        let again = apply_charges(&mut status, &[("a".into(), 5), ("c".into(), 1)], 16);
        assert_eq!(again, (1, 1));
        assert_eq!(status.credits_used, 13);
    }

    #[test]
    fn remembers_only_the_newest_uids() {
        let mut status = GpuAccountStatus::default();
        let charges: Vec<_> = (0..10).map(|i| (format!("t{i}"), 1)).collect();
        apply_charges(&mut status, &charges, 4);
        assert_eq!(status.recent_charges, vec!["t6", "t7", "t8", "t9"]);
    }

    mod exactly_once {
        use super::super::*;
        use proptest::prelude::*;

        /// Where a reconcile of a finished task stops: it writes the task's
        /// terminal status (which records what the task costs), charges the
        /// account what that status records, then releases the pod's
        /// finalizer. The controller may die after any step, and a status
        /// write may lose to a conflict (then the cost is computed again,
        /// later, and may differ).
        #[derive(Clone, Copy, Debug)]
        enum Stop {
            StatusConflict,
            AfterStatus,
            AfterCharge,
            Done,
        }

        #[derive(Clone, Debug)]
        enum Step {
            Reconcile {
                task: usize,
                stop: Stop,
            },
            /// Other tasks' charges to the account (fewer than the window in a run).
            Churn(usize),
        }

        fn step(tasks: usize) -> impl Strategy<Value = Step> {
            let stop = prop_oneof![
                Just(Stop::StatusConflict),
                Just(Stop::AfterStatus),
                Just(Stop::AfterCharge),
                Just(Stop::Done)
            ];
            prop_oneof![
                4 => (0..tasks, stop).prop_map(|(task, stop)| Step::Reconcile { task, stop }),
                1 => (0usize..3).prop_map(Step::Churn),
            ]
        }

        proptest! {
            #[test]
            fn every_task_is_charged_exactly_what_its_status_records(
                base in prop::collection::vec(1i64..100, 1..12),
                steps in prop::collection::vec(step(12), 1..200),
            ) {
                let n = base.len();
                let mut account = GpuAccountStatus::default();
                let mut recorded: Vec<Option<i64>> = vec![None; n]; // creditsUsed on the task's status
                let mut released = vec![false; n]; // the pod's finalizer is gone
                let mut looks = vec![0i64; n];
                let mut reconcile = |account: &mut GpuAccountStatus, task: usize, stop: Stop, recorded: &mut Vec<Option<i64>>, released: &mut Vec<bool>| {
                    if released[task] {
                        return; // accounted: a finished task's pod is never charged again
                    }
                    if recorded[task].is_none() {
                        // Each look computes the cost anew (the task ran a little longer).
                        looks[task] += 1;
                        if matches!(stop, Stop::StatusConflict) {
                            return;
                        }
                        recorded[task] = Some(base[task] + looks[task]);
                        if matches!(stop, Stop::AfterStatus) {
                            return;
                        }
                    }
                    let credits = recorded[task].expect("recorded above");
                    apply_charges(account, &[(format!("uid-{task}"), credits)], 512);
                    if matches!(stop, Stop::AfterCharge) {
                        return;
                    }
                    released[task] = true;
                };
                for step in steps {
                    match step {
                        Step::Reconcile { task, stop } => reconcile(&mut account, task % n, stop, &mut recorded, &mut released),
                        Step::Churn(k) => {
                            let others: Vec<_> = (0..k).map(|i| (format!("other-{}-{i}", account.recent_charges.len()), 0)).collect();
                            apply_charges(&mut account, &others, 512);
                        }
                    }
                }
                // The next reconciles finish whatever is left.
                for task in 0..n {
                    reconcile(&mut account, task, Stop::Done, &mut recorded, &mut released);
                }
                let on_statuses: i64 = recorded.iter().map(|c| c.expect("every task ends recorded")).sum();
                prop_assert_eq!(account.credits_used, on_statuses, "the account is charged what the tasks say");
                for task in 0..n {
                    let uid = format!("uid-{task}");
                    prop_assert!(account.recent_charges.contains(&uid), "{} was never charged", uid);
                }
            }
        }
    }
}
