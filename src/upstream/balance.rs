//! Endpoint choice beyond plain rotation: weights, consistent hashing
//! (`ring_hash`, `maglev`) and the peak-EWMA latency estimate.
//!
//! Everything that depends only on the endpoint set (the weighted
//! round-robin schedule, the cumulative weights, the hash ring, the Maglev
//! table) is built once when the config is compiled and lives in the
//! immutable snapshot; per-worker state (rotation positions, latency
//! estimates) lives in [`super::Balancers`].

use std::time::{Duration, Instant};

use serde::Deserialize;

/// How a cluster picks an endpoint.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Per-worker rotation (smooth weighted when weights differ).
    #[default]
    RoundRobin,
    /// Random, in proportion to weight, per worker.
    Random,
    /// Power of two choices over in-flight requests per unit of weight.
    LeastRequest,
    /// Power of two choices over a peak-sensitive moving average of
    /// latency times in-flight requests (linkerd2-proxy's balancer).
    PeakEwma,
    /// Consistent hashing on `hash_on` with a ring of virtual nodes.
    RingHash,
    /// Consistent hashing on `hash_on` with a Maglev lookup table.
    Maglev,
}

/// As written in the config (`round_robin`, ...).
impl std::fmt::Display for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Balance::RoundRobin => "round_robin",
            Balance::Random => "random",
            Balance::LeastRequest => "least_request",
            Balance::PeakEwma => "peak_ewma",
            Balance::RingHash => "ring_hash",
            Balance::Maglev => "maglev",
        })
    }
}

impl Balance {
    /// Whether the pick needs a request key.
    pub fn hashes(self) -> bool {
        matches!(self, Balance::RingHash | Balance::Maglev)
    }
}

/// `hash_on` of a hashing cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HashOn {
    /// The client's IP address (tcp and http).
    #[default]
    SourceIp,
    /// A request header (lower-case name); absent: a weighted random pick.
    Header(String),
    /// A cookie of the `Cookie` header; absent: a weighted random pick.
    Cookie(String),
    /// The request path (without the query).
    Path,
}

impl HashOn {
    /// `"source_ip"`, `"path"`, `"header:NAME"` or `"cookie:NAME"`.
    pub fn parse(s: &str) -> Result<HashOn, String> {
        let token = |n: &str| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        match s {
            "source_ip" => Ok(HashOn::SourceIp),
            "path" => Ok(HashOn::Path),
            _ => match s.split_once(':') {
                Some(("header", n)) if token(n) => Ok(HashOn::Header(n.to_ascii_lowercase())),
                Some(("cookie", n)) if token(n) => Ok(HashOn::Cookie(n.to_string())),
                _ => Err(format!(
                    "must be \"source_ip\", \"path\", \"header:NAME\" or \"cookie:NAME\", not \"{s}\""
                )),
            },
        }
    }
}

impl std::fmt::Display for HashOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashOn::SourceIp => f.write_str("source_ip"),
            HashOn::Path => f.write_str("path"),
            HashOn::Header(n) => write!(f, "header:{n}"),
            HashOn::Cookie(n) => write!(f, "cookie:{n}"),
        }
    }
}

/// A stable 64-bit hash (FNV-1a, then a SplitMix64 finaliser for the
/// high bits): the same key maps to the same endpoint on every worker, in
/// every process and across reloads.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The hash of a client's IP address (the port is left out).
pub fn ip_key(peer: std::net::SocketAddr) -> u64 {
    match peer.ip() {
        std::net::IpAddr::V4(a) => hash64(&a.octets()),
        std::net::IpAddr::V6(a) => hash64(&a.octets()),
    }
}

/// The value of cookie `name` in a `Cookie` header value.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (n, v) = pair.trim().split_once('=')?;
        (n == name).then_some(v)
    })
}

/// Size of the Maglev lookup table (a prime, as the algorithm needs).
pub const MAGLEV_SIZE: usize = 65_537;
/// Virtual nodes on a hash ring per unit of weight: fixed, so that an
/// endpoint's points do not change when others come and go; scaled down
/// only when the ring would pass the cluster's `max_ring_size` points.
const RING_PER_WEIGHT: u64 = 160;
/// Default `max_ring_size`: 65,536 points (1 MiB of ring per cluster per
/// process); Envoy's 8M-entry maximum is far more than a sidecar needs.
pub const DEFAULT_RING_MAX: u64 = 1 << 16;
/// Longest weighted round-robin schedule.
const SCHEDULE_MAX: u64 = 1 << 16;

