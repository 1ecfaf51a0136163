//! The fault suite (issue 16): one scenario per failure a sidecar meets,
//! each with a scripted peer, on both I/O drivers. Every scenario asserts
//! what the client (and, where it matters, the upstream) saw, then that the
//! proxy is healthy afterwards: it serves a normal request and every client
//! connection of the fault is closed on its side (counted by the proxy per
//! server: scenarios run in parallel in one process, so the process's
//! descriptor count is shared). docs/operations.md says what each failure
//! looks like to an operator.

// Test peers run on plain threads, outside the data path: a Mutex is fine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::Client;
use common::script::{read_request, reset, scripted, Seen};
use common::*;
use outrigger::worker::Driver;

both_drivers!(
    upstream_dies_after_the_head,
    upstream_dies_mid_length_body,
    upstream_dies_mid_chunked_body,
    upstream_resets_before_answering,
    upstream_never_answers,
    upstream_stalls_the_body,
    malformed_upstream_responses,
    slowloris_and_slow_body,
    client_stops_reading,
);

/// The proxy in front of `up`: `/healthz` answered by the proxy, the rest
/// to `up`; short timeouts so faults show quickly.
fn proxy(driver: Driver, up: SocketAddr, route_extra: &str) -> outrigger::Server {
    start(&format!(
        r#"
[runtime]
workers = 1
io = "{io}"

[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "r"
header_timeout = "500ms"
request_body_timeout = "500ms"
upstream_read_timeout = "1s"
send_timeout = "1s"

[[routes.r]]
match.path = "/healthz"
direct_response = {{ status = 200, body = "ok" }}

[[routes.r]]
match.path_prefix = "/"
cluster = "up"
{route_extra}

[clusters.up]
endpoints = ["{up}"]
"#,
        io = io_name(driver)
    ))
}

/// After a fault: a normal request is served, and every client connection
/// of the fault is closed on the proxy's side (nothing leaked).
fn healthy(server: &outrigger::Server, addr: SocketAddr) {
    {
        let r = Client::connect(addr).get("/healthz", "x", "");
        assert_eq!(r.status, 200);
    }
    assert!(
        eventually(|| server.active_connections() == 0),
        "{} client connections still open",
        server.active_connections()
    );
}

/// Send `raw` and read until the proxy closes the connection.
fn exchange_until_close(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
    let mut s = connect(addr);
    s.write_all(raw).unwrap();
    read_to_eof(&mut s).expect("the proxy closes the connection")
}

const GET: &[u8] = b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n";

/// Each request of the scripted upstream, answered by `answer`; the
/// connection closes when it returns false.
fn upstream(
    answer: impl Fn(&mut TcpStream, &str) -> bool + Send + Sync + 'static,
) -> (SocketAddr, std::sync::Arc<Seen>) {
    scripted(move |mut s, seen| {
        let mut buf = Vec::new();
        while let Some(req) = read_request(&mut s, &mut buf) {
            seen.lines.lock().unwrap().push(req.line.clone());
            if !answer(&mut s, &req.line) {
                seen.closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    })
}

/// The head went out, then the upstream closed: the client's connection is
/// closed too (never a made-up end of body), and the next request opens a
/// new upstream connection.
fn upstream_dies_after_the_head(driver: Driver) {
    let (up, seen) = upstream(|s, line| {
        if line.contains("/x") {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n");
            return false;
        }
        common::script::ok(s, "fine");
        true
    });
    let server = proxy(driver, up, "");
    let addr = server.local_addr("web").unwrap();
    let got = exchange_until_close(addr, GET);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n"),
        "no body byte was invented: {text:?}"
    );
    let r = Client::connect(addr).get("/y", "x", "");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"fine"[..]));
    assert_eq!(
        seen.connections.load(Ordering::SeqCst),
        2,
        "the cut connection was not reused"
    );
    healthy(&server, addr);
}

fn upstream_dies_mid_length_body(driver: Driver) {
    let (up, _) = upstream(|s, _| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789");
        false
    });
    let server = proxy(driver, up, "");
    let addr = server.local_addr("web").unwrap();
    let got = exchange_until_close(addr, GET);
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("content-length: 100"), "{text}");
    assert!(text.ends_with("\r\n\r\n0123456789"), "{text:?}");
    healthy(&server, addr);
}

