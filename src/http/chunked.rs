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
        }
        self.state = State::Done;
        Ok(Some(Chunk::End(section.freeze().slice(..end + 2))))
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

/// `1a;name=value` → 26. Hex digits only, at most 16 of them.
fn parse_size_line(line: &[u8]) -> Result<u64, &'static str> {
    let (size, ext) = match line.iter().position(|&b| b == b';') {
        Some(i) => (&line[..i], Some(&line[i + 1..])),
        None => (line, None),
    };
    // Whitespace before the extension (BWS) is tolerated, nowhere else.
    let size = super::codec::trim_ows(size);
    if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
        return Err("invalid chunk size");
    }
    if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        return Err("whitespace before chunk size");
    }
    if let Some(ext) = ext {
        if ext.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f) {
            return Err("control character in chunk extension");
        }
    }
    let mut n: u64 = 0;
    for &d in size {
        let v = (d as char).to_digit(16).ok_or("invalid chunk size")?;
        n = n
            .checked_mul(16)
            .and_then(|n| n.checked_add(u64::from(v)))
            .ok_or("chunk size overflows")?;
    }
    Ok(n)
}
