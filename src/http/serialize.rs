//! Serialising heads: the request as sent upstream and the response as sent
//! to the client, always rebuilt from the parsed form (never the peer's raw
//! bytes), with hop-by-hop headers dropped, forwarding headers added, route
//! edits applied and framing re-declared.

use std::net::SocketAddr;

use std::fmt::Write as _;

use bytes::{Bytes, BytesMut};

use super::codec::{connection_listed, is_hop_by_hop, Framing, Header, RequestHead, ResponseHead};
use crate::route::{HeaderRewrite, PathMatch, Route};

/// The request of a retry: `x-outrigger-attempts` and `extra` header lines
/// (the try's trace context) before the blank line, in place of the last
/// `replace` bytes of header lines (the first try's trace context).
pub fn per_try(request: &Bytes, attempt: u32, replace: usize, extra: &[u8]) -> Bytes {
    if attempt <= 1 && extra.is_empty() && replace == 0 {
        return request.clone();
    }
    let head = request.strip_suffix(b"\r\n").unwrap_or(request);
    let head = &head[..head.len().saturating_sub(replace)];
    let mut out = BytesMut::with_capacity(head.len() + 32 + extra.len());
    out.extend_from_slice(head);
    if attempt > 1 {
        let _ = write!(out, "x-outrigger-attempts: {attempt}\r\n");
    }
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

/// The `x-request-id` sent upstream: the client's, or one generated here
/// (kept inline: slicing it out of the serialised request would cost the
/// request buffer an allocation of its shared header).
#[derive(Debug, Clone, Default)]
pub enum RequestId {
    #[default]
    None,
    Client(Bytes),
    Generated([u8; 32]),
}

impl RequestId {
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            RequestId::None => None,
            RequestId::Client(b) => Some(b),
            RequestId::Generated(g) => Some(g),
        }
    }
}

/// The request as sent upstream: re-serialised from the parsed head, never
/// the client's bytes. Hop-by-hop headers dropped, forwarding headers added
/// (repeated `X-Forwarded-For` and `Via` lines joined, in order, with the
/// proxy's own entry last), route edits applied, framing re-declared.
/// Everything is written straight into one buffer.
pub fn serialize_request(
    head: &RequestHead,
    route: &Route,
    peer: SocketAddr,
    upstream_host: &str,
    https: bool,
    xfcc: Option<&str>,
    trace: Option<&[u8]>,
) -> (Bytes, RequestId) {
    let mut out = BytesMut::with_capacity(512);
    out.extend_from_slice(&head.method);
    out.extend_from_slice(b" ");
    write_target(&mut out, head, route);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let listed = connection_listed(&head.headers);
    let edits = &route.request_headers;
    let mut request_id: Option<Bytes> = None;
    for h in &head.headers {
        if is_hop_by_hop(h, &listed) && !(head.upgrade_websocket && h.is("upgrade")) {
            continue;
        }
        if h.is("x-forwarded-for")
            || h.is("via")
            || h.is("x-forwarded-proto")
            || h.is("expect")
            || h.is("x-outrigger-attempts")
            || h.is("x-forwarded-client-cert")
            || (trace.is_some() && crate::trace::context::is_trace_header(&h.name))
            || removed(edits, h)
        {
            continue;
        }
        if h.is("x-request-id") && request_id.is_none() {
            request_id = Some(h.value.clone());
        }
        push_header(&mut out, &h.name, &h.value);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    for v in head.headers.iter().filter(|h| h.is("x-forwarded-for")) {
        out.extend_from_slice(&v.value);
        out.extend_from_slice(b", ");
    }
    push_ip(&mut out, peer.ip());
    out.extend_from_slice(b"\r\n");
    let proto: &[u8] = if https { b"https" } else { b"http" };
    push_header(&mut out, b"x-forwarded-proto", proto);
    // Only a peer this listener verified is named; a client's own value
    // is never passed on.
    if let Some(v) = xfcc {
        push_header(&mut out, b"x-forwarded-client-cert", v.as_bytes());
    }
    let request_id = match request_id {
        Some(id) => RequestId::Client(id),
        None => {
            let id = hex128(fastrand::u128(..));
            push_header(&mut out, b"x-request-id", &id);
            RequestId::Generated(id)
        }
    };
    out.extend_from_slice(b"via: ");
    for v in head.headers.iter().filter(|h| h.is("via")) {
        out.extend_from_slice(&v.value);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(b"1.1 outrigger\r\n");
    apply_set_add(&mut out, edits);
    write_framing(&mut out, head.framing);
    if head.header("host").is_none() {
        // HTTP/1.0 without Host: HTTP/1.1 upstreams need one.
        push_header(
            &mut out,
            b"host",
            authority_of(head).unwrap_or(upstream_host).as_bytes(),
        );
    }
    if head.upgrade_websocket {
        push_header(&mut out, b"connection", b"upgrade");
    }
    // The first try's trace context, last, so that a retry can replace it.
    if let Some(t) = trace {
        out.extend_from_slice(t);
    }
    out.extend_from_slice(b"\r\n");
    (out.freeze(), request_id)
}

/// `content-length` or `transfer-encoding: chunked` for a body's framing.
fn write_framing(out: &mut BytesMut, framing: Framing) {
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => push_header(out, b"transfer-encoding", b"chunked"),
        Framing::None | Framing::UntilClose => {}
    }
}

fn removed(edits: &HeaderRewrite, h: &Header) -> bool {
    edits.remove.iter().any(|n| h.is(n)) || edits.set.iter().any(|(n, _)| h.is(n))
}

fn apply_set_add(out: &mut BytesMut, edits: &HeaderRewrite) {
    for (n, v) in edits.set.iter().chain(edits.add.iter()) {
        push_header(out, n.as_bytes(), v.as_bytes());
    }
}

/// Decimal digits of `n` (no `fmt` machinery: this runs per request).
fn push_u64(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// 32 lower-case hex digits of `v`.
fn hex128(v: u128) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 32];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[((v >> (124 - 4 * i)) & 0xf) as usize];
    }
    digits
}

