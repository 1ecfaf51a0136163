//! Upstream clusters: their endpoints (compiled, immutable) and the
//! per-worker balancer state that picks among them.

pub mod balance;
mod balancers;
pub mod locality;
mod probe;
pub mod prober;
pub mod source;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{ClusterStats, EndpointStats};
use crate::resilience::health::Outcome;
use crate::resilience::{
    BreakerLimits, EndpointHealth, HealthCheck, OutlierDetection, RetryBudget,
};

pub use balance::{Balance, HashOn, Plan};
pub use balancers::{AttemptOrder, Balancers, InFlight};
pub use locality::{Level, Locality, LocalityMode};

/// One endpoint as discovered or written: the address, the name it came
/// from, its weight, locality and priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub address: SocketAddr,
    pub written: String,
    pub weight: u32,
    pub locality: Locality,
    pub priority: u32,
}

impl Found {
    /// Weight 1 unless given; no locality; priority 0.
    pub fn new(address: SocketAddr, written: impl Into<String>, weight: u32) -> Found {
        Found {
            address,
            written: written.into(),
            weight,
            locality: Locality::default(),
            priority: 0,
        }
    }
}

/// A named group of interchangeable endpoints.
#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub balance: Balance,
    /// Weighted schedule, cumulative weights, hash ring or Maglev table.
    pub plan: Plan,
    /// `locality`: prefer endpoints near this proxy.
    pub locality: LocalityMode,
    /// This proxy's own locality (`[node]`), to sort endpoints by.
    pub node: Locality,
    /// Failover levels (priority, then nearness), in order; empty when
    /// every endpoint is in one level (then `plan` serves).
    pub levels: Vec<Level>,
    /// ring_hash and maglev: what the key is.
    pub hash_on: HashOn,
    pub connect_timeout: Duration,
    /// http: idle pooled connections per endpoint per worker.
    pub max_idle_connections: usize,
    /// ring_hash: most points on the ring.
    pub max_ring_size: u64,
    /// http: pooled connections idle longer than this are closed.
    pub pool_idle_timeout: Duration,
    /// Per-worker counters, carried across reloads by name.
    pub stats: Arc<ClusterStats>,
    /// `retry_budget.*`.
    pub retry_budget: RetryBudget,
    /// `circuit_breaker.*` (whole-proxy figures).
    pub breaker: BreakerLimits,
    /// `outlier_detection.*`, when the table is present.
    pub outlier: Option<OutlierDetection>,
    /// `health_check.*`, when the table is present.
    pub health_check: Option<HealthCheck>,
    /// `tls`: connections to the endpoints are TLS.
    pub tls: Option<Arc<crate::tls::ClusterTls>>,
    /// `protocol`: HTTP/1.1, HTTP/2, what ALPN picks, or what the client
    /// spoke.
    pub protocol: UpstreamProtocol,
    /// `discovery = "original_destination"`: no endpoints; each connection
    /// goes where the client originally sent it (transparent listeners).
    pub original_destination: bool,
    /// Where the endpoints come from (`dns`, `file`: they change at run time).
    pub source: source::Source,
    /// Discovery updates and errors, carried across snapshots by name.
    pub status: Arc<source::DiscoveryStatus>,
}

/// The HTTP version spoken to a cluster's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// Prior knowledge in cleartext, ALPN `h2` over TLS.
    Http2,
    /// ALPN (`h2`, then `http/1.1`) over TLS; HTTP/1.1 in cleartext.
    Auto,
    /// What the client spoke: HTTP/2 (prior knowledge) for a request that
    /// arrived over HTTP/2, HTTP/1.1 for one that arrived over HTTP/1.x;
    /// over TLS, ALPN offers both, as with `Auto`. The default for
    /// `original_destination` clusters (protocol preservation).
    Downstream,
}

impl UpstreamProtocol {
    /// The protocol for one request: `Downstream` resolved by the version
    /// the request arrived in.
    pub fn for_request(self, downstream_h2: bool, tls: bool) -> UpstreamProtocol {
        match self {
            UpstreamProtocol::Downstream if tls => UpstreamProtocol::Auto,
            UpstreamProtocol::Downstream if downstream_h2 => UpstreamProtocol::Http2,
            UpstreamProtocol::Downstream => UpstreamProtocol::Http1,
            p => p,
        }
    }
}

impl Cluster {
    /// The same cluster with other endpoints (a discovery update); the
    /// snapshot's `adopt_stats` carries the state of those that stay.
    pub fn with_endpoints(&self, found: &[Found], workers: usize) -> Cluster {
        let mut endpoints: Vec<Endpoint> =
            found.iter().map(|f| Endpoint::found(f, workers)).collect();
        let levels = locality::arrange(
            &mut endpoints,
            self.locality,
            &self.node,
            self.balance,
            self.max_ring_size,
        );
        let ids: Vec<(String, u32)> = endpoints
            .iter()
            .map(|e| (e.address.to_string(), e.weight))
            .collect();
        Cluster {
            name: self.name.clone(),
            plan: Plan::new(self.balance, &ids, self.max_ring_size),
            locality: self.locality,
            node: self.node.clone(),
            levels,
            endpoints,
            balance: self.balance,
            hash_on: self.hash_on.clone(),
            connect_timeout: self.connect_timeout,
            max_idle_connections: self.max_idle_connections,
            max_ring_size: self.max_ring_size,
            pool_idle_timeout: self.pool_idle_timeout,
            stats: self.stats.clone(),
            retry_budget: self.retry_budget,
            breaker: self.breaker,
            outlier: self.outlier,
            health_check: self.health_check.clone(),
            tls: self.tls.clone(),
            protocol: self.protocol,
            original_destination: self.original_destination,
            source: self.source.clone(),
            status: self.status.clone(),
        }
    }
}

