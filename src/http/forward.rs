//! The retry loop of one request: circuit-breaker limits, endpoint choice
//! (skipping ejected and unhealthy endpoints), connect failover, retries
//! with back-off under the cluster's budget, and the outcome of every try
//! fed to outlier detection. One try's exchange is `proxy::Exchange`.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use monoio::net::TcpStream;

use super::codec::{Framing, RequestHead};
use super::downstream::Downstream;
use super::error::HttpError;
use super::exchange::{Exchange, ExchangeError, Forward, Next, Timing, UpstreamRecord};
use super::h2::upstream::{handshake, Transport};
use super::pool::{Lease, PoolKey};
use super::retries::{backoff, Held, Retries};
use super::serialize::{per_try, serialize_request};
use super::upconn::UpConn;
use crate::metrics::{Active, ClusterCells};
use crate::resilience::health::Outcome;
use crate::resilience::worker_share;
use crate::resilience::{retry::idempotent, Overflow, RetryOn};
use crate::upstream::balance::{cookie, hash64};
use crate::upstream::{AttemptOrder, Availability, Cluster, Endpoint, HashOn, UpstreamProtocol};
use crate::worker::ctx::WorkerCtx;

/// How one try ended, when it did not produce the response.
enum TryError {
    /// Return this to the client.
    Fatal(HttpError),
    /// May be retried if the budget allows.
    Retriable(HttpError),
    /// A retry was already granted (a retriable status; its response was
    /// dropped).
    Granted(HttpError),
}

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
    let (_request, availability) = admit(ctx, cluster, cells)?;
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
fn admit<'c>(
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

/// One try: the next usable endpoint, failing over to the others while
/// connecting fails (nothing was sent), as the cluster always has.
struct Try<'a> {
    req: Forward<'a>,
    /// The cluster's endpoints, or the one original destination.
    endpoints: &'a [Endpoint],
    /// ring_hash and maglev: the request's key.
    key: Option<u64>,
    cluster: &'a Cluster,
    availability: Availability,
    retries: &'a Retries<'a>,
    deadline: Option<Instant>,
}

