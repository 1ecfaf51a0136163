//! Active health checks of HTTP/2 clusters: gRPC health checking
//! (`grpc.health.v1.Health/Check`, SERVING is healthy) and `http` probes
//! sent over HTTP/2 to a cluster that speaks only HTTP/2. An endpoint that
//! stops serving leaves the rotation (503 `no_healthy_upstream`) and
//! returns when it serves again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::http::Client;
use common::*;
use outrigger::worker::Driver;

both_drivers!(grpc_and_http2_health_checks);

/// What the upstream was asked by health checks.
#[derive(Default)]
struct Asked {
    /// Bodies of the gRPC health calls.
    grpc: Mutex<Vec<Vec<u8>>>,
    /// HTTP/2 `GET /healthz` probes.
    http: AtomicU8,
}

/// An HTTP/2-only upstream (prior knowledge; anything else is dropped by
/// the h2 handshake): the gRPC health service answers `serving` (1
/// SERVING, 2 NOT_SERVING), `GET /healthz` answers 200 while serving and
/// 503 otherwise, everything else 200 "h2 upstream".
fn upstream(serving: Arc<AtomicU8>, asked: Arc<Asked>) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let (serving, asked) = (serving.clone(), asked.clone());
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(s).await else {
                        return;
                    };
                    while let Some(Ok((req, respond))) = conn.accept().await {
                        tokio::spawn(answer(req, respond, serving.clone(), asked.clone()));
                    }
                });
            }
        });
    });
    addr
}

async fn answer(
    req: ::http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    serving: Arc<AtomicU8>,
    asked: Arc<Asked>,
) {
    let (parts, mut body) = req.into_parts();
    let mut got = Vec::new();
    while let Some(Ok(d)) = body.data().await {
        let _ = body.flow_control().release_capacity(d.len());
        got.extend_from_slice(&d);
    }
    let status = serving.load(Ordering::SeqCst);
    match parts.uri.path() {
        "/grpc.health.v1.Health/Check" => {
            asked.grpc.lock().unwrap().push(got);
            let resp = ::http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            let mut send = respond.send_response(resp, false).unwrap();
            // HealthCheckResponse { status } in one gRPC message.
            let msg = vec![0, 0, 0, 0, 2, 0x08, status];
            send.send_data(Bytes::from(msg), false).unwrap();
            let mut t = ::http::HeaderMap::new();
            t.insert("grpc-status", ::http::HeaderValue::from_static("0"));
            send.send_trailers(t).unwrap();
        }
        "/healthz" => {
            asked.http.fetch_add(1, Ordering::SeqCst);
            let code = if status == 1 { 200 } else { 503 };
            let resp = ::http::Response::builder().status(code).body(()).unwrap();
            let _ = respond.send_response(resp, true);
        }
        _ => {
            let resp = ::http::Response::builder().status(200).body(()).unwrap();
            let mut send = respond.send_response(resp, false).unwrap();
            send.send_data(Bytes::from_static(b"h2 upstream"), true)
                .unwrap();
        }
    }
}

fn grpc_and_http2_health_checks(driver: Driver) {
    let serving = Arc::new(AtomicU8::new(1));
    let asked = Arc::new(Asked::default());
    let (g, h, p) = (
        upstream(serving.clone(), asked.clone()),
        upstream(serving.clone(), asked.clone()),
        upstream(serving.clone(), asked.clone()),
    );
    let check =
        r#"interval = "100ms", timeout = "500ms", unhealthy_threshold = 2, healthy_threshold = 1"#;
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
match.path_prefix = "/grpc"
cluster = "grpc"

[[routes.main]]
match.path_prefix = "/bypath"
cluster = "bypath"

[[routes.main]]
match.path_prefix = "/"
cluster = "h2"

# The gRPC health method's path on an HTTP/2 cluster: a gRPC health check
# of the whole server (empty service).
[clusters.bypath]
endpoints = ["{p}"]
protocol = "http2"
health_check = {{ path = "/grpc.health.v1.Health/Check", {check} }}

[clusters.grpc]
endpoints = ["{g}"]
protocol = "http2"
health_check = {{ protocol = "grpc", service = "shop", {check} }}

[clusters.h2]
endpoints = ["{h}"]
protocol = "http2"
health_check = {{ protocol = "http", path = "/healthz", {check} }}
"#,
        io = io_name(driver)
    );
    let server = start(&cfg);
    let addr = server.local_addr("web").unwrap();
    let answer = |path: &str| {
        let r = Client::connect(addr).get(path, "svc", "");
        (r.status, r.header("x-outrigger-error").map(str::to_string))
    };
    // Serving: both clusters take traffic, and stay in rotation while
    // their probes keep passing.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(answer("/grpc/x"), (200, None));
    assert_eq!(answer("/bypath/x"), (200, None));
    assert_eq!(answer("/x"), (200, None));
    assert!(eventually(|| asked.http.load(Ordering::SeqCst) >= 3));
    {
        let calls = asked.grpc.lock().unwrap();
        assert!(calls.len() >= 3, "{} gRPC health calls", calls.len());
        // HealthCheckRequest { service: "shop" }, framed; and the empty
        // request of the check named by its path.
        let shop: &[u8] = b"\0\0\0\0\x06\x0a\x04shop";
        let whole: &[u8] = b"\0\0\0\0\0";
        assert!(calls.iter().all(|c| c == shop || c == whole), "{calls:?}");
        assert!(calls.iter().any(|c| c == shop) && calls.iter().any(|c| c == whole));
    }
    // NOT_SERVING (and /healthz 503): both leave the rotation.
    serving.store(2, Ordering::SeqCst);
    let gone = (503, Some("no_healthy_upstream".to_string()));
    assert!(eventually(|| answer("/grpc/x") == gone));
    assert!(eventually(|| answer("/bypath/x") == gone));
    assert!(eventually(|| answer("/x") == gone));
    // Serving again: back after one passing probe.
    serving.store(1, Ordering::SeqCst);
    assert!(eventually(|| answer("/grpc/x") == (200, None)));
    assert!(eventually(|| answer("/bypath/x") == (200, None)));
    assert!(eventually(|| answer("/x") == (200, None)));
}
