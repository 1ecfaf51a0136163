//! Worker threads: one per core, pinned, each with its own monoio runtime,
//! its own SO_REUSEPORT socket per listener and its own per-connection state.
//! This is where the stages are assembled: listener → (tcp relay | http).

pub mod driver;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use driver::Driver;

use crate::buffers::BufferPool;
use crate::config::Snapshot;
use crate::listener::{self, ListenerSocket};
use crate::metrics::ListenerCounters;
use crate::upstream::Balancers;

/// Messages from the control thread. Rare; never per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop accepting, let open connections finish, then exit.
    Drain,
}

/// What a worker reports once its runtime is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    pub index: usize,
    /// `outrigger-worker-{n}` (the kernel shows the first 15 bytes).
    pub name: String,
    /// The core it is pinned to, if pinned.
    pub core: Option<usize>,
    pub driver: Driver,
    /// Kernel thread id, for /proc.
    pub tid: i32,
}

/// Counters of one worker, readable from other threads.
#[derive(Debug)]
pub struct WorkerStats {
    /// Indexed like `Snapshot::listeners` at start.
    pub listeners: Vec<ListenerCounters>,
}

/// Everything a worker thread starts with.
#[derive(Debug)]
pub struct WorkerSpec {
    pub index: usize,
    pub core: Option<core_affinity::CoreId>,
    pub driver: Driver,
    pub sockets: Vec<ListenerSocket>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub stats: Arc<WorkerStats>,
    pub control: flume::Receiver<Control>,
    pub ready: std::sync::mpsc::Sender<Result<WorkerInfo, String>>,
}

/// Per-worker state shared by the worker's tasks (never across threads,
/// except `stats`, whose counters have this worker as their only writer).
#[derive(Debug)]
pub struct WorkerCtx {
    pub index: usize,
    pub driver: Driver,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub balancers: Balancers,
    pub stats: Arc<WorkerStats>,
    /// Set once draining starts.
    pub draining: Cell<bool>,
    /// Open downstream connections on this worker, all listeners.
    pub active: Cell<u64>,
    /// Relay buffers, rented while bytes move.
    pub buffers: BufferPool,
    /// Idle keep-alive connections to HTTP upstreams.
    pub http_pool: crate::http::pool::Pool,
}

/// io_uring submission queue size per worker.
const RING_ENTRIES: u32 = 1024;

/// Thread body of `outrigger-worker-{index}`.
pub fn run(spec: WorkerSpec) {
    let core = spec.core.and_then(|c| {
        if core_affinity::set_for_current(c) {
            Some(c.id)
        } else {
            tracing::warn!(
                worker = spec.index,
                core = c.id,
                "could not pin worker to its core"
            );
            None
        }
    });
    let info = WorkerInfo {
        index: spec.index,
        name: std::thread::current().name().unwrap_or("").to_string(),
        core,
        driver: spec.driver,
        // SAFETY: gettid has no preconditions and cannot fail.
        tid: unsafe { libc::gettid() },
    };
    let ready = spec.ready.clone();
    let driver = spec.driver;
    let result = driver::block_on(driver, RING_ENTRIES, move || worker_main(spec, info));
    if let Err(e) = result {
        let _ = ready.send(Err(format!("cannot start the {driver} runtime: {e}")));
    }
}

async fn worker_main(spec: WorkerSpec, info: WorkerInfo) {
    let runtime = spec.snapshot.load().runtime.clone();
    let ctx = Rc::new(WorkerCtx {
        buffers: BufferPool::new(runtime.buffer_size, runtime.buffer_pool_size),
        http_pool: crate::http::pool::Pool::default(),
        index: spec.index,
        driver: spec.driver,
        snapshot: spec.snapshot,
        balancers: Balancers::default(),
        stats: spec.stats,
        draining: Cell::new(false),
        active: Cell::new(0),
    });
    let canceller = monoio::io::Canceller::new();
    let mut loops = Vec::new();
    for socket in spec.sockets {
        match listener::AcceptLoop::new(ctx.clone(), socket, canceller.handle()) {
            Ok(l) => loops.push(monoio::spawn(l.run())),
            Err(e) => {
                let _ = spec.ready.send(Err(format!("worker {}: {e}", spec.index)));
                return;
            }
        }
    }
    let _ = spec.ready.send(Ok(info));
    // Any message, or the control side going away, starts the drain.
    let _ = spec.control.recv_async().await;
    ctx.draining.set(true);
    let _canceller = canceller.cancel();
    for l in loops {
        l.await;
    }
    while ctx.active.get() > 0 {
        monoio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tracing::debug!(worker = ctx.index, "worker drained");
}
