//! The upstream side of one request: pick a cluster endpoint, take a pooled
//! connection or connect, send the re-serialised request and stream its
//! body, read the response and stream it back, then pool the connection if
//! it is clean.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use monoio::net::TcpStream;

use super::body::BodySink;
use super::chunked::ChunkFrame;
use super::codec::{parse_response, Framing, HeadLimits, RequestHead, ResponseHead, Version};
use super::downstream::Downstream;
use super::error::HttpError;
use super::io::read_more;
use super::serialize::{serialize_request, serialize_response};
use crate::config::{HttpSettings, Snapshot};
use crate::metrics::Active;
use crate::route::Route;
use crate::sockio::{write_all_within, write_vectored_within};
use crate::upstream::Cluster;
use crate::worker::WorkerCtx;

/// What the upstream side of one request did, for metrics and the access log.
#[derive(Debug, Default)]
pub struct Upstream {
    /// The endpoint of the last attempt.
    pub address: Cell<Option<SocketAddr>>,
    /// The upstream's final status (0: none received).
    pub status: Cell<u16>,
    /// When the request was sent and when the response ended.
    pub sent: Cell<Option<Instant>>,
    pub done: Cell<Option<Instant>>,
    /// The x-request-id sent upstream (the client's or a generated one).
    pub request_id: Option<Bytes>,
}

impl Upstream {
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

/// Limits for upstream response heads.
const RESPONSE_LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 64 * 1024,
    max_headers: 200,
};

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
}

/// Forward the request (and its body, read from `conn`) to cluster
/// `cluster_name`. On error the caller decides, through
/// `error::keeps_connection`, whether the client connection stays open.
pub async fn forward(
    req: Forward<'_>,
    cluster_name: &str,
    conn: &mut Downstream,
    out: &mut Upstream,
) -> Result<Next, HttpError> {
    let ctx = req.ctx;
    let Some(cluster) = req.snapshot.clusters.get(cluster_name) else {
        return Err(HttpError::NoUpstream(format!("no cluster {cluster_name}")));
    };
    let upstream_host = cluster
        .endpoints
        .first()
        .map_or("localhost", |e| e.written.as_str());
    // Serialised once; each attempt shares it (a retry sends the same bytes).
    let (request, request_id) = serialize_request(req.head, req.route, conn.peer, upstream_host);
    out.request_id = Some(request_id);
    let ccells = cluster.stats.worker(ctx.index);
    let deadline = req.route.timeout.map(|t| req.started + t);
    let mut attempt = ctx.balancers.attempt_order(cluster);
    let mut last_error = String::from("no endpoints");
    // After a pooled connection turned out dead, the retry takes a new one.
    let mut fresh = false;
    let mut retried = false;
    let mut next_endpoint = attempt.next();
    while let Some(index) = next_endpoint {
        let endpoint = &cluster.endpoints[index];
        let addr = endpoint.address;
        let ecells = endpoint.stats.worker(ctx.index);
        out.address.set(Some(addr));
        let (stream, reused) = match checkout(ctx, cluster, addr, fresh).await {
            Ok(s) => s,
            Err(e) => {
                last_error = format!("{addr}: {e}");
                ccells.connect_failures.inc();
                ecells.error(last_error.clone());
                next_endpoint = attempt.next();
                continue;
            }
        };
        if reused {
            ecells.pooled.set(ctx.http_pool.idle_count(addr) as u64);
        } else {
            ccells.connections_opened.inc();
        }
        let _in_flight = ctx.balancers.track(addr);
        let _active = Active::new(ccells, ecells);
        let exchange = Exchange {
            req,
            cluster,
            addr,
            deadline,
            out,
        };
        let sent = Instant::now();
        out.sent.set(Some(sent));
        let result = exchange.run(conn, stream, request.clone()).await;
        out.done.set(Some(Instant::now()));
        ccells.duration.record(sent.elapsed());
        if out.status.get() != 0 {
            ccells.responses.inc(out.status.get());
        }
        match &result {
            Err(ExchangeError::Failed(e)) if e.side() == super::error::Side::Upstream => {
                if matches!(e, HttpError::UpstreamTimeout) {
                    ccells.timeouts.inc();
                }
                ecells.error(e.to_string());
            }
            Err(ExchangeError::Stale { error, .. }) => ecells.error(error.to_string()),
            _ => {}
        }
        match result {
            Ok(next) => return Ok(next),
            // A pooled connection the upstream had closed while idle: retry
            // once, on a new connection to the same endpoint, when the
            // request can be sent again.
            Err(ExchangeError::Stale { error, replay_safe })
                if reused && !retried && replay_safe =>
            {
                tracing::debug!(upstream = %addr, %error, "pooled connection was closed; retrying on a new one");
                retried = true;
                fresh = true;
            }
            Err(ExchangeError::Stale { error, .. }) => return Err(HttpError::UpstreamIo(error)),
            Err(ExchangeError::Failed(e)) => return Err(e),
        }
    }
    Err(HttpError::NoUpstream(last_error))
}

