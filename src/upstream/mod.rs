//! Upstream clusters: their endpoints (compiled, immutable) and the
//! per-worker balancer state that picks among them.

pub mod balance;
pub mod locality;
mod probe;
pub mod prober;
pub mod source;

use crate::fxhash::FxHashMap;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{ClusterStats, EndpointStats};
use crate::resilience::health::Outcome;
use crate::resilience::{
    BreakerLimits, EndpointHealth, HealthCheck, OutlierDetection, RetryBudget,
};

pub use balance::{Balance, HashOn, Plan};
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

/// Per-worker balancer state for every cluster, keyed by cluster name so it
/// survives config reloads. Lives in the worker's context (`Rc`), never shared.
#[derive(Debug, Default)]
pub struct Balancers {
    /// Round-robin position per cluster name.
    next: RefCell<FxHashMap<String, usize>>,
    /// In-flight connections/requests per endpoint address on this worker
    /// (an address shared by two clusters is one server, with one load).
    in_flight: RefCell<FxHashMap<SocketAddr, u32>>,
    /// Peak-EWMA latency estimates per endpoint address (peak_ewma clusters).
    ewma: RefCell<FxHashMap<SocketAddr, balance::Ewma>>,
}

impl Balancers {
    /// The order in which to try the cluster's endpoints for one connection:
    /// the balancer's pick first, then every other endpoint once. `key` is
    /// the request's hash for ring_hash and maglev (`None`: a weighted
    /// random pick).
    pub fn attempt_order(&self, cluster: &Cluster, key: Option<u64>) -> AttemptOrder {
        let n = cluster.endpoints.len();
        if n == 0 {
            return AttemptOrder::over(0, 0, 0, 0);
        }
        let (start, end, plan) = match cluster.levels.as_slice() {
            [] | [_] => (0, n, &cluster.plan),
            levels => {
                let l = &levels[cluster.pick_level()];
                (l.start, l.end, &l.plan)
            }
        };
        let first = start + self.pick(cluster, &cluster.endpoints[start..end], plan, key);
        AttemptOrder::over(first, start, end - start, n)
    }

    /// The balancer's pick among `endpoints` (one level of the cluster),
    /// as an index into them.
    fn pick(
        &self,
        cluster: &Cluster,
        endpoints: &[Endpoint],
        plan: &Plan,
        key: Option<u64>,
    ) -> usize {
        let n = endpoints.len();
        let pick = || {
            if plan.weighted {
                plan.random()
            } else {
                fastrand::usize(..n)
            }
        };
        // Two different endpoints for the power of two choices (the same
        // one twice would be no choice at all).
        let two = || {
            let a = pick();
            if n == 1 {
                return (a, a);
            }
            if !plan.weighted {
                return (a, (a + 1 + fastrand::usize(..n - 1)) % n);
            }
            let b = (0..8).map(|_| pick()).find(|&b| b != a);
            (a, b.unwrap_or((a + 1) % n))
        };
        match cluster.balance {
            Balance::RoundRobin => {
                let mut next = self.next.borrow_mut();
                // Look up by &str first: no allocation on the hot path.
                let slot = match next.get_mut(cluster.name.as_str()) {
                    Some(slot) => slot,
                    None => next.entry(cluster.name.clone()).or_default(),
                };
                let i = plan.scheduled(*slot).unwrap_or(*slot % n);
                *slot = slot.wrapping_add(1);
                i
            }
            Balance::Random => pick(),
            Balance::LeastRequest => {
                let (a, b) = two();
                let in_flight = self.in_flight.borrow();
                // In flight per unit of weight: a / wa < b / wb.
                let load = |i: usize| {
                    u64::from(in_flight.get(&endpoints[i].address).copied().unwrap_or(0))
                };
                let w = |i: usize| u64::from(endpoints[i].weight.max(1));
                if load(b) * w(a) < load(a) * w(b) {
                    b
                } else {
                    a
                }
            }
            Balance::PeakEwma => {
                let (a, b) = two();
                if self.ewma_cost(&endpoints[b]) < self.ewma_cost(&endpoints[a]) {
                    b
                } else {
                    a
                }
            }
            Balance::RingHash | Balance::Maglev => {
                key.and_then(|k| plan.lookup(k)).unwrap_or_else(pick)
            }
        }
    }

