//! Between HTTP/2 messages and the request path's HTTP/1.1 forms (RFC 9113
//! §8.2 and §8.3): pseudo-headers to request line and Host, split cookie
//! fields joined, connection-specific fields never passed on, framing
//! derived from END_STREAM and content-length.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

use crate::http::codec::{content_length, Framing, Header, RequestHead, Version};
use crate::http::error::HttpError;
use crate::snapshot::HttpSettings;

/// The request head of an HTTP/2 request, and whether its body reaches
/// the exchange chunk-encoded (a body without content-length).
pub fn request_head(
    parts: &http::request::Parts,
    end_of_stream: bool,
    http: &HttpSettings,
) -> Result<(RequestHead, bool), HttpError> {
    if parts.method == http::Method::CONNECT {
        // CONNECT tunnels (and RFC 8441 WebSockets) over HTTP/2 are not offered.
        return Err(HttpError::NotImplemented);
    }
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let asterisk = target == "*" && parts.method == http::Method::OPTIONS;
    if !(target.starts_with('/') || asterisk) {
        return Err(HttpError::BadRequest("invalid :path"));
    }
    if parts.headers.len() + 1 > http.max_headers {
        return Err(HttpError::TooManyHeaders);
    }
    // Every name and value is copied into one buffer, then sliced: one
    // allocation per request instead of two per field.
    let authority = parts.uri.authority().map(|a| a.as_str());
    let size = authority.map_or(0, |a| a.len() + 4)
        + parts
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 2)
            .sum::<usize>();
    let mut text = BytesMut::with_capacity(size);
    let mut spans: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> =
        Vec::with_capacity(parts.headers.len() + 1);
    let mut push = |text: &mut BytesMut, name: &[u8], value: &[u8]| {
        let n = text.len();
        text.put_slice(name);
        let v = text.len();
        text.put_slice(value);
        spans.push((n..v, v..text.len()));
    };
    // :authority stands for Host (RFC 9113 §8.3.1); a Host field next to it
    // is dropped.
    if let Some(a) = authority {
        push(&mut text, b"host", a.as_bytes());
    }
    let mut cookie: Option<BytesMut> = None;
    for (name, value) in &parts.headers {
        if authority.is_some() && name == http::header::HOST {
            continue;
        }
        // Split cookie fields are joined with "; " for HTTP/1.1 (§8.2.3).
        if name == http::header::COOKIE {
            let c = cookie.get_or_insert_with(BytesMut::new);
            if !c.is_empty() {
                c.put_slice(b"; ");
            }
            c.put_slice(value.as_bytes());
            continue;
        }
        push(&mut text, name.as_str().as_bytes(), value.as_bytes());
    }
    let text = text.freeze();
    let mut headers: Vec<Header> = spans
        .into_iter()
        .map(|(n, v)| Header {
            name: text.slice(n),
            value: text.slice(v),
        })
        .collect();
    if let Some(c) = cookie {
        headers.push(Header {
            name: Bytes::from_static(b"cookie"),
            value: c.freeze(),
        });
    }
    if authority.is_none() {
        // Host stands in for :authority: exactly one, as HTTP/1.1 requires
        // (two would let the route and the upstream read different hosts).
        match headers.iter().filter(|h| h.is("host")).count() {
            0 => return Err(HttpError::BadRequest("no :authority and no host")),
            1 => {}
            _ => return Err(HttpError::BadRequest("more than one host field")),
        }
    }
    let declared = content_length(&headers).map_err(HttpError::BadRequest)?;
    let (framing, chunked) = match (end_of_stream, declared) {
        (true, _) => (Framing::None, false),
        (false, Some(n)) => (Framing::Length(n), false),
        (false, None) => (Framing::Chunked, true),
    };
    Ok((
        RequestHead {
            method: Bytes::copy_from_slice(parts.method.as_str().as_bytes()),
            target: Bytes::from(target),
            version: Version::Http2,
            headers,
            framing,
            keep_alive: true,
            expect_continue: false,
            upgrade_websocket: false,
        },
        chunked,
    ))
}

/// An HTTP/2 response head from a status and the fields to send (already
/// stripped of hop-by-hop ones); fields HTTP/2 cannot carry are dropped.
pub fn response<'a>(
    status: u16,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> http::Response<()> {
    let mut head = http::Response::new(());
    *head.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    let map = head.headers_mut();
    for (name, value) in fields {
        let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) else {
            tracing::debug!("response field not representable in HTTP/2; dropped");
            continue;
        };
        if is_connection_specific(&n) {
            continue;
        }
        map.append(n, v);
    }
    head
}