/// Safe to send twice: no body (nothing of it was consumed) and idempotent.
fn replayable(head: &RequestHead) -> bool {
    head.framing == Framing::None
        && matches!(
            &head.method[..],
            b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE"
        )
}

/// A pooled connection (`true`) or a new one; `fresh` skips the pool.
async fn checkout(
    ctx: &WorkerCtx,
    cluster: &Cluster,
    addr: SocketAddr,
    fresh: bool,
) -> std::io::Result<(TcpStream, bool)> {
    if !fresh {
        if let Some(s) = ctx.http_pool.take(addr, cluster.pool_idle_timeout) {
            return Ok((s, true));
        }
    }
    let at = Instant::now() + cluster.connect_timeout;
    match ctx
        .deadlines
        .within(at, TcpStream::connect_addr(addr))
        .await
    {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok((s, false))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}

enum ExchangeError {
    /// Failed before any response byte on a connection that the upstream
    /// may have closed while it was pooled. `replay_safe`: sending the
    /// request again cannot make the upstream process it twice.
    Stale {
        error: std::io::Error,
        replay_safe: bool,
    },
    Failed(HttpError),
}

pub(super) struct Exchange<'a> {
    pub(super) req: Forward<'a>,
    pub(super) cluster: &'a Cluster,
    pub(super) addr: SocketAddr,
    pub(super) deadline: Option<Instant>,
    pub(super) out: &'a Upstream,
}

