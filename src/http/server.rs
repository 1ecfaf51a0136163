//! The downstream side: one task per client connection, reading request
//! heads, routing each request on the current snapshot, and answering
//! directly or through `proxy::forward`. Keep-alive and pipelined requests
//! are answered in order, one at a time.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use monoio::net::TcpStream;

use super::chunked::ChunkFrame;
use super::codec::{parse_request, Framing, HeadLimits, RequestHead, Version};
use super::error::{error_response, keeps_connection, reason, ErrorContext, HttpError};
use super::io::read_more;
use super::proxy::{self, Next};
use crate::access_log::Record;
use crate::config::{Listener, ListenerProtocol, Snapshot};
use crate::deadline::Deadlines;
use crate::route::{RouteAction, RouteRequest};
use crate::sockio::{read_within, write_all_within, write_vectored_within, Vectored as _};
use crate::worker::{Driver, ListenerHandle, WorkerCtx};

/// While draining, how long a just-accepted connection may take to send its
/// first request.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// How long a warm keep-alive connection keeps a read posted on io_uring.
/// A coarse deadline (fires 0-100 ms after it), so the window is 200-300 ms,
/// 250 ms on average, as measured best (docs/benchmarks.md).
const WARM_READ_WINDOW: Duration = Duration::from_millis(200);

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
    /// The current request's body was read to its end (or it has none).
    pub body_complete: bool,
    /// `send_timeout` and `request_body_timeout` of the listener, kept on
    /// the worker's coarse deadlines.
    pub send_timeout: Duration,
    pub body_timeout: Duration,
    pub deadlines: Rc<Deadlines>,
}

impl Downstream {
    /// Write all of `data` to the client.
    pub async fn write_vec(&mut self, data: Vec<u8>) -> Result<(), HttpError> {
        let n = data.len() as u64;
        self.write(data).await?;
        self.bytes_out += n;
        Ok(())
    }

    /// Write all of `data` to the client.
    pub async fn write_bytes(&mut self, data: bytes::Bytes) -> Result<(), HttpError> {
        let n = data.len() as u64;
        self.write(data).await?;
        self.bytes_out += n;
        Ok(())
    }

    /// Write one chunk of a chunk-encoded body (payload not copied).
    pub async fn write_frame(&mut self, frame: ChunkFrame) -> Result<(), HttpError> {
        let n = frame.remaining() as u64;
        match write_vectored_within(&mut self.stream, frame, &self.deadlines, self.send_timeout)
            .await
        {
            Ok(()) => {
                self.bytes_out += n;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(HttpError::SendTimeout),
            Err(e) => Err(HttpError::DownstreamIo(e)),
        }
    }

    async fn write<B: monoio::buf::IoBuf + 'static>(&mut self, data: B) -> Result<(), HttpError> {
        match write_all_within(&mut self.stream, data, &self.deadlines, self.send_timeout).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(HttpError::SendTimeout),
            Err(e) => Err(HttpError::DownstreamIo(e)),
        }
    }

    /// Read more of a request body into `buf`; EOF mid-body is an error, and
    /// so is `request_body_timeout` without a byte.
    pub async fn read_body(&mut self) -> Result<(), HttpError> {
        let at = Instant::now() + self.body_timeout;
        let deadlines = self.deadlines.clone();
        match deadlines.within(at, self.read_more(64 * 1024)).await {
            Err(_) => Err(HttpError::BodyTimeout),
            Ok(Ok(0)) => Err(HttpError::DownstreamIo(
                std::io::ErrorKind::UnexpectedEof.into(),
            )),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(HttpError::DownstreamIo(e)),
        }
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
    let http = &listener.http;
    let mut conn = Downstream {
        stream,
        buf: BytesMut::new(),
        peer,
        bytes_in: 0,
        bytes_out: 0,
        handle: handle.clone(),
        responded: false,
        body_complete: true,
        send_timeout: http.send_timeout,
        body_timeout: http.request_body_timeout,
        deadlines: ctx.deadlines.clone(),
    };
    let accepted = Accepted {
        snapshot: accept_snapshot,
        listener,
    };
    let mut phase = Phase::New;
    loop {
        let mark = Mark::of(&conn);
        let head = match read_head(ctx, handle, &mut conn, listener, phase).await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => {
                // Like nginx's error log: the cause, never the client's bytes.
                tracing::debug!(client = %peer, listener = %listener.name, error = %e, "request head rejected");
                Box::pin(respond_error(&mut conn, &e, true)).await;
                let mut rec = RequestRecord::new(listener, mark);
                if conn.responded {
                    rec.status = e.status().unwrap_or(0);
                }
                rec.flags = e.flag();
                rec.finish(ctx, &ctx.current(), &conn, None);
                return;
            }
        };
        // Not boxed: boxing this future would shrink an idle connection's
        // task (docs/benchmarks.md, idle memory) but costs an allocation and
        // a copy of several KiB per request (measured +1.8 µs CPU/request).
        match handle_request(ctx, handle, accepted, &mut conn, head, mark).await {
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
        phase = Phase::Served;
    }
}

