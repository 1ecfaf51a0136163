//! TLS termination end to end on both I/O drivers, with certificates made
//! here (rcgen) and clients nobody here wrote (rustls's own blocking
//! client, curl, openssl s_client): HTTP over TLS, SNI certificates,
//! client certificates, versions, ALPN, TCP over TLS, bad handshakes and a
//! rotated certificate. TLS toward upstreams, passthrough and file
//! rotation are in tests/tls_upstream.rs.

// Test peers run on plain threads, outside the data path: a Mutex is fine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::admin::TempDir;
use common::tls::{connect, request, Ca, ClientOpts};
use common::tlsenv::*;
use common::*;
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
    head_and_body_written_apart_leave_in_one_record,
    http2_upstream_answer_leaves_in_one_record,
);

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

/// The client's TCP stream, keeping every byte read so the TLS records
/// the proxy sent can be counted.
struct Recording {
    tcp: std::net::TcpStream,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Read for Recording {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.tcp.read(buf)?;
        self.seen.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl Write for Recording {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// TLS records (type, length) in a stretch of ciphertext that starts at a
/// record boundary.
/// A TLS client of `addr` trusting `ca`, whose received ciphertext is kept.
#[allow(clippy::type_complexity)]
fn recorded_client(
    addr: std::net::SocketAddr,
    ca: &Ca,
) -> (
    rustls::StreamOwned<rustls::ClientConnection, Recording>,
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) {
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sock = Recording {
        tcp,
        seen: seen.clone(),
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(ClientOpts::trusting(ca).config(), name).unwrap();
    (rustls::StreamOwned::new(conn, sock), seen)
}

fn records(bytes: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let len = usize::from(u16::from_be_bytes([bytes[at + 3], bytes[at + 4]]));
        out.push((bytes[at], len));
        at += 5 + len;
    }
    out
}

/// An upstream that writes a response's head, waits 5 ms, then writes its
/// 1 KiB body: over TLS the client still gets head and body in one record
/// (one write), not two (the TLS conformance kit's finding).
fn head_and_body_written_apart_leave_in_one_record(driver: Driver) {
    let (up, _) = common::script::scripted(|mut s, _| {
        let mut buf = Vec::new();
        while common::script::read_request(&mut s, &mut buf).is_some() {
            let body = vec![b'b'; 1024];
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
            if s.write_all(head.as_bytes()).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
            if s.write_all(&body).is_err() {
                return;
            }
        }
    });
    let dir = TempDir::new("tls-records");
    let ca = Ca::new("test CA");
    ca.leaf(&["localhost"]).write(&dir.0, "server");
    let (_p, addr) = proxy(
        driver,
        &dir,
        "http",
        r#"{ cert = "server.pem", key = "server.key" }"#,
        up,
    );
    let (mut c, seen) = recorded_client(addr, &ca);
    // A first exchange: the handshake and the session tickets are behind.
    let (status, _, body) = request(&mut c, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!((status, body.len()), (200, 1024));
    let mark = seen.lock().unwrap().len();
    let (status, _, body) = request(&mut c, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!((status, body.len()), (200, 1024));
    let second = records(&seen.lock().unwrap()[mark..]);
    assert_eq!(
        second.len(),
        1,
        "records of the second response: {second:?}"
    );
    assert_eq!(second[0].0, 23, "{second:?}");
}

/// An HTTP/2 upstream's answer (HEADERS and a DATA frame with END_STREAM,
/// read together) to an HTTP/1.1 client over TLS: head, body and the last
/// chunk leave in one write, one record (they were three).
fn http2_upstream_answer_leaves_in_one_record(driver: Driver) {
    let (up, _) = common::h2env::h2_upstream();
    let dir = TempDir::new("tls-records-h2");
    let ca = Ca::new("test CA");
    ca.leaf(&["localhost"]).write(&dir.0, "server");
    let (_p, addr) = proxy_with(
        driver,
        &dir,
        "http",
        r#"{ cert = "server.pem", key = "server.key" }"#,
        up,
        r#"protocol = "http2""#,
    );
    let (mut c, seen) = recorded_client(addr, &ca);
    let get = b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n";
    // Head and chunked body, up to the last chunk.
    let exchange = |c: &mut rustls::StreamOwned<rustls::ClientConnection, Recording>| {
        c.write_all(get).unwrap();
        c.flush().unwrap();
        let mut buf = Vec::new();
        while !buf.ends_with(b"0\r\n\r\n") {
            let mut chunk = [0u8; 4096];
            let n = c.read(&mut chunk).unwrap();
            assert!(
                n > 0,
                "closed mid-response: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(buf).unwrap()
    };
    // The first exchange opens the upstream connection; the second is
    // the one measured.
    let first = exchange(&mut c);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let mark = seen.lock().unwrap().len();
    let second = exchange(&mut c);
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(
        second
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
            && second.ends_with("\r\n\r\nb\r\nh2 upstream\r\n0\r\n\r\n"),
        "{second}"
    );
    let second = records(&seen.lock().unwrap()[mark..]);
    assert_eq!(
        second.len(),
        1,
        "records of the second response: {second:?}"
    );
}
