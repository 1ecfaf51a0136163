//! gRPC through the proxy on both I/O drivers: unary calls over the
//! hyperium client (statuses, trailers-only answers, retries, deadlines),
//! gRPC-Web translation, and a real grpcio client and server.

// Test peers run on plain threads, outside the data path: a Mutex is fine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::admin::{parse_prometheus, TempDir};
use common::h2env::*;
use common::*;
use outrigger::worker::Driver;

both_drivers!(grpc_calls, grpc_web_calls);

/// A unary gRPC call over the hyperium client: status, grpc-status (from
/// the head of a trailers-only answer, else the trailers), body.
async fn grpc_call(
    client: &h2::client::SendRequest<Bytes>,
    path: &str,
    extra: &[(&str, &str)],
) -> (u16, Option<String>, Vec<u8>) {
    let mut c = client.clone().ready().await.unwrap();
    let mut req = ::http::Request::builder()
        .method("POST")
        .uri(format!("http://api.example{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (n, v) in extra {
        req = req.header(*n, *v);
    }
    let (resp, mut send) = c.send_request(req.body(()).unwrap(), false).unwrap();
    send.send_data(Bytes::from_static(b"\0\0\0\0\x02hi"), true)
        .unwrap();
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    let head_grpc = resp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string());
    let mut body = resp.into_body();
    let mut data = Vec::new();
    while let Some(d) = body.data().await {
        data.extend_from_slice(&d.unwrap());
    }
    let trailer_grpc = body.trailers().await.unwrap().and_then(|t| {
        t.get("grpc-status")
            .map(|v| v.to_str().unwrap().to_string())
    });
    (status, head_grpc.or(trailer_grpc), data)
}

fn grpc_calls(driver: Driver) {
    let (up, _) = h2_upstream();
    let dir = TempDir::new("grpc");
    let log = dir.path("access.log");
    let cfg = format!(
        r#"
[runtime]
workers = 1
io = "{io}"

[access_log]
path = "{log}"
format = "json"
flush_interval = "50ms"

[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "main"

[[routes.main]]
match.grpc_service = "test.Echo"
cluster = "h2up"

[[routes.main]]
match.grpc_service = "test.Flaky"
match.grpc_method = "Call"
cluster = "h2up"
retry = {{ attempts = 2, on = ["unavailable"] }}

[[routes.main]]
match.grpc_service = "test.Slow"
cluster = "h2up"
timeout = "5s"

[[routes.main]]
match.path_prefix = "/test.Echo/"
direct_response = {{ status = 418, body = "not grpc" }}

[clusters.h2up]
endpoints = ["{up}"]
protocol = "http2"
"#,
        io = io_name(driver),
        log = log.display()
    );
    let server = start(&cfg);
    let addr = server.local_addr("web").unwrap();
    rt().block_on(async move {
        let client = h2_connect(addr).await;
        // A unary call: trailers end to end.
        let (status, grpc, body) = grpc_call(&client, "/test.Echo/Say", &[]).await;
        assert_eq!(
            (status, grpc.as_deref(), &body[..]),
            (200, Some("0"), &b"h2 upstream"[..])
        );
        // match.grpc_* needs a gRPC content-type.
        let mut c = client.clone().ready().await.unwrap();
        let (resp, _) = c.send_request(get("/test.Echo/Say"), true).unwrap();
        assert_eq!(resp.await.unwrap().status(), 418);
        // UNAVAILABLE in a trailers-only answer is retried (retry.on).
        let (status, grpc, _) = grpc_call(&client, "/test.Flaky/Call", &[]).await;
        assert_eq!((status, grpc.as_deref()), (200, Some("0")));
        // grpc-timeout shorter than the route's: DEADLINE_EXCEEDED, in
        // gRPC form, at the call's deadline.
        let started = Instant::now();
        let (status, grpc, _) =
            grpc_call(&client, "/test.Slow/Call", &[("grpc-timeout", "300m")]).await;
        let took = started.elapsed();
        assert_eq!((status, grpc.as_deref()), (200, Some("4")));
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_millis(1500),
            "{took:?}"
        );
        // No route: UNIMPLEMENTED, not a 404 page.
        let (status, grpc, body) = grpc_call(&client, "/test.None/Call", &[]).await;
        assert_eq!((status, grpc.as_deref()), (200, Some("12")));
        assert!(body.is_empty());
    });
    let m = parse_prometheus(&server.shared().export(outrigger::metrics::prometheus));
    let grpc = |code: &str| {
        m.value(
            "outrigger_cluster_grpc_responses_total",
            &[("cluster", "h2up"), ("grpc_status", code)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(grpc("ok"), 2.0);
    assert_eq!(grpc("unavailable"), 1.0);
    let lines = common::admin::read_log(&dir, 5);
    let statuses: Vec<Option<i64>> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["grpc_status"].as_i64())
        .collect();
    assert_eq!(
        statuses,
        [Some(0), None, Some(0), Some(4), Some(12)],
        "{lines:?}"
    );
}

/// The trailer frame of a gRPC-Web body (flag 0x80, length, fields).
fn trailer_frame(fields: &str) -> Vec<u8> {
    let mut f = vec![0x80];
    f.extend_from_slice(&(fields.len() as u32).to_be_bytes());
    f.extend_from_slice(fields.as_bytes());
    f
}

fn grpc_web_calls(driver: Driver) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (up, _) = h2_upstream();
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
match.path_prefix = "/test."
cluster = "h2up"
grpc_web = true
grpc_web_cors_origins = ["https://app.example"]

[[routes.main]]
match.path_prefix = "/down."
cluster = "down"
grpc_web = true
grpc_web_cors_origins = ["*"]

[clusters.h2up]
endpoints = ["{up}"]
protocol = "http2"

[clusters.down]
endpoints = ["{down}"]
protocol = "http2"
"#,
        io = io_name(driver),
        down = closed_port()
    );
    let server = start(&cfg);
    let addr = server.local_addr("web").unwrap();
    let message = b"\0\0\0\0\x02hi";
    let trailers = trailer_frame("grpc-status:0\r\ngrpc-message:fine\r\n");

    // Binary, from an HTTP/1.1 client (a browser's fetch): gRPC upstream,
    // the trailers as the body's last frame, CORS for the allowed origin.
    let mut c = common::http::Client::connect(addr);
    let mut req = format!(
        "POST /test.Echo/Say HTTP/1.1\r\nhost: api\r\norigin: https://app.example\r\ncontent-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\ncontent-length: {}\r\n\r\n",
        message.len()
    )
    .into_bytes();
    req.extend_from_slice(message);
    c.send(&req);
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-seen-content-type"),
        Some("application/grpc+proto")
    );
    assert_eq!(r.header("x-seen-te"), Some("trailers"));
    assert_eq!(r.header("x-seen-body"), Some("7"));
    assert_eq!(r.header("content-type"), Some("application/grpc-web"));
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let mut want = b"h2 upstream".to_vec();
    want.extend_from_slice(&trailers);
    assert_eq!(r.body, want);

    // Text: base64 both ways.
    let encoded = b64.encode(message);
    c.send(
        format!(
            "POST /test.Echo/Say HTTP/1.1\r\nhost: api\r\ncontent-type: application/grpc-web-text\r\ncontent-length: {}\r\n\r\n{encoded}",
            encoded.len()
        )
        .as_bytes(),
    );
    let r = c.read_response(false).unwrap();
    assert_eq!(r.header("x-seen-body"), Some("7"));
    assert_eq!(r.header("content-type"), Some("application/grpc-web-text"));
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(b64.decode(&r.body).unwrap(), want);

    // CORS preflight: allowed origin, then one that is not.
    c.send(b"OPTIONS /test.Echo/Say HTTP/1.1\r\nhost: api\r\norigin: https://app.example\r\naccess-control-request-method: POST\r\naccess-control-request-headers: content-type,x-grpc-web\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("content-type,x-grpc-web")
    );
    c.send(b"OPTIONS /test.Echo/Say HTTP/1.1\r\nhost: api\r\norigin: https://evil.example\r\naccess-control-request-method: POST\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), None);

    // An unreachable cluster: UNAVAILABLE in gRPC-Web form, readable by
    // the browser (CORS).
    c.send(format!(
        "POST /down.Svc/M HTTP/1.1\r\nhost: api\r\norigin: https://any.example\r\ncontent-type: application/grpc-web+proto\r\ncontent-length: {}\r\n\r\n",
        message.len()
    ).as_bytes());
    c.send(message);
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), Some("14"));
    assert_eq!(r.header("content-type"), Some("application/grpc-web+proto"));
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://any.example")
    );

    // The same over HTTP/2 (a browser on an h2 connection).
    rt().block_on(async move {
        let client = h2_connect(addr).await;
        let mut c = client.ready().await.unwrap();
        let req = ::http::Request::builder()
            .method("POST")
            .uri("http://api/test.Echo/Say")
            .header("content-type", "application/grpc-web+proto")
            .body(())
            .unwrap();
        let (resp, mut send) = c.send_request(req, false).unwrap();
        send.send_data(Bytes::from_static(b"\0\0\0\0\x02hi"), true)
            .unwrap();
        let resp = resp.await.unwrap();
        // The upstream answered `application/grpc`.
        assert_eq!(
            resp.headers().get("content-type").unwrap(),
            "application/grpc-web"
        );
        let mut body = resp.into_body();
        let mut data = Vec::new();
        while let Some(d) = body.data().await {
            data.extend_from_slice(&d.unwrap());
        }
        assert_eq!(data, want);
        assert!(body.trailers().await.unwrap().is_none());
    });
}

