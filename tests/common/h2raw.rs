//! Raw HTTP/2 frames for tests that need what no well-behaved client
//! sends: floods, resets, odd header blocks.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const CONTINUATION: u8 = 9;
pub const END_STREAM: u8 = 1;
pub const END_HEADERS: u8 = 4;
pub const ACK: u8 = 1;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK: one integer with an `n`-bit prefix.
pub fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// HPACK: a literal field without indexing, new name, no Huffman.
pub fn hpack(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

pub fn request_block(path: &str) -> Vec<u8> {
    block("GET", path)
}

/// A request header block: method, scheme, authority and path.
pub fn block(method: &str, path: &str) -> Vec<u8> {
    let mut b = Vec::new();
    hpack(&mut b, ":method", method);
    hpack(&mut b, ":scheme", "http");
    hpack(&mut b, ":authority", "localhost");
    hpack(&mut b, ":path", path);
    b
}

pub struct Raw {
    pub s: TcpStream,
}

pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Raw {
    /// Connect, send the preface and `settings` (id, value pairs).
    pub fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> Raw {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        let mut p = Vec::new();
        for (id, v) in settings {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        s.write_all(&frame(SETTINGS, 0, 0, &p)).unwrap();
        Raw { s }
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes)
    }

    /// The next frame; `None` at EOF, a reset or the read timeout.
    pub fn next(&mut self) -> Option<Frame> {
        let mut h = [0u8; 9];
        self.s.read_exact(&mut h).ok()?;
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        let mut payload = vec![0u8; len];
        self.s.read_exact(&mut payload).ok()?;
        Some(Frame {
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// Frames until one matches (acknowledging the server's SETTINGS).
    pub fn until(&mut self, mut want: impl FnMut(&Frame) -> bool) -> Option<Frame> {
        loop {
            let f = self.next()?;
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                let _ = self.send(&frame(SETTINGS, ACK, 0, &[]));
            }
            if f.kind == PING && f.flags & ACK == 0 {
                let _ = self.send(&frame(PING, ACK, 0, &f.payload));
            }
            if want(&f) {
                return Some(f);
            }
        }
    }

    /// Whether the server closes the connection within `within`: EOF or a
    /// reset (frames before it are read and dropped). `false` when the
    /// deadline passes with the connection still open: unlike `next`, a
    /// timeout is never taken for a close.
    pub fn closes_within(&mut self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        let mut buf = [0u8; 16384];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || self.s.set_read_timeout(Some(left)).is_err() {
                return false;
            }
            match self.s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return true
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// The server's first SETTINGS, as (id, value) pairs.
    pub fn server_settings(&mut self) -> Vec<(u16, u32)> {
        let f = self
            .until(|f| f.kind == SETTINGS && f.flags & ACK == 0)
            .unwrap();
        f.payload
            .chunks(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }
}

pub fn goaway_code(f: &Frame) -> u32 {
    u32::from_be_bytes([f.payload[4], f.payload[5], f.payload[6], f.payload[7]])
}
