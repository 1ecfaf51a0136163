//! Locality-aware balancing with failover (Envoy's priority levels).
//!
//! A cluster's endpoints are sorted into ordered *levels*: first by
//! priority (EDS `LocalityLbEndpoints.priority`, or an endpoint's
//! `priority`; 0 is the most preferred), then, with `locality =
//! "prefer_local"`, by nearness to this proxy's own `[node]` locality: the
//! same zone, the same region, anywhere else. Each level is a contiguous
//! range of the endpoint list with its own balancing plan.
//!
//! Traffic goes to the levels by their health: a level's health is its
//! share of usable endpoints (not ejected, passing health checks) times
//! the overprovisioning factor 1.4, capped at 100%. Level 0 takes as much
//! as its health, the next takes as much of the rest as its own health,
//! and so on; a level 60% healthy keeps 84% of the traffic and the next
//! level takes the other 16%. When the levels' health adds up to less than
//! 100%, the traffic is split in proportion to it. docs/resilience.md.

use std::fmt;

use super::balance::{Balance, Plan};
use super::Endpoint;

/// Where a proxy or an endpoint runs: `region`, then `zone` within it.
/// Empty parts are unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
}

impl Locality {
    pub fn new(region: impl Into<String>, zone: impl Into<String>) -> Locality {
        Locality {
            region: region.into(),
            zone: zone.into(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty()
    }

    /// How near an endpoint at `self` is to a proxy at `node`: 0 in the
    /// same zone (and not in another region), 1 in the same region, 2
    /// anywhere else or unknown.
    pub fn tier(&self, node: &Locality) -> u32 {
        let region_clash =
            !self.region.is_empty() && !node.region.is_empty() && self.region != node.region;
        if !node.zone.is_empty() && self.zone == node.zone && !region_clash {
            0
        } else if !node.region.is_empty() && self.region == node.region {
            1
        } else {
            2
        }
    }

    /// This proxy's locality: `[node] region` and `zone`, each overridden
    /// by `OUTRIGGER_REGION` / `OUTRIGGER_ZONE` when set and not empty (so
    /// that one config serves every zone, with Kubernetes' downward API
    /// filling the environment).
    pub fn of_node(region: Option<&str>, zone: Option<&str>) -> Locality {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Locality {
            region: env("OUTRIGGER_REGION")
                .or(region.map(str::to_string))
                .unwrap_or_default(),
            zone: env("OUTRIGGER_ZONE")
                .or(zone.map(str::to_string))
                .unwrap_or_default(),
        }
    }
}

/// `region/zone`, with `*` for an unknown part.
impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |s: &str| {
            if s.is_empty() {
                "*".to_string()
            } else {
                s.to_string()
            }
        };
        write!(f, "{}/{}", part(&self.region), part(&self.zone))
    }
}

/// A cluster's `locality`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LocalityMode {
    /// Every endpoint of a priority is equal (the default).
    #[default]
    Off,
    /// Same zone, then same region, then anywhere.
    PreferLocal,
}

impl LocalityMode {
    pub fn parse(s: &str) -> Result<LocalityMode, String> {
        match s {
            "off" => Ok(LocalityMode::Off),
            "prefer_local" => Ok(LocalityMode::PreferLocal),
            _ => Err(format!("must be \"off\" or \"prefer_local\", not \"{s}\"")),
        }
    }
}

impl fmt::Display for LocalityMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LocalityMode::Off => "off",
            LocalityMode::PreferLocal => "prefer_local",
        })
    }
}

/// Highest endpoint priority (EDS allows more; eight failover groups are
/// more than a sidecar's clusters use).
pub const MAX_PRIORITY: u32 = 7;
/// Most levels a cluster can have: eight priorities of three tiers.
pub const MAX_LEVELS: usize = (MAX_PRIORITY as usize + 1) * 3;
/// The overprovisioning factor, in percent (Envoy's default 1.4).
pub const OVERPROVISIONING_PERCENT: u64 = 140;
/// Loads and health are in basis points (1/100 of a percent).
pub const FULL: u64 = 10_000;

/// One level: endpoints `start..end` of the cluster, and how to pick
/// among them.
#[derive(Debug)]
pub struct Level {
    pub start: usize,
    pub end: usize,
    pub priority: u32,
    /// 0 same zone, 1 same region, 2 elsewhere (`prefer_local` only).
    pub tier: Option<u32>,
    pub plan: Plan,
}

impl Level {
    /// `priority 0`, `priority 0, same zone`, ...
    pub fn label(&self) -> String {
        let tier = match self.tier {
            None => "",
            Some(0) => ", same zone",
            Some(1) => ", same region",
            Some(_) => ", elsewhere",
        };
        format!("priority {}{tier}", self.priority)
    }
}

