//! Worker threads: one per core, pinned, each with its own monoio runtime,
//! its own SO_REUSEPORT socket per listener and its own per-connection state.
//! This is where the stages are assembled: listener → (tcp relay | http).

pub use crate::rt::cpus;
pub mod ctx;
pub mod driver;
pub mod memory;
pub mod overload;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

pub use ctx::{ListenerHandle, WorkerCtx};
pub use driver::Driver;

use crate::access_log::WorkerLog;
use crate::buffers::BufferPool;
use crate::listener::{self, ListenerSocket};
use crate::metrics::WorkerCells;
use crate::snapshot::Snapshot;
use crate::upstream::Balancers;

/// Messages from the control thread. Rare; never per request.
#[derive(Debug)]
pub enum Command {
    /// Stop accepting, let open connections finish, then exit.
    Drain,
    /// A listener added (or moved) by a reload: accept on this socket. The
    /// snapshot that names it is published before this is sent.
    AddListener(ListenerSocket),
    /// A listener removed (or moved) by a reload: stop accepting on it and
    /// let its connections finish (keep-alive ones close after their
    /// current request).
    RemoveListener(String),
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

/// Everything a worker thread starts with.
#[derive(Debug)]
pub struct WorkerSpec {
    pub index: usize,
    pub workers: usize,
    pub core: Option<core_affinity::CoreId>,
    pub driver: Driver,
    pub sockets: Vec<ListenerSocket>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub stats: Arc<WorkerCells>,
    pub log: WorkerLog,
    pub control: flume::Receiver<Command>,
    pub ready: std::sync::mpsc::Sender<Result<WorkerInfo, String>>,
    /// The process-wide drain flag, set before the workers get `Drain`.
    pub process_draining: Arc<std::sync::atomic::AtomicBool>,
    /// Finished spans to the exporter thread (bounded; never waited on).
    pub spans: flume::Sender<crate::trace::otlp::SpanData>,
}

/// io_uring submission queue size per worker.
const RING_ENTRIES: u32 = 1024;

/// How often the worker's housekeeping tick runs (event-loop lag, log flush).
const TICK: Duration = Duration::from_millis(100);

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
        buffers: BufferPool::with_gauge(
            runtime.buffer_size,
            runtime.buffer_pool_size,
            spec.stats.clone(),
        ),
        head_buffers: crate::buffers::HeadBuffers::default(),
        http_pool: crate::http::pool::H1Pool::default(),
        h2_pool: crate::http::pool::H2Pool::default(),
        deadlines: Rc::default(),
        finished: Cell::new(false),
        release: memory::Release::default(),
        lot: ctx::lot::Lot::default(),
        index: spec.index,
        workers: spec.workers,
        driver: spec.driver,
        balancers: Balancers::default(),
        stats: spec.stats,
        draining: Cell::new(false),
        process_draining: spec.process_draining.clone(),
        spans: spec.spans.clone(),
        log: spec.log,
        listeners: RefCell::new(HashMap::new()),
        current: RefCell::new(Rc::new(spec.snapshot.load_full())),
        snapshot: spec.snapshot,
    });
    let mut loops = Vec::new();
    for socket in spec.sockets {
        match add_listener(&ctx, socket) {
            Ok(l) => loops.push(l),
            Err(e) => {
                let _ = spec.ready.send(Err(format!("worker {}: {e}", spec.index)));
                return;
            }
        }
    }
    monoio::spawn(tick(ctx.clone()));
    let sweeper_ctx = ctx.clone();
    monoio::spawn(async move {
        let ctx = sweeper_ctx;
        ctx.deadlines.run_short_sweeper(|| ctx.finished.get()).await;
    });
    let _ = spec.ready.send(Ok(info));
    // Any Drain, or the control side going away, starts the drain.
    while let Ok(msg) = spec.control.recv_async().await {
        match msg {
            Command::Drain => break,
            Command::AddListener(socket) => match add_listener(&ctx, socket) {
                Ok(l) => loops.push(l),
                Err(e) => tracing::error!(worker = ctx.index, error = %e, "cannot add listener"),
            },
            Command::RemoveListener(name) => {
                let removed = ctx.listeners.borrow_mut().remove(&name);
                if let Some(h) = removed {
                    h.stop();
                    ctx.lot.close_listener(&ctx, &h);
                }
            }
        }
    }
    ctx.draining.set(true);
    for h in ctx.listeners.borrow_mut().drain() {
        h.1.stop();
    }
    ctx.lot.close_all(&ctx);
    for l in loops {
        l.await;
    }
    while ctx.stats.active.get() > 0 {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    ctx.finished.set(true);
    ctx.deadlines.wake_sweeper();
    ctx.log.flush(true);
    tracing::debug!(worker = ctx.index, "worker drained");
}

