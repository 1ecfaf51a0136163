//! The request path's gRPC and gRPC-Web pieces: which requests are gRPC
//! calls, the translation of a gRPC-Web call before it is forwarded, and
//! the answers the proxy makes itself in gRPC form (errors as trailers-only
//! responses, CORS preflights), in either client protocol.

use bytes::Bytes;

use super::codec::{Framing, RequestHead};
use super::downstream::Downstream;
use super::error::HttpError;
use super::exchange::Next;
use super::grpc_web::{self, WebCall};
use crate::snapshot::HttpSettings;

/// Largest gRPC-Web text body read whole (to decode it) when the listener
/// sets no `max_request_body_bytes`.
const WEB_TEXT_MAX_BODY: u64 = 4 * 1024 * 1024;

/// A gRPC call: `content-type: application/grpc*` or gRPC-Web.
pub(super) fn is_grpc(head: &RequestHead) -> bool {
    head.header("content-type")
        .is_some_and(|v| crate::grpc::is_grpc(v) || grpc_web::web_kind(v).is_some())
}

/// What a request on a `grpc_web` route is.
pub(super) enum Web {
    /// Not gRPC-Web: forwarded as it is.
    Plain,
    /// A CORS preflight: answered by the proxy.
    Preflight,
    /// A gRPC-Web call: the gRPC request to forward, its body when it was
    /// read whole (`-text`, decoded), and how to answer.
    Call(RequestHead, Option<Bytes>, WebCall),
}

/// Classify (and for a call, translate) a request on a `grpc_web` route
/// allowing CORS `origins`.
pub(super) async fn web_request(
    head: &RequestHead,
    conn: &mut Downstream,
    http: &HttpSettings,
    origins: &[String],
) -> Result<Web, HttpError> {
    if grpc_web::is_preflight(head) {
        return Ok(Web::Preflight);
    }
    let Some(text) = head
        .header("content-type")
        .and_then(|v| grpc_web::web_kind(v))
    else {
        return Ok(Web::Plain);
    };
    let body = if text {
        let max = http.max_request_body_bytes.unwrap_or(WEB_TEXT_MAX_BODY);
        match super::kept_body::buffer_body(head, conn, max).await? {
            Some(b) => Some(b),
            None if head.framing == Framing::None => Some(Bytes::new()),
            None => return Err(HttpError::BodyTooLarge),
        }
    } else {
        None
    };
    let (translated, body) = grpc_web::translate_request(head, body)?;
    let call = WebCall {
        text,
        origin: head
            .header("origin")
            .filter(|o| grpc_web::origin_allowed(origins, o))
            .cloned(),
    };
    Ok(Web::Call(translated, body, call))
}

/// Answer a CORS preflight on a gRPC-Web route (204; the CORS fields only
/// when the origin is allowed).
pub(super) async fn preflight(
    conn: &mut Downstream,
    head: &RequestHead,
    origins: &[String],
) -> Next {
    let fields = grpc_web::preflight_fields(head, origins);
    let fields: Vec<(&[u8], &[u8])> = fields.iter().map(|(n, v)| (*n, &v[..])).collect();
    let close = !conn.body_complete || !head.keep_alive;
    match head_only(conn, 204, &fields, close).await {
        Ok(()) if !close => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// The proxy's own error for a gRPC call: a trailers-only response, HTTP
/// 200 with `grpc-status` and `grpc-message` (the error's code).
pub(super) async fn grpc_error(
    conn: &mut Downstream,
    head: &RequestHead,
    web_origins: Option<&[String]>,
    err: &HttpError,
    code: crate::grpc::Code,
    close: bool,
) {
    let status = (code as u8).to_string();
    let web = head
        .header("content-type")
        .and_then(|v| grpc_web::web_kind(v))
        .is_some();
    let content_type: &[u8] = if web {
        b"application/grpc-web+proto"
    } else {
        b"application/grpc"
    };
    let mut fields: Vec<(&[u8], &[u8])> = vec![
        (b"content-type", content_type),
        (b"grpc-status", status.as_bytes()),
        (b"grpc-message", err.code().as_bytes()),
        (b"x-outrigger-error", err.code().as_bytes()),
    ];
    // A browser reads a cross-origin error only with the CORS fields.
    let origin = head
        .header("origin")
        .filter(|o| web && web_origins.is_some_and(|list| grpc_web::origin_allowed(list, o)));
    if let Some(o) = origin {
        fields.push((b"access-control-allow-origin", o));
        fields.push((
            b"access-control-expose-headers",
            b"grpc-status, grpc-message",
        ));
    }
    let _ = head_only(conn, 200, &fields, close).await;
}

/// A response with no body, in the client's protocol (`close`: HTTP/1.1
/// `connection: close`; HTTP/2 ends only the stream).
async fn head_only(
    conn: &mut Downstream,
    status: u16,
    fields: &[(&[u8], &[u8])],
    close: bool,
) -> Result<(), HttpError> {
    if conn.stream.is_h2() {
        return super::h2::respond::respond_whole(conn, status, fields, Bytes::new(), false).await;
    }
    let mut out = format!("HTTP/1.1 {status} {}\r\n", super::error::reason(status)).into_bytes();
    if status != 204 {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    for (n, v) in fields {
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    conn.responded = true;
    conn.write_vec(out).await
}
