//! Giving freed heap memory back to the kernel.
//!
//! Connection tasks are freed when they end or park, and the 4 KiB reads of
//! warm connections with them. glibc keeps freed memory in the middle of a
//! heap resident until something reuses it, so after a burst of
//! connections (or many of them parking) the RSS stays at the peak: 5,000
//! parked connections read 3.6 KB each without a trim and 1.4 KB with one
//! (docs/benchmarks.md, idle memory). The worker's housekeeping tick asks
//! glibc to return whole free pages (`malloc_trim`) when connections have
//! ended or parked on that worker since the last trim, at most once per
//! `MIN_INTERVAL` for the whole process (one trim covers every arena), so
//! memory comes back within about a second of a burst. A trim took
//! 0.05-1 ms on a 40 MiB heap here (at most ~0.1% of one core); it runs on
//! the tick, never per request, and not at all while no connection ends.
//! Envoy does the same with tcmalloc's periodic release.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// At most one trim per this, process-wide.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Per-worker count of connections ended or parked since the last trim.
#[derive(Debug, Default)]
pub struct Release {
    churn: Cell<u32>,
}

impl Release {
    /// A connection ended or parked (its task was freed).
    pub fn freed(&self) {
        self.churn.set(self.churn.get().saturating_add(1));
    }

    /// From the housekeeping tick: trim when due. True when it trimmed.
    pub fn maybe_trim(&self, now: Instant) -> bool {
        if self.churn.get() == 0 || !claim(now) {
            return false;
        }
        self.churn.set(0);
        trim();
        true
    }
}

/// Control-side work freed a burst of memory (an xDS response decoded and
/// dropped): trim if the process-wide slot is free. True when it trimmed.
pub fn trim_if_due(now: Instant) -> bool {
    if !claim(now) {
        return false;
    }
    trim();
    true
}

/// Take the process-wide trim slot if `MIN_INTERVAL` has passed.
fn claim(now: Instant) -> bool {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let epoch = *EPOCH.get_or_init(Instant::now);
    let now_ms = u64::try_from(now.saturating_duration_since(epoch).as_millis())
        .unwrap_or(u64::MAX)
        // 0 means "never trimmed".
        .max(1);
    let last = LAST_MS.load(Ordering::Relaxed);
    let interval = MIN_INTERVAL.as_millis() as u64;
    if last != 0 && now_ms.saturating_sub(last) < interval {
        return false;
    }
    LAST_MS
        .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
}

#[cfg(target_env = "gnu")]
fn trim() {
    // SAFETY: malloc_trim only walks and releases the allocator's free
    // memory; it is thread-safe (it locks each arena).
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_churn_and_at_most_once_per_interval() {
        let r = Release::default();
        let t0 = Instant::now() + Duration::from_secs(5);
        assert!(!r.maybe_trim(t0), "no churn yet");
        r.freed();
        assert!(r.maybe_trim(t0));
        assert!(!r.maybe_trim(t0 + MIN_INTERVAL * 2), "nothing freed since");
        r.freed();
        assert!(!r.maybe_trim(t0 + Duration::from_millis(10)), "too soon");
        assert!(r.maybe_trim(t0 + MIN_INTERVAL + Duration::from_millis(10)));
    }
}
