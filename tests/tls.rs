//! TLS termination end to end on both I/O drivers, with certificates made
//! here (rcgen) and clients nobody here wrote (rustls's own blocking
//! client, curl, openssl s_client): HTTP over TLS, SNI certificates,
//! client certificates, versions, ALPN, TCP over TLS, and bad handshakes.

// Test peers run on plain threads, outside the data path: a Mutex is fine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::admin::TempDir;
use common::script::{read_request, scripted};
use common::tls::{connect, request, Ca, ClientOpts};
use common::*;
use outrigger::control::{Options, Proxy};
use outrigger::worker::Driver;

both_drivers!(
    https_keep_alive_and_large_bodies,
    sni_picks_the_certificate,
    client_certificates_are_required_and_verified,
    min_version_and_alpn,
    tcp_over_tls_relays_plaintext,
    bad_handshakes_are_cut_and_counted,
    curl_and_openssl_interoperate,
    reload_rotates_the_certificate,
    sni_routes_pass_tls_through,
    tls_origination,
    tls_cluster_health_checks,
    watched_files_rotate,
);

/// An upstream that answers each request with a body saying what it saw:
/// `proto=<x-forwarded-proto> body=<length>`, padded to `?size=N` bytes.
fn upstream() -> SocketAddr {
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
fn proxy(
    driver: Driver,
    dir: &TempDir,
    protocol: &str,
    tls: &str,
    up: SocketAddr,
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

fn failures(p: &Proxy, reason: &str) -> f64 {
    let (_, text) = admin::request(p.admin_addr(), "GET", "/metrics");
    admin::parse_prometheus(&text)
        .value(
            "outrigger_listener_tls_handshake_failures_total",
            &[("listener", "l"), ("reason", reason)],
        )
        .unwrap_or(0.0)
}

/// Several requests on one TLS connection, a 1 MiB request body and a
/// 1 MiB response (more than rustls takes or gives in one call), and
/// `x-forwarded-proto: https` upstream; the connection parked while idle
/// resumes with its session.
fn https_keep_alive_and_large_bodies(driver: Driver) {
    let dir = TempDir::new("tls-basic");
    let ca = Ca::new("test CA");
    let leaf = ca.leaf(&["localhost"]);
    leaf.write(&dir.0, "server");
    let (_p, addr) = proxy(
        driver,
        &dir,
        "http",
        r#"{ cert = "server.pem", key = "server.key" }"#,
        upstream(),
    );
    let mut c = connect(addr, "localhost", &ClientOpts::trusting(&ca)).unwrap();
    for _ in 0..3 {
        let (status, _, body) = request(&mut c, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert_eq!(status, 200);
        assert_eq!(body, b"proto=https body=0");
    }
    let big = vec![b'x'; 1 << 20];
    let mut raw = format!(
        "POST /?size={} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        1 << 20,
        big.len()
    )
    .into_bytes();
    raw.extend_from_slice(&big);
    let (status, _, body) = request(&mut c, &raw);
    assert_eq!(status, 200);
    assert_eq!(body.len(), 1 << 20);
    assert!(body.starts_with(b"proto=https body=1048576"));
    let (status, _, _) = request(&mut c, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status, 200);
    // Idle past the warm window: parked with its TLS session, then resumed.
    for _ in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(450));
        let (status, _, body) = request(&mut c, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert_eq!(status, 200);
        assert_eq!(body, b"proto=https body=0");
    }
}

/// `tls.certificates` by SNI: exact name, wildcard (one label), and the
/// default certificate for other names.
fn sni_picks_the_certificate(driver: Driver) {
    let dir = TempDir::new("tls-sni");
    let ca = Ca::new("test CA");
    let (d, a, b) = (
        ca.leaf(&["default.test"]),
        ca.leaf(&["a.example.com"]),
        ca.leaf(&["*.b.example.com"]),
    );
    d.write(&dir.0, "d");
    a.write(&dir.0, "a");
    b.write(&dir.0, "b");
    let tls = r#"{ cert = "d.pem", key = "d.key", certificates = [{ server_names = ["a.example.com"], cert = "a.pem", key = "a.key" }, { server_names = ["*.b.example.com"], cert = "b.pem", key = "b.key" }] }"#;
    let (_p, addr) = proxy(driver, &dir, "http", tls, upstream());
    let served = |sni: &str| {
        let c = connect(
            addr,
            sni,
            &ClientOpts {
                svid_server: false,
                roots: ca.roots(),
                client: None,
                tls12_only: false,
                alpn: vec![],
            },
        );
        c.map(|c| c.conn.peer_certificates().unwrap()[0].clone())
    };
    assert_eq!(served("a.example.com").unwrap(), a.der);
    assert_eq!(served("x.b.example.com").unwrap(), b.der);
    assert_eq!(served("default.test").unwrap(), d.der);
    // Another name gets the default certificate, which does not cover it:
    // the client refuses it.
    assert!(served("other.test").is_err());
}

/// `client_ca`: no certificate, one from another CA, and a good one.
fn client_certificates_are_required_and_verified(driver: Driver) {
    let dir = TempDir::new("tls-mtls");
    let ca = Ca::new("server CA");
    let clients = Ca::new("client CA");
    let other = Ca::new("other CA");
    ca.leaf(&["localhost"]).write(&dir.0, "server");
    std::fs::write(dir.path("clients.pem"), clients.pem()).unwrap();
    let tls = r#"{ cert = "server.pem", key = "server.key", client_ca = "clients.pem" }"#;
    let (p, addr) = proxy(driver, &dir, "http", tls, upstream());
    let try_with = |leaf: Option<&common::tls::Leaf>| {
        let opts = ClientOpts {
            svid_server: false,
            roots: ca.roots(),
            client: leaf,
            tls12_only: false,
            alpn: vec![],
        };
        // TLS 1.3: the server's verdict on the client certificate arrives
        // after the client's handshake ends; a request surfaces it.
        let mut c = connect(addr, "localhost", &opts)?;
        c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf)?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).to_string())
    };
    assert!(try_with(None).is_err());
    let stranger = other.leaf(&["client"]);
    assert!(try_with(Some(&stranger)).is_err());
    let good = clients.leaf(&["client"]);
    assert!(try_with(Some(&good)).unwrap().starts_with("HTTP/1.1 200"));
    assert!(eventually(|| failures(&p, "no_client_certificate") == 1.0));
    assert!(eventually(|| failures(&p, "bad_client_certificate") == 1.0));
}

