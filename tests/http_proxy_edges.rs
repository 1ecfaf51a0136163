//! End-to-end tests of the HTTP/1.1 proxy at its edges, under both
//! io_uring and epoll: limits (431, 408, 413), request smuggling attempts,
//! upstream failures and timeouts, WebSocket upgrades, HEAD and 1xx,
//! idle and parked connections, and response framings.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::http::{one_shot, Client};
use common::httpenv::*;
use common::*;
use outrigger::backends::Backend;
use outrigger::worker::Driver;

both_drivers!(
    limits_431_408_413,
    smuggling_attempts_get_400,
    upstream_errors_502_503_504,
    websocket_upgrade_tunnels,
    head_and_no_body_statuses,
    expect_100_continue,
    upstream_read_timeout_504,
    idle_keep_alive_is_not_a_slow_header,
    parked_connections_resume_idle_out_and_close_on_drain,
    chunked_and_close_delimited_responses,
);

fn limits_431_408_413(driver: Driver) {
    let up = http_backend(driver, "up");
    let routes = format!(
        "[[routes.main]]\nmatch.path_prefix = \"/\"\ncluster = \"up\"\n{}",
        cluster("up", &up)
    );
    let extra = "max_request_header_bytes = 2048\nmax_headers = 10\nheader_timeout = \"300ms\"\nmax_request_body_bytes = 100";
    let (_s, addr) = proxy(driver, extra, &routes);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(4000)
    );
    assert_eq!(one_shot(addr, big.as_bytes()).unwrap().status, 431);
    let many: String = (0..20).map(|i| format!("x-h{i}: v\r\n")).collect();
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert_eq!(one_shot(addr, req.as_bytes()).unwrap().status, 431);
    // Slowloris: a head that never completes.
    let mut c = Client::connect(addr);
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n");
    let t = Instant::now();
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 408);
    assert!(t.elapsed() >= Duration::from_millis(250));
    assert!(c.read_response(false).is_none(), "closed after 408");
    // Body over the limit, declared and chunked.
    let r = one_shot(
        addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 413);
    // A declared length over the limit is refused from the head: the
    // upstream sees nothing at all.
    let seen = |up: &Backend| {
        (
            up.stats
                .connections
                .load(std::sync::atomic::Ordering::Relaxed),
            up.stats.requests.load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    assert_eq!(seen(&up), (0, 0), "the upstream saw the refused request");
    // A chunked body is streamed: its head may reach the upstream before
    // the body grows past the limit; no byte of the body does.
    let chunk = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n80\r\n{}\r\n0\r\n\r\n",
        "z".repeat(128)
    );
    assert_eq!(one_shot(addr, chunk.as_bytes()).unwrap().status, 413);
    assert_eq!(
        up.bytes_read_total(),
        0,
        "a byte of an oversized body reached the upstream"
    );
    assert!(seen(&up).1 <= 1, "{:?}", seen(&up));
}

trait BackendExt {
    fn bytes_read_total(&self) -> u64;
}

impl BackendExt for Backend {
    fn bytes_read_total(&self) -> u64 {
        self.stats
            .bytes_read
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn smuggling_attempts_get_400(driver: Driver) {
    let up = http_backend(driver, "up");
    let routes = format!(
        "[[routes.main]]\nmatch.path_prefix = \"/\"\ncluster = \"up\"\n{}",
        cluster("up", &up)
    );
    let (_s, addr) = proxy(driver, "", &routes);
    let cases: &[(&str, u16)] = &[
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length : 3\r\n\r\nabc", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: foo, chunked\r\n\r\n0\r\n\r\n", 501),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", 400),
        // A list is not a plain value even when its members agree.
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    ];
    for (raw, want) in cases {
        let r = one_shot(addr, raw.as_bytes()).unwrap_or_else(|| panic!("no response to {raw:?}"));
        assert_eq!(r.status, *want, "{raw:?}");
        assert_eq!(r.header("connection"), Some("close"), "{raw:?}");
    }
    assert_eq!(up.requests(), 0, "nothing ambiguous reached the upstream");
    // A 400 says why, in one line.
    let r = one_shot(addr, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").unwrap();
    assert_eq!(r.body, b"bad_request: more than one Host header\n");
    let r = one_shot(
        addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        r.body,
        b"bad_request: both Content-Length and Transfer-Encoding\n"
    );
    // A bad chunk is found only while streaming the body: the head has been
    // forwarded, so the upstream connection is abandoned, never reused.
    let before = up.connections();
    let r = one_shot(
        addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.header("connection"), Some("close"));
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/", "x", "").status, 200);
    assert_eq!(
        up.connections(),
        before + 2,
        "the poisoned upstream connection was not pooled"
    );
    // Chunk extensions outside RFC 9112 §7.1.1: 400 and a close (the head
    // went upstream with the stream, whose connection is abandoned).
    for bad in [
        &b"5;\r\nhello\r\n0\r\n\r\n"[..],
        b"5;a=\"unterminated\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
    ] {
        let mut raw = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        raw.extend_from_slice(bad);
        let r = one_shot(addr, &raw).unwrap();
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(bad));
        assert_eq!(r.header("connection"), Some("close"));
    }
}

/// A raw TCP upstream that answers every connection with `reply` and closes.
fn raw_upstream(reply: &'static [u8]) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(reply);
        }
    });
    addr
}

