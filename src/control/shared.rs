//! What the control thread shares with its observers, and what they may
//! ask of it: the [`Shared`] state the admin API and the tests read, and
//! the [`Event`]s they send. Below `admin` (which reads and sends them)
//! and above everything they describe; the control thread owns both ends.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::metrics::{ExportSource, ReloadStats, WorkerCells};
use crate::snapshot::Snapshot;
use crate::worker::WorkerInfo;

/// Something the control thread acts on.
#[derive(Debug)]
pub enum Event {
    /// SIGINT or SIGTERM: drain; a second one exits at once.
    Signal(i32),
    /// Something changed in the config file's directory.
    FileChanged,
    /// SIGHUP (`None`) or `POST /reload` (answered on the channel).
    Reload(Option<flume::Sender<ReloadOutcome>>),
    /// What SIGTERM does, for the reason given (`POST /drain`, `app
    /// exited`, ...), which the drain's log line names.
    Drain(&'static str),
    /// `POST /drain?exit_when_idle=1`: drain, and exit as soon as no
    /// connection is left whatever `runtime.drain` says.
    DrainWhenIdle,
    /// New endpoints for a dns, file or xds cluster.
    Discovered(crate::discovery::Update),
    /// New endpoints for several clusters at once (one EDS response):
    /// one generation for all of them.
    DiscoveredMany(Vec<crate::discovery::Update>),
    /// A new xDS overlay to compile with the config file and publish.
    Xds(crate::xds::Apply),
}

/// The answer to a reload request.
pub type ReloadOutcome = Result<ReloadDone, String>;

/// A successful reload.
#[derive(Debug, Clone, Copy)]
pub struct ReloadDone {
    pub generation: u64,
    pub duration: Duration,
}

/// What the admin API and tests read: the published snapshot, the workers
/// and every counter. Written only by the control thread and the workers'
/// single-writer cells.
#[derive(Debug)]
pub struct Shared {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub workers: Vec<WorkerInfo>,
    pub worker_stats: Vec<Arc<WorkerCells>>,
    pub reloads: ReloadStats,
    /// The last failed reload, cleared by the next success.
    pub last_reload_error: ArcSwapOption<ReloadFailure>,
    /// Bound address of each listener (port 0 resolved).
    pub addresses: ArcSwap<Vec<(String, SocketAddr)>>,
    /// Set when draining starts (`/ready` turns 503); the workers read it
    /// too, so a response after that instant says `Connection: close`.
    pub draining: Arc<AtomicBool>,
    pub started_at: SystemTime,
    /// Span export counters.
    pub export_stats: Arc<crate::trace::otlp::ExportStats>,
    /// The xDS client's state.
    pub xds: Arc<crate::xds::XdsStatus>,
}

/// A reload that was rejected.
#[derive(Debug, Clone)]
pub struct ReloadFailure {
    pub at: SystemTime,
    pub message: String,
}

impl Shared {
    /// The data an export reads.
    pub fn export<R>(&self, f: impl FnOnce(&ExportSource<'_>) -> R) -> R {
        let snapshot = self.snapshot.load();
        f(&ExportSource {
            snapshot: &snapshot,
            workers: &self.workers,
            worker_stats: &self.worker_stats,
            reloads: &self.reloads,
            started_at: self.started_at,
            export: Some(&self.export_stats),
            xds: Some(&self.xds),
        })
    }
}
