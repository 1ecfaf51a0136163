//! Request mirroring per route, as a client and an operator see it: the
//! mirror gets a copy (head with `-shadow` on the Host, and the body),
//! its answer is dropped, the primary's answer and latency are unchanged
//! when the mirror is slow or dead, `max_active` bounds the copies in
//! flight, large bodies are not mirrored, and `percent` draws its share.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::admin;
use common::http::Client;
use common::script::{read_request, scripted, Seen};
use common::*;
use outrigger::control::{Options, Proxy};
use outrigger::worker::Driver;

both_drivers!(
    the_mirror_gets_a_copy,
    a_slow_or_dead_mirror_costs_the_client_nothing,
    large_bodies_are_not_mirrored,
    percent_draws_its_share
);

/// An HTTP/1.1 server recording "LINE|HOST|BODY" and answering `answer`
/// after `delay`.
fn recorder(answer: &'static str, delay: Duration) -> (SocketAddr, Arc<Seen>) {
    scripted(move |mut s, seen| {
        let mut buf = Vec::new();
        while let Some(req) = read_request(&mut s, &mut buf) {
            let host = req
                .head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("host: ")
                        .or_else(|| l.strip_prefix("Host: "))
                })
                .unwrap_or("")
                .to_string();
            seen.lines.lock().unwrap().push(format!(
                "{}|{}|{}",
                req.line,
                host,
                String::from_utf8_lossy(&req.body)
            ));
            std::thread::sleep(delay);
            let r = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            );
            if s.write_all(r.as_bytes()).is_err() {
                return;
            }
        }
    })
}

fn proxy(driver: Driver, route: &str, up: SocketAddr, shadow: SocketAddr) -> (Proxy, SocketAddr) {
    let cfg = format!(
        r#"
[runtime]
workers = 1
io = "{io}"
[admin]
address = "127.0.0.1:0"
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "r"
[[routes.r]]
name = "main"
match.path_prefix = "/"
cluster = "app"
{route}
[clusters.app]
endpoints = ["{up}"]
[clusters.shadow]
endpoints = ["{shadow}"]
"#,
        io = io_name(driver),
    );
    let snapshot = outrigger::config::compile(std::path::Path::new("<test>"), &cfg)
        .unwrap_or_else(|e| panic!("{e}\n{cfg}"));
    let p = Proxy::launch(
        snapshot,
        Options {
            config_path: None,
            watch: false,
        },
        None,
    )
    .unwrap();
    let addr = p.local_addr("web").unwrap();
    (p, addr)
}

fn mirrors(p: &Proxy, result: &str) -> f64 {
    let (_, text) = admin::request(p.admin_addr(), "GET", "/metrics");
    admin::parse_prometheus(&text)
        .value(
            "outrigger_route_mirrors_total",
            &[("route", "main"), ("result", result)],
        )
        .unwrap_or_else(|| panic!("no mirrors_total {result}"))
}

/// A GET and a POST with a body: the client gets the primary's answers;
/// the mirror sees both, Host `svc-shadow`, the body intact.
fn the_mirror_gets_a_copy(driver: Driver) {
    let (up, up_seen) = recorder("primary", Duration::ZERO);
    let (shadow, shadow_seen) = recorder("mirror", Duration::ZERO);
    let (p, addr) = proxy(driver, r#"mirror = { cluster = "shadow" }"#, up, shadow);
    let mut c = Client::connect(addr);
    let r = c.get("/a?x=1", "svc", "");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"primary"[..]));
    c.send(b"POST /b HTTP/1.1\r\nhost: svc\r\ncontent-length: 5\r\n\r\nhello");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.body, b"primary");
    assert!(eventually(|| shadow_seen.lines().len() == 2));
    // Copies are sent fire-and-forget, each on whatever mirror connection
    // is free, so they may arrive in either order: compare them sorted.
    let mut copies = shadow_seen.lines();
    copies.sort();
    assert_eq!(
        copies,
        [
            "GET /a?x=1 HTTP/1.1|svc-shadow|",
            "POST /b HTTP/1.1|svc-shadow|hello"
        ]
    );
    assert_eq!(
        up_seen.lines(),
        ["GET /a?x=1 HTTP/1.1|svc|", "POST /b HTTP/1.1|svc|hello"]
    );
    assert!(eventually(|| mirrors(&p, "sent") == 2.0));
}

