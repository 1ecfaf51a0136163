//! `outrigger demo` starts, serves what it prints, and stops on SIGTERM,
//! on each I/O driver. The demo's ports are fixed, so the two drivers run
//! one after the other in one test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::Client;

#[test]
fn demo_serves_http_split_pin_direct_and_tcp_echo() {
    // The second round moves every port (--port-base, --admin).
    demo_on("io_uring", 10000, &[]);
    demo_on(
        "epoll",
        20000,
        &["--port-base", "20000", "--admin", "127.0.0.1:0"],
    );
}

/// A port of the demo in use: it fails before printing its banner (which
/// would promise what does not work), and says how to move it.
#[test]
fn demo_fails_before_its_banner_when_a_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // Base 22000 keeps every demo port (22000-22080, 31001-31082) below
    // the kernel's ephemeral range (32768-60999 by default), where another
    // test's client socket could hold one and fail the demo earlier, on
    // a port this test did not take (seen once with base 30000: 39002).
    let out = Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args(["demo", "--port-base", "22000", "--admin"])
        .arg(taken.local_addr().unwrap().to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot bind the admin API") && err.contains("--port-base"),
        "{err}"
    );
}

fn demo_on(io: &str, base: u16, extra: &[&str]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args(["demo", "--io", io])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut driver = None;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("workers started") {
                driver = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("driver="))
                    .map(str::to_string);
            }
            if line.contains("listener=web") {
                let _ = tx.send(driver.clone());
            }
        }
    });
    let driver = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("demo starts");
    assert_eq!(
        driver.as_deref(),
        Some(io),
        "the demo runs on the driver asked for"
    );
    let web = format!("127.0.0.1:{}", base + 80).parse().unwrap();
    let mut c = Client::connect(web);
    let r = c.get("/healthz", "demo", "");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
    let r = c.get("/", "demo", "x-version: 2\r\n");
    assert_eq!(r.body, b"v2");
    assert_eq!(r.header("x-route"), Some("pinned"));
    let v2 = (0..200)
        .filter(|_| c.get("/", "demo", "").body == b"v2")
        .count();
    assert!((5..=40).contains(&v2), "v2 got {v2} of 200");
    let mut t = common::connect(format!("127.0.0.1:{base}").parse().unwrap());
    assert_eq!(common::round_trip(&mut t, b"hello"), b"hello");
    drop(t);
    drop(c);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(
        out.contains(&format!(
            "curl -s -H 'x-version: 2' http://127.0.0.1:{}/",
            base + 80
        )),
        "{out}"
    );
}
