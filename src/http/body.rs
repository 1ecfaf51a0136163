//! Body streaming for one upstream exchange: the request body from the
//! client to the upstream (re-chunked when chunked), and the response body
//! back (by length, chunked, or until close; chunk-encoded for clients that
//! need it).

use bytes::{Bytes, BytesMut};
use monoio::net::TcpStream;

use super::chunked::{Chunk, ChunkedDecoder};
use super::codec::Framing;
use super::error::HttpError;
use super::io::{read_more, write_all, write_bytes};
use super::proxy::{Exchange, Failure};
use super::server::Downstream;

impl Exchange<'_> {
    /// Stream the request body from the client to the upstream.
    pub(super) async fn send_body(
        &self,
        conn: &mut Downstream,
        up: &mut TcpStream,
    ) -> Result<(), Failure> {
        let limit = self.http.max_request_body_bytes.unwrap_or(u64::MAX);
        match self.head.framing {
            Framing::None | Framing::UntilClose => Ok(()),
            Framing::Length(n) => {
                let mut left = n;
                while left > 0 {
                    if conn.buf.is_empty() {
                        read_client(conn).await?;
                    }
                    let take = (conn.buf.len() as u64).min(left) as usize;
                    let chunk = conn.buf.split_to(take).freeze();
                    left -= take as u64;
                    write_bytes(up, chunk)
                        .await
                        .map_err(|e| Failure::closing(HttpError::UpstreamIo(e)))?;
                }
                Ok(())
            }
            Framing::Chunked => {
                let mut decoder = ChunkedDecoder::default();
                let mut total: u64 = 0;
                loop {
                    let step = decoder
                        .decode(&mut conn.buf)
                        .map_err(|m| Failure::closing(HttpError::BadRequest(m)))?;
                    match step {
                        None => read_client(conn).await?,
                        Some(Chunk::Data(data)) => {
                            total += data.len() as u64;
                            if total > limit {
                                return Err(Failure::closing(HttpError::BodyTooLarge));
                            }
                            write_all(up, chunk_frame(&data))
                                .await
                                .map_err(|e| Failure::closing(HttpError::UpstreamIo(e)))?;
                        }
                        Some(Chunk::End(trailers)) => {
                            write_all(up, last_chunk(&trailers))
                                .await
                                .map_err(|e| Failure::closing(HttpError::UpstreamIo(e)))?;
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    async fn read_upstream(
        &self,
        up: &mut TcpStream,
        buf: &mut BytesMut,
    ) -> Result<usize, Failure> {
        let read = read_more(up, std::mem::take(buf), 64 * 1024);
        let (res, b) = monoio::time::timeout(self.remaining(), read)
            .await
            .map_err(|_| Failure::closing(HttpError::UpstreamTimeout))?;
        *buf = b;
        res.map_err(|e| Failure::closing(HttpError::UpstreamIo(e)))
    }

    pub(super) async fn copy_length(
        &self,
        up: &mut TcpStream,
        buf: &mut BytesMut,
        sink: &mut BodySink<'_>,
        n: u64,
    ) -> Result<(), Failure> {
        let mut left = n;
        while left > 0 {
            if buf.is_empty() && self.read_upstream(up, buf).await? == 0 {
                return Err(Failure::closing(HttpError::BadResponse(
                    "body shorter than Content-Length",
                )));
            }
            let take = (buf.len() as u64).min(left) as usize;
            left -= take as u64;
            sink.send(buf.split_to(take).freeze()).await?;
        }
        Ok(())
    }

    pub(super) async fn copy_chunked(
        &self,
        up: &mut TcpStream,
        buf: &mut BytesMut,
        sink: &mut BodySink<'_>,
    ) -> Result<(), Failure> {
        let mut decoder = ChunkedDecoder::default();
        loop {
            match decoder
                .decode(buf)
                .map_err(|m| Failure::closing(HttpError::BadResponse(m)))?
            {
                None => {
                    if self.read_upstream(up, buf).await? == 0 {
                        return Err(Failure::closing(HttpError::BadResponse(
                            "chunked body cut short",
                        )));
                    }
                }
                Some(Chunk::Data(d)) => sink.send(d).await?,
                Some(Chunk::End(trailers)) => return sink.finish_with(trailers).await,
            }
        }
    }

    pub(super) async fn copy_until_close(
        &self,
        up: &mut TcpStream,
        buf: &mut BytesMut,
        sink: &mut BodySink<'_>,
    ) -> Result<(), Failure> {
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

/// Writes response body bytes to the client, chunk-encoding when asked.
pub(super) struct BodySink<'a> {
    pub(super) conn: &'a mut Downstream,
    /// The client gets `transfer-encoding: chunked`: encode each piece.
    pub(super) chunked_out: bool,
}

impl BodySink<'_> {
    async fn send(&mut self, data: Bytes) -> Result<(), Failure> {
        if self.chunked_out {
            return self.send_chunk(data).await;
        }
        self.conn
            .write_bytes(data)
            .await
            .map_err(|e| Failure::closing(HttpError::DownstreamIo(e)))
    }

    async fn send_chunk(&mut self, data: Bytes) -> Result<(), Failure> {
        if data.is_empty() {
            return Ok(());
        }
        self.conn
            .write_vec(chunk_frame(&data))
            .await
            .map_err(|e| Failure::closing(HttpError::DownstreamIo(e)))
    }

    async fn end_chunks(&mut self, trailers: Bytes) -> Result<(), Failure> {
        self.conn
            .write_vec(last_chunk(&trailers))
            .await
            .map_err(|e| Failure::closing(HttpError::DownstreamIo(e)))
    }

    pub(super) async fn finish(&mut self) -> Result<(), Failure> {
        self.finish_with(Bytes::new()).await
    }

    /// End the body: the last chunk and trailers when chunk-encoding (a
    /// client without chunked loses the trailers; RFC 9110 allows dropping
    /// them).
    async fn finish_with(&mut self, trailers: Bytes) -> Result<(), Failure> {
        if self.chunked_out {
            return self.end_chunks(trailers).await;
        }
        Ok(())
    }
}

/// Read more from the client into `conn.buf`; EOF mid-body is an error.
async fn read_client(conn: &mut Downstream) -> Result<(), Failure> {
    match conn.read_more(64 * 1024).await {
        Ok(0) => Err(Failure::closing(HttpError::DownstreamIo(
            std::io::ErrorKind::UnexpectedEof.into(),
        ))),
        Ok(_) => Ok(()),
        Err(e) => Err(Failure::closing(HttpError::DownstreamIo(e))),
    }
}

/// One chunk of the chunked coding: size line, data, CRLF.
fn chunk_frame(data: &[u8]) -> Vec<u8> {
    let mut frame = format!("{:x}\r\n", data.len()).into_bytes();
    frame.extend_from_slice(data);
    frame.extend_from_slice(b"\r\n");
    frame
}

/// The last chunk, the trailer section and the final CRLF.
fn last_chunk(trailers: &[u8]) -> Vec<u8> {
    let mut frame = b"0\r\n".to_vec();
    frame.extend_from_slice(trailers);
    frame.extend_from_slice(b"\r\n");
    frame
}
