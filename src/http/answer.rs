//! The proxy's own answers: an error in place of a response (HTTP/1.1,
//! HTTP/2 or gRPC, deciding whether the connection stays open) and a
//! route's `direct_response`.

use std::io::Write as _;

use super::codec::RequestHead;
use super::downstream::Downstream;
use super::error::{error_response, keeps_connection, reason, ErrorContext, HttpError};
use super::exchange::Next;
use super::grpc_answer;
use super::record::RequestRecord;
use crate::worker::ctx::WorkerCtx;

/// Answer with the proxy's own error (when nothing was sent yet), record
/// it, and decide, in the one place that does, whether the connection
/// stays open.
pub(super) async fn fail(
    ctx: &WorkerCtx,
    rec: &mut RequestRecord<'_>,
    conn: &mut Downstream,
    head: &RequestHead,
    error: HttpError,
) -> Next {
    rec.flags = error.flag();
    let keep = keeps_connection(
        &error,
        ErrorContext {
            body_complete: conn.body_complete,
            response_started: conn.responded,
            client_keep_alive: head.keep_alive && !ctx.closing(&conn.handle),
        },
    );
    // A response already under way cannot be replaced by an error.
    if let (Some(status), false) = (error.status(), conn.responded) {
        if grpc_answer::is_grpc(head) {
            // gRPC clients read the outcome from grpc-status (HTTP 200).
            let code = error.grpc_code();
            rec.status = 200;
            rec.grpc_status = Some(code as u8);
            let origins = rec.route.and_then(|r| r.grpc_web.as_deref());
            grpc_answer::grpc_error(conn, head, origins, &error, code, !keep).await;
        } else {
            rec.status = status;
            respond_error(conn, &error, !keep).await;
        }
    }
    if keep {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// Answer a `direct_response` route. The request body, if any, is not read,
/// so such connections close afterwards.
pub(super) async fn direct(
    conn: &mut Downstream,
    head: &RequestHead,
    status: u16,
    body: &bytes::Bytes,
    draining: bool,
) -> Result<Next, HttpError> {
    if conn.stream.is_h2() {
        let fields: &[(&[u8], &[u8])] = &[(b"content-type", b"text/plain")];
        super::h2::respond::respond_whole(conn, status, fields, body.clone(), head.is_head())
            .await?;
        return Ok(Next::KeepAlive);
    }
    let close = !conn.body_complete || !head.keep_alive || draining;
    // 204 and 304 have no body and no content-length (config refuses a
    // body for them).
    let bodiless = matches!(status, 204 | 304);
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
    if !bodiless {
        let _ = write!(
            out,
            "content-length: {}\r\ncontent-type: text/plain\r\n",
            body.len()
        );
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head.is_head() && !bodiless {
        out.extend_from_slice(body);
    }
    conn.responded = true;
    conn.write_vec(out).await?;
    Ok(if close { Next::Close } else { Next::KeepAlive })
}

/// Send the proxy's own error response (when the client can still take one).
pub async fn respond_error(conn: &mut Downstream, err: &HttpError, close: bool) {
    if err.status().is_none() {
        return;
    }
    if conn.stream.is_h2() {
        return super::h2::respond::respond_error(conn, err).await;
    }
    conn.responded = true;
    let _ = conn.write_vec(error_response(err, close)).await;
}
