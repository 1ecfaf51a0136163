//! Relaying bytes between two connected sockets, both directions at once.
//!
//! Each direction starts with a buffer rented from the worker's pool
//! (cheapest for small messages: one read, one write). While a direction is
//! quiet it waits for readability holding no buffer, so idle connections
//! cost no buffer memory. In `auto` mode a direction that fills its buffer
//! several times in a row is moving bulk data and switches to splice(2)
//! through a pipe, so payload bytes never enter user space. A FIN from one
//! side becomes shutdown(SHUT_WR) towards the other (half-close), and the
//! relay ends when both directions have ended, when one fails, or after
//! `idle_timeout` without a byte in either direction.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use monoio::io::splice::{SpliceDestination, SpliceSource};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};
use monoio::net::TcpStream;

use crate::buffers::BufferPool;
pub use crate::config::file::SpliceMode;
use crate::deadline::Deadlines;
use crate::sockio::{read_within, Readiness};
use crate::worker::Driver;

/// Full buffers in a row after which `auto` switches a direction to splice.
const SPLICE_AFTER_FULL_READS: u32 = 4;
/// How long a warm direction keeps a read (and its buffer) posted on
/// io_uring before it goes back to waiting for readability without one.
/// A coarse deadline (fires 0-100 ms after it), so the window is 200-300 ms,
/// 250 ms on average, as measured best (docs/benchmarks.md).
const WARM_READ_WINDOW: Duration = Duration::from_millis(200);
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
    pool: &BufferPool,
    deadlines: &Deadlines,
) -> RelayOutcome {
    let fds = [client.as_raw_fd(), upstream.as_raw_fd()];
    // On io_uring, readiness of each socket is waited on through a second
    // descriptor (a PollAdd on the dup), so no reference into a split half
    // is ever made. On epoll a dup registered beside the original cost 3x
    // the relay's throughput (docs/benchmarks.md), so there the read half's
    // own stream is used; see `Pump::readable` for why that is sound.
    let ready = match driver {
        Driver::IoUring => match (Readiness::of(&client), Readiness::of(&upstream)) {
            (Ok(c), Ok(u)) => Some([c, u]),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot duplicate a relayed socket; closing");
                return RelayOutcome::default();
            }
        },
        Driver::Epoll => None,
    };
    let activity = Cell::new(Instant::now());
    let timed_out = Cell::new(false);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let shared = Shared {
        activity: &activity,
        deadlines,
        mode,
        driver,
        pool,
    };
    let down = Pump {
        fds,
        from: ready.as_ref().map(|r| &r[0]),
        to: ready.as_ref().map(|r| &r[1]),
        shared: &shared,
    };
    let up = Pump {
        fds: [fds[1], fds[0]],
        from: ready.as_ref().map(|r| &r[1]),
        to: ready.as_ref().map(|r| &r[0]),
        shared: &shared,
    };
    let both = async { monoio::join!(down.run(cr, uw), up.run(ur, cw)) };
    let mut outcome = RelayOutcome::default();
    monoio::select! {
        ((a, sa), (b, sb)) = both => {
            outcome.downstream_to_upstream = a;
            outcome.upstream_to_downstream = b;
            outcome.spliced_directions = u8::from(sa) + u8::from(sb);
        }
        _ = watchdog(&activity, idle_timeout, fds, &timed_out, deadlines) => {}
    }
    outcome.idle_timeout = timed_out.get();
    outcome
}

/// Waits until the connection has been idle for `idle`, then shuts both
/// sockets down, which completes every pending operation on them; never
/// returns, so the relay ends through its directions. On the worker's
/// deadline slabs, not a runtime timer (a `Sleep` is 640 B in every relay).
async fn watchdog(
    activity: &Cell<Instant>,
    idle: Duration,
    fds: [RawFd; 2],
    timed_out: &Cell<bool>,
    deadlines: &Deadlines,
) {
    loop {
        let deadline = activity.get() + idle;
        if Instant::now() >= deadline {
            timed_out.set(true);
            shutdown_both(fds);
            std::future::pending::<()>().await;
        }
        let mut armed = deadlines.arm(deadline);
        std::future::poll_fn(|cx| armed.poll_expired(cx)).await;
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

/// What both directions of one relay share.
struct Shared<'a> {
    activity: &'a Cell<Instant>,
    deadlines: &'a Deadlines,
    mode: SpliceMode,
    driver: Driver,
    pool: &'a BufferPool,
}

/// One direction: reads from `fds[0]`'s stream, writes to `fds[1]`'s.
struct Pump<'a> {
    fds: [RawFd; 2],
    /// io_uring: readiness of the socket read from and of the one written
    /// to, through dups (`None` on epoll).
    from: Option<&'a Readiness>,
    to: Option<&'a Readiness>,
    shared: &'a Shared<'a>,
}

