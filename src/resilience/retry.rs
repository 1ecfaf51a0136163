//! A route's retry policy (`retry.*`).

use std::time::Duration;

/// The conditions of `retry.on`, as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn(u16);

impl RetryOn {
    pub const CONNECT_FAILURE: RetryOn = RetryOn(1);
    pub const RESET: RetryOn = RetryOn(2);
    pub const STATUS_5XX: RetryOn = RetryOn(4);
    pub const GATEWAY_ERROR: RetryOn = RetryOn(8);
    pub const RETRIABLE_STATUS: RetryOn = RetryOn(16);
    /// gRPC statuses in a response head (a trailers-only response).
    pub const GRPC_CANCELLED: RetryOn = RetryOn(32);
    pub const GRPC_DEADLINE_EXCEEDED: RetryOn = RetryOn(64);
    pub const GRPC_INTERNAL: RetryOn = RetryOn(128);
    pub const GRPC_RESOURCE_EXHAUSTED: RetryOn = RetryOn(256);
    pub const GRPC_UNAVAILABLE: RetryOn = RetryOn(512);

    /// `["connect-failure", "reset", "gateway-error"]`.
    pub const DEFAULT: RetryOn = RetryOn(1 | 2 | 8);

    /// The names `retry.on` accepts.
    pub const NAMES: [(&'static str, RetryOn); 10] = [
        ("connect-failure", RetryOn::CONNECT_FAILURE),
        ("reset", RetryOn::RESET),
        ("5xx", RetryOn::STATUS_5XX),
        ("gateway-error", RetryOn::GATEWAY_ERROR),
        ("retriable-status", RetryOn::RETRIABLE_STATUS),
        ("cancelled", RetryOn::GRPC_CANCELLED),
        ("deadline-exceeded", RetryOn::GRPC_DEADLINE_EXCEEDED),
        ("internal", RetryOn::GRPC_INTERNAL),
        ("resource-exhausted", RetryOn::GRPC_RESOURCE_EXHAUSTED),
        ("unavailable", RetryOn::GRPC_UNAVAILABLE),
    ];

    pub fn parse(name: &str) -> Option<RetryOn> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    pub fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 == other.0
    }

    #[must_use]
    pub fn with(self, other: RetryOn) -> RetryOn {
        RetryOn(self.0 | other.0)
    }
}

/// `retry.*` of a route, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    pub on: RetryOn,
    /// Extra statuses for `retriable-status`.
    pub statuses: Vec<u16>,
    /// Limit for one try, until its response head arrives.
    pub per_try_timeout: Option<Duration>,
    /// Base of the exponential back-off (full jitter, capped at 10x).
    pub backoff: Duration,
    /// Largest request body kept for replay; larger bodies are streamed
    /// and their requests not retried once sent.
    pub max_body_bytes: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 0,
            on: RetryOn::DEFAULT,
            statuses: Vec::new(),
            per_try_timeout: None,
            backoff: Duration::from_millis(25),
            max_body_bytes: 64 * 1024,
        }
    }
}

impl RetryPolicy {
    /// Whether a gRPC status in a response head is retried.
    pub fn retries_grpc(&self, code: u8) -> bool {
        let flag = match code {
            1 => RetryOn::GRPC_CANCELLED,
            4 => RetryOn::GRPC_DEADLINE_EXCEEDED,
            13 => RetryOn::GRPC_INTERNAL,
            8 => RetryOn::GRPC_RESOURCE_EXHAUSTED,
            14 => RetryOn::GRPC_UNAVAILABLE,
            _ => return false,
        };
        self.on.contains(flag)
    }

    /// Whether a response with this status is retried.
    pub fn retries_status(&self, status: u16) -> bool {
        (self.on.contains(RetryOn::STATUS_5XX) && (500..600).contains(&status))
            || (self.on.contains(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504))
            || (self.on.contains(RetryOn::RETRIABLE_STATUS) && self.statuses.contains(&status))
    }

    /// Whether a failure of the proxy's own kind (reset, malformed
    /// response, timeout before the head) is retried; `status` is the one
    /// the client would get (502 or 504).
    pub fn retries_failure(&self, reset: bool, status: u16) -> bool {
        (reset && self.on.contains(RetryOn::RESET))
            || (self.on.contains(RetryOn::STATUS_5XX) || self.on.contains(RetryOn::GATEWAY_ERROR))
                && matches!(status, 502 | 504)
    }

    /// The wait before retry number `retry` (1-based): uniformly random in
    /// `[0, min(base * 2^(retry-1), 10 * base)]` (full jitter).
    pub fn backoff(&self, retry: u32) -> Duration {
        let base = self.backoff.as_micros() as u64;
        let cap = base.saturating_mul(10);
        let exp = base.saturating_mul(1u64 << retry.saturating_sub(1).min(20));
        let top = exp.min(cap);
        if top == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(fastrand::u64(0..=top))
    }
}

/// Methods that may be sent twice (RFC 9110 §9.2.2).
pub fn idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_by_condition() {
        let mut p = RetryPolicy::default();
        assert!(p.retries_status(503) && p.retries_status(502) && !p.retries_status(500));
        p.on = RetryOn::STATUS_5XX;
        assert!(p.retries_status(500) && p.retries_status(599) && !p.retries_status(429));
        p.on = RetryOn::RETRIABLE_STATUS;
        p.statuses = vec![429];
        assert!(p.retries_status(429) && !p.retries_status(503));
        assert!(!p.retries_failure(true, 502));
        p.on = RetryOn::RESET;
        assert!(p.retries_failure(true, 502) && !p.retries_failure(false, 504));
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let p = RetryPolicy {
            backoff: Duration::from_millis(10),
            ..RetryPolicy::default()
        };
        for retry in 1..30 {
            let d = p.backoff(retry);
            let top = Duration::from_millis((10u64 << (retry - 1).min(20)).min(100));
            assert!(d <= top, "{retry}: {d:?} > {top:?}");
        }
        // Full jitter: not always the top.
        let spread: std::collections::HashSet<_> = (0..50).map(|_| p.backoff(3)).collect();
        assert!(spread.len() > 10);
    }

    #[test]
    fn names_parse() {
        let all = RetryOn::NAMES.iter().fold(RetryOn::default(), |a, (n, _)| {
            a.with(RetryOn::parse(n).unwrap())
        });
        assert!(all.contains(RetryOn::DEFAULT) && all.contains(RetryOn::RETRIABLE_STATUS));
        assert_eq!(RetryOn::parse("timeout"), None);
    }
}
