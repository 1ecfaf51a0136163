//! The HTTP/1.1 test upstream: keep-alive, pipelining-safe, using the
//! proxy's own codec. What it answers:
//!
//! - `GET /bytes/N`: N bytes of `x` (streamed in 64 KiB writes);
//! - any request with a body: reads it all, answers `x-body-bytes: N`;
//! - otherwise a fixed body of `body_size` bytes (default: the backend's name).
//!
//! Every response carries `x-backend: NAME` and, as `x-echo-*` headers, the
//! request line and every request header it received, so tests can see what
//! the proxy sent.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use monoio::buf::SliceMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::BackendStats;
use crate::http::chunked::{Chunk, ChunkedDecoder};
use crate::http::codec::{parse_request, Framing, HeadLimits, RequestHead};

/// Behaviour of the HTTP backend.
#[derive(Debug, Clone)]
pub struct HttpBackend {
    /// Sent as `x-backend` (and as the default body).
    pub name: String,
    /// Fixed response body size; `None` answers the name.
    pub body_size: Option<usize>,
    /// Wait this long before answering each request.
    pub delay: Duration,
    /// The status of every response (a failing upstream answers 503).
    pub status: u16,
}

impl HttpBackend {
    /// A backend answering its name, without delay.
    pub fn named(name: &str) -> Self {
        HttpBackend {
            name: name.to_string(),
            body_size: None,
            delay: Duration::ZERO,
            status: 200,
        }
    }
}

const LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 1024 * 1024,
    max_headers: 1000,
};

pub(super) async fn serve_http(
    mut stream: TcpStream,
    cfg: &HttpBackend,
    stats: &BackendStats,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(8192);
    let fixed_body = match cfg.body_size {
        Some(n) => vec![b'x'; n],
        None => cfg.name.clone().into_bytes(),
    };
    loop {
        let head = loop {
            match parse_request(&mut buf, LIMITS) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(e) => {
                    let msg = format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-backend-error: {e}\r\nconnection: close\r\n\r\n");
                    let _ = stream.write_all(msg.into_bytes()).await;
                    return Ok(());
                }
            }
            if read_more(&mut stream, &mut buf).await? == 0 {
                return Ok(());
            }
        };
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let body_bytes = read_body(&mut stream, &mut buf, &head).await?;
        stats.bytes_read.fetch_add(body_bytes, Ordering::Relaxed);
        if !cfg.delay.is_zero() {
            monoio::time::sleep(cfg.delay).await;
        }
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nx-backend: {}\r\n",
            cfg.status,
            crate::http::error::reason(cfg.status),
            cfg.name
        )
        .into_bytes();
        echo_headers(&mut out, &head);
        let streamed = head
            .path()
            .strip_prefix("/bytes/")
            .and_then(|n| n.parse::<u64>().ok());
        let body: &[u8] = if head.framing != Framing::None {
            out.extend_from_slice(format!("x-body-bytes: {body_bytes}\r\n").as_bytes());
            b""
        } else {
            &fixed_body
        };
        let len = streamed.unwrap_or(body.len() as u64);
        out.extend_from_slice(format!("content-length: {len}\r\n").as_bytes());
        if !head.keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head.is_head() && streamed.is_none() {
            out.extend_from_slice(body);
        }
        let (res, _) = stream.write_all(out).await;
        res?;
        if let (Some(n), false) = (streamed, head.is_head()) {
            write_bytes(&mut stream, n).await?;
        }
        if !head.keep_alive {
            return Ok(());
        }
    }
}

fn echo_headers(out: &mut Vec<u8>, head: &RequestHead) {
    out.extend_from_slice(b"x-echo-method: ");
    out.extend_from_slice(&head.method);
    out.extend_from_slice(b"\r\nx-echo-target: ");
    out.extend_from_slice(&head.target);
    out.extend_from_slice(b"\r\n");
    for h in &head.headers {
        out.extend_from_slice(b"x-echo-");
        out.extend_from_slice(&h.name.to_ascii_lowercase());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&h.value);
        out.extend_from_slice(b"\r\n");
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 8192 {
        buf.reserve(64 * 1024);
    }
    let owned = std::mem::take(buf);
    let (len, cap) = (owned.len(), owned.capacity());
    let (res, slice) = stream.read(SliceMut::new(owned, len, cap)).await;
    *buf = slice.into_inner();
    res
}

/// Read and discard the request body; returns its length.
async fn read_body(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    head: &RequestHead,
) -> std::io::Result<u64> {
    let eof = || std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
    match head.framing {
        Framing::None | Framing::UntilClose => Ok(0),
        Framing::Length(n) => {
            let mut left = n;
            while left > 0 {
                if buf.is_empty() && read_more(stream, buf).await? == 0 {
                    return Err(eof());
                }
                let take = (buf.len() as u64).min(left) as usize;
                let _ = buf.split_to(take);
                left -= take as u64;
            }
            Ok(n)
        }
        Framing::Chunked => {
            let mut dec = ChunkedDecoder::default();
            let mut total = 0;
            loop {
                match dec.decode(buf) {
                    Ok(Some(Chunk::Data(d))) => total += d.len() as u64,
                    Ok(Some(Chunk::End(_))) => return Ok(total),
                    Ok(None) => {
                        if read_more(stream, buf).await? == 0 {
                            return Err(eof());
                        }
                    }
                    Err(m) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, m)),
                }
            }
        }
    }
}

async fn write_bytes(stream: &mut TcpStream, mut n: u64) -> std::io::Result<()> {
    let mut chunk = vec![b'x'; 64 * 1024];
    while n > 0 {
        let take = n.min(chunk.len() as u64) as usize;
        chunk.truncate(take);
        let (res, c) = stream.write_all(chunk).await;
        chunk = c;
        res?;
        n -= take as u64;
    }
    Ok(())
}
