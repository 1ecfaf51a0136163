//! HTTP/2 toward clusters (`protocol = "http2"`, or `"auto"` when ALPN
//! picks `h2`): a few multiplexed connections per endpoint per worker,
//! each driven by a task of its own, and the exchange of one request over
//! a stream of one of them. The request is the one the HTTP/1.1 path
//! serialised (hop-by-hop fields removed, forwarding fields and route edits
//! applied), re-read into HTTP/2 form: both protocols share one set of
//! header rules.

use std::cell::Cell;
use std::fmt::Write as _;
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use monoio::net::TcpStream;

use super::convert;
use super::io::ConnIo;
use super::stream::{send_flow, stream_error};
use crate::http::body::{BodyReader, BodySink, Piece};
use crate::http::codec::{Framing, Header, ResponseHead, Version};
use crate::http::downstream::Downstream;
use crate::http::error::HttpError;
use crate::http::exchange::{Exchange, ExchangeError, Next};
use crate::http::pool::{H2Pool, Lease, PoolKey};
use crate::http::serialize::serialize_response;

/// Streams this proxy opens on one upstream connection before the peer's
/// SETTINGS arrive (the peer's limit applies once they do; a stream it
/// refuses is retried, which is always safe).
const INITIAL_MAX_SEND_STREAMS: usize = 100;

/// The transport of a new upstream connection.
#[derive(Debug)]
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<crate::tls::ClientStream>),
}

impl Transport {
    /// The poll-style transport the `h2` crate drives.
    pub fn into_io(self) -> std::io::Result<ConnIo> {
        match self {
            Transport::Plain(tcp) => tcp
                .try_into_poll_io()
                .map(|t| ConnIo::plain(t, BytesMut::new())),
            Transport::Tls(t) => {
                let (tcp, session, raw) = t.into_parts();
                tcp.try_into_poll_io().map(|t| ConnIo::tls(t, session, raw))
            }
        }
        .map_err(|(e, _)| e)
    }
}

impl From<crate::http::upconn::UpConn> for Transport {
    fn from(c: crate::http::upconn::UpConn) -> Self {
        match c {
            crate::http::upconn::UpConn::Plain(s) => Transport::Plain(s),
            crate::http::upconn::UpConn::Tls(t) => Transport::Tls(t),
        }
    }
}

/// Run the HTTP/2 handshake on a new connection, start its task and pool
/// it; the sender for the first stream.
pub async fn handshake(
    pool: &H2Pool,
    key: PoolKey,
    transport: Transport,
) -> std::io::Result<Lease> {
    let addr = key.addr;
    let io = transport.into_io()?;
    let gather = io.gather();
    let (send, conn) = h2::client::Builder::new()
        .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(stream_error)?;
    // From here on the frames of one pass (the requests of every stream
    // that had something to send) go out in one write, as downstream.
    gather.start();
    let closed = Rc::new(Cell::new(false));
    let flag = closed.clone();
    monoio::spawn(async move {
        let mut conn = std::pin::pin!(conn);
        poll_fn(|cx| {
            let r = conn.as_mut().poll(cx);
            if let Poll::Ready(Err(e)) = gather.poll_send(cx) {
                tracing::debug!(upstream = %addr, error = %e, "upstream HTTP/2 write failed");
                return Poll::Ready(());
            }
            r.map(|r| {
                if let Err(e) = r {
                    tracing::debug!(upstream = %addr, error = %e, "upstream HTTP/2 connection ended");
                }
            })
        })
        .await;
        flag.set(true);
    });
    Ok(pool.add(key, send, closed))
}

/// A failure before the upstream could have processed the request: the
/// stream was refused (or the connection went away before it was sent).
fn is_unprocessed(e: &h2::Error) -> bool {
    e.reason() == Some(h2::Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote())
}

/// A stream failure as the retry loop sees it. `sent`: the request went
/// out; `body_held`: its body (if any) is held by the proxy, so it can be
/// sent again. A refused stream whose body was streamed from the client
/// is never replayed: those bytes are gone, and the next ones on the
/// client's connection belong to another request (docs/security.md,
/// "No replay of a streamed body").
fn failed(e: h2::Error, sent: bool, body_held: bool) -> ExchangeError {
    if !sent {
        return ExchangeError::Stale {
            error: stream_error(e),
            replay_safe: true,
            unsent: true,
        };
    }
    if is_unprocessed(&e) {
        if body_held {
            return ExchangeError::Stale {
                error: stream_error(e),
                replay_safe: true,
                unsent: true,
            };
        }
        return ExchangeError::Failed(HttpError::RefusedUnreplayable);
    }
    ExchangeError::Failed(HttpError::UpstreamIo(stream_error(e)))
}

