//! The worker's lot of parked connections: idle connections between
//! requests (and idle TCP relays), held by one per-worker slab watched by
//! an epoll instance of the worker's own instead of a task each (see
//! `http::park` for why and when a connection parks). The lot knows no
//! protocol: what it holds is a [`Sleeper`], which says which descriptors
//! to watch, when it times out, which listener's stop closes it, and how
//! it carries on when bytes arrive. Each kind of sleeper lies in a slab of
//! its own (a [`Rack`]), inline: parking allocates nothing per connection,
//! so long-lived parked connections do not pin pages among the short-lived
//! allocations of busy ones.

use std::any::Any;
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
pub trait Sleeper: std::fmt::Debug + Sized + 'static {
    /// The descriptors to watch (a relay's second is its upstream's).
    fn fds(&self) -> [Option<RawFd>; 2];

    /// When its `idle_timeout` ends it.
    fn until(&self) -> Instant;

    /// The listener whose stop (or the worker's drain) closes it at once:
    /// idle HTTP connections. `None`: it runs to its end (TCP relays).
    fn listener(&self) -> Option<&ListenerHandle>;

    /// Bytes arrived (or the lot is closing and it must not be closed):
    /// carry on in a fresh task.
    fn wake(self, ctx: &Rc<WorkerCtx>, guard: ConnGuard);

    /// Taken out by the sweep (its `idle_timeout` passed, or its listener
    /// stopped): it ends here.
    fn expire(self);
}

/// Bits of an event's data for the slot index (the rack above them, the
/// generation in the high 32).
const INDEX_BITS: u32 = 28;
/// At most this many kinds of sleeper.
const RACKS: usize = 1 << (32 - INDEX_BITS);

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
    /// A slab per kind of sleeper, made by its first insert.
    racks: Vec<Box<dyn Rack>>,
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

/// Where a sleeper lies: its rack, its slot, the generation it was put
/// there with.
#[derive(Debug, Clone, Copy)]
struct Place {
    rack: usize,
    index: u32,
    generation: Option<u32>,
}

impl Place {
    fn data(self) -> u64 {
        let at = ((self.rack as u64) << INDEX_BITS) | u64::from(self.index);
        (u64::from(self.generation.unwrap_or(0)) << 32) | at
    }

    fn of(data: u64) -> Place {
        let at = data & 0xffff_ffff;
        Place {
            rack: (at >> INDEX_BITS) as usize,
            index: (at & ((1 << INDEX_BITS) - 1)) as u32,
            generation: Some((data >> 32) as u32),
        }
    }
}

/// A slab of one kind of sleeper.
#[derive(Debug)]
struct Slab<S> {
    slots: Vec<Option<Slot<S>>>,
    free: Vec<u32>,
}

#[derive(Debug)]
struct Slot<S> {
    sleeper: S,
    guard: ConnGuard,
    generation: u32,
}

/// A sleeper taken out of the lot, to be woken or ended outside its
/// borrow (waking spawns a task; ending touches the runtime, the gauges
/// and the access log). Boxed only for that moment.
trait Taken {
    fn closes_with_listener(&self) -> bool;
    fn wake(self: Box<Self>, ctx: &Rc<WorkerCtx>);
    fn expire(self: Box<Self>);
}

impl<S: Sleeper> Taken for Slot<S> {
    fn closes_with_listener(&self) -> bool {
        self.sleeper.listener().is_some()
    }

    fn wake(self: Box<Self>, ctx: &Rc<WorkerCtx>) {
        let Slot { sleeper, guard, .. } = *self;
        sleeper.wake(ctx, guard);
    }

    fn expire(self: Box<Self>) {
        self.sleeper.expire();
    }
}

/// A slab as the lot drives it, whatever it holds.
trait Rack: std::fmt::Debug {
    fn as_any(&mut self) -> &mut dyn Any;

    /// The descriptors slot `index` watches.
    fn fds(&self, index: u32) -> [Option<RawFd>; 2];

    /// Slot `index` out of the slab, if it holds `generation` (any when
    /// `None`).
    fn take(&mut self, index: u32, generation: Option<u32>) -> Option<Box<dyn Taken>>;

    /// The slots `pick` chooses, by their listener and their `until`.
    fn picked(&self, pick: &dyn Fn(Option<&ListenerHandle>, Instant) -> bool) -> Vec<u32>;

    /// The earliest `until` in the slab.
    fn earliest(&self) -> Option<Instant>;
}

impl<S: Sleeper> Rack for Slab<S> {
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }

    fn fds(&self, index: u32) -> [Option<RawFd>; 2] {
        match self.slots.get(index as usize) {
            Some(Some(slot)) => slot.sleeper.fds(),
            _ => [None, None],
        }
    }

    fn take(&mut self, index: u32, generation: Option<u32>) -> Option<Box<dyn Taken>> {
        let slot = self.slots.get_mut(index as usize)?;
        if generation.is_some_and(|g| slot.as_ref().is_some_and(|s| s.generation != g)) {
            return None;
        }
        let slot = slot.take()?;
        self.free.push(index);
        Some(Box::new(slot))
    }

    fn picked(&self, pick: &dyn Fn(Option<&ListenerHandle>, Instant) -> bool) -> Vec<u32> {
        (self.slots.iter().enumerate())
            .filter(|(_, s)| {
                s.as_ref()
                    .is_some_and(|s| pick(s.sleeper.listener(), s.sleeper.until()))
            })
            .map(|(i, _)| i as u32)
            .collect()
    }

    fn earliest(&self) -> Option<Instant> {
        self.slots.iter().flatten().map(|s| s.sleeper.until()).min()
    }
}

