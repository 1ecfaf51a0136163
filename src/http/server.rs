//! The downstream side: one task per client connection, reading request
//! heads, routing each request on the current snapshot, and answering
//! directly or through `proxy::forward`. Keep-alive and pipelined requests
//! are answered in order, one at a time.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use monoio::net::TcpStream;

use super::codec::{parse_request, Framing, HeadLimits, RequestHead};
use super::error::{error_response, reason, HttpError};
use super::io::{read_more, write_all};
use super::proxy::{self, Next};
use crate::config::{HttpSettings, Listener};
use crate::route::{RouteAction, RouteRequest};
use crate::worker::{Driver, WorkerCtx};

/// How often an idle keep-alive connection checks whether the worker drains.
const DRAIN_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// How long a warm keep-alive connection keeps a read posted on io_uring.
const WARM_READ_WINDOW: std::time::Duration = std::time::Duration::from_millis(250);

/// A client connection and the bytes read from it but not yet used.
pub struct Downstream {
    pub stream: TcpStream,
    pub buf: BytesMut,
    pub peer: SocketAddr,
}

/// Serve HTTP/1.1 on one accepted connection until it closes.
pub async fn serve_connection(
    ctx: &Rc<WorkerCtx>,
    listener: &Listener,
    http: &HttpSettings,
    routes: &str,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let mut conn = Downstream {
        stream,
        buf: BytesMut::new(),
        peer,
    };
    let limits = HeadLimits {
        max_head_bytes: http.max_request_header_bytes,
        max_headers: http.max_headers,
    };
    let mut warm = false;
    loop {
        let head = match read_head(ctx, &mut conn, limits, http, listener, warm).await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => {
                respond_error(&mut conn, &e, true).await;
                return;
            }
        };
        match handle(ctx, http, routes, &mut conn, head).await {
            Next::KeepAlive if !ctx.draining.get() => {}
            Next::KeepAlive | Next::Close => return,
            Next::Upgrade(up, up_buf) => {
                tunnel(ctx, listener, conn, up, up_buf).await;
                return;
            }
        }
        // Between requests an idle connection keeps no buffer.
        if conn.buf.is_empty() {
            conn.buf = BytesMut::new();
        }
        warm = true;
    }
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
        if super::io::write_bytes(&mut up, early).await.is_err() {
            return;
        }
    }
    if !up_buf.is_empty()
        && super::io::write_bytes(&mut conn.stream, up_buf.freeze())
            .await
            .is_err()
    {
        return;
    }
    crate::tcp::relay(
        conn.stream,
        up,
        listener.idle_timeout,
        crate::tcp::SpliceMode::Never,
        ctx.driver,
        &ctx.buffers,
    )
    .await;
}

/// Route and answer one request.
async fn handle(
    ctx: &Rc<WorkerCtx>,
    http: &HttpSettings,
    routes: &str,
    conn: &mut Downstream,
    head: RequestHead,
) -> Next {
    let started = Instant::now();
    if let (Some(max), Framing::Length(n)) = (http.max_request_body_bytes, head.framing) {
        if n > max {
            respond_error(conn, &HttpError::BodyTooLarge, true).await;
            return Next::Close;
        }
    }
    // Each request sees the snapshot current when it arrives.
    let snapshot = ctx.snapshot.load_full();
    let route = snapshot
        .route_tables
        .get(routes)
        .and_then(|t| t.lookup(&head));
    let Some(route) = route else {
        let close = !head.keep_alive || head.framing != Framing::None;
        respond_error(conn, &HttpError::NoRoute, close).await;
        return if close { Next::Close } else { Next::KeepAlive };
    };
    let result = match &route.action {
        RouteAction::Direct { status, body } => {
            direct(conn, &head, *status, body, ctx.draining.get()).await
        }
        RouteAction::Cluster(name) => {
            proxy::forward(ctx, http, &snapshot, route, name, conn, &head, started).await
        }
        RouteAction::Split(split) => {
            let name = split.pick(fastrand::u32(..split.total.max(1)));
            proxy::forward(ctx, http, &snapshot, route, name, conn, &head, started).await
        }
    };
    match result {
        Ok(Next::KeepAlive) if head.keep_alive => Next::KeepAlive,
        Ok(Next::KeepAlive) => Next::Close,
        Ok(next) => next,
        Err(e) => {
            tracing::debug!(route = %route.name, error = %e.error, "request failed");
            let close = e.close || !head.keep_alive;
            respond_error(conn, &e.error, close).await;
            if close {
                Next::Close
            } else {
                Next::KeepAlive
            }
        }
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
) -> Result<Next, proxy::Failure> {
    let close = head.framing != Framing::None || !head.keep_alive || draining;
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n{}\r\n",
        reason(status),
        body.len(),
        if close { "connection: close\r\n" } else { "" }
    )
    .into_bytes();
    if !head.is_head() {
        out.extend_from_slice(body);
    }
    write_all(&mut conn.stream, out)
        .await
        .map_err(|e| proxy::Failure::closing(HttpError::DownstreamIo(e)))?;
    Ok(if close { Next::Close } else { Next::KeepAlive })
}

