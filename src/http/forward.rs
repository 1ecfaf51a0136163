//! The retry loop of one request: the cluster's request limit, the head
//! serialised once, the endpoint order, and retries with back-off under
//! the cluster's budget. One try (endpoint choice skipping ejected and
//! unhealthy endpoints, connect failover, the exchange, its outcome fed to
//! outlier detection) is `attempt::Try`.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use super::attempt::{Try, TryError};
use super::codec::{Framing, RequestHead};
use super::downstream::Downstream;
use super::error::HttpError;
use super::exchange::{Forward, Next, UpstreamRecord};
use super::retries::{backoff, Held, Retries};
use super::serialize::{per_try, serialize_request};
use crate::metrics::ClusterCells;
use crate::resilience::worker_share;
use crate::resilience::{retry::idempotent, Overflow};
use crate::upstream::balance::{cookie, hash64};
use crate::upstream::{AttemptOrder, Availability, Cluster, Endpoint, HashOn};
use crate::worker::ctx::WorkerCtx;

/// Forward the request (and its body, read from `conn`) to cluster
/// `cluster_name`, retrying as the route's `retry` allows. On error the
/// caller decides, through `error::keeps_connection`, whether the client
/// connection stays open.
pub async fn forward(
    req: Forward<'_>,
    cluster_name: &str,
    conn: &mut Downstream,
    out: &mut UpstreamRecord,
) -> Result<Next, HttpError> {
    let ctx = req.ctx;
    let Some(cluster) = req.snapshot.clusters.get(cluster_name) else {
        return Err(HttpError::NoUpstream(format!("no cluster {cluster_name}")));
    };
    let cells = cluster.stats.worker(ctx.index);
    let (_request, availability) = request_slot(ctx, cluster, cells)?;
    // An original-destination cluster has one endpoint per connection:
    // where the client meant to go.
    let dynamic;
    let endpoints: &[Endpoint] = if cluster.original_destination {
        let Some(dst) = conn.original_dst else {
            return Err(HttpError::NoUpstream(
                "no original destination (the connection was not intercepted)".into(),
            ));
        };
        dynamic = [Endpoint::dynamic(dst, ctx.workers)];
        &dynamic
    } else {
        &cluster.endpoints
    };
    let upstream_host = endpoints
        .first()
        .map_or("localhost", |e| e.written.as_str());
    let (first, request_id) = Serialized::first(&req, conn, out, upstream_host);
    out.request_id = request_id;
    let policy = req.route.retry.as_ref().filter(|p| p.attempts > 0);
    let body = match (req.body, policy) {
        (Some(b), _) => Some(b.clone()),
        (None, Some(p)) => super::kept_body::buffer_body(req.head, conn, p.max_body_bytes).await?,
        (None, None) => None,
    };
    let body_kept = req.head.framing == Framing::None || body.is_some();
    let retries = Retries::new(
        ctx,
        cluster,
        policy,
        idempotent(&req.head.method),
        body_kept,
    );
    let deadline = req.timeout.map(|t| req.started + t);
    let key = cluster
        .balance
        .hashes()
        .then(|| request_key(&cluster.hash_on, req.head, conn.peer))
        .flatten();
    let mut order = if cluster.original_destination {
        AttemptOrder::single()
    } else {
        ctx.balancers.attempt_order(cluster, key)
    };
    let mut failed: Option<usize> = None;
    loop {
        let attempt = retries.done.get() + 1;
        let (client_span, bytes) = first.for_try(attempt, out);
        let try_started = Instant::now();
        out.head_at.set(None);
        out.grpc_status.set(None);
        out.grpc_message.borrow_mut().take();
        let _retry = (attempt > 1).then(|| Held::new(&cells.breaker_retries));
        let t = Try {
            req,
            endpoints,
            key,
            cluster,
            availability,
            retries: &retries,
            deadline,
        };
        let result = t
            .run(&mut order, &mut failed, conn, out, bytes, body.clone())
            .await;
        if let Some(span_id) = client_span {
            export_try_span(ctx, cluster, out, (span_id, attempt, try_started), &result);
        }
        let ended = match result {
            Ok(next) => {
                if attempt > 1 && !retries.still_failing(out.status.get(), out.grpc_status.get()) {
                    cells.retries_succeeded.inc();
                }
                Ok(next)
            }
            Err(TryError::Fatal(e)) => Err(e),
            Err(TryError::Retriable(e)) if !retries.grant() => Err(e),
            Err(TryError::Granted(e) | TryError::Retriable(e)) => {
                tracing::debug!(cluster = %cluster.name, error = %e, attempt, "retrying");
                backoff(ctx, &retries, deadline).await;
                continue;
            }
        };
        out.attempts.set(attempt);
        out.retry_flag.set(retries.refused.get());
        return ended;
    }
}

