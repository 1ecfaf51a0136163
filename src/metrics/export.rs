//! Gathering the per-worker cells into what the admin API serves: the
//! Prometheus text exposition format (`/metrics`); JSON (`/stats`) is in
//! `json`.
//! Readers only load relaxed atomics; no worker is ever asked or stopped.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use super::histogram::{Merged, LE_BUCKETS_US};
use super::{ByClass, Histogram, PerWorker, WorkerCells, STATUS_CLASSES};
use crate::snapshot::Snapshot;
use crate::worker::WorkerInfo;

mod cluster;
mod route;
mod xds;
use cluster::cluster_metrics;
use route::route_metrics;

/// Control-plane counters: reloads and their duration. The control thread
/// is their only writer.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub succeeded: super::Counter,
    pub failed: super::Counter,
    /// From the trigger (signal, file change, POST /reload) to publish.
    pub duration: Histogram,
}

/// Everything an export reads.
#[derive(Debug)]
pub struct ExportSource<'a> {
    pub snapshot: &'a Snapshot,
    pub workers: &'a [WorkerInfo],
    pub worker_stats: &'a [Arc<WorkerCells>],
    pub reloads: &'a ReloadStats,
    pub started_at: SystemTime,
    pub export: Option<&'a crate::trace::otlp::ExportStats>,
    pub xds: Option<&'a crate::xds::XdsStatus>,
}

/// Prometheus text exposition format, version 0.0.4.
pub fn prometheus(src: &ExportSource<'_>) -> String {
    let mut p = Prom::default();
    let s = src.snapshot;
    if let Some(e) = src.export {
        use std::sync::atomic::Ordering::Relaxed;
        for (name, help, v) in [
            ("outrigger_trace_spans_exported_total", "Spans the OTLP collector accepted.", e.exported.load(Relaxed)),
            ("outrigger_trace_spans_export_failed_total", "Spans in batches the collector refused or could not be reached for (after retries).", e.failed.load(Relaxed)),
            ("outrigger_trace_export_batches_total", "OTLP export requests made.", e.batches.load(Relaxed)),
        ] {
            p.family(name, "counter", help);
            p.sample(name, &[], v);
        }
    }
    p.family(
        "outrigger_build_info",
        "gauge",
        "Build information; always 1.",
    );
    p.sample(
        "outrigger_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    p.family(
        "outrigger_config_generation",
        "gauge",
        "Generation of the running config: 1 at start, +1 per successful reload.",
    );
    p.sample("outrigger_config_generation", &[], s.generation);
    p.family(
        "outrigger_overloaded",
        "gauge",
        "1 while the heap is over runtime.max_heap_bytes and new work is shed.",
    );
    p.sample(
        "outrigger_overloaded",
        &[],
        u64::from(crate::worker::overload::overloaded()),
    );
    p.family(
        "outrigger_heap_in_use_bytes",
        "gauge",
        "Heap bytes in use (glibc mallinfo2, all arenas) at the last sample.",
    );
    p.sample(
        "outrigger_heap_in_use_bytes",
        &[],
        crate::worker::overload::heap_in_use(),
    );
    p.family(
        "outrigger_config_reloads_total",
        "counter",
        "Config reloads by result.",
    );
    p.sample(
        "outrigger_config_reloads_total",
        &[("result", "success")],
        src.reloads.succeeded.get(),
    );
    p.sample(
        "outrigger_config_reloads_total",
        &[("result", "failure")],
        src.reloads.failed.get(),
    );
    let mut m = Merged::default();
    src.reloads.duration.merge_into(&mut m);
    p.histogram(
        "outrigger_config_reload_duration_seconds",
        "Time from a reload trigger to the new config's publication.",
        &[],
        &m,
    );

    listener_metrics(&mut p, s);
    route_metrics(&mut p, s);
    cluster_metrics(&mut p, s);
    if let Some(x) = src.xds {
        xds::xds_metrics(&mut p, s, x);
    }
    worker_metrics(&mut p, src);
    p.out
}

