//! L4 proxying: pick an endpoint, connect (trying each endpoint at most once),
//! then relay both directions until both are done or the connection idles out.

mod relay;
mod session;
mod splice;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use monoio::net::TcpStream;

pub use relay::{relay, relay_parking, Limits, RelayOutcome, Relayed, SpliceMode};
pub use session::{Origin, ParkedRelay, Session, PARK_AFTER};

use crate::access_log::Record;
use crate::tls::Accepted;
use crate::upstream::{Cluster, Endpoint};
use crate::worker::ctx::WorkerCtx;

/// Why no upstream connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Every endpoint refused, failed or timed out; the last error is kept.
    #[error(
        "no endpoint of cluster \"{cluster}\" could be reached ({attempts} tried; last: {last})"
    )]
    AllFailed {
        cluster: String,
        attempts: usize,
        last: String,
    },
    /// Every endpoint is ejected or failing its health checks.
    #[error("no healthy endpoint in cluster \"{0}\"")]
    NoHealthy(String),
    /// A circuit-breaker limit of the cluster was reached.
    #[error("cluster \"{cluster}\": circuit breaker {} reached", .limit.key())]
    Overflow {
        cluster: String,
        limit: crate::resilience::Overflow,
    },
}

/// Serve one downstream connection of a tcp listener; `Some` when the
/// relay went idle and is to be parked (plain sockets on both sides only).
pub async fn proxy(
    ctx: &Rc<WorkerCtx>,
    origin: Origin,
    cluster: &Arc<Cluster>,
    client: Accepted,
    initial: Option<bytes::Bytes>,
) -> Option<ParkedRelay> {
    let listener = origin.listener()?;
    let peer = origin.peer;
    let counters = listener.stats.worker(ctx.index);
    let started = (Instant::now(), SystemTime::now());
    let dynamic;
    let connected = if cluster.original_destination {
        // Where the client meant to go; none when it was not intercepted.
        match origin.original_dst {
            Some(dst) => {
                dynamic = Endpoint::dynamic(dst, ctx.workers);
                connect_one(ctx, cluster, &dynamic).await
            }
            None => Err(ConnectError::AllFailed {
                cluster: cluster.name.clone(),
                attempts: 0,
                last: "no original destination (the connection was not intercepted)".into(),
            }),
        }
    } else {
        connect(ctx, cluster, counters, peer).await
    };
    let (upstream, endpoint) = match connected {
        Ok(ok) => ok,
        Err(e) => {
            counters.no_upstream.inc();
            tracing::warn!(listener = %listener.name, %peer, error = %e, "closing client");
            let flag = match e {
                ConnectError::AllFailed { .. } => "UF",
                ConnectError::NoHealthy(_) => "UH",
                ConnectError::Overflow { .. } => "UO",
            };
            let record = Record::tcp(
                started.1,
                peer,
                &listener.name,
                &cluster.name,
                None,
                (0, 0),
                started.0.elapsed(),
                flag,
            );
            ctx.log.log(&ctx.snapshot.load(), &record);
            return None;
        }
    };
    let addr = endpoint.address;
    cluster.stats.worker(ctx.index).connections_opened.inc();
    let (idle, send) = (listener.idle_timeout, listener.http.send_timeout);
    let mut session = Session::new(ctx, origin.clone(), cluster, endpoint, started);
    let _ = upstream.set_nodelay(true);
    // A cluster with `tls`: the handshake, within connect_timeout.
    let (mut upstream, upstream_tls) = match &cluster.tls {
        None => (Some(upstream), None),
        Some(tls) => {
            let at = Instant::now() + cluster.connect_timeout;
            let handshake = async {
                let name = tls.name_for(&endpoint.written).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "no TLS server name for the endpoint",
                    )
                })?;
                crate::tls::connect(upstream, tls, name).await
            };
            match ctx.deadlines.within(at, handshake).await {
                Ok(Ok(t)) => (None, Some(t)),
                Ok(Err(e)) => {
                    tracing::warn!(listener = %listener.name, %peer, upstream = %addr, error = %e, "upstream TLS handshake failed; closing client");
                    endpoint.stats.worker(ctx.index).error(format!("TLS: {e}"));
                    session.flag = Some("UF");
                    return None;
                }
                Err(_) => {
                    tracing::warn!(listener = %listener.name, %peer, upstream = %addr, "upstream TLS handshake timed out; closing client");
                    session.flag = Some("UF");
                    return None;
                }
            }
        }
    };
    // Bytes read before the cluster was known (a ClientHello) go first
    // (sni_routes clusters are plain: the config refuses tls on them).
    if let (Some(bytes), Some(up)) = (initial, &mut upstream) {
        let early = bytes.len() as u64;
        let (res, _) = monoio::io::AsyncWriteRentExt::write_all(up, bytes).await;
        if res.is_err() {
            session.flag = Some("UR");
            return None;
        }
        session.bytes.0 += early;
    }
    let measured = match (client, upstream, upstream_tls) {
        (Accepted::Plain(client), Some(upstream), _) => {
            return session.relay(client, upstream).await;
        }
        (Accepted::Tls(tls), Some(upstream), _) => {
            let m = crate::tls::relay::relay(*tls, upstream, idle, send, &ctx.deadlines).await;
            (m.tls_to_plain, m.plain_to_tls, m.idle_timeout)
        }
        (Accepted::Plain(client), None, Some(up)) => {
            let m = crate::tls::relay::relay(up, client, idle, send, &ctx.deadlines).await;
            (m.plain_to_tls, m.tls_to_plain, m.idle_timeout)
        }
        // TLS on both sides is refused by the config compiler.
        (Accepted::Tls(_), None, _) | (Accepted::Plain(_), None, None) => (0, 0, false),
    };
    session.add(&RelayOutcome {
        downstream_to_upstream: measured.0,
        upstream_to_downstream: measured.1,
        idle_timeout: measured.2,
        ..RelayOutcome::default()
    });
    None
}

