//! HTTP/2 on http listeners, end to end on both I/O drivers: curl and
//! h2load (nghttp2) as clients nobody here wrote, the hyperium `h2` client
//! for streams, bodies and trailers, and hand-built frames for the limits
//! and abuse defences (RFC 9113).

// Test peers run on plain threads, outside the data path: a Mutex is fine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::admin::{parse_prometheus, TempDir};
use common::h2raw::*;
use common::script::scripted;
use common::tls::Ca;
use common::*;
use outrigger::backends::{self, Backend, BackendKind, HttpBackend};
use outrigger::worker::Driver;

both_drivers!(
    curl_speaks_h2c_h2_and_http1_on_one_port,
    h2_streams_bodies_and_trailers,
    h2load_runs_many_streams,
    settings_follow_the_listener_keys,
    abuse_ends_in_goaway,
    stalled_reader_is_reset,
    goaway_on_age_reload_and_drain,
    http2_false_turns_it_off,
);

fn app(driver: Driver) -> Backend {
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
fn scripted_upstream() -> SocketAddr {
    let (addr, _) = scripted(|mut s, _| {
        let mut buf = Vec::new();
        while let Some(req) = common::script::read_request(&mut s, &mut buf) {
            if req.line.contains("/trailers") {
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: application/grpc\r\n\r\n5\r\nhello\r\n0\r\ngrpc-status: 0\r\nx-trailer: yes\r\n\r\n",
                );
            } else if req.line.contains("/cut") {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789");
                return;
            } else {
                common::script::ok(&mut s, "scripted");
            }
        }
    });
    addr
}

