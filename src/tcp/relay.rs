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
//!
//! A relay asked to park ([`relay_parking`]) also ends when both directions
//! have been waiting for readability, holding nothing, for `park_after`:
//! it then hands back duplicates of its two descriptors and the caller
//! parks them in the worker's lot (`http::park`), so an idle relay holds no
//! task, future, timer or buffer; the relay starts again, in a new task,
//! when either socket turns readable.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use monoio::buf::IoBuf;
use monoio::io::{AsyncReadRent, AsyncWriteRent, Splitable};
use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};
use monoio::net::TcpStream;

use crate::buffers::BufferPool;
use crate::deadline::Deadlines;
pub use crate::snapshot::SpliceMode;
use crate::sockio::{read_within, Readiness};
use crate::tcp::splice::{set_nonblocking, yield_now, Pipe};
use crate::worker::driver::Driver;

/// Full buffers in a row after which `auto` switches a direction to splice.
const SPLICE_AFTER_FULL_READS: u32 = 4;
/// How long a warm direction keeps a read (and its buffer) posted on
/// io_uring before it goes back to waiting for readability without one.
/// A coarse deadline (fires 0-100 ms after it), so the window is 200-300 ms,
/// 250 ms on average, as measured best (docs/benchmarks.md).
const WARM_READ_WINDOW: Duration = Duration::from_millis(200);
/// Bytes a spliced direction moves without having to wait before it lets
/// the worker's other tasks run (about 0.4 ms at 20 Gbit/s).
const BYTES_BEFORE_YIELD: usize = 1024 * 1024;

/// What a finished relay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayOutcome {
    pub downstream_to_upstream: u64,
    pub upstream_to_downstream: u64,
    /// Ended by `idle_timeout`.
    pub idle_timeout: bool,
    /// Directions that moved bytes by splice, and those bytes.
    pub spliced_directions: u8,
    pub spliced_bytes: u64,
    /// Parked: the last byte moved at this time.
    pub quiet_since: Option<Instant>,
}

/// How a relay ended when it was allowed to park.
#[derive(Debug)]
pub enum Relayed {
    /// Both directions ended, one failed, or it idled out.
    Ended(RelayOutcome),
    /// Both directions were quiet for `park_after`: the bytes moved so far,
    /// and duplicates of the client's and the upstream's descriptors (the
    /// runtime's sockets are closed; these keep the connections open).
    Parked(RelayOutcome, [OwnedFd; 2]),
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
    let limits = Limits {
        idle_timeout,
        mode,
        pipe_size: crate::snapshot::DEFAULT_SPLICE_PIPE_SIZE,
        park_after: None,
    };
    match relay_parking(client, upstream, limits, driver, pool, deadlines).await {
        Relayed::Ended(outcome) | Relayed::Parked(outcome, _) => outcome,
    }
}

/// A relay's time limits and splice mode.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle_timeout: Duration,
    pub mode: SpliceMode,
    /// The pipe a spliced direction asks for (`splice_pipe_size`); one
    /// splice moves up to this much. Where the kernel refuses it
    /// (`fs.pipe-max-size`, `fs.pipe-user-pages-soft`) the pipe keeps its
    /// size.
    pub pipe_size: usize,
    /// Park after both directions have been quiet this long (`None`: never).
    pub park_after: Option<Duration>,
}

