//! Listeners: SO_REUSEPORT sockets (one per listener per worker, all bound
//! by the supervisor so port 0 resolves once), and each worker's accept loop
//! with its share of `max_connections` and back-off on accept errors.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::CancelHandle;
use monoio::net::{TcpListener, TcpStream};
use socket2::{Domain, Socket, Type};

use crate::snapshot::ListenerProtocol;
use crate::tls::Accepted;
use crate::worker::ctx::{ConnGuard, ListenerHandle, WorkerCtx};
use crate::worker::driver::Driver;

/// A bound listening socket handed to one worker.
#[derive(Debug)]
pub struct ListenerSocket {
    pub name: String,
    /// The address as configured (port 0 before binding).
    pub configured: SocketAddr,
    pub socket: std::net::TcpListener,
}

/// Make sure no other socket holds `addr` before this process binds its
/// SO_REUSEPORT sockets there: Linux lets any process of the same user join
/// a SO_REUSEPORT group, which would silently split the port's connections
/// with it. A probe bound *without* SO_REUSEPORT fails when anything else is
/// bound there. Returns the address to bind (port 0 resolved to a free port).
pub fn probe_exclusive(addr: SocketAddr) -> io::Result<SocketAddr> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // SO_REUSEADDR: connections of an earlier run in TIME_WAIT do not count.
    probe.set_reuse_address(true)?;
    match probe.bind(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "address already in use by another socket (another process, or another program sharing it with SO_REUSEPORT)",
            ))
        }
        Err(e) => return Err(e),
    }
    let local = probe.local_addr()?.as_socket();
    local.ok_or_else(|| io::Error::other("probe has no inet address"))
}

/// Bind one SO_REUSEPORT socket for `addr`.
pub fn bind(addr: SocketAddr, backlog: i32, driver: Driver) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    // The epoll driver needs non-blocking fds; io_uring works on blocking ones.
    socket.set_nonblocking(driver == Driver::Epoll)?;
    Ok(socket.into())
}

pub use crate::resilience::worker_share;

/// The accept loop of one listener on one worker.
pub struct AcceptLoop {
    ctx: Rc<WorkerCtx>,
    handle: Rc<ListenerHandle>,
    listener: TcpListener,
    cancel: Option<CancelHandle>,
}

impl std::fmt::Debug for AcceptLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcceptLoop")
            .field("listener", &self.handle.name)
            .finish_non_exhaustive()
    }
}

/// Back-off after a resource error such as EMFILE: starts here, doubles, capped.
const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long a stopped listener keeps retrying its queued connections after
/// resource errors.
const BACKLOG_RETRY: Duration = Duration::from_secs(2);

impl AcceptLoop {
    /// Wrap a bound socket for the current worker's runtime.
    pub fn new(
        ctx: Rc<WorkerCtx>,
        s: ListenerSocket,
        handle: Rc<ListenerHandle>,
        cancel: Option<CancelHandle>,
    ) -> io::Result<Self> {
        Ok(AcceptLoop {
            ctx,
            handle,
            listener: TcpListener::from_std(s.socket)?,
            cancel,
        })
    }