both_drivers!(grpcio_through_outrigger);

/// Kills a child process when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have_grpcio() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A real gRPC client and server (Python grpcio) through the proxy: unary
/// and server-streaming calls, a deadline, UNAVAILABLE retried by
/// `retry.on`, the server's UNIMPLEMENTED, and the proxy's own for no route.
fn grpcio_through_outrigger(driver: Driver) {
    if !have_grpcio() {
        assert!(
            std::env::var_os("OUTRIGGER_REQUIRE_INTEROP").is_none(),
            "python3 grpcio is required (OUTRIGGER_REQUIRE_INTEROP is set)"
        );
        eprintln!("SKIPPED: python3 grpcio not installed");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/grpc_peer.py");
    let port = closed_port().port();
    let mut server = Child(
        Command::new("python3")
            .args([script, "server", &port.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut ready = [0u8; 6];
    server
        .0
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    assert_eq!(&ready, b"ready\n");
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
match.grpc_service = "test.Echo"
match.grpc_method = "Flaky"
cluster = "py"
retry = {{ attempts = 2, on = ["unavailable"] }}

[[routes.main]]
match.grpc_service = "test.Echo"
cluster = "py"

[clusters.py]
endpoints = ["127.0.0.1:{port}"]
protocol = "http2"
"#,
        io = io_name(driver)
    );
    let proxy = start(&cfg);
    let addr = proxy.local_addr("web").unwrap();
    let out = Command::new("python3")
        .args([script, "client", &addr.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "unary ok echo:hi",
            "stream ok part-0,part-1,part-2,part-3",
            "deadline error DEADLINE_EXCEEDED",
            "flaky ok second try",
            "missing error UNIMPLEMENTED",
            "noroute error UNIMPLEMENTED",
        ],
        "{text}"
    );
}
