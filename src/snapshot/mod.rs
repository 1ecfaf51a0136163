//! The runtime configuration: one immutable [`Snapshot`] per generation,
//! published through an `ArcSwap` and read by every worker and service.
//! It holds compiled settings and the runtime objects they need (metric
//! cells, limiters, balancing plans). `config` is the only code that
//! builds one (from TOML); nothing here reads TOML.

mod settings;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use settings::*;

use crate::route::RouteTable;
use crate::upstream::Cluster;

/// A fully validated, immutable configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// Where it came from.
    pub source: PathBuf,
    /// 1 for the config the process started with, +1 per successful reload.
    pub generation: u64,
    /// When it was compiled.
    pub loaded_at: std::time::SystemTime,
    /// The file's text as read (served by the admin API's `/config`).
    pub text: String,
    /// `[access_log]`; `None` when absent.
    pub access_log: Option<AccessLogSettings>,
    /// FNV-1a hash of the file's bytes, to tell configs apart in logs.
    pub content_hash: u64,
    pub runtime: RuntimeSettings,
    pub admin: AdminSettings,
    /// `[metrics]`: the read-only scrape listener, when configured.
    pub metrics: Option<MetricsSettings>,
    /// Sorted by name.
    pub listeners: Vec<Listener>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    pub route_tables: BTreeMap<String, Arc<RouteTable>>,
    /// `[identity]`.
    pub identity: Option<Arc<crate::tls::spiffe::Identity>>,
    /// `[tracing]`.
    pub tracing: Option<Arc<crate::trace::TracingSettings>>,
    /// `[xds]`.
    pub xds: Option<Arc<XdsSettings>>,
    /// `[node]` (or `OUTRIGGER_REGION` / `OUTRIGGER_ZONE`): where this
    /// proxy runs.
    pub node: crate::upstream::Locality,
    /// Certificate, key and CA files the config reads, and a hash of their
    /// contents: a change to one reloads like a change to the config.
    pub material: Vec<PathBuf>,
    pub material_hash: u64,
}

/// `[runtime]`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSettings {
    pub workers: Workers,
    pub io: IoMode,
    pub pin_workers: PinWorkers,
    pub drain_timeout: Duration,
    /// Inbound listeners keep accepting this long after a drain starts.
    pub drain_inbound_delay: Duration,
    /// Exit as soon as the drain leaves no connection (else at the timeout).
    pub exit_when_idle: bool,
    pub buffer_size: usize,
    pub buffer_pool_size: usize,
    /// Overload protection (`worker::overload`): a heap limit (`None`:
    /// off) and a share of the cgroup's memory limit (0: off).
    pub max_heap_bytes: Option<u64>,
    pub overload_memory_percent: u64,
}

impl RuntimeSettings {
    /// The number of workers `workers` resolves to on this machine.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            Workers::Count(n) => n,
            Workers::Auto => crate::rt::cpus::Cpus::get().default_workers(),
        }
    }

    /// Whether workers are pinned on this machine.
    pub fn pinned(&self) -> bool {
        match self.pin_workers {
            PinWorkers::Always => true,
            PinWorkers::Never => false,
            PinWorkers::Auto => crate::rt::cpus::Cpus::get().exclusive(),
        }
    }
}

/// `[access_log]`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSettings {
    pub target: AccessLogTarget,
    pub format: AccessLogFormat,
    pub buffer_bytes: usize,
    pub flush_interval: Duration,
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    File(PathBuf),
}

impl std::fmt::Display for AccessLogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessLogTarget::Stdout => f.write_str("stdout"),
            AccessLogTarget::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// `[admin]`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    pub address: SocketAddr,
    /// `admin.redact`: key names (lower case) whose values `/config` hides.
    pub redact: Vec<String>,
}

/// `[metrics]`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    pub address: SocketAddr,
}