/// Start accepting on `socket`; a listener of the same name is replaced.
fn add_listener(
    ctx: &Rc<WorkerCtx>,
    socket: ListenerSocket,
) -> std::io::Result<monoio::task::JoinHandle<()>> {
    let handle = Rc::new(ListenerHandle::new(socket.name.clone(), socket.configured));
    let cancel = handle.cancel_handle();
    let accept = listener::AcceptLoop::new(ctx.clone(), socket, handle.clone(), cancel)?;
    let old = ctx
        .listeners
        .borrow_mut()
        .insert(handle.name.clone(), handle);
    if let Some(old) = old {
        old.stop();
        ctx.lot.close_listener(ctx, &old);
    }
    Ok(monoio::spawn(accept.run()))
}

/// Housekeeping every `TICK`: expire coarse deadlines, measure how late the
/// timer fires (event-loop lag: a busy or blocked worker shows here), flush
/// the access log by time, and, after a reload, let go of upstream state of
/// removed endpoints.
#[allow(clippy::redundant_allocation)]
async fn tick(ctx: Rc<WorkerCtx>) {
    let mut swept: Option<Rc<Arc<Snapshot>>> = None;
    // Runs through the drain too: connections still finishing rely on the
    // deadline sweep.
    let mut ticks = 0u32;
    while !ctx.finished.get() {
        let start = Instant::now();
        monoio::time::sleep(TICK).await;
        ctx.deadlines.sweep(Instant::now());
        ctx.lot.sweep(&ctx, Instant::now());
        ticks = ticks.wrapping_add(1);
        // Once a second: spare buffers a burst left behind decay.
        if ticks % 10 == 0 && ctx.buffers.decay() > 0 {
            ctx.release.freed();
        }
        ctx.release.maybe_trim(Instant::now());
        let runtime = &ctx.current().runtime;
        overload::sample(
            Instant::now(),
            runtime.max_heap_bytes,
            runtime.overload_memory_percent,
        );
        let lag = start.elapsed().saturating_sub(TICK);
        ctx.stats
            .lag_last_us
            .set(u64::try_from(lag.as_micros()).unwrap_or(u64::MAX));
        ctx.stats.lag.record(lag);
        let current = ctx.current();
        ctx.log.flush_if_due(&current);
        if !swept.as_ref().is_some_and(|s| Rc::ptr_eq(s, &current)) {
            sweep_endpoints(&ctx, &current);
            swept = Some(current);
        }
    }
}

/// Close pooled connections to endpoints that no cluster of `snapshot`
/// names any more, or that were made under TLS settings no cluster has
/// now (a reload or rotation changed roots, identities or certificates:
/// idle HTTP/1 connections close, HTTP/2 ones finish their streams and
/// close); forget balancer state of removed endpoints.
fn sweep_endpoints(ctx: &WorkerCtx, snapshot: &Snapshot) {
    use crate::http::pool::PoolKey;
    let keys: std::collections::HashSet<PoolKey> = snapshot
        .clusters
        .values()
        .flat_map(|c| {
            c.endpoints
                .iter()
                .map(|e| PoolKey::new(e.address, c.tls.as_deref()))
        })
        .collect();
    let named: std::collections::HashSet<std::net::SocketAddr> =
        keys.iter().map(|k| k.addr).collect();
    let closed = ctx.http_pool.retain(|k| keys.contains(k));
    let retired = ctx.h2_pool.retire(|k| keys.contains(k));
    ctx.balancers.retain_endpoints(|addr| named.contains(addr));
    if closed + retired > 0 {
        tracing::debug!(
            worker = ctx.index,
            closed,
            retired,
            "closed pooled connections to removed endpoints or old TLS settings"
        );
    }
}