fn upstream_dies_mid_chunked_body(driver: Driver) {
    let (up, _) = upstream(|s, _| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n");
        false
    });
    let server = proxy(driver, up, "");
    let addr = server.local_addr("web").unwrap();
    let got = exchange_until_close(addr, GET);
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("5\r\nhello\r\n"), "{text:?}");
    assert!(
        !text.contains("0\r\n\r\n"),
        "a last chunk was invented: {text:?}"
    );
    healthy(&server, addr);
}

/// RST after the request arrived: 502 `upstream_reset` for a POST (never
/// replayed); an idempotent GET on a route with `retry` is retried.
fn upstream_resets_before_answering(driver: Driver) {
    let (up, seen) = scripted(|mut s, seen| {
        let mut buf = Vec::new();
        if let Some(req) = read_request(&mut s, &mut buf) {
            let n = seen.lines.lock().unwrap().len();
            seen.lines.lock().unwrap().push(req.line.clone());
            if req.line.starts_with("POST") || n % 2 == 1 {
                reset(s);
                return;
            }
            common::script::ok(&mut s, "second try");
        }
    });
    let server = proxy(driver, up, "retry = { attempts = 1, on = [\"reset\"] }");
    let addr = server.local_addr("web").unwrap();
    let r = common::http::one_shot(
        addr,
        b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi",
    )
    .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-outrigger-error"), Some("upstream_reset"));
    let posts = seen
        .lines()
        .iter()
        .filter(|l| l.starts_with("POST"))
        .count();
    assert_eq!(posts, 1, "a POST is never sent twice");
    let r = Client::connect(addr).get("/g", "x", "");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"second try"[..]));
    healthy(&server, addr);
}

/// Accepts and reads the request, never answers: the route timeout ends
/// it with 504.
fn upstream_never_answers(driver: Driver) {
    let (up, _) = upstream(|_, _| {
        std::thread::sleep(Duration::from_secs(5));
        false
    });
    let server = proxy(driver, up, "timeout = \"400ms\"");
    let addr = server.local_addr("web").unwrap();
    let t = Instant::now();
    let r = common::http::one_shot(addr, GET).unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.header("x-outrigger-error"), Some("upstream_timeout"));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    healthy(&server, addr);
}

/// The head, then silence: after `upstream_read_timeout` the client's
/// connection is closed mid-body.
fn upstream_stalls_the_body(driver: Driver) {
    let (up, _) = upstream(|s, _| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc");
        std::thread::sleep(Duration::from_secs(4));
        false
    });
    let server = proxy(driver, up, "");
    let addr = server.local_addr("web").unwrap();
    let t = Instant::now();
    let got = exchange_until_close(addr, GET);
    let waited = t.elapsed();
    assert!(String::from_utf8_lossy(&got).ends_with("\r\n\r\nabc"));
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    healthy(&server, addr);
}

/// Invalid responses are 502 and their connection is discarded: nothing
/// of them reaches the next request.
fn malformed_upstream_responses(driver: Driver) {
    let (up, _) = upstream(|s, line| {
        let answer: &[u8] = if line.contains("/both") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\nabc"
        } else if line.contains("/garbage") {
            b"NOT HTTP AT ALL\r\n\r\n"
        } else if line.contains("/smuggle") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled"
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nclean"
        };
        let _ = s.write_all(answer);
        !line.contains("/smuggle")
    });
    let server = proxy(driver, up, "");
    let addr = server.local_addr("web").unwrap();
    for path in ["/both", "/garbage"] {
        let mut c = Client::connect(addr);
        let r = c.get(path, "x", "");
        assert_eq!(r.status, 502, "{path}");
        assert_eq!(r.header("x-outrigger-error"), Some("upstream_bad_response"));
    }
    // Bytes after a complete response are never served to the next request.
    let mut c = Client::connect(addr);
    let r = c.get("/smuggle", "x", "");
    assert_eq!(r.body, b"ok");
    let r = c.get("/next", "x", "");
    assert_eq!(r.body, b"clean");
    drop(c);
    healthy(&server, addr);
}

