//! gRPC-Web (routes with `grpc_web = true`): a browser's
//! `application/grpc-web(+proto)` or `application/grpc-web-text(+proto)`
//! call becomes a gRPC call upstream, and the answer goes back in the
//! client's encoding with the trailers as the last frame of the body
//! (flag 0x80), base64 for `-text`. CORS preflights are answered when the
//! route lists `grpc_web_cors_origins`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{Framing, Header, RequestHead, ResponseHead};
use super::error::HttpError;

/// A gRPC-Web call being proxied.
#[derive(Debug, Clone)]
pub struct WebCall {
    /// `-text`: bodies are base64 both ways.
    pub text: bool,
    /// The request's `Origin`, when the route allows it (echoed in
    /// `access-control-allow-origin`).
    pub origin: Option<Bytes>,
}

pub use crate::grpc::web_kind;

/// `application/grpc-web-text+proto` → `application/grpc+proto`.
fn to_grpc(content_type: &[u8]) -> Bytes {
    let rest = content_type
        .strip_prefix(b"application/grpc-web-text")
        .or_else(|| content_type.strip_prefix(b"application/grpc-web"))
        .unwrap_or(b"");
    let mut out = b"application/grpc".to_vec();
    out.extend_from_slice(rest);
    Bytes::from(out)
}

/// `application/grpc+proto` → `application/grpc-web(-text)+proto`.
fn to_web(content_type: &[u8], text: bool) -> Bytes {
    let rest = content_type
        .strip_prefix(b"application/grpc")
        .unwrap_or(b"");
    let mut out = if text {
        b"application/grpc-web-text".to_vec()
    } else {
        b"application/grpc-web".to_vec()
    };
    out.extend_from_slice(rest);
    Bytes::from(out)
}

/// Whether `origin` is allowed by `origins` (`"*"` allows any).
pub fn origin_allowed(origins: &[String], origin: &[u8]) -> bool {
    origins
        .iter()
        .any(|o| o == "*" || o.as_bytes().eq_ignore_ascii_case(origin))
}

/// The gRPC request for a gRPC-Web one: the content type, `te: trailers`,
/// and for `-text` the decoded body (`body`, read whole by the caller) with
/// its length as framing.
pub fn translate_request(
    head: &RequestHead,
    text_body: Option<Bytes>,
) -> Result<(RequestHead, Option<Bytes>), HttpError> {
    let mut h = head.clone();
    for f in h.headers.iter_mut().filter(|f| f.is("content-type")) {
        f.value = to_grpc(&f.value);
    }
    h.headers.retain(|f| !f.is("te"));
    h.headers.push(Header {
        name: Bytes::from_static(b"te"),
        value: Bytes::from_static(b"trailers"),
    });
    let body = match text_body {
        Some(b) => {
            let decoded = decode_text(&b)?;
            h.framing = if decoded.is_empty() {
                Framing::None
            } else {
                Framing::Length(decoded.len() as u64)
            };
            Some(decoded)
        }
        None => None,
    };
    Ok((h, body))
}

/// Base64 of a `-text` body: padded groups may follow each other (each
/// client message encoded on its own), so it is decoded 4 characters at a
/// time; whitespace is ignored.
pub fn decode_text(b: &[u8]) -> Result<Bytes, HttpError> {
    let chars: Vec<u8> = b
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    if chars.len() % 4 != 0 {
        return Err(HttpError::BadRequest("grpc-web-text body is not base64"));
    }
    let mut out = Vec::with_capacity(chars.len() / 4 * 3);
    for group in chars.chunks(4) {
        STANDARD
            .decode_vec(group, &mut out)
            .map_err(|_| HttpError::BadRequest("grpc-web-text body is not base64"))?;
    }
    Ok(Bytes::from(out))
}

/// Rewrite an upstream response head for the gRPC-Web client: its content
/// type, no content-length (the body grows by the trailer frame), and the
/// CORS fields.
pub fn translate_response(resp: &mut ResponseHead, call: &WebCall) {
    resp.headers.retain(|h| !h.is("content-length"));
    for h in resp.headers.iter_mut().filter(|h| h.is("content-type")) {
        if h.value.starts_with(b"application/grpc") {
            h.value = to_web(&h.value, call.text);
        }
    }
    if let Some(origin) = &call.origin {
        resp.headers.push(Header {
            name: Bytes::from_static(b"access-control-allow-origin"),
            value: origin.clone(),
        });
        resp.headers.push(Header {
            name: Bytes::from_static(b"access-control-expose-headers"),
            value: Bytes::from_static(b"grpc-status, grpc-message"),
        });
    }
}