/// Where a connection stands before its next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Accepted, no request yet. When its listener stops, it still gets
    /// `FIRST_REQUEST_GRACE` for a first request (answered with
    /// `Connection: close`): it was accepted, so it is owed an answer.
    New,
    /// Answered at least one request: when its listener stops while it is
    /// idle, it closes at once. On io_uring its next read is posted right
    /// away for `WARM_READ_WINDOW` (one ring operation instead of poll +
    /// read), after which it waits for readability holding no buffer.
    Served,
}

/// The snapshot and listener a connection was accepted with.
#[derive(Clone, Copy)]
struct Accepted<'a> {
    snapshot: &'a Arc<Snapshot>,
    listener: &'a Listener,
}

/// Where a request began: time, and the connection's byte counters.
#[derive(Debug, Clone, Copy)]
struct Mark {
    at: Instant,
    wall: SystemTime,
    bytes_in: u64,
    bytes_out: u64,
}

impl Mark {
    fn of(conn: &Downstream) -> Self {
        Mark {
            at: Instant::now(),
            wall: SystemTime::now(),
            bytes_in: conn.bytes_in,
            bytes_out: conn.bytes_out,
        }
    }
}

/// What the access log and metrics record about one request.
struct RequestRecord<'a> {
    listener: &'a Listener,
    mark: Mark,
    status: u16,
    flags: &'static str,
    route: Option<&'a crate::route::Route>,
    cluster: Option<&'a str>,
}

