//! One relayed connection's life after its upstream connected: the gauges
//! it holds, the bytes it moved, and its access-log record, owned by a
//! [`Session`] that moves with the connection from task to parked relay and
//! back, and logs once, when the connection ends however it ends.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use monoio::net::TcpStream;

use super::relay::{relay_parking, Limits, RelayOutcome, Relayed};
use crate::access_log::Record;
use crate::metrics::{Active, EndpointStats};
use crate::snapshot::{Listener, Snapshot};
use crate::upstream::Cluster;
use crate::worker::ctx::{ListenerHandle, WorkerCtx};

/// A relay idle this long in both directions (each waiting for
/// readability, holding nothing) leaves its task for the worker's lot.
/// Longer than HTTP's warm window: a relay's peers often talk in bursts a
/// few hundred milliseconds apart, and each park and resume costs two
/// `dup`s, four `epoll_ctl`s and a task.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// Where a relayed connection came from.
#[derive(Debug, Clone)]
pub struct Origin {
    pub handle: Rc<ListenerHandle>,
    /// The snapshot of its accept (its listener as accepted).
    pub snapshot: Arc<Snapshot>,
    pub peer: SocketAddr,
    pub original_dst: Option<SocketAddr>,
}

impl Origin {
    pub fn listener(&self) -> Option<&Listener> {
        self.handle.resolve(&self.snapshot)
    }
}

/// A relayed connection with its upstream chosen and connected.
#[derive(Debug)]
pub struct Session {
    ctx: Rc<WorkerCtx>,
    origin: Origin,
    cluster: Arc<Cluster>,
    endpoint: Arc<EndpointStats>,
    upstream: SocketAddr,
    started: Instant,
    start_time: SystemTime,
    /// Bytes moved so far (client to upstream, upstream to client).
    pub bytes: (u64, u64),
    /// The access-log flag, when not `-`.
    pub flag: Option<&'static str>,
}

impl Session {
    /// Counts the connection on the cluster, the endpoint and the balancer
    /// until the session drops.
    pub fn new(
        ctx: &Rc<WorkerCtx>,
        origin: Origin,
        cluster: &Arc<Cluster>,
        endpoint: &crate::upstream::Endpoint,
        started: (Instant, SystemTime),
    ) -> Session {
        Active::open(
            cluster.stats.worker(ctx.index),
            endpoint.stats.worker(ctx.index),
        );
        ctx.balancers.track_detached(endpoint.address);
        Session {
            ctx: ctx.clone(),
            origin,
            cluster: cluster.clone(),
            endpoint: endpoint.stats.clone(),
            upstream: endpoint.address,
            started: started.0,
            start_time: started.1,
            bytes: (0, 0),
            flag: None,
        }
    }

    /// Add what one stretch of relaying did.
    pub fn add(&mut self, outcome: &RelayOutcome) {
        self.bytes.0 += outcome.downstream_to_upstream;
        self.bytes.1 += outcome.upstream_to_downstream;
        if outcome.idle_timeout {
            self.flag = Some("IT");
        }
        if outcome.spliced_directions > 0 {
            if let Some(listener) = self.origin.listener() {
                let cells = listener.stats.worker(self.ctx.index);
                cells
                    .spliced_directions
                    .add(u64::from(outcome.spliced_directions));
                cells.spliced_bytes.add(outcome.spliced_bytes);
            }
        }
    }

    /// Relay plain sockets on both sides; `Some` when the connection went
    /// idle and is to be parked.
    pub async fn relay(mut self, client: TcpStream, upstream: TcpStream) -> Option<ParkedRelay> {
        let listener = self.origin.listener()?;
        let limits = Limits {
            idle_timeout: listener.idle_timeout,
            mode: listener.splice,
            pipe_size: listener.splice_pipe_size,
            park_after: Some(PARK_AFTER),
        };
        let ctx = self.ctx.clone();
        let relayed = relay_parking(
            client,
            upstream,
            limits,
            ctx.driver,
            &ctx.buffers,
            &ctx.deadlines,
        );
        match relayed.await {
            Relayed::Ended(outcome) => {
                self.add(&outcome);
                None
            }
            Relayed::Parked(outcome, fds) => {
                self.add(&outcome);
                let quiet_since = outcome.quiet_since.unwrap_or_else(Instant::now);
                Some(ParkedRelay {
                    session: self,
                    fds,
                    until: quiet_since + limits.idle_timeout,
                })
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let ctx = &self.ctx;
        Active::close(
            self.cluster.stats.worker(ctx.index),
            self.endpoint.worker(ctx.index),
        );
        ctx.balancers.untrack(self.upstream);
        let Some(listener) = self.origin.listener() else {
            return;
        };
        let counters = listener.stats.worker(ctx.index);
        counters.bytes_in.add(self.bytes.0);
        counters.bytes_out.add(self.bytes.1);
        if self.flag == Some("IT") {
            counters.idle_timeouts.inc();
        }
        let record = Record::tcp(
            self.start_time,
            self.origin.peer,
            &listener.name,
            &self.cluster.name,
            Some(self.upstream),
            self.bytes,
            self.started.elapsed(),
            self.flag.unwrap_or("-"),
        );
        ctx.log.log(&ctx.snapshot.load(), &record);
        tracing::debug!(
            listener = %listener.name, peer = %self.origin.peer, upstream = %self.upstream,
            bytes_in = self.bytes.0, bytes_out = self.bytes.1,
            flag = self.flag.unwrap_or("-"), "tcp connection closed"
        );
    }
}

/// An idle relay outside any task: its session and its two descriptors
/// (the client's and the upstream's).
#[derive(Debug)]
pub struct ParkedRelay {
    session: Session,
    fds: [OwnedFd; 2],
    /// When `idle_timeout` ends it.
    pub until: Instant,
}

impl ParkedRelay {
    pub fn fds(&self) -> [&OwnedFd; 2] {
        [&self.fds[0], &self.fds[1]]
    }

    pub fn handle(&self) -> &Rc<ListenerHandle> {
        &self.session.origin.handle
    }

    /// Closed by the lot's sweep at `until`: logged as an idle timeout.
    pub fn timed_out(mut self) {
        self.session.flag = Some("IT");
    }

    /// Relay again (a socket turned readable); `Some` when it goes idle again.
    pub async fn resume(self) -> Option<ParkedRelay> {
        let ParkedRelay { session, fds, .. } = self;
        let [client, upstream] = fds;
        let socket = |fd: OwnedFd| TcpStream::from_std(std::net::TcpStream::from(fd));
        match (socket(client), socket(upstream)) {
            (Ok(client), Ok(upstream)) => session.relay(client, upstream).await,
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot resume a parked relay; closing it");
                None
            }
        }
    }
}
