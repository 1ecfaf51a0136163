//! Balancers end to end on both I/O drivers: endpoint weights, consistent
//! hashing (ring_hash and maglev on a header, a cookie, the path) and
//! peak EWMA, against upstreams that say who they are.

// Test peers run on plain threads, outside the data path: a Mutex is fine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use common::http::Client;
use common::script::{read_request, scripted};
use common::*;
use outrigger::worker::Driver;
use outrigger::Server;

both_drivers!(
    weights_shape_round_robin_and_random,
    ring_hash_keeps_keys_and_moves_a_third,
    maglev_keeps_keys_and_moves_a_third,
    cookie_and_path_keys,
    peak_ewma_prefers_the_fast_endpoint,
);

/// An upstream answering `tag` as its body, after `delay`.
fn tagged(tag: usize, delay: Duration) -> SocketAddr {
    scripted(move |mut s, _| {
        s.set_nodelay(true).unwrap();
        let mut buf = Vec::new();
        while read_request(&mut s, &mut buf).is_some() {
            std::thread::sleep(delay);
            let body = tag.to_string();
            let r = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(r.as_bytes()).is_err() {
                return;
            }
        }
    })
    .0
}

fn proxy(driver: Driver, cluster: &str, endpoints: &str) -> (Server, SocketAddr) {
    let config = format!(
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
cluster = "c"

[clusters.c]
endpoints = [{endpoints}]
{cluster}
"#,
        io = io_name(driver)
    );
    let s = start(&config);
    let addr = s.local_addr("web").unwrap();
    (s, addr)
}

fn list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which upstream (its tag) answered.
fn who(c: &mut Client, path: &str, extra: &str) -> usize {
    let r = c.get(path, "svc", extra);
    assert_eq!(r.status, 200);
    String::from_utf8_lossy(&r.body).parse().unwrap()
}

fn weights_shape_round_robin_and_random(driver: Driver) {
    let (a, b) = (tagged(0, Duration::ZERO), tagged(1, Duration::ZERO));
    let eps = format!("\"{a}\", {{ address = \"{b}\", weight = 3 }}");
    let (_s, addr) = proxy(driver, "", &eps);
    let mut c = Client::connect(addr);
    let mut seen = [0usize; 2];
    for _ in 0..400 {
        seen[who(&mut c, "/", "")] += 1;
    }
    assert_eq!(seen, [100, 300], "round robin follows the weights exactly");
    let (_s, addr) = proxy(driver, "balance = \"random\"", &eps);
    let mut c = Client::connect(addr);
    let mut seen = [0usize; 2];
    for _ in 0..400 {
        seen[who(&mut c, "/", "")] += 1;
    }
    assert!((240..=360).contains(&seen[1]), "{seen:?}");
}

/// Each key sticks to one endpoint; with one of three endpoints removed,
/// keys on the others stay (maglev: nearly all) and about a third move.
fn consistent(driver: Driver, balance: &str, stay_at_least: f64) {
    let ups: Vec<SocketAddr> = (0..3).map(|i| tagged(i, Duration::ZERO)).collect();
    let cluster = format!("balance = \"{balance}\"\nhash_on = \"header:x-user\"");
    let (_s3, addr3) = proxy(driver, &cluster, &list(&ups));
    let (_s2, addr2) = proxy(driver, &cluster, &list(&ups[..2]));
    let (mut c3, mut c2) = (Client::connect(addr3), Client::connect(addr2));
    let keys = 300;
    let (mut on_removed, mut stayed, mut kept) = (0, 0, 0);
    for k in 0..keys {
        let h = format!("x-user: user-{k}\r\n");
        let first = who(&mut c3, "/", &h);
        assert_eq!(who(&mut c3, "/other", &h), first, "key {k} moved");
        let after = who(&mut c2, "/", &h);
        if first == 2 {
            on_removed += 1;
        } else {
            stayed += 1;
            if after == first {
                kept += 1;
            }
        }
    }
    let moved = on_removed as f64 / keys as f64;
    assert!(
        (0.2..=0.46).contains(&moved),
        "{moved} of the keys were on the removed endpoint"
    );
    let kept = kept as f64 / stayed as f64;
    assert!(kept >= stay_at_least, "{kept} of the other keys stayed");
}

fn ring_hash_keeps_keys_and_moves_a_third(driver: Driver) {
    consistent(driver, "ring_hash", 1.0);
}

fn maglev_keeps_keys_and_moves_a_third(driver: Driver) {
    consistent(driver, "maglev", 0.95);
}

fn cookie_and_path_keys(driver: Driver) {
    let ups: Vec<SocketAddr> = (0..4).map(|i| tagged(i, Duration::ZERO)).collect();
    let (_s, addr) = proxy(
        driver,
        "balance = \"ring_hash\"\nhash_on = \"cookie:sid\"",
        &list(&ups),
    );
    let mut c = Client::connect(addr);
    let mut spread = std::collections::HashSet::new();
    for k in 0..40 {
        let h = format!("cookie: a=1; sid=s{k}; b=2\r\n");
        let first = who(&mut c, "/x", &h);
        assert_eq!(who(&mut c, "/y", &h), first);
        spread.insert(first);
    }
    assert!(spread.len() >= 3, "keys should spread: {spread:?}");
    let (_s, addr) = proxy(
        driver,
        "balance = \"maglev\"\nhash_on = \"path\"",
        &list(&ups),
    );
    let mut c = Client::connect(addr);
    for k in 0..20 {
        let p = format!("/item/{k}");
        assert_eq!(who(&mut c, &p, ""), who(&mut c, &p, "x-other: 1\r\n"));
    }
}

/// One endpoint answers in 40 ms, the other at once: peak EWMA sends
/// nearly everything to the fast one after the first samples.
fn peak_ewma_prefers_the_fast_endpoint(driver: Driver) {
    let slow = tagged(0, Duration::from_millis(40));
    let fast = tagged(1, Duration::ZERO);
    let (_s, addr) = proxy(driver, "balance = \"peak_ewma\"", &list(&[slow, fast]));
    let mut c = Client::connect(addr);
    let mut seen = [0usize; 2];
    for _ in 0..60 {
        seen[who(&mut c, "/", "")] += 1;
    }
    assert!(seen[1] >= 50, "{seen:?}");
}