/// The precomputed choice structures of one cluster.
#[derive(Debug, Default)]
pub struct Plan {
    /// Some weight differs from the others.
    pub weighted: bool,
    /// Smooth weighted round-robin order (weighted clusters only).
    schedule: Vec<u32>,
    /// Running sums of the weights.
    cumulative: Vec<u64>,
    /// `ring_hash`: (point, endpoint) sorted by point.
    ring: Vec<(u64, u32)>,
    /// `maglev`: endpoint per slot.
    maglev: Vec<u32>,
}

impl Plan {
    /// Build for `balance` over endpoints given as (identity, weight); the
    /// identity (the address) is what the hash positions depend on, so an
    /// endpoint keeps its keys when others come and go.
    pub fn new(balance: Balance, endpoints: &[(String, u32)], ring_max: u64) -> Plan {
        let weights: Vec<u64> = endpoints.iter().map(|e| u64::from(e.1.max(1))).collect();
        let weighted = weights.windows(2).any(|w| w[0] != w[1]);
        let mut cumulative = Vec::with_capacity(weights.len());
        let mut sum = 0;
        for w in &weights {
            sum += w;
            cumulative.push(sum);
        }
        let mut plan = Plan {
            weighted,
            cumulative,
            ..Plan::default()
        };
        if weighted && balance == Balance::RoundRobin {
            plan.schedule = schedule(&weights);
        }
        if balance == Balance::RingHash {
            plan.ring = ring(endpoints, &weights, ring_max);
        }
        if balance == Balance::Maglev {
            plan.maglev = maglev(endpoints, &weights);
        }
        plan
    }

    /// The `slot`-th pick of a weighted rotation.
    pub fn scheduled(&self, slot: usize) -> Option<usize> {
        if self.schedule.is_empty() {
            return None;
        }
        Some(self.schedule[slot % self.schedule.len()] as usize)
    }

    /// A random endpoint, in proportion to weight.
    pub fn random(&self) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0);
        if total == 0 {
            return 0;
        }
        let r = fastrand::u64(..total);
        self.cumulative.partition_point(|&c| c <= r)
    }

    /// The endpoint that owns `key`.
    pub fn lookup(&self, key: u64) -> Option<usize> {
        if !self.ring.is_empty() {
            let i = self.ring.partition_point(|&(p, _)| p < key);
            return Some(self.ring[i % self.ring.len()].1 as usize);
        }
        if !self.maglev.is_empty() {
            return Some(self.maglev[(key % self.maglev.len() as u64) as usize] as usize);
        }
        None
    }
}

/// The greatest common divisor, to shorten schedules.
fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// nginx's smooth weighted round robin, unrolled into one period: each
/// endpoint appears `weight` times, spread out (5,1,1 gives a a b a c a a).
fn schedule(weights: &[u64]) -> Vec<u32> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut w: Vec<u64> = weights.iter().map(|x| x / g).collect();
    let mut total: u64 = w.iter().sum();
    if total > SCHEDULE_MAX {
        w = w
            .iter()
            .map(|x| (x * SCHEDULE_MAX / total).max(1))
            .collect();
        total = w.iter().sum();
    }
    // Smooth weighted round-robin costs O(total x endpoints); past a few
    // million steps (tens of thousands of endpoints) the same proportions
    // come from earliest-deadline-first in O(total log endpoints).
    if total.saturating_mul(w.len() as u64) > 1 << 24 {
        return deadline_schedule(&w, total);
    }
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        out.push(best as u32);
    }
    out
}

/// Each endpoint's turns at `k / w` (k = 1..w), in time order (ties by
/// index): a weighted interleaving like the smooth schedule's.
fn deadline_schedule(w: &[u64], total: u64) -> Vec<u32> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    // (next turn as a fraction k/w compared by cross-multiplying, index).
    #[derive(PartialEq, Eq)]
    struct Turn(u64, u64, u32);
    impl Ord for Turn {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            (u128::from(self.0) * u128::from(o.1))
                .cmp(&(u128::from(o.0) * u128::from(self.1)))
                .then(self.2.cmp(&o.2))
        }
    }
    impl PartialOrd for Turn {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    let mut heap: BinaryHeap<Reverse<Turn>> = w
        .iter()
        .enumerate()
        .map(|(i, &wi)| Reverse(Turn(1, wi.max(1), i as u32)))
        .collect();
    let mut out = Vec::with_capacity(total as usize);
    while let Some(Reverse(Turn(k, wi, i))) = heap.pop() {
        out.push(i);
        if k < wi {
            heap.push(Reverse(Turn(k + 1, wi, i)));
        }
    }
    out
}

