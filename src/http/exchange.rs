//! One forwarded request as every stage of its exchange sees it: what it
//! reads ([`Forward`]), the exchange with one upstream connection
//! ([`Exchange`]; its steps are in `proxy`, `body`, `h2::upstream` and
//! `h2::respond`), how a try fails ([`ExchangeError`]), what the
//! connection does next ([`Next`]) and what the upstream side did
//! ([`UpstreamRecord`]). Types only: this file calls none of the stages.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use monoio::net::TcpStream;

use super::codec::RequestHead;
use super::error::HttpError;
use crate::route::Route;
use crate::snapshot::{HttpSettings, Snapshot};
use crate::upstream::Cluster;
use crate::worker::ctx::WorkerCtx;

/// What the upstream side of one request did, for metrics and the access log.
#[derive(Debug, Default)]
pub struct UpstreamRecord {
    /// The endpoint of the last attempt.
    pub address: Cell<Option<SocketAddr>>,
    /// The upstream's final status (0: none received).
    pub status: Cell<u16>,
    /// When the request was sent, its response head arrived (taken by
    /// the balancer's latency estimate), and the response ended.
    pub sent: Cell<Option<Instant>>,
    pub head_at: Cell<Option<Instant>>,
    pub done: Cell<Option<Instant>>,
    /// The x-request-id sent upstream (the client's or a generated one).
    pub request_id: super::serialize::RequestId,
    /// Tries made (1 without retries).
    pub attempts: Cell<u32>,
    /// Why a wanted retry was not sent (`URX`, `RB`, `RO`), for the log.
    pub retry_flag: Cell<Option<&'static str>>,
    /// The request's trace, when `[tracing]` is on.
    pub trace: Option<crate::trace::RequestTrace>,
    /// Connect and TLS times of a new upstream connection.
    pub timing: Timing,
    /// gRPC calls: `grpc-status` and `grpc-message` of the response (head
    /// or trailers), or of the proxy's own answer.
    pub grpc_status: Cell<Option<u8>>,
    pub grpc_message: std::cell::RefCell<Option<Bytes>>,
}

impl UpstreamRecord {
    /// Take note of a response field of a gRPC call.
    pub fn note_grpc(&self, name: &[u8], value: &[u8]) {
        if name.eq_ignore_ascii_case(b"grpc-status") {
            if let Some(s) = crate::grpc::parse_status(value) {
                self.grpc_status.set(Some(s));
            }
        } else if name.eq_ignore_ascii_case(b"grpc-message") {
            *self.grpc_message.borrow_mut() = Some(Bytes::copy_from_slice(value));
        }
    }

    /// The same for each line of an HTTP/1.1 trailer section.
    pub fn note_grpc_section(&self, section: &[u8]) {
        for line in section.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(colon) = line.iter().position(|&b| b == b':') {
                self.note_grpc(&line[..colon], super::codec::trim_ows(&line[colon + 1..]));
            }
        }
    }

    /// From sending the request to the response's last byte (or the failure).
    pub fn duration(&self) -> Option<Duration> {
        let sent = self.sent.get()?;
        Some(self.done.get().unwrap_or_else(Instant::now) - sent)
    }
}

/// What the connection does after a forwarded exchange.
pub enum Next {
    /// Serve the next request (if the client wants to).
    KeepAlive,
    /// Close the client connection.
    Close,
    /// The upstream switched protocols: relay raw bytes from now on.
    Upgrade(TcpStream, BytesMut),
}

/// One request being forwarded: what every stage of its exchange reads.
#[derive(Clone, Copy)]
pub struct Forward<'a> {
    pub ctx: &'a Rc<WorkerCtx>,
    pub http: &'a HttpSettings,
    pub snapshot: &'a Snapshot,
    pub route: &'a Route,
    pub head: &'a RequestHead,
    /// When the request head arrived (the route `timeout` counts from here).
    pub started: Instant,
    /// The route `timeout`, lowered by a gRPC call's `grpc-timeout`.
    pub timeout: Option<Duration>,
    /// A gRPC call (`content-type: application/grpc*`, or gRPC-Web).
    pub grpc: bool,
    /// A gRPC-Web call translated to gRPC (`grpc_web = true` routes).
    pub web: Option<&'a super::grpc_web::WebCall>,
    /// The request body, already read whole (gRPC-Web text, decoded).
    pub body: Option<&'a Bytes>,
}

/// How one try failed.
pub(super) enum ExchangeError {
    /// Failed before any response byte on a connection that the upstream
    /// may have closed while it was pooled. `replay_safe`: sending the
    /// request again cannot make the upstream process it twice (the head
    /// could not be written, or the request is idempotent and bodiless).
    Stale {
        error: std::io::Error,
        replay_safe: bool,
        /// The head could not be written: the upstream saw nothing.
        unsent: bool,
    },
    /// The upstream answered a status the route retries, and a retry was
    /// granted: the response was dropped (its connection closed).
    RetryStatus(u16),
    Failed(HttpError),
}

pub(super) struct Exchange<'a> {
    pub(super) req: Forward<'a>,
    pub(super) cluster: &'a Cluster,
    pub(super) addr: SocketAddr,
    /// The route's deadline for the whole exchange.
    pub(super) deadline: Option<Instant>,
    /// `retry.per_try_timeout`: the response head must arrive by then.
    pub(super) head_deadline: Option<Instant>,
    pub(super) out: &'a UpstreamRecord,
    /// The request body, buffered for replay (else it streams from the client).
    pub(super) body: Option<Bytes>,
    pub(super) retry: Option<&'a super::retries::Retries<'a>>,
}

/// Connect and TLS handshake times of the last new upstream connection
/// of a request (access log, histograms).
#[derive(Debug, Default)]
pub struct Timing {
    /// When the last new connection's connect started.
    pub started: Cell<Option<Instant>>,
    pub connected: Cell<Option<std::time::Duration>>,
    pub tls: Cell<Option<std::time::Duration>>,
}
