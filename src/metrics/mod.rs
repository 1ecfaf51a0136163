//! Per-worker metrics. Every cell has exactly one writer (its worker
//! thread), so an increment is a relaxed load and store: no read-modify-write,
//! no lock, no cache line shared between workers (each worker's cells are
//! padded to their own lines). Readers (the admin thread, tests) load them
//! relaxed and sum over workers.
//!
//! The cells hang off the compiled config: each listener, route, cluster and
//! endpoint of a [`Snapshot`](crate::snapshot::Snapshot) carries an `Arc` of its
//! per-worker cells, and a reload hands the same `Arc` to the object of the
//! same name in the new snapshot ([`crate::snapshot::Snapshot::adopt_stats`]),
//! so counters survive reloads and the data path never looks a name up.

pub mod cell;
mod export;
pub mod histogram;
mod json;

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;

pub use cell::{Counter, Padded, PerWorker};
pub use export::{prometheus, ExportSource, ReloadStats};
pub use histogram::{Histogram, Merged};
pub use json::stats_json;

/// Status classes used as label values.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Responses counted by status class.
#[derive(Debug, Default)]
pub struct ByClass(pub [Counter; 5]);

impl ByClass {
    /// Count one response with `status` (100..=599; others count as 5xx).
    #[inline]
    pub fn inc(&self, status: u16) {
        let i = usize::from(status / 100).saturating_sub(1).min(4);
        self.0[i].inc();
    }

    /// All classes together.
    pub fn total(&self) -> u64 {
        self.0.iter().map(Counter::get).sum()
    }
}

/// Counters of one listener on one worker.
#[derive(Debug, Default)]
pub struct ListenerCells {
    /// Connections accepted and served.
    pub accepted: Counter,
    /// Connections open now (gauge).
    pub active: Counter,
    /// Connections closed at once because `max_connections` was reached.
    pub rejected: Counter,
    /// Connections closed at once because the proxy was overloaded
    /// (`runtime.max_heap_bytes`).
    pub overload_rejected: Counter,
    /// Accept calls that failed (EMFILE and friends).
    pub accept_errors: Counter,
    /// tcp: upstream connect attempts that failed or timed out.
    pub upstream_connect_failures: Counter,
    /// tcp: connections closed because no endpoint could be reached.
    pub no_upstream: Counter,
    /// Connections closed by `idle_timeout`.
    pub idle_timeouts: Counter,
    /// Connections closed at once by `rate_limit.connections_per_second`.
    pub rate_limited: Counter,
    /// auto: connections by detected protocol (`sidecar::detect::Detected`)
    /// and the time detection took.
    pub detected: [Counter; 6],
    pub detect_duration: Histogram,
    /// TLS listeners: plaintext connections closed (`tls.plaintext =
    /// "refuse"`) and served (`"permit"`).
    pub plaintext_refused: Counter,
    pub plaintext_accepted: Counter,
    /// HTTP/2: streams reset by the client while being served, and
    /// connections closed for too many of them.
    pub http2_client_resets: Counter,
    pub http2_reset_floods: Counter,
    /// tcp: relay directions that moved bytes by splice(2) (a relay parked
    /// and resumed counts again), and those bytes.
    pub spliced_directions: Counter,
    pub spliced_bytes: Counter,
    /// TLS handshakes completed, and failed by `tls::HandshakeFailure`.
    pub tls_handshakes: Counter,
    pub tls_handshake_failures: [Counter; 9],
    /// Bytes received from downstream clients.
    pub bytes_in: Counter,
    /// Bytes sent to downstream clients.
    pub bytes_out: Counter,
    /// http: responses sent, by status class (the proxy's own included).
    pub requests: ByClass,
    /// http: requests no route matched (404).
    pub no_route: Counter,
    /// http: requests by protocol (HTTP/1.0, HTTP/1.1, HTTP/2).
    pub http_requests_by_protocol: [Counter; 3],
    /// http: HTTP/2 connections, and the streams (requests) opened on them.
    pub http2_connections: Counter,
    pub http2_streams: Counter,
    /// http: from a request head's arrival to the response's last byte,
    /// every request (routed or not).
    pub duration: Histogram,
}