    /// Peak-EWMA cost of an endpoint on this worker: latency estimate x
    /// (requests in flight + 1) / weight.
    fn ewma_cost(&self, e: &Endpoint) -> f64 {
        let rtt = self
            .ewma
            .borrow()
            .get(&e.address)
            .map_or(balance::EWMA_DEFAULT.as_nanos() as f64, |m| m.cost_ns);
        rtt * f64::from(self.in_flight(e.address) + 1) / f64::from(e.weight.max(1))
    }

    /// Feed a latency sample (request sent to response head, or a tcp
    /// connect) to the endpoint's peak-EWMA estimate on this worker.
    pub fn observe(&self, addr: SocketAddr, sample: Duration) {
        let mut ewma = self.ewma.borrow_mut();
        match ewma.get_mut(&addr) {
            Some(m) => m.observe(sample),
            None => {
                ewma.insert(addr, balance::Ewma::new(sample));
            }
        }
    }

    /// Forget per-endpoint state of addresses that no cluster of the
    /// current config names (called on the worker's housekeeping tick).
    pub fn retain_endpoints(&self, keep: impl Fn(&SocketAddr) -> bool) {
        self.in_flight
            .borrow_mut()
            .retain(|addr, n| *n > 0 || keep(addr));
        self.ewma.borrow_mut().retain(|addr, _| keep(addr));
    }

    /// Count one more in-flight connection/request on an endpoint; the guard
    /// takes it back when dropped.
    pub fn track(&self, addr: SocketAddr) -> InFlight<'_> {
        self.track_detached(addr);
        InFlight {
            balancers: self,
            addr,
        }
    }

    /// [`Balancers::track`] without the guard, for an owner that outlives
    /// its task (a parked relay); it must call [`Balancers::untrack`].
    pub fn track_detached(&self, addr: SocketAddr) {
        *self.in_flight.borrow_mut().entry(addr).or_default() += 1;
    }

    /// Take one in-flight count back.
    pub fn untrack(&self, addr: SocketAddr) {
        let mut in_flight = self.in_flight.borrow_mut();
        if let Some(c) = in_flight.get_mut(&addr) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                // Pruned at zero: endpoints a reload removed leave no entry.
                in_flight.remove(&addr);
            }
        }
    }

    /// In-flight count on one endpoint of this worker.
    pub fn in_flight(&self, addr: SocketAddr) -> u32 {
        self.in_flight.borrow().get(&addr).copied().unwrap_or(0)
    }
}

/// Endpoint indexes in the order to try them (no allocation per request):
/// the chosen level's endpoints from the pick on, wrapping around, then
/// every other endpoint in level order (failover).
#[derive(Debug, Clone)]
pub struct AttemptOrder {
    first: usize,
    /// The chosen level: endpoints `start..start + len`.
    start: usize,
    len: usize,
    n: usize,
    k: usize,
}

impl AttemptOrder {
    fn over(first: usize, start: usize, len: usize, n: usize) -> AttemptOrder {
        AttemptOrder {
            first,
            start,
            len,
            n,
            k: 0,
        }
    }

    /// The order over a single endpoint.
    pub fn single() -> AttemptOrder {
        AttemptOrder::over(0, 0, 1, 1)
    }
}

impl Iterator for AttemptOrder {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        if self.k >= self.n {
            return None;
        }
        let k = self.k;
        self.k += 1;
        if k < self.len {
            return Some(self.start + (self.first - self.start + k) % self.len);
        }
        let j = k - self.len;
        Some(if j < self.start { j } else { j + self.len })
    }
}

