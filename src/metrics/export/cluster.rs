//! The cluster families of the Prometheus exposition: upstream traffic,
//! retries, circuit breakers, gRPC outcomes, endpoint health and
//! discovery.

use super::{class_samples, merge, Prom};
use crate::snapshot::Snapshot;
use crate::upstream::locality;

pub(super) fn cluster_metrics(p: &mut Prom, s: &Snapshot) {
    type Get = fn(&crate::metrics::ClusterCells) -> u64;
    let simple: [(&str, &str, &str, Get); 8] = [
        (
            "outrigger_cluster_retries_total",
            "counter",
            "HTTP retries sent (tries after the first).",
            |c| c.retries.get(),
        ),
        (
            "outrigger_cluster_retries_budget_refused_total",
            "counter",
            "HTTP retries wanted but refused by the cluster's retry budget.",
            |c| c.retries_budget_refused.get(),
        ),
        (
            "outrigger_cluster_retries_succeeded_total",
            "counter",
            "HTTP requests answered by the upstream after at least one retry.",
            |c| c.retries_succeeded.get(),
        ),
        (
            "outrigger_cluster_upstream_requests_total",
            "counter",
            "Requests (http) or connections (tcp) sent to the cluster's endpoints.",
            |c| c.requests.get(),
        ),
        (
            "outrigger_cluster_upstream_connect_failures_total",
            "counter",
            "Upstream connect attempts that failed or timed out.",
            |c| c.connect_failures.get(),
        ),
        (
            "outrigger_cluster_upstream_connections_opened_total",
            "counter",
            "New upstream connections (pooled ones reused are not counted).",
            |c| c.connections_opened.get(),
        ),
        (
            "outrigger_cluster_upstream_timeouts_total",
            "counter",
            "HTTP exchanges that hit the route timeout or upstream_read_timeout.",
            |c| c.timeouts.get(),
        ),
        (
            "outrigger_cluster_upstream_active",
            "gauge",
            "Upstream requests or connections in flight now.",
            |c| c.active.get(),
        ),
    ];
    for (name, kind, help, get) in simple {
        p.family(name, kind, help);
        for (cname, c) in &s.clusters {
            p.sample(name, &[("cluster", cname)], c.stats.sum(get));
        }
    }
    let name = "outrigger_cluster_overflow_total";
    p.family(
        name,
        "counter",
        "Requests or connections refused (503 overflow, or a close) by a circuit-breaker limit.",
    );
    for (cname, c) in &s.clusters {
        for o in crate::resilience::Overflow::ALL {
            p.sample(
                name,
                &[("cluster", cname), ("limit", o.key())],
                c.stats.sum(|w| w.overflow[o.index()].get()),
            );
        }
    }
    let name = "outrigger_cluster_grpc_responses_total";
    p.family(
        name,
        "counter",
        "gRPC calls by the grpc-status they ended with (codes seen so far).",
    );
    for (cname, c) in &s.clusters {
        for code in 0..17u8 {
            let n = c.stats.sum(|w| w.grpc_responses[usize::from(code)].get());
            if n > 0 {
                p.sample(
                    name,
                    &[("cluster", cname), ("grpc_status", crate::grpc::name(code))],
                    n,
                );
            }
        }
    }
    endpoint_health_metrics(p, s);
    {
        use std::sync::atomic::Ordering::Relaxed;
        let dynamic =
            |c: &crate::upstream::Cluster| !matches!(c.source, crate::discovery::Source::Static);
        let name = "outrigger_cluster_discovery_updates_total";
        p.family(
            name,
            "counter",
            "dns and file clusters: endpoint sets applied.",
        );
        for (cname, c) in s.clusters.iter().filter(|(_, c)| dynamic(c)) {
            p.sample(name, &[("cluster", cname)], c.status.updates.load(Relaxed));
        }
        let name = "outrigger_cluster_discovery_failures_total";
        p.family(
            name,
            "counter",
            "dns and file clusters: failed lookups or unreadable files (the last set kept).",
        );
        for (cname, c) in s.clusters.iter().filter(|(_, c)| dynamic(c)) {
            p.sample(name, &[("cluster", cname)], c.status.failures.load(Relaxed));
        }
    }
    let name = "outrigger_cluster_upstream_responses_total";
    p.family(name, "counter", "Upstream HTTP responses by status class.");
    for (cname, c) in &s.clusters {
        class_samples(p, name, &[("cluster", cname)], &c.stats, |c| &c.responses);
    }
    let name = "outrigger_cluster_upstream_request_duration_seconds";
    p.family(
        name,
        "histogram",
        "From sending a request upstream to the response's last byte.",
    );
    for (cname, c) in &s.clusters {
        let m = merge(&c.stats, |c| &c.duration);
        p.histogram_samples(name, &[("cluster", cname)], &m);
    }
    let name = "outrigger_cluster_upstream_connect_duration_seconds";
    p.family(
        name,
        "histogram",
        "New upstream connections: connect time, TLS handshake included.",
    );
    for (cname, c) in &s.clusters {
        let m = merge(&c.stats, |c| &c.connect_duration);
        p.histogram_samples(name, &[("cluster", cname)], &m);
    }
    let name = "outrigger_cluster_upstream_first_byte_duration_seconds";
    p.family(
        name,
        "histogram",
        "From sending a request upstream to the response head.",
    );
    for (cname, c) in &s.clusters {
        let m = merge(&c.stats, |c| &c.first_byte_duration);
        p.histogram_samples(name, &[("cluster", cname)], &m);
    }
}

