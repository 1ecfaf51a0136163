//! Overload protection (`runtime.max_heap_bytes`), in a test binary of its
//! own: the overload flag is process-wide (one proxy per process in
//! production), so it must not shed the scenarios of other tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::time::Duration;

use common::admin::{parse_prometheus, TempDir};
use common::http::Client;
use common::*;
use outrigger::control::{Options, Proxy};
use outrigger::worker::Driver;

fn config(limit: u64, driver: Driver) -> String {
    format!(
        r#"
[runtime]
workers = 1
io = "{io}"
max_heap_bytes = {limit}
[admin]
address = "127.0.0.1:0"
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "r"
[[routes.r]]
match.path_prefix = "/"
direct_response = {{ status = 200, body = "ok" }}
"#,
        io = io_name(driver)
    )
}

/// Over the limit the proxy closes new connections at accept and answers
/// 503 `overloaded` to a head still arriving; back under it, it serves
/// again. The limit follows reloads.
#[test]
fn overload_sheds_new_work_and_recovers() {
    // One driver after the other: the flag is process-wide.
    for driver in [Driver::IoUring, Driver::Epoll] {
        sheds_and_recovers(driver);
    }
}

fn sheds_and_recovers(driver: Driver) {
    let dir = TempDir::new("overload");
    let path = dir.path("config.toml");
    std::fs::write(&path, config(1 << 40, driver)).unwrap();
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
    assert_eq!(Client::connect(addr).get("/", "x", "").status, 200);
    // A client in the middle of its head.
    let mut slow = connect(addr);
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));

    // A limit the heap is always over.
    common::admin::write_atomic(&path, &config(1, driver));
    proxy.reload().unwrap();
    let metrics =
        || parse_prometheus(&common::admin::request(proxy.admin_addr(), "GET", "/metrics").1);
    assert!(eventually(|| metrics()
        .value("outrigger_overloaded", &[])
        .is_some_and(|v| v == 1.0)));
    // New connections are closed at accept.
    let mut c = connect(addr);
    let _ = c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
    assert_eq!(read_to_eof(&mut c).unwrap(), b"", "served while overloaded");
    assert!(
        metrics()
            .value(
                "outrigger_listener_connections_overload_rejected_total",
                &[("listener", "web")]
            )
            .unwrap_or(0.0)
            >= 1.0
    );
    // The head still arriving gets no more buffer.
    slow.write_all(b"x-more: 1\r\n").unwrap();
    let got = String::from_utf8(read_to_eof(&mut slow).unwrap()).unwrap();
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert!(got.contains("x-outrigger-error: overloaded"), "{got}");

    // Back under the limit: served again.
    common::admin::write_atomic(&path, &config(1 << 40, driver));
    proxy.reload().unwrap();
    assert!(eventually(|| {
        let mut c = connect(addr);
        let _ = c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        read_to_eof(&mut c).is_ok_and(|b| b.starts_with(b"HTTP/1.1 200"))
    }));
    let m = metrics();
    assert_eq!(m.value("outrigger_overloaded", &[]), Some(0.0));
    assert!(m.value("outrigger_heap_in_use_bytes", &[]).unwrap_or(0.0) > 0.0);
}