/// Sort `endpoints` into levels (stable: the written order within a
/// level) and build each level's plan. Empty when everything is one level
/// (the cluster's own plan then serves).
pub fn arrange(
    endpoints: &mut [Endpoint],
    mode: LocalityMode,
    node: &Locality,
    balance: Balance,
    ring_max: u64,
) -> Vec<Level> {
    let key = |e: &Endpoint| {
        let tier = (mode == LocalityMode::PreferLocal).then(|| e.locality.tier(node));
        (e.priority.min(MAX_PRIORITY), tier)
    };
    let Some(first) = endpoints.first().map(key) else {
        return Vec::new();
    };
    if endpoints.iter().all(|e| key(e) == first) {
        return Vec::new();
    }
    endpoints.sort_by_key(|e| key(e));
    let mut levels = Vec::new();
    let mut start = 0;
    while start < endpoints.len() {
        let k = key(&endpoints[start]);
        let end = start
            + endpoints[start..]
                .iter()
                .take_while(|e| key(e) == k)
                .count();
        let ids: Vec<(String, u32)> = endpoints[start..end]
            .iter()
            .map(|e| (e.address.to_string(), e.weight))
            .collect();
        levels.push(Level {
            start,
            end,
            priority: k.0,
            tier: k.1,
            plan: Plan::new(balance, &ids, ring_max),
        });
        start = end;
    }
    levels
}

/// A level's health in basis points: usable share x 1.4, at most 100%.
pub fn health(usable: usize, total: usize) -> u64 {
    if total == 0 {
        return 0;
    }
    (usable as u64 * FULL * OVERPROVISIONING_PERCENT / 100 / total as u64).min(FULL)
}

/// The traffic share of each level, in basis points, from their health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    loads: [u16; MAX_LEVELS],
    n: usize,
}

impl Split {
    /// From each level's health (basis points), in level order.
    pub fn new(healths: &[u64]) -> Split {
        let n = healths.len().min(MAX_LEVELS);
        let mut loads = [0u16; MAX_LEVELS];
        let total: u64 = healths[..n].iter().sum();
        if total == 0 {
            // Nothing healthy anywhere: the most preferred level (the
            // cluster's panic threshold decides what it may use).
            if n > 0 {
                loads[0] = FULL as u16;
            }
            return Split { loads, n };
        }
        // Below 100% in all: normalised, so that the whole is still sent.
        let scale = |h: u64| if total < FULL { h * FULL / total } else { h };
        let mut left = FULL;
        for (i, &h) in healths[..n].iter().enumerate() {
            let load = scale(h).min(left);
            loads[i] = load as u16;
            left -= load;
        }
        // Rounding leftovers go to the first level that takes traffic.
        if left > 0 {
            if let Some(i) = (0..n).find(|&i| loads[i] > 0) {
                loads[i] += left as u16;
            }
        }
        Split { loads, n }
    }

    /// Share of level `i`, in basis points.
    pub fn load(&self, i: usize) -> u64 {
        if i < self.n {
            u64::from(self.loads[i])
        } else {
            0
        }
    }

    /// The level a draw `r` in `0..10_000` lands on.
    pub fn pick(&self, mut r: u64) -> usize {
        for i in 0..self.n {
            let l = u64::from(self.loads[i]);
            if r < l {
                return i;
            }
            r -= l;
        }
        0
    }
}

/// One locality of one level as `/clusters` and the metrics show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    pub locality: Locality,
    pub priority: u32,
    /// The level it is in (0 most preferred).
    pub level: usize,
    pub endpoints: usize,
    pub usable: usize,
    /// Expected share of the cluster's requests, in basis points: the
    /// level's load, split by usable endpoints (all of them when none is).
    pub traffic: u64,
}

