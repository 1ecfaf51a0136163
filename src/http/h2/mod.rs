//! HTTP/2 on http listeners (RFC 9113), next to HTTP/1.1 on the same port:
//! by ALPN `h2` on TLS listeners, by the connection preface (prior
//! knowledge) on cleartext ones. The hyperium `h2` crate does framing,
//! HPACK, flow control and the protocol's abuse limits; it runs on the
//! worker's own monoio driver through monoio's poll-style socket
//! (`io::ConnIo`), with no other runtime.
//!
//! The connection's task drives the connection and accepts streams; each
//! stream runs in a task of its own through the same request path as an
//! HTTP/1.1 request (`server::handle_request`): routing, policies, retries,
//! timeouts, access log and metrics are shared, and only the client side
//! differs (`stream::H2Stream`).

pub(super) mod convert;
pub mod io;
pub(super) mod respond;
pub mod stream;
pub mod upstream;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::RecvStream;

use super::downstream::{ClientIo, Downstream};
use super::record::{Mark, RequestRecord};
use super::request::{handle_request, AcceptedOn};
use crate::snapshot::Http2Settings;
use crate::snapshot::{Listener, Snapshot};
use crate::worker::ctx::{ListenerHandle, WorkerCtx};
pub use convert::trailers;
use stream::H2Stream;

/// After GOAWAY, how long a connection with no open stream waits for the
/// client's PING acknowledgement (which tells that no request is still in
/// flight toward it) before it closes anyway.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// What every stream of a connection shares.
struct Conn {
    ctx: Rc<WorkerCtx>,
    handle: Rc<ListenerHandle>,
    /// The snapshot of the accept (its listener as accepted).
    snapshot: Arc<Snapshot>,
    peer: SocketAddr,
    original_dst: Option<SocketAddr>,
    peer_identity: Option<Rc<str>>,
    xfcc: Option<Rc<str>>,
    tls: bool,
    sni: Option<Rc<str>>,
    /// Streams being served, and when the last one ended.
    active: Cell<usize>,
    idle_since: Cell<Instant>,
    /// Streams accepted, and those the client reset while they were being
    /// served (the reset budget, `max_client_resets`).
    streams: Cell<u64>,
    resets: Cell<u64>,
}

/// Serve HTTP/2 on a connection (`conn` as the HTTP/1 path set it up:
/// `buf` holds the bytes read so far) until it closes.
pub(super) async fn serve(
    ctx: &Rc<WorkerCtx>,
    handle: &Rc<ListenerHandle>,
    snapshot: &Arc<Snapshot>,
    listener: &Listener,
    conn: Downstream,
) {
    let Some(settings) = listener.http.http2.clone() else {
        return;
    };
    let Some(mut open) = open(ctx, handle, snapshot, listener, &settings, conn).await else {
        return;
    };
    if open.run(handle, listener, &settings).await == Ending::Flush {
        open.flush(listener).await;
    }
}

/// An HTTP/2 connection past its handshake.
struct Open {
    h2: h2::server::Connection<io::ConnIo, Bytes>,
    shared: Rc<Conn>,
    /// Since when writes wait on a client that does not read (none: not).
    stalled: Rc<Cell<Option<Instant>>>,
    gather: io::Gather,
}

/// How a connection's loop ended.
#[derive(PartialEq, Eq)]
enum Ending {
    /// Let the last frames (GOAWAY, RST_STREAM) reach the socket.
    Flush,
    /// The socket failed or the client stopped reading: close at once.
    Close,
}