/// Connect to one endpoint (an original destination) within connect_timeout.
async fn connect_one<'e>(
    ctx: &WorkerCtx,
    cluster: &Cluster,
    endpoint: &'e Endpoint,
) -> Result<(TcpStream, &'e Endpoint), ConnectError> {
    let at = Instant::now() + cluster.connect_timeout;
    let last = match ctx
        .deadlines
        .within(at, TcpStream::connect_addr(endpoint.address))
        .await
    {
        Ok(Ok(stream)) => return Ok((stream, endpoint)),
        Ok(Err(e)) => format!("{}: {e}", endpoint.address),
        Err(_) => format!("{}: connect timed out", endpoint.address),
    };
    cluster.stats.worker(ctx.index).connect_failures.inc();
    Err(ConnectError::AllFailed {
        cluster: cluster.name.clone(),
        attempts: 1,
        last,
    })
}

/// Try the balancer's pick, then every other endpoint once (skipping
/// ejected and unhealthy ones), within the cluster's circuit-breaker limits.
async fn connect<'c>(
    ctx: &WorkerCtx,
    cluster: &'c Cluster,
    counters: &crate::metrics::ListenerCells,
    peer: SocketAddr,
) -> Result<(TcpStream, &'c Endpoint), ConnectError> {
    use crate::resilience::Overflow;
    use crate::upstream::Availability;
    let cells = cluster.stats.worker(ctx.index);
    let share = |max| crate::resilience::worker_share(max, ctx.workers, ctx.index);
    let limit = if cells.active.get() >= share(cluster.breaker.max_connections) {
        Some(Overflow::Connections)
    } else if cells.breaker_pending.get() >= share(cluster.breaker.max_pending_requests) {
        Some(Overflow::PendingRequests)
    } else {
        None
    };
    if let Some(limit) = limit {
        cells.overflow[limit.index()].inc();
        return Err(ConnectError::Overflow {
            cluster: cluster.name.clone(),
            limit,
        });
    }
    let now = crate::resilience::now_ms();
    let availability = cluster.availability(now);
    if availability == Availability::None {
        return Err(ConnectError::NoHealthy(cluster.name.clone()));
    }
    cells.breaker_pending.inc();
    // Only the client's address can key a tcp connection.
    let key = (cluster.balance.hashes() && cluster.hash_on == crate::upstream::HashOn::SourceIp)
        .then(|| crate::upstream::balance::ip_key(peer));
    let result = connect_any(ctx, cluster, counters, availability, now, key).await;
    cells.breaker_pending.dec();
    result
}

async fn connect_any<'c>(
    ctx: &WorkerCtx,
    cluster: &'c Cluster,
    counters: &crate::metrics::ListenerCells,
    availability: crate::upstream::Availability,
    now: u64,
    key: Option<u64>,
) -> Result<(TcpStream, &'c Endpoint), ConnectError> {
    use crate::resilience::health::Outcome;
    let order = ctx.balancers.attempt_order(cluster, key);
    let mut last = String::from("no endpoints");
    let mut attempts = 0;
    for i in order {
        let endpoint = &cluster.endpoints[i];
        if availability != crate::upstream::Availability::All && !endpoint.health.usable(now) {
            continue;
        }
        attempts += 1;
        let addr = endpoint.address;
        let started = std::time::Instant::now();
        let at = started + cluster.connect_timeout;
        match ctx
            .deadlines
            .within(at, TcpStream::connect_addr(addr))
            .await
        {
            Ok(Ok(stream)) => {
                cluster.record_outcome(ctx.index, i, Outcome::Success);
                if cluster.balance == crate::upstream::Balance::PeakEwma {
                    ctx.balancers.observe(addr, started.elapsed());
                }
                return Ok((stream, endpoint));
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => {
                last = format!(
                    "{addr}: connect timed out after {:?}",
                    cluster.connect_timeout
                )
            }
        }
        counters.upstream_connect_failures.inc();
        cluster.stats.worker(ctx.index).connect_failures.inc();
        endpoint.stats.worker(ctx.index).error(last.clone());
        cluster.record_outcome(ctx.index, i, Outcome::ConnectFailure);
        tracing::debug!(cluster = %cluster.name, error = %last, "upstream connect failed");
    }
    Err(ConnectError::AllFailed {
        cluster: cluster.name.clone(),
        attempts,
        last,
    })
}
