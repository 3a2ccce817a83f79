//! Per-account request limit: a fixed one-minute window, counted in memory.
//!
//! A fixed window is what the seed's headers describe (a limit, what is left,
//! and the unix time the window resets). Counts live in each gateway replica:
//! with N replicas behind a load balancer an account gets up to N times its
//! limit. That is the price of a gateway without shared state.

use std::collections::HashMap;
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

/// Requests counted in one account's current window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// Unix time the window started.
    pub start: u64,
    pub count: u32,
}

/// Counts one request at unix time `now` against `limit` per window.
pub fn count(window: Option<Window>, limit: u32, now: u64) -> (Window, Verdict) {
    let start = now - now % WINDOW_SECONDS;
    let mut window = match window {
        Some(w) if w.start == start => w,
        _ => Window { start, count: 0 },
    };
    window.count = window.count.saturating_add(1);
    let reset = start + WINDOW_SECONDS;
    let verdict = Verdict {
        allowed: window.count <= limit,
        limit,
        remaining: limit.saturating_sub(window.count),
        reset,
        retry_after: (reset - now).max(1),
    };
    (window, verdict)
}

/// The windows of every account seen by this replica.
#[derive(Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<String, Window>>,
}

impl RateLimiter {
    pub fn check(&self, account: &str, limit: u32, now: u64) -> Verdict {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        // Forget accounts idle for a whole window, so the map stays as small
        // as the set of active accounts.
        if windows.len() > 1024 {
            windows.retain(|_, w| w.start + WINDOW_SECONDS > now);
        }
        let (window, verdict) = count(windows.get(account).copied(), limit, now);
        windows.insert(account.to_string(), window);
        verdict
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
        let (_, verdict) = count(Some(Window { start: 120, count: 5 }), 5, 179);
        assert!(!verdict.allowed);
        assert_eq!(verdict.retry_after, 1);
    }

    #[test]
    fn a_zero_limit_refuses_everything() {
        let (_, verdict) = count(None, 0, 0);
        assert!(!verdict.allowed);
    }
}