/// Take the client connection over for `h2` and run the handshake within
/// `header_timeout`; `None` (logged) when it fails.
async fn open(
    ctx: &Rc<WorkerCtx>,
    handle: &Rc<ListenerHandle>,
    snapshot: &Arc<Snapshot>,
    listener: &Listener,
    settings: &Http2Settings,
    conn: Downstream,
) -> Option<Open> {
    let Downstream {
        stream,
        buf,
        peer,
        peer_identity,
        xfcc,
        original_dst,
        ..
    } = conn;
    let tls = stream.is_tls();
    let sni = stream.sni().map(Rc::from);
    let transport = match stream {
        ClientIo::Plain(tcp) => tcp.try_into_poll_io().map(|t| io::ConnIo::plain(t, buf)),
        ClientIo::Tls(t) => {
            let (tcp, session, raw) = t.into_parts();
            tcp.try_into_poll_io()
                .map(|t| io::ConnIo::tls(t, session, raw))
        }
        ClientIo::H2(_) => return None,
    };
    let transport = match transport {
        Ok(t) => t,
        Err((e, _)) => {
            tracing::warn!(error = %e, "cannot drive an HTTP/2 connection on this socket; closing it");
            return None;
        }
    };
    listener.stats.worker(ctx.index).http2_connections.inc();
    // A client that stops reading (while it floods PINGs or SETTINGS, or
    // just stalls) is cut off after `send_timeout`, as on HTTP/1.1.
    let stalled = transport.stall_handle();
    let gather = transport.gather();
    let handshake = builder(settings).handshake::<_, Bytes>(transport);
    let at = ctx.deadlines.after(listener.http.header_timeout);
    let h2 = match ctx.deadlines.within(at, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, error = %e, "HTTP/2 handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(client = %peer, "HTTP/2 preface or SETTINGS not received in time");
            return None;
        }
    };
    // From here on the frames of one pass go out in one write.
    gather.start();
    let shared = Rc::new(Conn {
        ctx: ctx.clone(),
        handle: handle.clone(),
        snapshot: snapshot.clone(),
        peer,
        original_dst,
        peer_identity,
        xfcc,
        tls,
        sni,
        active: Cell::new(0),
        idle_since: Cell::new(Instant::now()),
        streams: Cell::new(0),
        resets: Cell::new(0),
    });
    Some(Open {
        h2,
        shared,
        stalled,
        gather,
    })
}

/// A connection's clock: its idle and age limits, and the GOAWAY sent.
struct Life {
    born: Instant,
    idle: Duration,
    max_age: Option<Duration>,
    /// Set once GOAWAY went out: in-flight streams then get up to
    /// `idle_timeout` to finish; with none, the connection closes after
    /// `GOAWAY_GRACE` if the client has not closed it first.
    shutting: Option<Instant>,
}

impl Life {
    /// When the timer must next wake the connection (`active` streams
    /// open, idle since `idle_since`).
    fn deadline(&self, active: usize, idle_since: Instant) -> Instant {
        match self.shutting {
            Some(at) if active == 0 => at + GOAWAY_GRACE.min(self.idle),
            Some(at) => at + self.idle,
            None => {
                let idle_at = (active == 0).then(|| idle_since + self.idle);
                let age_at = self.max_age.map(|a| self.born + a);
                match (idle_at, age_at) {
                    (Some(a), Some(b)) => a.min(b),
                    (Some(a), None) | (None, Some(a)) => a,
                    (None, None) => Instant::now() + self.idle,
                }
            }
        }
    }
}