impl Exchange<'_> {
    async fn run(
        &self,
        conn: &mut Downstream,
        mut up: TcpStream,
        request: Bytes,
    ) -> Result<Next, ExchangeError> {
        let head = self.req.head;
        // Nothing of the body was consumed yet, and a write error on the
        // head means the upstream had closed the connection: resending the
        // whole request elsewhere cannot make it run twice.
        if let Err(e) = self.write_upstream(&mut up, request).await {
            return Err(match e {
                HttpError::UpstreamIo(error) => ExchangeError::Stale {
                    error,
                    replay_safe: true,
                },
                other => ExchangeError::Failed(other),
            });
        }
        let mut up_buf = BytesMut::new();
        // Expect: 100-continue is answered by the proxy itself (as Envoy and
        // nginx do) and not forwarded: the client gets its 100 at once and the
        // body streams on, whether or not the upstream would send one.
        if head.expect_continue && head.framing != Framing::None && conn.buf.is_empty() {
            conn.write_vec(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec())
                .await
                .map_err(ExchangeError::Failed)?;
        }
        self.send_body(conn, &mut up)
            .await
            .map_err(ExchangeError::Failed)?;
        // Read the final response head; interim 1xx responses are consumed.
        let response = loop {
            let resp = self
                .read_response_head(&mut up, &mut up_buf)
                .await
                .map_err(|e| match e {
                    HttpError::UpstreamIo(error) if up_buf.is_empty() => ExchangeError::Stale {
                        error,
                        replay_safe: replayable(head),
                    },
                    other => ExchangeError::Failed(other),
                })?;
            if resp.status == 101 && head.upgrade_websocket {
                self.out.status.set(101);
                let out = serialize_response(&resp, self.req.route, Framing::None, false, true);
                conn.responded = true;
                conn.write_bytes(out.freeze())
                    .await
                    .map_err(ExchangeError::Failed)?;
                return Ok(Next::Upgrade(up, up_buf));
            }
            if (100..200).contains(&resp.status) {
                continue;
            }
            self.out.status.set(resp.status);
            break resp;
        };
        self.respond(conn, up, up_buf, response)
            .await
            .map_err(ExchangeError::Failed)
    }

    /// Write to the upstream, failing when it stops reading for `send_timeout`.
    pub(super) async fn write_upstream(
        &self,
        up: &mut TcpStream,
        data: Bytes,
    ) -> Result<(), HttpError> {
        let deadlines = &self.req.ctx.deadlines;
        write_all_within(up, data, deadlines, self.req.http.send_timeout)
            .await
            .map(drop)
            .map_err(HttpError::upstream_write)
    }

    /// Write one chunk frame to the upstream (payload not copied).
    pub(super) async fn write_upstream_frame(
        &self,
        up: &mut TcpStream,
        frame: ChunkFrame,
    ) -> Result<(), HttpError> {
        let deadlines = &self.req.ctx.deadlines;
        write_vectored_within(up, frame, deadlines, self.req.http.send_timeout)
            .await
            .map_err(HttpError::upstream_write)
    }

    /// How long the next upstream read may take: the route's deadline, and
    /// never more than `upstream_read_timeout` without a byte.
    pub(super) fn remaining(&self) -> Duration {
        let idle = self.req.http.upstream_read_timeout;
        self.deadline.map_or(idle, |d| {
            d.saturating_duration_since(Instant::now()).min(idle)
        })
    }

    async fn read_response_head(
        &self,
        up: &mut TcpStream,
        buf: &mut BytesMut,
    ) -> Result<ResponseHead, HttpError> {
        loop {
            if !buf.is_empty() {
                if let Some(r) = parse_response(buf, RESPONSE_LIMITS)? {
                    return Ok(r);
                }
            }
            let read = read_more(up, std::mem::take(buf), 8192);
            let at = Instant::now() + self.remaining();
            let (res, b) = match self.req.ctx.deadlines.within(at, read).await {
                Ok(done) => done,
                Err(_) => return Err(HttpError::UpstreamTimeout),
            };
            *buf = b;
            match res {
                Ok(0) if buf.is_empty() => {
                    return Err(HttpError::UpstreamIo(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    ))
                }
                Ok(0) => return Err(HttpError::BadResponse("connection closed mid-head")),
                Ok(_) => {}
                Err(e) => return Err(HttpError::UpstreamIo(e)),
            }
        }
    }

    /// Send the response head and body to the client; pool the upstream
    /// connection when it is clean.
    async fn respond(
        &self,
        conn: &mut Downstream,
        mut up: TcpStream,
        mut up_buf: BytesMut,
        resp: ResponseHead,
    ) -> Result<Next, HttpError> {
        let head = self.req.head;
        let framing = resp.framing(head.is_head())?;
        // HTTP/1.1 clients get a close-delimited body re-framed as chunked;
        // HTTP/1.0 clients, who do not know chunked, get a chunked body
        // decoded and delimited by closing the connection.
        let out_framing = match (framing, head.version) {
            (Framing::UntilClose, Version::Http11) => Framing::Chunked,
            (Framing::Chunked, Version::Http10) => Framing::UntilClose,
            (f, _) => f,
        };
        let client_keep = head.keep_alive
            && !self.req.ctx.closing(&conn.handle)
            && out_framing != Framing::UntilClose;
        let mut out = serialize_response(&resp, self.req.route, out_framing, !client_keep, false);
        let mut sink = BodySink {
            conn,
            chunked_out: out_framing == Framing::Chunked,
        };
        // A small body that has fully arrived goes out with the head: one write.
        let mut framing = framing;
        if let Framing::Length(n) = framing {
            if n <= 64 * 1024 && up_buf.len() as u64 >= n {
                out.extend_from_slice(&up_buf.split_to(n as usize));
                framing = Framing::None;
            }
        }
        sink.conn.responded = true;
        sink.conn.write_bytes(out.freeze()).await?;
        let upstream_clean = match framing {
            Framing::None => true,
            Framing::Length(n) => {
                self.copy_length(&mut up, &mut up_buf, &mut sink, n).await?;
                true
            }
            Framing::Chunked => {
                self.copy_chunked(&mut up, &mut up_buf, &mut sink).await?;
                true
            }
            Framing::UntilClose => {
                self.copy_until_close(&mut up, &mut up_buf, &mut sink)
                    .await?;
                false
            }
        };
        if upstream_clean && resp.keep_alive && up_buf.is_empty() {
            self.pool(up);
        }
        Ok(if client_keep {
            Next::KeepAlive
        } else {
            Next::Close
        })
    }

    /// Return a clean upstream connection to the worker's pool.
    fn pool(&self, up: TcpStream) {
        let ctx = self.req.ctx;
        ctx.http_pool
            .put(self.addr, up, self.cluster.max_idle_connections);
        if let Some(ep) = self
            .cluster
            .endpoints
            .iter()
            .find(|e| e.address == self.addr)
        {
            ep.stats
                .worker(ctx.index)
                .pooled
                .set(ctx.http_pool.idle_count(self.addr) as u64);
        }
    }
}
