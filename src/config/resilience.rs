//! Compiling the resilience keys: `retry` and `rate_limit` of routes and
//! listeners, `retry_budget`, `circuit_breaker`, `outlier_detection` and
//! `health_check` of clusters.

use std::sync::Arc;
use std::time::Duration;

use serde_spanned::Spanned;

use super::ctx::Ctx;
use super::file::{FileCluster, FileHealthCheck, FileRateLimit, FileRetry};
use crate::resilience::{
    BreakerLimits, HealthCheck, HealthProtocol, OutlierDetection, RateLimiter, RetryBudget,
    RetryOn, RetryPolicy,
};

/// The resilience settings of one cluster.
pub(super) struct ClusterResilience {
    pub retry_budget: RetryBudget,
    pub breaker: BreakerLimits,
    pub outlier: Option<OutlierDetection>,
    pub health_check: Option<HealthCheck>,
}

pub(super) fn retry(cx: &mut Ctx<'_>, key: &str, r: &Spanned<FileRetry>) -> Option<RetryPolicy> {
    let f = r.get_ref();
    let mut p = RetryPolicy::default();
    let mut ok = true;
    if let Some(a) = f.attempts {
        if a > 10 {
            cx.error(
                r.span(),
                format!("{key}.retry.attempts"),
                format!("at most 10 retries, not {a}"),
            );
            ok = false;
        }
        p.attempts = a.min(10) as u32;
    }
    if let Some(on) = &f.on {
        p.on = RetryOn::default();
        for name in on {
            match RetryOn::parse(name.get_ref()) {
                Some(v) => p.on = p.on.with(v),
                None => {
                    let names: Vec<&str> = RetryOn::NAMES.iter().map(|(n, _)| *n).collect();
                    cx.error(
                        name.span(),
                        format!("{key}.retry.on"),
                        format!(
                            "unknown condition \"{}\"; expected one of {}",
                            name.get_ref(),
                            names.join(", ")
                        ),
                    );
                    ok = false;
                }
            }
        }
    }
    for s in f.statuses.iter().flatten() {
        match status(cx, &format!("{key}.retry.statuses"), s) {
            Some(code) => p.statuses.push(code),
            None => ok = false,
        }
    }
    if !p.statuses.is_empty() && !p.on.contains(RetryOn::RETRIABLE_STATUS) {
        cx.error(
            r.span(),
            format!("{key}.retry.statuses"),
            "statuses are only retried with \"retriable-status\" in retry.on",
        );
        ok = false;
    }
    p.per_try_timeout = f.per_try_timeout.map(|d| d.0);
    if let Some(b) = f.backoff {
        p.backoff = b.0;
    }
    if let Some(m) = f.max_body_bytes {
        p.max_body_bytes = m;
    }
    ok.then_some(p)
}

fn status(cx: &mut Ctx<'_>, key: &str, s: &Spanned<i64>) -> Option<u16> {
    let v = *s.get_ref();
    if (100..=599).contains(&v) {
        Some(v as u16)
    } else {
        cx.error(
            s.span(),
            key,
            format!("must be a status from 100 to 599, not {v}"),
        );
        None
    }
}

/// A route's `rate_limit`; `burst` defaults to a tenth of a second's worth
/// (at least 1).
pub(super) fn route_rate_limit(r: &FileRateLimit) -> Option<Arc<RateLimiter>> {
    let rate = r.requests_per_second?;
    Some(Arc::new(RateLimiter::new(
        rate,
        r.burst.unwrap_or((rate / 10).max(1)),
    )))
}