impl Try<'_> {
    /// The next endpoint to try: in the balancer's order, skipping those
    /// that may not take traffic; a new order once this one is used up,
    /// avoiding the endpoint that failed last when there is another.
    fn next_endpoint(&self, order: &mut AttemptOrder, failed: Option<usize>) -> Option<usize> {
        let n = self.endpoints.len();
        let now = crate::resilience::now_ms();
        let usable = |i: usize| {
            self.availability == Availability::All || self.endpoints[i].health.usable(now)
        };
        if let Some(i) = order.by_ref().find(|&i| usable(i)) {
            return Some(i);
        }
        *order = if self.cluster.original_destination {
            AttemptOrder::single()
        } else {
            self.req.ctx.balancers.attempt_order(self.cluster, self.key)
        };
        let mut fresh = order.clone().filter(|&i| usable(i));
        let first = fresh.next()?;
        match (failed, fresh.next()) {
            (Some(f), Some(other)) if f == first && n > 1 => {
                order.find(|&i| i == other);
                Some(other)
            }
            _ => {
                order.find(|&i| i == first);
                Some(first)
            }
        }
    }

    async fn run(
        &self,
        order: &mut AttemptOrder,
        failed: &mut Option<usize>,
        conn: &mut Downstream,
        out: &mut UpstreamRecord,
        request: Bytes,
        body: Option<Bytes>,
    ) -> Result<Next, TryError> {
        let ctx = self.req.ctx;
        let cluster = self.cluster;
        let cells = cluster.stats.worker(ctx.index);
        // Only a failure names it: no allocation on the way that works.
        let mut last_error: Option<String> = None;
        // A connect failed because the upstream's SVID named an identity
        // the cluster does not accept: said so in the answer and the log.
        let mut identity_refused = false;
        let per_try = self
            .retries
            .policy
            .and_then(|p| p.per_try_timeout)
            .map(|t| Instant::now() + t);
        for _ in 0..self.endpoints.len() {
            let Some(index) = self.next_endpoint(order, *failed) else {
                break;
            };
            let endpoint = &self.endpoints[index];
            let addr = endpoint.address;
            let ecells = endpoint.stats.worker(ctx.index);
            out.address.set(Some(addr));
            // After a pooled connection turned out dead, one more go on a
            // new connection to the same endpoint (not a retry: the upstream
            // never saw the request).
            let mut fresh = false;
            loop {
                let (stream, reused) = match self
                    .checkout(cells, addr, &endpoint.written, fresh, &out.timing)
                    .await
                {
                    Ok(s) => s,
                    Err(Checkout::Overflow(o)) => {
                        cells.overflow[o.index()].inc();
                        return Err(TryError::Fatal(HttpError::Overflow(o)));
                    }
                    Err(Checkout::Failed(e)) => {
                        if let Some(id) = crate::tls::spiffe::refused_identity(&e) {
                            identity_refused = true;
                            crate::tls::spiffe::warn_refused_identity(&cluster.name, addr, id);
                        }
                        let error = format!("{addr}: {e}");
                        cells.connect_failures.inc();
                        ecells.error(error.clone());
                        last_error = Some(error);
                        cluster.record_outcome(ctx.index, index, Outcome::ConnectFailure);
                        *failed = Some(index);
                        break;
                    }
                };
                if reused {
                    let key = PoolKey::new(addr, cluster.tls.as_deref());
                    ecells.pooled.set(ctx.http_pool.idle_count(key) as u64);
                } else {
                    cells.connections_opened.inc();
                }
                let _in_flight = ctx.balancers.track(addr);
                let _active = Active::new(cells, ecells);
                let exchange = Exchange {
                    req: self.req,
                    cluster,
                    addr,
                    deadline: self.deadline,
                    head_deadline: per_try,
                    out,
                    body: body.clone(),
                    retry: Some(self.retries),
                };
                let sent = Instant::now();
                out.sent.set(Some(sent));
                if !reused {
                    if let Some(d) = out.timing.connected.get() {
                        cells
                            .connect_duration
                            .record(d + out.timing.tls.get().unwrap_or_default());
                    }
                }
                let result = match stream {
                    Checked::H1(s) => exchange.run(conn, s, request.clone()).await,
                    Checked::H2(lease) => exchange.run_h2(conn, lease, request.clone()).await,
                };
                self.record(index, reused, sent, out, &result);
                match self.verdict(index, reused && !fresh, conn, result) {
                    Verdict::Fresh => fresh = true,
                    Verdict::Done(done) => {
                        if done.is_err() {
                            *failed = Some(index);
                        }
                        return done;
                    }
                }
            }
        }
        Err(self.exhausted(last_error, identity_refused))
    }

    /// Metrics, the balancer's latency estimate and outlier detection
    /// learn how the exchange with endpoint `index` went.
    fn record(
        &self,
        index: usize,
        reused: bool,
        sent: Instant,
        out: &UpstreamRecord,
        result: &Result<Next, ExchangeError>,
    ) {
        let (ctx, cluster) = (self.req.ctx, self.cluster);
        let cells = cluster.stats.worker(ctx.index);
        let endpoint = &self.endpoints[index];
        let ecells = endpoint.stats.worker(ctx.index);
        out.done.set(Some(Instant::now()));
        if let Some(head_at) = out.head_at.get() {
            cells
                .first_byte_duration
                .record(head_at.saturating_duration_since(sent));
            if cluster.balance == crate::upstream::Balance::PeakEwma {
                ctx.balancers
                    .observe(endpoint.address, head_at.saturating_duration_since(sent));
            }
        }
        cells.duration.record(sent.elapsed());
        let status = out.status.get();
        if status != 0 {
            cells.responses.inc(status);
        }
        let grpc = out.grpc_status.get();
        if let Some(g) = grpc {
            cells.grpc_responses[usize::from(g)].inc();
        }
        let outcome = match result {
            Ok(_) if status >= 500 => Outcome::Status(status),
            // A gRPC call that failed counts as a 5xx, even with 200.
            Ok(_) if grpc.is_some_and(crate::grpc::is_server_failure) => {
                Outcome::Status(crate::grpc::http_equivalent(grpc.unwrap_or(2)))
            }
            Ok(_) => Outcome::Success,
            Err(ExchangeError::RetryStatus(s)) => Outcome::Status(*s),
            Err(ExchangeError::Failed(e)) if e.side() == super::error::Side::Upstream => {
                if matches!(e, HttpError::UpstreamTimeout) {
                    cells.timeouts.inc();
                }
                ecells.error(e.to_string());
                Outcome::LocalFailure
            }
            Err(ExchangeError::Stale { error, .. }) => {
                ecells.error(error.to_string());
                Outcome::LocalFailure
            }
            Err(ExchangeError::Failed(_)) => Outcome::Success,
        };
        if !(reused && matches!(result, Err(ExchangeError::Stale { .. }))) {
            cluster.record_outcome(ctx.index, index, outcome);
        }
    }

    /// What an exchange's result means for the request: done (with the
    /// response, or an error that may be retried), or one more go on a new
    /// connection (`may_refresh`: the connection was pooled and this is
    /// not already the fresh go).
    fn verdict(
        &self,
        index: usize,
        may_refresh: bool,
        conn: &Downstream,
        result: Result<Next, ExchangeError>,
    ) -> Verdict {
        let retriable = |e: HttpError, ok: bool| {
            if ok {
                TryError::Retriable(e)
            } else {
                TryError::Fatal(e)
            }
        };
        Verdict::Done(match result {
            Ok(next) => Ok(next),
            Err(ExchangeError::Stale {
                error, replay_safe, ..
            }) if may_refresh && replay_safe => {
                let addr = self.endpoints[index].address;
                tracing::debug!(upstream = %addr, %error, "pooled connection was closed; retrying on a new one");
                return Verdict::Fresh;
            }
            Err(ExchangeError::RetryStatus(s)) => {
                Err(TryError::Granted(HttpError::BadResponse(status_text(s))))
            }
            Err(ExchangeError::Stale { error, unsent, .. }) => {
                let e = HttpError::UpstreamIo(error);
                let ok = self.retries.retriable_failure(&e, unsent);
                Err(retriable(e, ok))
            }
            Err(ExchangeError::Failed(e)) => {
                let ok = !conn.responded
                    && e.side() == super::error::Side::Upstream
                    && self.retries.retriable_failure(&e, false)
                    && self.deadline.map_or(true, |d| Instant::now() < d);
                Err(retriable(e, ok))
            }
        })
    }

    /// No endpoint could be reached: the last connect error (or that there
    /// were none), retriable when the route retries connect failures.
    fn exhausted(&self, last_error: Option<String>, identity_refused: bool) -> TryError {
        let last_error = last_error.unwrap_or_else(|| "no endpoints".to_owned());
        let e = if identity_refused {
            HttpError::UpstreamIdentityRefused(last_error)
        } else {
            HttpError::NoUpstream(last_error)
        };
        if self
            .retries
            .policy
            .is_some_and(|p| p.on.contains(RetryOn::CONNECT_FAILURE))
        {
            TryError::Retriable(e)
        } else {
            TryError::Fatal(e)
        }
    }

    /// A pooled connection (`true`) or a new one; `fresh` skips the pool.
    /// A new connection must fit the cluster's `max_connections` and
    /// `max_pending_requests` shares on this worker.
    async fn checkout(
        &self,
        cells: &ClusterCells,
        addr: SocketAddr,
        written: &str,
        fresh: bool,
        timing: &Timing,
    ) -> Result<(Checked, bool), Checkout> {
        let ctx = self.req.ctx;
        let cluster = self.cluster;
        let protocol = cluster.protocol.for_request(
            self.req.head.version == super::codec::Version::Http2,
            cluster.tls.is_some(),
        );
        let key = PoolKey::new(addr, cluster.tls.as_deref());
        if !fresh {
            if protocol != UpstreamProtocol::Http1 {
                if let Some(lease) = ctx.h2_pool.pick(key) {
                    return Ok((Checked::H2(lease), true));
                }
            }
            if protocol != UpstreamProtocol::Http2 {
                if let Some(s) =
                    ctx.http_pool
                        .take(key, cluster.pool_idle_timeout, ctx.deadlines.coarse_now())
                {
                    return Ok((Checked::H1(s), true));
                }
            }
        }
        let share = |max| worker_share(max, ctx.workers, ctx.index);
        let open = cells.active.get()
            + self
                .endpoints
                .iter()
                .map(|e| {
                    let k = PoolKey::new(e.address, cluster.tls.as_deref());
                    (ctx.http_pool.idle_count(k) + ctx.h2_pool.open(k)) as u64
                })
                .sum::<u64>();
        if open >= share(cluster.breaker.max_connections) {
            return Err(Checkout::Overflow(Overflow::Connections));
        }
        if cells.breaker_pending.get() >= share(cluster.breaker.max_pending_requests) {
            return Err(Checkout::Overflow(Overflow::PendingRequests));
        }
        let _pending = Held::new(&cells.breaker_pending);
        // connect_timeout covers the TLS handshake too.
        let started = Instant::now();
        timing.started.set(Some(started));
        let at = started + cluster.connect_timeout;
        let connect = async {
            let s = TcpStream::connect_addr(addr).await?;
            let _ = s.set_nodelay(true);
            timing.connected.set(Some(started.elapsed()));
            match &cluster.tls {
                None => Ok(UpConn::Plain(s)),
                Some(tls) => {
                    let name = tls.name_for(written).ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            format!("no TLS server name for endpoint {written}"),
                        )
                    })?;
                    let handshake = Instant::now();
                    let t = crate::tls::connect(s, tls, name).await?;
                    timing.tls.set(Some(handshake.elapsed()));
                    Ok(UpConn::Tls(Box::new(t)))
                }
            }
        };
        let timed_out = || {
            Checkout::Failed(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        };
        let c = match ctx.deadlines.within(at, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(Checkout::Failed(e)),
            Err(_) => return Err(timed_out()),
        };
        let h2 = match (protocol, &c) {
            (UpstreamProtocol::Http2, _) => true,
            (UpstreamProtocol::Auto, UpConn::Tls(t)) => t.conn.alpn_protocol() == Some(b"h2"),
            _ => false,
        };
        if !h2 {
            return Ok((Checked::H1(c), false));
        }
        let transport = Transport::from(c);
        // connect_timeout covers the HTTP/2 preface and SETTINGS too.
        match ctx
            .deadlines
            .within(at, handshake(&ctx.h2_pool, key, transport))
            .await
        {
            Ok(Ok(lease)) => Ok((Checked::H2(lease), false)),
            Ok(Err(e)) => Err(Checkout::Failed(e)),
            Err(_) => Err(timed_out()),
        }
    }
}

/// What an exchange's result means for its try.
enum Verdict {
    /// The try ends: the response, or why not.
    Done(Result<Next, TryError>),
    /// The pooled connection was found closed before anything was
    /// processed: once more on a new connection to the same endpoint.
    Fresh,
}

/// A connection for one try: HTTP/1.1 (exclusive) or a stream slot on a
/// shared HTTP/2 connection.
enum Checked {
    H1(UpConn),
    H2(Lease),
}

enum Checkout {
    Overflow(Overflow),
    Failed(std::io::Error),
}

/// For the log line of a dropped retriable response.
fn status_text(status: u16) -> &'static str {
    match status {
        502 => "retriable status 502",
        503 => "retriable status 503",
        504 => "retriable status 504",
        500..=599 => "retriable 5xx status",
        _ => "retriable status",
    }
}
