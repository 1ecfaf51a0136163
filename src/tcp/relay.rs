//! Relaying bytes between two connected sockets, both directions at once.
//!
//! Each direction starts with a rented buffer (cheapest for small messages:
//! one read, one write). In `auto` mode a direction that fills its buffer
//! several times in a row is moving bulk data and switches to splice(2)
//! through a pipe, so payload bytes never enter user space. A FIN from one
//! side becomes shutdown(SHUT_WR) towards the other (half-close), and the
//! relay ends when both directions have ended, when one fails, or after
//! `idle_timeout` without a byte in either direction.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::{Duration, Instant};

use monoio::io::splice::{SpliceDestination, SpliceSource};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};
use monoio::net::TcpStream;

pub use crate::config::file::SpliceMode;
use crate::worker::Driver;

/// Size of the rented buffer of one direction.
pub const BUFFER_SIZE: usize = 16 * 1024;
/// Full buffers in a row after which `auto` switches a direction to splice.
const SPLICE_AFTER_FULL_READS: u32 = 4;
/// Bytes asked of one splice into the pipe (the default pipe holds 64 KiB).
const PIPE_CHUNK: u32 = 64 * 1024;

/// What a finished relay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayOutcome {
    pub downstream_to_upstream: u64,
    pub upstream_to_downstream: u64,
    /// Ended by `idle_timeout`.
    pub idle_timeout: bool,
    /// Directions that switched to splice.
    pub spliced_directions: u8,
}

/// Relay until both directions end, one fails, or the connection idles out.
pub async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    idle_timeout: Duration,
    mode: SpliceMode,
    driver: Driver,
) -> RelayOutcome {
    let fds = [client.as_raw_fd(), upstream.as_raw_fd()];
    let activity = Cell::new(Instant::now());
    let timed_out = Cell::new(false);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let down = Pump::new(fds, &activity, mode, driver);
    let up = Pump::new([fds[1], fds[0]], &activity, mode, driver);
    let both = async { monoio::join!(down.run(cr, uw), up.run(ur, cw)) };
    let mut outcome = RelayOutcome::default();
    monoio::select! {
        ((a, sa), (b, sb)) = both => {
            outcome.downstream_to_upstream = a;
            outcome.upstream_to_downstream = b;
            outcome.spliced_directions = u8::from(sa) + u8::from(sb);
        }
        _ = watchdog(&activity, idle_timeout, fds, &timed_out) => {}
    }
    outcome.idle_timeout = timed_out.get();
    outcome
}

/// Sleeps until the connection has been idle for `idle`, then shuts both
/// sockets down, which completes every pending operation on them; never
/// returns, so the relay ends through its directions.
async fn watchdog(
    activity: &Cell<Instant>,
    idle: Duration,
    fds: [RawFd; 2],
    timed_out: &Cell<bool>,
) {
    loop {
        let deadline = activity.get() + idle;
        let now = Instant::now();
        if now >= deadline {
            timed_out.set(true);
            shutdown_both(fds);
            std::future::pending::<()>().await;
        }
        monoio::time::sleep(deadline - now).await;
    }
}

/// Abort both sockets; pending reads return 0 and writes fail at once.
fn shutdown_both(fds: [RawFd; 2]) {
    for fd in fds {
        // SAFETY: both fds are owned by streams that outlive the relay future
        // that calls this; shutdown() on a socket fd has no memory effects.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
}

/// One direction: reads from `fds[0]`'s stream, writes to `fds[1]`'s.
struct Pump<'a> {
    fds: [RawFd; 2],
    activity: &'a Cell<Instant>,
    mode: SpliceMode,
    driver: Driver,
}

impl<'a> Pump<'a> {
    fn new(fds: [RawFd; 2], activity: &'a Cell<Instant>, mode: SpliceMode, driver: Driver) -> Self {
        Pump {
            fds,
            activity,
            mode,
            driver,
        }
    }

    /// Returns bytes moved and whether splice was used. On error both
    /// sockets are shut down so the other direction ends too.
    async fn run(&self, mut r: TcpOwnedReadHalf, mut w: TcpOwnedWriteHalf) -> (u64, bool) {
        let mut total = 0u64;
        let mut spliced = false;
        let result = async {
            if self.mode != SpliceMode::Always {
                match self.buffered(&mut r, &mut w, &mut total).await? {
                    Step::Done => return Ok(()),
                    Step::SwitchToSplice => {}
                }
            }
            spliced = true;
            self.spliced(&mut r, &mut w, &mut total).await
        }
        .await;
        match result {
            // EOF: pass the half-close on.
            Ok(()) => {
                let _ = w.shutdown().await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "relay direction failed; closing both sides");
                shutdown_both(self.fds);
            }
        }
        (total, spliced)
    }

    async fn buffered(
        &self,
        r: &mut TcpOwnedReadHalf,
        w: &mut TcpOwnedWriteHalf,
        total: &mut u64,
    ) -> io::Result<Step> {
        let mut buf: Vec<u8> = Vec::with_capacity(BUFFER_SIZE);
        let mut full_reads = 0;
        loop {
            buf.clear();
            let (res, b) = r.read(buf).await;
            buf = b;
            let n = match res {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other?,
            };
            if n == 0 {
                return Ok(Step::Done);
            }
            self.activity.set(Instant::now());
            let (res, b) = w.write_all(buf).await;
            buf = b;
            res?;
            *total += n as u64;
            self.activity.set(Instant::now());
            if self.mode == SpliceMode::Auto {
                full_reads = if n == BUFFER_SIZE { full_reads + 1 } else { 0 };
                if full_reads >= SPLICE_AFTER_FULL_READS {
                    return Ok(Step::SwitchToSplice);
                }
            }
        }
    }

    async fn spliced(
        &self,
        r: &mut TcpOwnedReadHalf,
        w: &mut TcpOwnedWriteHalf,
        total: &mut u64,
    ) -> io::Result<()> {
        let (mut pipe_r, mut pipe_w) = monoio::net::unix::new_pipe()?;
        // io_uring runs splice in a kernel worker thread that blocks until data
        // arrives; waiting for readability first keeps idle connections from
        // parking such threads. epoll's splice already waits for readiness.
        let probe = match self.driver {
            Driver::IoUring => Some(readiness_probe(self.fds[0])?),
            Driver::Epoll => None,
        };
        loop {
            if let Some(p) = &probe {
                p.readable(false).await?;
            }
            let n = match r.splice_to_pipe(&mut pipe_w, PIPE_CHUNK).await {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other?,
            };
            if n == 0 {
                return Ok(());
            }
            self.activity.set(Instant::now());
            let mut left = n;
            while left > 0 {
                let m = match w.splice_from_pipe(&mut pipe_r, left).await {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => other?,
                };
                if m == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                left -= m;
                self.activity.set(Instant::now());
            }
            *total += u64::from(n);
        }
    }
}

enum Step {
    Done,
    SwitchToSplice,
}

/// A second handle on the same socket, used only to wait for readability.
fn readiness_probe(fd: RawFd) -> io::Result<TcpStream> {
    // SAFETY: dup() of a valid fd; the new fd is owned by the std stream below.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` is a fresh fd that nothing else owns.
    let std = unsafe { std::net::TcpStream::from_raw_fd(dup) };
    TcpStream::from_std(std)
}
