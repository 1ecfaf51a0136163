//! What the access log and metrics record about one request, and where it
//! began.

use std::time::{Instant, SystemTime};

use super::codec::{RequestHead, Version};
use super::downstream::Downstream;
use super::exchange::UpstreamRecord;
use crate::access_log::Record;
use crate::snapshot::{Listener, Snapshot};
use crate::worker::ctx::WorkerCtx;

/// Where a request began: time, and the connection's byte counters.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mark {
    pub(super) at: Instant,
    pub(super) wall: SystemTime,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
}

impl Mark {
    pub(super) fn of(conn: &Downstream) -> Self {
        Mark {
            at: Instant::now(),
            wall: SystemTime::now(),
            bytes_in: conn.bytes_in,
            bytes_out: conn.bytes_out,
        }
    }
}

/// What the access log and metrics record about one request.
pub(super) struct RequestRecord<'a> {
    pub(super) listener: &'a Listener,
    pub(super) mark: Mark,
    pub(super) status: u16,
    pub(super) flags: &'static str,
    /// Why a wanted retry was not sent, logged after `flags`.
    pub(super) retry_flag: Option<&'static str>,
    pub(super) route: Option<&'a crate::route::Route>,
    pub(super) cluster: Option<&'a str>,
    /// The proxy's own gRPC answer (else the upstream's, from `Upstream`).
    pub(super) grpc_status: Option<u8>,
    /// The route's `fault.delay` held this request (flag `DI`).
    pub(super) delayed: bool,
}

impl<'a> RequestRecord<'a> {
    pub(super) fn new(listener: &'a Listener, mark: Mark) -> Self {
        RequestRecord {
            listener,
            mark,
            status: 0,
            flags: "-",
            retry_flag: None,
            route: None,
            cluster: None,
            grpc_status: None,
            delayed: false,
        }
    }

    /// Count the request and write its access log line (with the access
    /// log settings of `snapshot`, the one the request was served on).
    pub(super) fn finish(
        &self,
        ctx: &WorkerCtx,
        snapshot: &Snapshot,
        conn: &Downstream,
        exchange: Option<(&RequestHead, &UpstreamRecord)>,
    ) {
        let duration = self.mark.at.elapsed();
        let cells = self.listener.stats.worker(ctx.index);
        let bytes_in = conn.bytes_in - self.mark.bytes_in;
        let bytes_out = conn.bytes_out - self.mark.bytes_out;
        cells.bytes_in.add(bytes_in);
        cells.bytes_out.add(bytes_out);
        if self.status != 0 {
            cells.requests.inc(self.status);
        }
        let protocol = match exchange.map(|(h, _)| h.version) {
            _ if conn.stream.is_h2() => 2,
            Some(Version::Http10) => 0,
            _ => 1,
        };
        cells.http_requests_by_protocol[protocol].inc();
        cells.duration.record(duration);
        if let Some(route) = self.route {
            let rc = route.stats.worker(ctx.index);
            if self.status != 0 {
                rc.requests.inc(self.status);
            }
            rc.duration.record(duration);
        }
        if snapshot.access_log.is_none() {
            return;
        }
        let (delayed, joined);
        let base = match (self.delayed, self.flags) {
            (false, f) => f,
            (true, "-") => "DI",
            (true, f) => {
                delayed = format!("DI,{f}");
                delayed.as_str()
            }
        };
        let flags = match (base, self.retry_flag) {
            (f, None) => f,
            ("-", Some(r)) => r,
            (f, Some(r)) => {
                joined = format!("{f},{r}");
                joined.as_str()
            }
        };
        let (head, up) = match exchange {
            Some((h, u)) => (Some(h), Some(u)),
            None => (None, None),
        };
        let grpc_status = self.grpc_status.or(up.and_then(|u| u.grpc_status.get()));
        let grpc_message = up.and_then(|u| u.grpc_message.borrow().clone());
        ctx.log.log(
            snapshot,
            &Record {
                start: self.mark.wall,
                request_id: up.and_then(|u| u.request_id.as_bytes()),
                client: conn.peer,
                method: head.map(RequestHead::method_str),
                authority: head.and_then(RequestHead::host),
                path: head.map(RequestHead::origin_target),
                protocol: match head.map(|h| h.version) {
                    _ if conn.stream.is_h2() => "HTTP/2",
                    Some(Version::Http10) => "HTTP/1.0",
                    _ => "HTTP/1.1",
                },
                status: self.status,
                bytes_in,
                bytes_out,
                duration,
                upstream: up.and_then(|u| u.address.get()),
                upstream_duration: up.and_then(UpstreamRecord::duration),
                listener: &self.listener.name,
                route: self.route.map(|r| r.name.as_str()),
                cluster: self.cluster,
                flags,
                peer_identity: conn.peer_identity.as_deref(),
                trace: up
                    .and_then(|u| u.trace.as_ref())
                    .map(|t| (t.trace_id, t.span_id)),
                upstream_connect: up.and_then(|u| u.timing.connected.get()),
                upstream_tls: up.and_then(|u| u.timing.tls.get()),
                upstream_first_byte: up
                    .and_then(|u| Some(u.head_at.get()?.saturating_duration_since(u.sent.get()?))),
                grpc_status,
                grpc_message: grpc_message.as_deref(),
                plaintext: self.listener.tls.is_some() && !conn.stream.is_tls(),
            },
        );
    }
}
