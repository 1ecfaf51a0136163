//! Parked connections: idle keep-alive HTTP connections between requests,
//! held by one per-worker structure instead of a task each.
//!
//! A served connection that stays idle for the warm window after its
//! response (200-300 ms, `head::WARM_READ_WINDOW`) leaves its task: the task
//! ends, and the connection (its socket and a few per-connection facts,
//! ~240 B) goes into the worker's [`Lot`], a slab watched by one epoll
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

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

use monoio::net::UnixStream;

use super::downstream::{Downstream, Idle};
use crate::listener::ConnGuard;
use crate::snapshot::Snapshot;
use crate::tcp::ParkedRelay;
use crate::worker::{ListenerHandle, WorkerCtx};

/// Events taken per `epoll_wait`.
const BATCH: usize = 64;

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
    if let Err((e, _)) = ctx.lot.insert(&ctx, Sleeper::Http(parked), guard) {
        // Closing an idle keep-alive connection loses nothing: the client
        // opens a new one.
        tracing::warn!(worker = ctx.index, error = %e, "cannot park an idle connection; closing it");
    }
}

/// Park an idle TCP relay (from the task that relayed it, which then ends).
pub fn park_relay(relay: ParkedRelay, guard: ConnGuard) {
    let ctx = guard.ctx().clone();
    ctx.release.freed();
    if let Err((e, back)) = ctx.lot.insert(&ctx, Sleeper::Relay(relay), guard) {
        // A relay cannot be closed for this: it stays a task.
        tracing::debug!(worker = ctx.index, error = %e, "cannot park an idle relay; it stays a task");
        if let Some((Sleeper::Relay(relay), guard)) = back {
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

/// What a lot holds.
#[derive(Debug)]
enum Sleeper {
    Http(Parked),
    Relay(ParkedRelay),
}

impl Sleeper {
    /// The descriptors to watch (a relay's second is its upstream's).
    fn fds(&self) -> [Option<RawFd>; 2] {
        match self {
            Sleeper::Http(p) => [Some(p.conn.io.raw_fd()), None],
            Sleeper::Relay(r) => r.fds().map(|fd| Some(fd.as_raw_fd())),
        }
    }

    fn until(&self) -> Instant {
        match self {
            Sleeper::Http(p) => p.until,
            Sleeper::Relay(r) => r.until,
        }
    }

    /// An idle HTTP connection of `handle`'s listener (relays never match:
    /// a listener's stop leaves TCP connections to run to their end).
    fn http_of(&self, handle: impl Fn(&ListenerHandle) -> bool) -> bool {
        matches!(self, Sleeper::Http(p) if handle(&p.handle))
    }

    fn wake(self, ctx: &Rc<WorkerCtx>, guard: ConnGuard) {
        match self {
            Sleeper::Http(p) => resume_in_task(ctx.clone(), p, guard),
            Sleeper::Relay(r) => resume_relay(r, guard),
        }
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

/// One worker's parked connections.
#[derive(Debug, Default)]
pub struct Lot {
    state: RefCell<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The lot's epoll descriptor as the worker's runtime sees it (for
    /// readiness waits only); created with the first parked connection.
    ready: Option<Rc<UnixStream>>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    len: usize,
    /// Bumped per insert: an event carries the generation it was armed for.
    generation: u32,
    /// No parked connection's `until` is earlier.
    next_expiry: Option<Instant>,
    /// The worker drains: the waiting task ends once the lot is empty.
    stop: bool,
    /// The waiting task runs.
    running: bool,
    waker: Option<Waker>,
}

#[derive(Debug)]
struct Slot {
    sleeper: Sleeper,
    guard: ConnGuard,
    generation: u32,
}

impl Lot {
    /// Watch `sleeper`'s descriptors; on failure it comes back (none when
    /// the worker drains and it is an HTTP connection, which then closes).
    // The error hands the connection back unboxed: it is rare, and a box
    // would cost an allocation on the path that must not fail.
    #[allow(clippy::type_complexity, clippy::result_large_err)]
    fn insert(
        &self,
        ctx: &Rc<WorkerCtx>,
        sleeper: Sleeper,
        guard: ConnGuard,
    ) -> Result<(), (std::io::Error, Option<(Sleeper, ConnGuard)>)> {
        let mut st = self.state.borrow_mut();
        if st.stop && matches!(sleeper, Sleeper::Http(_)) {
            return Ok(());
        }
        let ready = match &st.ready {
            Some(r) => r.clone(),
            None => match epoll_stream() {
                Ok(r) => st.ready.insert(Rc::new(r)).clone(),
                Err(e) => return Err((e, Some((sleeper, guard)))),
            },
        };
        let epfd = ready.as_raw_fd();
        if !st.running {
            st.running = true;
            monoio::spawn(wait_loop(ctx.clone(), ready));
        }
        let index = match st.free.pop() {
            Some(i) => i,
            None => {
                st.slots.push(None);
                (st.slots.len() - 1) as u32
            }
        };
        st.generation = st.generation.wrapping_add(1);
        let generation = st.generation;
        let fds = sleeper.fds();
        for (i, fd) in fds.iter().enumerate() {
            let Some(fd) = *fd else { continue };
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                u64: (u64::from(generation) << 32) | u64::from(index),
            };
            // SAFETY: both descriptors are open; `ev` outlives the call.
            if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
                let e = std::io::Error::last_os_error();
                for added in fds[..i].iter().flatten() {
                    // SAFETY: removing an open descriptor we just added.
                    unsafe {
                        libc::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, *added, std::ptr::null_mut())
                    };
                }
                st.free.push(index);
                return Err((e, Some((sleeper, guard))));
            }
        }
        let until = sleeper.until();
        st.next_expiry = Some(st.next_expiry.map_or(until, |t| t.min(until)));
        st.slots[index as usize] = Some(Slot {
            sleeper,
            guard,
            generation,
        });
        st.len += 1;
        ctx.stats.parked.set(st.len as u64);
        Ok(())
    }

    /// Take slot `index` out (unwatched), if it holds `generation`.
    fn take(st: &mut State, index: usize, generation: Option<u32>) -> Option<Slot> {
        let slot = st.slots.get_mut(index)?;
        if generation.is_some_and(|g| slot.as_ref().is_some_and(|s| s.generation != g)) {
            return None;
        }
        let slot = slot.take()?;
        if let Some(r) = &st.ready {
            for fd in slot.sleeper.fds().into_iter().flatten() {
                // SAFETY: removing an open descriptor from our epoll instance.
                unsafe {
                    libc::epoll_ctl(r.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut())
                };
            }
        }
        st.free.push(index as u32);
        st.len -= 1;
        slot.guard.ctx().stats.parked.set(st.len as u64);
        if st.stop && st.len == 0 {
            if let Some(w) = st.waker.take() {
                w.wake();
            }
        }
        Some(slot)
    }

    /// Close the parked connections `close` picks (dropped outside the
    /// borrow: closing touches the runtime, the gauges and the access log).
    fn close_where(&self, close: impl Fn(&Slot) -> bool) -> Vec<Slot> {
        let mut st = self.state.borrow_mut();
        let picked: Vec<usize> = (st.slots.iter().enumerate())
            .filter(|(_, s)| s.as_ref().is_some_and(&close))
            .map(|(i, _)| i)
            .collect();
        let out = picked
            .into_iter()
            .filter_map(|i| Lot::take(&mut st, i, None))
            .collect();
        st.next_expiry = st.slots.iter().flatten().map(|s| s.sleeper.until()).min();
        out
    }

    /// From the housekeeping tick: close parked connections whose
    /// `idle_timeout` has passed, and idle HTTP connections while draining.
    pub fn sweep(&self, ctx: &WorkerCtx, now: Instant) {
        let due = {
            let st = self.state.borrow();
            st.len > 0
                && (st.next_expiry.is_some_and(|t| t <= now)
                    || ctx.draining.get()
                    || ctx.process_draining())
        };
        if !due {
            return;
        }
        let closed =
            self.close_where(|s| s.sleeper.until() <= now || s.sleeper.http_of(|h| ctx.closing(h)));
        for slot in closed {
            if let Sleeper::Relay(relay) = slot.sleeper {
                relay.timed_out();
            }
        }
    }

    /// A listener stopped (reload removed it, or the worker drains): its
    /// idle HTTP connections close at once.
    pub fn close_listener(&self, handle: &ListenerHandle) {
        drop(self.close_where(|s| s.sleeper.http_of(|h| std::ptr::eq(h, handle))));
    }

    /// The worker drains: close every idle HTTP connection; the waiting
    /// task ends once no relay is parked either.
    pub fn close_all(&self) {
        drop(self.close_where(|s| s.sleeper.http_of(|_| true)));
        let mut st = self.state.borrow_mut();
        st.stop = true;
        if let Some(w) = st.waker.take() {
            w.wake();
        }
    }
}

/// A fresh epoll instance wrapped so the runtime can wait for it.
fn epoll_stream() -> std::io::Result<UnixStream> {
    // SAFETY: plain system call; the descriptor is owned below.
    let fd: RawFd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The runtime only polls it for readability (never reads, writes or
    // asks socket options of it) and closes it on drop. SAFETY: `fd` is a
    // descriptor we just opened and own.
    let std_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    UnixStream::from_std(std_stream)
}

/// The worker's one waiting task: on readiness of the lot's epoll
/// descriptor, move every connection with bytes waiting into a task.
async fn wait_loop(ctx: Rc<WorkerCtx>, ready: Rc<UnixStream>) {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
    loop {
        let stop = {
            let mut readable = std::pin::pin!(ready.readable(false));
            std::future::poll_fn(|cx| {
                {
                    let mut st = ctx.lot.state.borrow_mut();
                    if st.stop && st.len == 0 {
                        return Poll::Ready(true);
                    }
                    st.waker = Some(cx.waker().clone());
                }
                match readable.as_mut().poll(cx) {
                    Poll::Ready(Ok(())) => Poll::Ready(false),
                    // Not expected from an epoll descriptor; stop rather
                    // than spin, closing what is parked.
                    Poll::Ready(Err(e)) => {
                        tracing::error!(worker = ctx.index, error = %e, "parked-connection wait failed");
                        Poll::Ready(true)
                    }
                    Poll::Pending => Poll::Pending,
                }
            })
            .await
        };
        if stop {
            // Drained and empty; or the wait failed: HTTP connections close,
            // relays go back to tasks.
            let left = ctx.lot.close_where(|_| true);
            ctx.lot.state.borrow_mut().running = false;
            for slot in left {
                if let Sleeper::Relay(relay) = slot.sleeper {
                    resume_relay(relay, slot.guard);
                }
            }
            return;
        }
        loop {
            // SAFETY: `events` is valid for BATCH entries; timeout 0.
            let n = unsafe {
                libc::epoll_wait(ready.as_raw_fd(), events.as_mut_ptr(), BATCH as i32, 0)
            };
            if n <= 0 {
                break;
            }
            let woken: Vec<Slot> = {
                let mut st = ctx.lot.state.borrow_mut();
                events[..n as usize]
                    .iter()
                    .filter_map(|ev| {
                        let data = ev.u64;
                        Lot::take(
                            &mut st,
                            (data & 0xffff_ffff) as usize,
                            Some((data >> 32) as u32),
                        )
                    })
                    .collect()
            };
            for slot in woken {
                slot.sleeper.wake(&ctx, slot.guard);
            }
            if (n as usize) < BATCH {
                break;
            }
        }
    }
}
