//! The upstream side of one request: pick a cluster endpoint, take a pooled
//! connection or connect, send the re-serialised request and stream its
//! body, read the response and stream it back, then pool the connection if
//! it is clean.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::upconn::UpConn;

use super::body::BodySink;
use super::chunked::ChunkFrame;
use super::codec::{parse_response, Framing, HeadLimits, RequestHead, ResponseHead, Version};
use super::downstream::Downstream;
use super::error::HttpError;
use super::exchange::{Exchange, ExchangeError, Next};
use super::serialize::serialize_response;
use crate::buffers::HEAD_READ;

/// The largest fixed-length response body sent in one write with its head
/// (read in full first when the upstream wrote them apart).
const WITH_HEAD_MAX: u64 = 64 * 1024;
/// How long such a body may keep its head waiting (the short deadlines'
/// precision: about 10 ms either way).
const BODY_WAIT: Duration = Duration::from_millis(50);
/// Limits for upstream response heads.
const RESPONSE_LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 64 * 1024,
    max_headers: 200,
};

/// Safe to send twice: no body (nothing of it was consumed) and idempotent.
fn replayable(head: &RequestHead) -> bool {
    head.framing == Framing::None && crate::resilience::retry::idempotent(&head.method)
}

impl Exchange<'_> {
    pub(super) async fn run(
        &self,
        conn: &mut Downstream,
        mut up: UpConn,
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
                    unsent: true,
                },
                other => ExchangeError::Failed(other),
            });
        }
        let mut up_buf = self.req.ctx.head_buffers.take();
        // Expect: 100-continue is answered by the proxy itself (as Envoy and
        // nginx do) and not forwarded: the client gets its 100 at once and the
        // body streams on, whether or not the upstream would send one.
        if self.body.is_none()
            && head.expect_continue
            && head.framing != Framing::None
            && conn.buf.is_empty()
        {
            conn.write_vec(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec())
                .await
                .map_err(ExchangeError::Failed)?;
        }
        match &self.body {
            // A kept chunked body is sent as one chunk and the last one.
            Some(body) if head.framing == Framing::Chunked => {
                let mut framed = BytesMut::with_capacity(body.len() + 16);
                if !body.is_empty() {
                    super::h2::convert::push_chunk(&mut framed, body);
                }
                framed.extend_from_slice(b"0\r\n\r\n");
                self.write_upstream(&mut up, framed.freeze())
                    .await
                    .map_err(ExchangeError::Failed)?
            }
            Some(body) if !body.is_empty() => self
                .write_upstream(&mut up, body.clone())
                .await
                .map_err(ExchangeError::Failed)?,
            Some(_) => {}
            None => self
                .send_body(conn, &mut up)
                .await
                .map_err(ExchangeError::Failed)?,
        }
        // Read the final response head; interim 1xx responses are consumed.
        let response = loop {
            let resp = self
                .read_response_head(&mut up, &mut up_buf)
                .await
                .map_err(|e| match e {
                    HttpError::UpstreamIo(error) if up_buf.is_empty() => ExchangeError::Stale {
                        error,
                        replay_safe: replayable(head),
                        unsent: false,
                    },
                    other => ExchangeError::Failed(other),
                })?;
            if resp.status == 101 && head.upgrade_websocket {
                self.out.status.set(101);
                let Some(up) = up.into_plain() else {
                    return Err(ExchangeError::Failed(HttpError::BadResponse(
                        "protocol upgrade over a TLS upstream connection is not supported",
                    )));
                };
                let out = serialize_response(&resp, self.req.route, Framing::None, false, true, 0);
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
            self.out.head_at.set(Some(Instant::now()));
            break resp;
        };
        if self.req.grpc {
            for h in &response.headers {
                self.out.note_grpc(&h.name, &h.value);
            }
        }
        if let Some(r) = self.retry {
            if r.wants_status(response.status) && r.grant() {
                return Err(ExchangeError::RetryStatus(response.status));
            }
            // A trailers-only gRPC answer with a status the route retries.
            if let Some(g) = self.out.grpc_status.get().filter(|g| r.wants_grpc(*g)) {
                if r.grant() {
                    return Err(ExchangeError::RetryStatus(crate::grpc::http_equivalent(g)));
                }
            }
        }
        self.respond(conn, up, up_buf, response)
            .await
            .map_err(ExchangeError::Failed)
    }

    /// Write to the upstream, failing when it stops reading for `send_timeout`.
    pub(super) async fn write_upstream(
        &self,
        up: &mut UpConn,
        data: Bytes,
    ) -> Result<(), HttpError> {
        let deadlines = &self.req.ctx.deadlines;
        up.write_all(data, deadlines, self.req.http.send_timeout)
            .await
            .map_err(HttpError::upstream_write)
    }

    /// Write one chunk frame to the upstream (payload not copied).
    pub(super) async fn write_upstream_frame(
        &self,
        up: &mut UpConn,
        frame: ChunkFrame,
    ) -> Result<(), HttpError> {
        let deadlines = &self.req.ctx.deadlines;
        up.write_frame(frame, deadlines, self.req.http.send_timeout)
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
        up: &mut UpConn,
        buf: &mut BytesMut,
    ) -> Result<ResponseHead, HttpError> {
        loop {
            if !buf.is_empty() {
                if let Some(r) = parse_response(buf, RESPONSE_LIMITS)? {
                    return Ok(r);
                }
            }
            let mut at = Instant::now() + self.remaining();
            if let Some(d) = self.head_deadline {
                at = at.min(d);
            }
            // Built in place (a bound future would be copied once more).
            let read = self
                .req
                .ctx
                .deadlines
                .within(at, up.read_more(std::mem::take(buf), HEAD_READ));
            let (res, b) = match read.await {
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
        mut up: UpConn,
        mut up_buf: BytesMut,
        mut resp: ResponseHead,
    ) -> Result<Next, HttpError> {
        if conn.stream.is_h2() {
            return self.respond_h2(conn, up, up_buf, resp).await;
        }
        let head = self.req.head;
        let framing = resp.framing(head.is_head())?;
        // A small fixed-length body that has not all arrived with the head
        // (the upstream wrote them apart) gets a short wait, so that head
        // and body leave in one write and, over TLS, one record, as
        // nginx's postponed output does. Past the wait, or on an error or
        // an early close, the head goes alone and the body copy below
        // takes over (and reports what went wrong). Plain upstreams only:
        // their reads can be cancelled without losing a byte.
        if let (Framing::Length(n), None, UpConn::Plain(s)) = (framing, self.req.web, &mut up) {
            while n <= WITH_HEAD_MAX && (up_buf.len() as u64) < n {
                up_buf.reserve(16 * 1024);
                let (len, cap) = (up_buf.len(), up_buf.capacity());
                let (res, slice) = crate::sockio::read_within(
                    s,
                    monoio::buf::SliceMut::new(up_buf, len, cap),
                    &self.req.ctx.deadlines,
                    BODY_WAIT,
                )
                .await;
                up_buf = slice.into_inner();
                if !matches!(res, Some(Ok(1..))) {
                    break;
                }
            }
        }
        // HTTP/1.1 clients get a close-delimited body re-framed as chunked;
        // HTTP/1.0 clients, who do not know chunked, get a chunked body
        // decoded and delimited by closing the connection.
        let out_framing = match (framing, head.version) {
            (Framing::None, _) => Framing::None,
            // gRPC-Web: the body grows by the trailer frame.
            (_, Version::Http10) if self.req.web.is_some() => Framing::UntilClose,
            (_, _) if self.req.web.is_some() => Framing::Chunked,
            (Framing::UntilClose, Version::Http11) => Framing::Chunked,
            (Framing::Chunked, Version::Http10) => Framing::UntilClose,
            (f, _) => f,
        };
        if let Some(call) = self.req.web {
            super::grpc_web::translate_response(&mut resp, call);
        }
        let client_keep = head.keep_alive
            && !self.req.ctx.closing(&conn.handle)
            && out_framing != Framing::UntilClose;
        // A small body that has fully arrived goes out with the head: one write.
        let with_head = match (framing, self.req.web) {
            (Framing::Length(n), None) if n <= WITH_HEAD_MAX && up_buf.len() as u64 >= n => {
                Some(n as usize)
            }
            _ => None,
        };
        let mut out = serialize_response(
            &resp,
            self.req.route,
            out_framing,
            !client_keep,
            false,
            with_head.unwrap_or(0),
        );
        let mut sink = BodySink {
            conn,
            chunked_out: out_framing == Framing::Chunked,
            web: self.req.web.map(super::grpc_web::WebBody::new),
        };
        let mut framing = framing;
        if let Some(n) = with_head {
            out.extend_from_slice(&up_buf[..n]);
            bytes::Buf::advance(&mut up_buf, n);
            framing = Framing::None;
        }
        sink.conn.responded = true;
        sink.conn.write_bytes(out.freeze()).await?;
        self.copy_body(up, up_buf, &mut sink, framing, resp.keep_alive)
            .await?;
        Ok(if client_keep {
            Next::KeepAlive
        } else {
            Next::Close
        })
    }

    /// Return a clean upstream connection to the worker's pool.
    pub(super) fn pool(&self, up: UpConn) {
        let ctx = self.req.ctx;
        let key = super::pool::PoolKey::new(self.addr, self.cluster.tls.as_deref());
        ctx.http_pool.put(
            key,
            up,
            self.cluster.max_idle_connections,
            ctx.deadlines.coarse_now(),
        );
        if let Some(ep) = self
            .cluster
            .endpoints
            .iter()
            .find(|e| e.address == self.addr)
        {
            ep.stats
                .worker(ctx.index)
                .pooled
                .set(ctx.http_pool.idle_count(key) as u64);
        }
    }
}
