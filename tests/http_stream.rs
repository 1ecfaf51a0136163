//! 1 GiB bodies through the HTTP proxy in both directions with flat memory.
//! Its own test binary, so that the process's peak RSS belongs to it alone;
//! the peak is reset before each driver's pass, so each pass is measured.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::http::Client;
use common::*;
use outrigger::backends::{self, BackendKind, HttpBackend};
use outrigger::worker::Driver;

const GIB: u64 = 1 << 30;

/// Reset the process's peak RSS (VmHWM) to its current RSS, so that each
/// pass measures its own peak (Linux >= 4.0, `clear_refs` value 5).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5")
        .expect("reset VmHWM through /proc/self/clear_refs");
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn one_gib_each_way_with_flat_memory() {
    for driver in [Driver::IoUring, Driver::Epoll] {
        let up = backends::start(
            BackendKind::Http(HttpBackend::named("big")),
            "127.0.0.1:0".parse().unwrap(),
            1,
            driver,
        )
        .unwrap();
        let cfg = format!(
            "[runtime]\nworkers = 1\nio = \"{}\"\n[listeners.web]\naddress = \"127.0.0.1:0\"\nprotocol = \"http\"\nroutes = \"main\"\n[[routes.main]]\nmatch.path_prefix = \"/\"\ncluster = \"big\"\n[clusters.big]\nendpoints = [\"{}\"]\n",
            io_name(driver),
            up.addr
        );
        let server = start(&cfg);
        let addr = server.local_addr("web").unwrap();
        reset_peak_rss();
        let before = peak_rss_kib();

        // Upload: 1 GiB request body, streamed.
        let mut c = Client::connect(addr);
        c.stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        c.send(
            format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {GIB}\r\n\r\n").as_bytes(),
        );
        let chunk = vec![b'u'; 256 * 1024];
        let mut sent = 0u64;
        while sent < GIB {
            c.stream.write_all(&chunk).unwrap();
            sent += chunk.len() as u64;
        }
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-body-bytes"), Some(GIB.to_string().as_str()));

        // Download: 1 GiB response body, read as it streams.
        c.send(format!("GET /bytes/{GIB} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            c.stream.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-length: {GIB}")),
            "{head}"
        );
        let mut got = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        while got < GIB {
            let n = c.stream.read(&mut buf).unwrap();
            assert!(n > 0, "closed after {got} bytes");
            got += n as u64;
        }
        assert_eq!(got, GIB);
        let grown = peak_rss_kib().saturating_sub(before);
        // Proxy, upstream and client together: a few MiB of buffers, not the body.
        assert!(
            grown < 64 * 1024,
            "peak RSS grew by {grown} KiB moving 2 GiB ({driver:?})"
        );
        drop(c);
        assert!(server.shutdown(Duration::from_secs(5)));
    }
}
