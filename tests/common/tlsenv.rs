//! Shared pieces of the TLS tests (tests/tls.rs, tests/tls_upstream.rs):
//! an upstream that says what it saw, a proxy terminating TLS with a given
//! table, and the handshake failure counter.

use std::io::Write;
use std::net::SocketAddr;

use outrigger::control::{Options, Proxy};
use outrigger::worker::Driver;

use super::admin::{self, TempDir};
use super::io_name;
use super::script::{read_request, scripted};

/// An upstream that answers each request with a body saying what it saw:
/// `proto=<x-forwarded-proto> body=<length>`, padded to `?size=N` bytes.
pub fn upstream() -> SocketAddr {
    scripted(|mut s, _| {
        s.set_nodelay(true).unwrap();
        let mut buf = Vec::new();
        while let Some(req) = read_request(&mut s, &mut buf) {
            let proto = req
                .head
                .lines()
                .find_map(|l| l.strip_prefix("x-forwarded-proto: "))
                .unwrap_or("-")
                .to_string();
            let size: usize = req
                .line
                .split("size=")
                .nth(1)
                .and_then(|v| v.split(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = format!("proto={proto} body={}", req.body.len()).into_bytes();
            if body.len() < size {
                body.resize(size, b'.');
            }
            let mut out =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
            out.extend_from_slice(&body);
            if s.write_all(&out).is_err() {
                return;
            }
        }
    })
    .0
}

/// A proxy whose listener `web` (http) or `raw` (tcp) terminates TLS with
/// the `tls` table given; files live in `dir`.
pub fn proxy(
    driver: Driver,
    dir: &TempDir,
    protocol: &str,
    tls: &str,
    up: SocketAddr,
) -> (Proxy, SocketAddr) {
    proxy_with(driver, dir, protocol, tls, up, "")
}

/// `proxy`, with more keys for the cluster (`protocol = "http2"`).
pub fn proxy_with(
    driver: Driver,
    dir: &TempDir,
    protocol: &str,
    tls: &str,
    up: SocketAddr,
    cluster_keys: &str,
) -> (Proxy, SocketAddr) {
    let target = match protocol {
        "http" => "routes = \"main\"".to_string(),
        _ => "cluster = \"c\"".to_string(),
    };
    let config = format!(
        r#"
[runtime]
workers = 1
io = "{io}"
[admin]
address = "127.0.0.1:0"
[listeners.l]
address = "127.0.0.1:0"
protocol = "{protocol}"
{target}
tls = {tls}
[[routes.main]]
match.path_prefix = "/"
cluster = "c"
[clusters.c]
endpoints = ["{up}"]
{cluster_keys}
"#,
        io = io_name(driver)
    );
    let path = dir.path("config.toml");
    std::fs::write(&path, config).unwrap();
    let snapshot = outrigger::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let options = Options {
        config_path: Some(path),
        watch: false,
    };
    let p = Proxy::launch(snapshot, options, None).unwrap();
    let addr = p.local_addr("l").unwrap();
    (p, addr)
}

pub fn failures(p: &Proxy, reason: &str) -> f64 {
    let (_, text) = admin::request(p.admin_addr(), "GET", "/metrics");
    admin::parse_prometheus(&text)
        .value(
            "outrigger_listener_tls_handshake_failures_total",
            &[("listener", "l"), ("reason", reason)],
        )
        .unwrap_or(0.0)
}
