//! Endpoint health: what outlier detection (passive, from the data path)
//! and active health checks (the prober thread) decide about an endpoint,
//! in atomics every worker reads without a lock.
//!
//! Where outlier decisions are taken: each worker counts consecutive
//! failures of an endpoint on its own traffic (single-writer cells, no
//! cross-core write per request), and the worker whose count reaches a
//! threshold ejects the endpoint for the whole proxy, by a compare-and-swap
//! on the endpoint's `ejected_until`. Every worker honours that word on its
//! next pick. So an endpoint that fails every request is ejected everywhere
//! as soon as any one worker has seen `consecutive_*` failures in a row
//! (at 1,000 req/s over 64 workers, within about 0.3 s), while the data
//! path writes shared memory only at the moment of an ejection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Longest ejection, whatever the multiplier.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// `outlier_detection.*` of a cluster, compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    pub consecutive_connect_failures: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: 5,
            consecutive_gateway_errors: 5,
            consecutive_connect_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 50,
        }
    }
}

/// The gRPC health service's method (grpc.health.v1).
pub const GRPC_HEALTH_PATH: &str = "/grpc.health.v1.Health/Check";

/// `health_check.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthProtocol {
    /// `GET path`, over HTTP/2 where the cluster speaks it.
    Http,
    /// A TCP connection (and the TLS handshake, with `tls`).
    Tcp,
    /// `grpc.health.v1.Health/Check` over HTTP/2; SERVING is healthy.
    Grpc,
}

/// `health_check.*` of a cluster, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub protocol: HealthProtocol,
    pub path: String,
    /// grpc: the `service` asked about (empty: the server as a whole).
    pub service: String,
    /// `Host` of the probe; default the endpoint as written.
    pub host: Option<String>,
    pub expected_statuses: Vec<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Below this percentage of usable endpoints, spread over all of them
    /// (Envoy's panic mode); 0 turns it off.
    pub panic_threshold: u32,
}

/// How one upstream try ended, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response that is not a 5xx.
    Success,
    /// A 5xx response from the upstream.
    Status(u16),
    /// Reset, malformed response or timeout (counted as a 502/504).
    LocalFailure,
    /// The connection could not be established.
    ConnectFailure,
}

/// Health of one endpoint for the whole proxy; carried across reloads with
/// the endpoint (cluster name and address).
#[derive(Debug, Default)]
pub struct EndpointHealth {
    /// End of the current ejection (`super::now_ms` clock); 0: never ejected.
    ejected_until: AtomicU64,
    /// The multiplier of the last ejection.
    multiplier: AtomicU64,
    /// Ejections so far (metric).
    pub ejections: AtomicU64,
    /// The active health check's verdict.
    unhealthy: AtomicBool,
    /// Health check results (metrics; written by the prober only).
    pub checks_passed: AtomicU64,
    pub checks_failed: AtomicU64,
    /// Prober state: consecutive passes (> 0) or failures (< 0).
    streak: std::sync::atomic::AtomicI64,
}

impl EndpointHealth {
    /// Neither ejected nor failing its health checks.
    #[inline]
    pub fn usable(&self, now_ms: u64) -> bool {
        !self.unhealthy.load(Relaxed) && self.ejected_until.load(Relaxed) <= now_ms
    }

    pub fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Relaxed) > now_ms
    }

    /// Milliseconds of ejection left.
    pub fn ejection_left_ms(&self, now_ms: u64) -> u64 {
        self.ejected_until.load(Relaxed).saturating_sub(now_ms)
    }

    pub fn healthy(&self) -> bool {
        !self.unhealthy.load(Relaxed)
    }

    /// Eject for `base * multiplier` (capped at [`MAX_EJECTION`]); the
    /// multiplier grows with each ejection and starts again at 1 once the
    /// endpoint has gone `MAX_EJECTION` without one. False when another
    /// worker ejected it first (or it is ejected already).
    pub fn eject(&self, base: Duration, now_ms: u64) -> bool {
        let until = self.ejected_until.load(Relaxed);
        if until > now_ms {
            return false;
        }
        let max = super::millis(MAX_EJECTION);
        let multiplier = if until == 0 || now_ms - until > max {
            1
        } else {
            self.multiplier.load(Relaxed) + 1
        };
        let ms = super::millis(base)
            .saturating_mul(multiplier)
            .min(max.max(super::millis(base)));
        if self
            .ejected_until
            .compare_exchange(until, now_ms + ms.max(1), Relaxed, Relaxed)
            .is_err()
        {
            return false;
        }
        self.multiplier.store(multiplier, Relaxed);
        self.ejections.fetch_add(1, Relaxed);
        true
    }

    /// Record one probe result (prober thread only); returns the verdict
    /// when it changed.
    pub fn probe_result(&self, passed: bool, check: &HealthCheck) -> Option<bool> {
        if passed {
            self.checks_passed.fetch_add(1, Relaxed);
        } else {
            self.checks_failed.fetch_add(1, Relaxed);
        }
        let s = self.streak.load(Relaxed);
        let s = match (passed, s) {
            (true, s) if s > 0 => s + 1,
            (true, _) => 1,
            (false, s) if s < 0 => s - 1,
            (false, _) => -1,
        };
        self.streak.store(s, Relaxed);
        let unhealthy = self.unhealthy.load(Relaxed);
        if unhealthy && s >= i64::from(check.healthy_threshold) {
            self.unhealthy.store(false, Relaxed);
            return Some(true);
        }
        if !unhealthy && -s >= i64::from(check.unhealthy_threshold) {
            self.unhealthy.store(true, Relaxed);
            return Some(false);
        }
        None
    }

    /// Forget the active verdict (the cluster's health check was removed).
    pub fn clear_check(&self) {
        self.unhealthy.store(false, Relaxed);
        self.streak.store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_grows_and_resets() {
        let h = EndpointHealth::default();
        let base = Duration::from_secs(30);
        assert!(h.usable(1000));
        assert!(h.eject(base, 1000));
        assert!(!h.usable(1000 + 29_999) && h.usable(31_000));
        assert!(!h.eject(base, 2000), "already ejected");
        assert!(h.eject(base, 40_000));
        assert_eq!(h.ejection_left_ms(40_000), 60_000);
        // Capped at 300 s.
        let mut t = 100_000;
        for _ in 0..20 {
            t += h.ejection_left_ms(t);
            assert!(h.eject(base, t));
        }
        assert_eq!(h.ejection_left_ms(t), 300_000);
        // After 300 s without an ejection the multiplier starts again.
        t += 300_000 + 300_001;
        assert!(h.eject(base, t));
        assert_eq!(h.ejection_left_ms(t), 30_000);
        assert_eq!(h.ejections.load(Relaxed), 23);
    }

    #[test]
    fn thresholds_flip_the_verdict() {
        let check = HealthCheck {
            protocol: HealthProtocol::Tcp,
            path: "/".into(),
            service: String::new(),
            host: None,
            expected_statuses: vec![200],
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            panic_threshold: 0,
        };
        let h = EndpointHealth::default();
        assert_eq!(h.probe_result(false, &check), None);
        assert_eq!(h.probe_result(false, &check), None);
        assert_eq!(h.probe_result(false, &check), Some(false));
        assert!(!h.usable(0));
        assert_eq!(h.probe_result(true, &check), None);
        assert_eq!(h.probe_result(true, &check), Some(true));
        assert!(h.usable(0));
    }
}
