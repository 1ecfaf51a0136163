//! Precise send times for the open loop. monoio's timers tick in whole
//! milliseconds, so a generator paced by them sends up to 1 ms late, and at
//! 1,000 req/s that lateness was reported as the server's latency. Senders
//! are paced by `timerfd`s instead (nanosecond resolution, the thread's
//! timer slack set to 1 ns), waited on through the runtime's readiness poll.
//!
//! A thread's senders share one schedule of ticks (sender `i` of `n` sends
//! at ticks `i`, `i + n`, `i + 2n`, ...), kept in one of two ways:
//! - below [`SHARED_FROM`] sends per second per thread, each sender has a
//!   timer of its own, armed at its next send ([`Pacer`]): the wake-up goes
//!   straight to the sender;
//! - from there on, one periodic timer ticks at the thread's whole rate
//!   ([`Ticker`]) and a task of its own wakes the senders that are due. No
//!   timer is re-armed per send (a `timerfd_settime` per send was 15% of
//!   the generator's CPU at 50,000/s), and a thread that falls behind
//!   releases every due sender with one wake-up. At low rates the hop
//!   through the ticker's task measured 10-20 µs later than a sender's own
//!   timer on the dev VM, hence the split (docs/benchmarks.md).
//!
//! Lateness is measured per send and reported.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::poll_fn;
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

/// Sends per second per thread from which a thread's senders share one
/// periodic timer ([`Ticker`]) instead of a timer each ([`Pacer`]).
pub const SHARED_FROM: f64 = 25_000.0;

/// How a thread's senders are timed (`--pacer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PacerKind {
    /// Shared from 25,000 sends/s per thread (`SHARED_FROM`), own below.
    Auto,
    /// A timer per sender.
    Own,
    /// One periodic timer per thread.
    Shared,
}

/// When tick `n` of a schedule starting at `start` is (saturating: a tick
/// beyond what `Instant` holds is "never", far past any run's end).
fn tick_at(start: Instant, tick: Duration, n: u64) -> Instant {
    let nanos = u128::from(n).saturating_mul(tick.as_nanos());
    let after = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
    start
        .checked_add(after)
        .unwrap_or_else(|| start + Duration::from_secs(u64::from(u32::MAX)))
}

/// One thread's open-loop schedule: `senders` senders, each sending every
/// `interval`, spread evenly over it, the first at `start`.
#[derive(Debug, Clone)]
pub struct Schedule {
    start: Instant,
    tick: Duration,
    senders: usize,
    shared: Option<Rc<Ticker>>,
}

impl Schedule {
    /// The schedule of an open-loop thread (`interval` given), or none for
    /// a closed loop. Call on the thread's runtime: a shared ticker's task
    /// is spawned here.
    pub fn open_loop(
        kind: PacerKind,
        start: Instant,
        interval: Option<Duration>,
        senders: usize,
    ) -> io::Result<Option<Self>> {
        interval
            .map(|iv| Schedule::new(kind, start, iv, senders))
            .transpose()
    }

    fn new(
        kind: PacerKind,
        start: Instant,
        interval: Duration,
        senders: usize,
    ) -> io::Result<Self> {
        let senders = senders.max(1);
        let tick = (interval / senders as u32).max(Duration::from_nanos(1));
        let share = match kind {
            PacerKind::Auto => 1.0 / tick.as_secs_f64() >= SHARED_FROM,
            PacerKind::Own => false,
            PacerKind::Shared => true,
        };
        let shared = if share {
            let t = Ticker::new(start, tick, senders)?;
            monoio::spawn(t.clone().run());
            Some(t)
        } else {
            None
        };
        Ok(Schedule {
            start,
            tick,
            senders,
            shared,
        })
    }

    /// Sender `sender`'s place in the schedule, from its first send.
    pub fn pace(&self, sender: usize) -> io::Result<Pace> {
        let clock = match &self.shared {
            Some(t) => Clock::Shared(t.clone()),
            None => Clock::Own(Pacer::new()?),
        };
        Ok(Pace {
            start: self.start,
            tick: self.tick,
            sender,
            every: self.senders as u64,
            next: sender as u64,
            clock,
        })
    }
}

/// One sender's place in its thread's schedule.
#[derive(Debug)]
pub struct Pace {
    start: Instant,
    tick: Duration,
    sender: usize,
    every: u64,
    next: u64,
    clock: Clock,
}

