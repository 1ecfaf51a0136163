//! Transparent interception for real, in two network namespaces joined by
//! a veth pair: `outrigger iptables --apply` inside the app's namespace,
//! the proxy running as its own UID, outbound connections from the app to
//! the peer (IPv4 and IPv6) and inbound connections from the peer to the
//! app both pass through the proxy without either side knowing (the access
//! log proves it), the proxy's own connections do not loop, applying twice
//! leaves one set of rules, and `--cleanup` leaves the tables as they were.
//! Protocols are preserved through the `original_destination` cluster: a
//! gRPC app and an h2c client reach an HTTP/2-only server, HTTP/1.1 clients
//! an HTTP/1.1-only one, through the same outbound listener.
//!
//! Needs root, `ip`, `iptables`, `setpriv`, `curl`, `python3` and its
//! `grpc` module; skipped
//! with a message without them, required in CI (OUTRIGGER_REQUIRE_INTEROP).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::admin::TempDir;
use outrigger::worker::Driver;

const PROXY_UID: &str = "1337";

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap()
}

fn ok(args: &[&str]) {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn available() -> Result<(), String> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Err("not root".into());
    }
    for tool in [
        "ip",
        "iptables-restore",
        "ip6tables-restore",
        "setpriv",
        "curl",
        "python3",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!("{tool} not installed"));
        }
    }
    let grpc = Command::new("python3")
        .args(["-c", "import grpc"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !grpc {
        return Err("python3's grpc module not installed".into());
    }
    Ok(())
}

/// Two namespaces and their processes, removed on drop.
struct World {
    app: String,
    peer: String,
    children: Vec<Child>,
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = sh(&["ip", "netns", "del", &self.app]);
        let _ = sh(&["ip", "netns", "del", &self.peer]);
    }
}