/// An IP address as text: IPv4 by hand, IPv6 through `Display`.
fn push_ip(out: &mut BytesMut, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b".");
                }
                push_u64(out, u64::from(o));
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn push_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The authority of an absolute-form target (`http://a.example/x` → `a.example`).
fn authority_of(head: &RequestHead) -> Option<&str> {
    let t = std::str::from_utf8(&head.target).ok()?;
    // Only absolute-form has an authority (origin-form starts with '/').
    if t.starts_with('/') {
        return None;
    }
    let rest = &t[t.find("://")? + 3..];
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    // Used as a Host header: host characters only (found by fuzzing).
    let valid = !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
    valid.then_some(authority)
}

/// Origin-form target with the route's prefix rewrite applied.
fn write_target(out: &mut BytesMut, head: &RequestHead, route: &Route) {
    // absolute-form → origin-form (the same reading routing used).
    let origin = head.origin_target();
    let rest = match (&route.rewrite_path_prefix, &route.path) {
        (Some(new_prefix), Some(PathMatch::Prefix(prefix))) => origin
            .strip_prefix(prefix.as_str())
            .map(|rest| (new_prefix, rest)),
        _ => None,
    };
    match rest {
        Some((new_prefix, rest)) => {
            out.extend_from_slice(new_prefix.as_bytes());
            let rest = if new_prefix.ends_with('/') {
                rest.strip_prefix('/').unwrap_or(rest)
            } else {
                rest
            };
            out.extend_from_slice(rest.as_bytes());
        }
        None => out.extend_from_slice(origin.as_bytes()),
    }
}

/// The fields of a response as sent to the client, for either protocol:
/// the upstream's without hop-by-hop ones and those the route removes or
/// sets, then the route's `set` and `add` (framing fields are added by
/// the caller).
pub fn response_fields<'a>(
    resp: &'a ResponseHead,
    route: &'a Route,
    upgrade: bool,
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
    kept_response_headers(resp, route, upgrade)
        .map(|h| (&h.name[..], &h.value[..]))
        .chain(route_response_additions(route))
}

