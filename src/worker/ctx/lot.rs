//! The worker's lot of parked connections: idle connections between
//! requests (and idle TCP relays), held by one per-worker slab watched by
//! an epoll instance of the worker's own instead of a task each (see
//! `http::park` for why and when a connection parks). The lot knows no
//! protocol: what it holds is a [`Sleeper`], which says which descriptors
//! to watch, when it times out, which listener's stop closes it, and how
//! it carries on when bytes arrive.

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use monoio::net::UnixStream;

use super::{ConnGuard, ListenerHandle, WorkerCtx};

/// Events taken per `epoll_wait`.
const BATCH: usize = 64;

/// Something parked in the lot.
pub trait Sleeper: std::fmt::Debug {
    /// The descriptors to watch (a relay's second is its upstream's).
    fn fds(&self) -> [Option<RawFd>; 2];

    /// When its `idle_timeout` ends it.
    fn until(&self) -> Instant;

    /// The listener whose stop (or the worker's drain) closes it at once:
    /// idle HTTP connections. `None`: it runs to its end (TCP relays).
    fn listener(&self) -> Option<&ListenerHandle>;

    /// Bytes arrived (or the lot is closing and it must not be closed):
    /// carry on in a fresh task.
    fn wake(self: Box<Self>, ctx: &Rc<WorkerCtx>, guard: ConnGuard);

    /// Taken out by the sweep (its `idle_timeout` passed, or its listener
    /// stopped): it ends here.
    fn expire(self: Box<Self>);
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
    sleeper: Box<dyn Sleeper>,
    guard: ConnGuard,
    generation: u32,
}

impl Lot {
    /// Watch `sleeper`'s descriptors; on failure it comes back (none when
    /// the worker drains and it is an HTTP connection, which then closes).
    // The error hands the connection back unboxed: it is rare, and a box
    // would cost an allocation on the path that must not fail.
    #[allow(clippy::type_complexity, clippy::result_large_err)]
    pub fn insert<S: Sleeper + 'static>(
        &self,
        ctx: &Rc<WorkerCtx>,
        sleeper: S,
        guard: ConnGuard,
    ) -> Result<(), (std::io::Error, Option<(S, ConnGuard)>)> {
        let mut st = self.state.borrow_mut();
        if st.stop && sleeper.listener().is_some() {
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
            sleeper: Box::new(sleeper),
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
        let closed = self.close_where(|s| {
            s.sleeper.until() <= now || s.sleeper.listener().is_some_and(|h| ctx.closing(h))
        });
        for slot in closed {
            slot.sleeper.expire();
        }
    }

    /// A listener stopped (reload removed it, or the worker drains): its
    /// idle HTTP connections close at once.
    pub fn close_listener(&self, handle: &ListenerHandle) {
        drop(self.close_where(|s| {
            s.sleeper
                .listener()
                .is_some_and(|h| std::ptr::eq(h, handle))
        }));
    }

    /// The worker drains: close every idle HTTP connection; the waiting
    /// task ends once no relay is parked either.
    pub fn close_all(&self) {
        drop(self.close_where(|s| s.sleeper.listener().is_some()));
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
                if slot.sleeper.listener().is_none() {
                    slot.sleeper.wake(&ctx, slot.guard);
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