impl Open {
    /// Accept streams until the connection ends: the client closes it, an
    /// error, a reset flood, or the GOAWAY this proxy sent (on drain, a
    /// listener's stop, `idle_timeout` or `max_connection_age`) has run
    /// its course.
    async fn run(
        &mut self,
        handle: &ListenerHandle,
        listener: &Listener,
        settings: &Http2Settings,
    ) -> Ending {
        let ctx = self.shared.ctx.clone();
        let send_timeout = listener.http.send_timeout;
        let mut life = Life {
            born: Instant::now(),
            idle: listener.idle_timeout,
            max_age: settings.max_connection_age,
            shutting: None,
        };
        loop {
            if life.shutting.is_none() && ctx.closing(handle) {
                self.h2.graceful_shutdown();
                life.shutting = Some(Instant::now());
            }
            let stall_at = self.stalled.get().map(|t| t + send_timeout);
            let deadline = life.deadline(self.shared.active.get(), self.shared.idle_since.get());
            let deadline = stall_at.map_or(deadline, |s| s.min(deadline));
            match self
                .wake(handle, deadline, send_timeout, life.shutting.is_none())
                .await
            {
                Wake::Accepted(Some(Ok(incoming))) => {
                    if !self.accept(*incoming, listener, settings) {
                        return Ending::Flush;
                    }
                }
                Wake::Accepted(Some(Err(e))) => {
                    tracing::debug!(client = %self.shared.peer, error = %e, "HTTP/2 connection error");
                    return Ending::Flush;
                }
                Wake::Accepted(None) => return Ending::Flush,
                Wake::SendFailed(e) => {
                    tracing::debug!(client = %self.shared.peer, error = %e, "HTTP/2 write failed");
                    return Ending::Close;
                }
                Wake::Stopped | Wake::Rearm => {}
                Wake::Timer
                    if self
                        .stalled
                        .get()
                        .is_some_and(|t| t.elapsed() >= send_timeout) =>
                {
                    tracing::debug!(client = %self.shared.peer, "HTTP/2 client stopped reading for send_timeout; closing");
                    return Ending::Close;
                }
                Wake::Timer => {
                    if self.expired(&mut life, listener) {
                        return Ending::Flush;
                    }
                }
            }
        }
    }

    /// Wait for the next thing the connection must act on: a new stream,
    /// the listener's stop (while `watching_stop`), `deadline`, or a write
    /// stall that needs an earlier deadline. Each pass sends what the
    /// codec wrote in one write.
    async fn wake(
        &mut self,
        handle: &ListenerHandle,
        deadline: Instant,
        send_timeout: Duration,
        watching_stop: bool,
    ) -> Wake {
        let mut stopped = std::pin::pin!(handle.stopped());
        let mut expiry = self.shared.ctx.deadlines.arm(deadline);
        let (h2, gather, stalled) = (&mut self.h2, &self.gather, &self.stalled);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = h2.poll_accept(cx) {
                return Poll::Ready(Wake::Accepted(r.map(|r| r.map(Box::new))));
            }
            // The pass is over: what the codec wrote goes out in one write.
            if let Poll::Ready(Err(e)) = gather.poll_send(cx) {
                return Poll::Ready(Wake::SendFailed(e));
            }
            if watching_stop && stopped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Stopped);
            }
            if expiry.poll_expired(cx).is_ready() {
                return Poll::Ready(Wake::Timer);
            }
            // Writes started to wait while this deadline was armed: arm
            // the earlier one (the stall's `send_timeout`).
            if stalled.get().is_some_and(|t| t + send_timeout < deadline) {
                return Poll::Ready(Wake::Rearm);
            }
            Poll::Pending
        })
        .await
    }

    /// A new stream: refused past the stream limit, the connection ended
    /// (`false`) on a reset flood, else served in a task of its own.
    fn accept(
        &mut self,
        incoming: NewStream,
        listener: &Listener,
        settings: &Http2Settings,
    ) -> bool {
        let (req, mut respond) = incoming;
        let shared = &self.shared;
        let cells = listener.stats.worker(shared.ctx.index);
        cells.http2_streams.inc();
        shared.streams.set(shared.streams.get() + 1);
        if reset_flood(shared, settings) {
            cells.http2_reset_floods.inc();
            tracing::info!(client = %shared.peer, resets = shared.resets.get(), streams = shared.streams.get(), "HTTP/2 client reset too many streams it had opened; GOAWAY ENHANCE_YOUR_CALM");
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            self.h2.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
            return false;
        }
        // The work a connection holds never exceeds its stream limit,
        // whatever the client reset: a stream beyond it (its predecessors
        // still winding down) is refused, which a client may retry.
        if shared.active.get() >= settings.max_concurrent_streams as usize {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            return true;
        }
        shared.active.set(shared.active.get() + 1);
        monoio::spawn(serve_stream(shared.clone(), req, respond));
        true
    }

    /// The timer fired: start the GOAWAY when the connection idled or aged
    /// out; `true` when the connection is to end now.
    fn expired(&mut self, life: &mut Life, listener: &Listener) -> bool {
        let active = self.shared.active.get();
        match life.shutting {
            Some(at) if active == 0 => Instant::now() >= at + GOAWAY_GRACE.min(life.idle),
            Some(at) => {
                let over = Instant::now() >= at + life.idle;
                if over {
                    tracing::debug!(client = %self.shared.peer, "HTTP/2 streams still open idle_timeout after GOAWAY; closing");
                    self.h2.abrupt_shutdown(h2::Reason::NO_ERROR);
                }
                over
            }
            None => {
                let now = Instant::now();
                let idled = active == 0 && now >= self.shared.idle_since.get() + life.idle;
                let aged = life.max_age.is_some_and(|a| now >= life.born + a);
                if idled {
                    let cells = listener.stats.worker(self.shared.ctx.index);
                    cells.idle_timeouts.inc();
                }
                if idled || aged {
                    self.h2.graceful_shutdown();
                    life.shutting = Some(now);
                }
                false
            }
        }
    }

    /// Let the last frames (GOAWAY, RST_STREAM) reach the socket, within
    /// `send_timeout`.
    async fn flush(&mut self, listener: &Listener) {
        let deadlines = self.shared.ctx.deadlines.clone();
        let at = deadlines.after(listener.http.send_timeout);
        let (h2, gather) = (&mut self.h2, &self.gather);
        let _ = deadlines
            .within(
                at,
                std::future::poll_fn(|cx| {
                    let closed = h2.poll_closed(cx);
                    match gather.poll_send(cx) {
                        Poll::Ready(Err(_)) => Poll::Ready(()),
                        Poll::Ready(Ok(())) if closed.is_ready() => Poll::Ready(()),
                        _ => Poll::Pending,
                    }
                }),
            )
            .await;
    }
}

