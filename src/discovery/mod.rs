//! Service discovery: clusters whose endpoints change under a running
//! proxy without a reload. `discovery = "dns"` re-resolves its names every
//! `dns_refresh` (sooner when the records' TTL ends); `discovery = "file"`
//! follows an endpoints file. One discovery thread does the lookups and
//! reads (never a worker); each change goes to the control thread, which
//! publishes a new snapshot generation exactly as a reload does (stats,
//! pools, health and ejections of endpoints that stay are kept).
//! docs/discovery.md.

pub mod dns;
mod error;
pub mod hosts;
mod resolve;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::snapshot::Snapshot;

pub use crate::upstream::{Found, Locality};

pub use crate::upstream::source::{DiscoveryStatus, DnsFamily, DnsName, DnsSpec, Source};
pub use error::DiscoveryError;
pub use resolve::resolve;

/// The last endpoints discovered per cluster (and source), so that a
/// reload compiles a dns or file cluster with what is known instead of
/// starting empty.
fn known() -> &'static ArcSwap<HashMap<String, Vec<Found>>> {
    static KNOWN: OnceLock<ArcSwap<HashMap<String, Vec<Found>>>> = OnceLock::new();
    KNOWN.get_or_init(|| ArcSwap::from_pointee(HashMap::new()))
}

/// The cache key of a cluster's source.
pub fn key(cluster: &str, source: &Source) -> String {
    match source {
        Source::Static => cluster.to_string(),
        Source::Dns(d) => {
            let names: Vec<&str> = d.names.iter().map(|n| n.written.as_str()).collect();
            format!("{cluster}|dns|{}", names.join(","))
        }
        Source::File(p) => format!("{cluster}|file|{}", p.display()),
        Source::Xds { service, server } => format!("{cluster}|xds|{server}|{service}"),
    }
}

/// What is known for a cluster's source (empty if nothing yet).
pub fn last_known(key: &str) -> Vec<Found> {
    known().load().get(key).cloned().unwrap_or_default()
}

/// Remember what was applied.
pub fn remember(key: &str, found: &[Found]) {
    remember_many(&[(key, found)]);
}

/// Remember several sources' endpoints in one step (one copy of the map,
/// not one per source: an EDS response may carry thousands).
pub fn remember_many(items: &[(&str, &[Found])]) {
    if items.is_empty() {
        return;
    }
    known().rcu(|m| {
        let mut m = HashMap::clone(m);
        for (key, found) in items {
            m.insert((*key).to_string(), found.to_vec());
        }
        m
    });
}

/// The endpoints file: a JSON array of `{ "address", "weight", "zone" }`,
/// or a TOML file of `[[endpoints]]` tables. Host names are resolved
/// through the system resolver.
pub fn read_file(path: &Path) -> Result<Vec<Found>, DiscoveryError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        address: String,
        weight: Option<u32>,
        zone: Option<String>,
        region: Option<String>,
        priority: Option<u32>,
    }
    #[derive(serde::Deserialize)]
    struct TomlFile {
        endpoints: Vec<Entry>,
    }
    let text = std::fs::read_to_string(path).map_err(|error| DiscoveryError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let entries: Vec<Entry> = if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str::<TomlFile>(&text)
            .map_err(|e| DiscoveryError::file(path, e))?
            .endpoints
    } else {
        serde_json::from_str(&text).map_err(|e| DiscoveryError::file(path, e))?
    };
    let mut out = Vec::new();
    // Dedup in O(n): endpoint files can hold 10^5 entries.
    let mut seen = std::collections::HashSet::new();
    for e in entries {
        let weight = e.weight.unwrap_or(1);
        if !(1..=1000).contains(&weight) {
            return Err(DiscoveryError::file(
                path,
                format_args!("weight must be 1..1000, not {weight}"),
            ));
        }
        let priority = e.priority.unwrap_or(0);
        if priority > crate::upstream::locality::MAX_PRIORITY {
            return Err(DiscoveryError::file(
                path,
                format_args!(
                    "priority must be 0..{}, not {priority}",
                    crate::upstream::locality::MAX_PRIORITY
                ),
            ));
        }
        let locality = Locality::new(e.region.unwrap_or_default(), e.zone.unwrap_or_default());
        let addrs: Vec<SocketAddr> = match e.address.parse::<SocketAddr>() {
            Ok(a) => vec![a],
            Err(_) => std::net::ToSocketAddrs::to_socket_addrs(e.address.as_str())
                .map_err(|err| {
                    DiscoveryError::file(path, format_args!("cannot resolve {}: {err}", e.address))
                })?
                .collect(),
        };
        for a in addrs {
            if seen.insert(a) {
                out.push(Found {
                    address: a,
                    written: e.address.clone(),
                    weight,
                    locality: locality.clone(),
                    priority,
                });
            }
        }
    }
    Ok(out)
}