impl Exchange<'_> {
    /// One try over an HTTP/2 stream: send the request and its body, read
    /// the response head, stream the body and trailers to the client.
    pub(in crate::http) async fn run_h2(
        &self,
        conn: &mut Downstream,
        lease: Lease,
        request: Bytes,
    ) -> Result<Next, ExchangeError> {
        let mut send = lease.send.clone();
        let head = self.req.head;
        let scheme = if self.cluster.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let req = convert::request_from_h1(&request, scheme).map_err(ExchangeError::Failed)?;
        let has_body = match &self.body {
            Some(b) => !b.is_empty(),
            // `content-length: 0` has no body: END_STREAM on the HEADERS.
            None => !matches!(head.framing, Framing::None | Framing::Length(0)),
        };
        let deadlines = &self.req.ctx.deadlines;
        let at = Instant::now() + self.remaining();
        match deadlines
            .within(at, poll_fn(|cx| send.poll_ready(cx)))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(failed(e, false, true)),
            Err(_) => return Err(ExchangeError::Failed(HttpError::UpstreamTimeout)),
        }
        let (response, mut body_tx) = send
            .send_request(req, !has_body)
            .map_err(|e| failed(e, false, true))?;
        if has_body {
            let sent = match &self.body {
                Some(b) => {
                    let at = deadlines.after(self.req.http.send_timeout);
                    match deadlines
                        .within(at, send_flow(&mut body_tx, b.clone(), true))
                        .await
                    {
                        Ok(r) => r.map_err(HttpError::upstream_write),
                        Err(_) => Err(HttpError::SendTimeout),
                    }
                }
                None => self.send_body_h2(conn, &mut body_tx).await,
            };
            sent.map_err(ExchangeError::Failed)?;
        }
        let mut at = Instant::now() + self.remaining();
        if let Some(d) = self.head_deadline {
            at = at.min(d);
        }
        let response = match deadlines.within(at, response).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(failed(e, true, self.body.is_some() || !has_body)),
            Err(_) => return Err(ExchangeError::Failed(HttpError::UpstreamTimeout)),
        };
        let status = response.status().as_u16();
        self.out.status.set(status);
        self.out.head_at.set(Some(Instant::now()));
        if self.req.grpc {
            for (n, v) in response.headers() {
                self.out.note_grpc(n.as_str().as_bytes(), v.as_bytes());
            }
        }
        if let Some(r) = self.retry {
            // Dropping the stream resets it.
            if r.wants_status(status) && r.grant() {
                return Err(ExchangeError::RetryStatus(status));
            }
            if let Some(g) = self.out.grpc_status.get().filter(|g| r.wants_grpc(*g)) {
                if r.grant() {
                    return Err(ExchangeError::RetryStatus(crate::grpc::http_equivalent(g)));
                }
            }
        }
        let (parts, body) = response.into_parts();
        self.respond_from_h2(conn, parts, body)
            .await
            .map_err(ExchangeError::Failed)
    }

    /// Stream the client's request body onto the upstream stream.
    async fn send_body_h2(
        &self,
        conn: &mut Downstream,
        tx: &mut h2::SendStream<Bytes>,
    ) -> Result<(), HttpError> {
        let mut body = BodyReader::new(self.req.head.framing, self.req.http);
        while let Some(piece) = body.next(conn).await? {
            match piece {
                Piece::Data(data, last) => self.send_up(tx, data, last).await?,
                Piece::End(trailers) => match super::convert::trailers(&trailers) {
                    Some(t) => tx
                        .send_trailers(t)
                        .map_err(|e| HttpError::upstream_write(stream_error(e)))?,
                    None => self.send_up(tx, Bytes::new(), true).await?,
                },
            }
        }
        conn.body_complete = true;
        Ok(())
    }

    /// Body bytes to the upstream stream, within `send_timeout`.
    async fn send_up(
        &self,
        tx: &mut h2::SendStream<Bytes>,
        data: Bytes,
        end: bool,
    ) -> Result<(), HttpError> {
        let deadlines = &self.req.ctx.deadlines;
        let at = deadlines.after(self.req.http.send_timeout);
        match deadlines.within(at, send_flow(tx, data, end)).await {
            Ok(r) => r.map_err(HttpError::upstream_write),
            Err(_) => Err(HttpError::SendTimeout),
        }
    }

    /// The upstream's HTTP/2 response to the client (either protocol).
    async fn respond_from_h2(
        &self,
        conn: &mut Downstream,
        parts: http::response::Parts,
        mut body: h2::RecvStream,
    ) -> Result<Next, HttpError> {
        let head = self.req.head;
        let status = parts.status.as_u16();
        let headers: Vec<Header> = parts
            .headers
            .iter()
            .map(|(n, v)| Header {
                name: Bytes::copy_from_slice(n.as_str().as_bytes()),
                value: Bytes::copy_from_slice(v.as_bytes()),
            })
            .collect();
        let mut resp = ResponseHead {
            status,
            reason: Bytes::from_static(crate::http::error::reason(status).as_bytes()),
            version: Version::Http11,
            headers,
            keep_alive: true,
        };
        if let Some(call) = self.req.web {
            crate::http::grpc_web::translate_response(&mut resp, call);
        }
        let bodiless = head.is_head() || matches!(status, 204 | 304) || body.is_end_stream();
        let declared = crate::http::codec::content_length(&resp.headers)
            .ok()
            .flatten();
        let client_keep;
        if conn.stream.is_h2() {
            client_keep = true;
            let length;
            let mut fields: Vec<(&[u8], &[u8])> =
                crate::http::serialize::response_fields(&resp, self.req.route, false).collect();
            if let Some(n) = declared.filter(|_| status != 204) {
                length = n.to_string();
                fields.push((b"content-length", length.as_bytes()));
            }
            let h = convert::response(status, fields.into_iter());
            conn.responded = true;
            match &mut conn.stream {
                crate::http::downstream::ClientIo::H2(s) => {
                    s.send_head(h, bodiless).map_err(HttpError::DownstreamIo)?
                }
                _ => return Err(HttpError::BadResponse("client stream changed")),
            }
        } else {
            let framing = match (bodiless, declared, head.version) {
                (true, _, _) => Framing::None,
                (false, Some(n), _) => Framing::Length(n),
                (false, None, Version::Http10) => Framing::UntilClose,
                (false, None, _) => Framing::Chunked,
            };
            client_keep = head.keep_alive
                && !self.req.ctx.closing(&conn.handle)
                && framing != Framing::UntilClose;
            let mut out =
                serialize_response(&resp, self.req.route, framing, !client_keep, false, 0);
            // Body bytes that came with the head (the same read of the
            // upstream connection) leave with it: one write, one TLS record.
            if !bodiless && self.req.web.is_none() {
                if let Some(data) = ready_data(&mut body).await {
                    let n = data.len();
                    match framing {
                        Framing::Chunked if n > 0 => {
                            let _ = write!(out, "{n:x}\r\n");
                            out.extend_from_slice(&data);
                            out.extend_from_slice(b"\r\n");
                        }
                        _ => out.extend_from_slice(&data),
                    }
                    let _ = body.flow_control().release_capacity(n);
                }
            }
            // And the end of the body, when it came too (no trailers wait:
            // with them the stream has not ended yet).
            let complete = !bodiless && self.req.web.is_none() && body.is_end_stream();
            if complete && framing == Framing::Chunked {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            conn.responded = true;
            conn.write_bytes(out.freeze()).await?;
            if complete {
                return Ok(if client_keep {
                    Next::KeepAlive
                } else {
                    Next::Close
                });
            }
            if bodiless {
                return Ok(if client_keep {
                    Next::KeepAlive
                } else {
                    Next::Close
                });
            }
            let mut sink = BodySink {
                conn,
                chunked_out: framing == Framing::Chunked,
                web: self.req.web.map(crate::http::grpc_web::WebBody::new),
            };
            self.copy_h2_body(&mut sink, &mut body).await?;
            return Ok(if client_keep {
                Next::KeepAlive
            } else {
                Next::Close
            });
        }
        if !bodiless {
            let mut sink = BodySink {
                conn,
                chunked_out: false,
                web: self.req.web.map(crate::http::grpc_web::WebBody::new),
            };
            self.copy_h2_body(&mut sink, &mut body).await?;
        }
        Ok(if client_keep {
            Next::KeepAlive
        } else {
            Next::Close
        })
    }

    /// Response body and trailers from an upstream stream to the client,
    /// giving the upstream window back as each piece is forwarded.
    async fn copy_h2_body(
        &self,
        sink: &mut BodySink<'_>,
        body: &mut h2::RecvStream,
    ) -> Result<(), HttpError> {
        let deadlines = self.req.ctx.deadlines.clone();
        loop {
            let at = Instant::now() + self.remaining();
            let next = deadlines
                .within(at, poll_fn(|cx| body.poll_data(cx)))
                .await
                .map_err(|_| HttpError::UpstreamTimeout)?;
            match next {
                Some(Ok(data)) => {
                    let n = data.len();
                    sink.send(data).await?;
                    let _ = body.flow_control().release_capacity(n);
                }
                Some(Err(e)) => return Err(HttpError::UpstreamIo(stream_error(e))),
                None => break,
            }
        }
        let at = Instant::now() + self.remaining();
        let trailers = deadlines
            .within(at, poll_fn(|cx| body.poll_trailers(cx)))
            .await
            .map_err(|_| HttpError::UpstreamTimeout)?
            .map_err(|e| HttpError::UpstreamIo(stream_error(e)))?;
        if let (Some(t), true) = (&trailers, self.req.grpc) {
            for (n, v) in t {
                self.out.note_grpc(n.as_str().as_bytes(), v.as_bytes());
            }
        }
        let section = trailers
            .map(|t| convert::trailer_section(&t))
            .unwrap_or_default();
        sink.finish_with(section).await
    }
}

/// The body bytes an upstream stream holds already, without waiting (`None`
/// when nothing is buffered yet; the end of the stream or an error is left
/// for the copy loop, which sees it again).
async fn ready_data(body: &mut h2::RecvStream) -> Option<Bytes> {
    poll_fn(|cx| {
        Poll::Ready(match body.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => Some(data),
            _ => None,
        })
    })
    .await
}
