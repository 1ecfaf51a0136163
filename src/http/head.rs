//! Reading the next request head of a connection: the warm wait after a
//! response (a posted read on io_uring, a readiness wait on epoll), then the
//! head within `header_timeout`. A connection still idle when the warm
//! window ends is parked (`Read::Idle`): its task ends and a small one waits
//! for the next request (`wait_for_request`, woken by the listener's stop,
//! bounded by `idle_timeout`).

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

use super::codec::{parse_request, HeadLimits, RequestHead};
use super::downstream::{ClientIo, Downstream};
use super::error::HttpError;
use crate::snapshot::Listener;
use crate::sockio::read_within;
use crate::worker::ctx::{ListenerHandle, WorkerCtx};
use crate::worker::driver::Driver;

/// While draining, how long a just-accepted connection may take to send its
/// first request.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// How long a warm keep-alive connection keeps its task (and, on io_uring,
/// a posted read) before it is parked. A coarse deadline (fires 0-100 ms
/// after it), so the window is 200-300 ms, 250 ms on average, as measured
/// best (docs/benchmarks.md).
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
    /// read); on epoll it waits for readability as long. Still idle after
    /// that, it is parked.
    Served,
}

/// What reading the next request head gave.
#[derive(Debug)]
pub(super) enum Read {
    Head(RequestHead),
    /// The client closed, idled out, or its listener stopped.
    Closed,
    /// Served connection idle for the warm window: park it; `Duration` is
    /// what is left of its `idle_timeout`.
    Idle(Duration),
    /// A cleartext connection opened with the HTTP/2 preface (left in the
    /// buffer).
    Http2,
}

/// Read one request head: wait for its first byte (holding no buffer, a
/// served connection only for the warm window), then up to
/// `header_timeout` for the whole head.
pub(super) async fn read_head(
    ctx: &WorkerCtx,
    handle: &ListenerHandle,
    conn: &mut Downstream,
    listener: &Listener,
    phase: Phase,
) -> Result<Read, HttpError> {
    let http = &listener.http;
    let limits = HeadLimits {
        max_head_bytes: http.max_request_header_bytes,
        max_headers: http.max_headers,
    };
    if conn.buf.is_empty() {
        let idle = listener.idle_timeout;
        let window = WARM_READ_WINDOW.min(idle);
        if let (Phase::Served, Driver::IoUring, ClientIo::Plain(stream)) =
            (phase, ctx.driver, &mut conn.stream)
        {
            // Cancelled and then awaited: bytes that arrive at the window's
            // edge are kept (sockio::read_within).
            // The previous request's buffer, reused when nothing else holds
            // it any more (`reserve` reclaims a unique allocation).
            let mut buf = std::mem::take(&mut conn.buf);
            buf.reserve(4096);
            let (res, buf) = read_within(stream, buf, &ctx.deadlines, window).await;
            match res {
                Some(Ok(0)) | Some(Err(_)) => return Ok(Read::Closed),
                Some(Ok(n)) => {
                    conn.bytes_in += n as u64;
                    conn.buf = buf;
                }
                None => return Ok(park_or_close(ctx, handle, idle, window)),
            }
        }
        if conn.buf.is_empty() {
            let wait = if phase == Phase::Served { window } else { idle };
            match wait_for_request(ctx, handle, conn, wait, phase).await {
                Wait::Ready => {}
                Wait::Close => return Ok(Read::Closed),
                Wait::Expired if phase == Phase::Served => {
                    return Ok(park_or_close(ctx, handle, idle, window))
                }
                Wait::Expired => return Ok(Read::Closed),
            }
        }
    }
    let deadline = ctx.deadlines.after(http.header_timeout);
    // Prior-knowledge HTTP/2: only as a cleartext connection's first bytes.
    let h2c = phase == Phase::New && http.http2.is_some() && !conn.stream.is_tls();
    loop {
        if h2c && !conn.buf.is_empty() {
            let n = conn.buf.len().min(super::h2::io::PREFACE.len());
            if conn.buf[..n] == super::h2::io::PREFACE[..n] {
                if n == super::h2::io::PREFACE.len() {
                    return Ok(Read::Http2);
                }
            } else if let Some(head) = parse_request(&mut conn.buf, limits)? {
                return Ok(Read::Head(head));
            }
        } else if !conn.buf.is_empty() {
            if let Some(head) = parse_request(&mut conn.buf, limits)? {
                return Ok(Read::Head(head));
            }
        }
        // Overloaded: no more buffer for a head still arriving.
        if !conn.buf.is_empty() && crate::worker::overload::overloaded() {
            return Err(HttpError::Overloaded);
        }
        // A timeout here ends the connection (408), so bytes a cancelled
        // read might have taken do not matter.
        let res = match ctx.deadlines.within(deadline, conn.read_more(4096)).await {
            Ok(done) => done,
            Err(_) => return Err(HttpError::HeaderTimeout),
        };
        match res {
            Ok(0) if conn.buf.is_empty() => return Ok(Read::Closed),
            Ok(0) => return Err(HttpError::BadRequest("connection closed mid-head")),
            // A head that takes more than one read: count its growth.
            Ok(n) if conn.buf.len() > n => crate::worker::overload::head_grew(n),
            Ok(_) => {}
            Err(e) => return Err(HttpError::DownstreamIo(e)),
        }
    }
}

/// The warm window ended with no request: park, unless that used up the
/// idle timeout or the listener is stopping.
fn park_or_close(
    ctx: &WorkerCtx,
    handle: &ListenerHandle,
    idle: Duration,
    window: Duration,
) -> Read {
    let left = idle.saturating_sub(window);
    if left.is_zero() || ctx.closing(handle) {
        Read::Closed
    } else {
        Read::Idle(left)
    }
}

/// How a wait for the next request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Bytes (or EOF) to read.
    Ready,
    /// Close: an error, or the listener stopping.
    Close,
    /// The time given ran out.
    Expired,
}

/// Between requests: wait up to `idle` for the client's next bytes, holding
/// no buffer. Idle keep-alive connections close at once when their
/// listener stops, so a drain does not wait for them. The wait is woken by
/// the listener's stop; nothing polls.
async fn wait_for_request(
    ctx: &WorkerCtx,
    handle: &ListenerHandle,
    conn: &mut Downstream,
    idle: Duration,
    phase: Phase,
) -> Wait {
    // Decrypted bytes (or ciphertext) already inside the TLS layer.
    if conn.stream.has_buffered() {
        return Wait::Ready;
    }
    let mut deadline = Instant::now() + idle;
    let mut expired = Wait::Expired;
    loop {
        let closing = ctx.closing(handle);
        if closing {
            if phase == Phase::Served {
                return Wait::Close;
            }
            deadline = deadline.min(Instant::now() + FIRST_REQUEST_GRACE);
            expired = Wait::Close;
        }
        if Instant::now() >= deadline {
            return expired;
        }
        // Not relaxed: on epoll a relaxed check can report stale readiness, and
        // an idle client would then be timed by header_timeout (408). The
        // idle deadline is coarse (up to ~100 ms late): no timer per idle
        // connection.
        let Some(tcp) = conn.stream.tcp() else {
            return Wait::Close;
        };
        let mut readable = std::pin::pin!(tcp.readable(false));
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
            Wake::Readable(true) => return Wait::Ready,
            Wake::Readable(false) => return Wait::Close,
            Wake::Expired => return expired,
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
