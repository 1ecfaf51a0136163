//! Per-worker keep-alive pools of upstream connections, keyed by endpoint
//! address so they survive config reloads. A connection is pooled only after
//! its response was read completely and nothing else arrived.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

/// Idle upstream connections of one worker.
#[derive(Debug, Default)]
pub struct Pool {
    idle: RefCell<HashMap<SocketAddr, Vec<(TcpStream, Instant)>>>,
}

impl Pool {
    /// The most recently used idle connection to `addr` that is younger than
    /// `max_idle_time`; older ones are closed.
    pub fn take(&self, addr: SocketAddr, max_idle_time: Duration) -> Option<TcpStream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some((stream, since)) = list.pop() {
            if since.elapsed() < max_idle_time {
                return Some(stream);
            }
        }
        None
    }

    /// Return a clean connection; closed instead when `max_idle` are pooled.
    pub fn put(&self, addr: SocketAddr, stream: TcpStream, max_idle: usize) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() < max_idle {
            list.push((stream, Instant::now()));
        }
    }

    /// Idle connections held for `addr`.
    pub fn idle_count(&self, addr: SocketAddr) -> usize {
        self.idle.borrow().get(&addr).map_or(0, Vec::len)
    }
}
