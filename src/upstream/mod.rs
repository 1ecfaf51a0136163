//! Upstream clusters: their endpoints (compiled, immutable) and the
//! per-worker balancer state that picks among them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{ClusterStats, EndpointStats};

pub use crate::config::file::Balance;

/// A named group of interchangeable endpoints.
#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    /// http: idle pooled connections per endpoint per worker.
    pub max_idle_connections: usize,
    /// http: pooled connections idle longer than this are closed.
    pub pool_idle_timeout: Duration,
    /// Per-worker counters, carried across reloads by name.
    pub stats: Arc<ClusterStats>,
}

/// One upstream address.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// The `host:port` as written in the config.
    pub written: String,
    /// Per-worker state, carried across reloads by cluster and address.
    pub stats: Arc<EndpointStats>,
}

/// Per-worker balancer state for every cluster, keyed by cluster name so it
/// survives config reloads. Lives in the worker's context (`Rc`), never shared.
#[derive(Debug, Default)]
pub struct Balancers {
    /// Round-robin position per cluster name.
    next: RefCell<HashMap<String, usize>>,
    /// In-flight connections/requests per endpoint address on this worker
    /// (an address shared by two clusters is one server, with one load).
    in_flight: RefCell<HashMap<SocketAddr, u32>>,
}

impl Balancers {
    /// The order in which to try the cluster's endpoints for one connection:
    /// the balancer's pick first, then every other endpoint once.
    pub fn attempt_order(&self, cluster: &Cluster) -> AttemptOrder {
        let n = cluster.endpoints.len();
        if n == 0 {
            return AttemptOrder { first: 0, n, k: 0 };
        }
        let first = match cluster.balance {
            Balance::RoundRobin => {
                let mut next = self.next.borrow_mut();
                // Look up by &str first: no allocation on the hot path.
                let slot = match next.get_mut(cluster.name.as_str()) {
                    Some(slot) => slot,
                    None => next.entry(cluster.name.clone()).or_default(),
                };
                let i = *slot % n;
                *slot = slot.wrapping_add(1);
                i
            }
            Balance::Random => fastrand::usize(..n),
            Balance::LeastRequest => {
                let a = fastrand::usize(..n);
                let b = fastrand::usize(..n);
                let in_flight = self.in_flight.borrow();
                let load = |i: usize| {
                    in_flight
                        .get(&cluster.endpoints[i].address)
                        .copied()
                        .unwrap_or(0)
                };
                if load(b) < load(a) {
                    b
                } else {
                    a
                }
            }
        };
        AttemptOrder { first, n, k: 0 }
    }

    /// Forget per-endpoint state of addresses that no cluster of the
    /// current config names (called on the worker's housekeeping tick).
    pub fn retain_endpoints(&self, keep: impl Fn(&SocketAddr) -> bool) {
        self.in_flight
            .borrow_mut()
            .retain(|addr, n| *n > 0 || keep(addr));
    }

    /// Count one more in-flight connection/request on an endpoint; the guard
    /// takes it back when dropped.
    pub fn track(&self, addr: SocketAddr) -> InFlight<'_> {
        *self.in_flight.borrow_mut().entry(addr).or_default() += 1;
        InFlight {
            balancers: self,
            addr,
        }
    }

    /// In-flight count on one endpoint of this worker.
    pub fn in_flight(&self, addr: SocketAddr) -> u32 {
        self.in_flight.borrow().get(&addr).copied().unwrap_or(0)
    }
}

/// Endpoint indexes in the order to try them (no allocation per request).
#[derive(Debug, Clone)]
pub struct AttemptOrder {
    first: usize,
    n: usize,
    k: usize,
}

impl Iterator for AttemptOrder {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        if self.k >= self.n {
            return None;
        }
        let i = (self.first + self.k) % self.n;
        self.k += 1;
        Some(i)
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
        let mut in_flight = self.balancers.in_flight.borrow_mut();
        if let Some(c) = in_flight.get_mut(&self.addr) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                // Pruned at zero: endpoints a reload removed leave no entry.
                in_flight.remove(&self.addr);
            }
        }
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
                    stats: Arc::new(EndpointStats::new(1)),
                })
                .collect(),
            balance,
            connect_timeout: Duration::from_secs(1),
            max_idle_connections: 8,
            pool_idle_timeout: Duration::from_secs(30),
            stats: Arc::new(ClusterStats::new(1)),
        }
    }

    #[test]
    fn round_robin_rotates_and_tries_each_once() {
        let b = Balancers::default();
        let c = cluster(Balance::RoundRobin, 3);
        assert_eq!(b.attempt_order(&c).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(b.attempt_order(&c).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(b.attempt_order(&c).collect::<Vec<_>>(), vec![2, 0, 1]);
        assert_eq!(b.attempt_order(&c).collect::<Vec<_>>(), vec![0, 1, 2]);
    }

    #[test]
    fn random_covers_all_endpoints() {
        let b = Balancers::default();
        let c = cluster(Balance::Random, 4);
        let mut seen = [0usize; 4];
        for _ in 0..4000 {
            let order: Vec<usize> = b.attempt_order(&c).collect();
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
            .filter(|_| b.attempt_order(&c).next() == Some(0))
            .count();
        // Endpoint 0 wins only when both choices land on it (about 1 in 4).
        assert!(picks0 < 400, "{picks0}");
        drop(_busy);
        assert_eq!(b.in_flight(c.endpoints[0].address), 0);
    }
}
