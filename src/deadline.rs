//! Per-worker deadlines without a runtime timer each. Arming one is a slot
//! in a slab instead of an entry in monoio's timer wheel (measured: a
//! `monoio::time::timeout` cost about 880 instructions, and its `Sleep` is
//! 640 bytes, 128-aligned, inside every connection's task; see
//! docs/benchmarks.md). Two slabs: deadlines less than `SHORT` away (route
//! timeouts, upstream reads, connects) are swept every `SHORT_SWEEP` by a
//! per-worker task that runs only while such a deadline is armed; longer
//! ones (idle keep-alive, `send_timeout`, `request_body_timeout`) are swept
//! by the worker's 100 ms housekeeping tick. A deadline so fires up to
//! 10 ms late (short) or 100 ms late (long, at least 2 s away: under 5%).
//!
//! Sweeps also keep a coarse clock (`coarse_now`, at most ~100 ms old):
//! arming reads it instead of the system clock, and so do long timeouts
//! (`after`), which then fire 0-200 ms late, never early. A proxied request
//! read the clock ~23 times before this (callgrind), ~3% of its CPU time.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Deadlines nearer than this are kept precise (swept every `SHORT_SWEEP`).
pub const SHORT: Duration = Duration::from_secs(2);
/// How often the short deadlines are swept while any is armed.
pub const SHORT_SWEEP: Duration = Duration::from_millis(10);

/// A worker's armed deadlines.
#[derive(Debug, Default)]
pub struct Deadlines {
    /// [long, short]
    slots: [RefCell<Slots>; 2],
    /// The short sweeper, parked while no short deadline is armed.
    sweeper: RefCell<Option<Waker>>,
    /// The clock as of the last sweep.
    coarse: Cell<Option<Instant>>,
}

#[derive(Debug, Default)]
struct Slots {
    entries: Vec<Slot>,
    free: Vec<u32>,
}

#[derive(Debug)]
struct Slot {
    at: Instant,
    waker: Option<Waker>,
    expired: bool,
    used: bool,
}

/// The wait passed its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// How old `coarse_now` can be: the long sweep's period.
const COARSE_AGE: Duration = Duration::from_millis(100);

impl Deadlines {
    /// The clock as of the last sweep (at most ~100 ms old while the worker
    /// runs). For deciding levels and timing long waits, not for
    /// measuring.
    pub fn coarse_now(&self) -> Instant {
        match self.coarse.get() {
            Some(t) => t,
            None => {
                let t = Instant::now();
                self.coarse.set(Some(t));
                t
            }
        }
    }

    /// The instant `timeout` from now: from the coarse clock for timeouts of
    /// `SHORT` or more (plus its greatest age, so never early), from the
    /// system clock for shorter ones.
    pub fn after(&self, timeout: Duration) -> Instant {
        if timeout >= SHORT {
            self.coarse_now() + timeout + COARSE_AGE
        } else {
            Instant::now() + timeout
        }
    }

