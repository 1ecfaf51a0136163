//! Request mirroring (route `mirror`): a copy of the request, head and
//! body, goes to each mirror cluster that draws it, on a task of its own;
//! the mirror's answer is read and dropped. The primary request is never
//! delayed beyond reading a body it would send anyway (at most
//! `mirror_body_limit`, kept in memory once for both), never failed and
//! never changed by a mirror: a slow, dead or overloaded mirror only
//! costs its own task, bounded in number (`max_active`) and in time (the
//! route's `timeout`, else [`MIRROR_TIMEOUT`]).

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use monoio::net::TcpStream;

use super::codec::{Framing, RequestHead};
use super::downstream::Downstream;
use super::error::HttpError;
use super::serialize::serialize_request;
use super::upconn::UpConn;
use crate::resilience::worker_share;
use crate::route::fault::PER_MILLION;
use crate::route::mirror::shadow_host;
use crate::route::Route;
use crate::snapshot::Snapshot;
use crate::upstream::Cluster;
use crate::worker::ctx::WorkerCtx;

/// How long a mirrored exchange may take when the route has no timeout.
pub const MIRROR_TIMEOUT: Duration = Duration::from_secs(15);

/// Draw the route's mirrors for this request and start the copies. A body
/// is read whole first (when one is mirrored and it fits the limit); it is
/// returned in `body` for the primary to send. Only reading the client's
/// body can fail, as it would for the primary.
pub(super) async fn start(
    ctx: &Rc<WorkerCtx>,
    snapshot: &Snapshot,
    route: &Route,
    head: &RequestHead,
    conn: &mut Downstream,
    body: &mut Option<Bytes>,
) -> Result<(), HttpError> {
    let firing: Vec<_> = route
        .mirrors
        .iter()
        .filter(|m| fastrand::u32(..PER_MILLION) < m.per_million)
        .collect();
    if firing.is_empty() {
        return Ok(());
    }
    let cells = route.stats.worker(ctx.index);
    let copy_body = match (head.framing, body.as_ref()) {
        (Framing::None, _) => Bytes::new(),
        (_, Some(b)) => b.clone(),
        _ => match super::kept_body::buffer_body(head, conn, route.mirror_body_limit).await? {
            Some(b) => {
                *body = Some(b.clone());
                b
            }
            None => {
                for _ in &firing {
                    cells.mirrors_skipped.inc();
                }
                return Ok(());
            }
        },
    };
    let request = shadow_request(head, route, conn, copy_body.len());
    let until = Instant::now() + route.timeout.unwrap_or(MIRROR_TIMEOUT);
    for m in firing {
        if cells.mirrors_active.get() >= worker_share(m.max_active, ctx.workers, ctx.index) {
            cells.mirrors_dropped.inc();
            continue;
        }
        let Some(cluster) = snapshot.clusters.get(&m.cluster).cloned() else {
            cells.mirrors_failed.inc();
            continue;
        };
        cells.mirrors_active.inc();
        let (ctx, stats) = (ctx.clone(), route.stats.clone());
        let (request, copy_body) = (request.clone(), copy_body.clone());
        monoio::spawn(async move {
            let answered = send(&ctx, &cluster, request, copy_body, until).await;
            let c = stats.worker(ctx.index);
            c.mirrors_active.dec();
            if answered {
                c.mirrors_sent.inc();
            } else {
                c.mirrors_failed.inc();
                tracing::debug!(cluster = %cluster.name, "mirrored request got no answer");
            }
        });
    }
    Ok(())
}

