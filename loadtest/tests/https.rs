//! https:// targets: a rustls server with a certificate made for the test;
//! the generator verifies it with --ca, skips verification with --insecure,
//! and counts handshake failures as `tls` errors otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A keep-alive HTTPS server answering every request with 200 "hello",
/// counting requests; one thread per connection.
fn https_server(dir: &std::path::Path) -> (SocketAddr, Arc<AtomicU64>, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, cert.pem()).unwrap();
    let der = rustls::pki_types::CertificateDer::from(cert.der().to_vec());
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der], key_der)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let (config, counter) = (config.clone(), counter.clone());
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut reader = BufReader::new(&mut tls);
                loop {
                    // Read one request head (no bodies in these tests).
                    let mut line = String::new();
                    let mut blank = false;
                    while !blank {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => blank = line == "\r\n",
                        }
                    }
                    counter.fetch_add(1, Ordering::Relaxed);
                    let w = reader.get_mut();
                    if w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
                        .is_err()
                    {
                        return;
                    }
                    let _ = w.flush();
                }
            });
        }
    });
    (addr, count, ca)
}

fn run(args: &[&str]) -> (bool, serde_json::Value, String) {
    let json = std::env::temp_dir().join(format!(
        "outrigger-load-https-{}-{}.json",
        std::process::id(),
        args.len()
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_outrigger-load"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&json).unwrap_or_else(|_| "null".into());
    let _ = std::fs::remove_file(&json);
    (
        out.status.success(),
        serde_json::from_str(&text).unwrap(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn https_with_ca_insecure_and_untrusted() {
    let dir = std::env::temp_dir().join(format!("outrigger-load-https-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (addr, count, ca) = https_server(&dir);
    let url = format!("https://127.0.0.1:{}/", addr.port());
    let ca = ca.to_str().unwrap();

    // Verified against the test CA: every request reaches the server.
    let (ok, v, err) = run(&["http", &url, "-n", "300", "-c", "4", "--ca", ca]);
    assert!(ok, "{err}");
    assert_eq!(v["operations"], 300, "{v}");
    assert_eq!(v["statuses"]["2xx"], 300, "{v}");
    assert_eq!(count.load(Ordering::Relaxed), 300);

    // --insecure skips verification.
    let (ok, v, err) = run(&["http", &url, "-n", "100", "-c", "2", "--insecure"]);
    assert!(ok, "{err}");
    assert_eq!(v["operations"], 100, "{v}");
    assert_eq!(count.load(Ordering::Relaxed), 400);

    // One connection for one second, trusting only `ca`.
    let with_ca = |ca: &str| {
        run(&[
            "http", &url, "-c", "1", "-d", "1s", "--warmup", "0s", "--ca", ca,
        ])
    };
    // A file without certificates is refused up front (no report).
    let (_, v, _) = with_ca(&format!("{}/../Cargo.toml", env!("CARGO_MANIFEST_DIR")));
    assert!(
        v.is_null(),
        "a CA file without certificates is refused up front"
    );
    // An untrusted certificate: handshakes fail and are counted, no request sent.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let other_ca = dir.join("other.pem");
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let (_, v, _) = with_ca(other_ca.to_str().unwrap());
    assert_eq!(v["operations"], 0, "{v}");
    assert!(v["errors"]["tls"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(count.load(Ordering::Relaxed), 400);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--h2` on https://: ALPN `h2` to an Outrigger TLS listener, every
/// request one HTTP/2 stream.
#[test]
fn h2_over_tls_by_alpn() {
    let dir = std::env::temp_dir().join(format!("outrigger-load-h2tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    let up = outrigger::backends::start(
        outrigger::backends::BackendKind::Http(outrigger::backends::HttpBackend::named("t")),
        "127.0.0.1:0".parse().unwrap(),
        1,
        outrigger::worker::Driver::Epoll,
    )
    .unwrap();
    let cfg = format!(
        "[runtime]\nworkers = 1\n[listeners.web]\naddress = \"127.0.0.1:0\"\nprotocol = \"http\"\nroutes = \"r\"\ntls = {{ cert = \"{c}\", key = \"{k}\" }}\n[[routes.r]]\nmatch.path_prefix = \"/\"\ncluster = \"up\"\n[clusters.up]\nendpoints = [\"{u}\"]\n",
        c = dir.join("cert.pem").display(),
        k = dir.join("key.pem").display(),
        u = up.addr
    );
    let snapshot = outrigger::config::compile(std::path::Path::new("<test>"), &cfg).unwrap();
    let proxy = outrigger::start(snapshot).unwrap();
    let url = format!(
        "https://127.0.0.1:{}/",
        proxy.local_addr("web").unwrap().port()
    );
    let ca = dir.join("cert.pem");
    let (ok, v, err) = run(&[
        "http",
        &url,
        "--h2",
        "-m",
        "4",
        "-c",
        "2",
        "-n",
        "400",
        "--ca",
        ca.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(v["operations"], 400, "{v}");
    assert_eq!(v["statuses"]["2xx"], 400, "{v}");
    assert_eq!(up.requests(), 400);
    let text = proxy.shared().export(outrigger::metrics::prometheus);
    assert!(
        text.contains(
            "outrigger_listener_requests_by_protocol_total{listener=\"web\",protocol=\"HTTP/2\"} 400"
        ),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
