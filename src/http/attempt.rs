//! One try of a request: the next usable endpoint, a pooled or new
//! connection (HTTP/1.1, or a stream on an HTTP/2 one) within the
//! cluster's limits, the exchange, and what its outcome means: done,
//! retriable, or once more on a new connection when a pooled one was
//! found closed. `forward` runs the tries.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use monoio::net::TcpStream;

use super::downstream::Downstream;
use super::error::HttpError;
use super::exchange::{Exchange, ExchangeError, Forward, Next, Timing, UpstreamRecord};
use super::h2::upstream::{handshake, Transport};
use super::pool::{Lease, PoolKey};
use super::retries::{Held, Retries};
use super::upconn::UpConn;
use crate::metrics::{Active, ClusterCells};
use crate::resilience::health::Outcome;
use crate::resilience::worker_share;
use crate::resilience::{Overflow, RetryOn};
use crate::upstream::{AttemptOrder, Availability, Cluster, Endpoint, UpstreamProtocol};

/// How one try ended, when it did not produce the response.
pub(super) enum TryError {
    /// Return this to the client.
    Fatal(HttpError),
    /// May be retried if the budget allows.
    Retriable(HttpError),
    /// A retry was already granted (a retriable status; its response was
    /// dropped).
    Granted(HttpError),
}

/// One try: the next usable endpoint, failing over to the others while
/// connecting fails (nothing was sent), as the cluster always has.
pub(super) struct Try<'a> {
    pub(super) req: Forward<'a>,
    /// The cluster's endpoints, or the one original destination.
    pub(super) endpoints: &'a [Endpoint],
    /// ring_hash and maglev: the request's key.
    pub(super) key: Option<u64>,
    pub(super) cluster: &'a Cluster,
    pub(super) availability: Availability,
    pub(super) retries: &'a Retries<'a>,
    pub(super) deadline: Option<Instant>,
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

    pub(super) async fn run(
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
