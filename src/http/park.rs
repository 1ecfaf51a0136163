//! Parked connections: idle keep-alive HTTP connections between requests,
//! held by one per-worker structure instead of a task each.
//!
//! A served connection that stays idle for the warm window after its
//! response (200-300 ms, `head::WARM_READ_WINDOW`) leaves its task: the task
//! ends, and the connection (its socket and a few per-connection facts,
//! ~240 B) goes into the worker's lot ([`crate::worker::ctx::lot::Lot`]), a slab watched by one epoll
//! instance of the worker's own. One task per worker waits for that epoll
//! descriptor to turn readable (through the worker's own driver: a POLL_ADD
//! on io_uring, nested epoll on epoll); a client's next bytes then take its
//! connection out of the lot and into a fresh connection task. So an idle
//! connection holds no task, no future, no timer and no buffer (ARCHITECTURE
//! invariant 8): its `idle_timeout` is swept by the housekeeping tick, and a
//! listener's stop or the worker's drain closes its parked connections at
//! once. Parking costs an `epoll_ctl` to add and one to remove, paid only by
//! connections idle for the whole warm window, never on a busy one.
//!
//! Idle TCP relays park here too ([`park_relay`]): both of their sockets
//! are watched, either turning readable resumes the relay in a new task, and
//! the sweep ends one at its `idle_timeout` (logged `IT`). Unlike idle HTTP
//! connections, a listener's stop and the worker's drain leave parked
//! relays alone: TCP connections run to their end.

use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::downstream::{Downstream, Idle};
use crate::snapshot::Snapshot;
use crate::tcp::ParkedRelay;
use crate::worker::ctx::lot::Sleeper;
use crate::worker::ctx::{ConnGuard, ListenerHandle, WorkerCtx};

/// An idle connection between requests, outside any task.
#[derive(Debug)]
pub struct Parked {
    handle: Rc<ListenerHandle>,
    /// The snapshot of its accept (its listener as accepted).
    snapshot: Arc<Snapshot>,
    conn: Idle,
    /// When `idle_timeout` ends it.
    until: Instant,
}

impl Parked {
    pub(super) fn new(
        handle: &Rc<ListenerHandle>,
        snapshot: &Arc<Snapshot>,
        conn: Downstream,
        idle_left: std::time::Duration,
    ) -> Parked {
        Parked {
            handle: handle.clone(),
            snapshot: snapshot.clone(),
            conn: conn.into_idle(),
            until: Instant::now() + idle_left,
        }
    }

    /// Serve the connection's next requests (its bytes have arrived); `Some`
    /// when it goes idle again.
    async fn resume(self, ctx: &Rc<WorkerCtx>) -> Option<Parked> {
        let Parked {
            handle,
            snapshot,
            conn,
            ..
        } = self;
        let listener = handle.resolve(&snapshot)?;
        let conn = conn.resume(&handle, ctx, listener)?;
        let served = super::server::serve_requests(
            ctx,
            &handle,
            &snapshot,
            listener,
            conn,
            super::head::Phase::Served,
            0,
        );
        let (conn, idle_left) = served.await?;
        Some(Parked::new(&handle, &snapshot, conn, idle_left))
    }
}

/// Park an idle connection (from the task that served it, which then ends).
/// `guard` keeps it counted as an active connection.
pub fn park(mut parked: Parked, guard: ConnGuard) {
    let ctx = guard.ctx().clone();
    ctx.release.freed();
    if parked.conn.io.has_buffered() {
        // Bytes already inside the TLS layer: no readiness will announce them.
        resume_in_task(ctx, parked, guard);
        return;
    }
    if ctx.closing(&parked.handle) {
        return;
    }
    if let Err((e, _)) = ctx.lot.insert(&ctx, parked, guard) {
        // Closing an idle keep-alive connection loses nothing: the client
        // opens a new one.
        tracing::warn!(worker = ctx.index, error = %e, "cannot park an idle connection; closing it");
    }
}

/// Park an idle TCP relay (from the task that relayed it, which then ends).
pub fn park_relay(relay: ParkedRelay, guard: ConnGuard) {
    let ctx = guard.ctx().clone();
    ctx.release.freed();
    if let Err((e, back)) = ctx.lot.insert(&ctx, relay, guard) {
        // A relay cannot be closed for this: it stays a task.
        tracing::debug!(worker = ctx.index, error = %e, "cannot park an idle relay; it stays a task");
        if let Some((relay, guard)) = back {
            resume_relay(relay, guard);
        }
    }
}

/// Relay a parked relay's next bytes in a fresh task.
fn resume_relay(relay: ParkedRelay, guard: ConnGuard) {
    monoio::spawn(async move {
        if let Some(relay) = relay.resume().await {
            park_relay(relay, guard);
        }
    });
}

impl Sleeper for Parked {
    fn fds(&self) -> [Option<RawFd>; 2] {
        [Some(self.conn.io.raw_fd()), None]
    }

    fn until(&self) -> Instant {
        self.until
    }

    fn listener(&self) -> Option<&ListenerHandle> {
        Some(&self.handle)
    }

    fn wake(self, ctx: &Rc<WorkerCtx>, guard: ConnGuard) {
        resume_in_task(ctx.clone(), self, guard);
    }

    fn expire(self) {}
}

/// A listener's stop and the worker's drain leave parked relays alone:
/// TCP connections run to their end.
impl Sleeper for ParkedRelay {
    fn fds(&self) -> [Option<RawFd>; 2] {
        ParkedRelay::fds(self).map(|fd| Some(fd.as_raw_fd()))
    }

    fn until(&self) -> Instant {
        self.until
    }

    fn listener(&self) -> Option<&ListenerHandle> {
        None
    }

    fn wake(self, _: &Rc<WorkerCtx>, guard: ConnGuard) {
        resume_relay(self, guard);
    }

    fn expire(self) {
        self.timed_out();
    }
}

/// Serve a parked connection's next requests in a fresh task.
fn resume_in_task(ctx: Rc<WorkerCtx>, parked: Parked, guard: ConnGuard) {
    monoio::spawn(async move {
        if let Some(parked) = parked.resume(&ctx).await {
            park(parked, guard);
        }
    });
}
