//! Worker threads: one per core, pinned, each with its own monoio runtime,
//! its own SO_REUSEPORT socket per listener and its own per-connection state.
//! This is where the stages are assembled: listener → (tcp relay | http).

pub use crate::rt::cpus;
pub mod driver;
pub mod memory;
pub mod overload;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

pub use driver::Driver;

use crate::access_log::WorkerLog;
use crate::buffers::BufferPool;
use crate::listener::{self, ListenerSocket};
use crate::metrics::WorkerCells;
use crate::snapshot::Snapshot;
use crate::upstream::Balancers;

/// Messages from the control thread. Rare; never per request.
#[derive(Debug)]
pub enum Control {
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
    pub control: flume::Receiver<Control>,
    pub ready: std::sync::mpsc::Sender<Result<WorkerInfo, String>>,
    /// The process-wide drain flag, set before the workers get `Drain`.
    pub process_draining: Arc<std::sync::atomic::AtomicBool>,
    /// Finished spans to the exporter thread (bounded; never waited on).
    pub spans: flume::Sender<crate::trace::otlp::SpanData>,
}

/// Per-worker state shared by the worker's tasks (never across threads,
/// except `stats`, whose cells have this worker as their only writer).
#[derive(Debug)]
pub struct WorkerCtx {
    pub index: usize,
    /// Number of workers (to split per-listener limits).
    pub workers: usize,
    pub driver: Driver,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub balancers: Balancers,
    pub stats: Arc<WorkerCells>,
    /// Set once draining starts.
    pub draining: Cell<bool>,
    /// Set by the control side when a drain starts, a moment before this
    /// worker's `Drain` message arrives.
    process_draining: Arc<std::sync::atomic::AtomicBool>,
    /// Finished spans to the exporter thread.
    spans: flume::Sender<crate::trace::otlp::SpanData>,
    /// Relay buffers, rented while bytes move.
    pub buffers: BufferPool,
    /// Spare buffers for upstream response heads.
    pub head_buffers: crate::buffers::HeadBuffers,
    /// Idle keep-alive connections to HTTP upstreams.
    pub http_pool: crate::http::pool::H1Pool,
    /// HTTP/2 connections to upstreams (shared by concurrent requests).
    pub h2_pool: crate::http::pool::H2Pool,
    /// Coarse deadlines (send and body timeouts, warm reads), swept by the tick.
    pub deadlines: Rc<crate::deadline::Deadlines>,
    /// Set once the worker has drained: the housekeeping tick stops.
    finished: Cell<bool>,
    /// Connections freed since the last heap trim (`memory`).
    pub release: memory::Release,
    /// Idle keep-alive connections between requests (`http::park`).
    pub lot: crate::http::park::Lot,
    /// This worker's access log buffer.
    pub log: WorkerLog,
    /// Accept loops by listener name.
    listeners: RefCell<HashMap<String, Rc<ListenerHandle>>>,
    /// This worker's handle on the current snapshot (see `current`). The
    /// extra `Rc` is deliberate: one allocation per reload buys a counter
    /// that only this core writes.
    #[allow(clippy::redundant_allocation)]
    current: RefCell<Rc<Arc<Snapshot>>>,
}

/// A listener's accept loop on one worker, and the flag its connections
/// watch to learn that the listener was removed.
pub struct ListenerHandle {
    pub name: String,
    /// The configured address: a listener renamed by a reload (same
    /// address, new name) is found by it until this socket is closed.
    pub configured: std::net::SocketAddr,
    /// Set when a reload removed the listener: stop accepting, close
    /// keep-alive connections after their current request.
    pub draining: Cell<bool>,
    canceller: RefCell<Option<monoio::io::Canceller>>,
    /// Idle connections waiting for `stop` (woken once, not polled).
    waiters: RefCell<HashMap<u64, Waker>>,
    next_waiter: Cell<u64>,
}

impl std::fmt::Debug for ListenerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerHandle")
            .field("name", &self.name)
            .field("draining", &self.draining.get())
            .finish_non_exhaustive()
    }
}

