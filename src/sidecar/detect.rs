//! Protocol detection for `protocol = "auto"` listeners: read the first
//! bytes (within `detect_timeout`) and tell HTTP/1.x, the HTTP/2 preface
//! and a TLS ClientHello from anything else. A client that says nothing
//! in time is treated as opaque TCP: server-speaks-first protocols (MySQL,
//! SMTP) then work.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::net::TcpStream;

use crate::deadline::Deadlines;

/// What the first bytes were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Tls,
    /// Bytes that are none of the above.
    Opaque,
    /// Nothing within the timeout (server-speaks-first).
    Silent,
    /// The client closed before sending anything.
    Closed,
}

impl Detected {
    pub const ALL: [Detected; 6] = [
        Detected::Http1,
        Detected::Http2,
        Detected::Tls,
        Detected::Opaque,
        Detected::Silent,
        Detected::Closed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Detected::Http1 => "http1",
            Detected::Http2 => "http2",
            Detected::Tls => "tls",
            Detected::Opaque => "opaque",
            Detected::Silent => "silent",
            Detected::Closed => "closed",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest method name looked for (`OPTIONS`, `CONNECT`) plus the space.
const METHOD_MAX: usize = 8;

/// Classify a prefix; `None` when more bytes are needed to decide.
pub fn classify(b: &[u8]) -> Option<Detected> {
    if b.is_empty() {
        return None;
    }
    if b[0] == 0x16 {
        return Some(Detected::Tls);
    }
    let n = b.len().min(H2_PREFACE.len());
    if b[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Detected::Http2);
    }
    // An HTTP/1.x request line starts with a method token and a space.
    for (i, &c) in b.iter().enumerate().take(METHOD_MAX) {
        match c {
            b' ' if i > 0 => return Some(Detected::Http1),
            b'A'..=b'Z' | b'-' | b'_' => {}
            _ => return Some(Detected::Opaque),
        }
    }
    if b.len() >= METHOD_MAX {
        Some(Detected::Opaque)
    } else {
        None
    }
}

/// Read until the first bytes say what they are, or `timeout` passes.
pub async fn detect(
    stream: &mut TcpStream,
    timeout: Duration,
    deadlines: &Deadlines,
) -> (BytesMut, Detected) {
    let at = Instant::now() + timeout;
    let mut buf = BytesMut::new();
    loop {
        let left = at.saturating_duration_since(Instant::now());
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let (len, cap) = (buf.len(), buf.capacity());
        // Cancelled and then awaited: bytes that arrive at the edge are kept.
        let (res, slice) = crate::sockio::read_within(
            stream,
            monoio::buf::SliceMut::new(buf, len, cap),
            deadlines,
            left,
        )
        .await;
        buf = slice.into_inner();
        match res {
            None if buf.is_empty() => return (buf, Detected::Silent),
            None => return (buf, Detected::Opaque),
            Some(Ok(0)) | Some(Err(_)) if buf.is_empty() => return (buf, Detected::Closed),
            Some(Ok(0)) | Some(Err(_)) => return (buf, Detected::Opaque),
            Some(Ok(_)) => {}
        }
        if let Some(kind) = classify(&buf) {
            return (buf, kind);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"OPTIONS * HTTP/1.1"), Some(Detected::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(&[0x16, 3, 1]), Some(Detected::Tls));
        assert_eq!(classify(b"\x00\x01binary"), Some(Detected::Opaque));
        assert_eq!(classify(b"HELLOWORLD"), Some(Detected::Opaque));
        assert_eq!(classify(b"ehlo x"), Some(Detected::Opaque));
    }
}
