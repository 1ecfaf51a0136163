//! Fault injection per route (`fault = { abort, delay, header,
//! max_active }`), as a client and an operator see it: the share of
//! aborted requests within a binomial bound, aborts answered by the proxy
//! (never reaching the upstream) in HTTP or gRPC form, delays that count
//! against the route timeout, faults only on request when `header` is set,
//! `max_active` bounding the requests held, flags `FI`/`DI` in the access
//! log and per-route counters.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::admin::{self, TempDir};
use common::http::Client;
use common::*;
use outrigger::backends::{self, BackendKind, HttpBackend};
use outrigger::control::{Options, Proxy};
use outrigger::worker::Driver;

both_drivers!(
    aborts_follow_their_percentage,
    delays_count_against_the_route_timeout,
    faults_on_request_only_with_a_header,
    grpc_calls_get_their_status,
    max_active_bounds_the_delayed
);

/// The proxy with one route table `r` (routes given) in front of an
/// upstream answering "up"; an access log in `dir`.
fn proxy(driver: Driver, dir: &TempDir, routes: &str) -> (Proxy, SocketAddr, backends::Backend) {
    let up = backends::start(
        BackendKind::Http(HttpBackend::named("up")),
        "127.0.0.1:0".parse().unwrap(),
        1,
        driver,
    )
    .unwrap();
    let cfg = format!(
        r#"
[runtime]
workers = 1
io = "{io}"
[admin]
address = "127.0.0.1:0"
[access_log]
path = "{log}"
format = "json"
flush_interval = "50ms"
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "r"
{routes}
[clusters.app]
endpoints = ["{up}"]
"#,
        io = io_name(driver),
        log = dir.path("access.log").display(),
        up = up.addr,
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
    (p, addr, up)
}

fn metric(p: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, text) = admin::request(p.admin_addr(), "GET", "/metrics");
    admin::parse_prometheus(&text)
        .value(name, labels)
        .unwrap_or_else(|| panic!("no {name} {labels:?}"))
}

fn log_lines(dir: &TempDir, n: usize) -> Vec<serde_json::Value> {
    admin::read_log(dir, n)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// 10% aborts with 503 over 4,000 requests: within 5 standard deviations
/// of 400 (sd 19); the aborted never reach the upstream; counters and
/// flags agree.
fn aborts_follow_their_percentage(driver: Driver) {
    let dir = TempDir::new("fault-abort");
    let (p, addr, up) = proxy(
        driver,
        &dir,
        r#"[[routes.r]]
name = "flaky"
match.path_prefix = "/"
cluster = "app"
fault = { abort = { status = 503, percent = 10.0 } }"#,
    );
    let mut c = Client::connect(addr);
    let n = 4000;
    let mut aborted = 0;
    for _ in 0..n {
        let r = c.get("/x", "svc", "");
        match r.status {
            200 => assert_eq!(r.body, b"up"),
            503 => {
                assert_eq!(r.header("x-outrigger-error"), Some("fault_abort"));
                aborted += 1;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(
        (400 - 95..=400 + 95).contains(&aborted),
        "{aborted} of {n} aborted"
    );
    let served = up.stats.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        served as usize,
        n - aborted,
        "an aborted request reached the upstream"
    );
    let labels = [("route", "flaky"), ("fault", "abort")];
    assert_eq!(
        metric(&p, "outrigger_route_faults_total", &labels),
        aborted as f64
    );
    let lines = log_lines(&dir, n);
    assert_eq!(lines.iter().filter(|l| l["flags"] == "FI").count(), aborted);
    assert!(lines
        .iter()
        .filter(|l| l["flags"] == "FI")
        .all(|l| l["status"] == 503 && l["upstream"].is_null()));
}

/// A delay shorter than the route timeout holds the request and then
/// forwards it (flag DI); one longer ends at the timeout with 504 (DI,UT).
fn delays_count_against_the_route_timeout(driver: Driver) {
    let dir = TempDir::new("fault-delay");
    let (p, addr, _up) = proxy(
        driver,
        &dir,
        r#"[[routes.r]]
name = "slow"
match.path_prefix = "/slow"
cluster = "app"
timeout = "2s"
fault = { delay = { duration = "300ms", percent = 100.0 } }
[[routes.r]]
name = "late"
match.path_prefix = "/late"
cluster = "app"
timeout = "200ms"
fault = { delay = { duration = "5s" } }"#,
    );
    let mut c = Client::connect(addr);
    let t = Instant::now();
    let r = c.get("/slow", "svc", "");
    let took = t.elapsed();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"up"[..]));
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let t = Instant::now();
    let r = c.get("/late", "svc", "");
    let took = t.elapsed();
    assert_eq!(r.status, 504);
    assert_eq!(r.header("x-outrigger-error"), Some("upstream_timeout"));
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let lines = log_lines(&dir, 2);
    assert_eq!(lines[0]["flags"], "DI", "{}", lines[0]);
    assert_eq!(lines[1]["flags"], "DI,UT", "{}", lines[1]);
    let delayed = |route| {
        metric(
            &p,
            "outrigger_route_faults_total",
            &[("route", route), ("fault", "delay")],
        )
    };
    assert_eq!((delayed("slow"), delayed("late")), (1.0, 1.0));
}

/// With `header`, only requests that ask get a fault, of a kind the route
/// allows, with their own status or a shorter delay.
fn faults_on_request_only_with_a_header(driver: Driver) {
    let dir = TempDir::new("fault-header");
    let (_p, addr, _up) = proxy(
        driver,
        &dir,
        r#"[[routes.r]]
match.path_prefix = "/"
cluster = "app"
fault = { header = "x-outrigger-fault", abort = { status = 503 }, delay = { duration = "2s" } }"#,
    );
    let mut c = Client::connect(addr);
    for _ in 0..50 {
        assert_eq!(c.get("/", "svc", "").status, 200);
    }
    let r = c.get("/", "svc", "x-outrigger-fault: abort\r\n");
    assert_eq!(r.status, 503);
    let r = c.get("/", "svc", "x-outrigger-fault: abort=429\r\n");
    assert_eq!(r.status, 429);
    let t = Instant::now();
    let r = c.get("/", "svc", "x-outrigger-fault: delay=100ms\r\n");
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(95) && t.elapsed() < Duration::from_secs(1));
    // Junk asks for nothing.
    assert_eq!(
        c.get("/", "svc", "x-outrigger-fault: explode\r\n").status,
        200
    );
}