/// A change for the control thread to publish.
#[derive(Debug)]
pub struct Update {
    pub cluster: String,
    pub key: String,
    pub endpoints: Vec<Found>,
}

/// Start the discovery thread; `send` hands updates to the control thread.
/// Ends when the snapshot is gone.
pub fn spawn(
    snapshot: Weak<ArcSwap<Snapshot>>,
    send: impl Fn(Update) -> bool + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("outrigger-discovery".into())
        .spawn(move || {
            crate::rt::deprioritize_current_thread();
            run(&snapshot, &send);
        })
        .map(drop)
}

fn run(snapshot: &Weak<ArcSwap<Snapshot>>, send: &dyn Fn(Update) -> bool) {
    // Per source: when next to look, and the file's last content.
    let mut due: HashMap<String, Instant> = HashMap::new();
    let mut file_seen: HashMap<String, u64> = HashMap::new();
    loop {
        let Some(swap) = snapshot.upgrade() else {
            return;
        };
        let snap = swap.load_full();
        drop(swap);
        let now = Instant::now();
        for (name, c) in &snap.clusters {
            let k = key(name, &c.source);
            if due.get(&k).is_some_and(|d| *d > now) {
                continue;
            }
            let result = match &c.source {
                // EDS updates come from the xDS thread.
                Source::Static | Source::Xds { .. } => continue,
                Source::Dns(spec) => resolve(spec).map(|(found, ttl)| {
                    due.insert(k.clone(), now + spec.refresh.min(ttl));
                    found
                }),
                Source::File(path) => {
                    due.insert(k.clone(), now + Duration::from_millis(250));
                    let content = std::fs::read(path)
                        .map(|b| crate::fxhash::fnv1a(&b))
                        .unwrap_or(0);
                    if file_seen.get(&k) == Some(&content) {
                        continue;
                    }
                    file_seen.insert(k.clone(), content);
                    read_file(path)
                }
            };
            match result {
                Ok(found) => {
                    c.status.last_error.store(None);
                    let current: Vec<Found> = c
                        .endpoints
                        .iter()
                        .map(|e| Found {
                            address: e.address,
                            written: e.written.clone(),
                            weight: e.weight,
                            locality: e.locality.clone(),
                            priority: e.priority,
                        })
                        .collect();
                    if same(&current, &found) {
                        continue;
                    }
                    let update = Update {
                        cluster: name.clone(),
                        key: k.clone(),
                        endpoints: found,
                    };
                    if !send(update) {
                        return;
                    }
                }
                Err(e) => {
                    // The last good set stays.
                    c.status.failures.fetch_add(1, Relaxed);
                    tracing::warn!(cluster = %name, error = %e, "discovery failed; keeping the last endpoints");
                    c.status.last_error.store(Some(Arc::new(e.to_string())));
                    if matches!(c.source, Source::Dns(_)) {
                        due.insert(k.clone(), now + Duration::from_secs(1));
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn same(a: &[Found], b: &[Found]) -> bool {
    let key = |f: &Found| (f.address, f.weight, f.locality.clone(), f.priority);
    let mut a: Vec<_> = a.iter().map(key).collect();
    let mut b: Vec<_> = b.iter().map(key).collect();
    a.sort();
    b.sort();
    a == b
}
