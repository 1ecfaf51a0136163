//! Coarse per-worker deadlines for waits that are long and rarely hit: a
//! client's stalled body (`request_body_timeout`), a write that makes no
//! progress (`send_timeout`), the warm-read window. Arming one is a slot in
//! a per-worker slab instead of an entry in the runtime's timer wheel
//! (measured: a `monoio::time::timeout` around each write cost about 880
//! instructions, see docs/benchmarks.md); the worker's 100 ms housekeeping
//! tick sweeps the slab and wakes what expired. So a deadline fires between
//! 0 and ~100 ms late, which is nothing against the 60 s defaults; waits
//! that need precision (the route timeout, upstream reads) keep real timers.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// A worker's armed deadlines.
#[derive(Debug, Default)]
pub struct Deadlines {
    slots: RefCell<Slots>,
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

impl Deadlines {
    /// Arm a deadline at `at`; it is disarmed when the guard drops.
    pub fn arm(&self, at: Instant) -> Deadline<'_> {
        let mut s = self.slots.borrow_mut();
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

    /// Mark every deadline at or before `now` expired and wake its task.
    /// Returns how many expired.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut wake = Vec::new();
        let mut expired = 0;
        {
            let mut s = self.slots.borrow_mut();
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

    /// Deadlines armed now.
    pub fn armed(&self) -> usize {
        let s = self.slots.borrow();
        s.entries.len() - s.free.len()
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
    key: u32,
}

impl Deadline<'_> {
    /// Ready once the deadline has been swept as expired; otherwise the
    /// task is woken when it is.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.deadlines.slots.borrow_mut();
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
        let mut s = self.deadlines.slots.borrow_mut();
        let slot = &mut s.entries[self.key as usize];
        slot.used = false;
        slot.waker = None;
        s.free.push(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slots_are_reused_and_swept() {
        let d = Deadlines::default();
        let now = Instant::now();
        let a = d.arm(now + Duration::from_secs(1));
        let b = d.arm(now + Duration::from_secs(3));
        assert_eq!(d.armed(), 2);
        assert_eq!(d.sweep(now), 0);
        drop(a);
        assert_eq!(d.armed(), 1);
        let c = d.arm(now + Duration::from_secs(2));
        assert_eq!(c.key, 0, "the freed slot is reused");
        // Only armed, due deadlines expire; a freed slot never does.
        assert_eq!(d.sweep(now + Duration::from_millis(2500)), 1);
        let s = d.slots.borrow();
        assert!(s.entries[0].expired && !s.entries[1].expired);
        drop(s);
        drop((b, c));
        assert_eq!(d.armed(), 0);
    }
}
