//! The HTTP/1.1 codec: request and response heads (on `httparse`) with the
//! strict framing rules of RFC 9112 §6 and RFC 9110 that defend against
//! request smuggling, and body framing decisions. Header bytes stay in the
//! received buffer as `Bytes` slices; nothing is copied while parsing.
//!
//! `Ok(None)` from a parser means "incomplete, read more": a state, not an error.

use bytes::{Bytes, BytesMut};

use super::error::HttpError;
pub use super::fields::{
    connection_listed, content_length, is_hop_by_hop, is_tchar, trim_ows, Header,
};
use super::fields::{connection_tokens, transfer_encoding, TransferCoding};

/// Protocol version of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
    /// A request that arrived on an HTTP/2 stream (`http::h2`).
    Http2,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// A parsed, validated request head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Bytes,
    pub target: Bytes,
    pub version: Version,
    pub headers: Vec<Header>,
    pub framing: Framing,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// `Upgrade: websocket` with `Connection: upgrade`.
    pub upgrade_websocket: bool,
}

/// Header slots tried before the full `max_headers` table.
const SMALL_HEADER_TABLE: usize = 32;

/// Where a part of a head lies in its buffer: offset and length.
type Span = (usize, usize);

/// `s`, a slice of the buffer starting at address `base`, as a span.
fn span_in(base: usize, s: &[u8]) -> Span {
    if s.is_empty() {
        (0, 0)
    } else {
        (s.as_ptr() as usize - base, s.len())
    }
}

/// The part of `head` at `span` (no copy).
fn cut(head: &Bytes, (at, n): Span) -> Bytes {
    head.slice(at..at + n)
}

/// Where each header's name and (trimmed) value lie, recorded while the
/// parser still borrows the buffer: on the stack for a head of up to
/// `SMALL_HEADER_TABLE` headers, so that parsing a head allocates only the
/// header list it returns.
struct Spans {
    small: [(Span, Span); SMALL_HEADER_TABLE],
    /// Headers in `small`; a larger head's spans are in `big`.
    len: usize,
    big: Vec<(Span, Span)>,
}

impl Spans {
    fn of(headers: &[httparse::Header<'_>], base: usize) -> Self {
        let at = |h: &httparse::Header<'_>| {
            (
                span_in(base, h.name.as_bytes()),
                span_in(base, trim_ows(h.value)),
            )
        };
        let mut spans = Spans {
            small: [((0, 0), (0, 0)); SMALL_HEADER_TABLE],
            len: 0,
            big: Vec::new(),
        };
        if headers.len() <= SMALL_HEADER_TABLE {
            for (slot, h) in spans.small.iter_mut().zip(headers) {
                *slot = at(h);
            }
            spans.len = headers.len();
        } else {
            spans.big = headers.iter().map(at).collect();
        }
        spans
    }

    /// The headers as slices of `head` (no copy).
    fn headers(&self, head: &Bytes) -> Vec<Header> {
        let spans = if self.big.is_empty() {
            &self.small[..self.len]
        } else {
            &self.big[..]
        };
        let mut out = Vec::with_capacity(spans.len());
        for &(name, value) in spans {
            out.push(Header {
                name: cut(head, name),
                value: cut(head, value),
            });
        }
        out
    }
}

/// Limits applied while parsing a request head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
}

impl RequestHead {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|h| h.is(name)).map(|h| &h.value)
    }

    /// The Host header as text (validated at parse time).
    pub fn host(&self) -> Option<&str> {
        self.header("host")
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The target in origin form (path and query), as text: an
    /// absolute-form target loses its scheme and authority.
    pub fn origin_target(&self) -> &str {
        let t = std::str::from_utf8(&self.target).unwrap_or("/");
        // origin-form starts with '/', and may contain "://" in its path or
        // query (`/go?to=http://x/admin`): only a target that does not
        // start with '/' can be absolute-form.
        if t.starts_with('/') {
            return t;
        }
        match t.find("://") {
            // absolute-form: skip scheme and authority
            Some(i) => t[i + 3..].find('/').map_or("/", |j| &t[i + 3 + j..]),
            None => t,
        }
    }

    /// The path of the target without the query, as text.
    pub fn path(&self) -> &str {
        let t = self.origin_target();
        t.split('?').next().unwrap_or(t)
    }

    pub fn method_str(&self) -> &str {
        std::str::from_utf8(&self.method).unwrap_or("")
    }

    pub fn is_head(&self) -> bool {
        &self.method[..] == b"HEAD"
    }
}