fn config(driver: Driver, up: SocketAddr, scripted: SocketAddr, listener_extra: &str) -> String {
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

fn have(cmd: &str) -> bool {
    Command::new(cmd).arg("--version").output().is_ok()
}

/// Skip (loudly) when a client program is missing, unless CI requires it.
fn require(cmd: &str) -> bool {
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

fn curl(args: &[&str]) -> String {
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

fn metric(server: &outrigger::Server, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = server.shared().export(outrigger::metrics::prometheus);
    parse_prometheus(&text).value(name, labels).unwrap_or(0.0)
}

fn curl_speaks_h2c_h2_and_http1_on_one_port(driver: Driver) {
    if !require("curl") {
        return;
    }
    let up = app(driver);
    let dir = TempDir::new("h2-curl");
    let ca = Ca::new("test CA");
    ca.leaf(&["localhost"]).write(&dir.0, "server");
    std::fs::write(dir.path("ca.pem"), ca.pem()).unwrap();
    let plain = config(driver, up.addr, scripted_upstream(), "");
    let server = start(&plain);
    let base = format!("http://{}", server.local_addr("web").unwrap());

    // Prior knowledge: GET, POST with a body, a direct response, a 404.
    let out = curl(&[
        "-i",
        "--http2-prior-knowledge",
        &format!("{base}/app/x?y=1"),
    ]);
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert!(out.contains("x-backend: app"), "{out}");
    assert!(out.contains("x-proxy: outrigger"), "{out}");
    assert!(out.contains("x-echo-target: /x?y=1"), "{out}");
    assert!(out.contains("x-echo-x-forwarded-proto: http"), "{out}");
    assert!(out.contains("x-echo-via: 1.1 outrigger"), "{out}");
    let out = curl(&[
        "-i",
        "--http2-prior-knowledge",
        "--data-binary",
        "twelve bytes",
        &format!("{base}/app/post"),
    ]);
    assert!(out.contains("x-body-bytes: 12"), "{out}");
    assert!(out.contains("x-echo-content-length: 12"), "{out}");
    let out = curl(&["-i", "--http2-prior-knowledge", &format!("{base}/healthz")]);
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert!(out.ends_with("\r\n\r\nok"), "{out}");
    let out = curl(&["-i", "--http2-prior-knowledge", &format!("{base}/nowhere")]);
    assert!(out.starts_with("HTTP/2 404"), "{out}");
    assert!(out.contains("x-outrigger-error: no_route"), "{out}");
    // HTTP/1.1 on the same port.
    let out = curl(&["-i", "--http1.1", &format!("{base}/app/x")]);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // A 2 MiB download streams through the window.
    let size = curl(&[
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        &format!("{base}/app/bytes/2097152"),
    ]);
    assert_eq!(size, "2097152");
    let h2 = metric(
        &server,
        "outrigger_listener_requests_by_protocol_total",
        &[("listener", "web"), ("protocol", "HTTP/2")],
    );
    assert_eq!(h2, 5.0);
    assert_eq!(
        metric(
            &server,
            "outrigger_listener_requests_by_protocol_total",
            &[("listener", "web"), ("protocol", "HTTP/1.1")],
        ),
        1.0
    );
    assert_eq!(
        metric(
            &server,
            "outrigger_listener_http2_connections_total",
            &[("listener", "web")]
        ),
        5.0
    );
    drop(server);

    // TLS: h2 by ALPN, HTTP/1.1 for clients that only offer it.
    let tls = config(
        driver,
        up.addr,
        scripted_upstream(),
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            dir.path("server.pem").display(),
            dir.path("server.key").display()
        ),
    );
    let server = start(&tls);
    let port = server.local_addr("web").unwrap().port();
    let resolve = format!("localhost:{port}:127.0.0.1");
    let url = format!("https://localhost:{port}/app/tls");
    let ca_path = dir.path("ca.pem").display().to_string();
    let out = curl(&[
        "-i",
        "--http2",
        "--cacert",
        &ca_path,
        "--resolve",
        &resolve,
        &url,
    ]);
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert!(out.contains("x-echo-x-forwarded-proto: https"), "{out}");
    let size = curl(&[
        "--http2",
        "--cacert",
        &ca_path,
        "--resolve",
        &resolve,
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        &format!("https://localhost:{port}/app/bytes/3000000"),
    ]);
    assert_eq!(size, "3000000");
    let out = curl(&[
        "-i",
        "--http1.1",
        "--cacert",
        &ca_path,
        "--resolve",
        &resolve,
        &url,
    ]);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

/// A tokio runtime for the hyperium client (test side only).
fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn h2_connect(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

fn get(path: &str) -> ::http::Request<()> {
    ::http::Request::builder()
        .uri(format!("http://localhost{path}"))
        .body(())
        .unwrap()
}

/// Read a whole response body, giving the window back as it goes.
async fn body_of(mut body: h2::RecvStream) -> Result<Vec<u8>, h2::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn h2_streams_bodies_and_trailers(driver: Driver) {
    let up = app(driver);
    let server = start(&config(driver, up.addr, scripted_upstream(), ""));
    let addr = server.local_addr("web").unwrap();
    rt().block_on(async move {
        let client = h2_connect(addr).await;
        // 50 concurrent streams on one connection.
        let mut pending = Vec::new();
        for i in 0..50 {
            let mut c = client.clone().ready().await.unwrap();
            let (resp, _) = c.send_request(get(&format!("/app/n{i}")), true).unwrap();
            pending.push((i, resp));
        }
        for (i, resp) in pending {
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), 200);
            let target = resp.headers().get("x-echo-target").unwrap().clone();
            assert_eq!(target.to_str().unwrap(), format!("/n{i}"));
            assert_eq!(body_of(resp.into_body()).await.unwrap(), b"app");
        }
        // A body without content-length goes upstream chunked, 4 MiB of it,
        // sent within the proxy's window.
        let mut c = client.clone().ready().await.unwrap();
        let req = ::http::Request::builder()
            .method("POST")
            .uri("http://localhost/app/upload")
            .body(())
            .unwrap();
        let (resp, mut send) = c.send_request(req, false).unwrap();
        let piece = Bytes::from(vec![b'u'; 64 * 1024]);
        for _ in 0..64 {
            send.reserve_capacity(piece.len());
            let mut left = piece.clone();
            while !left.is_empty() {
                let n = std::future::poll_fn(|cx| send.poll_capacity(cx))
                    .await
                    .unwrap()
                    .unwrap();
                let part = left.split_to(n.min(left.len()));
                send.send_data(part, false).unwrap();
            }
        }
        send.send_data(Bytes::new(), true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h.get("x-body-bytes").unwrap(), "4194304");
        assert_eq!(h.get("x-echo-transfer-encoding").unwrap(), "chunked");
        // A declared length goes upstream as content-length.
        let mut c = client.clone().ready().await.unwrap();
        let req = ::http::Request::builder()
            .method("PUT")
            .uri("http://localhost/app/put")
            .header("content-length", "5")
            .body(())
            .unwrap();
        let (resp, mut send) = c.send_request(req, false).unwrap();
        send.send_data(Bytes::from_static(b"12345"), true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.headers().get("x-echo-content-length").unwrap(), "5");
        // 8 MiB down, as fast as the client releases window.
        let mut c = client.clone().ready().await.unwrap();
        let (resp, _) = c.send_request(get("/app/bytes/8388608"), true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.headers().get("content-length").unwrap(), "8388608");
        assert_eq!(body_of(resp.into_body()).await.unwrap().len(), 8_388_608);
        // Trailers of a chunked upstream response reach the client.
        let mut c = client.clone().ready().await.unwrap();
        let (resp, _) = c.send_request(get("/s/trailers"), true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(
            resp.headers().get("content-type").unwrap(),
            "application/grpc"
        );
        let mut body = resp.into_body();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            data.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(data, b"hello");
        let trailers = body.trailers().await.unwrap().unwrap();
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        assert_eq!(trailers.get("x-trailer").unwrap(), "yes");
        // An upstream that dies mid-body: the stream is reset, never ended
        // as if complete; the connection goes on.
        let mut c = client.clone().ready().await.unwrap();
        let (resp, _) = c.send_request(get("/s/cut"), true).unwrap();
        // The reset may reach the client before it reads the head.
        let err = match resp.await {
            Ok(resp) => body_of(resp.into_body()).await.unwrap_err(),
            Err(e) => e,
        };
        assert_eq!(err.reason(), Some(h2::Reason::INTERNAL_ERROR), "{err}");
        let mut c = client.clone().ready().await.unwrap();
        let (resp, _) = c.send_request(get("/nowhere"), true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers().get("x-outrigger-error").unwrap(), "no_route");
    });
    assert_eq!(
        metric(
            &server,
            "outrigger_listener_http2_streams_total",
            &[("listener", "web")]
        ),
        56.0
    );
}

fn h2load_runs_many_streams(driver: Driver) {
    if !require("h2load") {
        return;
    }
    let up = app(driver);
    let server = start(&config(driver, up.addr, scripted_upstream(), ""));
    let addr = server.local_addr("web").unwrap();
    let out = Command::new("h2load")
        .args(["-n", "2000", "-c", "4", "-m", "16"])
        .arg(format!("http://{addr}/app/load"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
}

// ---- hand-built frames ----

fn healthy(addr: SocketAddr) {
    let mut c = common::http::Client::connect(addr);
    let r = c.get("/healthz", "localhost", "");
    assert_eq!(r.status, 200);
}

fn settings_follow_the_listener_keys(driver: Driver) {
    let up = app(driver);
    let extra = "http2 = { max_concurrent_streams = 3, initial_stream_window = 32768, max_frame_size = 32768, max_header_list_bytes = 4096 }";
    let server = start(&config(driver, up.addr, scripted_upstream(), extra));
    let addr = server.local_addr("web").unwrap();
    let mut raw = Raw::connect(addr, &[]);
    let settings = raw.server_settings();
    let get = |id: u16| settings.iter().find(|(i, _)| *i == id).map(|(_, v)| *v);
    assert_eq!(get(3), Some(3), "MAX_CONCURRENT_STREAMS in {settings:?}");
    assert_eq!(get(4), Some(32768), "INITIAL_WINDOW_SIZE in {settings:?}");
    assert_eq!(get(5), Some(32768), "MAX_FRAME_SIZE in {settings:?}");
    assert_eq!(get(6), Some(4096), "MAX_HEADER_LIST_SIZE in {settings:?}");
    // Four streams held open (no END_STREAM): the fourth is refused.
    for id in [1u32, 3, 5, 7] {
        let block = request_block("/app/held");
        raw.send(&frame(HEADERS, END_HEADERS, id, &block)).unwrap();
    }
    let refused = raw
        .until(|f| f.kind == RST_STREAM && f.stream == 7)
        .expect("the fourth stream is refused");
    assert_eq!(refused.payload, 7u32.to_be_bytes(), "REFUSED_STREAM");
    // A header list over max_header_list_bytes is answered 431 or reset,
    // never forwarded.
    let mut big = request_block("/app/big-head");
    hpack(&mut big, "x-big", &"b".repeat(6000));
    raw.send(&frame(HEADERS, END_HEADERS | END_STREAM, 9, &big))
        .unwrap();
    let f = raw
        .until(|f| f.stream == 9 && (f.kind == HEADERS || f.kind == RST_STREAM) || f.kind == GOAWAY)
        .expect("an answer to the oversized head");
    if f.kind == HEADERS {
        // :status 431 as a literal or indexed field (static table has none).
        assert!(f.payload.windows(3).any(|w| w == b"431"), "{:?}", f.payload);
    }
    healthy(addr);
    // A frame larger than max_frame_size is a connection error.
    let mut raw = Raw::connect(addr, &[]);
    let _ = raw.server_settings();
    let post = block("POST", "/app/big-frame");
    raw.send(&frame(HEADERS, END_HEADERS, 1, &post)).unwrap();
    let _ = raw.send(&frame(DATA, 0, 1, &vec![b'f'; 40_000]));
    let g = raw
        .until(|f| f.kind == GOAWAY)
        .expect("GOAWAY for a frame over max_frame_size");
    assert_eq!(goaway_code(&g), 6, "FRAME_SIZE_ERROR");
    healthy(addr);
}

/// The GOAWAY code the `h2` crate sends when a header block grows past
/// `max_header_list_bytes` without end (a CONTINUATION flood).
const CONTINUATION_FLOOD_CODE: u32 = 0xb;

fn abuse_ends_in_goaway(driver: Driver) {
    let up = app(driver);
    let server = start(&config(
        driver,
        up.addr,
        scripted_upstream(),
        "http2 = { max_pending_resets = 10 }",
    ));
    let addr = server.local_addr("web").unwrap();
    // Rapid Reset: open and cancel streams at once, many times.
    let mut raw = Raw::connect(addr, &[]);
    let mut id = 1u32;
    let mut burst = Vec::new();
    for _ in 0..500 {
        burst.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &request_block("/app/rr"),
        ));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        id += 2;
    }
    let _ = raw.send(&burst);
    let g = raw
        .until(|f| f.kind == GOAWAY)
        .expect("GOAWAY after a rapid-reset burst");
    assert_eq!(goaway_code(&g), 0xb, "ENHANCE_YOUR_CALM");
    assert!(
        raw.closes_within(Duration::from_secs(5)),
        "then the connection closes"
    );

    // CONTINUATION flood: one header block that never ends.
    let mut raw = Raw::connect(addr, &[]);
    raw.send(&frame(HEADERS, 0, 1, &request_block("/app/flood")))
        .unwrap();
    let mut piece = Vec::new();
    hpack(&mut piece, "x-flood", &"f".repeat(4000));
    let started = Instant::now();
    let mut sent = 0usize;
    while started.elapsed() < Duration::from_secs(5) && sent < 64 * 1024 * 1024 {
        if raw.send(&frame(CONTINUATION, 0, 1, &piece)).is_err() {
            break;
        }
        sent += piece.len();
    }
    assert!(
        sent < 16 * 1024 * 1024,
        "the proxy kept reading an endless header block ({sent} B)"
    );
    let g = raw
        .until(|f| f.kind == GOAWAY)
        .expect("GOAWAY after an endless header block");
    assert_eq!(goaway_code(&g), CONTINUATION_FLOOD_CODE, "GOAWAY code");
    assert!(
        raw.closes_within(Duration::from_secs(5)),
        "then the connection closes"
    );

    // A stream that sends DATA beyond its window is a flow-control error.
    let mut raw = Raw::connect(addr, &[]);
    let _ = raw.server_settings();
    let post = block("POST", "/app/post");
    raw.send(&frame(HEADERS, END_HEADERS, 1, &post)).unwrap();
    let chunk = vec![b'd'; 16384];
    let mut overflow = Vec::new();
    for _ in 0..8 {
        overflow.extend(frame(DATA, 0, 1, &chunk));
    }
    let _ = raw.send(&overflow);
    let f = raw
        .until(|f| (f.kind == RST_STREAM && f.stream == 1) || f.kind == GOAWAY)
        .expect("overflowing the window is an error");
    let code = if f.kind == GOAWAY {
        goaway_code(&f)
    } else {
        u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]])
    };
    assert_eq!(code, 3, "FLOW_CONTROL_ERROR");
    healthy(addr);
    assert!(eventually(|| server.active_connections() <= 1));
}

