//! The control side: start the workers (the supervisor), hold the published
//! snapshot, and turn SIGINT/SIGTERM into a drain. Never on the data path.

mod signals;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

pub use signals::{run_until_signal, SignalWatch, EXIT_FORCED};

use crate::config::{Snapshot, Workers};
use crate::listener::{self, ListenerSocket};
use crate::metrics::{ListenerCounters, ListenerTotals};
use crate::worker::{self, driver, Control, WorkerInfo, WorkerSpec, WorkerStats};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Driver(#[from] driver::DriverUnavailable),
    #[error("cannot bind listener \"{listener}\" on {address}: {source}")]
    Bind {
        listener: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start worker thread: {0}")]
    Spawn(std::io::Error),
    #[error("worker failed to start: {0}")]
    Worker(String),
}

/// A running proxy: its workers, their sockets and counters.
#[derive(Debug)]
pub struct Server {
    threads: Vec<JoinHandle<()>>,
    controls: Vec<flume::Sender<Control>>,
    workers: Vec<WorkerInfo>,
    stats: Vec<Arc<WorkerStats>>,
    addresses: Vec<(String, SocketAddr)>,
    snapshot: Arc<ArcSwap<Snapshot>>,
}

/// How long start-up waits for every worker to report in.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Start workers for `snapshot` and return once every worker serves every listener.
pub fn start(snapshot: Snapshot) -> Result<Server, StartError> {
    let driver = driver::choose(snapshot.runtime.io)?;
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let n = match snapshot.runtime.workers {
        Workers::Count(n) => n,
        Workers::Auto if cores.is_empty() => {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
        Workers::Auto => cores.len(),
    };
    if snapshot.runtime.pin_workers && n > cores.len() {
        tracing::warn!(
            workers = n,
            cores = cores.len(),
            "more workers than cores; some share a core"
        );
    }
    let sockets = bind_all(&snapshot, n, driver)?;
    let snapshot = Arc::new(ArcSwap::from_pointee(snapshot));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut server = Server {
        threads: Vec::with_capacity(n),
        controls: Vec::with_capacity(n),
        workers: Vec::with_capacity(n),
        stats: Vec::with_capacity(n),
        addresses: Vec::new(),
        snapshot: snapshot.clone(),
    };
    let listener_count = snapshot.load().listeners.len();
    for (index, worker_sockets) in sockets.into_iter().enumerate() {
        if index == 0 {
            server.addresses = worker_sockets
                .iter()
                .filter_map(|s| Some((s.name.clone(), s.socket.local_addr().ok()?)))
                .collect();
        }
        let stats = Arc::new(WorkerStats {
            listeners: (0..listener_count)
                .map(|_| ListenerCounters::default())
                .collect(),
        });
        let (tx, rx) = flume::unbounded();
        let spec = WorkerSpec {
            index,
            core: if snapshot.load().runtime.pin_workers && !cores.is_empty() {
                Some(cores[index % cores.len()])
            } else {
                None
            },
            driver,
            sockets: worker_sockets,
            snapshot: snapshot.clone(),
            stats: stats.clone(),
            control: rx,
            ready: ready_tx.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("outrigger-worker-{index}"))
            .spawn(move || worker::run(spec))
            .map_err(StartError::Spawn)?;
        server.threads.push(thread);
        server.controls.push(tx);
        server.stats.push(stats);
    }
    drop(ready_tx);
    let deadline = Instant::now() + START_TIMEOUT;
    while server.workers.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match ready_rx.recv_timeout(left) {
            Ok(Ok(info)) => server.workers.push(info),
            Ok(Err(e)) => return Err(StartError::Worker(e)),
            Err(_) => return Err(StartError::Worker("a worker did not report in time".into())),
        }
    }
    server.workers.sort_by_key(|w| w.index);
    let cores_used: Vec<String> = server
        .workers
        .iter()
        .map(|w| w.core.map_or("-".into(), |c| c.to_string()))
        .collect();
    tracing::info!(
        workers = n,
        cores = cores.len(),
        pinned_to = %cores_used.join(","),
        driver = %driver,
        "workers started"
    );
    for (name, addr) in &server.addresses {
        tracing::info!(listener = %name, address = %addr, "listening");
    }
    Ok(server)
}

/// Bind every listener once per worker. The first socket of a listener
/// binds the configured address; the rest bind the address it got, so that
/// port 0 means one port shared by all workers.
fn bind_all(
    snapshot: &Snapshot,
    workers: usize,
    driver: worker::Driver,
) -> Result<Vec<Vec<ListenerSocket>>, StartError> {
    let mut per_worker: Vec<Vec<ListenerSocket>> = (0..workers).map(|_| Vec::new()).collect();
    for (index, l) in snapshot.listeners.iter().enumerate() {
        let mut addr = l.address;
        for (w, sockets) in per_worker.iter_mut().enumerate() {
            let socket = listener::bind(addr, l.backlog as i32, driver).map_err(|source| {
                StartError::Bind {
                    listener: l.name.clone(),
                    address: addr,
                    source,
                }
            })?;
            if w == 0 {
                addr = socket.local_addr().map_err(|source| StartError::Bind {
                    listener: l.name.clone(),
                    address: addr,
                    source,
                })?;
            }
            sockets.push(ListenerSocket {
                index,
                name: l.name.clone(),
                socket,
                max_connections: listener::worker_share(l.max_connections, workers, w),
            });
        }
    }
    Ok(per_worker)
}

impl Server {
    /// The bound address of a listener (port 0 resolved).
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.addresses
            .iter()
            .find(|(n, _)| n == listener)
            .map(|(_, a)| *a)
    }

    /// The running workers.
    pub fn workers(&self) -> &[WorkerInfo] {
        &self.workers
    }

    /// The snapshot in use.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// A listener's counters summed over workers.
    pub fn listener_totals(&self, listener: &str) -> Option<ListenerTotals> {
        let index = self
            .snapshot
            .load()
            .listeners
            .iter()
            .position(|l| l.name == listener)?;
        let mut t = ListenerTotals::default();
        for s in &self.stats {
            t.add(&s.listeners[index]);
        }
        Some(t)
    }

    /// Open downstream connections, all listeners, all workers.
    pub fn active_connections(&self) -> u64 {
        self.stats
            .iter()
            .flat_map(|s| s.listeners.iter())
            .map(|c| c.active.get())
            .sum()
    }

    /// Stop accepting everywhere; workers exit once their connections end.
    pub fn drain(&self) {
        for c in &self.controls {
            let _ = c.send(Control::Drain);
        }
    }

    /// Whether every worker thread has exited.
    pub fn finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Drain and wait up to `timeout`; true when every worker exited in time.
    pub fn shutdown(self, timeout: Duration) -> bool {
        self.drain();
        let deadline = Instant::now() + timeout;
        while !self.finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !self.finished() {
            return false;
        }
        for t in self.threads {
            let _ = t.join();
        }
        true
    }
}
