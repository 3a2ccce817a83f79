//! Per-account request limit: a fixed one-minute window, shared by the
//! gateway replicas.
//!
//! A fixed window is what the seed's headers describe (a limit, what is left,
//! and the unix time the window resets). Each replica counts the requests it
//! accepts; it also knows the other replicas' counts of the current window,
//! fetched from them every [`super::peers::POLL_INTERVAL`] (see
//! [`super::peers`]). A request is accepted while its account's own count
//! plus the peers' last known counts stays under the limit, and
//! `X-RateLimit-Remaining` is what that total leaves.
//!
//! Bounded overshoot: a count reaches the other replicas within one poll
//! (0.5 s) plus one fetch (at most [`super::peers::FETCH_TIMEOUT`], 0.4 s),
//! so under a second. An account can therefore get its limit plus what the
//! other replicas accept from it within that last second before they learn
//! the limit is reached; at most, with N replicas that cannot reach each
//! other at all, N times its limit (each then counts alone). No state is kept
//! outside the replicas' memory: a replica that restarts forgets its counts
//! of the current minute.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Length of a window, in seconds.
pub const WINDOW_SECONDS: u64 = 60;

/// The verdict on one request, with what the headers report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// X-RateLimit-Limit.
    pub limit: u32,
    /// X-RateLimit-Remaining.
    pub remaining: u32,
    /// X-RateLimit-Reset: unix time the window ends.
    pub reset: u64,
    /// Seconds until then, at least 1 (Retry-After).
    pub retry_after: u64,
}

/// Requests this replica accepted in one account's current window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// Unix time the window started.
    pub start: u64,
    pub count: u32,
}

/// Start of the window that holds unix time `now`.
pub fn window_start(now: u64) -> u64 {
    now - now % WINDOW_SECONDS
}

/// Judges one request at unix time `now` against `limit` per window, given
/// this replica's window of the account and the count the other replicas
/// reported for the same window. Only accepted requests are counted.
pub fn count(window: Option<Window>, peers: u32, limit: u32, now: u64) -> (Window, Verdict) {
    let start = window_start(now);
    let mut window = match window {
        Some(w) if w.start == start => w,
        _ => Window { start, count: 0 },
    };
    let allowed = window.count.saturating_add(peers) < limit;
    if allowed {
        window.count = window.count.saturating_add(1);
    }
    let reset = start + WINDOW_SECONDS;
    let verdict = Verdict {
        allowed,
        limit,
        remaining: limit.saturating_sub(window.count.saturating_add(peers)),
        reset,
        retry_after: (reset - now).max(1),
    };
    (window, verdict)
}

/// What one replica reports: its accepted requests by account in a window.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// The reporting replica's id (random per process).
    pub replica: String,
    /// Unix time the window started.
    pub window: u64,
    pub counts: BTreeMap<String, u32>,
}

/// This replica's windows, and the other replicas' last reports.
#[derive(Default)]
pub struct RateLimiter {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    own: HashMap<String, Window>,
    /// By replica id; a replica that went away still counts until its window ends.
    peers: HashMap<String, Counts>,
}

impl RateLimiter {
    pub fn check(&self, account: &str, limit: u32, now: u64) -> Verdict {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let start = window_start(now);
        // Forget accounts idle for a whole window, so the map stays as small
        // as the set of active accounts.
        if inner.own.len() > 1024 {
            inner.own.retain(|_, w| w.start + WINDOW_SECONDS > now);
        }
        let peers: u32 = inner
            .peers
            .values()
            .filter(|c| c.window == start)
            .filter_map(|c| c.counts.get(account))
            .fold(0u32, |sum, n| sum.saturating_add(*n));
        let (window, verdict) = count(inner.own.get(account).copied(), peers, limit, now);
        if verdict.allowed {
            inner.own.insert(account.to_string(), window);
        }
        verdict
    }

    /// This replica's counts of the window holding `now`, as it reports them.
    pub fn own_counts(&self, replica: &str, now: u64) -> Counts {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let start = window_start(now);
        let counts = inner.own.iter().filter(|(_, w)| w.start == start).map(|(a, w)| (a.clone(), w.count)).collect();
        Counts { replica: replica.to_string(), window: start, counts }
    }