/// The request for an HTTP/2 upstream, re-read from the HTTP/1.1 form the
/// request path serialised (so one set of forwarding rules serves both):
/// Host becomes `:authority`, framing fields go (HTTP/2 frames the body),
/// and a gRPC request carries `te: trailers`.
pub fn request_from_h1(bytes: &[u8], scheme: &str) -> Result<http::Request<()>, HttpError> {
    let lines = bytes.windows(2).filter(|w| w == b"\r\n").count();
    let mut table = vec![httparse::EMPTY_HEADER; lines];
    let mut parsed = httparse::Request::new(&mut table);
    match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => {
            return Err(HttpError::BadRequest(
                "request cannot be re-read for HTTP/2",
            ))
        }
    }
    let method = http::Method::from_bytes(parsed.method.unwrap_or("GET").as_bytes())
        .map_err(|_| HttpError::BadRequest("method not valid in HTTP/2"))?;
    let path = parsed.path.unwrap_or("/");
    let mut authority = None;
    let mut grpc = false;
    let mut head = http::Request::new(());
    let map = head.headers_mut();
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("host") {
            authority = Some(h.value);
            continue;
        }
        let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_bytes(h.value),
        ) else {
            continue;
        };
        if is_connection_specific(&n) {
            continue;
        }
        if n == http::header::CONTENT_TYPE && v.as_bytes().starts_with(b"application/grpc") {
            grpc = true;
        }
        map.append(n, v);
    }
    if grpc {
        map.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
    let authority = authority
        .and_then(|a| std::str::from_utf8(a).ok())
        .unwrap_or("localhost");
    let uri = http::Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| HttpError::BadRequest("target not valid in HTTP/2"))?;
    *head.method_mut() = method;
    *head.uri_mut() = uri;
    *head.version_mut() = http::Version::HTTP_2;
    Ok(head)
}

/// HTTP/2 trailers as an HTTP/1.1 trailer section (`name: value\r\n`).
pub fn trailer_section(map: &http::HeaderMap) -> Bytes {
    let mut out = BytesMut::new();
    for (name, value) in map {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.freeze()
}

/// An HTTP/2 response head from an upstream's response: its kept fields
/// (values shared with the response's buffer, not copied), the route's
/// additions, then `extra`.
pub fn response_of(
    resp: &crate::http::codec::ResponseHead,
    route: &crate::route::Route,
    extra: &[(&[u8], &[u8])],
) -> http::Response<()> {
    use crate::http::serialize::{kept_response_headers, route_response_additions};
    let mut head = response(
        resp.status,
        route_response_additions(route).chain(extra.iter().copied()),
    );
    let map = head.headers_mut();
    for h in kept_response_headers(resp, route, false) {
        let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(&h.name),
            http::HeaderValue::from_maybe_shared(h.value.clone()),
        ) else {
            tracing::debug!("response field not representable in HTTP/2; dropped");
            continue;
        };
        if !is_connection_specific(&n) {
            map.append(n, v);
        }
    }
    head
}

/// Fields HTTP/2 forbids (RFC 9113 §8.2.2).
fn is_connection_specific(n: &http::HeaderName) -> bool {
    matches!(
        n.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" | "te"
    )
}

/// One chunk of the chunked coding.
pub fn push_chunk(buf: &mut BytesMut, data: &[u8]) {
    let _ = write!(buf, "{:x}\r\n", data.len());
    buf.put_slice(data);
    buf.put_slice(b"\r\n");
}

/// The last chunk with the request's trailers, if any.
pub fn push_last_chunk(buf: &mut BytesMut, trailers: Option<&http::HeaderMap>) {
    buf.put_slice(b"0\r\n");
    let kept = trailers
        .into_iter()
        .flatten()
        .filter(|(n, _)| crate::http::fields::trailer_allowed(n.as_str().as_bytes()));
    for (name, value) in kept {
        buf.put_slice(name.as_str().as_bytes());
        buf.put_slice(b": ");
        buf.put_slice(value.as_bytes());
        buf.put_slice(b"\r\n");
    }
    buf.put_slice(b"\r\n");
}

