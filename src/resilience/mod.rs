//! The fault-tolerance layer: retry policies and budgets, circuit-breaker
//! limits, the shared rate limiter, and the endpoint health that outlier
//! detection and active health checks write. docs/resilience.md is the
//! operator's view of all of it.
//!
//! Every decision on the data path reads per-worker cells or one relaxed
//! atomic load; the only shared writes are an ejection (rare), a health
//! check result (control side), and the rate limiter's compare-and-swap
//! (only on routes and listeners that configure a limit).

pub mod budget;
pub mod health;
pub mod ratelimit;
pub mod retry;

use std::time::Duration;

pub use budget::{BudgetCells, RetryBudget};
pub use health::{EndpointHealth, HealthCheck, HealthProtocol, OutlierDetection, GRPC_HEALTH_PATH};
pub use ratelimit::RateLimiter;
pub use retry::{RetryOn, RetryPolicy};

/// `circuit_breaker.*` of a cluster: whole-proxy limits; each worker holds
/// its share ([`worker_share`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerLimits {
    /// Open upstream connections (in use and idle in the pool).
    pub max_connections: u64,
    /// Requests waiting for a new connection to be established.
    pub max_pending_requests: u64,
    /// Requests in flight to the cluster.
    pub max_requests: u64,
    /// Retries in flight to the cluster.
    pub max_retries: u64,
}

impl Default for BreakerLimits {
    /// Envoy's defaults.
    fn default() -> Self {
        BreakerLimits {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

/// Which circuit-breaker limit refused a request (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    Connections,
    PendingRequests,
    Requests,
    Retries,
}

impl Overflow {
    pub const ALL: [Overflow; 4] = [
        Overflow::Connections,
        Overflow::PendingRequests,
        Overflow::Requests,
        Overflow::Retries,
    ];

    /// The config key, used as the metric label.
    pub fn key(self) -> &'static str {
        match self {
            Overflow::Connections => "max_connections",
            Overflow::PendingRequests => "max_pending_requests",
            Overflow::Requests => "max_requests",
            Overflow::Retries => "max_retries",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Split `max` over `workers`: each gets `max / workers`, the first
/// `max % workers` one more, and never less than 1.
pub fn worker_share(max: u64, workers: usize, index: usize) -> u64 {
    let w = workers.max(1) as u64;
    let base = max / w + u64::from((index as u64) < max % w);
    base.max(1)
}

/// Milliseconds on the process's monotonic clock (from its first call), the
/// time base of ejections and rate limits shared between threads.
pub fn now_ms() -> u64 {
    u64::try_from(base().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Nanoseconds on the same clock.
pub fn now_ns() -> u64 {
    u64::try_from(base().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn base() -> std::time::Instant {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(std::time::Instant::now)
}

/// `Duration` to whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