/// Counters of one route on one worker.
#[derive(Debug, Default)]
pub struct RouteCells {
    pub requests: ByClass,
    /// Requests refused by the route's rate limit (429).
    pub rate_limited: Counter,
    /// Injected faults: requests aborted, requests delayed, delays not
    /// injected because `fault.max_active` were already held.
    pub faults_aborted: Counter,
    pub faults_delayed: Counter,
    pub faults_delay_overflow: Counter,
    /// Delayed requests held now (a gauge, for `max_active`).
    pub faults_active: Counter,
    /// Mirrored copies: sent (the mirror answered), failed (no answer:
    /// connect, I/O or time), dropped (`max_active` in flight), skipped
    /// (a body over `mirror_body_limit`, or one that cannot be buffered).
    pub mirrors_sent: Counter,
    pub mirrors_failed: Counter,
    pub mirrors_dropped: Counter,
    pub mirrors_skipped: Counter,
    /// Mirrored copies in flight now (a gauge, for `max_active`).
    pub mirrors_active: Counter,
    /// From the request head's arrival to the response's last byte.
    pub duration: Histogram,
}

/// Counters of one cluster on one worker.
#[derive(Debug, Default)]
pub struct ClusterCells {
    /// Requests (http) or connections (tcp) sent to an endpoint.
    pub requests: Counter,
    /// http: upstream responses by status class.
    pub responses: ByClass,
    /// gRPC calls by the `grpc-status` they ended with (0 to 16).
    pub grpc_responses: [Counter; 17],
    /// Connect attempts that failed or timed out.
    pub connect_failures: Counter,
    /// New upstream connections opened (pooled ones are reused, not counted).
    pub connections_opened: Counter,
    /// http: exchanges that hit the route timeout or upstream_read_timeout.
    pub timeouts: Counter,
    /// Requests or connections in flight now (gauge).
    pub active: Counter,
    /// http: from sending the request to the response's last byte.
    pub duration: Histogram,
    /// http: new upstream connections, connect (and TLS handshake) time.
    pub connect_duration: Histogram,
    /// http: from sending the request to the response head.
    pub first_byte_duration: Histogram,
    /// http: retries sent, refused by the retry budget, and requests that
    /// succeeded after at least one retry.
    pub retries: Counter,
    pub retries_budget_refused: Counter,
    pub retries_succeeded: Counter,
    /// Requests (or tcp connections) refused by a circuit-breaker limit,
    /// by `resilience::Overflow::index`.
    pub overflow: [Counter; 4],
    /// Circuit-breaker gauges: requests in flight, requests waiting for a
    /// new connection, retries in flight.
    pub breaker_requests: Counter,
    pub breaker_pending: Counter,
    pub breaker_retries: Counter,
    /// This worker's retry budget window.
    pub budget: crate::resilience::BudgetCells,
}

/// State of one endpoint of a cluster on one worker.
#[derive(Debug, Default)]
pub struct EndpointCells {
    /// Requests or connections in flight now (gauge).
    pub in_flight: Counter,
    /// Idle pooled connections now (gauge).
    pub pooled: Counter,
    pub requests: Counter,
    /// Connect failures, timeouts, resets and malformed responses.
    pub errors: Counter,
    /// The most recent error and when it happened.
    pub last_error: ArcSwapOption<EndpointError>,
    /// Outlier detection streaks seen by this worker.
    pub consecutive_5xx: Counter,
    pub consecutive_gateway: Counter,
    pub consecutive_connect: Counter,
}

/// An endpoint's most recent error.
#[derive(Debug)]
pub struct EndpointError {
    pub at: SystemTime,
    pub message: String,
}

