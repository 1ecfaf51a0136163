//! Before a request goes anywhere: its declared body size, SNI against
//! Host, the route it matches, authorization, its trace and its deadline
//! (the synchronous steps of `server::route_and_answer`).

use std::time::Duration;

use super::codec::{Framing, RequestHead};
use super::downstream::Downstream;
use super::error::HttpError;
use super::record::RequestRecord;
use crate::route::{Route, RouteRequest};
use crate::snapshot::Snapshot;
use crate::worker::ctx::WorkerCtx;

/// The checks before a request may go anywhere: its declared body size,
/// SNI against Host, a route, and authorization (listener and route).
/// The route found is recorded.
pub(super) fn admit<'a>(
    ctx: &WorkerCtx,
    snapshot: &'a Snapshot,
    rec: &mut RequestRecord<'a>,
    conn: &Downstream,
    head: &RequestHead,
) -> Result<&'a Route, HttpError> {
    let http = &rec.listener.http;
    if let (Some(max), Framing::Length(n)) = (http.max_request_body_bytes, head.framing) {
        if n > max {
            return Err(HttpError::BodyTooLarge);
        }
    }
    if http.sni_host_match && !sni_matches_host(conn, head) {
        return Err(HttpError::Misdirected);
    }
    let routes = rec.listener.protocol.routes().unwrap_or("");
    let request = Routed {
        head,
        identity: conn.peer_identity.as_deref(),
        destination_port: conn.original_dst.map(|d| d.port()),
    };
    let route = snapshot
        .route_tables
        .get(routes)
        .and_then(|t| t.lookup(&request));
    let Some(route) = route else {
        rec.listener.stats.worker(ctx.index).no_route.inc();
        return Err(HttpError::NoRoute);
    };
    rec.route = Some(route);
    let identity = conn.peer_identity.as_deref();
    let permitted = rec
        .listener
        .authz
        .as_ref()
        .map_or(true, |a| a.permits(identity, ctx.index))
        && route
            .authz
            .as_ref()
            .map_or(true, |a| a.permits(identity, ctx.index));
    if !permitted {
        return Err(HttpError::Forbidden);
    }
    Ok(route)
}

/// The request's trace: continued from its headers or started here,
/// sampled by the route's (or the global) rate.
pub(super) fn start_trace(
    t: &crate::trace::TracingSettings,
    rec: &RequestRecord<'_>,
    conn: &Downstream,
    head: &RequestHead,
    route: &Route,
) -> crate::trace::RequestTrace {
    let header = |name: &str| {
        head.header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_string)
    };
    let force_allowed = t.force_allowed(&rec.listener.name, conn.peer_identity.as_deref());
    crate::trace::RequestTrace::start(
        t,
        header,
        route.trace_sampling,
        force_allowed,
        (rec.mark.at, rec.mark.wall),
    )
}

/// The route's `timeout`, or a gRPC call's own deadline when it is sooner.
pub(super) fn request_timeout(route: &Route, head: &RequestHead, grpc: bool) -> Option<Duration> {
    let grpc_timeout = grpc
        .then(|| {
            head.header("grpc-timeout")
                .and_then(|v| crate::grpc::parse_timeout(v))
        })
        .flatten();
    match (route.timeout, grpc_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `sni_host_match`: when the client sent both an SNI name and a Host
/// (`:authority`), they name the same host (case-insensitive, port
/// ignored); a request for another host must not ride a connection whose
/// certificate was chosen for this one (domain fronting).
fn sni_matches_host(conn: &Downstream, head: &RequestHead) -> bool {
    let (Some(sni), Some(host)) = (conn.stream.sni(), head.host()) else {
        return true;
    };
    let host = match host.rfind(':') {
        Some(i) if !host.ends_with(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            &host[..i]
        }
        _ => host,
    };
    host.eq_ignore_ascii_case(sni)
}

/// A request as routing sees it: its head and the connection's verified
/// peer identity.
struct Routed<'a> {
    head: &'a RequestHead,
    identity: Option<&'a str>,
    destination_port: Option<u16>,
}

impl RouteRequest for Routed<'_> {
    fn host(&self) -> Option<&str> {
        self.head.host()
    }
    fn path(&self) -> &str {
        self.head.path()
    }
    fn method(&self) -> &str {
        self.head.method_str()
    }
    fn header(&self, name: &str) -> Option<&str> {
        RequestHead::header(self.head, name).and_then(|v| std::str::from_utf8(v).ok())
    }
    fn peer_identity(&self) -> Option<&str> {
        self.identity
    }
    fn destination_port(&self) -> Option<u16> {
        self.destination_port
    }
}

impl RouteRequest for RequestHead {
    fn host(&self) -> Option<&str> {
        RequestHead::host(self)
    }
    fn path(&self) -> &str {
        RequestHead::path(self)
    }
    fn method(&self) -> &str {
        self.method_str()
    }
    fn header(&self, name: &str) -> Option<&str> {
        RequestHead::header(self, name).and_then(|v| std::str::from_utf8(v).ok())
    }
}
