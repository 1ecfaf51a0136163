//! Per-worker keep-alive pools of upstream connections, keyed by endpoint
//! address so they survive config reloads. A connection is pooled only after
//! its response was read completely and nothing else arrived.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use monoio::net::TcpStream;

use super::upconn::UpConn;
use crate::fxhash::FxHashMap;

/// Idle upstream connections of one worker.
#[derive(Debug, Default)]
pub struct Pool {
    idle: RefCell<FxHashMap<SocketAddr, Vec<(UpConn, Instant)>>>,
}

impl Pool {
    /// The most recently used idle connection to `addr` that is younger than
    /// `max_idle_time` and still clean: not closed by the upstream and with
    /// no stray bytes waiting (a late body after a HEAD or 204, say, which
    /// the next client would read as its response). Others are closed.
    /// `now` may be the worker's coarse clock (pool ages are coarse).
    pub fn take(&self, addr: SocketAddr, max_idle_time: Duration, now: Instant) -> Option<UpConn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some((mut stream, since)) = list.pop() {
            if now.saturating_duration_since(since) < max_idle_time && stream.is_clean() {
                return Some(stream);
            }
        }
        None
    }

    /// Keep only connections to addresses for which `keep` holds; returns
    /// how many were closed.
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) -> usize {
        let mut closed = 0;
        self.idle.borrow_mut().retain(|addr, list| {
            let k = keep(addr);
            if !k {
                closed += list.len();
            }
            k
        });
        closed
    }

    /// Return a clean connection; closed instead when `max_idle` are pooled.
    pub fn put(&self, addr: SocketAddr, stream: UpConn, max_idle: usize, now: Instant) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() < max_idle {
            list.push((stream, now));
        }
    }

    /// Idle connections held for `addr`.
    pub fn idle_count(&self, addr: SocketAddr) -> usize {
        self.idle.borrow().get(&addr).map_or(0, Vec::len)
    }
}

/// An idle connection is clean when a non-blocking peek finds nothing to
/// read: no EOF, no reset, no stray bytes. One syscall per reuse.
pub fn peek_clean(stream: &TcpStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv into a one-byte buffer we own, on the stream's open fd;
    // MSG_PEEK leaves the data (if any) in the socket, MSG_DONTWAIT makes
    // it return at once whatever the descriptor's blocking mode.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            std::ptr::addr_of_mut!(byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}
