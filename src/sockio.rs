//! Socket operations shared by the HTTP server and the TCP relay. Each is
//! written once because each hides a trap of completion-based I/O:
//!
//! - [`read_within`]: a read that is given up after a window. Under
//!   io_uring a posted read belongs to the kernel until it completes;
//!   dropping its future sends a cancel, and if the read completed first its
//!   bytes are lost. This read is cancelled *and then awaited*, so bytes
//!   that arrived at the window's edge are returned, never dropped.
//! - [`write_all_within`]: a write that fails when it makes no progress for
//!   a while (a client that stopped reading must not hold a task forever).
//! - [`Readiness`]: on io_uring, readiness waits for a socket whose halves
//!   are owned by in-flight operations (the relay), through a second
//!   descriptor, so no reference into a half that another operation borrows
//!   is ever made. (Not on epoll: a dup registered beside the original lost
//!   wake-ups there; see `tcp::relay`.)

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncWriteRent, CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;

use crate::deadline::Deadlines;

/// Read into `buf`, giving up after `window` (a coarse deadline: up to
/// ~100 ms more) without a byte. `None`: the
/// window passed and nothing was read (the read was cancelled and its
/// cancellation confirmed); `Some(result)` otherwise, including a read that
/// completed while its cancellation was on the way.
pub async fn read_within<R, B>(
    r: &mut R,
    buf: B,
    deadlines: &Deadlines,
    window: Duration,
) -> (Option<io::Result<usize>>, B)
where
    R: CancelableAsyncReadRent,
    B: IoBufMut + 'static,
{
    let canceller = Canceller::new();
    let read = r.cancelable_read(buf, canceller.handle());
    let mut read = std::pin::pin!(read);
    let mut deadline = deadlines.arm(Instant::now() + window);
    let first = std::future::poll_fn(|cx| {
        if let Poll::Ready(done) = read.as_mut().poll(cx) {
            return Poll::Ready(Some(done));
        }
        if deadline.poll_expired(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await;
    drop(deadline);
    if let Some((res, buf)) = first {
        return (Some(res), buf);
    }
    canceller.cancel();
    let (res, buf) = read.await;
    match res {
        Err(e) if is_cancelled(&e) => (None, buf),
        other => (Some(other), buf),
    }
}

/// The error a cancelled operation completes with (ECANCELED on both
/// drivers; EINTR when io_uring interrupted a blocking attempt).
fn is_cancelled(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ECANCELED) | Some(libc::EINTR))
}

/// Write all of `buf`; fail with `TimedOut` when one write makes no
/// progress for `idle` (a coarse deadline: up to ~100 ms more) (the peer stopped reading and the socket buffer is
/// full). After such a failure the connection must be closed: part of `buf`
/// may have been written.
pub async fn write_all_within<W, B>(
    w: &mut W,
    mut buf: B,
    deadlines: &Deadlines,
    idle: Duration,
) -> io::Result<B>
where
    W: AsyncWriteRent,
    B: IoBuf + 'static,
{
    let len = buf.bytes_init();
    let mut pos = 0;
    while pos < len {
        let write = w.write(buf.slice(pos..));
        let (res, slice) = match deadlines.within(deadlines.after(idle), write).await {
            Ok(done) => done,
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        };
        buf = slice.into_inner();
        match res {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => pos += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf)
}

/// Bytes to write with `writev` that can move past a short write.
pub trait Vectored: monoio::buf::IoVecBuf {
    /// Bytes not yet written.
    fn remaining(&self) -> usize;
    /// Skip `n` written bytes.
    fn advance(&mut self, n: usize);
}

/// [`write_all_within`] for scattered bytes: one `writev` per attempt.
pub async fn write_vectored_within<W, B>(
    w: &mut W,
    mut buf: B,
    deadlines: &Deadlines,
    idle: Duration,
) -> io::Result<()>
where
    W: AsyncWriteRent,
    B: Vectored,
{
    while buf.remaining() > 0 {
        let (res, b) = match deadlines.within(deadlines.after(idle), w.writev(buf)).await {
            Ok(done) => done,
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        };
        buf = b;
        match res {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf.advance(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A second descriptor (`dup`) of a connected socket, used only to wait
/// for readiness while the socket's own halves are moved into in-flight
/// reads and writes. Readiness is a property of the socket, not of the
/// descriptor, so a POLL_ADD on either sees the same state. io_uring only.
#[derive(Debug)]
pub struct Readiness(TcpStream);

impl Readiness {
    pub fn of(stream: &TcpStream) -> io::Result<Self> {
        // SAFETY: the descriptor belongs to `stream`, which is borrowed for
        // the whole call, so it is open while it is borrowed here;
        // `try_clone_to_owned` dups it (F_DUPFD_CLOEXEC) into a new owned fd.
        let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
        let owned = fd.try_clone_to_owned()?;
        TcpStream::from_std(std::net::TcpStream::from(owned)).map(Readiness)
    }

    /// Wait until the socket has bytes (or EOF, or an error) to read. Strict
    /// on epoll: a relaxed check may report stale readiness, and a caller
    /// that then posts a read would hold its buffer while idle.
    pub async fn readable(&self) -> io::Result<()> {
        self.0.readable(false).await
    }

    /// Wait until the socket can take more bytes (or has failed).
    pub async fn writable(&self) -> io::Result<()> {
        self.0.writable(false).await
    }
}

/// Read more bytes, appending to `buf` (growing it by at least `spare`).
pub async fn read_more(
    stream: &mut monoio::net::TcpStream,
    mut buf: bytes::BytesMut,
    spare: usize,
) -> (std::io::Result<usize>, bytes::BytesMut) {
    if buf.capacity() - buf.len() < spare {
        buf.reserve(spare);
    }
    let len = buf.len();
    let cap = buf.capacity();
    let (res, slice) =
        monoio::io::AsyncReadRent::read(stream, monoio::buf::SliceMut::new(buf, len, cap)).await;
    (res, slice.into_inner())
}

/// Write all of a `Bytes`.
pub async fn write_bytes(
    stream: &mut monoio::net::TcpStream,
    data: bytes::Bytes,
) -> std::io::Result<()> {
    let (res, _) = monoio::io::AsyncWriteRentExt::write_all(stream, data).await;
    res.map(|_| ())
}