    /// Records another replica's report. Counts only grow within a window,
    /// so an older report of the same window never replaces a newer one.
    pub fn record_peer(&self, report: Counts, now: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let start = window_start(now);
        inner.peers.retain(|_, c| c.window >= start);
        if report.window != start {
            return;
        }
        match inner.peers.get_mut(&report.replica) {
            Some(known) if known.window == report.window => {
                for (account, n) in report.counts {
                    let slot = known.counts.entry(account).or_default();
                    *slot = (*slot).max(n);
                }
            }
            _ => {
                inner.peers.insert(report.replica.clone(), report);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_a_window_and_resets_on_the_minute() {
        let limiter = RateLimiter::default();
        let t0 = 1_679_529_570; // 30 s before a minute boundary
        let first = limiter.check("a", 2, t0);
        assert_eq!(first, Verdict { allowed: true, limit: 2, remaining: 1, reset: 1_679_529_600, retry_after: 30 });
        assert!(limiter.check("a", 2, t0 + 10).allowed);
        let third = limiter.check("a", 2, t0 + 20);
        assert!(!third.allowed);
        assert_eq!(third.remaining, 0);
        assert_eq!(third.retry_after, 10);
        // Another account has its own window.
        assert!(limiter.check("b", 2, t0 + 20).allowed);
        // The next minute starts afresh.
        let next = limiter.check("a", 2, t0 + 30);
        assert!(next.allowed);
        assert_eq!(next.remaining, 1);
        assert_eq!(next.reset, 1_679_529_660);
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let (_, verdict) = count(Some(Window { start: 120, count: 5 }), 0, 5, 179);
        assert!(!verdict.allowed);
        assert_eq!(verdict.retry_after, 1);
    }

    #[test]
    fn a_zero_limit_refuses_everything() {
        let (_, verdict) = count(None, 0, 0, 0);
        assert!(!verdict.allowed);
    }

    #[test]
    fn refused_requests_are_not_counted() {
        let limiter = RateLimiter::default();
        for _ in 0..5 {
            limiter.check("a", 1, 60);
        }
        assert_eq!(limiter.own_counts("me", 60).counts["a"], 1);
    }

    #[test]
    fn the_peers_counts_share_one_limit() {
        let (a, b) = (RateLimiter::default(), RateLimiter::default());
        let now = 600;
        let sync = |from: &RateLimiter, name: &str, to: &RateLimiter| to.record_peer(from.own_counts(name, now), now);
        // Requests alternate between two replicas that see each other's counts.
        let mut remaining = Vec::new();
        for i in 0..6 {
            let (this, other) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
            let verdict = this.check("acct", 4, now);
            remaining.push((verdict.allowed, verdict.remaining));
            sync(this, if i % 2 == 0 { "a" } else { "b" }, other);
        }
        assert_eq!(remaining, vec![(true, 3), (true, 2), (true, 1), (true, 0), (false, 0), (false, 0)]);
        // Other accounts are not affected.
        assert!(a.check("other", 4, now).allowed);
    }

    #[test]
    fn peer_reports_of_another_window_do_not_count_and_older_reports_do_not_shrink() {
        let limiter = RateLimiter::default();
        let report = |window, n| Counts { replica: "p".into(), window, counts: BTreeMap::from([("a".into(), n)]) };
        limiter.record_peer(report(540, 2), 600);
        assert_eq!(limiter.check("a", 2, 600).remaining, 1, "last minute's report is ignored");
        limiter.record_peer(report(600, 1), 601);
        limiter.record_peer(report(600, 0), 601);
        let verdict = limiter.check("a", 3, 602);
        assert_eq!((verdict.allowed, verdict.remaining), (true, 0), "own 2 + the peer's 1");
        // The next window forgets the peer's counts.
        assert_eq!(limiter.check("a", 3, 660).remaining, 2);
    }

    #[test]
    fn a_peer_that_restarts_counts_under_both_ids() {
        let limiter = RateLimiter::default();
        let report =
            |replica: &str, n| Counts { replica: replica.into(), window: 600, counts: [("a".into(), n)].into() };
        limiter.record_peer(report("old", 2), 600);
        limiter.record_peer(report("new", 1), 610);
        assert_eq!(limiter.check("a", 10, 611).remaining, 6);
    }
}