fn stalled_reader_is_reset(driver: Driver) {
    let up = app(driver);
    let server = start(&config(driver, up.addr, scripted_upstream(), ""));
    let addr = server.local_addr("web").unwrap();
    // The client grants no window (INITIAL_WINDOW_SIZE 0) and asks for a
    // body: after send_timeout (1s) the stream is reset.
    let mut raw = Raw::connect(addr, &[(4, 0)]);
    raw.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block("/app/bytes/100000"),
    ))
    .unwrap();
    let started = Instant::now();
    let f = raw
        .until(|f| f.kind == RST_STREAM && f.stream == 1)
        .expect("the stalled stream is reset");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "reset after {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "reset after {waited:?}");
    let _ = f;
    healthy(addr);
}

fn goaway_on_age_reload_and_drain(driver: Driver) {
    let up = app(driver);
    let cfg = config(
        driver,
        up.addr,
        scripted_upstream(),
        "max_connection_age = \"300ms\"",
    );
    let server = start(&cfg);
    let addr = server.local_addr("web").unwrap();
    // max_connection_age: GOAWAY (NO_ERROR) even on a busy-free connection.
    let mut raw = Raw::connect(addr, &[]);
    let started = Instant::now();
    let g = raw
        .until(|f| f.kind == GOAWAY)
        .expect("GOAWAY at max_connection_age");
    assert_eq!(goaway_code(&g), 0);
    assert!(started.elapsed() >= Duration::from_millis(250));
    drop(raw);

    // A reload that removes the listener: GOAWAY to its connections.
    let plain = config(driver, up.addr, scripted_upstream(), "");
    let mut server2 = start(&plain);
    drop(server);
    let addr2 = server2.local_addr("web").unwrap();
    let mut raw = Raw::connect(addr2, &[]);
    let _ = raw.server_settings();
    raw.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block("/healthz"),
    ))
    .unwrap();
    raw.until(|f| f.kind == DATA && f.flags & END_STREAM != 0)
        .unwrap();
    let without = plain.replace("[listeners.web]", "[listeners.other]");
    let snapshot = outrigger::config::compile(std::path::Path::new("<test>"), &without).unwrap();
    server2.apply(snapshot).unwrap();
    let g = raw
        .until(|f| f.kind == GOAWAY)
        .expect("GOAWAY when the listener is removed");
    assert_eq!(goaway_code(&g), 0);
    drop(raw);

    // Drain: GOAWAY, and the connection ends.
    let server3 = start(&plain);
    let addr3 = server3.local_addr("web").unwrap();
    let mut raw = Raw::connect(addr3, &[]);
    let _ = raw.server_settings();
    server3.drain();
    let g = raw.until(|f| f.kind == GOAWAY).expect("GOAWAY on drain");
    assert_eq!(goaway_code(&g), 0);
    assert!(
        raw.closes_within(Duration::from_secs(5)),
        "the drained connection closes"
    );
    assert!(server3.shutdown(Duration::from_secs(3)));
}

