//! The per-worker balancer: the order in which one request or connection
//! tries a cluster's endpoints (the pick of the cluster's `balance` within
//! the chosen locality level, then failover), and the in-flight counts and
//! latency estimates the picks read.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Duration;

use super::balance::{self, Balance, Plan};
use super::{Cluster, Endpoint};
use crate::fxhash::FxHashMap;

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
    use crate::upstream::*;

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