/// The upstream's response fields that are passed on (`response_fields`
/// without the route's additions).
pub fn kept_response_headers<'a>(
    resp: &'a ResponseHead,
    route: &'a Route,
    upgrade: bool,
) -> impl Iterator<Item = &'a Header> + 'a {
    let listed = connection_listed(&resp.headers);
    let edits = &route.response_headers;
    resp.headers.iter().filter(move |h| {
        !((is_hop_by_hop(h, &listed) && !(upgrade && h.is("upgrade"))) || removed(edits, h))
    })
}

/// The route's `response_headers` `set` and `add` fields.
pub fn route_response_additions(route: &Route) -> impl Iterator<Item = (&[u8], &[u8])> {
    let edits = &route.response_headers;
    edits
        .set
        .iter()
        .chain(edits.add.iter())
        .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
}

/// The response head as sent to the client.
pub fn serialize_response(
    resp: &ResponseHead,
    route: &Route,
    framing: Framing,
    close: bool,
    upgrade: bool,
    room: usize,
) -> BytesMut {
    // `room`: bytes the caller appends after the head (a small body sent
    // with it), so that appending them does not grow the buffer.
    let mut out = BytesMut::with_capacity(256 + room);
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(&mut out, u64::from(resp.status));
    out.extend_from_slice(b" ");
    out.extend_from_slice(&resp.reason);
    out.extend_from_slice(b"\r\n");
    for (name, value) in response_fields(resp, route, upgrade) {
        push_header(&mut out, name, value);
    }
    match framing {
        Framing::Length(_) | Framing::Chunked => write_framing(&mut out, framing),
        Framing::None => {
            // HEAD / 304 responses keep the upstream's Content-Length.
            if let Some(cl) = resp.header("content-length") {
                if resp.status != 204 && !(100..200).contains(&resp.status) {
                    push_header(&mut out, b"content-length", cl);
                }
            }
        }
        Framing::UntilClose => {}
    }
    if upgrade {
        push_header(&mut out, b"connection", b"upgrade");
    } else if close {
        push_header(&mut out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::per_try;

    #[test]
    fn retries_replace_the_trace_context() {
        let first = b"traceparent: 00-a-b-01\r\n";
        let mut req = b"GET / HTTP/1.1\r\nhost: x\r\n".to_vec();
        req.extend_from_slice(first);
        req.extend_from_slice(b"\r\n");
        let req = bytes::Bytes::from(req);
        assert_eq!(per_try(&req, 1, 0, b""), req);
        let retry = per_try(&req, 2, first.len(), b"traceparent: 00-a-c-01\r\n");
        assert_eq!(
            &retry[..],
            &b"GET / HTTP/1.1\r\nhost: x\r\nx-outrigger-attempts: 2\r\ntraceparent: 00-a-c-01\r\n\r\n"[..]
        );
        // Without tracing: only the attempt count.
        let plain = bytes::Bytes::from_static(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
        assert_eq!(
            &per_try(&plain, 3, 0, b"")[..],
            &b"GET / HTTP/1.1\r\nhost: x\r\nx-outrigger-attempts: 3\r\n\r\n"[..]
        );
    }

    #[test]
    fn hand_formatting_matches_fmt() {
        for n in [0u64, 7, 10, 99, 100, 1024, 65_535, u64::MAX] {
            let mut b = BytesMut::new();
            super::push_u64(&mut b, n);
            assert_eq!(&b[..], n.to_string().as_bytes());
        }
        for v in [
            0u128,
            1,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ] {
            assert_eq!(&super::hex128(v)[..], format!("{v:032x}").as_bytes());
        }
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "10.20.3.4",
            "::1",
            "2001:db8::7",
        ] {
            let mut b = BytesMut::new();
            let parsed: std::net::IpAddr = ip.parse().unwrap_or_else(|_| unreachable!());
            super::push_ip(&mut b, parsed);
            assert_eq!(&b[..], ip.as_bytes());
        }
    }
}