impl Pump<'_> {
    /// Returns bytes moved and whether splice was used. On error both
    /// sockets are shut down so the other direction ends too.
    async fn run(&self, mut r: TcpOwnedReadHalf, mut w: TcpOwnedWriteHalf) -> (u64, bool) {
        let mut total = 0u64;
        let mut spliced = false;
        let result = async {
            if self.shared.mode != SpliceMode::Always {
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
        let size = self.shared.pool.buffer_size();
        let mut full_reads = 0;
        // After a full read more bytes are likely waiting: read again at once.
        // A direction that moved bytes recently is warm: on io_uring its next
        // read is posted at once (one ring operation instead of poll + read)
        // but given up after WARM_READ_WINDOW, releasing the buffer. A cold
        // direction waits for readability first, holding no buffer.
        let mut hot = false;
        let mut warm = false;
        loop {
            if !hot && !warm {
                self.readable(r).await?;
            }
            let (res, buf) = if warm && !hot {
                // Cancelled and then awaited: bytes that arrive at the
                // window's edge are relayed, never dropped.
                match read_within(
                    r,
                    self.shared.pool.get(),
                    self.shared.deadlines,
                    WARM_READ_WINDOW,
                )
                .await
                {
                    (Some(res), buf) => (res, buf),
                    (None, buf) => {
                        self.shared.pool.put(buf);
                        warm = false;
                        continue;
                    }
                }
            } else {
                r.read(self.shared.pool.get()).await
            };
            let n = match res {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.shared.pool.put(buf);
                    continue;
                }
                Err(e) => {
                    self.shared.pool.put(buf);
                    return Err(e);
                }
            };
            if n == 0 {
                self.shared.pool.put(buf);
                return Ok(Step::Done);
            }
            self.shared.activity.set(Instant::now());
            let (res, buf) = w.write_all(buf).await;
            self.shared.pool.put(buf);
            res?;
            *total += n as u64;
            self.shared.activity.set(Instant::now());
            hot = n == size;
            warm = self.shared.driver == Driver::IoUring;
            if self.shared.mode == SpliceMode::Auto {
                full_reads = if hot { full_reads + 1 } else { 0 };
                if full_reads >= SPLICE_AFTER_FULL_READS {
                    return Ok(Step::SwitchToSplice);
                }
            }
        }
    }

    /// Wait until the read half has bytes (or EOF, or an error). Strict on
    /// epoll: a relaxed check can report stale readiness, and the read that
    /// follows would then wait holding a buffer.
    async fn readable(&self, r: &TcpOwnedReadHalf) -> io::Result<()> {
        if let Some(from) = self.from {
            return from.readable().await;
        }
        // SAFETY: monoio's owned halves share the stream through
        // `Rc<UnsafeCell<TcpStream>>`. Their `read`/`write` create a
        // `&mut TcpStream` only for the duration of the call that builds
        // the operation, which then holds a clone of the stream's `SharedFd`,
        // not a reference to the stream; so while the other half's write is
        // in flight no `&mut` to the stream is live, and this shared
        // reference aliases nothing. `readable(&self)` builds its poll from
        // the shared fd the same way. This half is the stream's only reader.
        // Checked against monoio 0.2.4 (pinned in Cargo.lock): re-check on
        // an upgrade.
        let stream: &TcpStream = unsafe { &*r.0.get() };
        stream.readable(false).await
    }

    async fn spliced(
        &self,
        r: &mut TcpOwnedReadHalf,
        w: &mut TcpOwnedWriteHalf,
        total: &mut u64,
    ) -> io::Result<()> {
        let (mut pipe_r, mut pipe_w) = monoio::net::unix::new_pipe()?;
        loop {
            // io_uring runs splice in a kernel worker thread that blocks until
            // data arrives; waiting for readability first keeps idle
            // connections from parking such threads. epoll's splice already
            // waits for readiness.
            if let Some(from) = self.from {
                from.readable().await?;
            }
            let n = match r.splice_to_pipe(&mut pipe_w, PIPE_CHUNK).await {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other?,
            };
            if n == 0 {
                return Ok(());
            }
            self.shared.activity.set(Instant::now());
            let mut left = n;
            while left > 0 {
                // The same for the write side: a slow reader must not park
                // a kernel thread in a blocking splice (the watchdog's
                // shutdown ends this wait at idle_timeout).
                if let Some(to) = self.to {
                    to.writable().await?;
                }
                let m = match w.splice_from_pipe(&mut pipe_r, left).await {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => other?,
                };
                if m == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                left -= m;
                self.shared.activity.set(Instant::now());
            }
            *total += u64::from(n);
        }
    }
}

enum Step {
    Done,
    SwitchToSplice,
}
