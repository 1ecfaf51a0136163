//! The control side: start the workers (the supervisor), hold the published
//! snapshot, apply reloads, and run the `outrigger-control` thread that
//! turns signals, file changes and admin requests into reloads and drains.
//! Never on the data path.

mod reload;
mod run;
pub mod shared;
mod signals;
mod watch;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};

pub use reload::ReloadError;
pub use run::{Options, Proxy};
pub use shared::{Event, ReloadDone, ReloadFailure, ReloadOutcome, Shared};
pub use signals::{SignalWatch, EXIT_FORCED};

use crate::access_log::{self, LogMsg, WorkerLog};
use crate::listener::{self, ListenerSocket};
use crate::metrics::{ListenerTotals, ReloadStats, WorkerCells};
use crate::snapshot::Snapshot;
use crate::worker::{self, driver, Command, Driver, WorkerInfo, WorkerSpec};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Driver(#[from] driver::DriverUnavailable),
    // `cause`, not `source`: the message already names it, and a source
    // would be printed a second time by the error chain.
    #[error("cannot bind listener \"{listener}\" on {address}: {cause}")]
    Bind {
        listener: String,
        address: SocketAddr,
        cause: std::io::Error,
    },
    #[error("cannot bind the admin API on {address}: {cause}")]
    Admin {
        address: SocketAddr,
        cause: std::io::Error,
    },
    #[error("cannot bind the metrics listener on {address}: {cause}")]
    Metrics {
        address: SocketAddr,
        cause: std::io::Error,
    },
    #[error("access_log.path: cannot open \"{path}\": {cause}")]
    AccessLog { path: String, cause: std::io::Error },
    #[error("cannot start a thread: {0}")]
    Spawn(std::io::Error),
    #[error("worker failed to start: {0}")]
    Worker(String),
}

/// One listener as bound: its configured and actual address.
#[derive(Debug, Clone)]
struct Bound {
    name: String,
    configured: SocketAddr,
    local: SocketAddr,
}

/// A running proxy: its workers, their sockets and counters.
#[derive(Debug)]
pub struct Server {
    threads: Vec<JoinHandle<()>>,
    controls: Vec<flume::Sender<Command>>,
    shared: Arc<Shared>,
    bound: Vec<Bound>,
    driver: Driver,
    log_tx: flume::Sender<LogMsg>,
    log_thread: Option<JoinHandle<()>>,
}

/// How long start-up waits for every worker to report in.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Start workers for `snapshot` and return once every worker serves every listener.
pub fn start(snapshot: Snapshot) -> Result<Server, StartError> {
    let driver = driver::choose(snapshot.runtime.io)?;
    let cpus = crate::rt::cpus::Cpus::get();
    let cores = cpus.allowed.clone();
    let n = snapshot.runtime.worker_count();
    let pin = snapshot.runtime.pinned();
    if pin && n > cores.len() {
        tracing::warn!(
            workers = n,
            cores = cores.len(),
            "more workers than cores; some share a core"
        );
    }
    if let Some(a) = &snapshot.access_log {
        access_log::check_target(&a.target).map_err(|cause| StartError::AccessLog {
            path: a.target.to_string(),
            cause,
        })?;
    }
    let mut bound = Vec::new();
    let mut sockets: Vec<Vec<ListenerSocket>> = (0..n).map(|_| Vec::new()).collect();
    for l in &snapshot.listeners {
        let (b, per_worker) = bind_listener(&l.name, l.address, l.backlog, n, driver, false)?;
        bound.push(b);
        for (w, s) in per_worker.into_iter().enumerate() {
            sockets[w].push(s);
        }
    }
    let (log_tx, log_thread) = access_log::spawn_writer().map_err(StartError::Spawn)?;
    let _ = log_tx.send(LogMsg::Target(
        snapshot.access_log.as_ref().map(|a| a.target.clone()),
    ));
    let snapshot = Arc::new(ArcSwap::from_pointee(snapshot));
    // Ends by itself once the snapshot is gone; never joined.
    crate::upstream::prober::spawn(Arc::downgrade(&snapshot)).map_err(StartError::Spawn)?;
    // Spans: a bounded queue to one exporter thread (sized at start).
    let queue = snapshot
        .load()
        .tracing
        .as_ref()
        .map_or(8192, |t| t.max_queue_spans);
    let (spans_tx, spans_rx) = flume::bounded(queue);
    let export_stats = Arc::new(crate::trace::otlp::ExportStats::default());
    crate::trace::otlp::spawn(Arc::downgrade(&snapshot), spans_rx, export_stats.clone())
        .map_err(StartError::Spawn)?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let draining = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::with_capacity(n);
    let mut controls = Vec::with_capacity(n);
    let mut worker_stats = Vec::with_capacity(n);
    for (index, worker_sockets) in sockets.into_iter().enumerate() {
        let stats = Arc::new(WorkerCells::default());
        let (tx, rx) = flume::unbounded();
        let spec = WorkerSpec {
            index,
            workers: n,
            core: (pin && !cores.is_empty()).then(|| cores[index % cores.len()]),
            driver,
            sockets: worker_sockets,
            snapshot: snapshot.clone(),
            log: WorkerLog::new(log_tx.clone(), stats.clone()),
            stats: stats.clone(),
            control: rx,
            ready: ready_tx.clone(),
            process_draining: draining.clone(),
            spans: spans_tx.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("outrigger-worker-{index}"))
            .spawn(move || worker::run(spec))
            .map_err(StartError::Spawn)?;
        threads.push(thread);
        controls.push(tx);
        worker_stats.push(stats);
    }
    drop(ready_tx);
    let mut workers = Vec::with_capacity(n);
    let deadline = Instant::now() + START_TIMEOUT;
    while workers.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match ready_rx.recv_timeout(left) {
            Ok(Ok(info)) => workers.push(info),
            Ok(Err(e)) => return Err(StartError::Worker(e)),
            Err(_) => return Err(StartError::Worker("a worker did not report in time".into())),
        }
    }
    workers.sort_by_key(|w: &WorkerInfo| w.index);
    let cores_used: Vec<String> = workers
        .iter()
        .map(|w| w.core.map_or("-".into(), |c| c.to_string()))
        .collect();
    tracing::info!(
        workers = n,
        cores = cores.len(),
        cpu_quota = %cpus.quota.map_or("none".to_string(), |q| format!("{q:.2}")),
        pinned_to = %if pin { cores_used.join(",") } else { "none".to_string() },
        driver = %driver,
        "workers started"
    );
    for b in &bound {
        tracing::info!(listener = %b.name, address = %b.local, "listening");
    }
    let shared = Arc::new(Shared {
        snapshot,
        workers,
        worker_stats,
        reloads: ReloadStats::default(),
        last_reload_error: ArcSwapOption::empty(),
        addresses: ArcSwap::from_pointee(addresses(&bound)),
        draining,
        export_stats,
        xds: Arc::default(),
        started_at: SystemTime::now(),
    });
    Ok(Server {
        threads,
        controls,
        shared,
        bound,
        driver,
        log_tx,
        log_thread: Some(log_thread),
    })
}