/// Which endpoints a pick may choose from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Skip endpoints that are ejected or failing their health checks.
    Usable,
    /// Panic mode (`health_check.panic_threshold`): every endpoint.
    All,
    /// No endpoint may take traffic.
    None,
}

impl Cluster {
    /// Whether any endpoint can be skipped at all (no outlier detection
    /// and no health check: never, and no atomic is read).
    #[inline]
    fn guarded(&self) -> bool {
        self.outlier.is_some() || self.health_check.is_some()
    }

    /// The level one request goes to: level 0 while everything is usable
    /// (or nothing is watched), else drawn by [`Cluster::split`].
    fn pick_level(&self) -> usize {
        if !self.guarded() {
            return 0;
        }
        self.split(crate::resilience::now_ms())
            .pick(fastrand::u64(..locality::FULL))
    }

    /// The traffic share of each level now, from their health.
    pub fn split(&self, now_ms: u64) -> locality::Split {
        let mut healths = [0u64; locality::MAX_LEVELS];
        let n = self.levels.len().min(locality::MAX_LEVELS);
        for (h, l) in healths.iter_mut().zip(&self.levels) {
            let eps = &self.endpoints[l.start..l.end];
            let usable = if self.guarded() {
                eps.iter().filter(|e| e.health.usable(now_ms)).count()
            } else {
                eps.len()
            };
            *h = locality::health(usable, eps.len());
        }
        locality::Split::new(&healths[..n])
    }

    /// Which endpoints requests may go to now.
    pub fn availability(&self, now_ms: u64) -> Availability {
        if !self.guarded() || self.original_destination {
            return Availability::All;
        }
        let usable = self
            .endpoints
            .iter()
            .filter(|e| e.health.usable(now_ms))
            .count();
        let n = self.endpoints.len();
        let panic = self.health_check.as_ref().map_or(0, |h| h.panic_threshold) as usize;
        // Everything usable, or below the panic threshold: every endpoint.
        if usable == n || usable * 100 < panic * n {
            Availability::All
        } else if usable == 0 {
            Availability::None
        } else {
            Availability::Usable
        }
    }

    /// Feed one try's outcome to outlier detection: count it on this
    /// worker and eject the endpoint for the whole proxy when a streak
    /// reaches its threshold (and `max_ejection_percent` allows).
    pub fn record_outcome(&self, worker: usize, index: usize, outcome: Outcome) {
        let Some(od) = &self.outlier else { return };
        if self.original_destination {
            return;
        }
        let Some(ep) = self.endpoints.get(index) else {
            return;
        };
        let c = ep.stats.worker(worker);
        let tripped = match outcome {
            Outcome::Success => {
                c.consecutive_5xx.set(0);
                c.consecutive_gateway.set(0);
                c.consecutive_connect.set(0);
                return;
            }
            Outcome::ConnectFailure => {
                c.consecutive_connect.inc();
                c.consecutive_connect.get() >= u64::from(od.consecutive_connect_failures)
            }
            Outcome::Status(_) | Outcome::LocalFailure => {
                // A reset or a timeout counts as a gateway error (502/504).
                let gateway = matches!(outcome, Outcome::LocalFailure | Outcome::Status(502..=504));
                c.consecutive_connect.set(0);
                c.consecutive_5xx.inc();
                if gateway {
                    c.consecutive_gateway.inc();
                } else {
                    c.consecutive_gateway.set(0);
                }
                c.consecutive_5xx.get() >= u64::from(od.consecutive_5xx)
                    || c.consecutive_gateway.get() >= u64::from(od.consecutive_gateway_errors)
            }
        };
        if !tripped {
            return;
        }
        let now = crate::resilience::now_ms();
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| e.health.ejected(now))
            .count();
        let allowed = self.endpoints.len() * od.max_ejection_percent as usize / 100;
        if ejected + 1 > allowed {
            return;
        }
        if ep.health.eject(od.base_ejection_time, now) {
            c.consecutive_5xx.set(0);
            c.consecutive_gateway.set(0);
            c.consecutive_connect.set(0);
            tracing::warn!(
                cluster = %self.name,
                endpoint = %ep.address,
                ?outcome,
                for_ms = ep.health.ejection_left_ms(now),
                "outlier ejected"
            );
        }
    }
}

/// One upstream address.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// The `host:port` as written in the config.
    pub written: String,
    /// Share of the traffic relative to the cluster's other endpoints (1..1000).
    pub weight: u32,
    /// Per-worker state, carried across reloads by cluster and address.
    pub stats: Arc<EndpointStats>,
    /// Ejection and health-check state for the whole proxy, carried the
    /// same way.
    pub health: Arc<EndpointHealth>,
    /// Where it runs (`zone`, `region`).
    pub locality: Locality,
    /// Failover group: 0 first, higher ones as lower ones lose health.
    pub priority: u32,
}

impl Endpoint {
    /// An endpoint made for one connection of an original-destination
    /// cluster.
    pub fn dynamic(address: SocketAddr, workers: usize) -> Endpoint {
        Endpoint {
            address,
            written: address.to_string(),
            weight: 1,
            stats: Arc::new(EndpointStats::new(workers)),
            health: Arc::default(),
            locality: Locality::default(),
            priority: 0,
        }
    }

    /// A compiled or discovered endpoint, with fresh state (the
    /// snapshot's `adopt_stats` carries over that of endpoints that stay).
    pub fn found(f: &Found, workers: usize) -> Endpoint {
        Endpoint {
            address: f.address,
            written: f.written.clone(),
            weight: f.weight,
            stats: Arc::new(EndpointStats::new(workers)),
            health: Arc::default(),
            locality: f.locality.clone(),
            priority: f.priority,
        }
    }
}