fn http2_false_turns_it_off(driver: Driver) {
    let up = app(driver);
    let server = start(&config(
        driver,
        up.addr,
        scripted_upstream(),
        "http2 = false",
    ));
    let addr = server.local_addr("web").unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    healthy(addr);
}

// ---- HTTP/2 upstreams ----

both_drivers!(
    upstream_http2_from_either_client_protocol,
    downstream_protocol_is_preserved,
    grpc_calls,
    grpc_web_calls
);

/// An HTTP/2 upstream (the hyperium server on its own thread): answers
/// with what it saw in `x-seen-*` fields; `/grpc` ends with trailers.
/// Returns its address and its connection count.
fn h2_upstream() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
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
async fn answer(
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

both_drivers!(floods_and_made_you_reset);

/// PING and SETTINGS floods from a client that does not read, empty DATA
/// frames, and MadeYouReset (frames that make the server reset streams):
/// the proxy stays bounded and ends abusive connections.
fn floods_and_made_you_reset(driver: Driver) {
    let up = app(driver);
    let server = start(&config(
        driver,
        up.addr,
        scripted_upstream(),
        "http2 = { max_error_resets = 10 }",
    ));
    let addr = server.local_addr("web").unwrap();
    let rss = || -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or(0)
    };
    let before = rss();
    // PING and SETTINGS floods, never reading the answers.
    for kind in [6u8, 4] {
        let mut raw = Raw::connect(addr, &[]);
        raw.s
            .set_write_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let one = if kind == 6 {
            frame(PING, 0, 0, &[7u8; 8])
        } else {
            frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0])
        };
        let burst: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(one.len() * 10_000)
            .collect();
        let mut sent = 0;
        while sent < 200 && raw.send(&burst).is_ok() {
            sent += 1;
        }
        // A client that floods control frames and never reads the
        // answers: once the proxy's writes make no progress for
        // `send_timeout` (1 s here), the proxy ends the connection (its
        // open-connection gauge falls back; the client still holds its
        // socket, unread).
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric(
            &server,
            "outrigger_listener_connections_active",
            &[("listener", "web")],
        ) > 0.0
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            metric(
                &server,
                "outrigger_listener_connections_active",
                &[("listener", "web")]
            ),
            0.0,
            "the flooding connection (frame type {kind}) was never closed"
        );
        drop(raw);
    }
    // The proxy is in this process: its memory did not grow with the floods
    // (2,000,000 frames sent at most).
    let grown = rss().saturating_sub(before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} kB");
    healthy(addr);

    // Empty DATA frames on an open stream: the crate's budget of small
    // frames ends the connection.
    let mut raw = Raw::connect(addr, &[]);
    let _ = raw.server_settings();
    let post = block("POST", "/app/empty");
    raw.send(&frame(HEADERS, END_HEADERS, 1, &post)).unwrap();
    let empty: Vec<u8> = frame(DATA, 0, 1, &[]).repeat(20_000);
    let _ = raw.send(&empty);
    let g = raw
        .until(|f| f.kind == GOAWAY)
        .expect("GOAWAY after a flood of empty DATA frames");
    assert_eq!(goaway_code(&g), 0xb, "ENHANCE_YOUR_CALM");

    // MadeYouReset: a malformed request (no :path) makes
    // the server reset its stream; past max_error_resets the connection
    // gets GOAWAY.
    let mut raw = Raw::connect(addr, &[]);
    let _ = raw.server_settings();
    // No :path.
    let mut bad = Vec::new();
    hpack(&mut bad, ":method", "GET");
    hpack(&mut bad, ":scheme", "http");
    hpack(&mut bad, ":authority", "localhost");
    // Under the limit: each malformed stream is reset, the connection lives.
    let mut few = Vec::new();
    for i in 0..5u32 {
        few.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * i, &bad));
    }
    raw.send(&few).unwrap();
    for i in 0..5u32 {
        let f = raw
            .until(|f| f.kind == RST_STREAM || f.kind == GOAWAY)
            .expect("a reset");
        assert_eq!((f.kind, f.stream), (RST_STREAM, 1 + 2 * i));
    }
    // Over it: GOAWAY.
    let mut burst = Vec::new();
    for i in 5..60u32 {
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * i, &bad));
    }
    let _ = raw.send(&burst);
    let g = raw
        .until(|f| f.kind == GOAWAY)
        .expect("GOAWAY after the server had to reset many streams");
    assert_eq!(goaway_code(&g), 0xb, "ENHANCE_YOUR_CALM");
    healthy(addr);
}
