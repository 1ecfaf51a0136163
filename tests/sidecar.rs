//! Sidecar mode: protocol detection on `auto` listeners (both I/O drivers,
//! no privileges needed), the `iptables` subcommand's output, and
//! `run -- APP` / `wait-ready`. Interception in network namespaces is in
//! tests/sidecar_netns.rs.

// Test peers run on plain threads, outside the data path: a Mutex is fine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::admin::TempDir;
use common::tls::{connect, Ca, ClientOpts};
use common::*;
use outrigger::control::{Options, Proxy};
use outrigger::worker::Driver;

both_drivers!(detection_sends_each_protocol_its_way);

/// An upstream that greets first ("220 hello") and then echoes.
fn greeter() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let _ = s.write_all(b"220 hello\r\n");
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn detection_sends_each_protocol_its_way(driver: Driver) {
    let dir = TempDir::new("detect");
    let ca = Ca::new("test CA");
    ca.leaf(&["localhost"]).write(&dir.0, "server");
    let up = greeter();
    let config = format!(
        r#"
[runtime]
workers = 1
io = "{io}"
[admin]
address = "127.0.0.1:0"
[listeners.l]
address = "127.0.0.1:0"
protocol = "auto"
routes = "main"
cluster = "raw"
detect_timeout = "200ms"
# Every protocol's path is under test here, plaintext ones included: the
# explicit opt-in (tests/security.rs holds the default, refuse).
tls = {{ cert = "server.pem", key = "server.key", plaintext = "permit" }}
[[routes.main]]
match.path_prefix = "/"
direct_response = {{ status = 200, body = "http" }}
[clusters.raw]
endpoints = ["{up}"]
"#,
        io = io_name(driver)
    );
    let path = dir.path("config.toml");
    std::fs::write(&path, config).unwrap();
    let snapshot = outrigger::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let p = Proxy::launch(
        snapshot,
        Options {
            config_path: Some(path),
            watch: false,
        },
        None,
    )
    .unwrap();
    let addr = p.local_addr("l").unwrap();
    // HTTP/1.1: the routes.
    let r = common::http::Client::connect(addr).get("/", "x", "");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"http"[..]));
    // TLS: terminated, then HTTP.
    let mut t = connect(addr, "localhost", &ClientOpts::trusting(&ca)).unwrap();
    let (status, _, body) = common::tls::request(&mut t, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.as_slice()), (200, &b"http"[..]));
    // Opaque bytes: the cluster, with those bytes first.
    let mut o = connect_raw(addr);
    o.write_all(b"\x00\x01binary").unwrap();
    assert_eq!(read_n(&mut o, 11 + 8), b"220 hello\r\n\x00\x01binary");
    // Server speaks first: the client waits; after detect_timeout the
    // connection is opaque TCP and the greeting arrives.
    let mut s = connect_raw(addr);
    let t0 = Instant::now();
    assert_eq!(read_n(&mut s, 11), b"220 hello\r\n");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    // The HTTP/2 preface goes to the HTTP path, which answers with its
    // SETTINGS frame (type 4 on stream 0), not to the cluster.
    let mut h = connect_raw(addr);
    h.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    let got = read_some(&mut h);
    assert!(
        got.len() >= 9 && got[3] == 4 && got[5..9] == [0, 0, 0, 0],
        "{got:?}"
    );
    let (_, text) = admin::request(p.admin_addr(), "GET", "/metrics");
    let m = admin::parse_prometheus(&text);
    let n = |proto: &str| {
        m.value(
            "outrigger_listener_detected_total",
            &[("listener", "l"), ("protocol", proto)],
        )
        .unwrap()
    };
    assert_eq!(
        (n("http1"), n("tls"), n("opaque"), n("silent"), n("http2")),
        (1.0, 1.0, 1.0, 1.0, 1.0)
    );
}

fn connect_raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).unwrap();
    v
}

fn read_some(s: &mut TcpStream) -> Vec<u8> {
    let mut v = vec![0u8; 4096];
    let n = s.read(&mut v).unwrap();
    v.truncate(n);
    v
}

