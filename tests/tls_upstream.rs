//! TLS beyond termination, on both I/O drivers: SNI routes passing TLS
//! through untouched, TLS origination toward clusters (and their health
//! checks), certificate and key files rotated under a running proxy, and
//! an expired client certificate refused.

// Test peers run on plain threads, outside the data path: a Mutex is fine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::admin::TempDir;
use common::tls::{connect, request, Ca, ClientOpts};
use common::tlsenv::*;
use common::*;
use outrigger::control::{Options, Proxy};
use outrigger::worker::Driver;

both_drivers!(
    sni_routes_pass_tls_through,
    tls_origination,
    tls_cluster_health_checks,
    watched_files_rotate,
);

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
