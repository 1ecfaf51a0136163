//! splice(2) called inline from the worker, for the io_uring driver.
//!
//! io_uring runs every `IORING_OP_SPLICE` in an io-wq kernel thread: each
//! 64 KiB chunk costs a hand-off to that thread and back, which took 66% of
//! the relay's CPU on a bulk stream (docs/benchmarks.md "L4 relay"). The
//! epoll driver already calls splice(2) from the worker when a socket is
//! ready, as HAProxy does; this does the same under io_uring: a
//! non-blocking splice is tried first, and only when it would block does
//! the direction wait for readiness (a poll on the ring).
//!
//! Non-blocking needs `O_NONBLOCK` on both sockets (`SPLICE_F_NONBLOCK`
//! covers only the pipe; a splice into a socket honours only the socket's
//! own flag), so a relay that starts splicing sets it on both. The other
//! direction may still be buffered, on ring reads and writes of those
//! sockets: on 6.18 the ring still waits for a non-blocking socket (tested:
//! `spliced_and_buffered_directions_side_by_side` in tests/tcp_proxy.rs
//! sees no `EAGAIN`), and where a kernel completes them with `EAGAIN`
//! instead, the relay's buffered path takes it as "not ready" and waits for
//! readiness (`tcp::relay`).

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A pipe with both ends non-blocking, private to one relay direction.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// A pipe asked to hold `size` bytes; it keeps the kernel's default
    /// (64 KiB) where the kernel refuses (see [`Pipe::capacity`]).
    pub fn new(size: usize) -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two descriptors for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by
        // nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let fd = write.as_raw_fd();
        let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        // SAFETY: fcntl on the pipe just made; no memory passed. A refusal
        // (over fs.pipe-max-size, or the user's pipe pages past
        // fs.pipe-user-pages-soft) leaves the pipe as it was.
        let mut got = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size) };
        if got < 0 {
            // SAFETY: as above.
            got = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
        }
        let capacity = usize::try_from(got).unwrap_or(0).max(4096);
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    /// Bytes the pipe holds: what one splice into it asks for.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Move up to `len` bytes from socket `from` into the pipe. `Ok(0)`: end
    /// of stream; `WouldBlock`: nothing to read yet.
    pub fn fill(&self, from: RawFd, len: usize) -> io::Result<usize> {
        splice(from, self.write.as_raw_fd(), len)
    }

    /// Move up to `len` bytes from the pipe into socket `to`. `WouldBlock`:
    /// the socket's send buffer is full.
    pub fn drain(&self, to: RawFd, len: usize) -> io::Result<usize> {
        splice(self.read.as_raw_fd(), to, len)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice(2) reads and writes only kernel objects named by the
    // two descriptors; no user memory is passed (null offsets).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Set `O_NONBLOCK` on a socket (shared by every descriptor of it).
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller keeps open; no memory passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK != 0 {
        return Ok(());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Let the worker's other tasks (and the ring's completions) run once: a
/// direction that never has to wait would otherwise hold the worker.
pub fn yield_now() -> YieldNow {
    YieldNow(false)
}

pub struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    /// Bytes go socket -> pipe -> socket unchanged; an empty socket and a
    /// full one answer `WouldBlock` instead of blocking; EOF reads 0.
    #[test]
    fn moves_bytes_and_never_blocks() {
        let (mut client, proxy_in) = pair();
        let (proxy_out, mut server) = pair();
        for s in [&proxy_in, &proxy_out] {
            set_nonblocking(s.as_raw_fd()).unwrap();
        }
        let pipe = Pipe::new(65536).unwrap();
        let e = pipe.fill(proxy_in.as_raw_fd(), 65536).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);

        client.write_all(b"hello splice").unwrap();
        let n = loop {
            match pipe.fill(proxy_in.as_raw_fd(), 65536) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                other => break other.unwrap(),
            }
        };
        assert_eq!(n, 12);
        assert_eq!(pipe.drain(proxy_out.as_raw_fd(), n).unwrap(), 12);
        let mut got = [0u8; 12];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello splice");

        // Nobody reads `server`: the send side fills and then would block.
        let chunk = vec![7u8; 65536];
        let mut blocked = false;
        for _ in 0..4096 {
            client.write_all(&chunk).unwrap();
            let n = loop {
                match pipe.fill(proxy_in.as_raw_fd(), 65536) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                    other => break other.unwrap(),
                }
            };
            match pipe.drain(proxy_out.as_raw_fd(), n) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked = true;
                    break;
                }
                other => {
                    other.unwrap();
                }
            }
        }
        assert!(blocked, "a full socket never answered WouldBlock");

        drop(client);
        let pipe = Pipe::new(65536).unwrap();
        // What is still queued comes first, then the end of stream.
        loop {
            match pipe.fill(proxy_in.as_raw_fd(), 65536) {
                Ok(0) => break,
                Ok(n) => {
                    let mut sink = vec![0u8; n];
                    // SAFETY: reading into a buffer of n bytes from our pipe.
                    let r =
                        unsafe { libc::read(pipe.read.as_raw_fd(), sink.as_mut_ptr().cast(), n) };
                    assert_eq!(r, n as isize);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
    }
}