/// A head sent a byte at a time: 408 at `header_timeout`. A declared body
/// that stalls: 408 at `request_body_timeout`.
fn slowloris_and_slow_body(driver: Driver) {
    let (up, seen) = upstream(|s, _| {
        common::script::ok(s, "never");
        true
    });
    let server = proxy(driver, up, "");
    let addr = server.local_addr("web").unwrap();
    let mut s = connect(addr);
    let t = Instant::now();
    for b in b"GET /slow HTTP/1.1\r\nhost: x\r\nx-a: " {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = read_to_eof(&mut s).unwrap();
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"));
    assert!(t.elapsed() < Duration::from_secs(3));
    // The upstream reads the whole declared body before it answers, so it
    // never answers this one: the proxy's 408 at request_body_timeout
    // (500 ms here) is the only answer.
    let t = Instant::now();
    let got = exchange_until_close(
        addr,
        b"POST /body HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nonly a little",
    );
    let waited = t.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(seen.lines().iter().all(|l| !l.contains("/slow")));
    healthy(&server, addr);
}

/// A client that stops reading a large response: the proxy stops reading
/// the upstream (bounded memory) and, after `send_timeout`, closes both.
fn client_stops_reading(driver: Driver) {
    // What the upstream got rid of: an unbounded proxy reads the whole
    // GiB at loopback speed within the pause below.
    let taken = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&taken);
    let (up, seen) = upstream(move |s, _| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n");
        let chunk = vec![b'z'; 64 * 1024];
        while counted.load(Ordering::SeqCst) < 1 << 30 {
            if s.write_all(&chunk).is_err() {
                break;
            }
            counted.fetch_add(chunk.len(), Ordering::SeqCst);
        }
        false
    });
    let server = proxy(driver, up, "");
    let addr = server.local_addr("web").unwrap();
    let mut s = connect(addr);
    s.write_all(GET).unwrap();
    let mut head = [0u8; 4096];
    // (Retried on EINTR: signals reach every thread of the test process.)
    while let Err(e) = s.read(&mut head) {
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "{e}");
    }
    // Stop reading; the proxy's send_timeout (1s) ends the exchange.
    std::thread::sleep(Duration::from_millis(2500));
    // What left the upstream and did not reach this client's socket sits
    // in kernel socket buffers (a few MiB each on loopback) or in the
    // proxy: bounded, measured apart from this test process's own memory.
    let stalled_at = taken.load(Ordering::SeqCst);
    assert!(
        stalled_at < 48 << 20,
        "the upstream got {stalled_at} bytes out while the client read none"
    );
    // Both sides were closed: the upstream's writes failed (it stopped
    // sending)...
    assert!(
        eventually(|| seen.closed.load(Ordering::SeqCst) == 1),
        "the upstream connection was not closed after send_timeout"
    );
    // ...and the client reads what the kernel buffered, then EOF (not its
    // 10 s read timeout).
    let mut rest = Vec::new();
    let closed = std::io::Read::read_to_end(&mut s, &mut rest);
    assert!(
        closed.is_ok()
            || closed
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the client connection was not closed: {closed:?}"
    );
    assert!(
        rest.len() < 64 << 20,
        "{} bytes after the stall",
        rest.len()
    );
    healthy(&server, addr);
}

both_drivers!(corrupt_config_on_reload_keeps_serving);

/// Each bad state of the config file on reload: truncated, invalid TOML,
/// a value out of range, a listener on a port someone else holds, a
/// missing certificate, the file deleted. Every reload fails with a
/// reason, the generation stays, and the old config keeps serving.
fn corrupt_config_on_reload_keeps_serving(driver: Driver) {
    use outrigger::control::{Options, Proxy};
    let (up, _) = upstream(|s, _| {
        common::script::ok(s, "old config");
        true
    });
    let dir = common::admin::TempDir::new("faults-reload");
    let path = dir.path("config.toml");
    let good = format!(
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
match.path_prefix = "/"
cluster = "up"
[clusters.up]
endpoints = ["{up}"]
"#,
        io = io_name(driver)
    );
    std::fs::write(&path, &good).unwrap();
    let snapshot = outrigger::config::load(&path).unwrap();
    let proxy = Proxy::launch(
        snapshot,
        Options {
            config_path: Some(path.clone()),
            watch: false,
        },
        None,
    )
    .unwrap();
    let addr = proxy.local_addr("web").unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bad: Vec<(&str, String)> = vec![
        ("truncated", good[..good.len() / 2].to_string()),
        ("invalid", good.replace("[clusters.up]", "[clusters.up")),
        (
            "out of range",
            good.replace("protocol = \"http\"", "protocol = \"http\"\nmax_connections = 0"),
        ),
        (
            "port in use",
            format!(
                "{good}\n[listeners.other]\naddress = \"{}\"\nprotocol = \"http\"\nroutes = \"r\"\n",
                taken.local_addr().unwrap()
            ),
        ),
        (
            "missing certificate",
            good.replace(
                "routes = \"r\"\n[[routes",
                "routes = \"r\"\ntls = { cert = \"missing.pem\", key = \"missing.key\" }\n[[routes",
            ),
        ),
    ];
    for (what, text) in &bad {
        common::admin::write_atomic(&path, text);
        let err = proxy.reload().expect_err(what);
        assert!(!err.to_string().is_empty(), "{what}");
        let r = Client::connect(addr).get("/", "x", "");
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"old config"[..]),
            "{what}"
        );
    }
    std::fs::remove_file(&path).unwrap();
    assert!(proxy.reload().is_err(), "file deleted");
    let r = Client::connect(addr).get("/", "x", "");
    assert_eq!(r.body, b"old config");
    assert_eq!(proxy.shared().snapshot.load().generation, 1);
}

