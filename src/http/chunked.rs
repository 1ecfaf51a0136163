//! Streaming decoder for the chunked transfer coding (RFC 9112 §7.1), strict:
//! hex sizes without sign or overflow, extensions bounded, CRLF required,
//! trailers bounded and validated. The proxy re-encodes what it decodes, so
//! the upstream sees one canonical framing whatever the client sent.

use bytes::{Bytes, BytesMut};

/// Longest chunk-size line accepted (size, extensions, CRLF).
pub const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section accepted.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// What the decoder produced from the buffered input.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Body bytes.
    Data(Bytes),
    /// The last chunk: the trailer section (header lines, possibly empty,
    /// without the final empty line).
    End(Bytes),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// The decoder's state between reads.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder { state: State::Size }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decode from `buf`, consuming what it uses. `Ok(None)`: need more input.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, &'static str> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Size => {
                    let Some(line_end) = find_crlf(buf, MAX_CHUNK_LINE)? else {
                        return Ok(None);
                    };
                    let line = buf.split_to(line_end + 2);
                    let size = parse_size_line(&line[..line_end])?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = (buf.len() as u64).min(left) as usize;
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Some(Chunk::Data(data)));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF");
                    }
                    let _ = buf.split_to(2);
                    self.state = State::Size;
                }
                State::Trailers => return self.trailers(buf),
            }
        }
    }

    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, &'static str> {
        if buf.starts_with(b"\r\n") {
            let _ = buf.split_to(2);
            self.state = State::Done;
            return Ok(Some(Chunk::End(Bytes::new())));
        }
        let Some(end) = find(buf, b"\r\n\r\n") else {
            if buf.len() > MAX_TRAILERS {
                return Err("trailer section too large");
            }
            return Ok(None);
        };
        if end + 2 > MAX_TRAILERS {
            return Err("trailer section too large");
        }
        let section = buf.split_to(end + 4);
        let lines = &section[..end + 2];
        let mut dropped = false;
        for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let line = line.strip_suffix(b"\r").ok_or("bare LF in trailers")?;
            let colon = line
                .iter()
                .position(|&b| b == b':')
                .ok_or("trailer without colon")?;
            let name = &line[..colon];
            if name.is_empty() || !name.iter().all(|&b| super::codec::is_tchar(b)) {
                return Err("invalid trailer name");
            }
            if line[colon + 1..].iter().any(|&b| b == b'\r' || b == 0) {
                return Err("invalid trailer value");
            }
            dropped |= !super::fields::trailer_allowed(name);
        }
        self.state = State::Done;
        let section = section.freeze().slice(..end + 2);
        if !dropped {
            return Ok(Some(Chunk::End(section)));
        }
        // Framing, hop-by-hop and proxy-owned fields never pass in
        // trailers (docs/security.md); the rest keep their order.
        let mut kept = BytesMut::with_capacity(section.len());
        for line in section.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let name = line.split(|&b| b == b':').next().unwrap_or(line);
            if super::fields::trailer_allowed(name) {
                kept.extend_from_slice(line);
                kept.extend_from_slice(b"\n");
            }
        }
        Ok(Some(Chunk::End(kept.freeze())))
    }
}

/// Position of the first CRLF, requiring it within `max` bytes. A bare LF
/// or CR in the line is an error.
fn find_crlf(buf: &[u8], max: usize) -> Result<Option<usize>, &'static str> {
    for (i, &b) in buf.iter().enumerate().take(max) {
        match b {
            b'\r' => {
                return match buf.get(i + 1) {
                    Some(b'\n') => Ok(Some(i)),
                    Some(_) => Err("bare CR in chunk size line"),
                    None => Ok(None),
                }
            }
            b'\n' => return Err("bare LF in chunk size line"),
            _ => {}
        }
    }
    if buf.len() >= max {
        Err("chunk size line too long")
    } else {
        Ok(None)
    }
}

fn find(buf: &[u8], needle: &[u8]) -> Option<usize> {
    buf.windows(needle.len()).position(|w| w == needle)
}

