//! Per-worker pools of upstream connections (idle HTTP/1.1 ones, and
//! HTTP/2 ones shared by concurrent streams), keyed by endpoint
//! address and transport (plaintext, or the digest of the cluster's TLS
//! settings) so they survive config reloads that change neither, and a
//! connection made under one cluster's TLS settings never serves another's
//! (docs/security.md, "Pools keyed by transport identity"). A connection
//! is pooled only after its response was read completely and nothing else
//! arrived.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;

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

/// One upstream HTTP/2 connection.
#[derive(Debug)]
struct Client {
    send: SendRequest<Bytes>,
    /// Set by the connection's task when it ends.
    closed: Rc<Cell<bool>>,
    /// Streams of this worker's requests open on it now.
    streams: Rc<Cell<usize>>,
}

/// A stream slot on an upstream connection, held for one try.
#[derive(Debug)]
pub struct Lease {
    pub send: SendRequest<Bytes>,
    streams: Rc<Cell<usize>>,
}

impl Lease {
    fn new(send: SendRequest<Bytes>, streams: Rc<Cell<usize>>) -> Lease {
        streams.set(streams.get() + 1);
        Lease { send, streams }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.streams.set(self.streams.get().saturating_sub(1));
    }
}

/// A worker's HTTP/2 connections to upstream endpoints.
#[derive(Debug, Default)]
pub struct H2Pool {
    conns: RefCell<FxHashMap<PoolKey, Vec<Client>>>,
}

impl H2Pool {
    /// A live connection to `addr` with room for one more stream (the
    /// peer's SETTINGS_MAX_CONCURRENT_STREAMS).
    pub fn pick(&self, key: PoolKey) -> Option<Lease> {
        let mut conns = self.conns.borrow_mut();
        let list = conns.get_mut(&key)?;
        list.retain(|c| !c.closed.get());
        list.iter()
            .find(|c| c.streams.get() < c.send.current_max_send_streams())
            .map(|c| Lease::new(c.send.clone(), c.streams.clone()))
    }

    /// Connections open for `key`.
    pub fn open(&self, key: PoolKey) -> usize {
        self.conns
            .borrow()
            .get(&key)
            .map_or(0, |l| l.iter().filter(|c| !c.closed.get()).count())
    }

    /// Stop handing out connections whose key `keep` refuses: each closes
    /// once the streams it carries now have ended. Returns how many.
    pub fn retire(&self, keep: impl Fn(&PoolKey) -> bool) -> usize {
        let mut retired = 0;
        self.conns.borrow_mut().retain(|key, list| {
            let k = keep(key);
            if !k {
                retired += list.len();
            }
            k
        });
        retired
    }

    /// Pool a new connection's sender; `closed` is the flag its task
    /// sets when the connection ends. The lease for its first stream.
    pub fn add(&self, key: PoolKey, send: SendRequest<Bytes>, closed: Rc<Cell<bool>>) -> Lease {
        let streams = Rc::new(Cell::new(0));
        let client = Client {
            send: send.clone(),
            closed,
            streams: streams.clone(),
        };
        self.conns.borrow_mut().entry(key).or_default().push(client);
        Lease::new(send, streams)
    }
}