impl ListenerHandle {
    fn new(name: String, configured: std::net::SocketAddr) -> Self {
        ListenerHandle {
            name,
            configured,
            draining: Cell::new(false),
            canceller: RefCell::new(Some(monoio::io::Canceller::new())),
            waiters: RefCell::new(HashMap::new()),
            next_waiter: Cell::new(0),
        }
    }

    /// Completes once the listener stops (a reload removed it, or the worker
    /// drains): idle keep-alive connections wait on this instead of waking
    /// periodically to check.
    pub fn stopped(&self) -> Stopped<'_> {
        Stopped {
            handle: self,
            key: None,
        }
    }

    /// This listener in `snapshot`: by name, else (renamed by a reload that
    /// has not reached this worker yet) by configured address, when that
    /// names a port (port 0 may be shared by several listeners).
    pub fn resolve<'a>(&self, snapshot: &'a Snapshot) -> Option<&'a crate::snapshot::Listener> {
        snapshot.listener(&self.name).or_else(|| {
            snapshot
                .listeners
                .iter()
                .find(|l| self.configured.port() != 0 && l.address == self.configured)
        })
    }

    fn cancel_handle(&self) -> Option<monoio::io::CancelHandle> {
        self.canceller.borrow().as_ref().map(|c| c.handle())
    }

    /// Stop the accept loop (its pending accept is cancelled) and wake the
    /// connections waiting in [`ListenerHandle::stopped`].
    pub fn stop(&self) {
        self.draining.set(true);
        if let Some(c) = self.canceller.borrow_mut().take() {
            let _ = c.cancel();
        }
        let waiters: Vec<Waker> = self.waiters.borrow_mut().drain().map(|(_, w)| w).collect();
        for w in waiters {
            w.wake();
        }
    }
}

/// Future returned by [`ListenerHandle::stopped`].
#[derive(Debug)]
pub struct Stopped<'a> {
    handle: &'a ListenerHandle,
    key: Option<u64>,
}

impl Future for Stopped<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.handle.draining.get() {
            return Poll::Ready(());
        }
        let key = match self.key {
            Some(k) => k,
            None => {
                let k = self.handle.next_waiter.get();
                self.handle.next_waiter.set(k.wrapping_add(1));
                self.key = Some(k);
                k
            }
        };
        self.handle
            .waiters
            .borrow_mut()
            .insert(key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            self.handle.waiters.borrow_mut().remove(&k);
        }
    }
}

impl WorkerCtx {
    /// The current snapshot, through a worker-local handle: cloning it per
    /// request bumps a counter no other core touches, where cloning the
    /// shared `Arc` would move its cache line between cores on every request.
    /// The handle is replaced when the published pointer changes.
    #[allow(clippy::redundant_allocation)]
    pub fn current(&self) -> Rc<Arc<Snapshot>> {
        let published = self.snapshot.load();
        let mut current = self.current.borrow_mut();
        if !Arc::ptr_eq(&published, &current) {
            *current = Rc::new(arc_swap::Guard::into_inner(published));
        }
        current.clone()
    }

    /// Whether a connection of `listener` should stop taking requests.
    #[inline]
    /// Queue a finished span for export; a full queue drops it (counted).
    pub fn export_span(&self, span: crate::trace::otlp::SpanData) {
        if self.spans.try_send(span).is_err() {
            self.stats.spans_dropped.inc();
        }
    }

    /// The whole process drains (set before any worker hears of it).
    pub fn process_draining(&self) -> bool {
        self.process_draining
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn closing(&self, listener: &ListenerHandle) -> bool {
        self.draining.get() || listener.draining.get() || self.process_draining()
    }
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
        lot: crate::http::park::Lot::default(),
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
            Control::Drain => break,
            Control::AddListener(socket) => match add_listener(&ctx, socket) {
                Ok(l) => loops.push(l),
                Err(e) => tracing::error!(worker = ctx.index, error = %e, "cannot add listener"),
            },
            Control::RemoveListener(name) => {
                let removed = ctx.listeners.borrow_mut().remove(&name);
                if let Some(h) = removed {
                    h.stop();
                    ctx.lot.close_listener(&h);
                }
            }
        }
    }
    ctx.draining.set(true);
    for h in ctx.listeners.borrow_mut().drain() {
        h.1.stop();
    }
    ctx.lot.close_all();
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
        ctx.lot.close_listener(&old);
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