/// `min_version = "1.3"` refuses a TLS 1.2 client; ALPN offers http/1.1
/// on http listeners by default.
fn min_version_and_alpn(driver: Driver) {
    let dir = TempDir::new("tls-version");
    let ca = Ca::new("test CA");
    ca.leaf(&["localhost"]).write(&dir.0, "server");
    let (p, addr) = proxy(
        driver,
        &dir,
        "http",
        r#"{ cert = "server.pem", key = "server.key", min_version = "1.3" }"#,
        upstream(),
    );
    let old = ClientOpts {
        svid_server: false,
        roots: ca.roots(),
        client: None,
        tls12_only: true,
        alpn: vec![],
    };
    assert!(connect(addr, "localhost", &old).is_err());
    assert!(eventually(|| failures(&p, "incompatible") == 1.0));
    let h = ClientOpts {
        svid_server: false,
        roots: ca.roots(),
        client: None,
        tls12_only: false,
        alpn: vec!["h2", "http/1.1"],
    };
    // HTTP/2 is on by default: `h2` is offered first.
    let c = connect(addr, "localhost", &h).unwrap();
    assert_eq!(c.conn.alpn_protocol(), Some(&b"h2"[..]));
    let h1 = ClientOpts {
        alpn: vec!["http/1.1"],
        ..ClientOpts::trusting(&ca)
    };
    let c1 = connect(addr, "localhost", &h1).unwrap();
    assert_eq!(c1.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(
        c.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

/// A tcp listener with `tls`: plaintext to the upstream, both ways, and
/// the client's close ends the relay.
fn tcp_over_tls_relays_plaintext(driver: Driver) {
    let dir = TempDir::new("tls-tcp");
    let ca = Ca::new("test CA");
    ca.leaf(&["localhost"]).write(&dir.0, "server");
    let echo = echo(driver);
    let (_p, addr) = proxy(
        driver,
        &dir,
        "tcp",
        r#"{ cert = "server.pem", key = "server.key" }"#,
        echo.addr,
    );
    let mut c = connect(addr, "localhost", &ClientOpts::trusting(&ca)).unwrap();
    let msg: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let msg = msg.clone();
        // Write and read at once: the echo sends back while we send.
        let mut got = Vec::new();
        c.write_all(&msg[..1000]).unwrap();
        let mut buf = [0u8; 1000];
        c.read_exact(&mut buf).unwrap();
        got.extend_from_slice(&buf);
        c.write_all(&msg[1000..]).unwrap();
        c.conn.send_close_notify();
        c.flush().unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        got.extend_from_slice(&rest);
        got
    };
    assert_eq!(writer.len(), msg.len());
    assert!(writer == msg);
}

/// A client that never finishes its handshake is cut at
/// `handshake_timeout`; garbage instead of a ClientHello is closed at once;
/// a ClientHello split into one-byte writes still works.
fn bad_handshakes_are_cut_and_counted(driver: Driver) {
    let dir = TempDir::new("tls-bad");
    let ca = Ca::new("test CA");
    ca.leaf(&["localhost"]).write(&dir.0, "server");
    let (p, addr) = proxy(
        driver,
        &dir,
        "http",
        r#"{ cert = "server.pem", key = "server.key", handshake_timeout = "300ms" }"#,
        upstream(),
    );
    // Stalls: connects, sends nothing.
    let mut stall = std::net::TcpStream::connect(addr).unwrap();
    stall
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(stall.read(&mut buf).unwrap_or(0), 0);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(eventually(|| failures(&p, "timeout") == 1.0));
    // Garbage: an HTTP request on the TLS port.
    let mut g = std::net::TcpStream::connect(addr).unwrap();
    g.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    g.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = g.read_to_end(&mut out);
    assert!(!String::from_utf8_lossy(&out).contains("200"));
    assert!(eventually(|| failures(&p, "protocol") == 1.0));
    // A ClientHello dribbled one byte at a time.
    let opts = ClientOpts::trusting(&ca);
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut conn =
        rustls::ClientConnection::new(opts.config(), "localhost".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let mut tcp2 = tcp.try_clone().unwrap();
    for b in &hello {
        tcp2.write_all(std::slice::from_ref(b)).unwrap();
    }
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    let (status, _, _) = request(&mut s, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status, 200);
}

/// curl (with --cacert) and openssl s_client against the listener, when
/// installed (required in CI).
fn curl_and_openssl_interoperate(driver: Driver) {
    let required = std::env::var_os("OUTRIGGER_REQUIRE_INTEROP").is_some();
    let have = |bin: &str| {
        std::process::Command::new(bin)
            .arg("--version")
            .output()
            .is_ok()
            || std::process::Command::new(bin)
                .arg("version")
                .output()
                .is_ok()
    };
    if !have("curl") || !have("openssl") {
        assert!(
            !required,
            "curl and openssl are required (OUTRIGGER_REQUIRE_INTEROP)"
        );
        return;
    }
    let dir = TempDir::new("tls-interop");
    let ca = Ca::new("test CA");
    ca.leaf(&["localhost"]).write(&dir.0, "server");
    std::fs::write(dir.path("ca.pem"), ca.pem()).unwrap();
    let (_p, addr) = proxy(
        driver,
        &dir,
        "http",
        r#"{ cert = "server.pem", key = "server.key" }"#,
        upstream(),
    );
    let port = addr.port();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(dir.path("ca.pem"))
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "proto=https body=0",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for version in ["-tls1_2", "-tls1_3"] {
        let mut child = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-servername",
                "localhost",
                version,
                "-CAfile",
            ])
            .arg(dir.path("ca.pem"))
            .args(["-verify_return_error", "-quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "{version}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A key that is not the certificate's is refused with the file names
/// (check, start-up and reload all compile the same way).
#[test]
fn mismatched_key_is_a_config_error() {
    let dir = TempDir::new("tls-mismatch");
    let ca = Ca::new("test CA");
    let (a, b) = (ca.leaf(&["a"]), ca.leaf(&["b"]));
    std::fs::write(dir.path("a.pem"), &a.cert_pem).unwrap();
    std::fs::write(dir.path("b.key"), &b.key_pem).unwrap();
    let path = dir.path("config.toml");
    std::fs::write(
        &path,
        "[listeners.l]\naddress = \"127.0.0.1:0\"\nprotocol = \"tcp\"\ncluster = \"c\"\ntls = { cert = \"a.pem\", key = \"b.key\" }\n[clusters.c]\nendpoints = [\"127.0.0.1:1\"]\n",
    )
    .unwrap();
    let err = outrigger::config::load(&path).unwrap_err().to_string();
    assert!(err.contains("5:16: listeners.l.tls:"), "{err}");
    assert!(
        err.contains("a.pem and") && err.contains("b.key do not make a usable pair"),
        "{err}"
    );
}

/// Certificate files replaced, then `POST /reload`: new handshakes get the
/// new certificate, a connection opened before keeps working.
fn reload_rotates_the_certificate(driver: Driver) {
    let dir = TempDir::new("tls-rotate");
    let ca = Ca::new("test CA");
    let (first, second) = (ca.leaf(&["localhost"]), ca.leaf(&["localhost"]));
    first.write(&dir.0, "server");
    let (p, addr) = proxy(
        driver,
        &dir,
        "http",
        r#"{ cert = "server.pem", key = "server.key" }"#,
        upstream(),
    );
    let opts = ClientOpts::trusting(&ca);
    let mut old = connect(addr, "localhost", &opts).unwrap();
    assert_eq!(old.conn.peer_certificates().unwrap()[0], first.der);
    second.write(&dir.0, "server");
    let (status, body) = admin::request(p.admin_addr(), "POST", "/reload");
    assert_eq!(status, 200, "{body}");
    let new = connect(addr, "localhost", &opts).unwrap();
    assert_eq!(new.conn.peer_certificates().unwrap()[0], second.der);
    let (status, _, _) = request(&mut old, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status, 200);
}

/// A TLS server on a thread (rustls, blocking) that answers each
/// connection's first line with `TAG:line`.
fn tls_backend(tag: &'static str, leaf: &common::tls::Leaf) -> SocketAddr {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der.clone()],
            rustls::pki_types::PrivateKeyDer::try_from(leaf.key_der.clone()).unwrap(),
        )
        .unwrap();
    let config = std::sync::Arc::new(config);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let config = config.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, s);
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while tls.read(&mut b).is_ok_and(|n| n == 1) && b[0] != b'\n' {
                    line.push(b[0]);
                }
                let _ = writeln!(tls, "{tag}:{}", String::from_utf8_lossy(&line));
                let _ = tls.flush();
            });
        }
    });
    addr
}