/// The cluster's `max_requests` breaker (the request is counted while the
/// guard lives) and whether any endpoint may take traffic.
fn request_slot<'c>(
    ctx: &WorkerCtx,
    cluster: &Cluster,
    cells: &'c ClusterCells,
) -> Result<(Held<'c>, Availability), HttpError> {
    if cells.breaker_requests.get()
        >= worker_share(cluster.breaker.max_requests, ctx.workers, ctx.index)
    {
        cells.overflow[Overflow::Requests.index()].inc();
        return Err(HttpError::Overflow(Overflow::Requests));
    }
    let request = Held::new(&cells.breaker_requests);
    let now = crate::resilience::now_ms();
    cells.budget.deposit(now);
    let availability = cluster.availability(now);
    if availability == Availability::None {
        return Err(HttpError::NoHealthyUpstream);
    }
    Ok((request, availability))
}

/// The request head as serialised once for every try of a request.
struct Serialized {
    head: Bytes,
    /// The first try's client span (when tracing), whose context the
    /// head carries, and the length of those trace headers.
    span: Option<[u8; 8]>,
    trace_len: usize,
}

impl Serialized {
    /// Serialise the head for `upstream_host`, with the first try's span
    /// context in it (no second copy); the request id sent.
    fn first(
        req: &Forward<'_>,
        conn: &Downstream,
        out: &UpstreamRecord,
        upstream_host: &str,
    ) -> (Serialized, super::serialize::RequestId) {
        let span = out.trace.as_ref().map(|_| crate::trace::new_span_id());
        let trace_headers = match (&out.trace, span) {
            (Some(t), Some(id)) => t.headers_for(id),
            _ => Vec::new(),
        };
        let (head, request_id) = serialize_request(
            req.head,
            req.route,
            conn.peer,
            upstream_host,
            conn.stream.is_tls(),
            conn.xfcc.as_deref(),
            out.trace.as_ref().map(|_| trace_headers.as_slice()),
        );
        let first = Serialized {
            head,
            span,
            trace_len: trace_headers.len(),
        };
        (first, request_id)
    }

    /// The head for try `attempt`: each try is a client span of its own
    /// (the upstream's spans are its children), and a retry carries its
    /// attempt count.
    fn for_try(&self, attempt: u32, out: &UpstreamRecord) -> (Option<[u8; 8]>, Bytes) {
        if attempt == 1 {
            return (self.span, self.head.clone());
        }
        let span = out.trace.as_ref().map(|_| crate::trace::new_span_id());
        let headers = match (&out.trace, span) {
            (Some(t), Some(id)) => t.headers_for(id),
            _ => Vec::new(),
        };
        (span, per_try(&self.head, attempt, self.trace_len, &headers))
    }
}

/// A sampled request's client span for one try.
fn export_try_span(
    ctx: &WorkerCtx,
    cluster: &Cluster,
    out: &UpstreamRecord,
    span: ([u8; 8], u32, Instant),
    result: &Result<Next, TryError>,
) {
    let Some(trace) = out.trace.as_ref().filter(|t| t.sampled) else {
        return;
    };
    let error = match result {
        Err(TryError::Fatal(e) | TryError::Retriable(e) | TryError::Granted(e)) => {
            Some(e.to_string())
        }
        Ok(_) => None,
    };
    ctx.export_span(super::spans::client_span(trace, span, cluster, out, error));
}

/// The hash of what `hash_on` names; `None` when the request lacks it
/// (the pick is then a weighted random one).
fn request_key(on: &HashOn, head: &RequestHead, peer: SocketAddr) -> Option<u64> {
    match on {
        HashOn::SourceIp => Some(crate::upstream::balance::ip_key(peer)),
        HashOn::Path => Some(hash64(head.path().as_bytes())),
        HashOn::Header(name) => head.header(name).map(|v| hash64(v)),
        HashOn::Cookie(name) => head
            .headers
            .iter()
            .filter(|h| h.is("cookie"))
            .filter_map(|h| std::str::from_utf8(&h.value).ok())
            .find_map(|v| cookie(v, name))
            .map(|v| hash64(v.as_bytes())),
    }
}
