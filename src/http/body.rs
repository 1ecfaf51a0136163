//! Body streaming for one upstream exchange: the request body from the
//! client to the upstream (re-chunked when chunked), and the response body
//! back (by length, chunked, or until close; chunk-encoded for clients that
//! need it).

use super::upconn::UpConn;
use bytes::{Bytes, BytesMut};

use super::chunked::{Chunk, ChunkFrame, ChunkedDecoder};
use super::codec::Framing;
use super::error::HttpError;
use std::io::Write;
use std::time::Instant;

use super::downstream::{ClientIo, Downstream};
use super::exchange::Exchange;

impl Exchange<'_> {
    /// Stream the request body from the client to the upstream; marks the
    /// body complete on the connection once its last byte was read.
    pub(super) async fn send_body(
        &self,
        conn: &mut Downstream,
        up: &mut UpConn,
    ) -> Result<(), HttpError> {
        let chunked = self.req.head.framing == Framing::Chunked;
        let mut body = BodyReader::new(self.req.head.framing, self.req.http);
        while let Some(piece) = body.next(conn).await? {
            match piece {
                Piece::Data(data, _) if !chunked => self.write_upstream(up, data).await?,
                Piece::Data(data, _) if data.len() >= VECTORED_CHUNK => {
                    self.write_upstream_frame(up, ChunkFrame::new(data)).await?;
                }
                Piece::Data(data, _) => self.write_upstream(up, chunk_frame(&data)).await?,
                Piece::End(trailers) => self.write_upstream(up, last_chunk(&trailers)).await?,
            }
        }
        conn.body_complete = true;
        Ok(())
    }

    async fn read_upstream(&self, up: &mut UpConn, buf: &mut BytesMut) -> Result<usize, HttpError> {
        let read = up.read_more(std::mem::take(buf), 64 * 1024);
        let at = Instant::now() + self.remaining();
        let (res, b) = self
            .req
            .ctx
            .deadlines
            .within(at, read)
            .await
            .map_err(|_| HttpError::UpstreamTimeout)?;
        *buf = b;
        res.map_err(HttpError::UpstreamIo)
    }

    /// Copy the response body as the upstream frames it, end it toward the
    /// client, and pool the upstream connection when it is clean.
    pub(super) async fn copy_body(
        &self,
        mut up: UpConn,
        mut up_buf: BytesMut,
        sink: &mut BodySink<'_>,
        framing: Framing,
        keep_alive: bool,
    ) -> Result<(), HttpError> {
        let clean = match framing {
            Framing::None => true,
            Framing::Length(n) => {
                self.copy_length(&mut up, &mut up_buf, sink, n).await?;
                // Ends a body the client gets chunked (gRPC-Web) or an
                // HTTP/2 stream.
                sink.finish().await?;
                true
            }
            Framing::Chunked => {
                self.copy_chunked(&mut up, &mut up_buf, sink).await?;
                true
            }
            Framing::UntilClose => {
                self.copy_until_close(&mut up, &mut up_buf, sink).await?;
                false
            }
        };
        if clean && keep_alive && up_buf.is_empty() {
            self.pool(up);
        }
        self.req.ctx.head_buffers.put(up_buf);
        Ok(())
    }

    pub(super) async fn copy_length(
        &self,
        up: &mut UpConn,
        buf: &mut BytesMut,
        sink: &mut BodySink<'_>,
        n: u64,
    ) -> Result<(), HttpError> {
        let mut left = n;
        while left > 0 {
            if buf.is_empty() && self.read_upstream(up, buf).await? == 0 {
                return Err(cut_short(
                    "upstream closed before the end of its Content-Length body",
                ));
            }
            let take = (buf.len() as u64).min(left) as usize;
            left -= take as u64;
            sink.send(buf.split_to(take).freeze()).await?;
        }
        Ok(())
    }

    pub(super) async fn copy_chunked(
        &self,
        up: &mut UpConn,
        buf: &mut BytesMut,
        sink: &mut BodySink<'_>,
    ) -> Result<(), HttpError> {
        let mut decoder = ChunkedDecoder::default();
        loop {
            match decoder.decode(buf).map_err(HttpError::BadResponse)? {
                None => {
                    if self.read_upstream(up, buf).await? == 0 {
                        return Err(cut_short("upstream closed before the last chunk"));
                    }
                }
                Some(Chunk::Data(d)) => sink.send(d).await?,
                Some(Chunk::End(trailers)) => {
                    if self.req.grpc {
                        self.out.note_grpc_section(&trailers);
                    }
                    return sink.finish_with(trailers).await;
                }
            }
        }
    }

    pub(super) async fn copy_until_close(
        &self,
        up: &mut UpConn,
        buf: &mut BytesMut,
        sink: &mut BodySink<'_>,
    ) -> Result<(), HttpError> {
        loop {
            if !buf.is_empty() {
                let data = buf.split().freeze();
                sink.send(data).await?;
            }
            if self.read_upstream(up, buf).await? == 0 {
                return sink.finish().await;
            }
        }
    }
}

/// One piece of a client's request body.
pub(super) enum Piece {
    /// Bytes; `true` on the last piece of a Content-Length body.
    Data(Bytes, bool),
    /// The end of a chunked body, with its trailer section.
    End(Bytes),
}