fn upstream_errors_502_503_504(driver: Driver) {
    let garbage =
        raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
    let slow = delayed_backend(driver, "slow", Duration::from_secs(2));
    let routes = format!(
        r#"
[[routes.main]]
match.path = "/bad"
cluster = "bad"
[[routes.main]]
match.path = "/dead"
cluster = "dead"
[[routes.main]]
match.path = "/slow"
cluster = "slow"
timeout = "200ms"
[clusters.bad]
endpoints = ["{garbage}"]
[clusters.dead]
endpoints = ["{}", "{}"]
{}"#,
        closed_port(),
        closed_port(),
        cluster("slow", &slow)
    );
    let (_s, addr) = proxy(driver, "", &routes);
    let mut c = Client::connect(addr);
    let r = c.get("/bad", "x", "");
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-outrigger-error"), Some("upstream_bad_response"));
    let r = c.get("/dead", "x", "");
    assert_eq!(r.status, 503);
    assert_eq!(r.body, b"no_healthy_upstream\n");
    let t = Instant::now();
    let r = c.get("/slow", "x", "");
    assert_eq!(r.status, 504);
    assert!(t.elapsed() < Duration::from_secs(1));
}

fn upstream_read_timeout_504(driver: Driver) {
    let slow = delayed_backend(driver, "slow", Duration::from_secs(3));
    let routes = format!(
        "[[routes.main]]\nmatch.path_prefix = \"/\"\ncluster = \"slow\"\n{}",
        cluster("slow", &slow)
    );
    let (_s, addr) = proxy(driver, "upstream_read_timeout = \"300ms\"", &routes);
    let mut c = Client::connect(addr);
    let t = Instant::now();
    let r = c.get("/", "x", "");
    assert_eq!(
        r.status, 504,
        "no route timeout, but the upstream was silent too long"
    );
    assert_eq!(r.header("x-outrigger-error"), Some("upstream_timeout"));
    assert!(t.elapsed() < Duration::from_secs(2));
}

fn websocket_upgrade_tunnels(driver: Driver) {
    // An upstream that answers 101 and then echoes bytes.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        // Wait a little so the client's early bytes are already at the proxy.
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => s.write_all(&buf[..n]).unwrap(),
            }
        }
    });
    let routes = format!("[[routes.main]]\nmatch.path_prefix = \"/\"\ncluster = \"ws\"\n[clusters.ws]\nendpoints = [\"{up}\"]\n");
    let (_s, addr) = proxy(driver, "", &routes);
    let mut c = Client::connect(addr);
    c.send(b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nEARLY");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), Some("websocket"));
    let got = c.read_raw(5);
    assert_eq!(
        &got, b"EARLY",
        "bytes sent before the 101 arrive through the tunnel"
    );
    c.send(b"frame");
    assert_eq!(c.read_raw(5), b"frame");
}

fn head_and_no_body_statuses(driver: Driver) {
    let up = http_backend(driver, "up");
    let routes = format!(
        "[[routes.main]]\nmatch.path_prefix = \"/\"\ncluster = \"up\"\n{}",
        cluster("up", &up)
    );
    let (_s, addr) = proxy(driver, "", &routes);
    let mut c = Client::connect(addr);
    c.send(b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response(true).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("2"));
    // The connection is still in sync: the next response is whole.
    let r = c.get("/bytes/10", "x", "");
    assert_eq!(r.body, b"xxxxxxxxxx");
}