    /// Arm a deadline at `at`; it is disarmed when the guard drops.
    pub fn arm(&self, at: Instant) -> Deadline<'_> {
        // The coarse clock is at most ~100 ms old: a deadline near 2 s away
        // may land on either level, which both handle.
        let short = at.saturating_duration_since(self.coarse_now()) < SHORT;
        let level = usize::from(short);
        let mut s = self.slots[level].borrow_mut();
        if short && s.entries.len() == s.free.len() {
            // The first short deadline: start the sweeper.
            if let Some(w) = self.sweeper.borrow_mut().take() {
                w.wake();
            }
        }
        let slot = Slot {
            at,
            waker: None,
            expired: false,
            used: true,
        };
        let key = match s.free.pop() {
            Some(k) => {
                s.entries[k as usize] = slot;
                k
            }
            None => {
                s.entries.push(slot);
                (s.entries.len() - 1) as u32
            }
        };
        Deadline {
            deadlines: self,
            level,
            key,
        }
    }

    /// Run `fut`, giving up (dropping it) once `at` has passed. A plain
    /// struct, not an `async fn`: it adds 16 bytes to the future it wraps
    /// (an `async fn` would keep room for `fut` twice).
    pub fn within<F: Future>(&self, at: Instant, fut: F) -> Within<'_, F> {
        Within {
            fut,
            deadline: self.arm(at),
        }
    }

    /// Mark every long deadline at or before `now` expired and wake its
    /// task (the housekeeping tick). Returns how many expired.
    pub fn sweep(&self, now: Instant) -> usize {
        self.sweep_level(0, now)
    }

    /// The short deadlines' sweeper: runs every `SHORT_SWEEP` while any is
    /// armed, parks otherwise, until `stop()` says the worker is done.
    pub async fn run_short_sweeper(&self, stop: impl Fn() -> bool) {
        while !stop() {
            if self.armed_level(1) == 0 {
                // Park until `arm` wakes us (or the long tick's check below).
                std::future::poll_fn(|cx| {
                    if self.armed_level(1) > 0 || stop() {
                        return Poll::Ready(());
                    }
                    *self.sweeper.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                })
                .await;
                continue;
            }
            monoio::time::sleep(SHORT_SWEEP).await;
            self.sweep_level(1, Instant::now());
        }
    }

    /// Wake the short sweeper so it sees a stop.
    pub fn wake_sweeper(&self) {
        if let Some(w) = self.sweeper.borrow_mut().take() {
            w.wake();
        }
    }

    fn sweep_level(&self, level: usize, now: Instant) -> usize {
        if self.coarse.get().map_or(true, |t| t < now) {
            self.coarse.set(Some(now));
        }
        let mut wake = Vec::new();
        let mut expired = 0;
        {
            let mut s = self.slots[level].borrow_mut();
            for slot in s.entries.iter_mut() {
                if slot.used && !slot.expired && slot.at <= now {
                    slot.expired = true;
                    expired += 1;
                    wake.extend(slot.waker.take());
                }
            }
        }
        for w in wake {
            w.wake();
        }
        expired
    }

    fn armed_level(&self, level: usize) -> usize {
        let s = self.slots[level].borrow();
        s.entries.len() - s.free.len()
    }

    /// Deadlines armed now.
    pub fn armed(&self) -> usize {
        self.armed_level(0) + self.armed_level(1)
    }
}

/// Future returned by [`Deadlines::within`].
#[derive(Debug)]
pub struct Within<'a, F> {
    fut: F,
    deadline: Deadline<'a>,
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `fut` is structurally pinned: it is never moved out of
        // `self` (no method hands it out by value, and `Within` has no Drop
        // of its own), so pinning `self` pins it. `deadline` is not pinned
        // and is only used through `&mut`.
        let this = unsafe { self.get_unchecked_mut() };
        let fut = unsafe { Pin::new_unchecked(&mut this.fut) };
        if let Poll::Ready(v) = fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        this.deadline.poll_expired(cx).map(|()| Err(Elapsed))
    }
}

/// An armed deadline; see [`Deadlines::arm`].
#[derive(Debug)]
pub struct Deadline<'a> {
    deadlines: &'a Deadlines,
    level: usize,
    key: u32,
}

impl Deadline<'_> {
    /// Ready once the deadline has been swept as expired; otherwise the
    /// task is woken when it is.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.deadlines.slots[self.level].borrow_mut();
        let slot = &mut s.entries[self.key as usize];
        if slot.expired {
            return Poll::Ready(());
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Deadline<'_> {
    fn drop(&mut self) {
        let mut s = self.deadlines.slots[self.level].borrow_mut();
        let slot = &mut s.entries[self.key as usize];
        slot.used = false;
        slot.waker = None;
        s.free.push(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_swept() {
        let d = Deadlines::default();
        let now = Instant::now();
        let a = d.arm(now + Duration::from_secs(10));
        let b = d.arm(now + Duration::from_secs(30));
        assert_eq!(d.armed(), 2);
        assert_eq!(d.sweep(now), 0);
        drop(a);
        assert_eq!(d.armed(), 1);
        let c = d.arm(now + Duration::from_secs(20));
        assert_eq!((c.level, c.key), (0, 0), "the freed slot is reused");
        // Only armed, due deadlines expire; a freed slot never does.
        assert_eq!(d.sweep(now + Duration::from_secs(25)), 1);
        let s = d.slots[0].borrow();
        assert!(s.entries[0].expired && !s.entries[1].expired);
        drop(s);
        drop((b, c));
        assert_eq!(d.armed(), 0);
    }

    #[test]
    fn near_deadlines_go_to_the_short_level() {
        let d = Deadlines::default();
        let now = Instant::now();
        let near = d.arm(now + Duration::from_millis(250));
        let far = d.arm(now + Duration::from_secs(60));
        assert_eq!((near.level, far.level), (1, 0));
        // The long sweep leaves short deadlines to their own sweeper.
        assert_eq!(d.sweep(now + Duration::from_secs(1)), 0);
        assert_eq!(d.sweep_level(1, now + Duration::from_secs(1)), 1);
    }
}