/// [`relay`], or hand the connection back to be parked once it is idle.
pub async fn relay_parking(
    client: TcpStream,
    upstream: TcpStream,
    limits: Limits,
    driver: Driver,
    pool: &BufferPool,
    deadlines: &Deadlines,
) -> Relayed {
    let Limits {
        idle_timeout,
        mode,
        pipe_size,
        park_after,
    } = limits;
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
                return Relayed::Ended(RelayOutcome::default());
            }
        },
        Driver::Epoll => None,
    };
    let activity = Cell::new(Instant::now());
    let timed_out = Cell::new(false);
    // The pumps borrow the halves: a relay that parks reunites them, since
    // dropping a write half shuts its socket down (monoio sends the FIN).
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let cold = [Cell::new(false), Cell::new(false)];
    let shared = Shared {
        activity: &activity,
        cold: &cold,
        deadlines,
        mode,
        pipe_size,
        driver,
        pool,
    };
    let down = Pump {
        side: 0,
        fds,
        from: ready.as_ref().map(|r| &r[0]),
        to: ready.as_ref().map(|r| &r[1]),
        shared: &shared,
    };
    let up = Pump {
        side: 1,
        fds: [fds[1], fds[0]],
        from: ready.as_ref().map(|r| &r[1]),
        to: ready.as_ref().map(|r| &r[0]),
        shared: &shared,
    };
    let moved = [Cell::new(0u64), Cell::new(0u64)];
    let both = async {
        monoio::join!(
            down.run(&mut cr, &mut uw, &moved[0]),
            up.run(&mut ur, &mut cw, &moved[1])
        )
    };
    let mut outcome = RelayOutcome::default();
    let mut quiet = false;
    monoio::select! {
        (sa, sb) = both => {
            outcome.spliced_directions = u8::from(sa.is_some()) + u8::from(sb.is_some());
            outcome.spliced_bytes = sa.unwrap_or(0) + sb.unwrap_or(0);
        }
        _ = watchdog(&activity, idle_timeout, fds, &timed_out, deadlines) => {}
        () = parker(park_after, &activity, &cold, &timed_out, deadlines) => quiet = true,
    }
    outcome.downstream_to_upstream = moved[0].get();
    outcome.upstream_to_downstream = moved[1].get();
    outcome.idle_timeout = timed_out.get();
    // The watchdog may have shut both sockets down in the same turn as the
    // parker saw both directions waiting: that relay has ended.
    if !quiet || outcome.idle_timeout {
        return Relayed::Ended(outcome);
    }
    // Both directions were suspended in a readiness wait and are dropped:
    // no byte is held anywhere. The readiness duplicates go first, so the
    // two duplicates below fit where they were.
    drop(ready);
    let (Ok(client), Ok(upstream)) = (cr.reunite(cw), ur.reunite(uw)) else {
        // Halves of one stream always reunite.
        return Relayed::Ended(outcome);
    };
    // SAFETY: both descriptors belong to `client` and `upstream`, open
    // while they are borrowed here.
    let dup = |s: &TcpStream| unsafe { BorrowedFd::borrow_raw(s.as_raw_fd()) }.try_clone_to_owned();
    match (dup(&client), dup(&upstream)) {
        (Ok(a), Ok(b)) => {
            // Dropping a whole stream closes its descriptor without a
            // shutdown: the connections stay open through the duplicates.
            drop((client, upstream));
            outcome.quiet_since = Some(activity.get());
            Relayed::Parked(outcome, [a, b])
        }
        // Out of descriptors: relay on as a task, never parking.
        _ => {
            let limits = Limits {
                park_after: None,
                ..limits
            };
            let more = Box::pin(relay_parking(
                client, upstream, limits, driver, pool, deadlines,
            ));
            match more.await {
                Relayed::Ended(rest) | Relayed::Parked(rest, _) => Relayed::Ended(RelayOutcome {
                    downstream_to_upstream: outcome.downstream_to_upstream
                        + rest.downstream_to_upstream,
                    upstream_to_downstream: outcome.upstream_to_downstream
                        + rest.upstream_to_downstream,
                    idle_timeout: rest.idle_timeout,
                    spliced_directions: rest.spliced_directions,
                    spliced_bytes: rest.spliced_bytes,
                    quiet_since: None,
                }),
            }
        }
    }
}

/// Completes once both directions have waited for readability (holding
/// no buffer, nothing half-written) for `park_after` with no byte moved;
/// pending forever without `park_after`. Polled beside both directions in
/// one task, so when it sees both flags set both directions are suspended
/// in that wait, and dropping them loses nothing: a readiness they had not
/// yet observed is reported again by the lot's level-triggered epoll.
async fn parker(
    park_after: Option<Duration>,
    activity: &Cell<Instant>,
    cold: &[Cell<bool>; 2],
    timed_out: &Cell<bool>,
    deadlines: &Deadlines,
) {
    let Some(after) = park_after else {
        return std::future::pending().await;
    };
    loop {
        let due = activity.get() + after;
        let now = Instant::now();
        if timed_out.get() {
            return std::future::pending().await;
        }
        if now >= due && cold.iter().all(Cell::get) {
            return;
        }
        // Not quiet yet (a direction still warm or busy): look again later.
        let mut armed = deadlines.arm(due.max(now + after / 2));
        std::future::poll_fn(|cx| armed.poll_expired(cx)).await;
    }
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
    /// Per direction: waiting for readability in buffered mode.
    cold: &'a [Cell<bool>; 2],
    deadlines: &'a Deadlines,
    mode: SpliceMode,
    pipe_size: usize,
    driver: Driver,
    pool: &'a BufferPool,
}

/// One direction: reads from `fds[0]`'s stream, writes to `fds[1]`'s.
struct Pump<'a> {
    /// 0: client to upstream, 1: upstream to client.
    side: usize,
    fds: [RawFd; 2],
    /// io_uring: readiness of the socket read from and of the one written
    /// to, through dups (`None` on epoll).
    from: Option<&'a Readiness>,
    to: Option<&'a Readiness>,
    shared: &'a Shared<'a>,
}

