//! The downstream side: one task per client connection, reading request
//! heads, routing each request on the current snapshot, and answering
//! directly or through `proxy::forward`. Keep-alive and pipelined requests
//! are answered in order, one at a time.

use std::io::Write as _;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use monoio::net::TcpStream;

use super::admit::{admit, request_timeout, start_trace};
use super::codec::{Framing, RequestHead};
use super::downstream::{ClientIo, Downstream};
use super::error::{error_response, keeps_connection, reason, ErrorContext, HttpError};
use super::grpc_answer::{self, Web};
use super::head::{read_head, Phase, Read};
use super::proxy::{self, Next};
use super::record::{Mark, RequestRecord};
use crate::route::RouteAction;
use crate::snapshot::{Listener, Snapshot};
use crate::worker::ctx::{ListenerHandle, WorkerCtx};

/// Serve HTTP/1.1 on one accepted connection until it closes or idles
/// past the warm window; `Some` is the idle connection to park.
pub async fn serve_connection(
    ctx: &Rc<WorkerCtx>,
    handle: &Rc<ListenerHandle>,
    accept_snapshot: &Arc<Snapshot>,
    listener: &Listener,
    incoming: super::downstream::Incoming,
) -> Option<(Downstream, Duration)> {
    let super::downstream::Incoming {
        stream,
        peer,
        original_dst,
        early,
    } = incoming;
    let http = &listener.http;
    // Bytes protocol detection read belong to the first request.
    let early_len = early.len() as u64;
    let peer_cert = listener
        .tls
        .as_ref()
        .and_then(|t| stream.peer_cert(t).map(|p| (p, t)));
    let (peer_identity, xfcc) = match peer_cert {
        Some((p, t)) => (
            p.identity.as_deref().map(Rc::from),
            Some(Rc::from(p.xfcc(t.own_id.as_deref()))),
        ),
        None => (None, None),
    };
    let conn = Downstream {
        original_dst,
        peer_identity,
        xfcc,
        stream,
        // Bytes protocol detection already read.
        buf: early,
        peer,
        bytes_in: early_len,
        bytes_out: 0,
        handle: handle.clone(),
        responded: false,
        body_complete: true,
        send_timeout: http.send_timeout,
        body_timeout: http.request_body_timeout,
        deadlines: ctx.deadlines.clone(),
    };
    // HTTP/2 chosen by ALPN.
    if let ClientIo::Tls(t) = &conn.stream {
        if http.http2.is_some() && t.conn.alpn_protocol() == Some(b"h2") {
            super::h2::serve(ctx, handle, accept_snapshot, listener, conn).await;
            return None;
        }
    }
    serve_requests(
        ctx,
        handle,
        accept_snapshot,
        listener,
        conn,
        Phase::New,
        early_len,
    )
    .await
}

/// Serve the requests of a connection, from its first or (resumed after
/// parking) its next one.
pub async fn serve_requests(
    ctx: &Rc<WorkerCtx>,
    handle: &Rc<ListenerHandle>,
    accept_snapshot: &Arc<Snapshot>,
    listener: &Listener,
    mut conn: Downstream,
    mut phase: Phase,
    mut early_len: u64,
) -> Option<(Downstream, Duration)> {
    let accepted = Accepted {
        snapshot: accept_snapshot,
        listener,
    };
    loop {
        let mut mark = Mark::of(&conn);
        mark.bytes_in -= std::mem::take(&mut early_len);
        let head = match read_head(ctx, handle, &mut conn, listener, phase).await {
            Ok(Read::Head(h)) => h,
            Ok(Read::Closed) => return None,
            Ok(Read::Idle(left)) => return Some((conn, left)),
            Ok(Read::Http2) => {
                Box::pin(super::h2::serve(
                    ctx,
                    handle,
                    accept_snapshot,
                    listener,
                    conn,
                ))
                .await;
                return None;
            }
            Err(e) => {
                // Like nginx's error log: the cause, never the client's bytes.
                tracing::debug!(client = %conn.peer, listener = %listener.name, error = %e, "request head rejected");
                Box::pin(respond_error(&mut conn, &e, true)).await;
                let mut rec = RequestRecord::new(listener, mark);
                if conn.responded {
                    rec.status = e.status().unwrap_or(0);
                }
                rec.flags = e.flag();
                rec.finish(ctx, &ctx.current(), &conn, None);
                return None;
            }
        };
        // Not boxed: boxing this future would shrink an idle connection's
        // task (docs/benchmarks.md, idle memory) but costs an allocation and
        // a copy of several KiB per request (measured +1.8 µs CPU/request).
        match handle_request(ctx, handle, accepted, &mut conn, head, mark).await {
            Next::KeepAlive if !ctx.closing(handle) => {}
            Next::KeepAlive | Next::Close => return None,
            Next::Upgrade(up, up_buf) => {
                Box::pin(tunnel(ctx, listener, conn, up, up_buf)).await;
                return None;
            }
        }
        // The read buffer is kept through the warm window and reused for
        // the next request (the request's head, which shared it, is gone):
        // no allocation per request. A parked connection holds none.
        phase = Phase::Served;
    }
}