/// The ring: `RING_PER_WEIGHT` points per unit of weight, or, when that
/// would pass `ring_max`, each endpoint's share of `ring_max` (at least
/// one point each).
fn ring(endpoints: &[(String, u32)], weights: &[u64], ring_max: u64) -> Vec<(u64, u32)> {
    let total_weight: u64 = weights.iter().sum::<u64>().max(1);
    let full = total_weight.saturating_mul(RING_PER_WEIGHT) <= ring_max;
    let mut ring = Vec::with_capacity(ring_max.min(total_weight * RING_PER_WEIGHT) as usize);
    for (i, ((id, _), w)) in endpoints.iter().zip(weights).enumerate() {
        let vnodes = if full {
            w * RING_PER_WEIGHT
        } else {
            (w * ring_max / total_weight).max(1)
        };
        for j in 0..vnodes {
            ring.push((hash64(format!("{id}#{j}").as_bytes()), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// Maglev (Eisenbud et al., NSDI 2016): each endpoint walks its own
/// permutation of the table's slots, taking the first free one on its
/// turn; turns come in proportion to weight.
fn maglev(endpoints: &[(String, u32)], weights: &[u64]) -> Vec<u32> {
    let m = MAGLEV_SIZE as u64;
    let perms: Vec<(u64, u64)> = endpoints
        .iter()
        .map(|(id, _)| {
            let offset = hash64(format!("{id}|offset").as_bytes()) % m;
            let skip = hash64(format!("{id}|skip").as_bytes()) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_w = weights.iter().copied().max().unwrap_or(1) as f64;
    let mut next = vec![0u64; endpoints.len()];
    let mut credit = vec![0f64; endpoints.len()];
    let mut table = vec![u32::MAX; MAGLEV_SIZE];
    let mut filled = 0;
    while filled < MAGLEV_SIZE {
        for i in 0..endpoints.len() {
            credit[i] += weights[i] as f64 / max_w;
            while credit[i] >= 1.0 && filled < MAGLEV_SIZE {
                credit[i] -= 1.0;
                let (offset, skip) = perms[i];
                loop {
                    let slot = ((offset + next[i] * skip) % m) as usize;
                    next[i] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
            }
        }
    }
    table
}

/// Latency estimate of one endpoint on one worker (peak EWMA): a sample
/// above the estimate replaces it at once (peak-sensitive); one below is
/// averaged in with a weight that decays over [`EWMA_DECAY`].
#[derive(Debug, Clone, Copy)]
pub struct Ewma {
    pub cost_ns: f64,
    stamp: Instant,
}

/// Time constant of the moving average (linkerd2-proxy uses 10 s).
pub const EWMA_DECAY: Duration = Duration::from_secs(10);
/// Estimate of an endpoint with no sample yet.
pub const EWMA_DEFAULT: Duration = Duration::from_millis(30);

impl Ewma {
    pub fn new(sample: Duration) -> Self {
        Ewma {
            cost_ns: sample.as_nanos() as f64,
            stamp: Instant::now(),
        }
    }

    pub fn observe(&mut self, sample: Duration) {
        let s = sample.as_nanos() as f64;
        let now = Instant::now();
        if s > self.cost_ns {
            self.cost_ns = s;
        } else {
            let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
            let w = (-elapsed / EWMA_DECAY.as_secs_f64()).exp();
            self.cost_ns = self.cost_ns * w + s * (1.0 - w);
        }
        self.stamp = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: usize, w: impl Fn(usize) -> u32) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("10.0.0.{i}:80"), w(i))).collect()
    }

    #[test]
    fn big_clusters_stay_bounded() {
        // 8,000 endpoints at weight 1000: the ring is capped, not 8M points.
        let many: Vec<(String, u32)> = (0..8000)
            .map(|i| (format!("10.0.{}.{}:80", i / 250, i % 250), 1000))
            .collect();
        let plan = Plan::new(Balance::RingHash, &many, DEFAULT_RING_MAX);
        assert!(
            plan.ring.len() <= DEFAULT_RING_MAX as usize + many.len(),
            "{}",
            plan.ring.len()
        );
        assert!(plan.ring.len() >= DEFAULT_RING_MAX as usize / 2);
        // A weighted schedule over many endpoints keeps the proportions.
        let w: Vec<u64> = (0..20_000u64).map(|i| 1 + i % 3).collect();
        let sched = schedule(&w);
        let mut count = vec![0u64; w.len()];
        for &i in &sched {
            count[i as usize] += 1;
        }
        assert_eq!(count, w);
        // Spread out: the heaviest endpoints do not come in one run.
        let first: std::collections::HashSet<u32> = sched[..3].iter().copied().collect();
        assert_eq!(first.len(), 3);
    }

    #[test]
    fn smooth_schedule_spreads_weights() {
        assert_eq!(schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(schedule(&[2, 2]), vec![0, 1]);
        let s = schedule(&[3000, 1]);
        assert_eq!(s.len(), 3001);
    }

    #[test]
    fn random_follows_weights() {
        let plan = Plan::new(Balance::Random, &eps(3, |i| [1, 3, 6][i]), DEFAULT_RING_MAX);
        let mut seen = [0usize; 3];
        for _ in 0..100_000 {
            seen[plan.random()] += 1;
        }
        for (i, want) in [0.1, 0.3, 0.6].iter().enumerate() {
            let got = seen[i] as f64 / 100_000.0;
            assert!((got - want).abs() < 0.01, "{i}: {got}");
        }
    }

    /// Removing one of N endpoints moves about 1/N of the keys: on a ring
    /// only keys that were on the removed endpoint move; Maglev trades a
    /// little of that (`cross_moves`, a share of all keys) for balance.
    fn consistency(balance: Balance, cross_moves: f64) {
        let n = 10;
        let all = eps(n, |_| 1);
        let fewer: Vec<_> = all[..n - 1].to_vec();
        let (a, b) = (
            Plan::new(balance, &all, DEFAULT_RING_MAX),
            Plan::new(balance, &fewer, DEFAULT_RING_MAX),
        );
        let keys = 50_000;
        let mut moved = 0;
        let mut cross = 0;
        let mut load = vec![0usize; n];
        for k in 0..keys {
            let h = hash64(format!("user-{k}").as_bytes());
            let (x, y) = (a.lookup(h).unwrap(), b.lookup(h).unwrap());
            load[x] += 1;
            if x != y {
                moved += 1;
                if x != n - 1 {
                    cross += 1;
                }
            }
        }
        let share = moved as f64 / keys as f64;
        assert!((share - 0.1).abs() < 0.03, "{balance}: {share}");
        let cross = cross as f64 / keys as f64;
        assert!(
            cross <= cross_moves,
            "{balance}: {cross} moved between endpoints that stayed"
        );
        // Balanced within 30% of the mean.
        assert!(
            load.iter().all(|&l| (l as f64 - 5000.0).abs() < 1500.0),
            "{load:?}"
        );
    }

    #[test]
    fn ring_hash_is_consistent() {
        consistency(Balance::RingHash, 0.0);
    }

    #[test]
    fn maglev_is_consistent() {
        consistency(Balance::Maglev, 0.03);
    }

    #[test]
    fn hashing_honours_weights() {
        for balance in [Balance::RingHash, Balance::Maglev] {
            let plan = Plan::new(balance, &eps(2, |i| [1, 3][i]), DEFAULT_RING_MAX);
            let on_1 = (0..40_000)
                .filter(|k| plan.lookup(hash64(&u64::to_le_bytes(*k))) == Some(1))
                .count();
            let share = on_1 as f64 / 40_000.0;
            assert!((share - 0.75).abs() < 0.05, "{balance}: {share}");
        }
    }

    #[test]
    fn ewma_is_peak_sensitive() {
        let mut e = Ewma::new(Duration::from_millis(1));
        e.observe(Duration::from_millis(50));
        assert_eq!(e.cost_ns, 50e6);
        e.observe(Duration::from_millis(1));
        // Averaged in, not replaced.
        assert!(e.cost_ns > 40e6, "{}", e.cost_ns);
    }

    #[test]
    fn hash_on_forms() {
        assert_eq!(
            HashOn::parse("header:X-User"),
            Ok(HashOn::Header("x-user".into()))
        );
        assert_eq!(
            HashOn::parse("cookie:sid"),
            Ok(HashOn::Cookie("sid".into()))
        );
        assert!(HashOn::parse("header:").is_err() && HashOn::parse("ip").is_err());
        assert_eq!(cookie("a=1; sid=xyz; b=2", "sid"), Some("xyz"));
        assert_eq!(cookie("a=1", "sid"), None);
    }
}
