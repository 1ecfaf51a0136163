//! Where a cluster's endpoints come from (static, dns, file, EDS) and the
//! discovery status carried with it: descriptions the cluster holds; the
//! `discovery` service above does the lookups.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use arc_swap::ArcSwapOption;

use super::{Found, Locality};

/// `dns_family`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFamily {
    Auto,
    V4,
    V6,
}

/// A `dns` cluster's names and settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsSpec {
    pub names: Vec<DnsName>,
    pub refresh: Duration,
    pub family: DnsFamily,
    /// Empty: `/etc/resolv.conf`'s.
    pub servers: Vec<SocketAddr>,
}

/// One name of a `dns` cluster, with what its addresses carry.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsName {
    pub host: String,
    /// 0: `host` is an SRV name (`_http._tcp.api.example.com`) whose
    /// records give targets, ports and weights.
    pub port: u16,
    /// As written in the config.
    pub written: String,
    pub weight: u32,
    pub locality: Locality,
    pub priority: u32,
}

impl DnsName {
    /// A name with weight 1, no locality, priority 0.
    pub fn new(host: impl Into<String>, port: u16, written: impl Into<String>) -> DnsName {
        DnsName {
            host: host.into(),
            port,
            written: written.into(),
            weight: 1,
            locality: Locality::default(),
            priority: 0,
        }
    }

    /// Add an address this name resolved to (once).
    pub(crate) fn push(
        &self,
        out: &mut Vec<Found>,
        address: SocketAddr,
        written: &str,
        weight: u32,
    ) {
        if !out.iter().any(|f| f.address == address) {
            out.push(Found {
                address,
                written: written.to_string(),
                weight,
                locality: self.locality.clone(),
                priority: self.priority,
            });
        }
    }
}

/// Where a cluster's endpoints come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Static,
    Dns(DnsSpec),
    File(PathBuf),
    /// EDS, through the xDS client.
    Xds {
        /// The resource (service) name.
        service: String,
        /// The management server's address (`[xds] address`), so that
        /// what one server said is never taken for another's.
        server: String,
    },
}

/// What `/clusters` and the metrics say about a cluster's discovery;
/// carried across snapshots by cluster name.
#[derive(Debug, Default)]
pub struct DiscoveryStatus {
    pub updates: AtomicU64,
    pub failures: AtomicU64,
    /// Unix seconds of the last applied update.
    pub last_update: AtomicU64,
    pub last_error: ArcSwapOption<String>,
}
