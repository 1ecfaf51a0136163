//! The per-worker context the stages share: the worker's snapshot
//! handle, balancers, buffers, upstream pools, deadlines, access log and
//! its lot of parked connections ([`lot`]); a listener's handle on one
//! worker; the guard that counts a connection as active. It sits below
//! the stages (tcp, http, listener) and knows none of them: what a stage
//! parks it parks through the [`lot::Sleeper`] trait.

pub mod lot;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use arc_swap::ArcSwap;

use super::driver::Driver;
use super::memory;
use crate::access_log::WorkerLog;
use crate::buffers::BufferPool;
use crate::metrics::WorkerCells;
use crate::snapshot::Snapshot;
use crate::upstream::Balancers;

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
    pub(super) process_draining: Arc<std::sync::atomic::AtomicBool>,
    /// Finished spans to the exporter thread.
    pub(super) spans: flume::Sender<crate::trace::otlp::SpanData>,
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
    pub(super) finished: Cell<bool>,
    /// Connections freed since the last heap trim (`memory`).
    pub release: memory::Release,
    /// Idle keep-alive connections between requests (`http::park`).
    pub lot: lot::Lot,
    /// This worker's access log buffer.
    pub log: WorkerLog,
    /// Accept loops by listener name.
    pub(super) listeners: RefCell<HashMap<String, Rc<ListenerHandle>>>,
    /// This worker's handle on the current snapshot (see `current`). The
    /// extra `Rc` is deliberate: one allocation per reload buys a counter
    /// that only this core writes.
    #[allow(clippy::redundant_allocation)]
    pub(super) current: RefCell<Rc<Arc<Snapshot>>>,
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
    pub(super) fn new(name: String, configured: std::net::SocketAddr) -> Self {
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

    pub(super) fn cancel_handle(&self) -> Option<monoio::io::CancelHandle> {
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

/// Decrements the connection gauges when a connection ends, however it
/// ends (it moves with a connection that is parked).
#[derive(Debug)]
pub struct ConnGuard {
    ctx: Rc<WorkerCtx>,
    stats: std::sync::Arc<crate::metrics::ListenerStats>,
}

impl ConnGuard {
    /// Count a connection as active (its listener's and its worker's
    /// gauges) until the guard drops.
    pub fn new(ctx: Rc<WorkerCtx>, stats: std::sync::Arc<crate::metrics::ListenerStats>) -> Self {
        stats.worker(ctx.index).active.inc();
        ctx.stats.active.inc();
        ConnGuard { ctx, stats }
    }

    pub fn ctx(&self) -> &Rc<WorkerCtx> {
        &self.ctx
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.stats.worker(self.ctx.index).active.dec();
        self.ctx.stats.active.dec();
        self.ctx.release.freed();
    }
}
