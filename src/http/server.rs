//! The downstream side: one task per client connection, reading request
//! heads, routing each request on the current snapshot, and answering
//! directly or through `proxy::forward`. Keep-alive and pipelined requests
//! are answered in order, one at a time.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::BytesMut;
use monoio::net::TcpStream;

use super::codec::{parse_request, Framing, HeadLimits, RequestHead, Version};
use super::error::{error_response, reason, HttpError};
use super::io::{read_more, write_all};
use super::proxy::{self, Next};
use crate::access_log::Record;
use crate::config::{HttpSettings, Listener, ListenerProtocol, Snapshot};
use crate::route::{RouteAction, RouteRequest};
use crate::worker::{Driver, ListenerHandle, WorkerCtx};

/// How often an idle keep-alive connection checks whether the worker drains.
const DRAIN_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// While draining, how long a just-accepted connection may take to send its
/// first request.
const FIRST_REQUEST_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a warm keep-alive connection keeps a read posted on io_uring.
const WARM_READ_WINDOW: std::time::Duration = std::time::Duration::from_millis(250);

/// A client connection and the bytes read from it but not yet used.
pub struct Downstream {
    pub stream: TcpStream,
    pub buf: BytesMut,
    pub peer: SocketAddr,
    /// Bytes read from and written to the client so far.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The listener's accept loop on this worker: once it is removed (or
    /// the worker drains), responses carry `Connection: close`.
    pub handle: Rc<ListenerHandle>,
    /// A final response head went out for the current request (an error
    /// can no longer be sent in its place).
    pub responded: bool,
}

impl Downstream {
    /// Write all of `data` to the client.
    pub async fn write_vec(&mut self, data: Vec<u8>) -> std::io::Result<()> {
        let n = data.len() as u64;
        write_all(&mut self.stream, data).await?;
        self.bytes_out += n;
        Ok(())
    }

    /// Write all of `data` to the client.
    pub async fn write_bytes(&mut self, data: bytes::Bytes) -> std::io::Result<()> {
        let n = data.len() as u64;
        super::io::write_bytes(&mut self.stream, data).await?;
        self.bytes_out += n;
        Ok(())
    }

    /// Read more from the client into `buf`.
    pub async fn read_more(&mut self, spare: usize) -> std::io::Result<usize> {
        let (res, buf) = read_more(&mut self.stream, std::mem::take(&mut self.buf), spare).await;
        self.buf = buf;
        let n = res?;
        self.bytes_in += n as u64;
        Ok(n)
    }
}

