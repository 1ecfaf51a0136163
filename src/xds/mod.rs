//! The xDS client: one ADS stream (gRPC, state of the world) to a
//! management server such as istiod or go-control-plane, on a thread of
//! its own with a tokio current-thread runtime (never a worker).
//!
//! Clusters (CDS), listeners (LDS) and route configurations (RDS) are
//! translated into the same tables a config file holds and compiled with
//! the file, as an overlay: every applied update publishes a new snapshot
//! generation exactly as a reload does. Endpoints (EDS) go the way of DNS
//! and file discovery: a cluster's endpoint set changes under the running
//! snapshot, keeping the state of endpoints that stay. docs/discovery.md.

mod cluster;
mod convert;
mod endpoints;
mod fault;
mod listener;
mod overlay;
mod route;
mod session;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Weak};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::snapshot::Snapshot;

pub use crate::config::overlay::{strip_clashes, FileNames};
pub use cluster::{cluster as translate_cluster, XCluster};
pub use endpoints::assignment;
pub use listener::{listener as translate_listener, XListener};
pub use overlay::State;
pub use route::{route_config as translate_route_config, XRoutes};

pub use crate::snapshot::{XdsSettings, XdsTls};

/// The resource types Outrigger subscribes to, in the order ADS asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Cluster,
    Endpoint,
    Listener,
    Route,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Cluster, Kind::Endpoint, Kind::Listener, Kind::Route];

    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Kind::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Kind::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Kind::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    pub fn of(type_url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == type_url)
    }

    /// Short name, as metrics and `/config` show it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cluster => "cds",
            Kind::Endpoint => "eds",
            Kind::Listener => "lds",
            Kind::Route => "rds",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What `/config`, `/clusters` and the metrics say about the xDS client.
#[derive(Debug, Default)]
pub struct XdsStatus {
    pub connected: AtomicBool,
    /// Streams opened.
    pub connects: AtomicU64,
    /// Connection attempts and streams that failed.
    pub failures: AtomicU64,
    pub last_error: ArcSwapOption<String>,
    pub types: [TypeStatus; 4],
}

/// One resource type's state.
#[derive(Debug, Default)]
pub struct TypeStatus {
    /// The last version ACKed.
    pub version: ArcSwapOption<String>,
    pub acks: AtomicU64,
    pub nacks: AtomicU64,
    /// Resources held now.
    pub resources: AtomicU64,
    /// Unix seconds of the last response handled.
    pub last_update: AtomicU64,
    /// The error detail of the last NACK.
    pub last_error: ArcSwapOption<String>,
}

/// A change for the control thread: compile the config file's text with
/// this overlay and publish it. The answer is the new generation, or the
/// errors by config key (`clusters.NAME.…`, `listeners.NAME`, …).
#[derive(Debug)]
pub struct Apply {
    pub overlay: String,
    pub reply: flume::Sender<Result<u64, Vec<(String, String)>>>,
}

/// What the xDS thread hands to whoever runs the proxy (the control
/// thread): an overlay to compile and publish, or new endpoints.
#[derive(Debug)]
pub enum Report {
    Apply(Apply),
    Endpoints(Vec<crate::discovery::Update>),
}

/// Where reports go: `false` once nobody listens any more.
pub type Reporter = Box<dyn Fn(Report) -> bool + Send>;

/// Start the xDS thread. It idles while the config has no `[xds]`, and
/// ends when the snapshot is gone. It reports through `report` (it never
/// imports the control layer).
pub fn spawn(
    snapshot: Weak<ArcSwap<Snapshot>>,
    report: Reporter,
    status: Arc<XdsStatus>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("outrigger-xds".into())
        .spawn(move || {
            crate::rt::deprioritize_current_thread();
            session::run(&snapshot, report, &status);
        })
        .map(drop)
}

/// The settings of the running snapshot, if it still exists.
fn settings(snapshot: &Weak<ArcSwap<Snapshot>>) -> Option<Option<Arc<XdsSettings>>> {
    snapshot.upgrade().map(|s| s.load().xds.clone())
}
#[cfg(test)]
mod tests;