fn listener_metrics(p: &mut Prom, s: &Snapshot) {
    type Get = fn(&super::ListenerCells) -> u64;
    let simple: [(&str, &str, &str, Get); 18] = [
        (
            "outrigger_listener_connections_total",
            "counter",
            "Downstream connections accepted.",
            |c| c.accepted.get(),
        ),
        (
            "outrigger_listener_connections_active",
            "gauge",
            "Downstream connections open now.",
            |c| c.active.get(),
        ),
        (
            "outrigger_listener_connections_rejected_total",
            "counter",
            "Connections closed at once because max_connections was reached.",
            |c| c.rejected.get(),
        ),
        (
            "outrigger_listener_connections_overload_rejected_total",
            "counter",
            "Connections closed at once because the proxy was overloaded (runtime.max_heap_bytes).",
            |c| c.overload_rejected.get(),
        ),
        (
            "outrigger_listener_accept_errors_total",
            "counter",
            "accept() calls that failed (EMFILE and friends).",
            |c| c.accept_errors.get(),
        ),
        (
            "outrigger_listener_connections_rate_limited_total",
            "counter",
            "Connections closed at once by rate_limit.connections_per_second.",
            |c| c.rate_limited.get(),
        ),
        (
            "outrigger_listener_idle_timeouts_total",
            "counter",
            "Connections closed by idle_timeout.",
            |c| c.idle_timeouts.get(),
        ),
        (
            "outrigger_listener_bytes_received_total",
            "counter",
            "Bytes received from downstream clients.",
            |c| c.bytes_in.get(),
        ),
        (
            "outrigger_listener_bytes_sent_total",
            "counter",
            "Bytes sent to downstream clients.",
            |c| c.bytes_out.get(),
        ),
        (
            "outrigger_listener_no_route_total",
            "counter",
            "HTTP requests no route matched (answered 404).",
            |c| c.no_route.get(),
        ),
        (
            "outrigger_listener_http2_connections_total",
            "counter",
            "HTTP/2 connections (prior knowledge or ALPN h2).",
            |c| c.http2_connections.get(),
        ),
        (
            "outrigger_listener_http2_streams_total",
            "counter",
            "HTTP/2 streams (requests) accepted.",
            |c| c.http2_streams.get(),
        ),
        (
            "outrigger_listener_plaintext_refused_total",
            "counter",
            "Connections without a TLS handshake closed on a TLS listener (tls.plaintext = \"refuse\").",
            |c| c.plaintext_refused.get(),
        ),
        (
            "outrigger_listener_plaintext_accepted_total",
            "counter",
            "Connections served in plaintext on a TLS listener (tls.plaintext = \"permit\").",
            |c| c.plaintext_accepted.get(),
        ),
        (
            "outrigger_listener_http2_client_resets_total",
            "counter",
            "HTTP/2 streams the client reset while the proxy was serving them (their upstream work cancelled).",
            |c| c.http2_client_resets.get(),
        ),
        (
            "outrigger_listener_http2_reset_floods_total",
            "counter",
            "HTTP/2 connections closed with GOAWAY ENHANCE_YOUR_CALM for too many client resets.",
            |c| c.http2_reset_floods.get(),
        ),
        (
            "outrigger_listener_spliced_directions_total",
            "counter",
            "tcp: relay directions that moved bytes by splice(2) (counted again after a park).",
            |c| c.spliced_directions.get(),
        ),
        (
            "outrigger_listener_spliced_bytes_total",
            "counter",
            "tcp: bytes relayed by splice(2).",
            |c| c.spliced_bytes.get(),
        ),
    ];
    for (name, kind, help, get) in simple {
        p.family(name, kind, help);
        // HTTP-only families list only http listeners.
        let http_only = name == "outrigger_listener_no_route_total"
            || name.starts_with("outrigger_listener_http2_");
        for l in &s.listeners {
            if http_only && l.protocol.routes().is_none() {
                continue;
            }
            p.sample(name, &[("listener", &l.name)], l.stats.sum(get));
        }
    }
    let name = "outrigger_listener_requests_by_protocol_total";
    p.family(
        name,
        "counter",
        "HTTP requests by the protocol the client spoke.",
    );
    for l in s.listeners.iter().filter(|l| l.protocol.routes().is_some()) {
        for (i, proto) in ["HTTP/1.0", "HTTP/1.1", "HTTP/2"].iter().enumerate() {
            p.sample(
                name,
                &[("listener", &l.name), ("protocol", proto)],
                l.stats.sum(|c| c.http_requests_by_protocol[i].get()),
            );
        }
    }
    let name = "outrigger_listener_tls_handshakes_total";
    p.family(
        name,
        "counter",
        "TLS handshakes completed on listeners with tls.",
    );
    for l in s.listeners.iter().filter(|l| l.tls.is_some()) {
        p.sample(
            name,
            &[("listener", &l.name)],
            l.stats.sum(|c| c.tls_handshakes.get()),
        );
    }
    let name = "outrigger_listener_tls_handshake_failures_total";
    p.family(name, "counter", "TLS handshakes that failed, by reason.");
    for l in s.listeners.iter().filter(|l| l.tls.is_some()) {
        for r in crate::tls::HandshakeFailure::ALL {
            p.sample(
                name,
                &[("listener", &l.name), ("reason", r.label())],
                l.stats.sum(|c| c.tls_handshake_failures[r.index()].get()),
            );
        }
    }
    let name = "outrigger_listener_detected_total";
    p.family(
        name,
        "counter",
        "auto listeners: connections by detected protocol.",
    );
    for l in &s.listeners {
        if matches!(l.protocol, crate::snapshot::ListenerProtocol::Auto { .. }) {
            for d in crate::sidecar::detect::Detected::ALL {
                p.sample(
                    name,
                    &[("listener", &l.name), ("protocol", d.label())],
                    l.stats.sum(|c| c.detected[d.index()].get()),
                );
            }
        }
    }
    let name = "outrigger_listener_detect_duration_seconds";
    p.family(
        name,
        "histogram",
        "auto listeners: time to detect the protocol (or to give up).",
    );
    for l in &s.listeners {
        if matches!(l.protocol, crate::snapshot::ListenerProtocol::Auto { .. }) {
            let m = merge(&l.stats, |c| &c.detect_duration);
            p.histogram_samples(name, &[("listener", &l.name)], &m);
        }
    }
    let name = "outrigger_listener_requests_total";
    p.family(
        name,
        "counter",
        "HTTP responses sent, by status class (the proxy's own included).",
    );
    for l in &s.listeners {
        class_samples(p, name, &[("listener", &l.name)], &l.stats, |c| &c.requests);
    }
}

