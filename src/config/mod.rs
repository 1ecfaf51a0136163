//! Configuration: the TOML file (`file`), its values (`value`), the compiler
//! that validates it into an immutable [`Snapshot`] (`compile`, `routes`), and
//! errors that carry file, line, column and key (`error`).
//!
//! Static settings (`[runtime]`, `[admin]`, listener addresses) and hot ones
//! (routes, clusters) live in the same snapshot; the control plane decides
//! which may change on reload.

pub mod compile;
pub mod error;
pub mod file;
mod routes;
pub mod value;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use compile::compile;
pub use error::{ConfigError, ConfigErrors};
pub use file::IoMode;
pub use value::Workers;

use crate::route::RouteTable;
use crate::upstream::Cluster;

/// The demo config, compiled into the binary (`outrigger demo`).
pub const DEMO_CONFIG: &str = include_str!("../../configs/demo.toml");

/// A fully validated, immutable configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// Where it came from.
    pub source: PathBuf,
    /// FNV-1a hash of the file's bytes, to tell configs apart in logs.
    pub content_hash: u64,
    pub runtime: RuntimeSettings,
    pub admin: AdminSettings,
    /// Sorted by name.
    pub listeners: Vec<Listener>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    pub route_tables: BTreeMap<String, Arc<RouteTable>>,
}

/// `[runtime]`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSettings {
    pub workers: Workers,
    pub io: IoMode,
    pub pin_workers: bool,
    pub drain_timeout: Duration,
    pub buffer_size: usize,
    pub buffer_pool_size: usize,
}

/// `[admin]`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    pub address: SocketAddr,
}

/// One listener, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: ListenerProtocol,
    /// Across all workers; see `docs/configuration.md` for how it is split.
    pub max_connections: u64,
    pub idle_timeout: Duration,
    /// tcp: when to relay with splice(2).
    pub splice: file::SpliceMode,
    /// Accept queue length of each worker's socket.
    pub backlog: u32,
    /// http listeners: codec limits and timeouts.
    pub http: HttpSettings,
}

/// Limits of an http listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    pub max_request_header_bytes: usize,
    pub max_headers: usize,
    pub header_timeout: Duration,
    pub max_request_body_bytes: Option<u64>,
    pub upstream_read_timeout: Duration,
}

/// What a listener does with its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerProtocol {
    /// Relay bytes to this cluster.
    Tcp { cluster: String },
    /// Route HTTP requests with this table.
    Http { routes: String },
}

impl Snapshot {
    /// The listener with this name.
    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name == name)
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

/// Read and compile a config file.
pub fn load(path: &Path) -> Result<Snapshot, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::single(path.to_path_buf(), "", format!("cannot read the file: {e}"))
    })?;
    compile(path, &text)
}