impl EndpointCells {
    /// Count an error and keep its message (an error path; allocates).
    pub fn error(&self, message: impl Into<String>) {
        self.errors.inc();
        self.last_error.store(Some(Arc::new(EndpointError {
            at: SystemTime::now(),
            message: message.into(),
        })));
    }
}

/// Counts one request (http) or connection (tcp) sent to an endpoint:
/// requests on the cluster and the endpoint now, in-flight gauges until
/// the guard drops, however the exchange ends.
#[derive(Debug)]
pub struct Active<'a> {
    cluster: &'a ClusterCells,
    endpoint: &'a EndpointCells,
}

impl<'a> Active<'a> {
    pub fn new(cluster: &'a ClusterCells, endpoint: &'a EndpointCells) -> Self {
        Active::open(cluster, endpoint);
        Active { cluster, endpoint }
    }

    /// What `new` counts, for an owner that cannot hold the borrowing guard
    /// (a relay that outlives its task); it must call [`Active::close`].
    pub fn open(cluster: &ClusterCells, endpoint: &EndpointCells) {
        cluster.requests.inc();
        cluster.active.inc();
        endpoint.requests.inc();
        endpoint.in_flight.inc();
    }

    /// What dropping the guard undoes.
    pub fn close(cluster: &ClusterCells, endpoint: &EndpointCells) {
        cluster.active.dec();
        endpoint.in_flight.dec();
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        Active::close(self.cluster, self.endpoint);
    }
}

/// Counters of one worker as a whole.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerCells {
    /// Access log lines written into this worker's buffer.
    pub access_log_lines: Counter,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: Counter,
    /// Open downstream connections, all listeners (gauge).
    pub active: Counter,
    /// How late the last periodic tick fired, in microseconds (gauge).
    pub lag_last_us: Counter,
    /// Relay buffers rented by connections now (gauge): idle connections
    /// hold none.
    pub buffers_rented: Counter,
    /// Idle keep-alive connections parked between requests now (gauge).
    pub parked: Counter,
    /// Sampled spans dropped because the export queue was full.
    pub spans_dropped: Counter,
    /// Event-loop lag samples: how late each periodic tick fired.
    pub lag: Histogram,
}

pub type ListenerStats = PerWorker<ListenerCells>;
pub type RouteStats = PerWorker<RouteCells>;
pub type ClusterStats = PerWorker<ClusterCells>;
pub type EndpointStats = PerWorker<EndpointCells>;

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
    pub requests: u64,
}

impl ListenerTotals {
    /// Sum a listener's cells over workers.
    pub fn of(stats: &ListenerStats) -> Self {
        ListenerTotals {
            accepted: stats.sum(|c| c.accepted.get()),
            active: stats.sum(|c| c.active.get()),
            rejected: stats.sum(|c| c.rejected.get()),
            accept_errors: stats.sum(|c| c.accept_errors.get()),
            upstream_connect_failures: stats.sum(|c| c.upstream_connect_failures.get()),
            no_upstream: stats.sum(|c| c.no_upstream.get()),
            idle_timeouts: stats.sum(|c| c.idle_timeouts.get()),
            bytes_in: stats.sum(|c| c.bytes_in.get()),
            bytes_out: stats.sum(|c| c.bytes_out.get()),
            requests: stats.sum(|c| c.requests.total()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_worker_cells_do_not_share_lines() {
        assert!(std::mem::align_of::<Padded<ListenerCells>>() >= 128);
        let s = ListenerStats::new(3);
        s.worker(0).accepted.inc();
        s.worker(2).accepted.add(5);
        // An out-of-range index is clamped, not a panic.
        s.worker(9).accepted.inc();
        assert_eq!(s.sum(|c| c.accepted.get()), 7);
    }

    #[test]
    fn status_classes() {
        let b = ByClass::default();
        for s in [100, 204, 301, 404, 503, 999, 0] {
            b.inc(s);
        }
        let got: Vec<u64> = b.0.iter().map(Counter::get).collect();
        assert_eq!(got, vec![2, 1, 1, 1, 2]);
    }
}
