//! The admin API: a small HTTP/1.1 server on its own thread (and one short
//! thread per connection, at most `MAX_CONNECTIONS`), never on a worker.
//! It reads the published snapshot and the workers' single-writer counters
//! and asks the control thread for reloads and drains.
//!
//! Every response closes the connection; request heads are limited to
//! 8 KiB and bodies are ignored (and limited to 64 KiB).
//!
//! The same server, scoped to [`Scope::Metrics`], is the `[metrics]`
//! listener: `/metrics`, `/stats/prometheus`, `/healthz` and `/ready`,
//! read-only, for a scraper on the pod's address.

mod handlers;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

use crate::control::shared::{Event, Shared};

/// Connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 16;
/// Longest request head.
const MAX_HEAD: usize = 8 * 1024;
/// Longest request body read (and discarded).
const MAX_BODY: usize = 64 * 1024;
/// Socket read and write timeout.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What a server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The whole admin API (loopback: it can reload and drain).
    Admin,
    /// The read-only scrape endpoints only.
    Metrics,
}

/// The running admin server.
#[derive(Debug)]
pub struct AdminHandle {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    state: Arc<ArcSwapOption<Shared>>,
}

impl AdminHandle {
    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The workers are up: serve every endpoint from now on.
    pub fn set_ready(&self, shared: Arc<Shared>) {
        self.state.store(Some(shared));
    }

    /// Stop accepting (the accept loop is woken by a connection to itself).
    pub fn stop(&self) {
        if !self.stop.swap(true, Ordering::Relaxed) {
            let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(1));
        }
    }
}

/// What a handler sees.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    /// The Host, Content-Type and Origin fields, when sent.
    host: Option<String>,
    content_type: Option<String>,
    origin: bool,
}

/// What a handler answers.
#[derive(Debug)]
struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    allow: Option<&'static str>,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
            allow: None,
        }
    }

    fn json(status: u16, v: &serde_json::Value) -> Self {
        let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            body,
            allow: None,
        }
    }
}

/// Start the `outrigger-admin` thread on a bound listener. Until
/// [`AdminHandle::set_ready`] it answers `/healthz` 200 and everything else
/// 503 `starting`.
pub fn spawn(
    listener: TcpListener,
    inbox: flume::Sender<Event>,
    scope: Scope,
) -> std::io::Result<AdminHandle> {
    let address = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let state: Arc<ArcSwapOption<Shared>> = Arc::new(ArcSwapOption::empty());
    let shared = state.clone();
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name(match scope {
            Scope::Admin => "outrigger-admin".into(),
            Scope::Metrics => "outrigger-metrics".into(),
        })
        .spawn(move || {
            crate::rt::deprioritize_current_thread();
            for stream in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                while busy.load(Ordering::Acquire) >= MAX_CONNECTIONS {
                    std::thread::sleep(Duration::from_millis(1));
                }
                busy.fetch_add(1, Ordering::AcqRel);
                let (shared, inbox, done) = (shared.clone(), inbox.clone(), busy.clone());
                let spawned = std::thread::Builder::new()
                    .name("outrigger-admin-conn".into())
                    .spawn(move || {
                        crate::rt::deprioritize_current_thread();
                        serve(stream, shared.load_full().as_deref(), &inbox, scope);
                        done.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    busy.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })?;
    Ok(AdminHandle {
        address,
        stop,
        state,
    })
}

fn serve(
    mut stream: TcpStream,
    shared: Option<&Shared>,
    inbox: &flume::Sender<Event>,
    scope: Scope,
) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let (response, head_only) = match read_request(&mut stream) {
        Ok(req) => {
            let response = match scope {
                Scope::Admin => handlers::route(&req, shared, inbox),
                Scope::Metrics => handlers::scrape(&req, shared),
            };
            (response, req.method == "HEAD")
        }
        Err(status) => (Response::text(status, "bad request\n"), false),
    };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\ncache-control: no-store\r\n",
        response.status,
        crate::http::error::reason(response.status),
        response.content_type,
        response.body.len()
    );
    if let Some(allow) = response.allow {
        head.push_str(&format!("allow: {allow}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    if !head_only {
        let _ = stream.write_all(&response.body);
    }
    let _ = stream.flush();
}

/// Read one request head (and discard its body); an error status otherwise.
fn read_request(stream: &mut TcpStream) -> Result<Request, u16> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).map_err(|_| 408u16)?;
        if n == 0 {
            return Err(400);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let length = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| {
                        std::str::from_utf8(h.value)
                            .ok()?
                            .trim()
                            .parse::<usize>()
                            .ok()
                    })
                    .unwrap_or(0);
                if length > MAX_BODY {
                    return Err(413);
                }
                let field = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .map(|v| v.trim().to_string())
                };
                let request = Request {
                    method: req.method.unwrap_or("").to_string(),
                    path: req.path.unwrap_or("/").to_string(),
                    host: field("host"),
                    content_type: field("content-type"),
                    origin: field("origin").is_some(),
                };
                let mut have = buf.len() - head_len;
                while have < length {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => have += n,
                    }
                }
                return Ok(request);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err(431),
            Err(_) => return Err(400),
        }
    }
}