/// `1a;name=value` → 26. Hex digits only, at most 16 of them, then
/// extensions exactly as RFC 9112 §7.1.1 writes them:
/// `*( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )`.
/// Anything else is an error: an empty extension (`5;`), an unterminated
/// quoted string, whitespace before the line end (`5 `), control
/// characters.
fn parse_size_line(line: &[u8]) -> Result<u64, &'static str> {
    if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        return Err("whitespace before chunk size");
    }
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err("invalid chunk size");
    }
    check_extensions(&line[digits..])?;
    let mut n: u64 = 0;
    for &d in &line[..digits] {
        let v = (d as char).to_digit(16).ok_or("invalid chunk size")?;
        n = n
            .checked_mul(16)
            .and_then(|n| n.checked_add(u64::from(v)))
            .ok_or("chunk size overflows")?;
    }
    Ok(n)
}

/// What follows the chunk size on its line (see `parse_size_line`).
fn check_extensions(mut rest: &[u8]) -> Result<(), &'static str> {
    fn skip_bws(s: &[u8]) -> &[u8] {
        let n = s.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
        &s[n..]
    }
    fn token(s: &[u8]) -> usize {
        s.iter().take_while(|b| super::codec::is_tchar(**b)).count()
    }
    loop {
        let after_ws = skip_bws(rest);
        if after_ws.is_empty() {
            return if after_ws.len() == rest.len() {
                Ok(())
            } else {
                Err("whitespace at the end of a chunk size line")
            };
        }
        if after_ws[0] != b';' {
            return Err(if rest[0] == b';' || after_ws.len() != rest.len() {
                "invalid chunk extension"
            } else if rest[0] < 0x20 || rest[0] == 0x7f {
                "control character in chunk size line"
            } else {
                "invalid chunk size"
            });
        }
        rest = skip_bws(&after_ws[1..]);
        let name = token(rest);
        if name == 0 {
            return Err("empty chunk extension");
        }
        rest = &rest[name..];
        let before_eq = skip_bws(rest);
        if before_eq.first() == Some(&b'=') {
            rest = skip_bws(&before_eq[1..]);
            if rest.first() == Some(&b'"') {
                rest = &rest[quoted_string(rest)?..];
            } else {
                let value = token(rest);
                if value == 0 {
                    return Err("empty chunk extension value");
                }
                rest = &rest[value..];
            }
        }
    }
}

/// Length of the quoted-string at the start of `s` (which starts with `"`).
fn quoted_string(s: &[u8]) -> Result<usize, &'static str> {
    let text = |b: u8| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80;
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'"' => return Ok(i + 1),
            b'\\' if s.get(i + 1).is_some_and(|b| text(*b)) => i += 2,
            b if b != b'\\' && text(b) => i += 1,
            _ => return Err("invalid character in a chunk extension's quoted string"),
        }
    }
    Err("unterminated quoted string in chunk extension")
}

/// One chunk of the chunked coding, written with a single `writev`: size
/// line, payload and CRLF as three slices, so the payload is never copied.
/// After a short write, `Vectored::advance` (`crate::sockio::Vectored`) moves past what went out.
#[derive(Debug)]
pub struct ChunkFrame {
    /// The iovecs and the size line they point into, in one allocation that
    /// does not move while the runtime owns the frame.
    parts: Box<FrameParts>,
    /// Keeps the payload's memory alive; `parts.iov[1]` points into it.
    _data: Bytes,
    /// The first iovec with bytes left.
    first: usize,
    left: usize,
}

#[derive(Debug)]
struct FrameParts {
    iov: [libc::iovec; 3],
    /// Hex size (at most 16 digits for a u64) and CRLF.
    line: [u8; 18],
}