#[derive(Debug)]
enum Clock {
    Own(Pacer),
    Shared(Rc<Ticker>),
}

impl Pace {
    /// Wait for this sender's next send time (at once when it is behind)
    /// and return it, and whether it is more than four of the sender's
    /// intervals behind.
    pub async fn next(&mut self) -> (Instant, bool) {
        let n = self.next;
        self.next += self.every;
        let at = tick_at(self.start, self.tick, n);
        let now = Instant::now();
        if at <= now {
            let interval = self.tick * self.every as u32;
            return (at, now - at > interval * 4);
        }
        let waited = match &self.clock {
            Clock::Own(p) => p.until(at).await,
            Clock::Shared(t) => t.until(self.sender, n).await,
        };
        if waited.is_err() {
            monoio::time::sleep(at.saturating_duration_since(Instant::now())).await;
        }
        (at, false)
    }
}

/// A sender's own timer, armed at its next send.
#[derive(Debug)]
struct Pacer {
    ready: TcpStream,
    fd: RawFd,
}

impl Pacer {
    fn new() -> io::Result<Self> {
        let (ready, fd) = timerfd()?;
        Ok(Pacer { ready, fd })
    }

    /// Wait until `at`.
    async fn until(&self, at: Instant) -> io::Result<()> {
        arm_once(self.fd, at)?;
        // Arming resets the timer's expiration count (and so its
        // readiness): no read is needed to clear the previous expiration.
        while Instant::now() < at {
            self.ready.readable(false).await?;
        }
        Ok(())
    }
}

/// One periodic timer pacing all of a thread's senders.
#[derive(Debug)]
pub struct Ticker {
    /// The timerfd, registered with the runtime for readiness only (no
    /// socket operation is ever issued on it).
    ready: TcpStream,
    fd: RawFd,
    /// Tick 0.
    start: Instant,
    tick: Duration,
    state: RefCell<State>,
}

#[derive(Debug, Default)]
struct State {
    /// `(tick, sender)` of every waiting sender, earliest first.
    due: BinaryHeap<Reverse<(u64, usize)>>,
    /// Per sender: its waker while it waits, and whether its tick came.
    wakers: Vec<Option<Waker>>,
    released: Vec<bool>,
    /// The ticker's task while no sender waits.
    idle: Option<Waker>,
    /// The timer failed: senders fall back to the runtime's timers.
    failed: bool,
}

/// A tick this close ahead counts as come (std's `Instant` and the timer
/// read the same clock, converted with tens of nanoseconds of error).
const MARGIN: Duration = Duration::from_micros(1);

impl Ticker {
    /// A ticker for `senders` senders whose tick 0 is `start`, ticking every
    /// `tick`. Spawn [`Ticker::run`] beside the senders.
    fn new(start: Instant, tick: Duration, senders: usize) -> io::Result<Rc<Self>> {
        let (ready, fd) = timerfd()?;
        arm_periodic(fd, start, tick)?;
        Ok(Rc::new(Ticker {
            ready,
            fd,
            start,
            tick,
            state: RefCell::new(State {
                wakers: vec![None; senders],
                released: vec![false; senders],
                ..State::default()
            }),
        }))
    }

    /// When tick `n` is.
    fn at(&self, n: u64) -> Instant {
        tick_at(self.start, self.tick, n)
    }

    /// Wait until tick `n` has come (the caller has seen that it has not
    /// yet). `sender` is the caller's index (below the count given to
    /// [`Ticker::new`]); a sender waits for one tick at a time.
    async fn until(&self, sender: usize, n: u64) -> io::Result<()> {
        let mut queued = false;
        poll_fn(|cx| {
            let mut st = self.state.borrow_mut();
            if st.failed {
                return Poll::Ready(Err(io::Error::other("pacer timer failed")));
            }
            if sender >= st.wakers.len() {
                return Poll::Ready(Err(io::Error::other("pacer sender out of range")));
            }
            if queued && std::mem::take(&mut st.released[sender]) {
                return Poll::Ready(Ok(()));
            }
            st.wakers[sender] = Some(cx.waker().clone());
            if !queued {
                queued = true;
                st.released[sender] = false;
                st.due.push(Reverse((n, sender)));
                if let Some(w) = st.idle.take() {
                    w.wake();
                }
            }
            Poll::Pending
        })
        .await
    }