/// `sni_routes`: each name reaches its cluster with the TLS bytes
/// untouched (the client completes a handshake with the backend itself);
/// no SNI goes to the default cluster.
fn sni_routes_pass_tls_through(driver: Driver) {
    let ca = Ca::new("test CA");
    let a = tls_backend("A", &ca.leaf(&["a.example.com"]));
    let b = tls_backend("B", &ca.leaf(&["x.b.example.com", "127.0.0.1"]));
    let config = format!(
        r#"
[runtime]
workers = 1
io = "{io}"
[listeners.l]
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "b"
sni_routes = [{{ server_names = ["a.example.com"], cluster = "a" }}, {{ server_names = ["*.b.example.com"], cluster = "b" }}]
[clusters.a]
endpoints = ["{a}"]
[clusters.b]
endpoints = ["{b}"]
"#,
        io = io_name(driver)
    );
    let s = start(&config);
    let addr = s.local_addr("l").unwrap();
    let ask = |sni: &str| {
        let mut c = connect(addr, sni, &ClientOpts::trusting(&ca)).unwrap();
        c.write_all(b"hello\n").unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    };
    assert_eq!(ask("a.example.com"), "A:hello\n");
    assert_eq!(ask("x.b.example.com"), "B:hello\n");
    // No SNI (an IP): the listener's cluster.
    assert_eq!(ask("127.0.0.1"), "B:hello\n");
    // Without a default cluster: a client with an unknown name, and one
    // that does not speak TLS, are closed at once.
    let config = config.replace("cluster = \"b\"\nsni_routes", "sni_routes");
    let s2 = start(&config);
    let addr2 = s2.local_addr("l").unwrap();
    assert!(connect(addr2, "unknown.example.com", &ClientOpts::trusting(&ca)).is_err());
    let mut raw = std::net::TcpStream::connect(addr2).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let t = Instant::now();
    let mut out = Vec::new();
    let _ = raw.read_to_end(&mut out);
    assert!(
        out.is_empty() && t.elapsed() < Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
}

/// A proxy with a plain http listener `web` and a tcp listener `raw` in
/// front of cluster `c` with the given `tls` table.
fn originating(
    driver: Driver,
    dir: &TempDir,
    up: SocketAddr,
    tls: &str,
    extra: &str,
) -> (Proxy, SocketAddr, SocketAddr) {
    let config = format!(
        r#"
[runtime]
workers = 1
io = "{io}"
[admin]
address = "127.0.0.1:0"
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "main"
[listeners.raw]
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "c"
[[routes.main]]
match.path_prefix = "/"
cluster = "c"
[clusters.c]
endpoints = ["{up}"]
tls = {tls}
{extra}
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
    let (web, raw) = (p.local_addr("web").unwrap(), p.local_addr("raw").unwrap());
    (p, web, raw)
}

/// A cluster with `tls`: verified against `ca`, under `server_name`
/// (the endpoint is an IP), pooled (three requests, one TLS connection),
/// with a client certificate when the upstream requires one; a wrong CA
/// fails the connect (503) and says why in /clusters.
fn tls_origination(driver: Driver) {
    let dir = TempDir::new("tls-origin");
    let ca = Ca::new("upstream CA");
    let clients = Ca::new("client CA");
    std::fs::write(dir.path("ca.pem"), ca.pem()).unwrap();
    clients.leaf(&["proxy"]).write(&dir.0, "client");
    let (up, conns) = common::tls::https_backend("U", &ca.leaf(&["api.internal"]), Some(&clients));
    let tls = r#"{ ca = "ca.pem", server_name = "api.internal", cert = "client.pem", key = "client.key" }"#;
    let (_p, web, raw) = originating(driver, &dir, up, tls, "");
    let mut c = common::http::Client::connect(web);
    for _ in 0..3 {
        let r = c.get("/", "svc", "");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"U conn=1");
    }
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
    // tcp listener, plain client, TLS upstream.
    let mut t = std::net::TcpStream::connect(raw).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    t.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains("U conn=") {
        match t.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("{e}: {}", String::from_utf8_lossy(&got)),
        }
    }
    assert!(
        String::from_utf8_lossy(&got).contains("U conn=2"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // The wrong CA: no connection, 503.
    let dir2 = TempDir::new("tls-origin-bad");
    std::fs::write(dir2.path("ca.pem"), Ca::new("other").pem()).unwrap();
    let (p2, web2, _) = originating(
        driver,
        &dir2,
        up,
        r#"{ ca = "ca.pem", server_name = "api.internal" }"#,
        "",
    );
    let r = common::http::Client::connect(web2).get("/", "svc", "");
    assert_eq!(r.status, 503);
    let clusters = admin::get_json(p2.admin_addr(), "/clusters");
    let err = clusters["clusters"]["c"]["endpoints"][0]["workers"][0]["last_error"]["message"]
        .to_string();
    assert!(err.contains("certificate"), "{err}");
}

/// Health checks of a tls cluster run over TLS.
fn tls_cluster_health_checks(driver: Driver) {
    let dir = TempDir::new("tls-hc");
    let ca = Ca::new("upstream CA");
    std::fs::write(dir.path("ca.pem"), ca.pem()).unwrap();
    let (up, _) = common::tls::https_backend("U", &ca.leaf(&["127.0.0.1"]), None);
    let (p, _, _) = originating(
        driver,
        &dir,
        up,
        r#"{ ca = "ca.pem" }"#,
        r#"health_check = { protocol = "http", path = "/", interval = "100ms" }"#,
    );
    let passed = || {
        let (_, text) = admin::request(p.admin_addr(), "GET", "/metrics");
        admin::parse_prometheus(&text)
            .value(
                "outrigger_cluster_health_checks_total",
                &[("cluster", "c"), ("result", "passed")],
            )
            .unwrap_or(0.0)
    };
    assert!(eventually(|| passed() >= 2.0));
}

/// Certificate files replaced on disk (no reload asked): the watcher
/// reloads them, new handshakes see the new serial, /certs and the expiry
/// metric follow, and a broken replacement keeps the old material.
fn watched_files_rotate(driver: Driver) {
    let dir = TempDir::new("tls-watch");
    let ca = Ca::new("test CA");
    let (first, second) = (ca.leaf(&["localhost"]), ca.leaf(&["localhost"]));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Laid out as Kubernetes mounts a secret: certs/server.{pem,key} are
    // links into certs/..data, itself a link to the current version.
    std::fs::create_dir_all(dir.path("certs/v1")).unwrap();
    first.write(&dir.path("certs/v1"), "server");
    std::os::unix::fs::symlink("v1", dir.path("certs/..data")).unwrap();
    for f in ["server.pem", "server.key"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), dir.path(&format!("certs/{f}"))).unwrap();
    }
    let config = format!(
        r#"
[runtime]
workers = 1
io = "{io}"
[admin]
address = "127.0.0.1:0"
[listeners.l]
address = "127.0.0.1:0"
protocol = "http"
routes = "main"
tls = {{ cert = "certs/server.pem", key = "certs/server.key" }}
[[routes.main]]
match.path_prefix = "/"
direct_response = {{ status = 200, body = "ok" }}
"#,
        io = io_name(driver)
    );
    let path = dir.path("config.toml");
    std::fs::write(&path, config).unwrap();
    let snapshot = outrigger::config::load(&path).unwrap();
    let options = Options {
        config_path: Some(path),
        watch: true,
    };
    let p = Proxy::launch(snapshot, options, None).unwrap();
    let addr = p.local_addr("l").unwrap();
    let opts = ClientOpts::trusting(&ca);
    let served = || {
        connect(addr, "localhost", &opts)
            .unwrap()
            .conn
            .peer_certificates()
            .unwrap()[0]
            .clone()
    };
    assert_eq!(served(), first.der);
    let serials = || {
        let v = admin::get_json(p.admin_addr(), "/certs");
        v["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["serial"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let before = serials();
    assert_eq!(before.len(), 1);
    let (_, text) = admin::request(p.admin_addr(), "GET", "/metrics");
    let m = admin::parse_prometheus(&text);
    let left = m
        .value(
            "outrigger_certificate_expiry_seconds",
            &[
                ("owner", "listener l (default)"),
                ("serial", before[0].as_str()),
            ],
        )
        .unwrap();
    assert!(left > 86_400.0, "{left}");
    // Under load: new connections, each a request, all through the swap.
    let load = {
        let (stop, ca_roots) = (stop.clone(), ca.roots());
        std::thread::spawn(move || {
            let opts = ClientOpts {
                svid_server: false,
                roots: ca_roots,
                client: None,
                tls12_only: false,
                alpn: vec![],
            };
            let (mut ok, mut failed) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match connect(addr, "localhost", &opts) {
                    Ok(mut c) => {
                        let (status, _, _) =
                            request(&mut c, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
                        if status == 200 {
                            ok += 1
                        } else {
                            failed += 1
                        }
                    }
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    // Replace the pair the way Kubernetes does: both files written into a
    // new version directory, then one atomic swap of the ..data link.
    std::fs::create_dir_all(dir.path("certs/v2")).unwrap();
    second.write(&dir.path("certs/v2"), "server");
    std::os::unix::fs::symlink("v2", dir.path("certs/..data_tmp")).unwrap();
    std::fs::rename(dir.path("certs/..data_tmp"), dir.path("certs/..data")).unwrap();
    assert!(
        eventually(|| served() == second.der),
        "new handshakes never saw the new certificate"
    );
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = load.join().unwrap();
    assert!(
        ok > 10 && failed == 0,
        "{ok} ok, {failed} failed during the rotation"
    );
    assert_ne!(serials(), before);
    // A broken replacement: the key of another certificate. The watcher
    // tries it (one more failed reload than before) and keeps the old
    // material.
    let failures = || {
        let (_, text) = admin::request(p.admin_addr(), "GET", "/metrics");
        admin::parse_prometheus(&text)
            .value("outrigger_config_reloads_total", &[("result", "failure")])
            .unwrap_or(0.0)
    };
    let failed_before = failures();
    let third = ca.leaf(&["localhost"]);
    std::fs::create_dir_all(dir.path("certs/v3")).unwrap();
    std::fs::write(dir.path("certs/v3/server.pem"), &second.cert_pem).unwrap();
    std::fs::write(dir.path("certs/v3/server.key"), &third.key_pem).unwrap();
    std::os::unix::fs::symlink("v3", dir.path("certs/..data_tmp")).unwrap();
    std::fs::rename(dir.path("certs/..data_tmp"), dir.path("certs/..data")).unwrap();
    assert!(
        eventually(|| failures() > failed_before),
        "the watcher never tried the broken replacement"
    );
    assert_eq!(served(), second.der);
}

both_drivers!(expired_client_certificate_is_refused);

/// A client certificate that has expired is refused, though its CA is
/// the right one.
fn expired_client_certificate_is_refused(driver: Driver) {
    let dir = TempDir::new("tls-expired");
    let ca = Ca::new("server CA");
    let clients = Ca::new("client CA");
    ca.leaf(&["localhost"]).write(&dir.0, "server");
    std::fs::write(dir.path("clients.pem"), clients.pem()).unwrap();
    let expired = {
        let mut p = rcgen::CertificateParams::new(vec!["client".to_string()]).unwrap();
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &clients.cert, &clients.key).unwrap();
        common::tls::Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    };
    let tls = r#"{ cert = "server.pem", key = "server.key", client_ca = "clients.pem" }"#;
    let (p, addr) = proxy(driver, &dir, "http", tls, upstream());
    let opts = ClientOpts {
        svid_server: false,
        roots: ca.roots(),
        client: Some(&expired),
        tls12_only: false,
        alpn: vec![],
    };
    let refused = connect(addr, "localhost", &opts).and_then(|mut c| {
        c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        let mut b = [0u8; 16];
        c.read(&mut b)
    });
    assert!(refused.is_err());
    assert!(eventually(|| failures(&p, "bad_client_certificate") == 1.0));
}