/// Outlier and health-check figures per cluster (per-endpoint detail is in
/// the admin API's `/clusters`: label values stay config names).
fn endpoint_health_metrics(p: &mut Prom, s: &Snapshot) {
    use std::sync::atomic::Ordering::Relaxed;
    let now = crate::resilience::now_ms();
    let name = "outrigger_cluster_ejections_total";
    p.family(
        name,
        "counter",
        "Outlier detection ejections of the cluster's endpoints.",
    );
    for (cname, c) in s.clusters.iter().filter(|(_, c)| c.outlier.is_some()) {
        let n = c
            .endpoints
            .iter()
            .map(|e| e.health.ejections.load(Relaxed))
            .sum();
        p.sample(name, &[("cluster", cname)], n);
    }
    let name = "outrigger_cluster_health_checks_total";
    p.family(
        name,
        "counter",
        "Active health check results of the cluster's endpoints.",
    );
    for (cname, c) in s.clusters.iter().filter(|(_, c)| c.health_check.is_some()) {
        let passed = c
            .endpoints
            .iter()
            .map(|e| e.health.checks_passed.load(Relaxed))
            .sum();
        let failed = c
            .endpoints
            .iter()
            .map(|e| e.health.checks_failed.load(Relaxed))
            .sum();
        p.sample(name, &[("cluster", cname), ("result", "passed")], passed);
        p.sample(name, &[("cluster", cname), ("result", "failed")], failed);
    }
    let name = "outrigger_cluster_endpoints_usable";
    p.family(
        name,
        "gauge",
        "Endpoints taking traffic now (not ejected, not failing health checks).",
    );
    for (cname, c) in &s.clusters {
        let n = c.endpoints.iter().filter(|e| e.health.usable(now)).count();
        p.sample(name, &[("cluster", cname)], n as u64);
    }
    let name = "outrigger_cluster_locality_traffic_ratio";
    p.family(
        name,
        "gauge",
        "Share of the cluster's requests each locality and priority gets now (failover by health; 1 = all).",
    );
    for (cname, c) in s.clusters.iter().filter(|(_, c)| !c.original_destination) {
        for sh in c.shares(now) {
            let priority = sh.priority.to_string();
            let labels = [
                ("cluster", cname.as_str()),
                ("region", sh.locality.region.as_str()),
                ("zone", sh.locality.zone.as_str()),
                ("priority", priority.as_str()),
            ];
            p.sample_f(name, &labels, sh.traffic as f64 / locality::FULL as f64);
        }
    }
}
