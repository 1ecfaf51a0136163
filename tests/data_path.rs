//! Data-path correctness under faults, with scripted upstreams on real
//! sockets, on both I/O drivers: no request smuggled through an error, no
//! reuse of a dead or dirty pooled connection, no bytes lost when a timed
//! read is given up, and no client wait without a deadline.

// Test peers run on plain threads, outside the data path: a Mutex is fine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::http::Client;
use common::script::{ok, read_request, reset, scripted};
use common::*;
use outrigger::worker::Driver;
use outrigger::Server;

both_drivers!(
    reset_pooled_connection_does_not_smuggle,
    route_timeout_mid_body_closes_the_connection,
    dead_pooled_connections_are_replaced,
    stray_bytes_keep_a_connection_out_of_the_pool,
    warm_window_edge_loses_no_request,
    warm_window_edge_loses_no_relayed_bytes,
    stalled_request_body_gets_408,
    client_that_stops_reading_is_cut_off,
    repeated_forwarding_headers_are_joined,
);

/// A proxy with listener "web" routing everything to one endpoint.
fn proxy(
    driver: Driver,
    listener_extra: &str,
    route_extra: &str,
    up: SocketAddr,
) -> (Server, SocketAddr) {
    let server = start(&format!(
        r#"
[runtime]
workers = 1
io = "{io}"
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "main"
{listener_extra}
[[routes.main]]
match.path_prefix = "/"
cluster = "up"
{route_extra}
[clusters.up]
endpoints = ["{up}"]
"#,
        io = io_name(driver)
    ));
    let addr = server.local_addr("web").unwrap();
    (server, addr)
}

/// Read what the proxy sends until it closes (or `wait` passes).
fn drain(s: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (got, false),
        }
    }
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

/// Issue 18.1: an upstream resets a pooled connection; the client's next
/// request is a POST whose body is a request. The body must never be
/// parsed as the client's next request.
fn reset_pooled_connection_does_not_smuggle(driver: Driver) {
    let (reset_tx, reset_rx) = mpsc::channel();
    let reset_tx = Mutex::new(reset_tx);
    let (up, seen) = scripted(move |mut s, seen| {
        let mut buf = Vec::new();
        while let Some(req) = read_request(&mut s, &mut buf) {
            seen.lines.lock().unwrap().push(req.line.clone());
            ok(&mut s, "ok");
            if req.line.starts_with("GET /prime") {
                // Reset once the proxy has read the whole response and
                // pooled the connection (an RST that overtakes unread
                // bytes discards them).
                std::thread::sleep(Duration::from_millis(200));
                reset(s);
                let _ = reset_tx.lock().unwrap().send(());
                return;
            }
        }
    });
    let (_s, addr) = proxy(driver, "", "", up);
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/prime", "x", "").status, 200);
    reset_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    c.send(
        format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
            SMUGGLED.len()
        )
        .as_bytes(),
    );
    let first = c.read_response(false).expect("an answer to the POST");
    // Whatever the first answer, a second one (to /smuggled) never comes.
    c.stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = c.stream.read_to_end(&mut rest);
    let lines = seen.lines();
    assert!(
        !lines.iter().any(|l| l.contains("/smuggled")),
        "upstream saw a smuggled request: {lines:?}"
    );
    assert!(
        !String::from_utf8_lossy(&rest).contains("HTTP/1.1"),
        "a second response came: {}",
        String::from_utf8_lossy(&rest)
    );
    // The dead pooled connection was detected, and the POST went out on a
    // new one with its body intact.
    assert_eq!(first.status, 200, "{lines:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("POST /upload")),
        "{lines:?}"
    );
}

/// The route timeout fires while the client's body is still arriving: the
/// client gets 504 and the connection closes, so the rest of the body (a
/// request) is never read as a request.
fn route_timeout_mid_body_closes_the_connection(driver: Driver) {
    let (up, seen) = scripted(|mut s, seen| {
        let mut buf = Vec::new();
        while let Some(req) = read_request(&mut s, &mut buf) {
            seen.lines.lock().unwrap().push(req.line.clone());
            ok(&mut s, "ok");
        }
    });
    let (_s, addr) = proxy(driver, "", "timeout = \"300ms\"", up);
    let mut c = connect(addr);
    let body_len = 10 + SMUGGLED.len();
    write!(
        c,
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {body_len}\r\n\r\n0123456789"
    )
    .unwrap();
    let t = Instant::now();
    let mut head = [0u8; 12];
    c.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 504");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // The rest of the body arrives late: it must not become a request.
    let _ = c.write_all(SMUGGLED.as_bytes());
    let (rest, closed) = drain(&mut c, Duration::from_secs(3));
    assert!(closed, "connection kept open after a timeout mid-body");
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("connection: close"), "{rest}");
    assert!(!rest.contains("200 OK"), "{rest}");
    assert!(!seen.lines().iter().any(|l| l.contains("/smuggled")));
}