impl<S: Sleeper> Slab<S> {
    /// A free slot's index (`None`: the slab has as many as an event can
    /// name).
    fn vacant(&mut self) -> Option<u32> {
        if let Some(i) = self.free.pop() {
            return Some(i);
        }
        if self.slots.len() >= 1 << INDEX_BITS {
            return None;
        }
        self.slots.push(None);
        Some((self.slots.len() - 1) as u32)
    }
}

impl State {
    /// The rack of `S`, made on first use.
    fn rack_of<S: Sleeper>(&mut self) -> Option<(usize, &mut Slab<S>)> {
        let found =
            (self.racks.iter_mut()).position(|r| r.as_any().downcast_mut::<Slab<S>>().is_some());
        let at = match found {
            Some(at) => at,
            None if self.racks.len() < RACKS => {
                self.racks.push(Box::new(Slab::<S> {
                    slots: Vec::new(),
                    free: Vec::new(),
                }));
                self.racks.len() - 1
            }
            None => return None,
        };
        let slab = self.racks[at].as_any().downcast_mut::<Slab<S>>()?;
        Some((at, slab))
    }

    /// Take a sleeper out (unwatched), if its place holds its generation.
    fn take(&mut self, place: Place) -> Option<Box<dyn Taken>> {
        let rack = self.racks.get_mut(place.rack)?;
        let fds = rack.fds(place.index);
        let taken = rack.take(place.index, place.generation)?;
        if let Some(r) = &self.ready {
            for fd in fds.into_iter().flatten() {
                // SAFETY: removing an open descriptor from our epoll instance.
                unsafe {
                    libc::epoll_ctl(r.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut())
                };
            }
        }
        self.len -= 1;
        if self.stop && self.len == 0 {
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
        Some(taken)
    }
}

impl Lot {
    /// Watch `sleeper`'s descriptors; on failure it comes back (none when
    /// the worker drains and it is an HTTP connection, which then closes).
    // The error hands the connection back: it is rare, and a box would
    // cost an allocation on the path that must not fail.
    #[allow(clippy::type_complexity, clippy::result_large_err)]
    pub fn insert<S: Sleeper>(
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
        let generation = st.generation.wrapping_add(1);
        let Some((rack, slab)) = st.rack_of::<S>() else {
            let e = std::io::Error::other("too many kinds of parked connections");
            return Err((e, Some((sleeper, guard))));
        };
        let Some(index) = slab.vacant() else {
            let e = std::io::Error::other("the lot is full");
            return Err((e, Some((sleeper, guard))));
        };
        let place = Place {
            rack,
            index,
            generation: Some(generation),
        };
        let fds = sleeper.fds();
        for (i, fd) in fds.iter().enumerate() {
            let Some(fd) = *fd else { continue };
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                u64: place.data(),
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
                slab.free.push(index);
                return Err((e, Some((sleeper, guard))));
            }
        }
        let until = sleeper.until();
        slab.slots[index as usize] = Some(Slot {
            sleeper,
            guard,
            generation,
        });
        st.generation = generation;
        st.next_expiry = Some(st.next_expiry.map_or(until, |t| t.min(until)));
        st.len += 1;
        ctx.stats.parked.set(st.len as u64);
        Ok(())
    }

    /// Take out the parked connections `pick` chooses (by their listener
    /// and `until`); they are woken or ended by the caller, outside the
    /// borrow.
    fn take_where(
        &self,
        ctx: &WorkerCtx,
        pick: &dyn Fn(Option<&ListenerHandle>, Instant) -> bool,
    ) -> Vec<Box<dyn Taken>> {
        let mut st = self.state.borrow_mut();
        let places: Vec<Place> = (st.racks.iter().enumerate())
            .flat_map(|(rack, r)| {
                r.picked(pick).into_iter().map(move |index| Place {
                    rack,
                    index,
                    generation: None,
                })
            })
            .collect();
        let out: Vec<_> = places.into_iter().filter_map(|p| st.take(p)).collect();
        st.next_expiry = st.racks.iter().filter_map(|r| r.earliest()).min();
        ctx.stats.parked.set(st.len as u64);
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
        let closed = self.take_where(ctx, &|listener, until| {
            until <= now || listener.is_some_and(|h| ctx.closing(h))
        });
        for taken in closed {
            taken.expire();
        }
    }

    /// A listener stopped (reload removed it, or the worker drains): its
    /// idle HTTP connections close at once.
    pub fn close_listener(&self, ctx: &WorkerCtx, handle: &ListenerHandle) {
        drop(self.take_where(ctx, &|listener, _| {
            listener.is_some_and(|h| std::ptr::eq(h, handle))
        }));
    }

    /// The worker drains: close every idle HTTP connection; the waiting
    /// task ends once no relay is parked either.
    pub fn close_all(&self, ctx: &WorkerCtx) {
        drop(self.take_where(ctx, &|listener, _| listener.is_some()));
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
            let left = ctx.lot.take_where(&ctx, &|_, _| true);
            ctx.lot.state.borrow_mut().running = false;
            for taken in left {
                if !taken.closes_with_listener() {
                    taken.wake(&ctx);
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
            let woken: Vec<Box<dyn Taken>> = {
                let mut st = ctx.lot.state.borrow_mut();
                let woken = (events[..n as usize].iter())
                    .filter_map(|ev| st.take(Place::of(ev.u64)))
                    .collect();
                ctx.stats.parked.set(st.len as u64);
                woken
            };
            for taken in woken {
                taken.wake(&ctx);
            }
            if (n as usize) < BATCH {
                break;
            }
        }
    }
}
