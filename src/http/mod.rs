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

mod admit;
mod answer;
mod attempt;
mod body;
pub mod chunked;
pub mod codec;
pub mod downstream;
pub mod error;
mod exchange;
mod fault;
mod fields;
mod forward;
mod grpc_answer;
pub mod grpc_web;
pub mod h2;

/// The request as the proxy would send it upstream for a client at
/// 127.0.0.1 on a plain listener (for property tests and fuzzing).
pub fn upstream_request(head: &codec::RequestHead, route: &crate::route::Route) -> bytes::Bytes {
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    serialize::serialize_request(head, route, peer, "upstream", false, None, None).0
}
mod head;
mod kept_body;
mod mirror;
pub mod normalize;
pub mod park;
pub mod pool;
mod proxy;
mod record;
mod request;
mod retries;
mod serialize;
mod server;
mod spans;
pub mod upconn;

use std::rc::Rc;
use std::sync::Arc;

use crate::snapshot::{Listener, Snapshot};
use crate::worker::ctx::{ListenerHandle, WorkerCtx};
pub use park::Parked;

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
    Some(Parked::new(handle, accept_snapshot, conn, idle_left))
}