impl<'a> RequestRecord<'a> {
    fn new(listener: &'a Listener, mark: Mark) -> Self {
        RequestRecord {
            listener,
            mark,
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
        exchange: Option<(&RequestHead, &proxy::Upstream)>,
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
                start: self.mark.wall,
                request_id: up.and_then(|u| u.request_id.as_deref()),
                client: conn.peer,
                method: head.map(RequestHead::method_str),
                authority: head.and_then(RequestHead::host),
                path: head.map(RequestHead::origin_target),
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
        &ctx.deadlines,
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
    accepted: Accepted<'_>,
    conn: &mut Downstream,
    head: RequestHead,
    mark: Mark,
) -> Next {
    // Each request sees the snapshot current when it arrives.
    let current = ctx.current();
    // Removed by a reload, or no longer http: answer on the snapshot of the
    // accept (its routes and clusters), then close.
    let http_now = current
        .listener(&handle.name)
        .is_some_and(|l| matches!(l.protocol, ListenerProtocol::Http { .. }));
    let snapshot: &Snapshot = if http_now {
        &current
    } else {
        accepted.snapshot
    };
    let listener = if http_now {
        snapshot.listener(&handle.name).unwrap_or(accepted.listener)
    } else {
        accepted.listener
    };
    let mut up = proxy::Upstream::default();
    conn.responded = false;
    conn.body_complete = matches!(head.framing, Framing::None | Framing::Length(0));
    let mut rec = RequestRecord::new(listener, mark);
    let next = route_and_answer(ctx, snapshot, &mut rec, conn, &head, &mut up).await;
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
    up: &mut proxy::Upstream,
) -> Next {
    let http = &rec.listener.http;
    if let (Some(max), Framing::Length(n)) = (http.max_request_body_bytes, head.framing) {
        if n > max {
            return fail(ctx, rec, conn, head, HttpError::BodyTooLarge).await;
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
        return fail(ctx, rec, conn, head, HttpError::NoRoute).await;
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
            let req = proxy::Forward {
                ctx,
                http,
                snapshot,
                route,
                head,
                started: rec.mark.at,
            };
            let forward = proxy::forward(req, name, conn, up);
            // The route timeout covers the whole exchange: connecting,
            // reading the client's body, the upstream's answer and sending
            // it back. Upstream reads honour it exactly (`Exchange::remaining`);
            // this coarse deadline (up to ~100 ms late) catches the rest.
            match route.timeout {
                Some(t) => ctx
                    .deadlines
                    .within(rec.mark.at + t, forward)
                    .await
                    .unwrap_or(Err(HttpError::UpstreamTimeout)),
                None => forward.await,
            }
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
            tracing::debug!(route = %route.name, error = %e, "request failed");
            fail(ctx, rec, conn, head, e).await
        }
    }
}

/// Answer with the proxy's own error (when nothing was sent yet), record
/// it, and decide, in the one place that does, whether the connection
/// stays open.
async fn fail(
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
        rec.status = status;
        respond_error(conn, &error, !keep).await;
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
    listener: &Listener,
    phase: Phase,
) -> Result<Option<RequestHead>, HttpError> {
    let http = &listener.http;
    let limits = HeadLimits {
        max_head_bytes: http.max_request_header_bytes,
        max_headers: http.max_headers,
    };
    if conn.buf.is_empty() {
        let mut idle = listener.idle_timeout;
        if phase == Phase::Served && ctx.driver == Driver::IoUring {
            let window = WARM_READ_WINDOW.min(idle);
            // Cancelled and then awaited: bytes that arrive at the window's
            // edge are kept (sockio::read_within).
            let (res, buf) = read_within(
                &mut conn.stream,
                BytesMut::with_capacity(4096),
                &ctx.deadlines,
                window,
            )
            .await;
            match res {
                Some(Ok(0)) | Some(Err(_)) => return Ok(None),
                Some(Ok(n)) => {
                    conn.bytes_in += n as u64;
                    conn.buf = buf;
                }
                None => idle = idle.saturating_sub(window),
            }
        }
        if conn.buf.is_empty() && !wait_for_request(ctx, handle, conn, idle, phase).await {
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
        // A timeout here ends the connection (408), so bytes a cancelled
        // read might have taken do not matter. Coarse: up to ~100 ms late.
        let deadlines = ctx.deadlines.clone();
        let res = match deadlines.within(deadline, conn.read_more(4096)).await {
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
/// timeout, an error, or its listener stopping (idle keep-alive connections
/// close at once on drain, so a drain does not wait for them). The wait is
/// woken by the listener's stop; nothing polls.
async fn wait_for_request(
    ctx: &WorkerCtx,
    handle: &ListenerHandle,
    conn: &Downstream,
    idle: Duration,
    phase: Phase,
) -> bool {
    let mut deadline = Instant::now() + idle;
    loop {
        let closing = ctx.closing(handle);
        if closing {
            if phase == Phase::Served {
                return false;
            }
            deadline = deadline.min(Instant::now() + FIRST_REQUEST_GRACE);
        }
        if Instant::now() >= deadline {
            return false;
        }
        // Not relaxed: on epoll a relaxed check can report stale readiness, and
        // an idle client would then be timed by header_timeout (408). The
        // idle deadline is coarse (up to ~100 ms late): no timer per idle
        // connection.
        let mut readable = std::pin::pin!(conn.stream.readable(false));
        let mut stopped = std::pin::pin!(handle.stopped());
        let mut expiry = ctx.deadlines.arm(deadline);
        let woke = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = readable.as_mut().poll(cx) {
                return Poll::Ready(Wake::Readable(r.is_ok()));
            }
            if !closing && stopped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Stopped);
            }
            if expiry.poll_expired(cx).is_ready() {
                return Poll::Ready(Wake::Expired);
            }
            Poll::Pending
        })
        .await;
        match woke {
            Wake::Readable(ok) => return ok,
            Wake::Expired => return false,
            Wake::Stopped => {}
        }
    }
}

/// What ended an idle wait.
enum Wake {
    Readable(bool),
    Stopped,
    Expired,
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