impl World {
    fn new() -> World {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let id = (std::process::id() % 10_000) * 10 + n;
        let (app, peer) = (format!("orapp{id}"), format!("orpeer{id}"));
        let w = World {
            app: app.clone(),
            peer: peer.clone(),
            children: Vec::new(),
        };
        let (va, vp) = (format!("ora{id}"), format!("orp{id}"));
        // Two namespaces of this test share the peer addresses: each World
        // is its own pair of namespaces, so they do not meet.
        ok(&["ip", "netns", "add", &app]);
        ok(&["ip", "netns", "add", &peer]);
        ok(&[
            "ip", "link", "add", &va, "type", "veth", "peer", "name", &vp,
        ]);
        ok(&["ip", "link", "set", &va, "netns", &app]);
        ok(&["ip", "link", "set", &vp, "netns", &peer]);
        for (ns, dev, v4, v6) in [
            (&app, &va, "10.199.1.2/24", "fd00:199::2/64"),
            (&peer, &vp, "10.199.1.1/24", "fd00:199::1/64"),
        ] {
            ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            ok(&["ip", "-n", ns, "addr", "add", v4, "dev", dev]);
            ok(&["ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad"]);
            ok(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        w
    }

    fn spawn(&mut self, ns: &str, args: &[&str]) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        self.children.push(cmd.spawn().unwrap());
    }

    /// `curl` from a namespace; the body, or an error.
    fn curl(&self, ns: &str, url: &str) -> Result<String, String> {
        let out = sh(&[
            "ip", "netns", "exec", ns, "curl", "-sS", "-m", "5", "-g", url,
        ]);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    fn nat_rules(&self, ns: &str) -> String {
        let v4 = sh(&["ip", "netns", "exec", ns, "iptables-save", "-t", "nat"]);
        let v6 = sh(&["ip", "netns", "exec", ns, "ip6tables-save", "-t", "nat"]);
        // Comments and counters change between saves.
        [v4.stdout, v6.stdout]
            .iter()
            .flat_map(|o| {
                String::from_utf8_lossy(o)
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" [").next().unwrap_or("").to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn wait_port(w: &World, ns: &str, url: &str) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if w.curl(ns, url).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{url} never answered in {ns}");
}

both_drivers!(
    transparent_interception_in_namespaces,
    nftables_interception
);

fn transparent_interception_in_namespaces(driver: Driver) {
    if let Err(why) = available() {
        assert!(
            std::env::var_os("OUTRIGGER_REQUIRE_INTEROP").is_none(),
            "interception test required in CI but {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    let dir = TempDir::new("netns");
    // The proxy runs as PROXY_UID: it must read its config and write its log.
    ok(&["chmod", "0777", dir.0.to_str().unwrap()]);
    let log = dir.path("access.log");
    let config = format!(
        r#"
[runtime]
workers = 1
io = "{io}"
drain_timeout = "1s"
[admin]
address = "127.0.0.1:9901"
[access_log]
path = "{log}"
format = "json"
flush_interval = "100ms"
[listeners.outbound]
address = "[::]:15001"
protocol = "auto"
routes = "outbound"
cluster = "passthrough"
original_destination = true
[listeners.inbound]
address = "[::]:15006"
protocol = "auto"
routes = "inbound"
cluster = "passthrough"
original_destination = true
[[routes.outbound]]
name = "by-port"
match.destination_port = 9091
direct_response = {{ status = 200, body = "routed by destination port" }}
[[routes.outbound]]
match.path_prefix = "/"
cluster = "passthrough"
request_headers = {{ set = {{ "x-via-sidecar" = "outbound" }} }}
[[routes.inbound]]
match.path_prefix = "/"
cluster = "passthrough"
[clusters.passthrough]
discovery = "original_destination"
"#,
        log = log.display(),
        io = common::io_name(driver),
    );
    let cfg = dir.path("config.toml");
    std::fs::write(&cfg, config).unwrap();
    ok(&["chmod", "0644", cfg.to_str().unwrap()]);
    let mut w = World::new();
    let bin = env!("CARGO_BIN_EXE_outrigger");
    let (app, peer) = (w.app.clone(), w.peer.clone());
    // The peer's server and the app's server (python, dual-stack).
    w.spawn(
        &peer,
        &[
            "python3",
            "-m",
            "http.server",
            "9090",
            "--bind",
            "::",
            "--directory",
            "/",
        ],
    );
    w.spawn(
        &app,
        &[
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            "::",
            "--directory",
            "/",
        ],
    );
    // An HTTP/2-only server on the peer: gRPC (grpcio resets anything
    // that is not HTTP/2).
    let grpc_peer = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/grpc_peer.py");
    w.spawn(
        &peer,
        &["python3", grpc_peer, "server", "50051", "10.199.1.1"],
    );
    let before = w.nat_rules(&app);
    // Interception rules, applied twice (idempotent).
    for _ in 0..2 {
        ok(&[
            "ip",
            "netns",
            "exec",
            &app,
            bin,
            "iptables",
            "--apply",
            "--proxy-uid",
            PROXY_UID,
            "--exclude-inbound-ports",
            "15001,15006,9901",
        ]);
    }
    let rules = w.nat_rules(&app);
    assert_eq!(rules.matches("-j OUTRIGGER_OUTPUT").count(), 2, "{rules}");
    assert_eq!(rules.matches("--uid-owner 1337").count(), 2, "{rules}");
    // The proxy, as its own UID.
    w.spawn(
        &app,
        &[
            "setpriv",
            "--reuid",
            PROXY_UID,
            "--regid",
            PROXY_UID,
            "--clear-groups",
            bin,
            "run",
            "--no-watch",
            "-c",
            cfg.to_str().unwrap(),
        ],
    );
    let ready = Instant::now();
    while sh(&[
        "ip",
        "netns",
        "exec",
        &app,
        bin,
        "wait-ready",
        "--timeout",
        "200ms",
    ])
    .status
    .code()
        != Some(0)
    {
        assert!(
            ready.elapsed() < Duration::from_secs(10),
            "proxy never ready"
        );
    }
    wait_port(&w, &peer, "http://10.199.1.1:9090/");
    // Outbound, IPv4 and IPv6: the app calls the peer by its real address.
    assert!(w.curl(&app, "http://10.199.1.1:9090/").is_ok());
    assert!(w.curl(&app, "http://[fd00:199::1]:9090/").is_ok());
    // Routing on the original destination's port (nothing listens on 9091).
    assert_eq!(
        w.curl(&app, "http://10.199.1.1:9091/").unwrap(),
        "routed by destination port"
    );
    // Inbound: the peer calls the app.
    assert!(w.curl(&peer, "http://10.199.1.2:8080/").is_ok());
    // A plain TCP exchange (not HTTP) outbound: passed through untouched.
    let tcp = sh(&[
        "ip", "netns", "exec", &app, "python3", "-c",
        "import socket; s=socket.create_connection(('10.199.1.1',9090)); s.sendall(b'\\x00\\x01\\r\\n\\r\\n'); s.settimeout(5); print(len(s.recv(100)) > 0)",
    ]);
    assert!(
        String::from_utf8_lossy(&tcp.stdout).contains("True"),
        "{}",
        String::from_utf8_lossy(&tcp.stderr)
    );
    // Protocol preservation: a gRPC app (unary and server-streaming) and
    // an h2c client with prior knowledge reach the HTTP/2-only server.
    let grpc = sh(&[
        "ip",
        "netns",
        "exec",
        &app,
        "python3",
        grpc_peer,
        "calls",
        "10.199.1.1:50051",
    ]);
    let grpc_out = String::from_utf8_lossy(&grpc.stdout);
    assert!(grpc_out.contains("unary ok echo:hi"), "{grpc_out}");
    assert!(
        grpc_out.contains("stream ok part-0,part-1,part-2,part-3"),
        "{grpc_out}"
    );
    let h2c = sh(&[
        "ip",
        "netns",
        "exec",
        &app,
        "sh",
        "-c",
        "printf '\\000\\000\\000\\000\\002hi' | curl -sS -m 5 --http2-prior-knowledge \
         -H 'content-type: application/grpc' -H 'te: trailers' --data-binary @- \
         -o - -w ' %{http_version} %{http_code}' http://10.199.1.1:50051/test.Echo/Unary",
    ]);
    let h2c_out = String::from_utf8_lossy(&h2c.stdout);
    assert!(
        h2c_out.contains("echo:hi") && h2c_out.ends_with(" 2 200"),
        "{h2c_out:?} {}",
        String::from_utf8_lossy(&h2c.stderr)
    );
    // The access log proves each went through the proxy, exactly once.
    let t = Instant::now();
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if lines.len() >= 8 || t.elapsed() > Duration::from_secs(5) {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let by = |listener: &str, upstream: &str| {
        lines
            .iter()
            .filter(|l| {
                l["listener"] == listener
                    && l["upstream"].as_str().is_some_and(|u| u.contains(upstream))
            })
            .count()
    };
    assert_eq!(by("outbound", "10.199.1.1:9090"), 2, "{lines:?}");
    assert_eq!(by("outbound", "[fd00:199::1]:9090"), 1, "{lines:?}");
    assert_eq!(by("inbound", "10.199.1.2:8080"), 1, "{lines:?}");
    assert_eq!(lines.iter().filter(|l| l["route"] == "by-port").count(), 1);
    let grpc_lines: Vec<_> = lines
        .iter()
        .filter(|l| {
            l["upstream"]
                .as_str()
                .is_some_and(|u| u.contains("10.199.1.1:50051"))
        })
        .collect();
    assert_eq!(grpc_lines.len(), 3, "{lines:?}");
    for l in &grpc_lines {
        assert_eq!(
            (&l["status"], &l["protocol"]),
            (&200.into(), &"HTTP/2".into()),
            "{l}"
        );
    }
    assert_eq!(
        lines.len(),
        8,
        "a connection looped through the proxy: {lines:?}"
    );
    // Cleanup leaves the tables as they were.
    ok(&["ip", "netns", "exec", &app, bin, "iptables", "--cleanup"]);
    assert_eq!(w.nat_rules(&app), before);
}

/// The nftables form: the same interception, one table, removed cleanly.
fn nftables_interception(driver: Driver) {
    if let Err(why) = available().and_then(|_| {
        Command::new("nft")
            .arg("--version")
            .output()
            .map(drop)
            .map_err(|_| "nft not installed".to_string())
    }) {
        assert!(
            std::env::var_os("OUTRIGGER_REQUIRE_INTEROP").is_none(),
            "interception test required in CI but {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    let dir = TempDir::new("netns-nft");
    ok(&["chmod", "0777", dir.0.to_str().unwrap()]);
    let cfg = dir.path("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[runtime]\nworkers = 1\nio = \"{}\"\n[admin]\naddress = \"127.0.0.1:9901\"\n[listeners.outbound]\naddress = \"[::]:15001\"\nprotocol = \"tcp\"\ncluster = \"passthrough\"\noriginal_destination = true\n[clusters.passthrough]\ndiscovery = \"original_destination\"\n",
            common::io_name(driver)
        ),
    )
    .unwrap();
    ok(&["chmod", "0644", cfg.to_str().unwrap()]);
    let mut w = World::new();
    let bin = env!("CARGO_BIN_EXE_outrigger");
    let (app, peer) = (w.app.clone(), w.peer.clone());
    w.spawn(
        &peer,
        &[
            "python3",
            "-m",
            "http.server",
            "9090",
            "--bind",
            "::",
            "--directory",
            "/",
        ],
    );
    for _ in 0..2 {
        ok(&[
            "ip",
            "netns",
            "exec",
            &app,
            bin,
            "iptables",
            "--apply",
            "--nft",
            "--proxy-uid",
            PROXY_UID,
        ]);
    }
    let tables = sh(&["ip", "netns", "exec", &app, "nft", "list", "tables"]);
    assert_eq!(
        String::from_utf8_lossy(&tables.stdout)
            .matches("inet outrigger")
            .count(),
        1
    );
    w.spawn(
        &app,
        &[
            "setpriv",
            "--reuid",
            PROXY_UID,
            "--regid",
            PROXY_UID,
            "--clear-groups",
            bin,
            "run",
            "--no-watch",
            "-c",
            cfg.to_str().unwrap(),
        ],
    );
    let ready = Instant::now();
    while sh(&[
        "ip",
        "netns",
        "exec",
        &app,
        bin,
        "wait-ready",
        "--timeout",
        "200ms",
    ])
    .status
    .code()
        != Some(0)
    {
        assert!(
            ready.elapsed() < Duration::from_secs(10),
            "proxy never ready"
        );
    }
    wait_port(&w, &peer, "http://10.199.1.1:9090/");
    assert!(w.curl(&app, "http://10.199.1.1:9090/").is_ok());
    // The proxy saw it: one connection through its listener.
    let metrics = sh(&[
        "ip",
        "netns",
        "exec",
        &app,
        "curl",
        "-s",
        "http://127.0.0.1:9901/metrics",
    ]);
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        text.contains("outrigger_listener_connections_total{listener=\"outbound\"} 1"),
        "{text}"
    );
    ok(&[
        "ip",
        "netns",
        "exec",
        &app,
        bin,
        "iptables",
        "--cleanup",
        "--nft",
    ]);
    let tables = sh(&["ip", "netns", "exec", &app, "nft", "list", "tables"]);
    assert!(!String::from_utf8_lossy(&tables.stdout).contains("outrigger"));
}