pub(super) fn cluster(cx: &mut Ctx<'_>, key: &str, c: &FileCluster) -> Option<ClusterResilience> {
    let mut ok = true;
    let mut retry_budget = RetryBudget::default();
    if let Some(b) = &c.retry_budget {
        if let Some(r) = b.ratio {
            retry_budget.ratio = r;
        }
        if let Some(m) = b.min_retries_per_second {
            retry_budget.min_retries_per_second = m.min(u64::from(u32::MAX)) as u32;
        }
    }
    let mut breaker = BreakerLimits::default();
    if let Some(b) = &c.circuit_breaker {
        breaker.max_connections = b.max_connections.unwrap_or(breaker.max_connections);
        breaker.max_pending_requests = b
            .max_pending_requests
            .unwrap_or(breaker.max_pending_requests);
        breaker.max_requests = b.max_requests.unwrap_or(breaker.max_requests);
        breaker.max_retries = b.max_retries.unwrap_or(breaker.max_retries);
    }
    let outlier = c.outlier_detection.as_ref().map(|o| {
        let d = OutlierDetection::default();
        let n = |v: Option<u64>, def: u32| v.map_or(def, |v| v.min(u64::from(u32::MAX)) as u32);
        OutlierDetection {
            consecutive_5xx: n(o.consecutive_5xx, d.consecutive_5xx),
            consecutive_gateway_errors: n(
                o.consecutive_gateway_errors,
                d.consecutive_gateway_errors,
            ),
            consecutive_connect_failures: n(
                o.consecutive_connect_failures,
                d.consecutive_connect_failures,
            ),
            base_ejection_time: o.base_ejection_time.map_or(d.base_ejection_time, |t| t.0),
            max_ejection_percent: n(o.max_ejection_percent, d.max_ejection_percent),
        }
    });
    let health_check = match &c.health_check {
        Some(h) => match health_check(cx, key, h) {
            Some(h) => Some(h),
            None => {
                ok = false;
                None
            }
        },
        None => None,
    };
    ok.then_some(ClusterResilience {
        retry_budget,
        breaker,
        outlier,
        health_check,
    })
}

fn health_check(cx: &mut Ctx<'_>, key: &str, h: &Spanned<FileHealthCheck>) -> Option<HealthCheck> {
    let f = h.get_ref();
    let key = format!("{key}.health_check");
    let mut ok = true;
    let protocol = match f
        .protocol
        .as_ref()
        .map(|p| (p.get_ref().as_str(), p.span()))
    {
        None | Some(("http", _)) => HealthProtocol::Http,
        Some(("tcp", _)) => HealthProtocol::Tcp,
        Some(("grpc", _)) => HealthProtocol::Grpc,
        Some((other, span)) => {
            cx.error(
                span,
                format!("{key}.protocol"),
                format!("must be \"http\", \"tcp\" or \"grpc\", not \"{other}\""),
            );
            ok = false;
            HealthProtocol::Http
        }
    };
    let path = match &f.path {
        Some(p) if !p.get_ref().starts_with('/') || p.get_ref().bytes().any(|b| b <= b' ') => {
            cx.error(
                p.span(),
                format!("{key}.path"),
                "must start with '/' and contain no spaces or control characters",
            );
            ok = false;
            String::new()
        }
        Some(p) => p.get_ref().clone(),
        None => "/".to_string(),
    };
    let service = match &f.service {
        Some(s) if protocol != HealthProtocol::Grpc => {
            cx.error(
                s.span(),
                format!("{key}.service"),
                "only a protocol = \"grpc\" health check asks about a service",
            );
            ok = false;
            String::new()
        }
        Some(s) if s.get_ref().bytes().any(|b| b < b' ' || b == 0x7f) => {
            cx.error(
                s.span(),
                format!("{key}.service"),
                "contains control characters",
            );
            ok = false;
            String::new()
        }
        Some(s) => s.get_ref().clone(),
        None => String::new(),
    };
    let host = match &f.host {
        Some(v) if v.get_ref().is_empty() || v.get_ref().bytes().any(|b| b <= b' ') => {
            cx.error(
                v.span(),
                format!("{key}.host"),
                "must be a host name without spaces or control characters",
            );
            ok = false;
            None
        }
        v => v.as_ref().map(|v| v.get_ref().clone()),
    };
    let mut expected_statuses = Vec::new();
    for s in f.expected_statuses.iter().flatten() {
        match status(cx, &format!("{key}.expected_statuses"), s) {
            Some(code) => expected_statuses.push(code),
            None => ok = false,
        }
    }
    if expected_statuses.is_empty() {
        expected_statuses.push(200);
    }
    let interval = f.interval.map_or(Duration::from_secs(5), |d| d.0);
    let timeout = f.timeout.map_or(Duration::from_secs(1), |d| d.0);
    let n = |v: Option<u64>, def: u32| v.map_or(def, |v| v.min(1000) as u32);
    ok.then(|| HealthCheck {
        protocol,
        path,
        service,
        host,
        expected_statuses,
        interval,
        timeout,
        healthy_threshold: n(f.healthy_threshold, 2),
        unhealthy_threshold: n(f.unhealthy_threshold, 3),
        panic_threshold: n(f.panic_threshold, 0),
    })
}