impl super::Cluster {
    /// Each locality's share of the traffic now, in level order.
    pub fn shares(&self, now_ms: u64) -> Vec<Share> {
        let whole;
        let (levels, split) = if self.levels.len() > 1 {
            (self.levels.as_slice(), self.split(now_ms))
        } else {
            whole = [Level {
                start: 0,
                end: self.endpoints.len(),
                priority: self.endpoints.first().map_or(0, |e| e.priority),
                tier: None,
                plan: Plan::default(),
            }];
            (&whole[..], Split::new(&[FULL]))
        };
        let guarded = self.outlier.is_some() || self.health_check.is_some();
        let mut out = Vec::new();
        for (i, l) in levels.iter().enumerate() {
            let eps = &self.endpoints[l.start..l.end];
            let usable = |e: &&Endpoint| !guarded || e.health.usable(now_ms);
            let level_usable = eps.iter().filter(usable).count();
            let mut localities: Vec<&Locality> = eps.iter().map(|e| &e.locality).collect();
            localities.sort();
            localities.dedup();
            for loc in localities {
                let mine = eps.iter().filter(|e| &e.locality == loc);
                let total = mine.clone().count();
                let ok = mine.filter(usable).count();
                let (part, of) = if level_usable > 0 {
                    (ok, level_usable)
                } else {
                    (total, eps.len())
                };
                out.push(Share {
                    locality: loc.clone(),
                    priority: l.priority,
                    level: i,
                    endpoints: total,
                    usable: ok,
                    traffic: split.load(i) * part as u64 / of.max(1) as u64,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ep(port: u16, region: &str, zone: &str, priority: u32) -> Endpoint {
        let mut e = Endpoint::dynamic(std::net::SocketAddr::from(([127, 0, 0, 1], port)), 1);
        e.locality = Locality::new(region, zone);
        e.priority = priority;
        e.health = Arc::default();
        e
    }

    #[test]
    fn sixty_percent_healthy_keeps_eighty_four() {
        let s = Split::new(&[health(3, 5), health(2, 2)]);
        assert_eq!((s.load(0), s.load(1)), (8_400, 1_600));
        // 1.4 x 75% is past 100%: everything stays.
        let s = Split::new(&[health(3, 4), health(1, 1)]);
        assert_eq!((s.load(0), s.load(1)), (10_000, 0));
        // Three levels: the second is half healthy too.
        let s = Split::new(&[health(1, 2), health(1, 2), health(1, 1)]);
        assert_eq!((s.load(0), s.load(1), s.load(2)), (7_000, 3_000, 0));
    }

    #[test]
    fn total_below_full_is_normalised() {
        // 20% and 20% healthy: 28% each, normalised to half and half.
        let s = Split::new(&[health(1, 5), health(1, 5)]);
        assert_eq!((s.load(0), s.load(1)), (5_000, 5_000));
        let s = Split::new(&[0, 0]);
        assert_eq!((s.load(0), s.load(1)), (10_000, 0));
        let s = Split::new(&[0, health(1, 1)]);
        assert_eq!((s.load(0), s.load(1)), (0, 10_000));
        assert_eq!(s.pick(0), 1);
    }

    #[test]
    fn pick_follows_loads() {
        let s = Split::new(&[health(3, 5), health(2, 2)]);
        let on_0 = (0..FULL).filter(|&r| s.pick(r) == 0).count();
        assert_eq!(on_0, 8_400);
    }

    #[test]
    fn tiers() {
        let node = Locality::new("r1", "a");
        assert_eq!(Locality::new("r1", "a").tier(&node), 0);
        assert_eq!(Locality::new("", "a").tier(&node), 0);
        assert_eq!(Locality::new("r2", "a").tier(&node), 2);
        assert_eq!(Locality::new("r1", "b").tier(&node), 1);
        assert_eq!(Locality::new("r2", "b").tier(&node), 2);
        assert_eq!(Locality::default().tier(&node), 2);
        // A node without a locality prefers nothing.
        assert_eq!(Locality::new("r1", "a").tier(&Locality::default()), 2);
        assert_eq!(Locality::new("r1", "").to_string(), "r1/*");
    }

    #[test]
    fn arrange_orders_priority_then_nearness() {
        let node = Locality::new("r1", "a");
        let mut eps = vec![
            ep(1, "r2", "c", 0),
            ep(2, "r1", "b", 0),
            ep(3, "r1", "a", 1),
            ep(4, "r1", "a", 0),
            ep(5, "r1", "a", 0),
        ];
        let levels = arrange(
            &mut eps,
            LocalityMode::PreferLocal,
            &node,
            Balance::RoundRobin,
            1 << 16,
        );
        let ports: Vec<u16> = eps.iter().map(|e| e.address.port()).collect();
        assert_eq!(ports, vec![4, 5, 2, 1, 3]);
        let spans: Vec<(usize, usize, u32, Option<u32>)> = levels
            .iter()
            .map(|l| (l.start, l.end, l.priority, l.tier))
            .collect();
        assert_eq!(
            spans,
            vec![
                (0, 2, 0, Some(0)),
                (2, 3, 0, Some(1)),
                (3, 4, 0, Some(2)),
                (4, 5, 1, Some(0))
            ]
        );
        assert_eq!(levels[1].label(), "priority 0, same region");
        // Off: priorities only; one priority is no levels at all.
        let levels = arrange(&mut eps, LocalityMode::Off, &node, Balance::RoundRobin, 1);
        assert_eq!(levels.len(), 2);
        let mut same = vec![ep(1, "r2", "c", 0), ep(2, "r1", "a", 0)];
        assert!(arrange(&mut same, LocalityMode::Off, &node, Balance::Random, 1).is_empty());
    }
}