    /// Accept until the worker drains or the listener is removed; the
    /// socket closes when this returns.
    pub async fn run(self) {
        let mut backoff = BACKOFF_START;
        let Some(cancel) = self.cancel.clone() else {
            return;
        };
        loop {
            if self.ctx.closing(&self.handle) {
                break;
            }
            match self.listener.cancelable_accept(cancel.clone()).await {
                Ok((stream, peer)) => {
                    backoff = BACKOFF_START;
                    self.admit(stream, peer);
                }
                Err(_) if self.ctx.closing(&self.handle) => break,
                Err(e) if is_transient(&e) => continue,
                Err(e) => {
                    if let Some(l) = self.ctx.snapshot.load().listener(&self.handle.name) {
                        l.stats.worker(self.ctx.index).accept_errors.inc();
                    }
                    tracing::warn!(listener = %self.handle.name, error = %e, pause = ?backoff, "accept failed; pausing");
                    monoio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        if !self.ctx.draining.get() {
            // Removed or renamed by a reload: serve what the kernel already
            // queued on this socket instead of letting the close reset it.
            self.accept_backlog().await;
        }
        tracing::debug!(listener = %self.handle.name, worker = self.ctx.index, "stopped accepting");
    }

    /// Accept, without waiting for new arrivals, every connection queued on
    /// the socket, and admit each (under a renamed listener's new name it is
    /// served; with the listener gone it is closed). Only EAGAIN means the
    /// queue is empty; a resource error (EMFILE, ENOBUFS…) is retried with
    /// back-off for up to `BACKLOG_RETRY`, since queued clients are owed an
    /// answer; then listening stops.
    async fn accept_backlog(&self) {
        let fd = self.listener.as_raw_fd();
        let flags = libc::SOCK_CLOEXEC
            | if self.ctx.driver == Driver::Epoll {
                libc::SOCK_NONBLOCK
            } else {
                0
            };
        // SAFETY: fcntl on the listening socket this loop owns (open until
        // `self.listener` drops, after this returns); no memory is passed.
        let nonblocking = unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            fl >= 0 && libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) >= 0
        };
        if !nonblocking {
            return;
        }
        let give_up = Instant::now() + BACKLOG_RETRY;
        let mut backoff = BACKOFF_START;
        loop {
            // SAFETY: accept4 on the listening socket we own, with null
            // address pointers (no memory written); a returned descriptor is
            // owned at once by the std stream built from it below.
            let cfd =
                unsafe { libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), flags) };
            if cfd >= 0 {
                // SAFETY: `cfd` is a fresh descriptor nothing else owns.
                let std = unsafe { std::net::TcpStream::from_raw_fd(cfd) };
                let Ok(peer) = std.peer_addr() else { continue };
                if let Ok(stream) = TcpStream::from_std(std) {
                    self.admit(stream, peer);
                }
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => break,
                Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO | libc::EPERM) => continue,
                _ if Instant::now() < give_up => {
                    tracing::warn!(listener = %self.handle.name, error = %e, "accepting queued connections failed; retrying");
                    monoio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                _ => {
                    tracing::warn!(listener = %self.handle.name, error = %e, "giving up on queued connections");
                    break;
                }
            }
        }
        // Queue empty: stop listening now rather than when the runtime gets
        // to close the descriptor (io_uring closes asynchronously), so
        // nothing more queues here.
        // SAFETY: shutdown on our own open listening socket; no memory.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }

    /// Enforce the connection limit, then hand the connection to its protocol.
    fn admit(&self, stream: TcpStream, peer: SocketAddr) {
        // The connection keeps the snapshot current at accept for its life
        // (HTTP requests still route on the newest one).
        let snapshot = self.ctx.snapshot.load_full();
        let Some(listener) = self.handle.resolve(&snapshot) else {
            // Removed by a reload a moment ago; the loop stops on the next turn.
            return;
        };
        let cells = listener.stats.worker(self.ctx.index);
        let limit = worker_share(listener.max_connections, self.ctx.workers, self.ctx.index);
        let refused = if cells.active.get() >= limit {
            cells.rejected.inc();
            tracing::debug!(listener = %self.handle.name, %peer, "max_connections reached; closing");
            Some("LR")
        } else if crate::worker::overload::overloaded() {
            cells.overload_rejected.inc();
            tracing::debug!(listener = %self.handle.name, %peer, "overloaded (runtime.max_heap_bytes); closing");
            Some("OL")
        } else if listener
            .rate_limit
            .as_ref()
            .is_some_and(|r| r.acquire().is_err())
        {
            cells.rate_limited.inc();
            tracing::debug!(listener = %self.handle.name, %peer, "connection rate limit; closing");
            Some("RL")
        } else {
            None
        };
        if let Some(flag) = refused {
            drop(stream);
            // One access log line for every connection, refused ones too.
            if snapshot.access_log.is_some() {
                let cluster = match &listener.protocol {
                    ListenerProtocol::Tcp { cluster, .. } => cluster.as_deref(),
                    ListenerProtocol::Http { .. } | ListenerProtocol::Auto { .. } => None,
                };
                let record =
                    crate::access_log::Record::refused(peer, &listener.name, cluster, flag);
                self.ctx.log.log(&snapshot, &record);
            }
            return;
        }
        cells.accepted.inc();
        let guard = ConnGuard::new(self.ctx.clone(), listener.stats.clone());
        let ctx = self.ctx.clone();
        let handle = self.handle.clone();
        monoio::spawn(async move {
            match serve(ctx, handle, snapshot, stream, peer).await {
                Then::Done => {}
                Then::Park(parked) => crate::http::park::park(parked, guard),
                // The relay runs in a task of its own size: the task that
                // set it up (sized by the HTTP path) ends here.
                Then::Relay(relay) => {
                    monoio::spawn(async move {
                        if let Some(idle) = relay.await {
                            crate::http::park::park_relay(idle, guard);
                        }
                    });
                }
            }
        });
    }
}

