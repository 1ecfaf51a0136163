//! Request bodies read whole before the first try: kept so that a retry
//! can send them again (`retry.max_body_bytes`), and gRPC-Web text bodies,
//! which are decoded before they are forwarded.

use bytes::{Bytes, BytesMut};

use super::codec::{Framing, RequestHead};
use super::downstream::Downstream;
use super::error::HttpError;

/// Read a request body of at most `max` bytes (declared by Content-Length,
/// or chunked and ending within it) into memory. `None`: no body, or a
/// larger one (streamed; such a request is not retried once its bytes were
/// sent).
pub(super) async fn buffer_body(
    head: &RequestHead,
    conn: &mut Downstream,
    max: u64,
) -> Result<Option<Bytes>, HttpError> {
    let n = match head.framing {
        Framing::Length(n) => n,
        Framing::Chunked => return buffer_chunked(conn, max).await,
        Framing::None | Framing::UntilClose => return Ok(None),
    };
    if n > max {
        return Ok(None);
    }
    if head.expect_continue && conn.buf.is_empty() && n > 0 {
        conn.write_vec(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec())
            .await?;
    }
    let mut body = BytesMut::with_capacity(n as usize);
    while (body.len() as u64) < n {
        if conn.buf.is_empty() {
            conn.read_body().await?;
        }
        let take = (conn.buf.len()).min(n as usize - body.len());
        body.extend_from_slice(&conn.buf.split_to(take));
    }
    conn.body_complete = true;
    Ok(Some(body.freeze()))
}

/// A chunked body (or an HTTP/2 one without content-length) of at most
/// `max` bytes, decoded, when all of it arrives; else nothing is consumed
/// and the body streams. Trailers of a buffered body are not replayed.
async fn buffer_chunked(conn: &mut Downstream, max: u64) -> Result<Option<Bytes>, HttpError> {
    use super::chunked::{Chunk, ChunkedDecoder};
    // Chunk framing adds a few bytes per chunk; past this much encoded
    // input the body cannot fit.
    let encoded_max = max as usize + 16 * 1024;
    loop {
        let mut probe = conn.buf.clone();
        let mut decoder = ChunkedDecoder::default();
        let mut body = BytesMut::new();
        loop {
            match decoder.decode(&mut probe).map_err(HttpError::BadRequest)? {
                None => break,
                Some(Chunk::Data(d)) => {
                    body.extend_from_slice(&d);
                    if body.len() as u64 > max {
                        return Ok(None);
                    }
                }
                Some(Chunk::End(_)) => {
                    let used = conn.buf.len() - probe.len();
                    let _ = conn.buf.split_to(used);
                    conn.body_complete = true;
                    return Ok(Some(body.freeze()));
                }
            }
        }
        if conn.buf.len() > encoded_max {
            return Ok(None);
        }
        conn.read_body().await?;
    }
}
