//! Shared pieces of the HTTP/2 tests (tests/http2*.rs): the upstreams,
//! the proxy config, the external clients and the hyperium client.

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use outrigger::backends::{self, Backend, BackendKind, HttpBackend};
use outrigger::worker::Driver;

use super::admin::parse_prometheus;
use super::io_name;
use super::script::scripted;

pub fn app(driver: Driver) -> Backend {
    backends::start(
        BackendKind::Http(HttpBackend::named("app")),
        "127.0.0.1:0".parse().unwrap(),
        1,
        driver,
    )
    .unwrap()
}

/// An upstream for what the built-in one does not do: `/trailers` answers
/// chunked with trailers, `/cut` dies after half of its declared body.
pub fn scripted_upstream() -> SocketAddr {
    let (addr, _) = scripted(|mut s, _| {
        let mut buf = Vec::new();
        while let Some(req) = super::script::read_request(&mut s, &mut buf) {
            if req.line.contains("/trailers") {
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: application/grpc\r\n\r\n5\r\nhello\r\n0\r\ngrpc-status: 0\r\nx-trailer: yes\r\n\r\n",
                );
            } else if req.line.contains("/cut") {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789");
                return;
            } else {
                super::script::ok(&mut s, "scripted");
            }
        }
    });
    addr
}

pub fn config(
    driver: Driver,
    up: SocketAddr,
    scripted: SocketAddr,
    listener_extra: &str,
) -> String {
    format!(
        r#"
[runtime]
workers = 1
io = "{io}"
drain_timeout = "3s"

[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "main"
send_timeout = "1s"
{listener_extra}

[[routes.main]]
match.path = "/healthz"
direct_response = {{ status = 200, body = "ok" }}

[[routes.main]]
match.path_prefix = "/s/"
rewrite.path_prefix = "/"
cluster = "scripted"

[[routes.main]]
match.path_prefix = "/app/"
rewrite.path_prefix = "/"
cluster = "app"
response_headers = {{ set = {{ "x-proxy" = "outrigger" }} }}

[clusters.app]
endpoints = ["{up}"]

[clusters.scripted]
endpoints = ["{scripted}"]
"#,
        io = io_name(driver)
    )
}

pub fn have(cmd: &str) -> bool {
    Command::new(cmd).arg("--version").output().is_ok()
}

/// Skip (loudly) when a client program is missing, unless CI requires it.
pub fn require(cmd: &str) -> bool {
    if have(cmd) {
        return true;
    }
    assert!(
        std::env::var_os("OUTRIGGER_REQUIRE_INTEROP").is_none(),
        "{cmd} is required (OUTRIGGER_REQUIRE_INTEROP is set)"
    );
    eprintln!("SKIPPED: {cmd} not installed");
    false
}

pub fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn metric(server: &outrigger::Server, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = server.shared().export(outrigger::metrics::prometheus);
    parse_prometheus(&text).value(name, labels).unwrap_or(0.0)
}

/// A tokio runtime for the hyperium client (test side only).
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub async fn h2_connect(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

pub fn get(path: &str) -> ::http::Request<()> {
    ::http::Request::builder()
        .uri(format!("http://localhost{path}"))
        .body(())
        .unwrap()
}

/// Read a whole response body, giving the window back as it goes.
pub async fn body_of(mut body: h2::RecvStream) -> Result<Vec<u8>, h2::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

pub fn healthy(addr: SocketAddr) {
    let mut c = super::http::Client::connect(addr);
    let r = c.get("/healthz", "localhost", "");
    assert_eq!(r.status, 200);
}

/// An HTTP/2 upstream (the hyperium server on its own thread): answers
/// with what it saw in `x-seen-*` fields; `/grpc` ends with trailers.
/// Returns its address and its connection count.
pub fn h2_upstream() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let conns = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        rt().block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            let flaky = std::sync::Arc::new(AtomicUsize::new(0));
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                counted.fetch_add(1, Ordering::SeqCst);
                let flaky = flaky.clone();
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(s).await else {
                        return;
                    };
                    while let Some(Ok((req, respond))) = conn.accept().await {
                        tokio::spawn(answer(req, respond, flaky.clone()));
                    }
                });
            }
        });
    });
    (addr, conns)
}

/// One answer of `h2_upstream`; `flaky` counts calls of `/test.Flaky/*`
/// (the first of each pair fails).
pub async fn answer(
    req: ::http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    flaky: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let (parts, body) = req.into_parts();
    let got = body_of(body).await.unwrap_or_default();
    let path = parts.uri.path();
    if path.starts_with("/test.Flaky/")
        && flaky.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 2 == 0
    {
        // A trailers-only answer: UNAVAILABLE.
        let resp = ::http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .header("grpc-status", "14")
            .header("grpc-message", "try again")
            .body(())
            .unwrap();
        let _ = respond.send_response(resp, true);
        return;
    }
    if path.starts_with("/test.Slow/") {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mut resp = ::http::Response::builder()
        .status(200)
        .header("x-seen-method", parts.method.as_str())
        .header(
            "x-seen-path",
            parts.uri.path_and_query().map_or("", |p| p.as_str()),
        )
        .header(
            "x-seen-authority",
            parts.uri.authority().map_or("", |a| a.as_str()),
        )
        .header("x-seen-body", got.len().to_string());
    for name in [
        "x-forwarded-for",
        "via",
        "te",
        "content-type",
        "x-request-id",
    ] {
        if let Some(v) = parts.headers.get(name) {
            resp = resp.header(format!("x-seen-{name}"), v.clone());
        }
    }
    let grpc = parts
        .headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        resp = resp.header("content-type", "application/grpc");
    }
    let mut send = respond
        .send_response(resp.body(()).unwrap(), false)
        .unwrap();
    send.send_data(Bytes::from_static(b"h2 upstream"), !grpc)
        .unwrap();
    if grpc {
        let mut t = ::http::HeaderMap::new();
        t.insert("grpc-status", ::http::HeaderValue::from_static("0"));
        t.insert("grpc-message", ::http::HeaderValue::from_static("fine"));
        send.send_trailers(t).unwrap();
    }
}