/// A decoded trailer section (`name: value\r\n` lines) as HTTP/2
/// trailers; `None` when it holds none.
pub fn trailers(section: &[u8]) -> Option<http::HeaderMap> {
    let mut map = http::HeaderMap::new();
    for line in section.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = crate::http::codec::trim_ows(&line[colon + 1..]);
        let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        if !is_connection_specific(&n)
            && crate::http::fields::trailer_allowed(n.as_str().as_bytes())
        {
            map.append(n, v);
        }
    }
    (!map.is_empty()).then_some(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> HttpSettings {
        HttpSettings {
            max_request_header_bytes: 65536,
            max_headers: 100,
            header_timeout: std::time::Duration::from_secs(1),
            max_request_body_bytes: None,
            upstream_read_timeout: std::time::Duration::from_secs(1),
            request_body_timeout: std::time::Duration::from_secs(1),
            send_timeout: std::time::Duration::from_secs(1),
            http2: None,
            paths: Default::default(),
            sni_host_match: false,
        }
    }

    fn parts(req: http::Request<()>) -> http::request::Parts {
        req.into_parts().0
    }

    #[test]
    fn two_hosts_without_authority_are_refused() {
        let req = http::Request::builder()
            .method("GET")
            .uri("/x")
            .header("host", "a.example")
            .header("host", "b.example")
            .body(())
            .unwrap();
        let got = request_head(&parts(req), true, &settings());
        assert!(
            matches!(got, Err(HttpError::BadRequest("more than one host field"))),
            "{got:?}"
        );
        let one = http::Request::builder()
            .method("GET")
            .uri("/x")
            .header("host", "a.example")
            .body(())
            .unwrap();
        let (head, _) = request_head(&parts(one), true, &settings()).unwrap();
        assert_eq!(head.host(), Some("a.example"));
    }

    #[test]
    fn authority_becomes_host_and_cookies_join() {
        let req = http::Request::builder()
            .method("POST")
            .uri("https://api.example.com/v1/x?y=1")
            .header("host", "other.example")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .unwrap_or_default();
        let (head, chunked) = request_head(&parts(req), false, &settings())
            .unwrap_or_else(|e| panic!("rejected: {e}"));
        assert_eq!(head.host(), Some("api.example.com"));
        assert_eq!(head.headers.iter().filter(|h| h.is("host")).count(), 1);
        assert_eq!(head.origin_target(), "/v1/x?y=1");
        assert_eq!(
            head.header("cookie").map(|v| &v[..]),
            Some(&b"a=1; b=2"[..])
        );
        assert_eq!(head.framing, Framing::Chunked);
        assert!(chunked);
        assert_eq!(head.version, Version::Http2);
    }

    #[test]
    fn framing_follows_end_stream_and_content_length() {
        let req = http::Request::builder()
            .uri("http://a/")
            .header("content-length", "5")
            .body(())
            .unwrap_or_default();
        let (head, chunked) = request_head(&parts(req), false, &settings())
            .unwrap_or_else(|e| panic!("rejected: {e}"));
        assert_eq!((head.framing, chunked), (Framing::Length(5), false));
        let req = http::Request::builder()
            .uri("http://a/")
            .body(())
            .unwrap_or_default();
        let (head, _) = request_head(&parts(req), true, &settings())
            .unwrap_or_else(|e| panic!("rejected: {e}"));
        assert_eq!(head.framing, Framing::None);
        let req = http::Request::builder()
            .method("CONNECT")
            .uri("a:443")
            .body(())
            .unwrap_or_default();
        assert!(request_head(&parts(req), false, &settings()).is_err());
    }

    #[test]
    fn chunk_encoding_and_trailers_round_trip() {
        let mut buf = BytesMut::new();
        push_chunk(&mut buf, b"hello");
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        push_last_chunk(&mut buf, Some(&t));
        assert_eq!(&buf[..], b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n");
        let map = trailers(b"grpc-status: 14\r\ngrpc-message: down\r\nconnection: x\r\n")
            .unwrap_or_default();
        assert_eq!(
            map.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"14"[..])
        );
        assert_eq!(map.len(), 2);
        assert!(trailers(b"").is_none());
        let head = response(
            200,
            [
                (&b"Content-Type"[..], &b"text/plain"[..]),
                (b"keep-alive", b"5"),
            ]
            .into_iter(),
        );
        assert_eq!(head.headers().len(), 1);
        assert!(head.headers().contains_key("content-type"));
    }
}
