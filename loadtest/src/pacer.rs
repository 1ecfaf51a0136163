//! Precise send times for the open loop. monoio's timers tick in whole
//! milliseconds, so a generator paced by them sends up to 1 ms late, and at
//! 1,000 req/s that lateness was reported as the server's latency. A pacer
//! is a `timerfd` armed at the absolute intended time (nanosecond
//! resolution, with the thread's timer slack set to 1 ns) and waited on
//! through the runtime's readiness poll, so the send leaves within tens of
//! microseconds of its time. Lateness is measured per send and reported.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::time::Instant;

use monoio::net::TcpStream;

/// One connection's timer.
#[derive(Debug)]
pub struct Pacer {
    /// The timerfd, registered with the runtime for readiness only (no
    /// socket operation is ever issued on it).
    ready: TcpStream,
    fd: RawFd,
}

impl Pacer {
    pub fn new() -> io::Result<Self> {
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
        Ok(Pacer {
            ready: TcpStream::from_std(std)?,
            fd,
        })
    }

    /// Wait until `at` (returns at once if it has passed).
    pub async fn until(&self, at: Instant) -> io::Result<()> {
        let now = Instant::now();
        if at <= now {
            return Ok(());
        }
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec we own.
        if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // std's Instant is CLOCK_MONOTONIC on Linux: the target is the
        // monotonic clock now plus what is left.
        let left = at - now;
        let mut nsec = ts.tv_nsec + left.subsec_nanos() as libc::c_long;
        let mut sec = ts.tv_sec + left.as_secs() as libc::time_t;
        if nsec >= 1_000_000_000 {
            nsec -= 1_000_000_000;
            sec += 1;
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            },
        };
        // SAFETY: our timerfd, a spec we own, no old-value pointer.
        let r = unsafe {
            libc::timerfd_settime(
                self.fd,
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // Arming resets the timer's expiration count (and so its
        // readiness): no read is needed to clear the previous expiration.
        while Instant::now() < at {
            self.ready.readable(false).await?;
        }
        Ok(())
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
