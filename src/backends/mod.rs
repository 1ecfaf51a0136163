//! Test upstreams on loopback: TCP echo, TCP sink and HTTP, thread-per-core on
//! monoio like the proxy. One implementation serves `outrigger demo`, the
//! end-to-end tests and `outrigger-load serve`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

mod http;

pub use http::HttpBackend;

use crate::listener;
use crate::worker::{driver, Driver};

/// What a backend does with each connection.
#[derive(Debug, Clone)]
pub enum BackendKind {
    /// Writes back every byte it reads; on EOF, closes its sending side.
    Echo,
    /// Reads and discards until EOF.
    Sink,
    /// HTTP/1.1 server (see [`HttpBackend`]).
    Http(HttpBackend),
}

/// Counters of a backend, over all its threads.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Bytes read from clients (HTTP: request body bytes).
    pub bytes_read: AtomicU64,
    /// HTTP request heads received, counted on arrival (before the body and
    /// any configured delay): a test can wait on it to know that a request
    /// is in flight.
    pub requests: AtomicU64,
}

/// A running backend; dropping it stops the threads.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    pub stats: Arc<BackendStats>,
    stops: Vec<flume::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

/// Start `kind` on `addr` (port 0 allowed) with `threads` threads.
pub fn start(
    kind: BackendKind,
    addr: SocketAddr,
    threads: usize,
    driver: Driver,
) -> std::io::Result<Backend> {
    let stats = Arc::new(BackendStats::default());
    let mut backend = Backend {
        addr,
        stats: stats.clone(),
        stops: Vec::new(),
        threads: Vec::new(),
    };
    for i in 0..threads.max(1) {
        let socket = listener::bind(backend.addr, 1024, driver)?;
        if i == 0 {
            backend.addr = socket.local_addr()?;
        }
        let (tx, rx) = flume::bounded::<()>(1);
        let stats = stats.clone();
        let kind = kind.clone();
        let thread = std::thread::Builder::new()
            .name(format!("backend-{i}"))
            .spawn(move || {
                let run = || serve(kind, socket, stats, rx);
                if let Err(e) = driver::block_on(driver, 256, run) {
                    tracing::error!(error = %e, "backend runtime failed to start");
                }
            })?;
        backend.stops.push(tx);
        backend.threads.push(thread);
    }
    Ok(backend)
}

impl Drop for Backend {
    fn drop(&mut self) {
        for s in &self.stops {
            let _ = s.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Backend {
    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }

    /// HTTP requests answered so far.
    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }
}

async fn serve(
    kind: BackendKind,
    socket: std::net::TcpListener,
    stats: Arc<BackendStats>,
    stop: flume::Receiver<()>,
) {
    let listener = match TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "backend cannot use its socket");
            return;
        }
    };
    let accept = async {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    stats.connections.fetch_add(1, Ordering::Relaxed);
                    let stats = stats.clone();
                    let kind = kind.clone();
                    monoio::spawn(async move {
                        let _ = match kind {
                            BackendKind::Echo => echo(stream, &stats).await,
                            BackendKind::Sink => sink(stream, &stats).await,
                            BackendKind::Http(cfg) => http::serve_http(stream, &cfg, &stats).await,
                        };
                    });
                }
                Err(_) => monoio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    };
    monoio::select! {
        _ = accept => {}
        _ = stop.recv_async() => {}
    }
}

async fn echo(mut stream: TcpStream, stats: &BackendStats) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        buf.clear();
        let (res, b) = stream.read(buf).await;
        buf = b;
        let n = res?;
        if n == 0 {
            return stream.shutdown().await;
        }
        stats.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        let (res, b) = stream.write_all(buf).await;
        buf = b;
        res?;
    }
}

async fn sink(mut stream: TcpStream, stats: &BackendStats) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        buf.clear();
        let (res, b) = stream.read(buf).await;
        buf = b;
        let n = res?;
        if n == 0 {
            return Ok(());
        }
        stats.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
    }
}
