//! L4 proxying: pick an endpoint, connect (trying each endpoint at most once),
//! then relay both directions until both are done or the connection idles out.

mod relay;

use std::net::SocketAddr;
use std::rc::Rc;

use monoio::net::TcpStream;

pub use relay::{relay, RelayOutcome, SpliceMode};

use crate::config::Listener;
use crate::upstream::Cluster;
use crate::worker::WorkerCtx;

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
}

/// Serve one downstream connection of a tcp listener.
pub async fn proxy(
    ctx: &Rc<WorkerCtx>,
    listener: &Listener,
    cluster: &Cluster,
    client: TcpStream,
    peer: SocketAddr,
) {
    let counters = listener.stats.worker(ctx.index);
    let started = std::time::Instant::now();
    let start_time = std::time::SystemTime::now();
    let (upstream, endpoint) = match connect(ctx, cluster, counters).await {
        Ok(ok) => ok,
        Err(e) => {
            counters.no_upstream.inc();
            tracing::warn!(listener = %listener.name, %peer, error = %e, "closing client");
            ctx.log.log(
                &ctx.snapshot.load(),
                &crate::access_log::Record {
                    start: start_time,
                    client: peer,
                    request_id: None,
                    method: None,
                    authority: None,
                    path: None,
                    protocol: "TCP",
                    status: 0,
                    upstream_duration: None,
                    route: None,
                    listener: &listener.name,
                    cluster: Some(&cluster.name),
                    upstream: None,
                    bytes_in: 0,
                    bytes_out: 0,
                    duration: started.elapsed(),
                    flags: "UF",
                },
            );
            return;
        }
    };
    let ccells = cluster.stats.worker(ctx.index);
    let ep = cluster.endpoints.iter().find(|e| e.address == endpoint);
    ccells.requests.inc();
    ccells.connections_opened.inc();
    ccells.active.inc();
    if let Some(ep) = ep {
        let c = ep.stats.worker(ctx.index);
        c.requests.inc();
        c.in_flight.inc();
    }
    let _in_flight = ctx.balancers.track(endpoint);
    let _ = upstream.set_nodelay(true);
    let outcome = relay(
        client,
        upstream,
        listener.idle_timeout,
        listener.splice,
        ctx.driver,
        &ctx.buffers,
    )
    .await;
    counters.bytes_in.add(outcome.downstream_to_upstream);
    counters.bytes_out.add(outcome.upstream_to_downstream);
    if outcome.idle_timeout {
        counters.idle_timeouts.inc();
    }
    ccells.active.dec();
    if let Some(ep) = ep {
        ep.stats.worker(ctx.index).in_flight.dec();
    }
    ctx.log.log(
        &ctx.snapshot.load(),
        &crate::access_log::Record {
            start: start_time,
            client: peer,
            request_id: None,
            method: None,
            authority: None,
            path: None,
            protocol: "TCP",
            status: 0,
            upstream_duration: None,
            route: None,
            listener: &listener.name,
            cluster: Some(&cluster.name),
            upstream: Some(endpoint),
            bytes_in: outcome.downstream_to_upstream,
            bytes_out: outcome.upstream_to_downstream,
            duration: started.elapsed(),
            flags: if outcome.idle_timeout { "IT" } else { "-" },
        },
    );
    tracing::debug!(
        listener = %listener.name, %peer, upstream = %endpoint,
        bytes_in = outcome.downstream_to_upstream, bytes_out = outcome.upstream_to_downstream,
        idle_timeout = outcome.idle_timeout, "tcp connection closed"
    );
}

/// Try the balancer's pick, then every other endpoint once.
async fn connect(
    ctx: &WorkerCtx,
    cluster: &Cluster,
    counters: &crate::metrics::ListenerCells,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let order = ctx.balancers.attempt_order(cluster);
    let mut last = String::from("no endpoints");
    for &i in &order {
        let addr = cluster.endpoints[i].address;
        match monoio::time::timeout(cluster.connect_timeout, TcpStream::connect_addr(addr)).await {
            Ok(Ok(stream)) => return Ok((stream, addr)),
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
        cluster.endpoints[i]
            .stats
            .worker(ctx.index)
            .error(last.clone());
        tracing::debug!(cluster = %cluster.name, error = %last, "upstream connect failed");
    }
    Err(ConnectError::AllFailed {
        cluster: cluster.name.clone(),
        attempts: order.len(),
        last,
    })
}