/// Reads a client's request body by its framing, whatever the upstream
/// protocol: Content-Length pieces, or decoded chunks within
/// `max_request_body_bytes`.
pub(super) struct BodyReader {
    /// Content-Length bytes still to read.
    left: u64,
    /// Chunked: the decoder, until the last chunk.
    decoder: Option<ChunkedDecoder>,
    total: u64,
    limit: u64,
}

impl BodyReader {
    pub(super) fn new(framing: Framing, http: &crate::snapshot::HttpSettings) -> Self {
        BodyReader {
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            decoder: (framing == Framing::Chunked).then(ChunkedDecoder::default),
            total: 0,
            limit: http.max_request_body_bytes.unwrap_or(u64::MAX),
        }
    }

    /// The next piece; `None` once the body has ended.
    pub(super) async fn next(&mut self, conn: &mut Downstream) -> Result<Option<Piece>, HttpError> {
        if let Some(decoder) = &mut self.decoder {
            loop {
                match decoder
                    .decode(&mut conn.buf)
                    .map_err(HttpError::BadRequest)?
                {
                    None => conn.read_body().await?,
                    Some(Chunk::Data(data)) => {
                        self.total += data.len() as u64;
                        if self.total > self.limit {
                            return Err(HttpError::BodyTooLarge);
                        }
                        return Ok(Some(Piece::Data(data, false)));
                    }
                    Some(Chunk::End(trailers)) => {
                        self.decoder = None;
                        return Ok(Some(Piece::End(trailers)));
                    }
                }
            }
        }
        if self.left == 0 {
            return Ok(None);
        }
        if conn.buf.is_empty() {
            conn.read_body().await?;
        }
        let take = (conn.buf.len() as u64).min(self.left) as usize;
        self.left -= take as u64;
        Ok(Some(Piece::Data(
            conn.buf.split_to(take).freeze(),
            self.left == 0,
        )))
    }
}

/// Writes response body bytes to the client, chunk-encoding when asked.
pub(super) struct BodySink<'a> {
    pub(super) conn: &'a mut Downstream,
    /// The client gets `transfer-encoding: chunked`: encode each piece.
    pub(super) chunked_out: bool,
    /// gRPC-Web: bodies re-encoded, trailers as the last frame.
    pub(super) web: Option<super::grpc_web::WebBody>,
}

impl BodySink<'_> {
    pub(super) async fn send(&mut self, data: Bytes) -> Result<(), HttpError> {
        let data = match &mut self.web {
            Some(w) => w.data(data),
            None => data,
        };
        if data.is_empty() {
            return Ok(());
        }
        self.send_raw(data).await
    }

    async fn send_raw(&mut self, data: Bytes) -> Result<(), HttpError> {
        if self.conn.stream.is_h2() {
            return self.conn.send_h2_data(data).await;
        }
        if self.chunked_out {
            return self.send_chunk(data).await;
        }
        self.conn.write_bytes(data).await
    }

    async fn send_chunk(&mut self, data: Bytes) -> Result<(), HttpError> {
        if data.is_empty() {
            return Ok(());
        }
        if data.len() >= VECTORED_CHUNK {
            return self.conn.write_frame(ChunkFrame::new(data)).await;
        }
        self.conn.write_bytes(chunk_frame(&data)).await
    }

    async fn end_chunks(&mut self, trailers: Bytes) -> Result<(), HttpError> {
        self.conn.write_bytes(last_chunk(&trailers)).await
    }

    pub(super) async fn finish(&mut self) -> Result<(), HttpError> {
        self.finish_with(Bytes::new()).await
    }

    /// End the body: the last chunk and trailers when chunk-encoding (a
    /// client without chunked loses the trailers; RFC 9110 allows dropping
    /// them).
    pub(super) async fn finish_with(&mut self, mut trailers: Bytes) -> Result<(), HttpError> {
        // gRPC-Web: the trailers become the body's last frame.
        if let Some(mut w) = self.web.take() {
            let tail = w.end(&trailers);
            if !tail.is_empty() {
                self.send_raw(tail).await?;
            }
            trailers = Bytes::new();
        }
        if let ClientIo::H2(s) = &mut self.conn.stream {
            let trailers = super::h2::convert::trailers(&trailers);
            return s.finish(trailers).map_err(HttpError::client_write);
        }
        if self.chunked_out {
            return self.end_chunks(trailers).await;
        }
        Ok(())
    }
}

/// The upstream closed mid-body: a connection failure (`UR`), not an
/// invalid response.
fn cut_short(what: &'static str) -> HttpError {
    HttpError::UpstreamIo(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what))
}

/// Chunks at least this large are written with `writev` (size line,
/// payload, CRLF) instead of being copied into one buffer; below it the copy
/// costs less than the vectored write's bookkeeping.
const VECTORED_CHUNK: usize = 1024;

/// One chunk of the chunked coding, copied into one buffer: size line,
/// data, CRLF.
fn chunk_frame(data: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(data.len() + 20);
    let _ = write!(frame, "{:x}\r\n", data.len());
    frame.extend_from_slice(data);
    frame.extend_from_slice(b"\r\n");
    Bytes::from(frame)
}

/// The last chunk, the trailer section and the final CRLF.
fn last_chunk(trailers: &[u8]) -> Bytes {
    if trailers.is_empty() {
        return Bytes::from_static(b"0\r\n\r\n");
    }
    let mut frame = b"0\r\n".to_vec();
    frame.extend_from_slice(trailers);
    frame.extend_from_slice(b"\r\n");
    Bytes::from(frame)
}
