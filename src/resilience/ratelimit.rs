//! Local rate limits (`rate_limit.*` of a route or a listener): one
//! generic cell rate algorithm (GCRA) bucket per route or listener for the
//! whole proxy, kept in one atomic word that every worker updates with a
//! compare-and-swap. Tokens are never handed out to workers in advance, so
//! no worker can sit on tokens another one needs: a busy worker gets the
//! whole rate when the others are idle, and the sum over workers never
//! exceeds the rate plus the burst.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A shared GCRA bucket.
#[derive(Debug)]
pub struct RateLimiter {
    /// Nanoseconds between two requests at the configured rate.
    interval_ns: u64,
    /// How far the theoretical arrival time may run ahead of now.
    tolerance_ns: u64,
    /// Theoretical arrival time of the next request (`super::now_ns` clock).
    tat: AtomicU64,
    /// The settings as written, to keep the state across reloads that do
    /// not change them.
    pub per_second: u64,
    pub burst: u64,
}

impl RateLimiter {
    /// `per_second` >= 1 events per second, `burst` >= 1 at once.
    pub fn new(per_second: u64, burst: u64) -> Self {
        let interval_ns = (1_000_000_000 / per_second.max(1)).max(1);
        RateLimiter {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(burst.max(1) - 1),
            tat: AtomicU64::new(0),
            per_second,
            burst,
        }
    }

    /// Take one token now: `Ok` when allowed, else how long until one
    /// would be.
    pub fn acquire(&self) -> Result<(), Duration> {
        self.acquire_at(super::now_ns())
    }

    pub fn acquire_at(&self, now: u64) -> Result<(), Duration> {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            if start - now > self.tolerance_ns {
                return Err(Duration::from_nanos(start - now - self.tolerance_ns));
            }
            match self.tat.compare_exchange_weak(
                tat,
                start + self.interval_ns,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let r = RateLimiter::new(100, 5);
        let t0 = 1_000_000_000;
        let ok = (0..20).filter(|_| r.acquire_at(t0).is_ok()).count();
        assert_eq!(ok, 5);
        let wait = r.acquire_at(t0).unwrap_err();
        assert!(wait <= Duration::from_millis(10), "{wait:?}");
        // One more every 10 ms afterwards.
        assert!(r.acquire_at(t0 + 10_000_000).is_ok());
        assert!(r.acquire_at(t0 + 10_000_000).is_err());
        // Over one second at a steady trickle: about the rate.
        let mut granted = 0;
        for ms in 0..1000u64 {
            for _ in 0..3 {
                if r.acquire_at(t0 + 20_000_000 + ms * 1_000_000).is_ok() {
                    granted += 1;
                }
            }
        }
        assert!((99..=106).contains(&granted), "{granted}");
    }

    #[test]
    fn shared_between_threads() {
        let r = std::sync::Arc::new(RateLimiter::new(1000, 10));
        let t0 = 5_000_000_000;
        let granted: usize = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || (0..1000).filter(|_| r.acquire_at(t0).is_ok()).count())
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(granted, 10);
    }
}