    /// The ticker's task: wakes the senders whose tick has come. Waits on
    /// the timer only while a sender waits. Runs until the thread's runtime
    /// ends.
    async fn run(self: Rc<Self>) {
        loop {
            poll_fn(|cx| {
                let mut st = self.state.borrow_mut();
                if st.due.is_empty() {
                    st.idle = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            if self.ready.readable(false).await.is_err() {
                self.fail();
                return;
            }
            self.release();
            // The senders send before the timer is read: reading a periodic
            // timerfd re-arms it (an hrtimer restart, a VM exit here), which
            // is kept off their path.
            yield_once().await;
            let mut count: u64 = 0;
            // SAFETY: an 8-byte read into a u64 we own, from our timerfd.
            let r = unsafe { libc::read(self.fd, (&raw mut count).cast(), 8) };
            if r < 0 {
                let e = io::Error::last_os_error();
                // WouldBlock: the readiness was stale; wait again.
                if !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    self.fail();
                    return;
                }
            }
            self.release();
        }
    }

    /// Wake every waiting sender whose tick has come.
    fn release(&self) {
        let now = Instant::now() + MARGIN;
        let mut st = self.state.borrow_mut();
        while let Some(&Reverse((n, sender))) = st.due.peek() {
            if self.at(n) > now {
                break;
            }
            st.due.pop();
            st.released[sender] = true;
            if let Some(w) = st.wakers[sender].take() {
                w.wake();
            }
        }
    }

    fn fail(&self) {
        let mut st = self.state.borrow_mut();
        st.failed = true;
        st.due.clear();
        for w in st.wakers.iter_mut().filter_map(Option::take) {
            w.wake();
        }
    }
}

/// Let the tasks already woken run first.
async fn yield_once() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// Arm `fd` to expire at `start` and every `tick` after it.
fn arm_periodic(fd: RawFd, start: Instant, tick: Duration) -> io::Result<()> {
    set(fd, monotonic_ns(start)?, tick.as_nanos() as i128)
}

/// Arm `fd` to expire once, at `at` (at once if it has passed).
fn arm_once(fd: RawFd, at: Instant) -> io::Result<()> {
    set(fd, monotonic_ns(at)?, 0)
}

fn set(fd: RawFd, first_ns: i128, interval_ns: i128) -> io::Result<()> {
    let spec = libc::itimerspec {
        it_interval: timespec(interval_ns),
        it_value: timespec(first_ns.max(1)),
    };
    // SAFETY: our timerfd, a spec we own, no old-value pointer.
    let r =
        unsafe { libc::timerfd_settime(fd, libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `at` on CLOCK_MONOTONIC, in nanoseconds. std's `Instant` reads the same
/// clock on Linux but keeps its value private: this is the clock now plus
/// (or minus) the distance to `at`.
fn monotonic_ns(at: Instant) -> io::Result<i128> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let now = Instant::now();
    // SAFETY: clock_gettime writes the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let now_ns = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
    Ok(if at >= now {
        now_ns + (at - now).as_nanos() as i128
    } else {
        now_ns - (now - at).as_nanos() as i128
    })
}

/// A timerfd registered with the runtime for readiness only (no socket
/// operation is ever issued on it).
fn timerfd() -> io::Result<(TcpStream, RawFd)> {
    // SAFETY: timerfd_create has no memory arguments; the descriptor it
    // returns is owned from here on by the stream built from it.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns. The std
    // stream type is only a carrier: monoio registers the descriptor for
    // readiness (which works for any pollable fd) and closes it on drop;
    // no socket call is made on it.
    let std = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    Ok((TcpStream::from_std(std)?, fd))
}

fn timespec(ns: i128) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    }
}

/// Ask the kernel for exact timer wake-ups on this thread (the default
/// slack lets a timer fire up to 50 µs late).
pub fn precise_timers_for_this_thread() {
    // SAFETY: prctl with an integer argument; no memory.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_exact_multiples_and_saturate() {
        let start = Instant::now();
        let tick = Duration::from_micros(20);
        assert_eq!(tick_at(start, tick, 0), start);
        assert_eq!(tick_at(start, tick, 50_000), start + Duration::from_secs(1));
        // Sender 3 of 16 at its 1,000th send: tick 3 + 16 * 1,000.
        assert_eq!(
            tick_at(start, tick, 3 + 16 * 1_000),
            start + Duration::from_nanos(20_000 * (3 + 16 * 1_000))
        );
        assert!(tick_at(start, Duration::from_secs(u64::MAX / 2), u64::MAX) > start);
    }
}