/// The snapshot and listener a connection was accepted with.
#[derive(Clone, Copy)]
pub(super) struct Accepted<'a> {
    pub(super) snapshot: &'a Arc<Snapshot>,
    pub(super) listener: &'a Listener,
}

/// After a 101: relay raw bytes both ways, starting with what each side
/// sent beyond the HTTP exchange.
async fn tunnel(
    ctx: &Rc<WorkerCtx>,
    listener: &Listener,
    mut conn: Downstream,
    mut up: TcpStream,
    up_buf: BytesMut,
) {
    if !conn.buf.is_empty() {
        let early = std::mem::take(&mut conn.buf).freeze();
        if crate::sockio::write_bytes(&mut up, early).await.is_err() {
            return;
        }
    }
    if !up_buf.is_empty() && conn.write_bytes(up_buf.freeze()).await.is_err() {
        return;
    }
    let outcome = match conn.stream {
        ClientIo::Plain(stream) => {
            crate::tcp::relay(
                stream,
                up,
                listener.idle_timeout,
                crate::tcp::SpliceMode::Never,
                ctx.driver,
                &ctx.buffers,
                &ctx.deadlines,
            )
            .await
        }
        ClientIo::Tls(tls) => {
            let m = crate::tls::relay::relay(
                *tls,
                up,
                listener.idle_timeout,
                listener.http.send_timeout,
                &ctx.deadlines,
            )
            .await;
            crate::tcp::RelayOutcome {
                downstream_to_upstream: m.tls_to_plain,
                upstream_to_downstream: m.plain_to_tls,
                idle_timeout: m.idle_timeout,
                ..crate::tcp::RelayOutcome::default()
            }
        }
        // HTTP/2 requests never carry an upgrade.
        ClientIo::H2(_) => return,
    };
    let cells = listener.stats.worker(ctx.index);
    cells.bytes_in.add(outcome.downstream_to_upstream);
    cells.bytes_out.add(outcome.upstream_to_downstream);
}