fn worker_metrics(p: &mut Prom, src: &ExportSource<'_>) {
    p.family(
        "outrigger_worker_info",
        "gauge",
        "One series per worker: its core (\"none\" when unpinned) and I/O driver; always 1.",
    );
    for w in src.workers {
        let core = w.core.map_or_else(|| "none".to_string(), |c| c.to_string());
        let index = w.index.to_string();
        let driver = w.driver.to_string();
        p.sample(
            "outrigger_worker_info",
            &[("worker", &index), ("core", &core), ("driver", &driver)],
            1,
        );
    }
    type Get = fn(&WorkerCells) -> u64;
    let simple: [(&str, &str, &str, Get); 6] = [
        (
            "outrigger_worker_connections_active",
            "gauge",
            "Downstream connections open on the worker, all listeners.",
            |c| c.active.get(),
        ),
        (
            "outrigger_worker_relay_buffers_rented",
            "gauge",
            "Relay buffers held by connections moving bytes.",
            |c| c.buffers_rented.get(),
        ),
        (
            "outrigger_worker_connections_parked",
            "gauge",
            "Idle keep-alive HTTP connections parked between requests (no task, no buffer).",
            |c| c.parked.get(),
        ),
        (
            "outrigger_trace_spans_dropped_total",
            "counter",
            "Sampled spans dropped because the export queue was full.",
            |c| c.spans_dropped.get(),
        ),
        (
            "outrigger_access_log_lines_total",
            "counter",
            "Access log lines produced by the worker.",
            |c| c.access_log_lines.get(),
        ),
        (
            "outrigger_access_log_dropped_lines_total",
            "counter",
            "Access log lines dropped because the log writer fell behind.",
            |c| c.access_log_dropped.get(),
        ),
    ];
    for (name, kind, help, get) in simple {
        p.family(name, kind, help);
        for (i, c) in src.worker_stats.iter().enumerate() {
            p.sample(name, &[("worker", &i.to_string())], get(c));
        }
    }
    let name = "outrigger_worker_event_loop_lag_last_seconds";
    p.family(
        name,
        "gauge",
        "How late the worker's last 100 ms housekeeping tick fired.",
    );
    for (i, c) in src.worker_stats.iter().enumerate() {
        p.sample_f(
            name,
            &[("worker", &i.to_string())],
            c.lag_last_us.get() as f64 / 1e6,
        );
    }
    let name = "outrigger_worker_event_loop_lag_seconds";
    p.family(
        name,
        "histogram",
        "How late each 100 ms housekeeping tick fired: a busy or blocked worker shows here.",
    );
    for (i, c) in src.worker_stats.iter().enumerate() {
        let mut m = Merged::default();
        c.lag.merge_into(&mut m);
        p.histogram_samples(name, &[("worker", &i.to_string())], &m);
    }
}

fn class_samples<T>(
    p: &mut Prom,
    name: &str,
    labels: &[(&str, &str)],
    stats: &PerWorker<T>,
    get: impl Fn(&T) -> &ByClass,
) {
    for (i, class) in STATUS_CLASSES.iter().enumerate() {
        let mut l = labels.to_vec();
        l.push(("class", class));
        p.sample(name, &l, stats.sum(|c| get(c).0[i].get()));
    }
}

fn merge<T>(stats: &PerWorker<T>, get: impl Fn(&T) -> &Histogram) -> Merged {
    let mut m = Merged::default();
    for c in stats.iter() {
        get(c).merge_into(&mut m);
    }
    m
}

/// A Prometheus text writer.
#[derive(Default)]
struct Prom {
    out: String,
}

impl Prom {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn labels(&mut self, labels: &[(&str, &str)]) {
        if labels.is_empty() {
            return;
        }
        self.out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{k}=\"");
            for c in v.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        self.out.push('}');
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: u64) {
        self.out.push_str(name);
        self.labels(labels);
        let _ = writeln!(self.out, " {v}");
    }

    fn sample_f(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.out.push_str(name);
        self.labels(labels);
        let _ = writeln!(self.out, " {v}");
    }

    fn histogram(&mut self, name: &str, help: &str, labels: &[(&str, &str)], m: &Merged) {
        self.family(name, "histogram", help);
        self.histogram_samples(name, labels, m);
    }

    fn histogram_samples(&mut self, name: &str, labels: &[(&str, &str)], m: &Merged) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, le_us) in LE_BUCKETS_US.iter().enumerate() {
            cumulative += m.le[i];
            let le = format!("{}", *le_us as f64 / 1e6);
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, cumulative);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&bucket, &l, m.count);
        self.sample_f(&format!("{name}_sum"), labels, m.sum_us as f64 / 1e6);
        self.sample(&format!("{name}_count"), labels, m.count);
    }
}