/// Run `work` until it ends, or until the client resets the stream before
/// its response head was sent: then `work` is dropped and the reason
/// returned. (After the head, a reset ends the work at its next write.)
async fn unless_reset<F: Future>(
    respond: &RefCell<SendResponse<Bytes>>,
    work: F,
) -> Option<h2::Reason> {
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        if work.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        // Polled in the stream's own task, between the work's polls: the
        // work holds no borrow of `respond` across a wait.
        match respond.borrow_mut().poll_reset(cx) {
            Poll::Ready(Ok(reason)) => Poll::Ready(Some(reason)),
            // The connection is gone: nobody is waiting for the answer.
            Poll::Ready(Err(e)) if e.is_io() => Poll::Ready(Some(h2::Reason::CANCEL)),
            // The head was sent (the crate then refuses to watch here).
            Poll::Ready(Err(_)) | Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// A stream the connection accepted: its request and where to answer.
type NewStream = (http::Request<RecvStream>, SendResponse<Bytes>);

/// What woke the connection's task.
enum Wake {
    Accepted(Option<Result<Box<NewStream>, h2::Error>>),
    Stopped,
    Timer,
    /// The deadline must be computed again (a write stall began).
    Rearm,
    /// The socket refused the gathered writes.
    SendFailed(std::io::Error),
}

/// The `h2` server with the listener's limits. Rapid Reset
/// (CVE-2023-44487): at most `max_pending_resets` streams reset by the
/// client before they were served; MadeYouReset: at most
/// `max_error_resets` streams the proxy had to reset for the client's
/// errors; past either the connection gets GOAWAY. CONTINUATION floods and
/// HPACK bombs end at `max_header_list_bytes`; the crate also bounds
/// SETTINGS and PING floods and empty DATA frames.
fn builder(s: &Http2Settings) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(s.max_concurrent_streams)
        .initial_window_size(s.initial_stream_window)
        .initial_connection_window_size(s.initial_connection_window)
        .max_header_list_size(s.max_header_list_bytes)
        .max_frame_size(s.max_frame_size)
        .max_pending_accept_reset_streams(s.max_pending_resets)
        .max_local_error_reset_streams(Some(s.max_error_resets));
    b
}

/// Rapid Reset past acceptance (CVE-2023-44487): the client reset more
/// than `max_client_resets` streams it had opened while they were being
/// served, and those are more than half of its streams (a client that
/// cancels now and then, as gRPC clients do, never gets there).
fn reset_flood(shared: &Conn, settings: &Http2Settings) -> bool {
    let resets = shared.resets.get();
    resets > settings.max_client_resets && resets * 2 > shared.streams.get()
}

/// Counts a stream as active for the connection's idle timer.
struct Active(Rc<Conn>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get().saturating_sub(1));
        self.0.idle_since.set(Instant::now());
    }
}

