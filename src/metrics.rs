//! Per-worker counters. Each counter has exactly one writer (its worker
//! thread), so an increment is a plain load and store with no read-modify-
//! write and no contention; readers (the supervisor, later the admin thread)
//! load them relaxed and sum over workers.

use std::sync::atomic::{AtomicU64, Ordering};

/// A single-writer counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add `n`. Only the owning worker calls this.
    #[inline]
    pub fn add(&self, n: u64) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.wrapping_add(n), Ordering::Relaxed);
    }

    /// Add one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtract one (for gauges).
    #[inline]
    pub fn dec(&self) {
        let v = self.0.load(Ordering::Relaxed);
        self.0.store(v.saturating_sub(1), Ordering::Relaxed);
    }

    /// Current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters of one listener on one worker.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    /// Connections accepted and served.
    pub accepted: Counter,
    /// Connections open now (gauge).
    pub active: Counter,
    /// Connections closed at once because `max_connections` was reached.
    pub rejected: Counter,
    /// Accept calls that failed (EMFILE and friends).
    pub accept_errors: Counter,
    /// Upstream connect attempts that failed or timed out.
    pub upstream_connect_failures: Counter,
    /// Connections closed because no endpoint could be reached.
    pub no_upstream: Counter,
    /// Connections closed by `idle_timeout`.
    pub idle_timeouts: Counter,
    /// Bytes received from downstream clients.
    pub bytes_in: Counter,
    /// Bytes sent to downstream clients.
    pub bytes_out: Counter,
}

/// Sum of one listener's counters over workers, as a plain value.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ListenerTotals {
    pub accepted: u64,
    pub active: u64,
    pub rejected: u64,
    pub accept_errors: u64,
    pub upstream_connect_failures: u64,
    pub no_upstream: u64,
    pub idle_timeouts: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl ListenerTotals {
    /// Add one worker's counters.
    pub fn add(&mut self, c: &ListenerCounters) {
        self.accepted += c.accepted.get();
        self.active += c.active.get();
        self.rejected += c.rejected.get();
        self.accept_errors += c.accept_errors.get();
        self.upstream_connect_failures += c.upstream_connect_failures.get();
        self.no_upstream += c.no_upstream.get();
        self.idle_timeouts += c.idle_timeouts.get();
        self.bytes_in += c.bytes_in.get();
        self.bytes_out += c.bytes_out.get();
    }
}