/// What is left of a connection when its first task ends. Not boxed:
/// returned once per connection, and a box would be one more allocation
/// per park.
#[allow(clippy::large_enum_variant)]
enum Then {
    Done,
    /// An HTTP connection gone idle, to park.
    Park(crate::http::Parked),
    /// A TCP relay to run in its own task (`Some` when it went idle).
    Relay(std::pin::Pin<Box<dyn std::future::Future<Output = Option<crate::tcp::ParkedRelay>>>>),
}

/// On an auto listener with `tls`, whether a connection that did not start
/// a TLS handshake may be served in plaintext (`tls.plaintext = "permit"`);
/// counted either way. Listeners without `tls` always allow it.
fn plaintext_allowed(
    listener: &crate::snapshot::Listener,
    ctx: &WorkerCtx,
    peer: SocketAddr,
    kind: crate::sidecar::detect::Detected,
) -> bool {
    let Some(tls) = &listener.tls else {
        return true;
    };
    let cells = listener.stats.worker(ctx.index);
    if tls.plaintext_permitted {
        cells.plaintext_accepted.inc();
        return true;
    }
    cells.plaintext_refused.inc();
    tracing::debug!(listener = %listener.name, %peer, detected = kind.label(), "plaintext on a TLS listener; closing (tls.plaintext = \"refuse\")");
    false
}

/// Serve one connection: detect, handshake, serve HTTP, or set up a relay.
async fn serve(
    ctx: Rc<WorkerCtx>,
    handle: Rc<ListenerHandle>,
    snapshot: std::sync::Arc<crate::snapshot::Snapshot>,
    stream: TcpStream,
    peer: SocketAddr,
) -> Then {
    let Some(listener) = handle.resolve(&snapshot) else {
        return Then::Done;
    };
    // A dual-stack listener sees IPv4 clients as v4-mapped IPv6: log and
    // forward them as the IPv4 addresses they are.
    let peer = crate::sidecar::canonical(peer);
    let original_dst = original_destination(listener, &stream);
    // auto: what the first bytes are decides the path.
    let mut stream = stream;
    let mut early: Option<bytes::BytesMut> = None;
    let (as_http, terminate, tcp_cluster, sni) = match &listener.protocol {
        ListenerProtocol::Http { .. } => (true, listener.tls.is_some(), None, None),
        ListenerProtocol::Tcp { cluster, sni } => (
            false,
            listener.tls.is_some(),
            cluster.as_deref(),
            sni.as_ref(),
        ),
        ListenerProtocol::Auto {
            cluster,
            detect_timeout,
            ..
        } => {
            let started = Instant::now();
            let (bytes, kind) =
                crate::sidecar::detect::detect(&mut stream, *detect_timeout, &ctx.deadlines).await;
            let cells = listener.stats.worker(ctx.index);
            cells.detected[kind.index()].inc();
            cells.detect_duration.record(started.elapsed());
            tracing::debug!(listener = %listener.name, %peer, detected = kind.label(), "protocol detected");
            early = Some(bytes);
            use crate::sidecar::detect::Detected;
            match kind {
                Detected::Closed => return Then::Done,
                Detected::Tls if listener.tls.is_some() => (true, true, None, None),
                // A TLS listener never serves plaintext unless told to
                // (docs/security.md, "No plaintext past TLS").
                _ if !plaintext_allowed(listener, &ctx, peer, kind) => return Then::Done,
                Detected::Http1 | Detected::Http2 => (true, false, None, None),
                Detected::Tls | Detected::Opaque | Detected::Silent => {
                    (false, false, cluster.as_deref(), None)
                }
            }
        }
    };
    // Accepted sockets inherit TCP_NODELAY from the listening socket (bind).
    let stream = match (&listener.tls, terminate) {
        (Some(tls), true) => {
            match terminate_tls(&ctx, listener, tls, stream, peer, early.take()).await {
                Some(s) => s,
                None => return Then::Done,
            }
        }
        _ => Accepted::Plain(stream),
    };
    if as_http {
        let incoming = crate::http::downstream::Incoming {
            stream: stream.into(),
            peer,
            original_dst,
            early: early.unwrap_or_default(),
        };
        let parked = crate::http::serve(&ctx, &handle, &snapshot, listener, incoming).await;
        return parked.map_or(Then::Done, Then::Park);
    }
    let initial = early.filter(|b| !b.is_empty()).map(bytes::BytesMut::freeze);
    let Some((stream, initial, cluster)) = tcp_target(
        &ctx,
        &snapshot,
        listener,
        stream,
        peer,
        initial,
        tcp_cluster,
        sni,
    )
    .await
    else {
        return Then::Done;
    };
    // Boxed and handed back: the relay's future is large, and it runs in a
    // task of its own (this one, sized by the HTTP path, ends).
    Then::Relay(Box::pin(async move {
        let origin = crate::tcp::Origin {
            handle,
            snapshot,
            peer,
            original_dst,
        };
        crate::tcp::proxy(&ctx, origin, &cluster, stream, initial).await
    }))
}