both_drivers!(connect_black_hole);

/// A network namespace of this thread's own (the proxy and upstreams it
/// starts live there too), with loopback up. `Err` when not permitted.
fn own_namespace() -> Result<(), String> {
    // SAFETY: unshare(CLONE_NEWNET) moves only the calling thread into a
    // new network namespace; threads it spawns inherit it.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!("unshare: {}", std::io::Error::last_os_error()));
    }
    let up = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .map_err(|e| format!("ip: {e}"))?;
    if !up.success() {
        return Err("ip link set lo up failed".into());
    }
    Ok(())
}

/// Connect black hole: SYNs to one endpoint dropped by iptables (in a
/// namespace of the test's own). With only that endpoint, 503 `UF` after
/// `connect_timeout`; with a live endpoint beside it, every request is
/// answered (the hole costs at most one connect_timeout).
fn connect_black_hole(driver: Driver) {
    if let Err(why) = own_namespace() {
        assert!(
            std::env::var_os("OUTRIGGER_REQUIRE_INTEROP").is_none(),
            "network namespaces required: {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    // The hole: a real listener whose SYNs are dropped.
    let hole_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole = hole_listener.local_addr().unwrap();
    let rule = std::process::Command::new("iptables")
        .args([
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            &hole.port().to_string(),
            "--syn",
            "-j",
            "DROP",
        ])
        .output()
        .unwrap();
    assert!(
        rule.status.success(),
        "iptables: {}",
        String::from_utf8_lossy(&rule.stderr)
    );
    // Confirm the rule bites: a plain connect hangs.
    assert!(TcpStream::connect_timeout(&hole, Duration::from_millis(200)).is_err());
    let live_backend = outrigger::backends::start(
        outrigger::backends::BackendKind::Http(outrigger::backends::HttpBackend::named("live")),
        "127.0.0.1:0".parse().unwrap(),
        1,
        driver,
    )
    .unwrap();
    let live = live_backend.addr;
    let config = |endpoints: &str| {
        format!(
            "[runtime]\nworkers = 1\nio = \"{io}\"\n[listeners.web]\naddress = \"127.0.0.1:0\"\nprotocol = \"http\"\nroutes = \"r\"\n[[routes.r]]\nmatch.path_prefix = \"/\"\ncluster = \"up\"\n[clusters.up]\nendpoints = [{endpoints}]\nconnect_timeout = \"300ms\"\n",
            io = io_name(driver)
        )
    };
    let only = start(&config(&format!("\"{hole}\"")));
    let addr = only.local_addr("web").unwrap();
    let t = Instant::now();
    let r = Client::connect(addr).get("/", "x", "");
    let took = t.elapsed();
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );
    assert!(only.shutdown(Duration::from_secs(5)));
    let both = start(&config(&format!("\"{hole}\", \"{live}\"")));
    let addr = both.local_addr("web").unwrap();
    let mut c = Client::connect(addr);
    for i in 0..6 {
        let t = Instant::now();
        let r = c.get(&format!("/{i}"), "x", "");
        assert_eq!(
            r.status,
            200,
            "request {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "request {i} took {:?}",
            t.elapsed()
        );
    }
    drop(c);
    healthy_after_hole(&both, addr);
    drop(hole_listener);
}

fn healthy_after_hole(server: &outrigger::Server, addr: SocketAddr) {
    let r = Client::connect(addr).get("/again", "x", "");
    assert_eq!(r.status, 200);
    assert!(eventually(|| server.active_connections() == 0));
}
