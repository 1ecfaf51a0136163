//! The resilience layer end to end, through the real proxy on both I/O
//! drivers, against upstreams that misbehave on command: retries and their
//! budget, per-try timeouts, circuit-breaker limits, outlier ejection,
//! active health checks and rate limits.

// Test peers run on plain threads, outside the data path: a Mutex is fine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::Client;
use common::script::{read_request, scripted, Seen};
use common::*;
use outrigger::control::{Options, Proxy};
use outrigger::worker::Driver;

both_drivers!(
    retries_turn_503s_into_a_200,
    only_safe_requests_are_retried,
    retry_budget_caps_retries,
    per_try_timeout_moves_on,
    max_requests_overflows,
    max_connections_overflows,
    max_pending_requests_overflows,
    max_retries_stops_retrying,
    finished_retries_leave_max_retries,
    outlier_is_ejected_and_returns,
    health_checked_endpoint_leaves_and_returns,
    rate_limit_converges,
    connection_rate_limit_closes,
    ejection_and_health_survive_a_reload,
);

/// An upstream that answers `status(n)` to its n-th request (0-based),
/// after `delay(n)`; records request heads and body lengths.
fn upstream<S, D>(status: S, delay: D) -> (SocketAddr, Arc<Seen>)
where
    S: Fn(usize) -> u16 + Send + Sync + 'static,
    D: Fn(usize) -> Duration + Send + Sync + 'static,
{
    let count = Arc::new(AtomicUsize::new(0));
    scripted(move |mut s, seen| {
        s.set_nodelay(true).unwrap();
        let mut buf = Vec::new();
        while let Some(req) = read_request(&mut s, &mut buf) {
            let n = count.fetch_add(1, Ordering::SeqCst);
            seen.lines.lock().unwrap().push(format!(
                "{}|{}|{}",
                req.line,
                req.head,
                req.body.len()
            ));
            std::thread::sleep(delay(n));
            let code = status(n);
            let body = format!("{code} from {n}");
            // One write: the head and body in one segment (no Nagle wait).
            let response = format!(
                "HTTP/1.1 {code} X\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
    })
}

fn no_delay(_: usize) -> Duration {
    Duration::ZERO
}

fn proxy(
    driver: Driver,
    route: &str,
    cluster: &str,
    endpoints: &[SocketAddr],
) -> (Proxy, SocketAddr) {
    proxy_with(driver, 1, "", route, cluster, endpoints)
}

fn proxy_with(
    driver: Driver,
    workers: usize,
    listener: &str,
    route: &str,
    cluster: &str,
    endpoints: &[SocketAddr],
) -> (Proxy, SocketAddr) {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let config = format!(
        r#"
[runtime]
workers = {workers}
io = "{io}"
drain_timeout = "1s"

[admin]
address = "127.0.0.1:0"

[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "main"
{listener}

[[routes.main]]
name = "all"
match.path_prefix = "/"
cluster = "c"
{route}

[clusters.c]
endpoints = [{eps}]
{cluster}
"#,
        io = io_name(driver),
        eps = eps.join(", ")
    );
    let snapshot = outrigger::config::compile(std::path::Path::new("<test>"), &config)
        .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{config}"));
    let options = Options {
        config_path: None,
        watch: false,
    };
    let s = Proxy::launch(snapshot, options, None).unwrap();
    let addr = s.local_addr("web").unwrap();
    (s, addr)
}

fn metric(s: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, text) = admin::request(s.admin_addr(), "GET", "/metrics");
    admin::parse_prometheus(&text)
        .value(name, labels)
        .unwrap_or_else(|| panic!("no {name} {labels:?}"))
}

fn get(addr: SocketAddr, path: &str) -> common::http::Response {
    Client::connect(addr).get(path, "svc", "")
}

/// An endpoint answering 503 to its first two requests is retried; the
/// client sees the 200 of the third try, which carries its attempt count.
fn retries_turn_503s_into_a_200(driver: Driver) {
    let (up, seen) = upstream(|n| if n < 2 { 503 } else { 200 }, no_delay);
    let (s, addr) = proxy(
        driver,
        r#"retry = { attempts = 2, backoff = "1ms" }"#,
        "",
        &[up],
    );
    let r = get(addr, "/x");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let lines = seen.lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(!lines[0].contains("x-outrigger-attempts"));
    assert!(lines[1].contains("x-outrigger-attempts: 2"), "{}", lines[1]);
    assert!(lines[2].contains("x-outrigger-attempts: 3"), "{}", lines[2]);
    assert_eq!(
        metric(&s, "outrigger_cluster_retries_total", &[("cluster", "c")]),
        2.0
    );
    assert_eq!(
        metric(
            &s,
            "outrigger_cluster_retries_succeeded_total",
            &[("cluster", "c")]
        ),
        1.0
    );
}

/// A POST is not retried (with a 1 MiB body or a small one); a GET and a
/// PUT with a small body are, and the PUT's body is replayed intact. When
/// the retries run out the client gets the last upstream answer.
fn only_safe_requests_are_retried(driver: Driver) {
    let (up, seen) = upstream(|_| 503, no_delay);
    let (_s, addr) = proxy(
        driver,
        r#"retry = { attempts = 2, backoff = "1ms", on = ["5xx", "reset"] }"#,
        "",
        &[up],
    );
    let send = |method: &str, len: usize| {
        let mut c = Client::connect(addr);
        let mut raw = format!("{method} /b HTTP/1.1\r\nHost: svc\r\nContent-Length: {len}\r\n\r\n")
            .into_bytes();
        raw.extend(std::iter::repeat(b'z').take(len));
        c.send(&raw);
        c.read_response(false).unwrap()
    };
    assert_eq!(send("POST", 1 << 20).status, 503);
    assert_eq!(seen.lines().len(), 1);
    assert_eq!(send("POST", 100).status, 503);
    assert_eq!(seen.lines().len(), 2);
    let r = get(addr, "/g");
    assert_eq!(r.status, 503);
    assert_eq!(r.body, b"503 from 4");
    assert_eq!(seen.lines().len(), 5);
    assert_eq!(send("PUT", 1000).status, 503);
    let lines = seen.lines();
    assert_eq!(lines.len(), 8);
    assert!(
        lines[5..]
            .iter()
            .all(|l| l.starts_with("PUT") && l.ends_with("|1000")),
        "{lines:?}"
    );
}

/// Under a fully failing cluster, a 20% budget holds retries to 20% of
/// the requests plus the floor (1/s over the 10 s window).
fn retry_budget_caps_retries(driver: Driver) {
    let (up, seen) = upstream(|_| 503, no_delay);
    let (s, addr) = proxy(
        driver,
        r#"retry = { attempts = 3, backoff = "0s" }"#,
        "retry_budget = { ratio = 0.2, min_retries_per_second = 1 }",
        &[up],
    );
    let mut c = Client::connect(addr);
    let requests = 200;
    for _ in 0..requests {
        assert_eq!(c.get("/f", "svc", "").status, 503);
    }
    let retries = seen.lines().len() - requests;
    assert!(
        retries <= 40 + 10,
        "{retries} retries for {requests} requests"
    );
    assert!(retries >= 40, "{retries}: the budget should allow 20%");
    let refused = metric(
        &s,
        "outrigger_cluster_retries_budget_refused_total",
        &[("cluster", "c")],
    );
    assert!(refused > 0.0);
}

/// A slow endpoint is cut off by `per_try_timeout` and the retry goes to
/// the other endpoint: every request succeeds well before the slow answer.
fn per_try_timeout_moves_on(driver: Driver) {
    let (slow, _) = upstream(|_| 200, |_| Duration::from_secs(3));
    let (fast, fast_seen) = upstream(|_| 200, no_delay);
    let (_s, addr) = proxy(
        driver,
        r#"retry = { attempts = 1, per_try_timeout = "200ms", backoff = "1ms" }"#,
        "",
        &[slow, fast],
    );
    for _ in 0..4 {
        let t = Instant::now();
        let r = get(addr, "/t");
        assert_eq!(r.status, 200);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    assert!(fast_seen.lines().len() >= 4);
}

/// Hold one request on a slow upstream, then send another.
fn second_while_first_held(addr: SocketAddr) -> common::http::Response {
    let first = std::thread::spawn(move || get(addr, "/slow"));
    std::thread::sleep(Duration::from_millis(300));
    let second = get(addr, "/second");
    assert_eq!(first.join().unwrap().status, 200);
    second
}

fn max_requests_overflows(driver: Driver) {
    let (up, _) = upstream(
        |_| 200,
        |n| Duration::from_millis(if n == 0 { 1000 } else { 0 }),
    );
    let (s, addr) = proxy(driver, "", "circuit_breaker = { max_requests = 1 }", &[up]);
    let r = second_while_first_held(addr);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-outrigger-error"), Some("overflow"));
    let labels = [("cluster", "c"), ("limit", "max_requests")];
    assert_eq!(metric(&s, "outrigger_cluster_overflow_total", &labels), 1.0);
    assert_eq!(get(addr, "/after").status, 200);
}

fn max_connections_overflows(driver: Driver) {
    let (up, _) = upstream(
        |_| 200,
        |n| Duration::from_millis(if n == 0 { 1000 } else { 0 }),
    );
    let (s, addr) = proxy(
        driver,
        "",
        "circuit_breaker = { max_connections = 1 }",
        &[up],
    );
    let r = second_while_first_held(addr);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-outrigger-error"), Some("overflow"));
    let labels = [("cluster", "c"), ("limit", "max_connections")];
    assert_eq!(metric(&s, "outrigger_cluster_overflow_total", &labels), 1.0);
    // The first connection is pooled now: the next request reuses it.
    assert_eq!(get(addr, "/after").status, 200);
}

/// An upstream whose accept queue is full never completes a connect: the
/// first request waits for its connection, the second overflows.
fn max_pending_requests_overflows(driver: Driver) {
    // A listener that never accepts, with its queue filled: SYNs are dropped.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let full: SocketAddr = socket.local_addr().unwrap().as_socket().unwrap();
    let _fill: Vec<TcpStream> = (0..4)
        .filter_map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            s.set_nonblocking(true).ok()?;
            let _ = s.connect(&full.into());
            Some(s.into())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let (s, addr) = proxy(
        driver,
        "",
        r#"circuit_breaker = { max_pending_requests = 1 }
connect_timeout = "1500ms""#,
        &[full],
    );
    let first = std::thread::spawn(move || get(addr, "/wait"));
    std::thread::sleep(Duration::from_millis(300));
    let r = get(addr, "/second");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-outrigger-error"), Some("overflow"));
    let labels = [("cluster", "c"), ("limit", "max_pending_requests")];
    assert_eq!(metric(&s, "outrigger_cluster_overflow_total", &labels), 1.0);
    assert_eq!(first.join().unwrap().status, 503);
}

/// With `max_retries = 1`, a second concurrent retry is not sent: that
/// request gets its 503 at once (flag RO), the other its retried 200.
fn max_retries_stops_retrying(driver: Driver) {
    // The first request fails; its retry is slow (held in flight) and
    // succeeds; the second request fails while that retry is in flight.
    let (up, seen) = upstream(
        |n| if n == 1 { 200 } else { 503 },
        |n| Duration::from_millis(if n == 1 { 1000 } else { 0 }),
    );
    let (s, addr) = proxy(
        driver,
        r#"retry = { attempts = 2, backoff = "0s" }"#,
        "circuit_breaker = { max_retries = 1 }",
        &[up],
    );
    let first = std::thread::spawn(move || get(addr, "/one"));
    std::thread::sleep(Duration::from_millis(300));
    let r = get(addr, "/two");
    assert_eq!(r.status, 503, "{:?}", seen.lines());
    assert_eq!(first.join().unwrap().status, 200);
    let labels = [("cluster", "c"), ("limit", "max_retries")];
    assert_eq!(metric(&s, "outrigger_cluster_overflow_total", &labels), 1.0);
}

/// Retries that have finished are not in flight: sequential requests on
/// two workers, each retried twice against an upstream that always answers
/// 503, all use their two retries with the default `max_retries` (3, so
/// one or two per worker). The upstream's 503 is flagged `URX` (attempts
/// used up), never as the proxy's overflow, and no retry counts as
/// succeeded.
fn finished_retries_leave_max_retries(driver: Driver) {
    let (up, seen) = upstream(|_| 503, no_delay);
    let dir = common::admin::TempDir::new("retries-leave");
    let (s, addr) = proxy_with(
        driver,
        2,
        &format!(
            "\n[access_log]\npath = \"{}\"\nformat = \"json\"\nflush_interval = \"50ms\"\n",
            dir.path("access.log").display()
        ),
        r#"retry = { attempts = 2, on = ["5xx"], backoff = "0s" }"#,
        "",
        &[up],
    );
    for i in 0..20 {
        // A connection each, so both workers take some.
        let r = get(addr, "/r");
        assert_eq!(r.status, 503, "{i}");
    }
    assert_eq!(seen.lines().len(), 60, "each request tried three times");
    let labels = [("cluster", "c"), ("limit", "max_retries")];
    assert_eq!(metric(&s, "outrigger_cluster_overflow_total", &labels), 0.0);
    let c = [("cluster", "c")];
    assert_eq!(metric(&s, "outrigger_cluster_retries_total", &c), 40.0);
    assert_eq!(
        metric(&s, "outrigger_cluster_retries_succeeded_total", &c),
        0.0
    );
    let lines: Vec<serde_json::Value> = common::admin::read_log(&dir, 20)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for l in &lines {
        assert_eq!(
            (&l["status"], &l["flags"]),
            (&503.into(), &"URX".into()),
            "{l}"
        );
    }
}

/// An endpoint that answers 503 to everything is ejected after
/// `consecutive_5xx` failures, gets no traffic while ejected, and gets
/// traffic again when the ejection ends.
fn outlier_is_ejected_and_returns(driver: Driver) {
    let (bad, bad_seen) = upstream(|_| 503, no_delay);
    let (good, _) = upstream(|_| 200, no_delay);
    let (s, addr) = proxy_with(
        driver,
        2,
        "",
        "",
        r#"outlier_detection = { consecutive_5xx = 3, base_ejection_time = "2s" }"#,
        &[bad, good],
    );
    let mut c = Client::connect(addr);
    for _ in 0..20 {
        c.get("/o", "svc", "");
    }
    let before = bad_seen.lines().len();
    // Two workers: each ejects on its own evidence or honours the other's.
    assert!(before <= 6, "{before} requests reached the bad endpoint");
    let labels = [("cluster", "c")];
    assert_eq!(
        metric(&s, "outrigger_cluster_ejections_total", &labels),
        1.0
    );
    assert_eq!(
        metric(&s, "outrigger_cluster_endpoints_usable", &labels),
        1.0
    );
    for i in 0..20 {
        let r = c.get("/o", "svc", "");
        assert_eq!(r.status, 200, "{i}: {}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(bad_seen.lines().len(), before);
    let clusters = admin::get_json(s.admin_addr(), "/clusters");
    let ep = &clusters["clusters"]["c"]["endpoints"][0];
    assert_eq!(ep["ejected"], true, "{clusters}");
    std::thread::sleep(Duration::from_millis(2100));
    for _ in 0..4 {
        c.get("/o", "svc", "");
    }
    assert!(bad_seen.lines().len() > before, "the ejection never ended");
}

/// An HTTP server on `addr` that answers 200 until `stop` is set, then
/// closes its listener (the port refuses connections).
fn killable(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<()> {
    let l = TcpListener::bind(addr).unwrap();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(500)))
                        .unwrap();
                    let mut buf = Vec::new();
                    if let Some(req) = read_request(&mut s, &mut buf) {
                        if !req.line.contains("/healthz") {
                            hits.fetch_add(1, Ordering::SeqCst);
                        }
                        let _ = s.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        );
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    })
}

/// A health-checked endpoint that dies leaves the rotation within
/// `interval x unhealthy_threshold` (plus a probe), and returns once it
/// passes again.
fn health_checked_endpoint_leaves_and_returns(driver: Driver) {
    let (good, _) = upstream(|_| 200, no_delay);
    let victim = closed_port();
    let stop = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicUsize::new(0));
    let t = killable(victim, stop.clone(), hits.clone());
    let (s, addr) = proxy(
        driver,
        "",
        r#"health_check = { protocol = "http", path = "/healthz", interval = "100ms", timeout = "200ms", unhealthy_threshold = 2, healthy_threshold = 1 }"#,
        &[victim, good],
    );
    let spread = |n: usize| {
        let before = hits.load(Ordering::SeqCst);
        for _ in 0..n {
            assert_eq!(get(addr, "/h").status, 200);
        }
        hits.load(Ordering::SeqCst) - before
    };
    assert!(spread(10) >= 3, "the victim gets its share while healthy");
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap();
    let killed = Instant::now();
    let labels = [("cluster", "c")];
    let usable = |n: f64| metric(&s, "outrigger_cluster_endpoints_usable", &labels) == n;
    assert!(eventually(|| usable(1.0)));
    assert!(
        killed.elapsed() < Duration::from_millis(1500),
        "{:?}",
        killed.elapsed()
    );
    let clusters = admin::get_json(s.admin_addr(), "/clusters");
    assert_eq!(
        clusters["clusters"]["c"]["endpoints"][0]["health"], "unhealthy",
        "{clusters}"
    );
    // Restarted on the same port: traffic returns after one passing probe.
    stop.store(false, Ordering::SeqCst);
    let t = killable(victim, stop.clone(), hits.clone());
    assert!(eventually(|| usable(2.0)));
    assert!(spread(10) >= 3);
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap();
    let failed = [("cluster", "c"), ("result", "failed")];
    assert!(metric(&s, "outrigger_cluster_health_checks_total", &failed) >= 2.0);
}

/// Hammered from two connections for 5 s, a 50/s limit (burst 5) lets
/// through 50/s within 10%; refused requests get 429 with retry-after.
fn rate_limit_converges(driver: Driver) {
    let (up, seen) = upstream(|_| 200, no_delay);
    let (s, addr) = proxy_with(
        driver,
        2,
        "",
        "rate_limit = { requests_per_second = 50, burst = 5 }",
        "",
        &[up],
    );
    let window = Duration::from_secs(5);
    let start = Instant::now();
    let clients: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let (mut ok, mut limited) = (0usize, 0usize);
                while start.elapsed() < window {
                    let r = c.get("/r", "svc", "");
                    match r.status {
                        200 => ok += 1,
                        429 => {
                            assert_eq!(r.header("x-outrigger-error"), Some("rate_limited"));
                            assert_eq!(r.header("retry-after"), Some("1"));
                            limited += 1;
                        }
                        other => panic!("status {other}"),
                    }
                }
                (ok, limited)
            })
        })
        .collect();
    let (ok, limited) = clients
        .into_iter()
        .map(|h| h.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let expected = 50.0 * window.as_secs_f64() + 5.0;
    assert!(
        (ok as f64 - expected).abs() <= expected * 0.1,
        "{ok} allowed, expected about {expected}"
    );
    assert!(limited > 0);
    assert_eq!(seen.lines().len(), ok);
    let labels = [("table", "main"), ("route", "all")];
    assert_eq!(
        metric(&s, "outrigger_route_rate_limited_total", &labels),
        limited as f64
    );
}