/// `outrigger iptables` prints both families, the UID and loopback
/// exclusions, and an nftables form.
#[test]
fn iptables_prints_rules() {
    let out = Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args([
            "iptables",
            "--proxy-uid",
            "1500",
            "--exclude-outbound-cidrs",
            "10.96.0.0/12",
            "--include-inbound-ports",
            "8080",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("-A OUTRIGGER_OUTPUT -m owner --uid-owner 1500 -j RETURN"),
        "{text}"
    );
    assert!(text.contains("-A OUTRIGGER_OUTPUT -d 127.0.0.0/8 -j RETURN"));
    assert!(text.contains("-A OUTRIGGER_OUTPUT -d ::1/128 -j RETURN"));
    assert!(text.contains("-A OUTRIGGER_INBOUND -p tcp --dport 8080 -j REDIRECT --to-ports 15006"));
    let nft = Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args(["iptables", "--nft"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&nft.stdout).contains("meta skuid 1337 return"));
    let bad = Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args(["iptables", "--exclude-outbound-cidrs", "10.0.0.0/40"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

both_drivers!(
    run_app_under_the_proxy,
    drain_keeps_inbound_open_then_exits_when_idle
);

/// `run -c FILE -- APP`: the app starts once the proxy serves (it can
/// reach the listener at once), SIGTERM reaches the app, and the process
/// exits with the app's status after draining.
fn run_app_under_the_proxy(driver: Driver) {
    let dir = TempDir::new("run-app");
    let port = closed_port().port();
    let admin_port = closed_port().port();
    std::fs::write(
        dir.path("config.toml"),
        format!(
            "[admin]\naddress = \"127.0.0.1:{admin_port}\"\n[runtime]\nworkers = 1\nio = \"{io}\"\n[listeners.l]\naddress = \"127.0.0.1:{port}\"\nprotocol = \"http\"\nroutes = \"r\"\n[[routes.r]]\nmatch.path_prefix = \"/\"\ndirect_response = {{ status = 200, body = \"ok\" }}\n",
            io = io_name(driver)
        ),
    )
    .unwrap();
    // The app: one request through the proxy (must work at once), then
    // exit 7.
    let app = format!(
        "import socket,sys\ns=socket.create_connection(('127.0.0.1',{port}))\ns.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\nsys.exit(7 if s.recv(100).startswith(b'HTTP/1.1 200') else 3)"
    );
    // (The config file as `run FILE`, the form `check` takes too.)
    let out = Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args(["run", "--no-watch"])
        .arg(dir.path("config.toml"))
        .args(["--", "python3", "-c", &app])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    // The drain names its real trigger.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("trigger=\"app exited\""), "{log}");
    // SIGTERM goes to the app: a shell that traps it and exits 42.
    let mut child = Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args(["run", "--no-watch", "-c"])
        .arg(dir.path("config.toml"))
        .args([
            "--",
            "sh",
            "-c",
            "trap 'exit 42' TERM; while true; do sleep 0.05; done",
        ])
        .spawn()
        .unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    assert!(outrigger::sidecar::lifecycle::wait_ready(
        admin,
        Duration::from_secs(10)
    ));
    // wait-ready, the subcommand, agrees.
    let ready = Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args([
            "wait-ready",
            "--admin",
            &admin.to_string(),
            "--timeout",
            "5s",
        ])
        .status()
        .unwrap();
    assert!(ready.success());
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(42));
    // Nothing listens any more: wait-ready times out with status 1.
    let t = Instant::now();
    let not_ready = Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args([
            "wait-ready",
            "--admin",
            &admin.to_string(),
            "--timeout",
            "300ms",
        ])
        .status()
        .unwrap();
    assert_eq!(not_ready.code(), Some(1));
    assert!(t.elapsed() < Duration::from_secs(3));
}

/// `drain_inbound_delay`: on drain, outbound listeners stop at once, the
/// inbound one keeps accepting for the delay; the proxy exits as soon as
/// it is idle after that. With `exit_when_idle = false` it waits out
/// `drain_timeout`.
fn drain_keeps_inbound_open_then_exits_when_idle(driver: Driver) {
    let dir = TempDir::new("drain-inbound");
    let text = &format!(
        r#"
[runtime]
workers = 1
io = "{io}"
drain_timeout = "5s"
drain_inbound_delay = "600ms"
[admin]
address = "127.0.0.1:0"
[listeners.in]
address = "127.0.0.1:0"
protocol = "http"
routes = "r"
inbound = true
[listeners.out]
address = "127.0.0.1:0"
protocol = "http"
routes = "r"
[[routes.r]]
match.path_prefix = "/"
direct_response = {{ status = 200, body = "ok" }}
"#,
        io = io_name(driver)
    );
    let p = common::admin::launch(&dir, text);
    let (inb, out, adm) = (
        p.local_addr("in").unwrap(),
        p.local_addr("out").unwrap(),
        p.admin_addr(),
    );
    let (status, _) = admin::request(adm, "POST", "/drain");
    assert_eq!(status, 202);
    let t = Instant::now();
    assert!(eventually(|| TcpStream::connect(out).is_err()));
    assert_eq!(admin::request(adm, "GET", "/ready").0, 503);
    // Inbound still serves during the delay.
    let r = common::http::Client::connect(inb).get("/", "x", "");
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < Duration::from_millis(600));
    let waited = Instant::now();
    assert_eq!(p.wait(), 0);
    let total = waited.elapsed();
    assert!(
        total < Duration::from_secs(3),
        "exited after {total:?}, not when idle"
    );

    // exit_when_idle = false: the drain timeout is waited out, unless
    // POST /drain?exit_when_idle=1 says otherwise.
    let dir2 = TempDir::new("drain-wait");
    let text2 = text
        .replace(
            "drain_inbound_delay = \"600ms\"",
            "drain_inbound_delay = \"0s\"\ndrain = { exit_when_idle = false }",
        )
        .replace("drain_timeout = \"5s\"", "drain_timeout = \"1500ms\"");
    let p2 = common::admin::launch(&dir2, &text2);
    admin::request(p2.admin_addr(), "POST", "/drain");
    let t = Instant::now();
    assert_eq!(p2.wait(), 0);
    assert!(
        t.elapsed() >= Duration::from_millis(1300),
        "{:?}",
        t.elapsed()
    );
    let dir3 = TempDir::new("drain-idle");
    let p3 = common::admin::launch(&dir3, &text2);
    admin::request(p3.admin_addr(), "POST", "/drain?exit_when_idle=1");
    let t = Instant::now();
    assert_eq!(p3.wait(), 0);
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
}