/// The answer to a CORS preflight of a gRPC-Web route: 204 with the
/// allowed origin, method and headers (none when the origin is not
/// allowed: the browser then refuses the call).
pub fn preflight_fields(head: &RequestHead, origins: &[String]) -> Vec<(&'static [u8], Bytes)> {
    let Some(origin) = head.header("origin").filter(|o| origin_allowed(origins, o)) else {
        return Vec::new();
    };
    let requested = head
        .header("access-control-request-headers")
        .cloned()
        .unwrap_or_else(|| {
            Bytes::from_static(b"content-type, x-grpc-web, x-user-agent, grpc-timeout")
        });
    vec![
        (&b"access-control-allow-origin"[..], origin.clone()),
        (
            b"access-control-allow-methods",
            Bytes::from_static(b"POST, OPTIONS"),
        ),
        (b"access-control-allow-headers", requested),
        (
            b"access-control-expose-headers",
            Bytes::from_static(b"grpc-status, grpc-message"),
        ),
        (b"access-control-max-age", Bytes::from_static(b"86400")),
        (b"vary", Bytes::from_static(b"origin")),
    ]
}

/// A CORS preflight: OPTIONS with `Origin` and
/// `Access-Control-Request-Method`.
pub fn is_preflight(head: &RequestHead) -> bool {
    &head.method[..] == b"OPTIONS"
        && head.header("origin").is_some()
        && head.header("access-control-request-method").is_some()
}

/// The response body toward a gRPC-Web client: data as it comes (base64
/// for `-text`, in 3-byte groups), and the trailers as the final frame.
#[derive(Debug)]
pub struct WebBody {
    text: bool,
    /// `-text`: bytes not yet encoded (fewer than 3).
    carry: BytesMut,
}

impl WebBody {
    pub fn new(call: &WebCall) -> Self {
        WebBody {
            text: call.text,
            carry: BytesMut::new(),
        }
    }

    /// What to send for `data`.
    pub fn data(&mut self, data: Bytes) -> Bytes {
        if !self.text {
            return data;
        }
        self.carry.extend_from_slice(&data);
        let whole = self.carry.len() / 3 * 3;
        let ready = self.carry.split_to(whole);
        Bytes::from(STANDARD.encode(&ready))
    }

    /// The end: the trailer frame built from an HTTP/1.1 trailer section
    /// (`name: value\r\n` lines), with what `-text` still carried.
    pub fn end(&mut self, section: &[u8]) -> Bytes {
        let mut block = BytesMut::new();
        for line in section.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            block.extend(line[..colon].iter().map(u8::to_ascii_lowercase));
            block.put_slice(b":");
            block.put_slice(super::codec::trim_ows(&line[colon + 1..]));
            block.put_slice(b"\r\n");
        }
        let mut frame = BytesMut::with_capacity(block.len() + 5);
        if !block.is_empty() {
            frame.put_u8(0x80);
            frame.put_u32(block.len() as u32);
            frame.put_slice(&block);
        }
        if !self.text {
            return frame.freeze();
        }
        let mut rest = std::mem::take(&mut self.carry);
        rest.extend_from_slice(&frame);
        Bytes::from(STANDARD.encode(&rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(web_kind(b"application/grpc-web"), Some(false));
        assert_eq!(web_kind(b"application/grpc-web+proto"), Some(false));
        assert_eq!(web_kind(b"application/grpc-web-text"), Some(true));
        assert_eq!(web_kind(b"application/grpc-web-text+proto"), Some(true));
        assert_eq!(web_kind(b"application/grpc"), None);
        assert_eq!(web_kind(b"application/grpc-webby"), None);
        assert_eq!(
            &to_grpc(b"application/grpc-web-text+proto")[..],
            b"application/grpc+proto"
        );
        assert_eq!(
            &to_web(b"application/grpc+proto", true)[..],
            b"application/grpc-web-text+proto"
        );
        assert_eq!(
            &to_web(b"application/grpc", false)[..],
            b"application/grpc-web"
        );
    }

    #[test]
    fn text_bodies_round_trip_in_pieces() {
        // Two messages encoded on their own (each padded), then decoded.
        let a = STANDARD.encode(b"\0\0\0\0\x01A");
        let b = STANDARD.encode(b"\0\0\0\0\x02BC");
        let joined = format!("{a}{b}");
        let got = decode_text(joined.as_bytes()).unwrap_or_default();
        assert_eq!(&got[..], b"\0\0\0\0\x01A\0\0\0\0\x02BC");
        assert!(decode_text(b"abc").is_err());
        // Encoding in pieces of any size gives the one-shot encoding.
        let call = WebCall {
            text: true,
            origin: None,
        };
        let mut w = WebBody::new(&call);
        let mut out = Vec::new();
        for piece in [&b"\0\0"[..], b"\0\0\x03", b"xyz", b"w"] {
            out.extend_from_slice(&w.data(Bytes::copy_from_slice(piece)));
        }
        out.extend_from_slice(&w.end(b"Grpc-Status: 0\r\ngrpc-message: ok\r\n"));
        let decoded = STANDARD.decode(&out).unwrap_or_default();
        let mut want = b"\0\0\0\0\x03xyzw".to_vec();
        let block = b"grpc-status:0\r\ngrpc-message:ok\r\n";
        want.push(0x80);
        want.extend_from_slice(&(block.len() as u32).to_be_bytes());
        want.extend_from_slice(block);
        assert_eq!(decoded, want);
    }
}