fn addresses(bound: &[Bound]) -> Vec<(String, SocketAddr)> {
    bound.iter().map(|b| (b.name.clone(), b.local)).collect()
}

/// Bind one listener once per worker. The first socket binds the configured
/// address; the rest bind the address it got, so that port 0 means one port
/// shared by all workers.
fn bind_listener(
    name: &str,
    configured: SocketAddr,
    backlog: u32,
    workers: usize,
    driver: Driver,
    ours: bool,
) -> Result<(Bound, Vec<ListenerSocket>), StartError> {
    let err = |address, cause| StartError::Bind {
        listener: name.to_string(),
        address,
        cause,
    };
    // Only this process's own worker sockets may share a port: first make
    // sure no other socket holds it (unless one of our listeners does).
    let addr = if ours {
        configured
    } else {
        listener::probe_exclusive(configured).map_err(|e| err(configured, e))?
    };
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = listener::bind(addr, backlog as i32, driver).map_err(|e| err(addr, e))?;
        sockets.push(ListenerSocket {
            name: name.to_string(),
            configured,
            socket,
        });
    }
    let bound = Bound {
        name: name.to_string(),
        configured,
        local: addr,
    };
    Ok((bound, sockets))
}

impl Server {
    /// The bound address of a listener (port 0 resolved).
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.bound
            .iter()
            .find(|b| b.name == listener)
            .map(|b| b.local)
    }

    /// The running workers.
    pub fn workers(&self) -> &[WorkerInfo] {
        &self.shared.workers
    }

    /// The snapshot in use.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// What the admin API reads.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// A listener's counters summed over workers.
    pub fn listener_totals(&self, listener: &str) -> Option<ListenerTotals> {
        let snapshot = self.shared.snapshot.load();
        Some(ListenerTotals::of(&snapshot.listener(listener)?.stats))
    }

    /// Open downstream connections, all listeners, all workers.
    pub fn active_connections(&self) -> u64 {
        self.shared
            .worker_stats
            .iter()
            .map(|w| w.active.get())
            .sum()
    }

    /// Idle keep-alive connections parked, all workers.
    pub fn parked_connections(&self) -> u64 {
        self.shared
            .worker_stats
            .iter()
            .map(|w| w.parked.get())
            .sum()
    }

    /// Relay buffers held by connections, all workers.
    pub fn buffers_rented(&self) -> u64 {
        self.shared
            .worker_stats
            .iter()
            .map(|w| w.buffers_rented.get())
            .sum()
    }

    /// Mark the proxy draining (`/ready` 503, responses say
    /// `Connection: close`) and stop the named listeners on every worker,
    /// leaving the others accepting (the inbound delay of a drain).
    pub fn drain_except(&self, keep: &[String]) {
        self.shared
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for l in &self.shared.snapshot.load().listeners {
            if keep.contains(&l.name) {
                continue;
            }
            for c in &self.controls {
                let _ = c.send(Command::RemoveListener(l.name.clone()));
            }
        }
    }

    /// Stop accepting everywhere; workers exit once their connections end.
    pub fn drain(&self) {
        self.shared
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for c in &self.controls {
            let _ = c.send(Command::Drain);
        }
    }

    /// Whether every worker thread has exited.
    pub fn finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Drain and wait up to `timeout`; true when every worker exited in time.
    pub fn shutdown(mut self, timeout: Duration) -> bool {
        self.drain();
        let deadline = Instant::now() + timeout;
        while !self.finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !self.finished() {
            return false;
        }
        self.join();
        true
    }

    /// Join exited workers and the log writer (after its last lines).
    pub(crate) fn join(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.controls.clear();
        // The workers flushed their buffers before exiting; everything they
        // sent is ahead of this message.
        let _ = self.log_tx.send(LogMsg::Shutdown);
        if let Some(t) = self.log_thread.take() {
            let _ = t.join();
        }
    }
}