/// One listener, compiled.
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    /// Per-worker counters, carried across reloads by name.
    pub stats: Arc<crate::metrics::ListenerStats>,
    pub address: SocketAddr,
    pub protocol: ListenerProtocol,
    /// Across all workers; see `docs/configuration.md` for how it is split.
    pub max_connections: u64,
    pub idle_timeout: Duration,
    /// tcp: when to relay with splice(2).
    pub splice: SpliceMode,
    /// tcp: the pipe a spliced direction asks for, bytes.
    pub splice_pipe_size: usize,
    /// Accept queue length of each worker's socket.
    pub backlog: u32,
    /// http listeners: codec limits and timeouts.
    pub http: HttpSettings,
    /// `rate_limit.connections_per_second`, shared by every worker.
    pub rate_limit: Option<Arc<crate::resilience::RateLimiter>>,
    /// `tls`: terminate TLS on this listener.
    pub tls: Option<Arc<crate::tls::ListenerTls>>,
    /// `allow_identities` / `deny_identities`.
    pub authz: Option<Arc<crate::tls::spiffe::Authz>>,
    /// Read each connection's original destination (transparent mode).
    pub original_destination: bool,
    /// `inbound = true`: kept accepting for `drain_inbound_delay`.
    pub inbound: bool,
}

/// Limits of an http listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    pub max_request_header_bytes: usize,
    pub max_headers: usize,
    pub header_timeout: Duration,
    pub max_request_body_bytes: Option<u64>,
    pub upstream_read_timeout: Duration,
    pub request_body_timeout: Duration,
    pub send_timeout: Duration,
    /// HTTP/2 next to HTTP/1.1 (`None`: `http2 = false`).
    pub http2: Option<Http2Settings>,
    /// How request paths are normalised before routing.
    pub paths: crate::http::normalize::PathPolicy,
    /// TLS: Host must name the SNI host when both are present (else 421).
    pub sni_host_match: bool,
}

/// What a listener does with its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerProtocol {
    /// Relay bytes to this cluster (the default when `sni` names none).
    Tcp {
        cluster: Option<String>,
        /// `sni_routes`: the cluster by the ClientHello's server name.
        sni: Option<Arc<crate::tls::sni::SniRouting>>,
    },
    /// Route HTTP requests with this table.
    Http { routes: String },
    /// Detect the protocol from the first bytes: HTTP/1.x and the HTTP/2
    /// preface to `routes`, a TLS ClientHello to TLS termination (with
    /// `tls`) or else `cluster`, anything else or silence to `cluster`.
    Auto {
        routes: String,
        cluster: Option<String>,
        detect_timeout: Duration,
    },
}

impl ListenerProtocol {
    /// The route table of an http or auto listener.
    pub fn routes(&self) -> Option<&str> {
        match self {
            ListenerProtocol::Http { routes } | ListenerProtocol::Auto { routes, .. } => {
                Some(routes)
            }
            ListenerProtocol::Tcp { .. } => None,
        }
    }
}

impl Snapshot {
    /// A copy to change one part of (a discovery update); `apply` then
    /// gives it its generation.
    pub fn derive(&self) -> Snapshot {
        Snapshot {
            source: self.source.clone(),
            generation: self.generation,
            loaded_at: std::time::SystemTime::now(),
            text: self.text.clone(),
            access_log: self.access_log.clone(),
            content_hash: self.content_hash,
            runtime: self.runtime.clone(),
            admin: self.admin.clone(),
            metrics: self.metrics.clone(),
            listeners: self.listeners.clone(),
            clusters: self.clusters.clone(),
            route_tables: self.route_tables.clone(),
            identity: self.identity.clone(),
            tracing: self.tracing.clone(),
            xds: self.xds.clone(),
            node: self.node.clone(),
            material: self.material.clone(),
            material_hash: self.material_hash,
        }
    }

