//! Header-field semantics shared by the request and response codecs:
//! Connection tokens, Transfer-Encoding and Content-Length rules, hop-by-hop
//! headers, and the RFC 9110 token and whitespace rules.

use bytes::Bytes;

use super::error::HttpError;

/// One header; both parts are slices of the received head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: Bytes,
    pub value: Bytes,
}

impl Header {
    /// Case-insensitive name comparison.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }
}

/// Tokens of every Connection header that matter to framing.
#[derive(Debug, Default)]
pub(crate) struct ConnectionTokens {
    pub(crate) close: bool,
    pub(crate) keep_alive: bool,
    pub(crate) upgrade: bool,
}

pub(crate) fn connection_tokens(headers: &[Header]) -> ConnectionTokens {
    let mut t = ConnectionTokens::default();
    for h in headers.iter().filter(|h| h.is("connection")) {
        for token in h.value.split(|&b| b == b',') {
            let token = trim_ows(token);
            if token.eq_ignore_ascii_case(b"close") {
                t.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                t.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                t.upgrade = true;
            }
        }
    }
    t
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransferCoding {
    /// Exactly `chunked` (possibly listed once).
    Chunked,
    /// `chunked` followed by another coding.
    ChunkedNotLast,
    /// Codings we do not implement (gzip, deflate, compress…), chunked last or not.
    Unsupported,
    /// Empty or malformed list.
    Invalid,
}

pub(crate) fn transfer_encoding(headers: &[Header]) -> Result<Option<TransferCoding>, HttpError> {
    let mut codings: Vec<&[u8]> = Vec::new();
    let mut seen = false;
    for h in headers.iter().filter(|h| h.is("transfer-encoding")) {
        seen = true;
        for c in h.value.split(|&b| b == b',') {
            let c = trim_ows(c);
            if c.is_empty() {
                continue;
            }
            codings.push(c);
        }
    }
    if !seen {
        return Ok(None);
    }
    if codings.is_empty() || codings.iter().any(|c| !c.iter().all(|&b| is_tchar(b))) {
        return Ok(Some(TransferCoding::Invalid));
    }
    let chunked: Vec<bool> = codings
        .iter()
        .map(|c| c.eq_ignore_ascii_case(b"chunked"))
        .collect();
    let last_chunked = *chunked.last().unwrap_or(&false);
    let chunked_count = chunked.iter().filter(|c| **c).count();
    Ok(Some(
        if chunked_count > 1 || (chunked_count == 1 && !last_chunked) {
            TransferCoding::ChunkedNotLast
        } else if codings.len() == 1 && last_chunked {
            TransferCoding::Chunked
        } else if !last_chunked
            && codings
                .iter()
                .all(|c| KNOWN_CODINGS.iter().any(|k| c.eq_ignore_ascii_case(k)))
        {
            // A known coding that we cannot frame by (no chunked last): invalid framing.
            TransferCoding::Invalid
        } else {
            TransferCoding::Unsupported
        },
    ))
}

/// Registered transfer codings (RFC 9112 §7).
const KNOWN_CODINGS: [&[u8]; 5] = [b"chunked", b"gzip", b"deflate", b"compress", b"x-gzip"];

/// Content-Length: one header line of digits only. A list (`42, 42`) and a
/// repeated line are rejected even when the values agree, as nginx and
/// HAProxy do: RFC 9110 §8.6 lets a recipient merge equal values, but a
/// proxy that does so forwards a message other parsers may frame
/// differently.
pub fn content_length(headers: &[Header]) -> Result<Option<u64>, &'static str> {
    let mut value: Option<u64> = None;
    for h in headers.iter().filter(|h| h.is("content-length")) {
        if value.is_some() {
            return Err("more than one Content-Length");
        }
        let v = trim_ows(&h.value);
        if v.contains(&b',') {
            return Err("Content-Length is a list");
        }
        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
            return Err("Content-Length is not a number");
        }
        let mut n: u64 = 0;
        for &d in v {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
                .ok_or("Content-Length overflows")?;
        }
        value = Some(n);
    }
    Ok(value)
}

/// RFC 9110 token characters.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Strip optional whitespace (SP / HTAB) at both ends.
pub fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &v[start..end]
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded, plus the names
/// listed in Connection.
/// Always removed (Transfer-Encoding and Content-Length are re-derived from
/// the framing).
const HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "content-length",
    "upgrade",
];

/// Fields a trailer section may not carry (RFC 9110 §6.5.1: framing,
/// routing and hop-by-hop fields), and those the proxy owns in the request
/// head (a client must not smuggle them in after the body).
const NOT_IN_TRAILERS: [&str; 14] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "content-length",
    "upgrade",
    "host",
    "x-forwarded-client-cert",
    "x-forwarded-for",
    "x-forwarded-proto",
    "via",
    "x-outrigger-attempts",
];

/// Whether a trailer field of this name is passed on (`NOT_IN_TRAILERS`).
pub fn trailer_allowed(name: &[u8]) -> bool {
    !NOT_IN_TRAILERS
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

pub fn is_hop_by_hop(h: &Header, connection_listed: &[Bytes]) -> bool {
    HOP.iter().any(|n| h.is(n))
        || connection_listed
            .iter()
            .any(|n| h.name.eq_ignore_ascii_case(n))
}

/// Fields `Connection` can never remove: the request's target host (as
/// `Host`, or `:authority` in HTTP/2) and framing (which the proxy writes
/// itself). `Connection: host` would otherwise send a request without one.
const NEVER_CONNECTION_LISTED: [&str; 3] = ["host", "content-length", "transfer-encoding"];

/// Header names listed in Connection headers (to be removed with it),
/// leaving out those `is_hop_by_hop` removes anyway (the usual
/// `Connection: keep-alive` then costs no allocation) and those it may
/// never remove (`NEVER_CONNECTION_LISTED`).
pub fn connection_listed(headers: &[Header]) -> Vec<Bytes> {
    let mut out = Vec::new();
    for h in headers.iter().filter(|h| h.is("connection")) {
        for token in h.value.split(|&b| b == b',') {
            let t = trim_ows(token);
            let kept = HOP
                .iter()
                .chain(NEVER_CONNECTION_LISTED.iter())
                .any(|n| t.eq_ignore_ascii_case(n.as_bytes()));
            if !t.is_empty() && !kept {
                out.push(h.value.slice_ref(t));
            }
        }
    }
    out
}