/// Route and answer one request. The listener's newest settings are used
/// when it still exists; a request on a listener a reload removed is
/// answered with the snapshot of its accept, and the connection closes.
pub(super) async fn handle_request(
    ctx: &Rc<WorkerCtx>,
    handle: &ListenerHandle,
    accepted: Accepted<'_>,
    conn: &mut Downstream,
    head: RequestHead,
    mark: Mark,
) -> Next {
    // Each request sees the snapshot current when it arrives.
    let current = ctx.current();
    // Removed by a reload, or no longer http: answer on the snapshot of the
    // accept (its routes and clusters), then close.
    let now = current
        .listener(&handle.name)
        .filter(|l| l.protocol.routes().is_some());
    let http_now = now.is_some();
    let (snapshot, listener): (&Snapshot, &Listener) = match now {
        Some(l) => (&current, l),
        None => (accepted.snapshot, accepted.listener),
    };
    let mut up = proxy::UpstreamRecord::default();
    conn.responded = false;
    conn.body_complete = matches!(head.framing, Framing::None | Framing::Length(0));
    let mut rec = RequestRecord::new(listener, mark);
    // One reading of the path for routing, authorization and the upstream
    // (docs/security.md, "One path"): the head carries the normalised
    // target from here on.
    let mut head = head;
    let next = match super::normalize::normalized(&head.target, listener.http.paths) {
        Ok(normal) => {
            if let Some(t) = normal {
                head.target = t;
            }
            route_and_answer(ctx, snapshot, &mut rec, conn, &head, &mut up).await
        }
        Err(e) => fail(ctx, &mut rec, conn, &head, HttpError::BadRequest(e.text())).await,
    };
    if let Some(trace) = up.trace.as_ref().filter(|t| t.sampled) {
        ctx.export_span(super::spans::server_span(trace, &rec, conn, &head, &up));
    }
    rec.finish(ctx, snapshot, conn, Some((&head, &up)));
    match next {
        Next::KeepAlive if !http_now => Next::Close,
        other => other,
    }
}

async fn route_and_answer<'a>(
    ctx: &Rc<WorkerCtx>,
    snapshot: &'a Snapshot,
    rec: &mut RequestRecord<'a>,
    conn: &mut Downstream,
    head: &RequestHead,
    up: &mut proxy::UpstreamRecord,
) -> Next {
    let http = &rec.listener.http;
    let route = match admit(ctx, snapshot, rec, conn, head) {
        Ok(route) => route,
        Err(e) => return fail(ctx, rec, conn, head, e).await,
    };
    if let Some(t) = &snapshot.tracing {
        up.trace = Some(start_trace(t, rec, conn, head, route));
    }
    if let Some(limit) = &route.rate_limit {
        if let Err(wait) = limit.acquire() {
            route.stats.worker(ctx.index).rate_limited.inc();
            return fail(ctx, rec, conn, head, HttpError::RateLimited(wait)).await;
        }
    }
    let grpc = grpc_answer::is_grpc(head);
    let timeout = request_timeout(route, head, grpc);
    // Injected faults (route `fault`): a delay counts against the timeout.
    if let Some(fault) = &route.fault {
        let deadline = timeout.map(|t| rec.mark.at + t);
        let injected = (route, fault);
        if let Some(next) = super::fault::inject(ctx, rec, conn, head, injected, deadline).await {
            return next;
        }
    }
    // gRPC-Web: CORS preflights are answered here, calls become gRPC.
    let mut web = None;
    let mut preset = None;
    let translated;
    // Errors are answered in the client's form (gRPC-Web included).
    let original = head;
    let mut head = head;
    if let Some(origins) = &route.grpc_web {
        match grpc_answer::web_request(head, conn, http, origins).await {
            Ok(Web::Preflight) => {
                rec.status = 204;
                return grpc_answer::preflight(conn, head, origins).await;
            }
            Ok(Web::Call(h, body, call)) => {
                translated = h;
                head = &translated;
                preset = body;
                web = Some(call);
            }
            Ok(Web::Plain) => {}
            Err(e) => return fail(ctx, rec, conn, head, e).await,
        }
    }
    let result = match &route.action {
        RouteAction::Direct { status, body } => {
            rec.status = *status;
            let closing = ctx.closing(&conn.handle);
            direct(conn, head, *status, body, closing).await
        }
        action => {
            let name = action.pick_cluster().unwrap_or_default();
            rec.cluster = Some(name);
            // Copies to the route's mirrors, started before the primary
            // (which then sends the body a mirror made them read).
            if !route.mirrors.is_empty() {
                if let Err(e) =
                    super::mirror::start(ctx, snapshot, route, head, conn, &mut preset).await
                {
                    return fail(ctx, rec, conn, original, e).await;
                }
            }
            let req = proxy::Forward {
                ctx,
                http,
                snapshot,
                route,
                head,
                started: rec.mark.at,
                timeout,
                grpc,
                web: web.as_ref(),
                body: preset.as_ref(),
            };
            // The route timeout covers the whole exchange: connecting,
            // reading the client's body, the upstream's answer and sending
            // it back. Upstream reads honour it exactly (`Exchange::remaining`);
            // this coarse deadline (up to ~100 ms late) catches the rest.
            // The forward future (several KiB) is built where it is awaited:
            // bound to a local first, it was copied once more per request.
            match timeout {
                Some(t) => ctx
                    .deadlines
                    .within(
                        rec.mark.at + t,
                        super::forward::forward(req, name, conn, up),
                    )
                    .await
                    .unwrap_or(Err(HttpError::UpstreamTimeout)),
                None => super::forward::forward(req, name, conn, up).await,
            }
        }
    };
    if up.status.get() != 0 {
        rec.status = up.status.get();
    }
    rec.retry_flag = up.retry_flag.get();
    match result {
        Ok(Next::KeepAlive) if head.keep_alive => Next::KeepAlive,
        Ok(Next::KeepAlive) => Next::Close,
        Ok(next) => next,
        Err(e) => {
            tracing::debug!(route = %route.name, error = %e, "request failed");
            fail(ctx, rec, conn, original, e).await
        }
    }
}

