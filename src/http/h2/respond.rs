//! Responses on an HTTP/2 stream: the upstream's (head, body, trailers),
//! `direct_response` routes, and the proxy's own errors.

use bytes::{Bytes, BytesMut};

use super::convert;
use crate::http::body::BodySink;
use crate::http::codec::Framing;
use crate::http::downstream::{ClientIo, Downstream};
use crate::http::error::{error_body, HttpError};
use crate::http::exchange::{Exchange, Next};
use crate::http::upconn::UpConn;

impl Exchange<'_> {
    /// Send the upstream's response to an HTTP/2 client: its head, its body
    /// within the stream's window, its trailers; pool the upstream
    /// connection when it is clean.
    pub(in crate::http) async fn respond_h2(
        &self,
        conn: &mut Downstream,
        up: UpConn,
        up_buf: BytesMut,
        mut resp: crate::http::codec::ResponseHead,
    ) -> Result<Next, HttpError> {
        let framing = resp.framing(self.req.head.is_head())?;
        if let Some(call) = self.req.web {
            crate::http::grpc_web::translate_response(&mut resp, call);
        }
        let length;
        let mut fields: Vec<(&[u8], &[u8])> = Vec::new();
        match framing {
            // gRPC-Web bodies grow by the trailer frame.
            Framing::Length(_) if self.req.web.is_some() => {}
            Framing::Length(n) => {
                length = n.to_string();
                fields.push((b"content-length", length.as_bytes()));
            }
            // HEAD and 304 keep the upstream's content-length.
            Framing::None => {
                if let Some(cl) = resp.header("content-length") {
                    if resp.status != 204 {
                        fields.push((b"content-length", cl));
                    }
                }
            }
            Framing::Chunked | Framing::UntilClose => {}
        }
        let head = convert::response_of(&resp, self.req.route, &fields);
        let end = framing == Framing::None;
        conn.responded = true;
        send_head(conn, head, end)?;
        let mut sink = BodySink {
            conn,
            chunked_out: false,
            web: self.req.web.map(crate::http::grpc_web::WebBody::new),
        };
        self.copy_body(up, up_buf, &mut sink, framing, resp.keep_alive)
            .await?;
        Ok(Next::KeepAlive)
    }
}

fn send_head(conn: &mut Downstream, head: http::Response<()>, end: bool) -> Result<(), HttpError> {
    match &mut conn.stream {
        ClientIo::H2(s) => s.send_head(head, end).map_err(HttpError::DownstreamIo),
        _ => Err(HttpError::DownstreamIo(std::io::Error::other(
            "not an HTTP/2 stream",
        ))),
    }
}

/// A whole response the proxy makes itself: head, then body (none for
/// HEAD requests).
pub(in crate::http) async fn respond_whole(
    conn: &mut Downstream,
    status: u16,
    fields: &[(&[u8], &[u8])],
    body: Bytes,
    head_only: bool,
) -> Result<(), HttpError> {
    let length = body.len().to_string();
    let mut all = fields.to_vec();
    if !matches!(status, 204 | 304) {
        all.push((b"content-length", length.as_bytes()));
    }
    let head = convert::response(status, all.into_iter());
    let empty = body.is_empty() || head_only;
    conn.responded = true;
    send_head(conn, head, empty)?;
    if empty {
        return Ok(());
    }
    let n = body.len() as u64;
    let timeout = conn.send_timeout;
    let at = conn.deadlines.after(timeout);
    let deadlines = conn.deadlines.clone();
    let ClientIo::H2(s) = &mut conn.stream else {
        return Ok(());
    };
    deadlines
        .within(at, s.send_data(body, true))
        .await
        .map_err(|_| HttpError::SendTimeout)?
        .map_err(HttpError::client_write)?;
    conn.bytes_out += n;
    Ok(())
}

/// The proxy's own error, as an HTTP/2 response.
pub(in crate::http) async fn respond_error(conn: &mut Downstream, err: &HttpError) {
    let Some(status) = err.status() else { return };
    let (body, retry_after) = error_body(err);
    let retry = retry_after.map(|s| s.to_string());
    let mut fields: Vec<(&[u8], &[u8])> = vec![
        (b"content-type", b"text/plain"),
        (b"x-outrigger-error", err.code().as_bytes()),
    ];
    if let Some(r) = &retry {
        fields.push((b"retry-after", r.as_bytes()));
    }
    let _ = respond_whole(conn, status, &fields, Bytes::from(body), false).await;
}
