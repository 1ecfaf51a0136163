//! Reading the next request head of a connection: the warm read on
//! io_uring, the idle wait between requests (woken by the listener's stop,
//! bounded by `idle_timeout`), then the head within `header_timeout`.

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::codec::{parse_request, HeadLimits, RequestHead};
use super::downstream::{ClientIo, Downstream};
use super::error::HttpError;
use crate::config::Listener;
use crate::sockio::read_within;
use crate::worker::{Driver, ListenerHandle, WorkerCtx};

/// While draining, how long a just-accepted connection may take to send its
/// first request.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// How long a warm keep-alive connection keeps a read posted on io_uring.
/// A coarse deadline (fires 0-100 ms after it), so the window is 200-300 ms,
/// 250 ms on average, as measured best (docs/benchmarks.md).
const WARM_READ_WINDOW: Duration = Duration::from_millis(200);

/// Where a connection stands before its next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
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

/// Read one request head: wait up to `idle_timeout` for its first byte
/// (holding no buffer), then up to `header_timeout` for the whole head.
/// `Ok(None)`: the client closed or idled out between requests.
pub(super) async fn read_head(
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
        if let (Phase::Served, Driver::IoUring, ClientIo::Plain(stream)) =
            (phase, ctx.driver, &mut conn.stream)
        {
            let window = WARM_READ_WINDOW.min(idle);
            // Cancelled and then awaited: bytes that arrive at the window's
            // edge are kept (sockio::read_within).
            let (res, buf) = read_within(
                stream,
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
        // read might have taken do not matter.
        let res = match ctx.deadlines.within(deadline, conn.read_more(4096)).await {
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
    conn: &mut Downstream,
    idle: Duration,
    phase: Phase,
) -> bool {
    // Decrypted bytes (or ciphertext) already inside the TLS layer.
    if conn.stream.has_buffered() {
        return true;
    }
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
        let mut readable = std::pin::pin!(conn.stream.tcp().readable(false));
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