/// Guard returned by [`Balancers::track`].
#[derive(Debug)]
pub struct InFlight<'a> {
    balancers: &'a Balancers,
    addr: SocketAddr,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.balancers.untrack(self.addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(balance: Balance, n: u16) -> Cluster {
        Cluster {
            name: "c".into(),
            endpoints: (0..n)
                .map(|i| Endpoint {
                    address: SocketAddr::from(([127, 0, 0, 1], 9000 + i)),
                    written: format!("127.0.0.1:{}", 9000 + i),
                    weight: 1,
                    stats: Arc::new(EndpointStats::new(1)),
                    health: Arc::default(),
                    locality: Locality::default(),
                    priority: 0,
                })
                .collect(),
            balance,
            plan: Plan::default(),
            locality: LocalityMode::Off,
            node: Locality::default(),
            levels: Vec::new(),
            hash_on: HashOn::default(),
            connect_timeout: Duration::from_secs(1),
            max_idle_connections: 8,
            max_ring_size: crate::upstream::balance::DEFAULT_RING_MAX,
            pool_idle_timeout: Duration::from_secs(30),
            stats: Arc::new(ClusterStats::new(1)),
            retry_budget: RetryBudget::default(),
            breaker: BreakerLimits::default(),
            outlier: None,
            health_check: None,
            tls: None,
            protocol: UpstreamProtocol::Http1,
            original_destination: false,
            source: source::Source::Static,
            status: Arc::default(),
        }
    }

    #[test]
    fn round_robin_rotates_and_tries_each_once() {
        let b = Balancers::default();
        let c = cluster(Balance::RoundRobin, 3);
        assert_eq!(b.attempt_order(&c, None).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(b.attempt_order(&c, None).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(b.attempt_order(&c, None).collect::<Vec<_>>(), vec![2, 0, 1]);
        assert_eq!(b.attempt_order(&c, None).collect::<Vec<_>>(), vec![0, 1, 2]);
    }

    #[test]
    fn random_covers_all_endpoints() {
        let b = Balancers::default();
        let c = cluster(Balance::Random, 4);
        let mut seen = [0usize; 4];
        for _ in 0..4000 {
            let order: Vec<usize> = b.attempt_order(&c, None).collect();
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2, 3]);
            seen[order[0]] += 1;
        }
        assert!(seen.iter().all(|&s| s > 800), "{seen:?}");
    }

    #[test]
    fn least_request_avoids_loaded_endpoint() {
        let b = Balancers::default();
        let c = cluster(Balance::LeastRequest, 2);
        let _busy: Vec<_> = (0..5).map(|_| b.track(c.endpoints[0].address)).collect();
        let picks0 = (0..1000)
            .filter(|_| b.attempt_order(&c, None).next() == Some(0))
            .count();
        // The two choices differ: the loaded endpoint never wins.
        assert_eq!(picks0, 0);
        drop(_busy);
        assert_eq!(b.in_flight(c.endpoints[0].address), 0);
    }

    #[test]
    fn levels_come_first_then_fail_over_in_order() {
        let b = Balancers::default();
        let mut c = cluster(Balance::RoundRobin, 5);
        for (i, e) in c.endpoints.iter_mut().enumerate() {
            e.priority = [1, 0, 2, 0, 1][i];
        }
        c.levels = locality::arrange(
            &mut c.endpoints,
            LocalityMode::Off,
            &Locality::default(),
            c.balance,
            1 << 16,
        );
        let port = |i: usize| c.endpoints[i].address.port() - 9000;
        // Nothing is watched: level 0 (ports 1 and 3) always first, in
        // rotation; then level 1 (0, 4), then level 2 (2).
        let orders: Vec<Vec<u16>> = (0..2)
            .map(|_| b.attempt_order(&c, None).map(port).collect())
            .collect();
        assert_eq!(orders, vec![vec![1, 3, 0, 4, 2], vec![3, 1, 0, 4, 2]]);
    }
}