/// Send the proxy's own error response (when the client can still take one).
pub async fn respond_error(conn: &mut Downstream, err: &HttpError, close: bool) {
    if err.status().is_none() {
        return;
    }
    let _ = write_all(&mut conn.stream, error_response(err, close)).await;
}

/// Read one request head: wait up to `idle_timeout` for its first byte
/// (holding no buffer), then up to `header_timeout` for the whole head.
/// `Ok(None)`: the client closed or idled out between requests.
async fn read_head(
    ctx: &WorkerCtx,
    conn: &mut Downstream,
    limits: HeadLimits,
    http: &HttpSettings,
    listener: &Listener,
    warm: bool,
) -> Result<Option<RequestHead>, HttpError> {
    if conn.buf.is_empty() {
        let mut idle = listener.idle_timeout;
        // On io_uring a keep-alive connection that just finished a request
        // posts its read at once (one operation instead of poll + read), but
        // only for WARM_READ_WINDOW; after that it waits holding no buffer.
        if warm && ctx.driver == Driver::IoUring {
            let read = read_more(&mut conn.stream, BytesMut::new(), 4096);
            match monoio::time::timeout(WARM_READ_WINDOW.min(idle), read).await {
                Ok((Ok(0), _)) | Ok((Err(_), _)) => return Ok(None),
                Ok((Ok(_), buf)) => conn.buf = buf,
                Err(_) => idle = idle.saturating_sub(WARM_READ_WINDOW),
            }
        }
        if conn.buf.is_empty() && !wait_for_request(ctx, conn, idle).await {
            return Ok(None);
        }
    }
    let deadline = Instant::now() + http.header_timeout;
    loop {
        if !conn.buf.is_empty() {
            if let Some(head) = parse_request(&mut conn.buf, limits)? {
                return Ok(Some(head));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let buf = std::mem::take(&mut conn.buf);
        let read = read_more(&mut conn.stream, buf, 4096);
        let (res, buf) = match monoio::time::timeout(left, read).await {
            Ok(done) => done,
            Err(_) => return Err(HttpError::HeaderTimeout),
        };
        conn.buf = buf;
        match res {
            Ok(0) if conn.buf.is_empty() => return Ok(None),
            Ok(0) => return Err(HttpError::BadRequest("connection closed mid-head")),
            Ok(_) => {}
            Err(e) => return Err(HttpError::DownstreamIo(e)),
        }
    }
}

/// Between requests: wait up to `idle` for the client's next bytes, holding
/// no buffer. Returns false when the connection should close instead: idle
/// timeout, an error, or the worker draining (idle keep-alive connections are
/// closed at once on drain, so a drain does not wait for them).
async fn wait_for_request(ctx: &WorkerCtx, conn: &Downstream, idle: std::time::Duration) -> bool {
    let deadline = Instant::now() + idle;
    loop {
        if ctx.draining.get() {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        // Not relaxed: on epoll a relaxed check can report stale readiness, and
        // an idle client would then be timed by header_timeout (408).
        match monoio::time::timeout(left.min(DRAIN_CHECK), conn.stream.readable(false)).await {
            Ok(Ok(())) => return true,
            Ok(Err(_)) => return false,
            Err(_) => {}
        }
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