/// Answer with the proxy's own error (when nothing was sent yet), record
/// it, and decide, in the one place that does, whether the connection
/// stays open.
pub(super) async fn fail(
    ctx: &WorkerCtx,
    rec: &mut RequestRecord<'_>,
    conn: &mut Downstream,
    head: &RequestHead,
    error: HttpError,
) -> Next {
    rec.flags = error.flag();
    let keep = keeps_connection(
        &error,
        ErrorContext {
            body_complete: conn.body_complete,
            response_started: conn.responded,
            client_keep_alive: head.keep_alive && !ctx.closing(&conn.handle),
        },
    );
    // A response already under way cannot be replaced by an error.
    if let (Some(status), false) = (error.status(), conn.responded) {
        if grpc_answer::is_grpc(head) {
            // gRPC clients read the outcome from grpc-status (HTTP 200).
            let code = error.grpc_code();
            rec.status = 200;
            rec.grpc_status = Some(code as u8);
            let origins = rec.route.and_then(|r| r.grpc_web.as_deref());
            grpc_answer::grpc_error(conn, head, origins, &error, code, !keep).await;
        } else {
            rec.status = status;
            respond_error(conn, &error, !keep).await;
        }
    }
    if keep {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// Answer a `direct_response` route. The request body, if any, is not read,
/// so such connections close afterwards.
async fn direct(
    conn: &mut Downstream,
    head: &RequestHead,
    status: u16,
    body: &bytes::Bytes,
    draining: bool,
) -> Result<Next, HttpError> {
    if conn.stream.is_h2() {
        let fields: &[(&[u8], &[u8])] = &[(b"content-type", b"text/plain")];
        super::h2::respond_whole(conn, status, fields, body.clone(), head.is_head()).await?;
        return Ok(Next::KeepAlive);
    }
    let close = !conn.body_complete || !head.keep_alive || draining;
    // 204 and 304 have no body and no content-length (config refuses a
    // body for them).
    let bodiless = matches!(status, 204 | 304);
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
    if !bodiless {
        let _ = write!(
            out,
            "content-length: {}\r\ncontent-type: text/plain\r\n",
            body.len()
        );
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head.is_head() && !bodiless {
        out.extend_from_slice(body);
    }
    conn.responded = true;
    conn.write_vec(out).await?;
    Ok(if close { Next::Close } else { Next::KeepAlive })
}

/// Send the proxy's own error response (when the client can still take one).
pub async fn respond_error(conn: &mut Downstream, err: &HttpError, close: bool) {
    if err.status().is_none() {
        return;
    }
    if conn.stream.is_h2() {
        return super::h2::respond_error(conn, err).await;
    }
    conn.responded = true;
    let _ = conn.write_vec(error_response(err, close)).await;
}