impl Pump<'_> {
    /// Returns the bytes moved by splice when splice was used; `total`
    /// counts the bytes moved as they go (read when the relay ends or
    /// parks). On error both sockets are shut down so the other direction
    /// ends too.
    async fn run(
        &self,
        r: &mut TcpOwnedReadHalf,
        w: &mut TcpOwnedWriteHalf,
        total: &Cell<u64>,
    ) -> Option<u64> {
        let mut spliced_from = None;
        let result = async {
            if self.shared.mode != SpliceMode::Always {
                match self.buffered(r, w, total).await? {
                    Step::Done => return Ok(()),
                    Step::SwitchToSplice => {}
                }
            }
            spliced_from = Some(total.get());
            self.spliced(r, w, total).await
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
        spliced_from.map(|from| total.get() - from)
    }

    async fn buffered(
        &self,
        r: &mut TcpOwnedReadHalf,
        w: &mut TcpOwnedWriteHalf,
        total: &Cell<u64>,
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
                self.shared.cold[self.side].set(true);
                let ready = self.readable(r).await;
                self.shared.cold[self.side].set(false);
                ready?;
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
                // The socket was made non-blocking by the other direction's
                // inline splice: not ready after all, wait for it.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.shared.pool.put(buf);
                    (hot, warm) = (false, false);
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
            let (res, buf) = self.write_all(w, buf).await;
            self.shared.pool.put(buf);
            res?;
            total.set(total.get() + n as u64);
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

    /// Write all of `buf`. On io_uring a write can complete with
    /// `WouldBlock` once the other direction's inline splice has made the
    /// socket non-blocking: the rest then waits for writability.
    async fn write_all(
        &self,
        w: &mut TcpOwnedWriteHalf,
        mut buf: Vec<u8>,
    ) -> (io::Result<()>, Vec<u8>) {
        let len = buf.len();
        let mut pos = 0;
        while pos < len {
            let (res, slice) = w.write(buf.slice(pos..)).await;
            buf = slice.into_inner();
            match res {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => pos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = self.writable(w).await {
                        return (Err(e), buf);
                    }
                }
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Wait until the read half has bytes (or EOF, or an error). Strict on
    /// epoll: a relaxed check can report stale readiness, and the read that
    /// follows would then wait holding a buffer.
    async fn readable(&self, r: &TcpOwnedReadHalf) -> io::Result<()> {
        match self.from {
            Some(from) => from.readable().await,
            None => read_side(r).readable(false).await,
        }
    }

    /// Wait until the write half's socket can take more bytes (or has
    /// failed).
    async fn writable(&self, w: &TcpOwnedWriteHalf) -> io::Result<()> {
        match self.to {
            Some(to) => to.writable().await,
            None => write_side(w).writable(false).await,
        }
    }

    /// splice(2) called inline (`tcp::splice`) on both drivers; under
    /// io_uring never through the ring's kernel worker threads. Each chunk
    /// is tried at once, and the direction waits for readiness only when a
    /// splice would block (io_uring: a poll on the ring through the
    /// readiness duplicates; epoll: the stream's own readiness). The
    /// watchdog's shutdown ends either wait at `idle_timeout`.
    async fn spliced(
        &self,
        r: &mut TcpOwnedReadHalf,
        w: &mut TcpOwnedWriteHalf,
        total: &Cell<u64>,
    ) -> io::Result<()> {
        let [rfd, wfd] = self.fds;
        // Both sockets: this direction reads one and writes the other, and
        // a splice into a socket waits unless the socket is non-blocking
        // (epoll's already are).
        set_nonblocking(rfd)?;
        set_nonblocking(wfd)?;
        let pipe = Pipe::new(self.shared.pipe_size)?;
        let chunk = pipe.capacity();
        let mut unbroken = 0;
        loop {
            let n = match pipe.fill(rfd, chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    unbroken = 0;
                    self.readable(r).await?;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.shared.activity.set(Instant::now());
            let mut left = n;
            while left > 0 {
                match pipe.drain(wfd, left) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(m) => left -= m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        unbroken = 0;
                        self.writable(w).await?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            total.set(total.get() + n as u64);
            self.shared.activity.set(Instant::now());
            // A direction that never has to wait would hold the worker.
            unbroken += n;
            if unbroken >= BYTES_BEFORE_YIELD {
                unbroken = 0;
                yield_now().await;
            }
        }
    }
}

/// The stream behind a read half, to wait on its readiness (epoll).
///
/// SAFETY argument: monoio's owned halves share the stream through
/// `Rc<UnsafeCell<TcpStream>>`. Their `read`/`write` create a
/// `&mut TcpStream` only for the duration of the call that builds the
/// operation, which then holds a clone of the stream's `SharedFd`, not a
/// reference to the stream; so while the other half's operation is in
/// flight no `&mut` to the stream is live, and this shared reference
/// aliases nothing. `readable`/`writable(&self)` build their poll from the
/// shared fd the same way. Each half is its stream's only reader (writer)
/// and waits for its own direction only. Checked against monoio 0.2.4
/// (pinned in Cargo.lock): re-check on an upgrade.
fn read_side(r: &TcpOwnedReadHalf) -> &TcpStream {
    // SAFETY: see above.
    unsafe { &*r.0.get() }
}

/// The stream behind a write half (epoll); see [`read_side`].
fn write_side(w: &TcpOwnedWriteHalf) -> &TcpStream {
    // SAFETY: see `read_side`.
    unsafe { &*w.0.get() }
}

enum Step {
    Done,
    SwitchToSplice,
}