/// The copy's head: the Host with `-shadow` appended, the body (if any)
/// with a content-length, and `connection: close` (one exchange each).
fn shadow_request(head: &RequestHead, route: &Route, conn: &Downstream, body_len: usize) -> Bytes {
    let mut copy = head.clone();
    copy.headers
        .retain(|h| !h.is("content-length") && !h.is("transfer-encoding"));
    let host = head.host().unwrap_or("").to_string();
    for h in copy.headers.iter_mut().filter(|h| h.is("host")) {
        h.value = Bytes::from(shadow_host(&host));
    }
    copy.framing = if matches!(head.framing, Framing::None) {
        Framing::None
    } else {
        Framing::Length(body_len as u64)
    };
    copy.expect_continue = false;
    copy.upgrade_websocket = false;
    let (bytes, _) = serialize_request(
        &copy,
        route,
        conn.peer,
        &shadow_host(&host),
        conn.stream.is_tls(),
        conn.xfcc.as_deref(),
        None,
    );
    // The serialised head ends with its blank line: close after this one.
    let mut out = BytesMut::with_capacity(bytes.len() + 19);
    out.extend_from_slice(&bytes[..bytes.len() - 2]);
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.freeze()
}

/// One mirrored exchange: a usable endpoint of the cluster, a new
/// connection (TLS when the cluster has it), the copy, and the answer read
/// to its end and dropped. Whether an answer came, within `until`.
async fn send(
    ctx: &WorkerCtx,
    cluster: &Cluster,
    request: Bytes,
    body: Bytes,
    until: Instant,
) -> bool {
    let head_request = request.starts_with(b"HEAD ");
    let now = crate::resilience::now_ms();
    let mut order = ctx.balancers.attempt_order(cluster, None);
    let Some(i) = order.find(|&i| cluster.endpoints[i].health.usable(now)) else {
        return false;
    };
    let ep = &cluster.endpoints[i];
    let exchange = async {
        let s = TcpStream::connect_addr(ep.address).await.ok()?;
        let _ = s.set_nodelay(true);
        let mut c = match &cluster.tls {
            None => UpConn::Plain(s),
            Some(tls) => {
                let name = tls.name_for(&ep.written)?;
                UpConn::Tls(Box::new(crate::tls::connect(s, tls, name).await.ok()?))
            }
        };
        let left = until.saturating_duration_since(Instant::now());
        c.write_all(request, &ctx.deadlines, left).await.ok()?;
        if !body.is_empty() {
            c.write_all(body, &ctx.deadlines, left).await.ok()?;
        }
        read_answer(&mut c, head_request).await
    };
    matches!(ctx.deadlines.within(until, exchange).await, Ok(Some(())))
}

/// Read more of the answer into `buf`; `None` at the end or on an error.
async fn more(c: &mut UpConn, buf: BytesMut) -> Option<BytesMut> {
    let (res, buf) = c.read_more(buf, 16 * 1024).await;
    match res {
        Ok(n) if n > 0 => Some(buf),
        _ => None,
    }
}

/// Read one response to its end (its framing, or the close), dropping it.
async fn read_answer(c: &mut UpConn, head_request: bool) -> Option<()> {
    use super::chunked::{Chunk, ChunkedDecoder};
    use super::codec::{parse_response, HeadLimits};
    let limits = HeadLimits {
        max_head_bytes: 64 * 1024,
        max_headers: 256,
    };
    let mut buf = BytesMut::new();
    let head = loop {
        match parse_response(&mut buf, limits).ok()? {
            Some(h) if (100..200).contains(&h.status) => continue,
            Some(h) => break h,
            None => buf = more(c, buf).await?,
        }
    };
    match head.framing(head_request).ok()? {
        Framing::None => Some(()),
        Framing::Length(n) => {
            let mut left = n;
            loop {
                let take = (buf.len() as u64).min(left) as usize;
                let _ = buf.split_to(take);
                left -= take as u64;
                if left == 0 {
                    return Some(());
                }
                buf = more(c, buf).await?;
            }
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::default();
            loop {
                match decoder.decode(&mut buf).ok()? {
                    Some(Chunk::Data(_)) => {}
                    Some(Chunk::End(_)) => return Some(()),
                    None => buf = more(c, buf).await?,
                }
            }
        }
        Framing::UntilClose => loop {
            buf.clear();
            match more(c, buf).await {
                Some(b) => buf = b,
                None => return Some(()),
            }
        },
    }
}