    /// The listener with this name.
    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name == name)
    }

    /// Take over the metric cells of `previous` for every listener, route,
    /// cluster and endpoint that keeps its name (endpoints: cluster and
    /// address), so counters run on across a reload. Called on a freshly
    /// compiled snapshot, whose `Arc`s nothing else holds yet.
    pub fn adopt_stats(&mut self, previous: &Snapshot) {
        for l in &mut self.listeners {
            if let Some(old) = previous.listener(&l.name) {
                l.stats = old.stats.clone();
                l.rate_limit = same_limiter(&l.rate_limit, &old.rate_limit);
            }
        }
        for (name, cluster) in &mut self.clusters {
            let (Some(old), Some(new)) = (previous.clusters.get(name), Arc::get_mut(cluster))
            else {
                continue;
            };
            new.stats = old.stats.clone();
            new.status = old.status.clone();
            // By address in O(n + m): clusters can hold 10^5 endpoints.
            let by_address: std::collections::HashMap<_, _> =
                old.endpoints.iter().map(|o| (o.address, o)).collect();
            for ep in &mut new.endpoints {
                if let Some(o) = by_address.get(&ep.address) {
                    ep.stats = o.stats.clone();
                    ep.health = o.health.clone();
                    if new.health_check.is_none() {
                        ep.health.clear_check();
                    }
                }
            }
        }
        for (name, table) in &mut self.route_tables {
            let (Some(old), Some(new)) = (previous.route_tables.get(name), Arc::get_mut(table))
            else {
                continue;
            };
            for r in &mut new.routes {
                if let Some(o) = old.routes.iter().find(|o| o.name == r.name) {
                    r.stats = o.stats.clone();
                    r.rate_limit = same_limiter(&r.rate_limit, &o.rate_limit);
                }
            }
        }
    }

    /// Things that are valid but probably not what the operator wants;
    /// `check` prints them and `run` logs them.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.admin.address.ip().is_loopback() {
            out.push(format!(
                "admin.address: {} is not a loopback address: anyone who can reach it can reload and drain this proxy",
                self.admin.address
            ));
        }
        for (name, c) in &self.clusters {
            if c.locality == crate::upstream::LocalityMode::PreferLocal && self.node.is_empty() {
                out.push(format!(
                    "clusters.{name}.locality = \"prefer_local\", but this proxy has no [node] region or zone (nor OUTRIGGER_REGION / OUTRIGGER_ZONE): no endpoint is nearer than another"
                ));
            }
        }
        for l in &self.listeners {
            if l.tls.as_ref().is_some_and(|t| t.plaintext_permitted) {
                out.push(format!(
                    "listeners.{}.tls.plaintext = \"permit\": clients that skip TLS are served in plaintext with no identity (migration only; see docs/security.md)",
                    l.name
                ));
            }
        }
        out
    }

    /// Every certificate this snapshot presents (admin `/certs`, expiry
    /// metrics).
    pub fn certificates(&self) -> Vec<crate::tls::CertInfo> {
        use crate::tls::CertInfo;
        let mut out = Vec::new();
        if let Some(id) = &self.identity {
            out.extend(CertInfo::of("identity".into(), &id.cert));
        }
        for l in &self.listeners {
            for (label, key) in l.tls.iter().flat_map(|t| t.certs.iter()) {
                out.extend(CertInfo::of(format!("listener {} ({label})", l.name), key));
            }
        }
        for (name, c) in &self.clusters {
            if let Some(key) = c.tls.as_ref().and_then(|t| t.client_cert.as_ref()) {
                out.extend(CertInfo::of(format!("cluster {name}"), key));
            }
        }
        out
    }

    /// One line for `outrigger check` and the start-up log.
    pub fn summary(&self) -> String {
        let routes: usize = self.route_tables.values().map(|t| t.routes.len()).sum();
        let endpoints: usize = self.clusters.values().map(|c| c.endpoints.len()).sum();
        format!(
            "{} listener(s), {} cluster(s) with {} endpoint(s), {} route table(s) with {} route(s)",
            self.listeners.len(),
            self.clusters.len(),
            endpoints,
            self.route_tables.len(),
            routes
        )
    }
}

/// The previous limiter (with its state) when the settings did not change.
fn same_limiter(
    new: &Option<Arc<crate::resilience::RateLimiter>>,
    old: &Option<Arc<crate::resilience::RateLimiter>>,
) -> Option<Arc<crate::resilience::RateLimiter>> {
    match (new, old) {
        (Some(n), Some(o)) if n.per_second == o.per_second && n.burst == o.burst => Some(o.clone()),
        _ => new.clone(),
    }
}
