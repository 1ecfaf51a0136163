//! HTTP/2 toward upstreams, on both I/O drivers: either client protocol to
//! an HTTP/2 cluster, the downstream protocol preserved, ALPN over TLS.
//! gRPC through the proxy is in tests/grpc.rs.

// Test peers run on plain threads, outside the data path: a Mutex is fine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::admin::TempDir;
use common::h2env::*;
use common::tls::Ca;
use common::*;
use outrigger::worker::Driver;

both_drivers!(
    upstream_http2_from_either_client_protocol,
    downstream_protocol_is_preserved,
);

/// An upstream that speaks HTTP/2 with prior knowledge (through
/// [`answer`], body "h2 upstream") and HTTP/1.1 (body "h1 upstream"),
/// told apart by the connection preface.
fn dual_upstream() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        rt().block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            let flaky = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let flaky = flaky.clone();
                tokio::spawn(async move {
                    let mut first = [0u8; 3];
                    while s.peek(&mut first).await.unwrap_or(0) < 3 {}
                    if &first == b"PRI" {
                        let Ok(mut conn) = h2::server::handshake(s).await else {
                            return;
                        };
                        while let Some(Ok((req, respond))) = conn.accept().await {
                            tokio::spawn(answer(req, respond, flaky.clone()));
                        }
                        return;
                    }
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let Ok(n) = s.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        head.extend_from_slice(&buf[..n]);
                        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            head.drain(..end + 4);
                            let r = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nh1 upstream";
                            if s.write_all(r).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
    });
    addr
}

/// `protocol = "downstream"`: each request reaches the endpoint in the
/// protocol the client spoke, HTTP/1.1 as HTTP/1.1 and HTTP/2 as HTTP/2.
fn downstream_protocol_is_preserved(driver: Driver) {
    let up = dual_upstream();
    let cfg = format!(
        r#"
[runtime]
workers = 1
io = "{io}"

[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "main"

[[routes.main]]
match.path_prefix = "/"
cluster = "app"

[clusters.app]
endpoints = ["{up}"]
protocol = "downstream"
"#,
        io = io_name(driver)
    );
    let server = start(&cfg);
    let addr = server.local_addr("web").unwrap();
    let mut c = common::http::Client::connect(addr);
    for _ in 0..3 {
        let r = c.get("/one", "api.example", "");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"h1 upstream"[..]));
    }
    rt().block_on(async move {
        let client = h2_connect(addr).await;
        for i in 0..3 {
            let mut c = client.clone().ready().await.unwrap();
            let (resp, _) = c.send_request(get(&format!("/h2-{i}")), true).unwrap();
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(body_of(resp.into_body()).await.unwrap(), b"h2 upstream");
        }
    });
    // And HTTP/1.1 again, after the HTTP/2 pool exists.
    let r = c.get("/two", "api.example", "");
    assert_eq!(r.body, b"h1 upstream");
}