/// Parse a request head from the start of `buf`. On success the head's
/// bytes are split off `buf`; what follows (body, pipelined requests) stays.
pub fn parse_request(
    buf: &mut BytesMut,
    limits: HeadLimits,
) -> Result<Option<RequestHead>, HttpError> {
    // Leading empty lines before a request line are ignored (RFC 9112 §2.2).
    while buf.starts_with(b"\r\n") {
        let _ = buf.split_to(2);
    }
    while buf.starts_with(b"\n") {
        let _ = buf.split_to(1);
    }
    // Most requests have few headers: try a small table first.
    let small = limits.max_headers.min(SMALL_HEADER_TABLE);
    // On the stack: a partial head is parsed again on every read, and a heap
    // table would be allocated each time.
    let mut table = [httparse::EMPTY_HEADER; SMALL_HEADER_TABLE];
    let headers = &mut table[..small];
    let mut req = httparse::Request::new(headers);
    let mut first = req.parse(buf);
    let mut big;
    if matches!(first, Err(httparse::Error::TooManyHeaders)) && limits.max_headers > small {
        big = vec![httparse::EMPTY_HEADER; limits.max_headers];
        req = httparse::Request::new(&mut big);
        first = req.parse(buf);
    }
    let len = match first {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_head_bytes {
                return Err(HttpError::HeadTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(e) => return Err(HttpError::BadRequest(describe(e))),
    };
    if len > limits.max_head_bytes {
        return Err(HttpError::HeadTooLarge);
    }
    // A bare CR anywhere in the head is rejected (httparse allows some).
    if has_bare_cr(&buf[..len]) {
        return Err(HttpError::BadRequest("bare CR in request head"));
    }
    let version = match req.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(HttpError::BadRequest("unsupported HTTP version")),
    };
    // Record where each part lies, then cut the head off the buffer and
    // slice it without copying.
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| span_in(base, s);
    let method_at = span(req.method.unwrap_or("").as_bytes());
    let target_at = span(req.path.unwrap_or("").as_bytes());
    let spans = Spans::of(req.headers, base);
    let head = buf.split_to(len).freeze();
    let method = cut(&head, method_at);
    let target = cut(&head, target_at);
    validate_target(&method, &target)?;
    build_request(method, target, version, spans.headers(&head))
}

fn build_request(
    method: Bytes,
    target: Bytes,
    version: Version,
    headers: Vec<Header>,
) -> Result<Option<RequestHead>, HttpError> {
    let mut hosts = 0;
    for h in &headers {
        if h.value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
            return Err(HttpError::BadRequest("control character in header value"));
        }
        if h.is("host") {
            hosts += 1;
            if !valid_host(&h.value) {
                return Err(HttpError::BadRequest("invalid Host header"));
            }
        }
    }
    if hosts > 1 {
        return Err(HttpError::BadRequest("more than one Host header"));
    }
    if hosts == 0 && version == Version::Http11 {
        return Err(HttpError::BadRequest("missing Host header"));
    }
    let framing = request_framing(&headers, version)?;
    let connection = connection_tokens(&headers);
    let keep_alive = match version {
        Version::Http11 | Version::Http2 => !connection.close,
        Version::Http10 => connection.keep_alive && !connection.close,
    };
    let expect_continue = version == Version::Http11
        && headers
            .iter()
            .any(|h| h.is("expect") && h.value.eq_ignore_ascii_case(b"100-continue"));
    let upgrade_websocket = connection.upgrade
        && headers
            .iter()
            .any(|h| h.is("upgrade") && h.value.eq_ignore_ascii_case(b"websocket"));
    Ok(Some(RequestHead {
        method,
        target,
        version,
        headers,
        framing,
        keep_alive,
        expect_continue,
        upgrade_websocket,
    }))
}

/// RFC 9112 §6.3 for requests, strictly.
fn request_framing(headers: &[Header], version: Version) -> Result<Framing, HttpError> {
    let te = transfer_encoding(headers)?;
    let cl = content_length(headers).map_err(HttpError::BadRequest)?;
    match (te, cl) {
        (Some(_), Some(_)) => Err(HttpError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        )),
        (Some(_), None) if version == Version::Http10 => Err(HttpError::BadRequest(
            "Transfer-Encoding in an HTTP/1.0 request",
        )),
        (Some(TransferCoding::Chunked), None) => Ok(Framing::Chunked),
        (Some(TransferCoding::ChunkedNotLast), None) => Err(HttpError::BadRequest(
            "chunked is not the final transfer coding",
        )),
        (Some(TransferCoding::Unsupported), None) => Err(HttpError::NotImplemented),
        (Some(TransferCoding::Invalid), None) => {
            Err(HttpError::BadRequest("invalid Transfer-Encoding"))
        }
        (None, Some(0)) | (None, None) => Ok(Framing::None),
        (None, Some(n)) => Ok(Framing::Length(n)),
    }
}

