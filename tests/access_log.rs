//! The access log says what happened, as docs/operations.md describes it:
//! the target with its query, `UR` for an upstream that closed mid-body,
//! and a line (flag `LR`) for each connection `max_connections` refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use common::admin::{self, TempDir};
use common::http::Client;
use common::*;
use outrigger::backends::{self, BackendKind, HttpBackend};
use outrigger::worker::Driver;

both_drivers!(access_log_fields_match_the_docs);

/// An upstream that promises 100 bytes, sends 3 and closes.
fn cut_short_upstream() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc");
        }
    });
    addr
}

fn access_log_fields_match_the_docs(driver: Driver) {
    let app = backends::start(
        BackendKind::Http(HttpBackend::named("app")),
        "127.0.0.1:0".parse().unwrap(),
        1,
        driver,
    )
    .unwrap();
    let echo_up = echo(driver);
    let dir = TempDir::new("access-log");
    let cfg = format!(
        r#"
[runtime]
workers = 1
io = "{io}"
[access_log]
path = "{log}"
format = "json"
flush_interval = "50ms"
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "r"
[listeners.tcp]
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "echo"
max_connections = 1
[clusters.echo]
endpoints = ["{echo}"]
[[routes.r]]
match.path = "/cut"
cluster = "cut"
[[routes.r]]
match.path_prefix = "/"
cluster = "app"
[clusters.app]
endpoints = ["{app}"]
[clusters.cut]
endpoints = ["{cut}"]
"#,
        io = io_name(driver),
        log = dir.path("access.log").display(),
        echo = echo_up.addr,
        app = app.addr,
        cut = cut_short_upstream(),
    );
    let server = start(&cfg);
    let web = server.local_addr("web").unwrap();
    let r = Client::connect(web).get("/q?a=1&b=2", "x", "");
    assert_eq!(r.status, 200);
    // The client sees the head and 3 bytes, then the close.
    let mut c = connect(web);
    c.write_all(b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = read_to_eof(&mut c).unwrap();
    assert!(
        got.ends_with(b"\r\n\r\nabc"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // The TCP listener takes one connection; the second is refused.
    let tcp = server.local_addr("tcp").unwrap();
    let mut first = connect(tcp);
    assert_eq!(round_trip(&mut first, b"hi"), b"hi");
    let mut second = connect(tcp);
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(read_to_eof(&mut second).unwrap(), b"");
    drop(first);

    let lines: Vec<serde_json::Value> = admin::read_log(&dir, 4)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let q = lines
        .iter()
        .find(|v| v["status"] == 200 && v["cluster"] == "app")
        .unwrap();
    assert_eq!(q["path"], "/q?a=1&b=2");
    let cut = lines.iter().find(|v| v["cluster"] == "cut").unwrap();
    assert_eq!(
        (&cut["status"], &cut["flags"]),
        (&200.into(), &"UR".into()),
        "{cut}"
    );
    let refused = lines
        .iter()
        .find(|v| v["flags"] == "LR")
        .expect("a line for the refused connection");
    assert_eq!(
        (
            &refused["listener"],
            &refused["protocol"],
            &refused["cluster"]
        ),
        (&"tcp".into(), &"TCP".into(), &"echo".into())
    );
    assert_eq!(
        (&refused["bytes_in"], &refused["bytes_out"]),
        (&0.into(), &0.into())
    );
    let served = lines
        .iter()
        .filter(|v| v["protocol"] == "TCP" && v["flags"] == "-")
        .count();
    assert_eq!(served, 1);
}
