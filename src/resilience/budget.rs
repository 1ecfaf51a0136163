//! Retry budgets (`retry_budget.*` of a cluster), as linkerd2-proxy's work:
//! over a sliding window, retries may be at most `ratio` of the requests
//! plus a floor of `min_retries_per_second`.
//!
//! Each worker keeps its own window of the cluster's requests and retries
//! (ten one-second buckets), so a retry decision reads only this core's
//! cells. The ratio holds per worker, hence for the whole proxy; the floor
//! is shared out over workers like every whole-proxy limit.

use crate::metrics::cell::Counter;

/// Length of the sliding window, in one-second buckets.
pub const WINDOW_SECS: u64 = 10;

/// `retry_budget.*`, compiled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub ratio: f64,
    pub min_retries_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: 0.2,
            min_retries_per_second: 10,
        }
    }
}

/// One worker's window for one cluster. Single writer (the worker).
#[derive(Debug, Default)]
pub struct BudgetCells {
    /// The second (on `super::now_ms`'s clock) each bucket counts.
    second: [Counter; WINDOW_SECS as usize],
    requests: [Counter; WINDOW_SECS as usize],
    retries: [Counter; WINDOW_SECS as usize],
}

impl BudgetCells {
    fn bucket(&self, now_s: u64) -> usize {
        let i = (now_s % WINDOW_SECS) as usize;
        if self.second[i].get() != now_s {
            self.second[i].set(now_s);
            self.requests[i].set(0);
            self.retries[i].set(0);
        }
        i
    }

    /// Count a request's first try.
    pub fn deposit(&self, now_ms: u64) {
        let i = self.bucket(now_ms / 1000);
        self.requests[i].inc();
    }

    /// Requests and retries in the window ending now.
    pub fn window(&self, now_ms: u64) -> (u64, u64) {
        let now_s = now_ms / 1000;
        let mut totals = (0, 0);
        for i in 0..WINDOW_SECS as usize {
            let s = self.second[i].get();
            if s + WINDOW_SECS > now_s && s <= now_s {
                totals.0 += self.requests[i].get();
                totals.1 += self.retries[i].get();
            }
        }
        totals
    }

    /// Take a retry from the budget; false (and nothing counted) when the
    /// window has no room. `floor` is this worker's share of
    /// `min_retries_per_second * WINDOW_SECS`.
    pub fn withdraw(&self, budget: &RetryBudget, floor: u64, now_ms: u64) -> bool {
        let (requests, retries) = self.window(now_ms);
        let allowed = floor as f64 + budget.ratio * requests as f64;
        if (retries as f64) + 1.0 > allowed {
            return false;
        }
        let i = self.bucket(now_ms / 1000);
        self.retries[i].inc();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_and_floor_bound_retries() {
        let cells = BudgetCells::default();
        let b = RetryBudget {
            ratio: 0.2,
            min_retries_per_second: 1,
        };
        let floor = WINDOW_SECS;
        let mut granted = 0;
        for n in 0..1000u64 {
            let t = 5_000 + n; // all within one second
            cells.deposit(t);
            for _ in 0..3 {
                if cells.withdraw(&b, floor, t) {
                    granted += 1;
                }
            }
        }
        assert!(granted <= 200 + floor, "{granted}");
        assert!(granted >= 200, "{granted}");
    }

    #[test]
    fn window_slides() {
        let cells = BudgetCells::default();
        let b = RetryBudget {
            ratio: 0.0,
            min_retries_per_second: 1,
        };
        let mut t = 1_000;
        let used = (0..20).filter(|_| cells.withdraw(&b, 3, t)).count();
        assert_eq!(used, 3);
        t += (WINDOW_SECS - 1) * 1000;
        assert!(!cells.withdraw(&b, 3, t));
        // Ten seconds on, the first second's retries have left the window.
        t += 1000;
        assert!(cells.withdraw(&b, 3, t));
    }
}