fn validate_target(method: &[u8], target: &[u8]) -> Result<(), HttpError> {
    if target.is_empty() {
        return Err(HttpError::BadRequest("empty request target"));
    }
    if method == b"CONNECT" {
        return Err(HttpError::BadRequest("CONNECT is not supported"));
    }
    if target == b"*" {
        return if method == b"OPTIONS" {
            Ok(())
        } else {
            Err(HttpError::BadRequest("asterisk target only with OPTIONS"))
        };
    }
    let ok_form = target.starts_with(b"/")
        || target.starts_with(b"http://")
        || target.starts_with(b"https://");
    if !ok_form {
        return Err(HttpError::BadRequest(
            "request target is not origin or absolute form",
        ));
    }
    if target.iter().any(|&b| b <= b' ' || b == 0x7f || b == b'#') {
        return Err(HttpError::BadRequest("invalid character in request target"));
    }
    Ok(())
}

fn valid_host(v: &[u8]) -> bool {
    !v.is_empty()
        && v.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b':'
                        | b'['
                        | b']'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        })
}

fn has_bare_cr(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && head.get(i + 1) != Some(&b'\n'))
}

fn describe(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in request line",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

/// A parsed response head from an upstream.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: Bytes,
    pub version: Version,
    pub headers: Vec<Header>,
    /// The upstream keeps the connection open after this response.
    pub keep_alive: bool,
}

impl ResponseHead {
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|h| h.is(name)).map(|h| &h.value)
    }

    /// Body framing given the request method (RFC 9112 §6.3).
    pub fn framing(&self, request_was_head: bool) -> Result<Framing, HttpError> {
        if request_was_head
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
        {
            return Ok(Framing::None);
        }
        let te = transfer_encoding(&self.headers)?;
        let cl = content_length(&self.headers).map_err(HttpError::BadResponse)?;
        match (te, cl) {
            (Some(_), Some(_)) => Err(HttpError::BadResponse(
                "both Content-Length and Transfer-Encoding",
            )),
            (Some(TransferCoding::Chunked), None) => Ok(Framing::Chunked),
            (Some(_), None) => Err(HttpError::BadResponse("unsupported Transfer-Encoding")),
            (None, Some(n)) => Ok(Framing::Length(n)),
            (None, None) => Ok(Framing::UntilClose),
        }
    }
}

/// Parse a response head; on success its bytes are split off `buf`.
pub fn parse_response(
    buf: &mut BytesMut,
    limits: HeadLimits,
) -> Result<Option<ResponseHead>, HttpError> {
    let small = limits.max_headers.min(SMALL_HEADER_TABLE);
    // On the stack: a partial head is parsed again on every read, and a heap
    // table would be allocated each time.
    let mut table = [httparse::EMPTY_HEADER; SMALL_HEADER_TABLE];
    let headers = &mut table[..small];
    let mut resp = httparse::Response::new(headers);
    let mut first = resp.parse(buf);
    let mut big;
    if matches!(first, Err(httparse::Error::TooManyHeaders)) && limits.max_headers > small {
        big = vec![httparse::EMPTY_HEADER; limits.max_headers];
        resp = httparse::Response::new(&mut big);
        first = resp.parse(buf);
    }
    let len = match first {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_head_bytes {
                return Err(HttpError::BadResponse("response head too large"));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::BadResponse("too many response headers"))
        }
        Err(e) => return Err(HttpError::BadResponse(describe(e))),
    };
    if has_bare_cr(&buf[..len]) {
        return Err(HttpError::BadResponse("bare CR in response head"));
    }
    let version = match resp.version {
        Some(0) => Version::Http10,
        _ => Version::Http11,
    };
    let status = resp.code.unwrap_or(0);
    if !(100..=999).contains(&status) {
        return Err(HttpError::BadResponse("invalid status code"));
    }
    if resp
        .headers
        .iter()
        .any(|h| h.value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n'))
    {
        return Err(HttpError::BadResponse("control character in header value"));
    }
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| span_in(base, s);
    // An empty reason may point outside the buffer; keep it empty then.
    let reason_at = resp
        .reason
        .filter(|r| !r.is_empty())
        .map(|r| span(r.as_bytes()));
    let spans = Spans::of(resp.headers, base);
    let head = buf.split_to(len).freeze();
    let reason = reason_at.map_or_else(Bytes::new, |span| cut(&head, span));
    let parsed = spans.headers(&head);
    let connection = connection_tokens(&parsed);
    let keep_alive = match version {
        Version::Http11 | Version::Http2 => !connection.close,
        Version::Http10 => connection.keep_alive && !connection.close,
    };
    Ok(Some(ResponseHead {
        status,
        reason,
        version,
        headers: parsed,
        keep_alive,
    }))
}

#[cfg(test)]
mod tests;
