//! Shared pieces of the HTTP/1.1 proxy tests (tests/http_proxy.rs,
//! tests/http_proxy_edges.rs): named upstreams and a proxy with one http
//! listener.

use std::net::SocketAddr;
use std::time::Duration;

use outrigger::backends::{self, Backend, BackendKind, HttpBackend};
use outrigger::worker::Driver;
use outrigger::Server;

use super::{io_name, start};

pub fn http_backend(driver: Driver, name: &str) -> Backend {
    backends::start(
        BackendKind::Http(HttpBackend::named(name)),
        "127.0.0.1:0".parse().unwrap(),
        1,
        driver,
    )
    .unwrap()
}

pub fn delayed_backend(driver: Driver, name: &str, delay: Duration) -> Backend {
    let mut cfg = HttpBackend::named(name);
    cfg.delay = delay;
    backends::start(
        BackendKind::Http(cfg),
        "127.0.0.1:0".parse().unwrap(),
        1,
        driver,
    )
    .unwrap()
}

/// A proxy with one http listener "web" using route table "main".
pub fn proxy(
    driver: Driver,
    listener_extra: &str,
    routes_and_clusters: &str,
) -> (Server, SocketAddr) {
    let cfg = format!(
        r#"
[runtime]
workers = 1
io = "{io}"

[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "main"
{listener_extra}

{routes_and_clusters}
"#,
        io = io_name(driver)
    );
    let server = start(&cfg);
    let addr = server.local_addr("web").unwrap();
    (server, addr)
}

pub fn cluster(name: &str, b: &Backend) -> String {
    format!("[clusters.{name}]\nendpoints = [\"{}\"]\n", b.addr)
}