impl ChunkFrame {
    /// The frame for `data` (non-empty: an empty chunk is the last chunk).
    pub fn new(data: Bytes) -> Self {
        let mut parts = Box::new(FrameParts {
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; 3],
            line: [0; 18],
        });
        let mut digits = [0u8; 16];
        let mut n = data.len();
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b"0123456789abcdef"[n & 0xf];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        let hex = &digits[i..];
        parts.line[..hex.len()].copy_from_slice(hex);
        parts.line[hex.len()..hex.len() + 2].copy_from_slice(b"\r\n");
        let line_len = hex.len() + 2;
        parts.iov[0] = libc::iovec {
            iov_base: parts.line.as_mut_ptr().cast(),
            iov_len: line_len,
        };
        parts.iov[1] = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        parts.iov[2] = libc::iovec {
            iov_base: b"\r\n".as_ptr() as *mut libc::c_void,
            iov_len: 2,
        };
        ChunkFrame {
            left: line_len + data.len() + 2,
            parts,
            _data: data,
            first: 0,
        }
    }
}

impl ChunkFrame {
    /// The bytes still to send, part by part (size line, payload, CRLF).
    pub fn parts(&self) -> impl Iterator<Item = &[u8]> {
        self.parts.iov[self.first.min(3)..]
            .iter()
            .filter(|iov| iov.iov_len > 0)
            // SAFETY: each iovec points at `iov_len` initialised bytes that
            // the frame keeps alive (see the `IoVecBuf` impl), and `&self`
            // excludes any change while the slices live.
            .map(|iov| unsafe {
                std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), iov.iov_len)
            })
    }
}

impl crate::sockio::Vectored for ChunkFrame {
    fn remaining(&self) -> usize {
        self.left
    }

    fn advance(&mut self, mut n: usize) {
        self.left -= n.min(self.left);
        while n > 0 && self.first < 3 {
            let iov = &mut self.parts.iov[self.first];
            if n < iov.iov_len {
                // SAFETY: `n < iov_len`, so the new base stays inside the
                // slice this iovec describes.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n) }.cast();
                iov.iov_len -= n;
                return;
            }
            n -= iov.iov_len;
            self.first += 1;
        }
    }
}

// SAFETY: the iovecs live in `parts`, a heap allocation that neither moves
// nor changes while the runtime owns the frame (advance takes `&mut self`,
// which the runtime's ownership excludes); each points into memory the
// frame keeps alive: its own size line (same allocation), the payload
// (`_data`, whose heap buffer a `Bytes` never moves) or a static CRLF.
unsafe impl monoio::buf::IoVecBuf for ChunkFrame {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.parts.iov[self.first.min(2)..].as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        3 - self.first.min(3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockio::Vectored;
    use monoio::buf::IoVecBuf;

    /// The bytes the frame's iovecs describe now.
    fn pending(frame: &ChunkFrame) -> Vec<u8> {
        let ptr = frame.read_iovec_ptr();
        let mut out = Vec::new();
        for i in 0..frame.read_iovec_len() {
            // SAFETY: the frame guarantees `read_iovec_len` valid iovecs at
            // `ptr`, each describing live memory it owns.
            let iov = unsafe { &*ptr.add(i) };
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(iov.iov_base as *const u8, iov.iov_len)
            });
        }
        out
    }

    #[test]
    fn frame_encodes_and_advances_through_short_writes() {
        for len in [1usize, 15, 16, 255, 4096, 70_000] {
            let data = Bytes::from(vec![b'x'; len]);
            let whole = format!("{len:x}\r\n{}\r\n", "x".repeat(len)).into_bytes();
            let frame = ChunkFrame::new(data.clone());
            assert_eq!(pending(&frame), whole);
            assert_eq!(frame.remaining(), whole.len());
            // Every step size, including ones that end mid-iovec.
            for step in [1usize, 2, 3, 7, 1000] {
                let mut frame = ChunkFrame::new(data.clone());
                let mut written = 0;
                while frame.remaining() > 0 {
                    let n = step.min(frame.remaining());
                    frame.advance(n);
                    written += n;
                    assert_eq!(pending(&frame), &whole[written..], "len {len} step {step}");
                }
                assert_eq!(frame.read_iovec_len(), 0);
            }
        }
    }
}