/// Issue 18.2: the upstream closes its idle pooled connections (a restart);
/// the next GETs are served on new connections, not answered 502.
fn dead_pooled_connections_are_replaced(driver: Driver) {
    let (close_tx, close_rx) = mpsc::channel::<()>();
    let close_rx = Mutex::new(close_rx);
    let (hold_tx, hold_rx) = mpsc::channel::<()>();
    let hold_rx = Mutex::new(hold_rx);
    let (up, seen) = scripted(move |mut s, seen| {
        let mut buf = Vec::new();
        while let Some(req) = read_request(&mut s, &mut buf) {
            seen.lines.lock().unwrap().push(req.line.clone());
            if req.line.starts_with("GET /hold") {
                // Wait until both requests are in, so two connections pool.
                let _ = hold_rx.lock().unwrap().recv_timeout(Duration::from_secs(5));
            }
            ok(&mut s, "ok");
            if req.line.starts_with("GET /hold") {
                // Then close (FIN) once told to: the upstream restarted.
                let _ = close_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(5));
                drop(s);
                seen.closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    });
    let (_s, addr) = proxy(driver, "", "", up);
    let mut a = Client::connect(addr);
    let mut b = Client::connect(addr);
    a.send(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n");
    b.send(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(eventually(|| seen.connections.load(Ordering::SeqCst) == 2));
    std::thread::sleep(Duration::from_millis(20));
    hold_tx.send(()).unwrap();
    hold_tx.send(()).unwrap();
    assert_eq!(a.read_response(false).unwrap().status, 200);
    assert_eq!(b.read_response(false).unwrap().status, 200);
    // Both upstream connections are pooled now; the upstream closes them.
    close_tx.send(()).unwrap();
    close_tx.send(()).unwrap();
    assert!(eventually(|| seen.closed.load(Ordering::SeqCst) == 2));
    for _ in 0..3 {
        let r = a.get("/after", "x", "");
        assert_eq!(r.status, 200, "{:?}", r.header("x-outrigger-error"));
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
}

/// Issue 18.2: a pooled connection on which stray bytes arrived (a late
/// body after a response) is not reused: the next client would read them as
/// its response.
fn stray_bytes_keep_a_connection_out_of_the_pool(driver: Driver) {
    let (up, seen) = scripted(|mut s, seen| {
        let mut buf = Vec::new();
        while let Some(req) = read_request(&mut s, &mut buf) {
            seen.lines.lock().unwrap().push(req.line.clone());
            ok(&mut s, "real");
            if req.line.starts_with("GET /first") {
                // After the response, junk that looks like a response.
                std::thread::sleep(Duration::from_millis(50));
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray");
            }
        }
    });
    let (_s, addr) = proxy(driver, "", "", up);
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/first", "x", "").body, b"real");
    std::thread::sleep(Duration::from_millis(200));
    let r = c.get("/second", "x", "");
    assert_eq!(r.body, b"real");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
    assert_eq!(seen.lines().len(), 2);
}

/// Issue 18.3: requests sent right at the edge of the 250 ms warm-read
/// window, many times: each is answered (a cancelled read whose bytes were
/// dropped would leave the client waiting until idle_timeout).
fn warm_window_edge_loses_no_request(driver: Driver) {
    let (up, _seen) = scripted(|mut s, _| {
        let mut buf = Vec::new();
        while read_request(&mut s, &mut buf).is_some() {
            ok(&mut s, "ok");
        }
    });
    let (_s, addr) = proxy(driver, "", "", up);
    let mut c = Client::connect(addr);
    c.stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    for i in 0..24u64 {
        let r = c.get("/", "x", "");
        assert_eq!(r.status, 200, "request {i}");
        // The window ends 200-300 ms after the response (a coarse deadline
        // swept every 100 ms): sweep it in 10 ms steps, twice.
        std::thread::sleep(Duration::from_millis(195 + 10 * (i % 12)));
    }
}

/// Issue 18.3 for the TCP relay: bytes sent at the edge of the window are
/// relayed, in order, none lost.
fn warm_window_edge_loses_no_relayed_bytes(driver: Driver) {
    let echo = echo(driver);
    let server = start(&tcp_config(driver, 1, &[echo.addr.to_string()], "", ""));
    let mut s = connect(server.local_addr("l").unwrap());
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    for i in 0..24u64 {
        let msg = format!("message {i}");
        assert_eq!(round_trip(&mut s, msg.as_bytes()), msg.as_bytes());
        std::thread::sleep(Duration::from_millis(195 + 10 * (i % 12)));
    }
}

/// Issue 18.4: a client that declares a body and stalls gets 408 after
/// `request_body_timeout`, and the connection closes.
fn stalled_request_body_gets_408(driver: Driver) {
    let (up, _seen) = scripted(|mut s, _| {
        let mut buf = Vec::new();
        while read_request(&mut s, &mut buf).is_some() {
            ok(&mut s, "ok");
        }
    });
    let (_s, addr) = proxy(driver, "request_body_timeout = \"300ms\"", "", up);
    let mut c = connect(addr);
    c.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    let t = Instant::now();
    let (got, closed) = drain(&mut c, Duration::from_secs(5));
    let got = String::from_utf8_lossy(&got);
    assert!(closed, "{got}");
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("request_body_timeout"), "{got}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

/// Issue 18.4: a client that stops reading a large response is cut off
/// after `send_timeout` instead of holding its task and the upstream
/// connection forever.
fn client_that_stops_reading_is_cut_off(driver: Driver) {
    const TOTAL: usize = 64 << 20;
    let (up, _seen) = scripted(|mut s, _| {
        let mut buf = Vec::new();
        if read_request(&mut s, &mut buf).is_some() {
            let _ = write!(s, "HTTP/1.1 200 OK\r\ncontent-length: {TOTAL}\r\n\r\n");
            let block = vec![b'x'; 1 << 20];
            for _ in 0..TOTAL >> 20 {
                if s.write_all(&block).is_err() {
                    return;
                }
            }
        }
    });
    let (_s, addr) = proxy(driver, "send_timeout = \"300ms\"", "", up);
    let c = TcpStream::connect(addr).unwrap();
    socket2::SockRef::from(&c)
        .set_recv_buffer_size(64 * 1024)
        .unwrap();
    let mut c = c;
    c.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Read nothing for well over send_timeout, then read what is left.
    std::thread::sleep(Duration::from_millis(1500));
    let (got, closed) = drain(&mut c, Duration::from_secs(10));
    assert!(closed, "the proxy never closed the stalled connection");
    assert!(
        got.len() < TOTAL,
        "the whole response arrived ({} bytes): the stalled write never timed out",
        got.len()
    );
}

/// Issue 18.9: repeated X-Forwarded-For and Via lines are joined in order,
/// with the proxy's entry last, not collapsed to the last line.
fn repeated_forwarding_headers_are_joined(driver: Driver) {
    let (up, seen) = scripted(|mut s, seen| {
        let mut buf = Vec::new();
        while let Some(req) = read_request(&mut s, &mut buf) {
            seen.lines.lock().unwrap().push(req.head.clone());
            ok(&mut s, "ok");
            let _ = req.body;
        }
    });
    let (_s, addr) = proxy(driver, "", "", up);
    let mut c = Client::connect(addr);
    let r = c.get(
        "/",
        "x",
        "X-Forwarded-For: 10.0.0.1\r\nVia: 1.1 a\r\nX-Forwarded-For: 10.0.0.2, 10.0.0.3\r\nVia: 1.0 b\r\n",
    );
    assert_eq!(r.status, 200);
    let head = seen.lines().pop().unwrap().to_ascii_lowercase();
    assert!(
        head.contains("x-forwarded-for: 10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains("via: 1.1 a, 1.0 b, 1.1 outrigger\r\n"),
        "{head}"
    );
    assert_eq!(head.matches("x-forwarded-for:").count(), 1, "{head}");
    assert_eq!(head.matches("via:").count(), 1, "{head}");
}

/// Found by tests/fuzz.rs: an origin-form target with "://" in its query
/// was read as absolute-form, so `/admin?next=http://x/` routed (and was
/// forwarded) as `/`: a path rule could be bypassed. Both drivers see the
/// real path now.
#[test]
fn scheme_in_query_is_not_absolute_form() {
    let config = r#"
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "r"
[[routes.r]]
match.path_prefix = "/admin"
direct_response = { status = 403, body = "no" }
[[routes.r]]
match.path_prefix = "/"
direct_response = { status = 200, body = "yes" }
"#;
    let s = start(config);
    let addr = s.local_addr("web").unwrap();
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/admin?next=http://x/", "a", "").status, 403);
    assert_eq!(c.get("/ok?next=http://x/admin", "a", "").status, 200);
    // Real absolute-form still works.
    assert_eq!(c.get("http://a/admin", "a", "").status, 403);
}
