//! Shared helpers for the end-to-end tests: start the proxy through the
//! library entry point on 127.0.0.1:0 in front of real upstreams.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod admin;
pub mod h2env;
pub mod h2raw;
pub mod http;
pub mod httpenv;
pub mod process;
pub mod script;
pub mod tls;
pub mod tlsenv;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use outrigger::backends::{self, Backend, BackendKind};
use outrigger::worker::Driver;
use outrigger::Server;

/// Generates one `#[test]` per I/O driver for a function taking `Driver`.
#[macro_export]
macro_rules! both_drivers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn io_uring() {
                super::$name(outrigger::worker::Driver::IoUring)
            }
            #[test]
            fn epoll() {
                super::$name(outrigger::worker::Driver::Epoll)
            }
        }
    )*};
}

pub fn io_name(driver: Driver) -> &'static str {
    match driver {
        Driver::IoUring => "io_uring",
        Driver::Epoll => "epoll",
    }
}

/// Start the proxy from config text.
pub fn start(config: &str) -> Server {
    let snapshot = outrigger::config::compile(Path::new("<test>"), config)
        .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{config}"));
    outrigger::start(snapshot).expect("proxy starts")
}

/// A TCP config with one listener `l` on port 0 in front of `endpoints`.
pub fn tcp_config(
    driver: Driver,
    workers: usize,
    endpoints: &[String],
    listener_extra: &str,
    cluster_extra: &str,
) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        r#"
[runtime]
workers = {workers}
io = "{io}"
drain_timeout = "2s"

[listeners.l]
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "c"
{listener_extra}

[clusters.c]
endpoints = [{eps}]
{cluster_extra}
"#,
        io = io_name(driver),
        eps = eps.join(", ")
    )
}

pub fn echo(driver: Driver) -> Backend {
    backends::start(BackendKind::Echo, "127.0.0.1:0".parse().unwrap(), 1, driver).unwrap()
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Send `msg`, read the same number of bytes back.
pub fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).unwrap();
    got
}

/// Read until EOF; `Err` if the read timed out (the peer never closed).
pub fn read_to_eof(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    match s.read_to_end(&mut v) {
        Ok(_) => Ok(v),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(v),
        Err(e) => Err(e),
    }
}

/// A port on 127.0.0.1 where nothing listens (connects are refused).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// Poll `cond` for up to 5 s (counters are updated when a connection's task
/// ends, a moment after the client sees the close).
pub fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}