/// A mirror that takes 5 s, or is not there at all: every client request
/// is answered at the primary's pace; copies above `max_active` are
/// dropped and counted, the dead mirror's are counted as failed.
fn a_slow_or_dead_mirror_costs_the_client_nothing(driver: Driver) {
    let (up, _) = recorder("primary", Duration::ZERO);
    let (slow, _) = recorder("late", Duration::from_secs(5));
    let (p, addr) = proxy(
        driver,
        r#"mirror = { cluster = "shadow", max_active = 2 }
timeout = "2s""#,
        up,
        slow,
    );
    let mut c = Client::connect(addr);
    for i in 0..20 {
        let t = Instant::now();
        let r = c.get("/", "svc", "");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"primary"[..]), "{i}");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{i}: {:?}",
            t.elapsed()
        );
    }
    assert_eq!(mirrors(&p, "dropped"), 18.0, "max_active 2 held");
    // The two held copies end at the route timeout, unanswered.
    assert!(eventually(|| mirrors(&p, "failed") == 2.0));
    let (up, _) = recorder("primary", Duration::ZERO);
    let (p, addr) = proxy(
        driver,
        r#"mirror = { cluster = "shadow" }"#,
        up,
        closed_port(),
    );
    let mut c = Client::connect(addr);
    for _ in 0..10 {
        assert_eq!(c.get("/", "svc", "").body, b"primary");
    }
    assert!(eventually(|| mirrors(&p, "failed") == 10.0));
}

/// A body over `mirror_body_limit` goes to the primary only.
fn large_bodies_are_not_mirrored(driver: Driver) {
    let (up, up_seen) = recorder("primary", Duration::ZERO);
    let (shadow, shadow_seen) = recorder("mirror", Duration::ZERO);
    let (p, addr) = proxy(
        driver,
        "mirror = { cluster = \"shadow\" }\nmirror_body_limit = 16",
        up,
        shadow,
    );
    let body = "x".repeat(100);
    let mut c = Client::connect(addr);
    c.send(
        format!("POST /big HTTP/1.1\r\nhost: svc\r\ncontent-length: 100\r\n\r\n{body}").as_bytes(),
    );
    assert_eq!(c.read_response(false).unwrap().body, b"primary");
    assert_eq!(up_seen.lines(), [format!("POST /big HTTP/1.1|svc|{body}")]);
    assert_eq!(mirrors(&p, "skipped"), 1.0);
    std::thread::sleep(Duration::from_millis(200));
    assert!(shadow_seen.lines().is_empty());
}

/// `percent = 25`: over 800 requests the mirror gets a quarter, within 5
/// standard deviations (sd 12.2).
fn percent_draws_its_share(driver: Driver) {
    let (up, _) = recorder("primary", Duration::ZERO);
    let (shadow, shadow_seen) = recorder("mirror", Duration::ZERO);
    let (p, addr) = proxy(
        driver,
        r#"mirror = [{ cluster = "shadow", percent = 25.0 }]"#,
        up,
        shadow,
    );
    let mut c = Client::connect(addr);
    for _ in 0..800 {
        assert_eq!(c.get("/", "svc", "").status, 200);
    }
    let sent = || mirrors(&p, "sent");
    let mut last = -1.0;
    assert!(eventually(|| {
        let now = sent();
        let settled = now == last;
        last = now;
        settled
    }));
    let n = shadow_seen.lines().len();
    assert_eq!(n as f64, sent());
    assert!((200 - 61..=200 + 61).contains(&n), "{n} of 800 mirrored");
}
