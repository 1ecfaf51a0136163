//! Serialising heads: the request as sent upstream and the response as sent
//! to the client, always rebuilt from the parsed form (never the peer's raw
//! bytes), with hop-by-hop headers dropped, forwarding headers added, route
//! edits applied and framing re-declared.

use std::net::SocketAddr;

use bytes::Bytes;

use super::codec::{connection_listed, is_hop_by_hop, Framing, Header, RequestHead, ResponseHead};
use crate::route::{HeaderRewrite, PathMatch, Route};

/// The request as sent upstream: re-serialised from the parsed head, never
/// the client's bytes. Hop-by-hop headers dropped, forwarding headers added,
/// route edits applied, framing re-declared.
pub fn serialize_request(
    head: &RequestHead,
    route: &Route,
    peer: SocketAddr,
    upstream_host: &str,
) -> (Vec<u8>, Bytes) {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&head.method);
    out.push(b' ');
    out.extend_from_slice(rewrite_target(head, route).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let listed = connection_listed(&head.headers);
    let edits = &route.request_headers;
    let mut xff: Option<Bytes> = None;
    let mut via: Option<Bytes> = None;
    let mut request_id_value: Option<Bytes> = None;
    for h in &head.headers {
        if is_hop_by_hop(h, &listed) && !(head.upgrade_websocket && h.is("upgrade")) {
            continue;
        }
        if h.is("x-forwarded-for") {
            xff = Some(h.value.clone());
            continue;
        }
        if h.is("via") {
            via = Some(h.value.clone());
            continue;
        }
        if h.is("x-forwarded-proto") || h.is("expect") || removed(edits, h) {
            continue;
        }
        if h.is("x-request-id") && request_id_value.is_none() {
            request_id_value = Some(h.value.clone());
        }
        push_header(&mut out, &h.name, &h.value);
    }
    let ip = peer.ip().to_string();
    match xff {
        Some(v) => {
            let mut joined = v.to_vec();
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(ip.as_bytes());
            push_header(&mut out, b"x-forwarded-for", &joined);
        }
        None => push_header(&mut out, b"x-forwarded-for", ip.as_bytes()),
    }
    push_header(&mut out, b"x-forwarded-proto", b"http");
    let request_id = match request_id_value {
        Some(v) => v,
        None => {
            let id = Bytes::from(request_id().into_bytes());
            push_header(&mut out, b"x-request-id", &id);
            id
        }
    };
    let via_value = match via {
        Some(v) => format!("{}, 1.1 outrigger", String::from_utf8_lossy(&v)),
        None => "1.1 outrigger".to_string(),
    };
    push_header(&mut out, b"via", via_value.as_bytes());
    apply_set_add(&mut out, edits);
    match head.framing {
        Framing::Length(n) => push_header(&mut out, b"content-length", n.to_string().as_bytes()),
        Framing::Chunked => push_header(&mut out, b"transfer-encoding", b"chunked"),
        Framing::None | Framing::UntilClose => {}
    }
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
    out.extend_from_slice(b"\r\n");
    (out, request_id)
}

fn removed(edits: &HeaderRewrite, h: &Header) -> bool {
    edits.remove.iter().any(|n| h.is(n)) || edits.set.iter().any(|(n, _)| h.is(n))
}

fn apply_set_add(out: &mut Vec<u8>, edits: &HeaderRewrite) {
    for (n, v) in edits.set.iter().chain(edits.add.iter()) {
        push_header(out, n.as_bytes(), v.as_bytes());
    }
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The authority of an absolute-form target (`http://a.example/x` → `a.example`).
fn authority_of(head: &RequestHead) -> Option<&str> {
    let t = std::str::from_utf8(&head.target).ok()?;
    let rest = &t[t.find("://")? + 3..];
    Some(rest.split('/').next().unwrap_or(rest)).filter(|a| !a.is_empty())
}

/// Origin-form target with the route's prefix rewrite applied.
fn rewrite_target(head: &RequestHead, route: &Route) -> String {
    let raw = std::str::from_utf8(&head.target).unwrap_or("/");
    // absolute-form → origin-form
    let origin = match raw.find("://") {
        Some(i) => raw[i + 3..].find('/').map_or("/", |j| &raw[i + 3 + j..]),
        None => raw,
    };
    let (Some(new_prefix), Some(PathMatch::Prefix(prefix))) =
        (&route.rewrite_path_prefix, &route.path)
    else {
        return origin.to_string();
    };
    match origin.strip_prefix(prefix.as_str()) {
        Some(rest) => {
            if new_prefix.ends_with('/') && rest.starts_with('/') {
                format!("{new_prefix}{}", &rest[1..])
            } else {
                format!("{new_prefix}{rest}")
            }
        }
        None => origin.to_string(),
    }
}

/// A 128-bit random id in hex.
fn request_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// The response head as sent to the client.
pub fn serialize_response(
    resp: &ResponseHead,
    route: &Route,
    framing: Framing,
    close: bool,
    upgrade: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(format!("HTTP/1.1 {} ", resp.status).as_bytes());
    out.extend_from_slice(&resp.reason);
    out.extend_from_slice(b"\r\n");
    let listed = connection_listed(&resp.headers);
    let edits = &route.response_headers;
    for h in &resp.headers {
        if (is_hop_by_hop(h, &listed) && !(upgrade && h.is("upgrade"))) || removed(edits, h) {
            continue;
        }
        push_header(&mut out, &h.name, &h.value);
    }
    apply_set_add(&mut out, edits);
    match framing {
        Framing::Length(n) => push_header(&mut out, b"content-length", n.to_string().as_bytes()),
        Framing::Chunked => push_header(&mut out, b"transfer-encoding", b"chunked"),
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
