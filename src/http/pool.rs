//! Per-worker keep-alive pools of upstream connections, keyed by endpoint
//! address and transport (plaintext, or the digest of the cluster's TLS
//! settings) so they survive config reloads that change neither, and a
//! connection made under one cluster's TLS settings never serves another's
//! (docs/security.md, "Pools keyed by transport identity"). A connection
//! is pooled only after its response was read completely and nothing else
//! arrived.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use monoio::net::TcpStream;

use super::upconn::UpConn;
use crate::fxhash::FxHashMap;

/// Which pooled connections may serve a request: the endpoint, and the
/// transport they were made with (0: plaintext; else `ClusterTls::digest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: SocketAddr,
    pub transport: u64,
}

impl PoolKey {
    pub fn new(addr: SocketAddr, tls: Option<&crate::tls::ClusterTls>) -> Self {
        PoolKey {
            addr,
            transport: tls.map_or(0, |t| t.digest),
        }
    }
}

/// Idle upstream connections of one worker.
#[derive(Debug, Default)]
pub struct H1Pool {
    idle: RefCell<FxHashMap<PoolKey, Vec<(UpConn, Instant)>>>,
}

impl H1Pool {
    /// The most recently used idle connection to `addr` that is younger than
    /// `max_idle_time` and still clean: not closed by the upstream and with
    /// no stray bytes waiting (a late body after a HEAD or 204, say, which
    /// the next client would read as its response). Others are closed.
    /// `now` may be the worker's coarse clock (pool ages are coarse).
    pub fn take(&self, key: PoolKey, max_idle_time: Duration, now: Instant) -> Option<UpConn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&key)?;
        while let Some((mut stream, since)) = list.pop() {
            if now.saturating_duration_since(since) < max_idle_time && stream.is_clean() {
                return Some(stream);
            }
        }
        None
    }

    /// Keep only connections whose key `keep` accepts; returns how many
    /// were closed.
    pub fn retain(&self, keep: impl Fn(&PoolKey) -> bool) -> usize {
        let mut closed = 0;
        self.idle.borrow_mut().retain(|key, list| {
            let k = keep(key);
            if !k {
                closed += list.len();
            }
            k
        });
        closed
    }

    /// Return a clean connection; closed instead when `max_idle` are pooled.
    pub fn put(&self, key: PoolKey, stream: UpConn, max_idle: usize, now: Instant) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(key).or_default();
        if list.len() < max_idle {
            list.push((stream, now));
        }
    }

    /// Idle connections held for `key`.
    pub fn idle_count(&self, key: PoolKey) -> usize {
        self.idle.borrow().get(&key).map_or(0, Vec::len)
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