/// One stream, in its own task: the request through the shared request
/// path, then the stream reset if its response did not end.
async fn serve_stream(
    shared: Rc<Conn>,
    req: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let active = Active(shared);
    let shared = &active.0;
    let ctx = &shared.ctx;
    let Some(listener) = shared.handle.resolve(&shared.snapshot) else {
        respond.send_reset(h2::Reason::REFUSED_STREAM);
        return;
    };
    let (parts, recv) = req.into_parts();
    let end = recv.is_end_stream();
    let parsed = convert::request_head(&parts, end, &listener.http);
    let chunked = matches!(&parsed, Ok((_, true)));
    let respond = Rc::new(RefCell::new(respond));
    let mut conn = Downstream {
        stream: ClientIo::H2(Box::new(H2Stream::new(
            recv,
            respond.clone(),
            chunked,
            shared.tls,
            shared.sni.clone(),
        ))),
        buf: BytesMut::new(),
        peer: shared.peer,
        bytes_in: 0,
        bytes_out: 0,
        handle: shared.handle.clone(),
        responded: false,
        body_complete: true,
        send_timeout: listener.http.send_timeout,
        body_timeout: listener.http.request_body_timeout,
        deadlines: ctx.deadlines.clone(),
        peer_identity: shared.peer_identity.clone(),
        xfcc: shared.xfcc.clone(),
        original_dst: shared.original_dst,
    };
    let mark = Mark::of(&conn);
    match parsed {
        Ok((head, _)) => {
            let accepted = AcceptedOn {
                snapshot: &shared.snapshot,
                listener,
            };
            // For the log line of a cancelled request (reference counts,
            // no copy).
            let (method, target) = (head.method.clone(), head.target.clone());
            let work = handle_request(ctx, &shared.handle, accepted, &mut conn, head, mark);
            if let Some(reason) = unless_reset(&respond, work).await {
                // The request's work (routing, connect, the upstream
                // request) was dropped where it stood: an HTTP/1 upstream
                // connection closes, an HTTP/2 upstream stream is reset.
                listener.stats.worker(ctx.index).http2_client_resets.inc();
                shared.resets.set(shared.resets.get() + 1);
                tracing::debug!(client = %shared.peer, listener = %listener.name, ?reason, "HTTP/2 stream reset by the client; its work is cancelled");
                let mut rec = RequestRecord::new(listener, mark);
                rec.flags = "DR";
                let head = super::codec::RequestHead {
                    method,
                    target,
                    version: super::codec::Version::Http2,
                    headers: Vec::new(),
                    framing: super::codec::Framing::None,
                    keep_alive: false,
                    expect_continue: false,
                    upgrade_websocket: false,
                };
                let up = super::exchange::UpstreamRecord::default();
                rec.finish(ctx, &ctx.current(), &conn, Some((&head, &up)));
                return;
            }
        }
        Err(e) => {
            tracing::debug!(client = %conn.peer, listener = %listener.name, error = %e, "HTTP/2 request rejected");
            respond::respond_error(&mut conn, &e).await;
            let mut rec = RequestRecord::new(listener, mark);
            if conn.responded {
                rec.status = e.status().unwrap_or(0);
            }
            rec.flags = e.flag();
            rec.finish(ctx, &ctx.current(), &conn, None);
        }
    }
    if let ClientIo::H2(s) = &mut conn.stream {
        s.reset_unless_finished();
    }
}