/// A listener's `connections_per_second`: connections over the rate are
/// closed at once, without a byte.
fn connection_rate_limit_closes(driver: Driver) {
    let (up, _) = upstream(|_| 200, no_delay);
    let (s, addr) = proxy_with(
        driver,
        1,
        "rate_limit = { connections_per_second = 1, burst = 2 }",
        "",
        "",
        &[up],
    );
    let statuses: Vec<Option<u16>> = (0..5)
        .map(|_| {
            common::http::one_shot(addr, b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n").map(|r| r.status)
        })
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == Some(200)).count(),
        2,
        "{statuses:?}"
    );
    assert!(statuses[2..].iter().all(Option::is_none), "{statuses:?}");
    let labels = [("listener", "web")];
    assert_eq!(
        metric(
            &s,
            "outrigger_listener_connections_rate_limited_total",
            &labels
        ),
        3.0
    );
}

/// An ejected endpoint stays ejected, and an unhealthy one unhealthy,
/// across a reload that keeps them and changes the thresholds; the new
/// threshold applies to the next decision without a reset.
fn ejection_and_health_survive_a_reload(driver: Driver) {
    let (bad, bad_seen) = upstream(|_| 503, no_delay);
    let (good, _) = upstream(|_| 200, no_delay);
    let dead = closed_port();
    let dir = admin::TempDir::new("resilience-reload");
    let path = dir.path("config.toml");
    let config = |consecutive: u32, extra_route: &str| {
        format!(
            r#"
[runtime]
workers = 1
io = "{io}"
[admin]
address = "127.0.0.1:0"
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "main"
{extra_route}
[[routes.main]]
name = "all"
match.path_prefix = "/"
cluster = "c"
[[routes.main]]
name = "checked"
match.path_prefix = "/"
cluster = "hc"
[clusters.c]
endpoints = ["{bad}", "{good}"]
outlier_detection = {{ consecutive_5xx = {consecutive}, base_ejection_time = "60s" }}
[clusters.hc]
endpoints = ["{dead}", "{good}"]
health_check = {{ protocol = "tcp", interval = "100ms", unhealthy_threshold = 1 }}
"#,
            io = io_name(driver)
        )
    };
    std::fs::write(&path, config(3, "")).unwrap();
    let snapshot = outrigger::config::load(&path).unwrap();
    let options = Options {
        config_path: Some(path.clone()),
        watch: false,
    };
    let s = Proxy::launch(snapshot, options, None).unwrap();
    let addr = s.local_addr("web").unwrap();
    let mut c = Client::connect(addr);
    for _ in 0..10 {
        c.get("/", "svc", "");
    }
    let ejected_after = bad_seen.lines().len();
    assert_eq!(ejected_after, 3);
    let labels = [("cluster", "hc")];
    assert!(eventually(|| metric(
        &s,
        "outrigger_cluster_endpoints_usable",
        &labels
    ) == 1.0));
    // Reload: a new route first (the generation changes), a new threshold.
    let extra = "[[routes.main]]\nname = \"new\"\nmatch.path = \"/new\"\ndirect_response = { status = 200, body = \"new\" }";
    admin::write_atomic(&path, &config(1, extra));
    let (status, body) = admin::request(s.admin_addr(), "POST", "/reload");
    assert_eq!(status, 200, "{body}");
    let clusters = admin::get_json(s.admin_addr(), "/clusters");
    assert_eq!(clusters["generation"], 2);
    assert_eq!(
        clusters["clusters"]["c"]["endpoints"][0]["ejected"], true,
        "{clusters}"
    );
    assert_eq!(
        clusters["clusters"]["hc"]["endpoints"][0]["health"], "unhealthy",
        "{clusters}"
    );
    assert_eq!(
        metric(&s, "outrigger_cluster_endpoints_usable", &labels),
        1.0
    );
    for _ in 0..10 {
        assert_eq!(c.get("/", "svc", "").status, 200);
    }
    assert_eq!(bad_seen.lines().len(), ejected_after);
    assert_eq!(
        metric(&s, "outrigger_cluster_ejections_total", &[("cluster", "c")]),
        1.0
    );
}