/// A gRPC call aborted with `grpc_status` gets it trailers-only (HTTP 200);
/// one aborted by an HTTP status gets the gRPC status it maps to.
fn grpc_calls_get_their_status(driver: Driver) {
    let dir = TempDir::new("fault-grpc");
    let (_p, addr, _up) = proxy(
        driver,
        &dir,
        r#"[[routes.r]]
match.path_prefix = "/pkg.Orders/"
cluster = "app"
fault = { abort = { status = 503, grpc_status = 8 } }
[[routes.r]]
match.path_prefix = "/pkg.Other/"
cluster = "app"
fault = { abort = { status = 503 } }"#,
    );
    let call = |path: &str| {
        let mut c = Client::connect(addr);
        c.send(
            format!(
                "POST {path} HTTP/1.1\r\nhost: svc\r\ncontent-type: application/grpc\r\nte: trailers\r\ncontent-length: 5\r\n\r\n\0\0\0\0\0"
            )
            .as_bytes(),
        );
        c.read_response(false).unwrap()
    };
    let r = call("/pkg.Orders/Get");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), Some("8"), "{:?}", r.headers);
    let r = call("/pkg.Other/Get");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), Some("14"), "{:?}", r.headers);
}

/// `max_active = 1`: while one request is held, the next is not delayed
/// (and counted as skipped).
fn max_active_bounds_the_delayed(driver: Driver) {
    let dir = TempDir::new("fault-max-active");
    let (p, addr, _up) = proxy(
        driver,
        &dir,
        r#"[[routes.r]]
name = "held"
match.path_prefix = "/"
cluster = "app"
fault = { delay = { duration = "1s" }, max_active = 1 }"#,
    );
    let first = std::thread::spawn(move || {
        let t = Instant::now();
        let r = Client::connect(addr).get("/", "svc", "");
        (r.status, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let r = Client::connect(addr).get("/", "svc", "");
    assert_eq!(r.status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    let (status, took) = first.join().unwrap();
    assert_eq!(status, 200);
    assert!(took >= Duration::from_millis(990), "{took:?}");
    assert_eq!(
        metric(
            &p,
            "outrigger_route_fault_delays_skipped_total",
            &[("route", "held")]
        ),
        1.0
    );
}