fn expect_100_continue(driver: Driver) {
    let up = http_backend(driver, "up");
    let routes = format!(
        "[[routes.main]]\nmatch.path_prefix = \"/\"\ncluster = \"up\"\n{}",
        cluster("up", &up)
    );
    let (_s, addr) = proxy(driver, "", &routes);
    // The proxy answers 100 Continue itself; the client sends its body only
    // after seeing it. The upstream gets the body without Expect.
    let mut c = Client::connect(addr);
    c.send(b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    let interim = c.read_response(false).unwrap();
    assert_eq!(interim.status, 100);
    c.send(b"hello");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-body-bytes"), Some("5"));
    assert_eq!(r.header("x-echo-expect"), None);
    // A client that sends its body without waiting may still get the 100
    // (it is harmless); the response that follows is whole.
    c.send(b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi");
    let mut r = c.read_response(false).unwrap();
    if r.status == 100 {
        r = c.read_response(false).unwrap();
    }
    assert_eq!(r.header("x-body-bytes"), Some("2"));
}

fn idle_keep_alive_is_not_a_slow_header(driver: Driver) {
    let up = http_backend(driver, "up");
    let routes = format!(
        "[[routes.main]]\nmatch.path_prefix = \"/\"\ncluster = \"up\"\n{}",
        cluster("up", &up)
    );
    let (_s, addr) = proxy(
        driver,
        "header_timeout = \"300ms\"\nidle_timeout = \"3s\"",
        &routes,
    );
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/", "x", "").status, 200);
    // Idle longer than header_timeout but within idle_timeout: still usable.
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(c.get("/", "x", "").status, 200);
}

/// A keep-alive connection idle past the warm window (200-300 ms) is parked
/// (its task ends; a small one waits for the next request): it must serve
/// its next request, keep counting as active, still end at `idle_timeout`,
/// and close at once on drain.
fn parked_connections_resume_idle_out_and_close_on_drain(driver: Driver) {
    let up = http_backend(driver, "up");
    let routes = format!(
        "[[routes.main]]\nmatch.path_prefix = \"/\"\ncluster = \"up\"\n{}",
        cluster("up", &up)
    );
    let (s, addr) = proxy(driver, "idle_timeout = \"4s\"", &routes);
    let mut a = Client::connect(addr);
    // Parked and resumed three times, and a pipelined pair after a park.
    for _ in 0..3 {
        assert_eq!(a.get("/", "x", "").status, 200);
        std::thread::sleep(Duration::from_millis(450));
    }
    a.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(a.read_response(false).unwrap().status, 200);
    assert_eq!(a.read_response(false).unwrap().status, 200);
    let mut b = Client::connect(addr);
    assert_eq!(b.get("/", "x", "").status, 200);
    let b_idle_since = Instant::now();
    // Parking waits for the warm window and a coarse sweep: poll for it.
    assert!(
        eventually(|| s.parked_connections() == 2),
        "both idle connections are parked: {}",
        s.parked_connections()
    );
    assert_eq!(
        s.active_connections(),
        2,
        "parked connections count as active"
    );
    // idle_timeout still ends a parked connection (coarse: 0-200 ms late).
    b.stream
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        b.stream.read(&mut byte).unwrap(),
        0,
        "closed by idle_timeout"
    );
    let waited = b_idle_since.elapsed();
    assert!(
        waited >= Duration::from_millis(3900),
        "closed after {waited:?}, before idle_timeout"
    );
    // `a` idled out meanwhile too. Drain closes a parked connection at once.
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/", "x", "").status, 200);
    std::thread::sleep(Duration::from_millis(450));
    s.drain();
    c.stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert_eq!(c.stream.read(&mut byte).unwrap(), 0, "closed by the drain");
    let deadline = Instant::now() + Duration::from_secs(2);
    while s.active_connections() != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.active_connections(), 0);
    assert_eq!(s.parked_connections(), 0);
}

fn chunked_and_close_delimited_responses(driver: Driver) {
    let chunked = raw_upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n");
    let eof = raw_upstream(b"HTTP/1.1 200 OK\r\n\r\nuntil close");
    let routes = format!(
        "[[routes.main]]\nmatch.path = \"/chunked\"\ncluster = \"chunked\"\n[[routes.main]]\nmatch.path = \"/eof\"\ncluster = \"eof\"\n[clusters.chunked]\nendpoints = [\"{chunked}\"]\n[clusters.eof]\nendpoints = [\"{eof}\"]\n"
    );
    let (_s, addr) = proxy(driver, "", &routes);
    // HTTP/1.1: chunked passes as chunked; close-delimited is re-chunked and
    // the client connection stays open.
    let mut c = Client::connect(addr);
    let r = c.get("/chunked", "x", "");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, b"hello world");
    let r = c.get("/eof", "x", "");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, b"until close");
    assert_eq!(
        c.get("/chunked", "x", "").body,
        b"hello world",
        "still open"
    );
    // HTTP/1.0 never sees chunked: the body is decoded and ends with a close.
    let mut c = Client::connect(addr);
    c.send(b"GET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.body, b"hello world");
}
