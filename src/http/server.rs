//! The downstream side: one task per client connection, reading request
//! heads, routing each request on the current snapshot, and answering
//! each (`request`). Keep-alive and pipelined requests
//! are answered in order, one at a time.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use monoio::net::TcpStream;

use super::answer::respond_error;
use super::downstream::{ClientIo, Downstream};
use super::exchange::Next;
use super::head::{read_head, Phase, Read};
use super::record::{Mark, RequestRecord};
use super::request::{handle_request, AcceptedOn};
use crate::snapshot::{Listener, Snapshot};
use crate::worker::ctx::{ListenerHandle, WorkerCtx};

/// Serve HTTP/1.1 on one accepted connection until it closes or idles
/// past the warm window; `Some` is the idle connection to park.
pub async fn serve_connection(
    ctx: &Rc<WorkerCtx>,
    handle: &Rc<ListenerHandle>,
    accept_snapshot: &Arc<Snapshot>,
    listener: &Listener,
    incoming: super::downstream::Incoming,
) -> Option<(Downstream, Duration)> {
    let super::downstream::Incoming {
        stream,
        peer,
        original_dst,
        early,
    } = incoming;
    let http = &listener.http;
    // Bytes protocol detection read belong to the first request.
    let early_len = early.len() as u64;
    let peer_cert = listener
        .tls
        .as_ref()
        .and_then(|t| stream.peer_cert(t).map(|p| (p, t)));
    let (peer_identity, xfcc) = match peer_cert {
        Some((p, t)) => (
            p.identity.as_deref().map(Rc::from),
            Some(Rc::from(p.xfcc(t.own_id.as_deref()))),
        ),
        None => (None, None),
    };
    let conn = Downstream {
        original_dst,
        peer_identity,
        xfcc,
        stream,
        // Bytes protocol detection already read.
        buf: early,
        peer,
        bytes_in: early_len,
        bytes_out: 0,
        handle: handle.clone(),
        responded: false,
        body_complete: true,
        send_timeout: http.send_timeout,
        body_timeout: http.request_body_timeout,
        deadlines: ctx.deadlines.clone(),
    };
    // HTTP/2 chosen by ALPN.
    if let ClientIo::Tls(t) = &conn.stream {
        if http.http2.is_some() && t.conn.alpn_protocol() == Some(b"h2") {
            super::h2::serve(ctx, handle, accept_snapshot, listener, conn).await;
            return None;
        }
    }
    serve_requests(
        ctx,
        handle,
        accept_snapshot,
        listener,
        conn,
        Phase::New,
        early_len,
    )
    .await
}

/// Serve the requests of a connection, from its first or (resumed after
/// parking) its next one.
pub async fn serve_requests(
    ctx: &Rc<WorkerCtx>,
    handle: &Rc<ListenerHandle>,
    accept_snapshot: &Arc<Snapshot>,
    listener: &Listener,
    mut conn: Downstream,
    mut phase: Phase,
    mut early_len: u64,
) -> Option<(Downstream, Duration)> {
    let accepted = AcceptedOn {
        snapshot: accept_snapshot,
        listener,
    };
    loop {
        let mut mark = Mark::of(&conn);
        mark.bytes_in -= std::mem::take(&mut early_len);
        let head = match read_head(ctx, handle, &mut conn, listener, phase).await {
            Ok(Read::Head(h)) => h,
            Ok(Read::Closed) => return None,
            Ok(Read::Idle(left)) => return Some((conn, left)),
            Ok(Read::Http2) => {
                Box::pin(super::h2::serve(
                    ctx,
                    handle,
                    accept_snapshot,
                    listener,
                    conn,
                ))
                .await;
                return None;
            }
            Err(e) => {
                // Like nginx's error log: the cause, never the client's bytes.
                tracing::debug!(client = %conn.peer, listener = %listener.name, error = %e, "request head rejected");
                Box::pin(respond_error(&mut conn, &e, true)).await;
                let mut rec = RequestRecord::new(listener, mark);
                if conn.responded {
                    rec.status = e.status().unwrap_or(0);
                }
                rec.flags = e.flag();
                rec.finish(ctx, &ctx.current(), &conn, None);
                return None;
            }
        };
        // Not boxed: boxing this future would shrink an idle connection's
        // task (docs/benchmarks.md, idle memory) but costs an allocation and
        // a copy of several KiB per request (measured +1.8 µs CPU/request).
        match handle_request(ctx, handle, accepted, &mut conn, head, mark).await {
            Next::KeepAlive if !ctx.closing(handle) => {}
            Next::KeepAlive | Next::Close => return None,
            Next::Upgrade(up, up_buf) => {
                Box::pin(tunnel(ctx, listener, conn, up, up_buf)).await;
                return None;
            }
        }
        // The read buffer is kept through the warm window and reused for
        // the next request (the request's head, which shared it, is gone):
        // no allocation per request. A parked connection holds none.
        phase = Phase::Served;
    }
}

/// After a 101: relay raw bytes both ways, starting with what each side
/// sent beyond the HTTP exchange.
async fn tunnel(
    ctx: &Rc<WorkerCtx>,
    listener: &Listener,
    mut conn: Downstream,
    mut up: TcpStream,
    up_buf: BytesMut,
) {
    if !conn.buf.is_empty() {
        let early = std::mem::take(&mut conn.buf).freeze();
        if crate::sockio::write_bytes(&mut up, early).await.is_err() {
            return;
        }
    }
    if !up_buf.is_empty() && conn.write_bytes(up_buf.freeze()).await.is_err() {
        return;
    }
    let outcome = match conn.stream {
        ClientIo::Plain(stream) => {
            crate::tcp::relay(
                stream,
                up,
                listener.idle_timeout,
                crate::tcp::SpliceMode::Never,
                ctx.driver,
                &ctx.buffers,
                &ctx.deadlines,
            )
            .await
        }
        ClientIo::Tls(tls) => {
            let m = crate::tls::relay::relay(
                *tls,
                up,
                listener.idle_timeout,
                listener.http.send_timeout,
                &ctx.deadlines,
            )
            .await;
            crate::tcp::RelayOutcome {
                downstream_to_upstream: m.tls_to_plain,
                upstream_to_downstream: m.plain_to_tls,
                idle_timeout: m.idle_timeout,
                ..crate::tcp::RelayOutcome::default()
            }
        }
        // HTTP/2 requests never carry an upgrade.
        ClientIo::H2(_) => return,
    };
    let cells = listener.stats.worker(ctx.index);
    cells.bytes_in.add(outcome.downstream_to_upstream);
    cells.bytes_out.add(outcome.upstream_to_downstream);
}
