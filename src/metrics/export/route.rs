//! The route families of the Prometheus exposition: requests, identity
//! refusals, certificate expiry, rate limits, injected faults and request
//! durations.

use super::{class_samples, merge, Prom};
use crate::snapshot::Snapshot;

pub(super) fn route_metrics(p: &mut Prom, s: &Snapshot) {
    let name = "outrigger_route_requests_total";
    p.family(
        name,
        "counter",
        "HTTP requests by route and response status class.",
    );
    for (table, t) in &s.route_tables {
        for r in &t.routes {
            class_samples(
                p,
                name,
                &[("table", table), ("route", &r.name)],
                &r.stats,
                |c| &c.requests,
            );
        }
    }
    let name = "outrigger_authz_denied_total";
    p.family(
        name,
        "counter",
        "Requests (403) or tcp connections refused by allow_identities / deny_identities, by rule.",
    );
    let mut authz_samples = |scope: &str, owner: &str, a: &crate::tls::spiffe::Authz| {
        for i in 0..=a.deny.len() {
            let rule = a.rule_label(i);
            p.sample(
                name,
                &[("scope", scope), ("name", owner), ("rule", rule.as_str())],
                a.denied.sum(|c| c[i].get()),
            );
        }
    };
    for l in &s.listeners {
        if let Some(a) = &l.authz {
            authz_samples("listener", &l.name, a);
        }
    }
    for t in s.route_tables.values() {
        for r in &t.routes {
            if let Some(a) = &r.authz {
                authz_samples("route", &r.name, a);
            }
        }
    }
    let name = "outrigger_certificate_expiry_seconds";
    p.family(
        name,
        "gauge",
        "Seconds until each certificate in use expires (negative once expired).",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for c in s.certificates() {
        p.sample_f(
            name,
            &[("owner", c.owner.as_str()), ("serial", c.serial.as_str())],
            (c.not_after - now) as f64,
        );
    }
    let name = "outrigger_route_rate_limited_total";
    p.family(
        name,
        "counter",
        "HTTP requests refused (429) by the route's rate limit.",
    );
    for (table, t) in &s.route_tables {
        for r in &t.routes {
            p.sample(
                name,
                &[("table", table), ("route", &r.name)],
                r.stats.sum(|c| c.rate_limited.get()),
            );
        }
    }
    let name = "outrigger_route_faults_total";
    p.family(
        name,
        "counter",
        "Faults injected by the route's fault table (routes with one only): requests aborted, requests delayed.",
    );
    let faulty = || {
        s.route_tables.iter().flat_map(|(table, t)| {
            t.routes
                .iter()
                .filter(|r| r.fault.is_some())
                .map(move |r| (table, r))
        })
    };
    for (table, r) in faulty() {
        for (fault, n) in [
            ("abort", r.stats.sum(|c| c.faults_aborted.get())),
            ("delay", r.stats.sum(|c| c.faults_delayed.get())),
        ] {
            p.sample(
                name,
                &[("table", table), ("route", &r.name), ("fault", fault)],
                n,
            );
        }
    }
    let name = "outrigger_route_fault_delays_skipped_total";
    p.family(
        name,
        "counter",
        "Delays not injected because fault.max_active delayed requests were already held.",
    );
    for (table, r) in faulty() {
        p.sample(
            name,
            &[("table", table), ("route", &r.name)],
            r.stats.sum(|c| c.faults_delay_overflow.get()),
        );
    }
    let name = "outrigger_route_mirrors_total";
    p.family(
        name,
        "counter",
        "Mirrored copies by result (routes with mirrors only): sent (answered), failed, dropped (max_active), skipped (body over mirror_body_limit).",
    );
    for (table, t) in &s.route_tables {
        for r in t.routes.iter().filter(|r| !r.mirrors.is_empty()) {
            for (result, n) in [
                ("sent", r.stats.sum(|c| c.mirrors_sent.get())),
                ("failed", r.stats.sum(|c| c.mirrors_failed.get())),
                ("dropped", r.stats.sum(|c| c.mirrors_dropped.get())),
                ("skipped", r.stats.sum(|c| c.mirrors_skipped.get())),
            ] {
                p.sample(
                    name,
                    &[("table", table), ("route", &r.name), ("result", result)],
                    n,
                );
            }
        }
    }
    let name = "outrigger_route_request_duration_seconds";
    p.family(
        name,
        "histogram",
        "From a request head's arrival to the response's last byte, by route.",
    );
    for (table, t) in &s.route_tables {
        for r in &t.routes {
            let m = merge(&r.stats, |c| &c.duration);
            p.histogram_samples(name, &[("table", table), ("route", &r.name)], &m);
        }
    }
}