fn upstream_http2_from_either_client_protocol(driver: Driver) {
    let (up, conns) = h2_upstream();
    let cfg = format!(
        r#"
[runtime]
workers = 1
io = "{io}"

[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "main"

[[routes.main]]
match.path_prefix = "/"
cluster = "h2up"
response_headers = {{ set = {{ "x-proxy" = "outrigger" }} }}

[clusters.h2up]
endpoints = ["{up}"]
protocol = "http2"
"#,
        io = io_name(driver)
    );
    let server = start(&cfg);
    let addr = server.local_addr("web").unwrap();
    // HTTP/1.1 → HTTP/2: Host becomes :authority, forwarding fields pass.
    let mut c = common::http::Client::connect(addr);
    let r = c.get("/a?b=1", "api.example", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-seen-path"), Some("/a?b=1"));
    assert_eq!(r.header("x-seen-authority"), Some("api.example"));
    assert_eq!(r.header("x-seen-x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(r.header("x-seen-via"), Some("1.1 outrigger"));
    assert_eq!(r.header("x-proxy"), Some("outrigger"));
    assert_eq!(r.body, b"h2 upstream");
    // An empty declared body: the stream ends with its HEADERS.
    c.send(b"POST /empty HTTP/1.1\r\nhost: api.example\r\ncontent-length: 0\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-seen-body"), Some("0"));
    // A chunked HTTP/1.1 body becomes DATA frames.
    c.send(b"POST /up HTTP/1.1\r\nhost: api.example\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.header("x-seen-method"), Some("POST"));
    assert_eq!(r.header("x-seen-body"), Some("11"));
    // gRPC trailers reach an HTTP/1.1 client in the last chunk.
    c.send(b"POST /grpc/Svc/M HTTP/1.1\r\nhost: api.example\r\ncontent-type: application/grpc\r\nte: trailers\r\ncontent-length: 0\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.header("x-seen-te"), Some("trailers"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, b"h2 upstream");

    // HTTP/2 → HTTP/2: 40 concurrent streams, trailers end to end, few
    // upstream connections.
    rt().block_on(async move {
        let client = h2_connect(addr).await;
        let mut pending = Vec::new();
        for i in 0..40 {
            let mut c = client.clone().ready().await.unwrap();
            let (resp, _) = c.send_request(get(&format!("/m{i}")), true).unwrap();
            pending.push((i, resp));
        }
        for (i, resp) in pending {
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(
                resp.headers().get("x-seen-path").unwrap().to_str().unwrap(),
                format!("/m{i}")
            );
            assert_eq!(body_of(resp.into_body()).await.unwrap(), b"h2 upstream");
        }
        let mut c = client.clone().ready().await.unwrap();
        let req = ::http::Request::builder()
            .method("POST")
            .uri("http://api.example/grpc/Svc/Call")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (resp, mut send) = c.send_request(req, false).unwrap();
        send.send_data(Bytes::from_static(b"\0\0\0\0\x03abc"), true)
            .unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.headers().get("x-seen-body").unwrap(), "8");
        assert_eq!(resp.headers().get("x-seen-te").unwrap(), "trailers");
        let mut body = resp.into_body();
        while let Some(d) = body.data().await {
            d.unwrap();
        }
        let t = body.trailers().await.unwrap().unwrap();
        assert_eq!(t.get("grpc-status").unwrap(), "0");
        assert_eq!(t.get("grpc-message").unwrap(), "fine");
    });
    let opened = conns.load(std::sync::atomic::Ordering::SeqCst);
    assert!(opened <= 2, "{opened} upstream connections for 43 requests");
}

both_drivers!(tls_upstreams_pick_http2_by_alpn);

/// Outrigger in front of Outrigger over TLS: `protocol = "auto"` speaks
/// HTTP/2 when the upstream's ALPN picks `h2` and HTTP/1.1 when it does
/// not; `protocol = "http2"` requires it.
fn tls_upstreams_pick_http2_by_alpn(driver: Driver) {
    let app = app(driver);
    let dir = TempDir::new("h2-alpn-up");
    let ca = Ca::new("test CA");
    ca.leaf(&["localhost"]).write(&dir.0, "server");
    std::fs::write(dir.path("ca.pem"), ca.pem()).unwrap();
    let inner = |http2: &str| {
        format!(
            r#"
[runtime]
workers = 1
io = "{io}"
[listeners.tls]
address = "127.0.0.1:0"
protocol = "http"
routes = "main"
http2 = {http2}
tls = {{ cert = "{cert}", key = "{key}" }}
[[routes.main]]
match.path_prefix = "/"
cluster = "app"
[clusters.app]
endpoints = ["{app}"]
"#,
            io = io_name(driver),
            cert = dir.path("server.pem").display(),
            key = dir.path("server.key").display(),
            app = app.addr
        )
    };
    let outer = |up: SocketAddr, protocol: &str| {
        format!(
            r#"
[runtime]
workers = 1
io = "{io}"
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "main"
[[routes.main]]
match.path_prefix = "/"
cluster = "inner"
[clusters.inner]
endpoints = ["{up}"]
protocol = "{protocol}"
tls = {{ server_name = "localhost", ca = "{ca}" }}
"#,
            io = io_name(driver),
            ca = dir.path("ca.pem").display()
        )
    };
    let by_protocol = |s: &outrigger::Server, p: &str| {
        metric(
            s,
            "outrigger_listener_requests_by_protocol_total",
            &[("listener", "tls"), ("protocol", p)],
        )
    };
    for (http2, protocol, want) in [
        ("true", "auto", "HTTP/2"),
        ("true", "http2", "HTTP/2"),
        ("false", "auto", "HTTP/1.1"),
    ] {
        let b = start(&inner(http2));
        let a = start(&outer(b.local_addr("tls").unwrap(), protocol));
        let mut c = common::http::Client::connect(a.local_addr("web").unwrap());
        for i in 0..3 {
            let r = c.get(&format!("/p{i}"), "svc", "");
            assert_eq!(r.status, 200, "{http2} {protocol}");
            assert_eq!(r.header("x-echo-target"), Some(format!("/p{i}").as_str()));
            assert_eq!(r.header("x-echo-x-forwarded-proto"), Some("https"));
        }
        assert!(
            eventually(|| by_protocol(&b, want) == 3.0),
            "{http2} {protocol}: {} {want} requests",
            by_protocol(&b, want)
        );
    }
}