/// Serve HTTP/1.1 on one accepted connection until it closes.
pub async fn serve_connection(
    ctx: &Rc<WorkerCtx>,
    handle: &Rc<ListenerHandle>,
    accept_snapshot: &Arc<Snapshot>,
    listener: &Listener,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let mut conn = Downstream {
        stream,
        buf: BytesMut::new(),
        peer,
        bytes_in: 0,
        bytes_out: 0,
        handle: handle.clone(),
        responded: false,
    };
    let http = &listener.http;
    let limits = HeadLimits {
        max_head_bytes: http.max_request_header_bytes,
        max_headers: http.max_headers,
    };
    let mut warm = false;
    loop {
        let (in0, out0) = (conn.bytes_in, conn.bytes_out);
        let start = (Instant::now(), SystemTime::now());
        let head = match read_head(ctx, handle, &mut conn, limits, http, listener, warm).await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => {
                Box::pin(respond_error(&mut conn, &e, true)).await;
                let status = if e.status().is_some() && conn.bytes_out > out0 {
                    e.status().unwrap_or(0)
                } else {
                    0
                };
                let mut rec = RequestRecord::new(listener, start);
                rec.status = status;
                rec.flags = e.flag();
                rec.finish(ctx, &ctx.snapshot.load(), &conn, (in0, out0), None);
                return;
            }
        };
        let accepted = (accept_snapshot, listener);
        // Not boxed: boxing this future would shrink an idle connection's
        // task (docs/benchmarks.md, idle memory) but costs an allocation and
        // a copy of several KiB per request (measured +1.8 µs CPU/request).
        match handle_request(ctx, handle, accepted, &mut conn, head, (in0, out0), start).await {
            Next::KeepAlive if !ctx.closing(handle) => {}
            Next::KeepAlive | Next::Close => return,
            Next::Upgrade(up, up_buf) => {
                Box::pin(tunnel(ctx, listener, conn, up, up_buf)).await;
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

/// What the access log and metrics record about one request.
struct RequestRecord<'a> {
    listener: &'a Listener,
    started: Instant,
    start_time: SystemTime,
    status: u16,
    flags: &'static str,
    route: Option<&'a crate::route::Route>,
    cluster: Option<&'a str>,
}

impl<'a> RequestRecord<'a> {
    fn new(listener: &'a Listener, start: (Instant, SystemTime)) -> Self {
        RequestRecord {
            listener,
            started: start.0,
            start_time: start.1,
            status: 0,
            flags: "-",
            route: None,
            cluster: None,
        }
    }

    /// Count the request and write its access log line (with the access
    /// log settings of `snapshot`, the one the request was served on).
    fn finish(
        &self,
        ctx: &WorkerCtx,
        snapshot: &Snapshot,
        conn: &Downstream,
        (in0, out0): (u64, u64),
        exchange: Option<(&RequestHead, &proxy::Upstream)>,
    ) {
        let duration = self.started.elapsed();
        let cells = self.listener.stats.worker(ctx.index);
        let (bytes_in, bytes_out) = (conn.bytes_in - in0, conn.bytes_out - out0);
        cells.bytes_in.add(bytes_in);
        cells.bytes_out.add(bytes_out);
        if self.status != 0 {
            cells.requests.inc(self.status);
        }
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
        let (head, up) = match exchange {
            Some((h, u)) => (Some(h), Some(u)),
            None => (None, None),
        };
        ctx.log.log(
            snapshot,
            &Record {
                start: self.start_time,
                request_id: up.and_then(|u| u.request_id.as_deref()),
                client: conn.peer,
                method: head.map(RequestHead::method_str),
                authority: head.and_then(RequestHead::host),
                path: head.map(RequestHead::path),
                protocol: match head.map(|h| h.version) {
                    Some(Version::Http10) => "HTTP/1.0",
                    _ => "HTTP/1.1",
                },
                status: self.status,
                bytes_in,
                bytes_out,
                duration,
                upstream: up.and_then(|u| u.address.get()),
                upstream_duration: up.and_then(proxy::Upstream::duration),
                listener: &self.listener.name,
                route: self.route.map(|r| r.name.as_str()),
                cluster: self.cluster,
                flags: self.flags,
            },
        );
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
    let outcome = crate::tcp::relay(
        conn.stream,
        up,
        listener.idle_timeout,
        crate::tcp::SpliceMode::Never,
        ctx.driver,
        &ctx.buffers,
    )
    .await;
    let cells = listener.stats.worker(ctx.index);
    cells.bytes_in.add(outcome.downstream_to_upstream);
    cells.bytes_out.add(outcome.upstream_to_downstream);
}

/// Route and answer one request. The listener's newest settings are used
/// when it still exists; a request on a listener a reload removed is
/// answered with the snapshot of its accept, and the connection closes.
async fn handle_request(
    ctx: &Rc<WorkerCtx>,
    handle: &ListenerHandle,
    accepted: (&Arc<Snapshot>, &Listener),
    conn: &mut Downstream,
    head: RequestHead,
    (in0, out0): (u64, u64),
    start: (Instant, SystemTime),
) -> Next {
    // Each request sees the snapshot current when it arrives.
    let current = ctx.snapshot.load_full();
    // Removed by a reload, or no longer http: answer on the snapshot of the
    // accept (its routes and clusters), then close.
    let http_now = current
        .listener(&handle.name)
        .is_some_and(|l| matches!(l.protocol, ListenerProtocol::Http { .. }));
    let (snapshot, gone) = if http_now {
        (current, false)
    } else {
        (accepted.0.clone(), true)
    };
    let listener = if gone {
        accepted.1
    } else {
        snapshot.listener(&handle.name).unwrap_or(accepted.1)
    };
    let mut up = proxy::Upstream::default();
    conn.responded = false;
    let mut rec = RequestRecord::new(listener, start);
    let next = route_and_answer(ctx, &snapshot, &mut rec, conn, &head, &mut up).await;
    rec.finish(ctx, &snapshot, conn, (in0, out0), Some((&head, &up)));
    if gone {
        return match next {
            Next::KeepAlive => Next::Close,
            other => other,
        };
    }
    next
}

async fn route_and_answer<'a>(
    ctx: &Rc<WorkerCtx>,
    snapshot: &'a Arc<Snapshot>,
    rec: &mut RequestRecord<'a>,
    conn: &mut Downstream,
    head: &RequestHead,
    up: &mut proxy::Upstream,
) -> Next {
    let http = &rec.listener.http;
    if let (Some(max), Framing::Length(n)) = (http.max_request_body_bytes, head.framing) {
        if n > max {
            return fail(rec, conn, head, HttpError::BodyTooLarge, true).await;
        }
    }
    let routes = match &rec.listener.protocol {
        ListenerProtocol::Http { routes } => routes.as_str(),
        ListenerProtocol::Tcp { .. } => "",
    };
    let route = snapshot
        .route_tables
        .get(routes)
        .and_then(|t| t.lookup(head));
    let Some(route) = route else {
        rec.listener.stats.worker(ctx.index).no_route.inc();
        let close = !head.keep_alive || head.framing != Framing::None;
        return fail(rec, conn, head, HttpError::NoRoute, close).await;
    };
    rec.route = Some(route);
    let result = match &route.action {
        RouteAction::Direct { status, body } => {
            rec.status = *status;
            let closing = ctx.closing(&conn.handle);
            direct(conn, head, *status, body, closing).await
        }
        action => {
            let name = action.pick_cluster().unwrap_or_default();
            rec.cluster = Some(name);
            let started = rec.started;
            proxy::forward(ctx, http, snapshot, route, name, conn, head, started, up).await
        }
    };
    if up.status.get() != 0 {
        rec.status = up.status.get();
    }
    match result {
        Ok(Next::KeepAlive) if head.keep_alive => Next::KeepAlive,
        Ok(Next::KeepAlive) => Next::Close,
        Ok(next) => next,
        Err(e) => {
            tracing::debug!(route = %route.name, error = %e.error, "request failed");
            let close = e.close || !head.keep_alive;
            fail(rec, conn, head, e.error, close).await
        }
    }
}

/// Answer with the proxy's own error (when nothing was sent yet) and record it.
async fn fail(
    rec: &mut RequestRecord<'_>,
    conn: &mut Downstream,
    head: &RequestHead,
    error: HttpError,
    close: bool,
) -> Next {
    rec.flags = error.flag();
    // A response already under way cannot be replaced by an error.
    if let (Some(status), false) = (error.status(), conn.responded) {
        rec.status = status;
        respond_error(conn, &error, close).await;
    }
    let _ = head;
    if close {
        Next::Close
    } else {
        Next::KeepAlive
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
    conn.responded = true;
    conn.write_vec(out)
        .await
        .map_err(|e| proxy::Failure::closing(HttpError::DownstreamIo(e)))?;
    Ok(if close { Next::Close } else { Next::KeepAlive })
}

/// Send the proxy's own error response (when the client can still take one).
pub async fn respond_error(conn: &mut Downstream, err: &HttpError, close: bool) {
    if err.status().is_none() {
        return;
    }
    conn.responded = true;
    let _ = conn.write_vec(error_response(err, close)).await;
}

/// Read one request head: wait up to `idle_timeout` for its first byte
/// (holding no buffer), then up to `header_timeout` for the whole head.
/// `Ok(None)`: the client closed or idled out between requests.
async fn read_head(
    ctx: &WorkerCtx,
    handle: &ListenerHandle,
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
                Ok((Ok(n), buf)) => {
                    conn.bytes_in += n as u64;
                    conn.buf = buf;
                }
                Err(_) => idle = idle.saturating_sub(WARM_READ_WINDOW),
            }
        }
        if conn.buf.is_empty() && !wait_for_request(ctx, handle, conn, idle, warm).await {
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
        let res = match monoio::time::timeout(left, conn.read_more(4096)).await {
            Ok(done) => done,
            Err(_) => return Err(HttpError::HeaderTimeout),
        };
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
async fn wait_for_request(
    ctx: &WorkerCtx,
    handle: &ListenerHandle,
    conn: &Downstream,
    idle: std::time::Duration,
    served: bool,
) -> bool {
    let mut deadline = Instant::now() + idle;
    loop {
        // Only a connection that already had its answer is idle: a new one
        // (accepted just before the drain or listener removal) gets up to
        // FIRST_REQUEST_GRACE for its first request, served with
        // `Connection: close`.
        if ctx.closing(handle) {
            if served {
                return false;
            }
            deadline = deadline.min(Instant::now() + FIRST_REQUEST_GRACE);
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