/// Transparent mode: where the client meant to go. A connection made to
/// the listener itself (not redirected) has none.
fn original_destination(
    listener: &crate::snapshot::Listener,
    stream: &TcpStream,
) -> Option<SocketAddr> {
    if !listener.original_destination {
        return None;
    }
    let local = stream.local_addr().ok()?;
    crate::sidecar::original_dst(stream.as_raw_fd(), local)
        .ok()
        .filter(|d| *d != crate::sidecar::canonical(local))
}

/// The TLS handshake of a terminating listener, counted; `None` (logged
/// and counted by reason) when it fails.
async fn terminate_tls(
    ctx: &WorkerCtx,
    listener: &crate::snapshot::Listener,
    tls: &crate::tls::ListenerTls,
    stream: TcpStream,
    peer: SocketAddr,
    early: Option<bytes::BytesMut>,
) -> Option<Accepted> {
    let accept = crate::tls::accept(stream, tls, &ctx.deadlines, early);
    match Box::pin(accept).await {
        Ok(s) => {
            listener.stats.worker(ctx.index).tls_handshakes.inc();
            Some(Accepted::Tls(Box::new(s)))
        }
        Err(reason) => {
            let cells = listener.stats.worker(ctx.index);
            cells.tls_handshake_failures[reason.index()].inc();
            tracing::debug!(listener = %listener.name, %peer, reason = reason.label(), "TLS handshake failed");
            None
        }
    }
}

/// Where a tcp connection goes: the peer's identity checked against the
/// listener's authorization, the cluster picked by SNI (`sni_routes`, the
/// ClientHello read and kept to be relayed) or the listener's own.
/// `None` (logged) when the connection is to be closed.
#[allow(clippy::too_many_arguments)]
async fn tcp_target(
    ctx: &WorkerCtx,
    snapshot: &crate::snapshot::Snapshot,
    listener: &crate::snapshot::Listener,
    mut stream: Accepted,
    peer: SocketAddr,
    mut initial: Option<bytes::Bytes>,
    mut name: Option<&str>,
    sni: Option<&std::sync::Arc<crate::tls::sni::SniRouting>>,
) -> Option<(
    Accepted,
    Option<bytes::Bytes>,
    std::sync::Arc<crate::upstream::Cluster>,
)> {
    if let Some(authz) = &listener.authz {
        let cert = listener.tls.as_ref().and_then(|t| stream.peer_cert(t));
        let identity = cert.as_ref().and_then(|c| c.identity.as_deref());
        if !authz.permits(identity, ctx.index) {
            tracing::debug!(listener = %listener.name, %peer, ?identity, "peer identity not allowed; closing");
            return None;
        }
    }
    if let (Some(sni), Accepted::Plain(tcp)) = (sni, &mut stream) {
        match crate::tls::sni::read_hello(tcp, sni.timeout, &ctx.deadlines).await {
            Ok((bytes, hello)) => {
                if let crate::tls::sni::Hello::Tls(Some(server)) = &hello {
                    name = sni.pick(server).or(name);
                }
                tracing::debug!(listener = %listener.name, %peer, ?hello, cluster = ?name, "SNI route");
                initial = Some(bytes.freeze());
            }
            Err(why) => {
                tracing::debug!(listener = %listener.name, %peer, why, "no ClientHello; closing");
                return None;
            }
        }
    }
    let Some(cluster) = name.and_then(|n| snapshot.clusters.get(n)).cloned() else {
        listener.stats.worker(ctx.index).no_upstream.inc();
        tracing::debug!(listener = %listener.name, %peer, "no cluster for this connection; closing");
        return None;
    };
    Some((stream, initial, cluster))
}

/// Errors after which accepting again at once is right (the peer gave up
/// before we accepted, or a signal interrupted us).
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EINTR | libc::EAGAIN | libc::EPROTO | libc::EPERM)
    )
}

#[cfg(test)]
mod tests {
    use super::worker_share;

    #[test]
    fn shares_sum_to_max() {
        for (max, workers) in [(10, 3), (10_000, 16), (7, 7), (100, 1)] {
            let sum: u64 = (0..workers).map(|i| worker_share(max, workers, i)).sum();
            assert_eq!(sum, max);
        }
        // Fewer connections than workers: each worker still admits one.
        assert_eq!(worker_share(2, 4, 3), 1);
    }
}
