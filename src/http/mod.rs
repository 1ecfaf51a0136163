//! HTTP/1.1 reverse proxying.
//!
//! `codec` parses and validates heads (the request-smuggling defences),
//! `fields` holds the header rules they share,
//! `chunked` decodes the chunked coding, `server` runs a client connection,
//! `head` reads the next request head (warm read, idle wait),
//! `downstream` owns the client socket's reads and writes, `record` the
//! access log line and metrics of a request,
//! `proxy` runs one upstream exchange, `body` streams its bodies, `serialize` rebuilds heads for the
//! other side, `pool` keeps upstream connections, and `error` maps every
//! failure to what the client sees.

mod body;
pub mod chunked;
pub mod codec;
pub mod downstream;
pub mod error;
mod fields;
mod forward;
pub use io::read_more as io_read_more;

/// The request as the proxy would send it upstream for a client at
/// 127.0.0.1 on a plain listener (for property tests and fuzzing).
pub fn upstream_request(head: &codec::RequestHead, route: &crate::route::Route) -> bytes::Bytes {
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    serialize::serialize_request(head, route, peer, "upstream", false, None, None).0
}
mod head;
mod io;
pub mod pool;
mod proxy;
mod record;
mod retries;
mod serialize;
mod server;
pub mod upconn;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Listener, Snapshot};
use crate::worker::{ListenerHandle, WorkerCtx};

/// Serve one accepted connection of an http listener (`listener` as it was
/// at accept; each request routes on the snapshot current when it arrives).
/// `Some`: the connection went idle after a request and is handed back to
/// be parked.
pub async fn serve(
    ctx: &Rc<WorkerCtx>,
    handle: &Rc<ListenerHandle>,
    accept_snapshot: &Arc<Snapshot>,
    listener: &Listener,
    incoming: downstream::Incoming,
) -> Option<Parked> {
    let (conn, idle_left) =
        server::serve_connection(ctx, handle, accept_snapshot, listener, incoming).await?;
    Some(Parked::new(ctx, handle, accept_snapshot, conn, idle_left))
}

/// An idle keep-alive connection between requests, outside the task that
/// served it: an idle connection costs this (a few hundred bytes, no
/// buffer) and a readiness wait, not a whole connection task (ARCHITECTURE
/// invariant 8; docs/benchmarks.md, idle memory). A served connection is
/// parked when it stays idle for the warm window after its response.
#[derive(Debug)]
pub struct Parked {
    ctx: Rc<WorkerCtx>,
    handle: Rc<ListenerHandle>,
    snapshot: Arc<Snapshot>,
    conn: downstream::Downstream,
    idle_left: Duration,
}

impl Parked {
    fn new(
        ctx: &Rc<WorkerCtx>,
        handle: &Rc<ListenerHandle>,
        snapshot: &Arc<Snapshot>,
        conn: downstream::Downstream,
        idle_left: Duration,
    ) -> Parked {
        Parked {
            ctx: ctx.clone(),
            handle: handle.clone(),
            snapshot: snapshot.clone(),
            conn,
            idle_left,
        }
    }

    /// Wait for the next request's first bytes, up to what is left of
    /// `idle_timeout`; false: close instead (timeout, error, listener
    /// stopping).
    pub async fn wait(&mut self) -> bool {
        let wait = head::wait_for_request(
            &self.ctx,
            &self.handle,
            &mut self.conn,
            self.idle_left,
            head::Phase::Served,
        );
        wait.await == head::Wait::Ready
    }

    /// Serve the connection's next requests (after `wait`); `Some` when it
    /// goes idle again.
    pub async fn resume(self) -> Option<Parked> {
        let Parked {
            ctx,
            handle,
            snapshot,
            conn,
            ..
        } = self;
        let listener = handle.resolve(&snapshot)?;
        let served = server::serve_requests(
            &ctx,
            &handle,
            &snapshot,
            listener,
            conn,
            head::Phase::Served,
            0,
        );
        let (conn, idle_left) = served.await?;
        Some(Parked::new(&ctx, &handle, &snapshot, conn, idle_left))
    }
}
