//! The mesh's security invariants (docs/security.md), end to end on both
//! I/O drivers, over HTTP/1.1 and HTTP/2, plaintext and TLS, before and
//! after a reload: no plaintext past a TLS listener, one normalised path
//! for routing and the upstream.

// Test peers run on plain threads, outside the data path: a Mutex is fine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;

use common::admin::{self, launch, TempDir};
use common::http::Client;
use common::script::{read_request, scripted, Seen};
use common::tls::{connect, Ca, ClientOpts, Leaf};
use common::*;
use outrigger::worker::Driver;

both_drivers!(
    plaintext_never_passes_a_tls_listener,
    paths_are_normalised_before_routing,
    refused_streamed_body_is_never_replayed,
    pools_never_cross_tls_settings,
    reset_streams_cancel_their_work,
    peer_ids_and_fields_are_checked,
    host_must_match_sni,
    san_matchers_are_enforced,
);

const TD: &str = "example.org";

/// The `[runtime]` and `[admin]` tables every config here starts with.
fn base(driver: Driver) -> String {
    format!(
        "[runtime]\nworkers = 1\nio = \"{}\"\n[admin]\naddress = \"127.0.0.1:0\"",
        io_name(driver)
    )
}
const SERVER_ID: &str = "spiffe://example.org/ns/shop/sa/orders";
const CLIENT_ID: &str = "spiffe://example.org/ns/shop/sa/frontend";
const ADMIN_ID: &str = "spiffe://example.org/ns/ops/sa/admin";

/// The app: answers 200 with the request line it received as the body.
fn app() -> (SocketAddr, std::sync::Arc<Seen>) {
    scripted(|mut s, seen| {
        let mut buf = Vec::new();
        while let Some(req) = read_request(&mut s, &mut buf) {
            seen.lines.lock().unwrap().push(req.line.clone());
            let host = req
                .head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("host").then(|| v.trim().to_string())
                })
                .unwrap_or_else(|| "-".into());
            let r = format!(
                "HTTP/1.1 200 OK\r\nx-seen-host: {host}\r\ncontent-length: {}\r\n\r\n{}",
                req.line.len(),
                req.line
            );
            if s.write_all(r.as_bytes()).is_err() {
                return;
            }
        }
    })
}

/// The proxy's config: `mesh`, an auto listener terminating mesh mTLS
/// (`/admin` only for ADMIN_ID), and `plain`, a plaintext http listener
/// whose `/admin` route answers 418 itself. `extra_tls` goes into the mesh
/// listener's tls table; `marker` changes the text so a reload applies.
fn config(
    driver: Driver,
    ca: &Ca,
    dir: &TempDir,
    app: SocketAddr,
    extra_tls: &str,
    marker: u32,
) -> String {
    ca.svid(SERVER_ID).write(&dir.0, "svid");
    std::fs::write(dir.path("bundle.pem"), ca.pem()).unwrap();
    format!(
        r#"
# generation {marker}
[identity]
cert = "svid.pem"
key = "svid.key"
trust_bundle = "bundle.pem"
trust_domain = "{TD}"
{base}
[listeners.mesh]
address = "127.0.0.1:0"
protocol = "auto"
routes = "in"
cluster = "app"
tls = {{ mode = "mesh" {extra_tls} }}
[listeners.plain]
address = "127.0.0.1:0"
protocol = "http"
routes = "plain"
[[routes.in]]
match.path_prefix = "/admin"
cluster = "app"
allow_identities = ["{ADMIN_ID}"]
[[routes.in]]
match.path_prefix = "/"
cluster = "app"
[[routes.plain]]
match.path_prefix = "/admin"
direct_response = {{ status = 418, body = "admin route" }}
[[routes.plain]]
match.path_prefix = "/"
cluster = "app"
[clusters.app]
endpoints = ["{app}"]
"#,
        base = base(driver)
    )
}

fn reload(p: &outrigger::control::Proxy, dir: &TempDir, text: &str) {
    admin::write_atomic(&dir.path("config.toml"), text);
    let (status, body) = admin::request(p.admin_addr(), "POST", "/reload");
    assert_eq!(status, 200, "{body}");
}

fn metric(p: &outrigger::control::Proxy, name: &str) -> f64 {
    let (_, text) = admin::request(p.admin_addr(), "GET", "/metrics");
    admin::parse_prometheus(&text)
        .value(name, &[("listener", "mesh")])
        .unwrap_or(0.0)
}

/// Send `bytes` on a new plaintext connection and read until the proxy
/// closes it: what came back.
fn plaintext_reply(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = common::connect(addr);
    s.write_all(bytes).unwrap();
    read_to_eof(&mut s).expect("the proxy closes (EOF), not a read timeout")
}

fn mtls_get(addr: SocketAddr, ca: &Ca, leaf: &Leaf, path: &str) -> u16 {
    let opts = ClientOpts {
        svid_server: true,
        roots: ca.roots(),
        client: Some(leaf),
        tls12_only: false,
        alpn: vec!["http/1.1"],
    };
    let mut t = connect(addr, "orders", &opts).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: orders\r\n\r\n");
    common::tls::request(&mut t, req.as_bytes()).0
}

/// A TLS listener closes connections that skip TLS (HTTP/1.1, the h2c
/// preface, opaque bytes) before any of their bytes reach the app; with
/// `plaintext = "permit"` they are served, without identity (an allow
/// list refuses them); back to the default, refused again.
fn plaintext_never_passes_a_tls_listener(driver: Driver) {
    let ca = Ca::new("example.org trust domain");
    let (app, seen) = app();
    let dir = TempDir::new("sec-plaintext");
    let p = launch(&dir, &config(driver, &ca, &dir, app, "", 0));
    let mesh = p.local_addr("mesh").unwrap();
    let refused = |round: &str| {
        let before = seen.lines().len();
        let h1 = plaintext_reply(mesh, b"GET /secret HTTP/1.1\r\nHost: orders\r\n\r\n");
        assert!(
            h1.is_empty(),
            "{round}: HTTP/1.1 got {:?}",
            String::from_utf8_lossy(&h1)
        );
        let h2c = plaintext_reply(
            mesh,
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
        );
        assert!(h2c.is_empty(), "{round}: h2c got {} bytes", h2c.len());
        let opaque = plaintext_reply(mesh, b"\x00\x01opaque bytes for the app\n");
        assert!(opaque.is_empty(), "{round}: opaque got {opaque:?}");
        assert_eq!(seen.lines().len(), before, "{round}: the app saw plaintext");
    };
    refused("at start");
    assert_eq!(
        metric(&p, "outrigger_listener_plaintext_refused_total"),
        3.0
    );
    // mTLS still works.
    let frontend = ca.svid(CLIENT_ID);
    assert_eq!(mtls_get(mesh, &ca, &frontend, "/orders"), 200);

    reload(
        &p,
        &dir,
        &config(driver, &ca, &dir, app, ", plaintext = \"permit\"", 1),
    );
    let mut c = Client::connect(mesh);
    assert_eq!(c.get("/orders", "orders", "").status, 200);
    // No identity: the allow list refuses it.
    let r = c.get("/admin/x", "orders", "");
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        metric(&p, "outrigger_listener_plaintext_accepted_total"),
        1.0
    );

    reload(&p, &dir, &config(driver, &ca, &dir, app, "", 2));
    refused("after a reload");
    assert_eq!(mtls_get(mesh, &ca, &frontend, "/orders"), 200);
}

/// `plaintext = "permit"` is for auto listeners only, and other values
/// are refused with their position.
#[test]
fn plaintext_key_is_checked() {
    let dir = TempDir::new("sec-plaintext-key");
    let ca = Ca::new("td");
    ca.leaf(&["localhost"]).write(&dir.0, "server");
    for (protocol, value, want) in [
        ("http", "permit", "needs protocol = \"auto\""),
        ("auto", "maybe", "must be \"refuse\" or \"permit\""),
    ] {
        let text = format!(
            "[listeners.l]\naddress = \"127.0.0.1:0\"\nprotocol = \"{protocol}\"\nroutes = \"r\"\ntls = {{ cert = \"server.pem\", key = \"server.key\", plaintext = \"{value}\" }}\n[[routes.r]]\nmatch.path_prefix = \"/\"\ndirect_response = {{ status = 200 }}\n"
        );
        let path = dir.path("c.toml");
        std::fs::write(&path, text).unwrap();
        let err = outrigger::config::load(&path)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains(want) && err.contains("c.toml:5:"), "{err}");
    }
}

fn curl(args: &[&str]) -> Option<String> {
    let out = Command::new("curl").args(args).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Paths that mean `/admin` to the upstream reach the `/admin` route and
/// its authorization, whatever their spelling, on HTTP/1.1 and HTTP/2,
/// plaintext and mesh TLS, before and after a reload; the upstream gets
/// the path the route decision was made on.
fn paths_are_normalised_before_routing(driver: Driver) {
    let ca = Ca::new("example.org trust domain");
    let (app, seen) = app();
    let dir = TempDir::new("sec-paths");
    let p = launch(&dir, &config(driver, &ca, &dir, app, "", 0));
    let (mesh, plain) = (
        p.local_addr("mesh").unwrap(),
        p.local_addr("plain").unwrap(),
    );
    let frontend = ca.svid(CLIENT_ID);
    let admin_leaf = ca.svid(ADMIN_ID);
    frontend.write(&dir.0, "frontend");
    let attacks = [
        "/%61dmin/secret.txt",
        "/x/../admin/secret.txt",
        "//admin/secret.txt",
        "/./admin/secret.txt",
        "/%2e%2e/admin/secret.txt",
        "/x/%2E%2E/admin/secret.txt",
    ];
    let have_curl = Command::new("curl").arg("--version").output().is_ok();
    let check = |round: &str| {
        let from = seen.lines().len();
        for path in attacks {
            // Mesh, HTTP/1.1 over TLS: the frontend is refused /admin.
            assert_eq!(mtls_get(mesh, &ca, &frontend, path), 403, "{round}: {path}");
            // Plaintext HTTP/1.1: the /admin route answers itself
            // (slashes are not merged by default there, so `//admin`
            // goes to the app as `//admin`: routing and app agree).
            let r = Client::connect(plain).get(path, "orders", "");
            if path.starts_with("//") {
                assert_eq!(r.status, 200, "{round}: {path}");
                assert_eq!(r.body, b"GET //admin/secret.txt HTTP/1.1", "{round}");
            } else {
                assert_eq!(r.status, 418, "{round}: {path}");
            }
        }
        assert!(
            !seen.lines()[from..].iter().any(|l| l.contains(" /admin")),
            "{round}: the app saw an /admin request: {:?}",
            seen.lines()
        );
        // The admin identity gets through, and the app sees the path the
        // route matched.
        assert_eq!(
            mtls_get(mesh, &ca, &admin_leaf, "/x/../%61dmin/secret.txt"),
            200
        );
        assert!(seen
            .lines()
            .iter()
            .any(|l| l == "GET /admin/secret.txt HTTP/1.1"));
        // Escaped slashes are refused on the mesh listener, kept elsewhere.
        assert_eq!(
            mtls_get(mesh, &ca, &frontend, "/a/..%2Fadmin/x"),
            400,
            "{round}"
        );
        let r = Client::connect(plain).get("/a/..%2fadmin/x", "orders", "");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"GET /a/..%2Fadmin/x HTTP/1.1", "{round}");
        if !have_curl {
            eprintln!("curl not found: the HTTP/2 half of this test is skipped");
            return;
        }
        // HTTP/2: h2c on the plain listener, ALPN h2 with the frontend's
        // SVID on the mesh listener.
        let h2c = format!("http://{plain}/x/../admin/y");
        let status = curl(&[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            "--http2-prior-knowledge",
            "--path-as-is",
            &h2c,
        ]);
        assert_eq!(status.as_deref(), Some("418 2"), "{round}: h2c");
        let h2 = format!("https://{mesh}/%61dmin/y");
        let (cert, key) = (dir.path("frontend.pem"), dir.path("frontend.key"));
        let status = curl(&[
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            "--http2",
            "--path-as-is",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            &h2,
        ]);
        assert_eq!(status.as_deref(), Some("403 2"), "{round}: h2 over mTLS");
    };
    check("at start");
    reload(&p, &dir, &config(driver, &ca, &dir, app, "", 1));
    check("after a reload");
}

/// What the refusing HTTP/2 upstream saw: (path, body) per request.
type Log = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// An HTTP/2 upstream (hyperium, on its own thread): reads each request's
/// body whole, then refuses `/refuse` with RST_STREAM(REFUSED_STREAM) and
/// answers anything else 200.
fn refusing_h2_upstream() -> (SocketAddr, Log) {
    let log: Log = Default::default();
    let seen = log.clone();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(s).await else {
                        return;
                    };
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        let seen = seen.clone();
                        tokio::spawn(async move {
                            let (parts, mut body) = req.into_parts();
                            let mut got = Vec::new();
                            while let Some(Ok(chunk)) = body.data().await {
                                let _ = body.flow_control().release_capacity(chunk.len());
                                got.extend_from_slice(&chunk);
                            }
                            let path = parts.uri.path().to_string();
                            seen.lock()
                                .unwrap()
                                .push((path.clone(), String::from_utf8_lossy(&got).into()));
                            if path == "/refuse" {
                                respond.send_reset(h2::Reason::REFUSED_STREAM);
                                return;
                            }
                            let resp = ::http::Response::builder().status(200).body(()).unwrap();
                            if let Ok(mut send) = respond.send_response(resp, false) {
                                let _ = send.send_data(bytes::Bytes::from(path), true);
                            }
                        });
                    }
                });
            }
        });
    });
    (addr, log)
}

/// A POST whose body streamed from the client to an HTTP/2 upstream that
/// then refused the stream gets 503 `upstream_refused_stream`; it is not
/// replayed (which would read the next pipelined request, another user's
/// credentials included, as its body), and that next request is served
/// as itself.
fn refused_streamed_body_is_never_replayed(driver: Driver) {
    let (up, log) = refusing_h2_upstream();
    let config = format!(
        r#"
{base}
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "main"
[[routes.main]]
match.path_prefix = "/"
cluster = "h2up"
[clusters.h2up]
endpoints = ["{up}"]
protocol = "http2"
"#,
        base = base(driver)
    );
    let dir = TempDir::new("sec-replay");
    let p = launch(&dir, &config);
    let addr = p.local_addr("web").unwrap();
    let mut c = Client::connect(addr);
    // Warm the pool: the POST goes out on a reused upstream connection.
    assert_eq!(c.get("/warm", "app", "").status, 200);
    let body = "a".repeat(70);
    let pipelined = format!(
        "POST /refuse HTTP/1.1\r\nHost: app\r\ncontent-length: 70\r\n\r\n{body}\
         GET /user-b HTTP/1.1\r\nHost: app\r\nAuthorization: Bearer USER-B-SECRET\r\n\r\n"
    );
    c.send(pipelined.as_bytes());
    let first = c.read_response(false).expect("a response to the POST");
    assert_eq!(
        first.status,
        503,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(
        first.header("x-outrigger-error"),
        Some("upstream_refused_stream")
    );
    let second = c.read_response(false).expect("a response to the GET");
    assert_eq!(
        (second.status, second.body.as_slice()),
        (200, &b"/user-b"[..])
    );
    let seen = log.lock().unwrap().clone();
    let refused: Vec<_> = seen.iter().filter(|(p, _)| p == "/refuse").collect();
    assert_eq!(refused.len(), 1, "replayed: {seen:?}");
    assert_eq!(refused[0].1, body);
    assert!(
        !seen.iter().any(|(_, b)| b.contains("USER-B-SECRET")),
        "{seen:?}"
    );
}

/// The peer of `pools_never_cross_tls_settings`: an inbound sidecar (an
/// auto listener, mesh mTLS with plaintext permitted) that answers `mtls
/// FRONTEND-ID` to a verified client and `plain` to a plaintext one.
fn identity_echo(
    driver: Driver,
    ca: &Ca,
    dir: &TempDir,
) -> (outrigger::control::Proxy, SocketAddr) {
    ca.svid(SERVER_ID).write(&dir.0, "svid");
    std::fs::write(dir.path("bundle.pem"), ca.pem()).unwrap();
    let config = format!(
        r#"
[identity]
cert = "svid.pem"
key = "svid.key"
trust_bundle = "bundle.pem"
trust_domain = "{TD}"
{base}
[listeners.inbound]
address = "127.0.0.1:0"
protocol = "auto"
routes = "in"
tls = {{ mode = "mesh", plaintext = "permit" }}
[[routes.in]]
match.path_prefix = "/"
match.peer_identity = "{CLIENT_ID}"
direct_response = {{ status = 200, body = "mtls" }}
[[routes.in]]
match.path_prefix = "/"
direct_response = {{ status = 200, body = "plain" }}
"#,
        base = base(driver)
    );
    let p = launch(dir, &config);
    let addr = p.local_addr("inbound").unwrap();
    (p, addr)
}

/// The caller's sidecar: three clusters on the one inbound address, in
/// plaintext, over mTLS expecting `secure_id`, and over mTLS expecting an
/// identity the inbound does not have.
fn caller_config(
    driver: Driver,
    ca: &Ca,
    dir: &TempDir,
    to: SocketAddr,
    protocol: &str,
    secure_id: &str,
) -> String {
    ca.svid(CLIENT_ID).write(&dir.0, "svid");
    std::fs::write(dir.path("bundle.pem"), ca.pem()).unwrap();
    format!(
        r#"
[identity]
cert = "svid.pem"
key = "svid.key"
trust_bundle = "bundle.pem"
trust_domain = "{TD}"
{base}
[listeners.out]
address = "127.0.0.1:0"
protocol = "http"
routes = "out"
[[routes.out]]
match.path = "/plain"
cluster = "plain"
[[routes.out]]
match.path = "/secure"
cluster = "secure"
[[routes.out]]
match.path = "/wrong"
cluster = "wrong"
[clusters.plain]
endpoints = ["{to}"]
protocol = "{protocol}"
[clusters.secure]
endpoints = ["{to}"]
protocol = "{protocol}"
tls = {{ mode = "mesh", identities = ["{secure_id}"] }}
[clusters.wrong]
endpoints = ["{to}"]
protocol = "{protocol}"
tls = {{ mode = "mesh", identities = ["{ADMIN_ID}"] }}
"#,
        base = base(driver)
    )
}

/// Clusters that share an address never share connections unless their
/// transport settings are the same: no plaintext connection serves a TLS
/// cluster, no connection verified for one identity serves a cluster
/// expecting another (503 `upstream_identity_refused`, flag UI), and a
/// reload that changes a cluster's identities retires the connections made
/// under the old ones. HTTP/1.1 and HTTP/2 upstream pools both.
fn pools_never_cross_tls_settings(driver: Driver) {
    let ca = Ca::new("example.org trust domain");
    let din = TempDir::new("sec-pools-in");
    let (_inbound, to) = identity_echo(driver, &ca, &din);
    for protocol in ["http1", "http2"] {
        let dout = TempDir::new("sec-pools-out");
        let p = launch(
            &dout,
            &caller_config(driver, &ca, &dout, to, protocol, SERVER_ID),
        );
        let mut c = Client::connect(p.local_addr("out").unwrap());
        let mut get = |path: &str| {
            let r = c.get(path, "orders", "");
            (
                r.status,
                String::from_utf8_lossy(&r.body).to_string(),
                r.header("x-outrigger-error").map(str::to_string),
            )
        };
        assert_eq!(get("/plain").1, "plain", "{protocol}");
        assert_eq!(
            get("/secure").1,
            "mtls",
            "{protocol}: a plaintext connection served a TLS cluster"
        );
        let (status, _, error) = get("/wrong");
        assert_eq!(
            (status, error.as_deref()),
            (503, Some("upstream_identity_refused")),
            "{protocol}"
        );
        assert_eq!(get("/secure").1, "mtls", "{protocol}");
        assert_eq!(get("/plain").1, "plain", "{protocol}");
        // Tighten `secure` to an identity the inbound does not have: its
        // pooled connections must not be used any more.
        reload(
            &p,
            &dout,
            &caller_config(driver, &ca, &dout, to, protocol, ADMIN_ID),
        );
        let (status, _, error) = get("/secure");
        assert_eq!(
            (status, error.as_deref()),
            (503, Some("upstream_identity_refused")),
            "{protocol}: after a reload"
        );
        reload(
            &p,
            &dout,
            &caller_config(driver, &ca, &dout, to, protocol, SERVER_ID),
        );
        assert_eq!(
            get("/secure").1,
            "mtls",
            "{protocol}: after a second reload"
        );
    }
}

/// A slow upstream: `/slow` is never answered (the request stays in
/// flight until the proxy closes the connection), anything else is
/// answered at once. Counts requests in flight and their peak.
fn slow_upstream() -> (
    SocketAddr,
    std::sync::Arc<[std::sync::atomic::AtomicUsize; 3]>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    // [in flight now, peak, seen]
    let counts: std::sync::Arc<[AtomicUsize; 3]> = Default::default();
    let c = counts.clone();
    let (addr, _) = scripted(move |mut s, _| {
        let mut buf = Vec::new();
        while let Some(req) = read_request(&mut s, &mut buf) {
            if !req.line.contains("/slow") {
                common::script::ok(&mut s, "fast");
                continue;
            }
            c[2].fetch_add(1, SeqCst);
            let now = c[0].fetch_add(1, SeqCst) + 1;
            c[1].fetch_max(now, SeqCst);
            // Wait for the proxy to give up on it (EOF or reset).
            let mut b = [0u8; 64];
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(30)));
            while matches!(std::io::Read::read(&mut s, &mut b), Ok(n) if n > 0) {}
            c[0].fetch_sub(1, SeqCst);
            return;
        }
    });
    (addr, counts)
}

/// Rapid Reset after acceptance: streams opened and reset by the client
/// have their upstream work cancelled at once; the work one connection
/// holds never exceeds `max_concurrent_streams`; past `max_client_resets`
/// the connection gets GOAWAY ENHANCE_YOUR_CALM and is closed; another
/// client is served throughout. Before and after a reload.
fn reset_streams_cancel_their_work(driver: Driver) {
    use common::h2raw::*;
    use std::sync::atomic::Ordering::SeqCst;
    let (up, counts) = slow_upstream();
    let dir = TempDir::new("sec-rapid-reset");
    let config = |marker: u32| {
        format!(
            r#"
# generation {marker}
{base}
[access_log]
path = "{log}"
flush_interval = "100ms"
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "main"
http2 = {{ max_concurrent_streams = 10, max_client_resets = 40 }}
[[routes.main]]
match.path_prefix = "/"
cluster = "slow"
[clusters.slow]
endpoints = ["{up}"]
"#,
            base = base(driver),
            log = dir.path("access.log").display()
        )
    };
    let p = launch(&dir, &config(0));
    let addr = p.local_addr("web").unwrap();
    let flood = |round: &str| {
        let seen_before = counts[2].load(SeqCst);
        counts[1].store(0, SeqCst);
        let mut raw = Raw::connect(addr, &[]);
        let mut id = 1u32;
        for _ in 0..150 {
            let headers = frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                id,
                &request_block("/slow"),
            );
            if raw.send(&headers).is_err() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(3));
            // CANCEL (0x8).
            if raw
                .send(&frame(RST_STREAM, 0, id, &8u32.to_be_bytes()))
                .is_err()
            {
                break;
            }
            id += 2;
        }
        // Another client is served meanwhile.
        let r = Client::connect(addr).get("/fast", "app", "");
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"fast"[..]),
            "{round}"
        );
        raw.s
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let goaway = raw.until(|f| f.kind == GOAWAY).map(|f| goaway_code(&f));
        assert_eq!(goaway, Some(0xb), "{round}: GOAWAY ENHANCE_YOUR_CALM");
        // Then the proxy closes: EOF (or a reset), not the read timeout.
        assert!(
            raw.closes_within(std::time::Duration::from_secs(5)),
            "{round}: the connection stayed open after GOAWAY"
        );
        let peak = counts[1].load(SeqCst);
        assert!(
            peak <= 10,
            "{round}: {peak} requests in flight upstream from one connection"
        );
        assert!(
            counts[2].load(SeqCst) > seen_before,
            "{round}: no request reached the upstream"
        );
        assert!(
            eventually(|| counts[0].load(SeqCst) == 0),
            "{round}: cancelled requests still in flight upstream: {}",
            counts[0].load(SeqCst)
        );
    };
    flood("at start");
    let (_, text) = admin::request(p.admin_addr(), "GET", "/metrics");
    let m = admin::parse_prometheus(&text);
    let v = |n: &str| m.value(n, &[("listener", "web")]).unwrap_or(0.0);
    assert!(v("outrigger_listener_http2_client_resets_total") > 40.0);
    assert_eq!(v("outrigger_listener_http2_reset_floods_total"), 1.0);
    // Each cancelled request has its access-log line, flagged DR.
    let lines = admin::read_log(&dir, 40);
    let cancelled = lines
        .iter()
        .filter(|l| l.contains("\"flags\":\"DR\"") && l.contains("\"path\":\"/slow\""))
        .count();
    assert!(cancelled >= 40, "{cancelled} cancelled requests logged");
    reload(&p, &dir, &config(1));
    flood("after a reload");
}

/// A mesh listener refuses SVIDs whose SPIFFE ID is not valid (upper-case
/// trust domain, dot segments), which could otherwise slip past allow and
/// deny patterns; `Connection: host` cannot remove Host.
fn peer_ids_and_fields_are_checked(driver: Driver) {
    let ca = Ca::new("example.org trust domain");
    let (app, _) = app();
    let dir = TempDir::new("sec-ids");
    let p = launch(&dir, &config(driver, &ca, &dir, app, "", 0));
    let (mesh, plain) = (
        p.local_addr("mesh").unwrap(),
        p.local_addr("plain").unwrap(),
    );
    let try_with = |id: &str| {
        let leaf = ca.svid(id);
        let opts = ClientOpts {
            svid_server: true,
            roots: ca.roots(),
            client: Some(&leaf),
            tls12_only: false,
            alpn: vec!["http/1.1"],
        };
        let mut t = connect(mesh, "orders", &opts)?;
        t.write_all(b"GET /admin/x HTTP/1.1\r\nHost: orders\r\n\r\n")?;
        let mut b = [0u8; 16];
        std::io::Read::read(&mut t, &mut b).and_then(|n| {
            if n == 0 {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            } else {
                Ok(b[..n].to_vec())
            }
        })
    };
    for bad in [
        "spiffe://EXAMPLE.ORG/ns/ops/sa/admin",
        "spiffe://example.org/ns/shop/sa/../../ops/sa/admin",
        "spiffe://example.org/ns/ops/sa/admin/",
    ] {
        assert!(try_with(bad).is_err(), "{bad} was accepted");
    }
    let ok = try_with(ADMIN_ID).expect("a valid SVID is accepted");
    assert!(
        ok.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&ok)
    );
    let r = Client::connect(plain).get("/x", "orders", "Connection: host\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-seen-host"), Some("orders"));
}

/// `sni_host_match`: a request for another host than the TLS SNI gets 421
/// Misdirected Request, over HTTP/1.1 and HTTP/2; the SNI host itself (with
/// a port) is served.
fn host_must_match_sni(driver: Driver) {
    let ca = Ca::new("test CA");
    let dir = TempDir::new("sec-sni");
    ca.leaf(&["localhost", "a.example"]).write(&dir.0, "server");
    let config = format!(
        r#"
{base}
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "main"
sni_host_match = true
tls = {{ cert = "server.pem", key = "server.key" }}
[[routes.main]]
match.path_prefix = "/"
direct_response = {{ status = 200, body = "ok" }}
"#,
        base = base(driver)
    );
    let p = launch(&dir, &config);
    let addr = p.local_addr("web").unwrap();
    let get = |host: &str| {
        let mut t = connect(addr, "localhost", &ClientOpts::trusting(&ca)).unwrap();
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let (status, head, _) = common::tls::request(&mut t, req.as_bytes());
        (status, head)
    };
    assert_eq!(get("localhost").0, 200);
    assert_eq!(get("LOCALHOST:8443").0, 200);
    let (status, head) = get("a.example");
    assert_eq!(status, 421, "{head}");
    assert!(
        head.contains("x-outrigger-error: misdirected_request"),
        "{head}"
    );
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl not found: the HTTP/2 half of this test is skipped");
        return;
    }
    let url = format!("https://localhost:{}/", addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", addr.port());
    let h2 = |host: &str| {
        curl(&[
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            "--http2",
            "--resolve",
            &resolve,
            "-H",
            &format!("host: {host}"),
            &url,
        ])
    };
    assert_eq!(h2("localhost").as_deref(), Some("200 2"));
    assert_eq!(h2("a.example").as_deref(), Some("421 2"));
}

/// One raw request to the admin API (which closes after each): its status.
fn admin_status(addr: SocketAddr, request: &str) -> u16 {
    common::http::one_shot(addr, request.as_bytes()).map_or(0, |r| r.status)
}

/// The admin API: `/config` hides secrets (built-in names and
/// `admin.redact`); a Host that is not localhost or an IP is refused (DNS
/// rebinding); a POST a browser form could send is refused (CSRF).
#[test]
fn admin_api_resists_browsers_and_hides_secrets() {
    let dir = TempDir::new("sec-admin");
    let config = r#"
[admin]
address = "127.0.0.1:0"
redact = ["x-internal-key"]
[tracing]
otlp_endpoint = "http://127.0.0.1:4318/v1/traces"
otlp_headers = { authorization = "Bearer OTLP-SECRET" }
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "main"
[[routes.main]]
match.path_prefix = "/"
request_headers = { set = { "authorization" = "Basic ROUTE-SECRET", "x-internal-key" = "KEY-SECRET", "x-env" = "prod" } }
direct_response = { status = 200 }
"#;
    let p = launch(&dir, config);
    let adm = p.admin_addr();
    let (status, body) = admin::request(adm, "GET", "/config");
    assert_eq!(status, 200);
    for secret in ["OTLP-SECRET", "ROUTE-SECRET", "KEY-SECRET"] {
        assert!(!body.contains(secret), "{secret} shown: {body}");
    }
    assert!(
        body.contains("[redacted]") && body.contains("prod"),
        "{body}"
    );
    let status = admin_status(
        adm,
        "GET /config HTTP/1.1\r\nHost: evil.example:9901\r\n\r\n",
    );
    assert_eq!(status, 403);
    for host in ["localhost:9901", "127.0.0.1", "[::1]:9901", "LOCALHOST"] {
        let status = admin_status(adm, &format!("GET /ready HTTP/1.1\r\nHost: {host}\r\n\r\n"));
        assert_eq!(status, 200, "{host}");
    }
    let status = admin_status(
        adm,
        "POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx",
    );
    assert_eq!(status, 415);
    let status = admin_status(
        adm,
        "POST /drain HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(status, 403);
    // Still serving: the refused drain did nothing.
    let (status, _) = admin::request(adm, "GET", "/ready");
    assert_eq!(status, 200);
    let (status, body) = admin::request(adm, "POST", "/reload");
    assert_eq!(status, 200, "{body}");
}

/// `tls.match_sans`: a listener admits only client certificates with a
/// matching SAN, a cluster only upstreams with one; others fail the
/// handshake (the request: 503).
fn san_matchers_are_enforced(driver: Driver) {
    let ca = Ca::new("test CA");
    let dir = TempDir::new("sec-sans");
    ca.leaf(&["localhost"]).write(&dir.0, "server");
    std::fs::write(dir.path("ca.pem"), ca.pem()).unwrap();
    let (up, _) = common::tls::https_backend("up", &ca.leaf(&["api.internal"]), None);
    let config = format!(
        r#"
{base}
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "main"
tls = {{ cert = "server.pem", key = "server.key", client_ca = "ca.pem", match_sans = [{{ type = "uri", prefix = "spiffe://example.org/ns/ops/" }}] }}
[listeners.out]
address = "127.0.0.1:0"
protocol = "http"
routes = "out"
[[routes.main]]
match.path_prefix = "/"
direct_response = {{ status = 200, body = "in" }}
[[routes.out]]
match.path = "/good"
cluster = "good"
[[routes.out]]
match.path = "/bad"
cluster = "bad"
[clusters.good]
endpoints = ["{up}"]
tls = {{ ca = "ca.pem", server_name = "api.internal", match_sans = [{{ type = "dns", suffix = ".internal" }}] }}
[clusters.bad]
endpoints = ["{up}"]
tls = {{ ca = "ca.pem", server_name = "api.internal", match_sans = [{{ type = "dns", exact = "payments.internal" }}] }}
"#,
        base = base(driver)
    );
    let p = launch(&dir, &config);
    let web = p.local_addr("web").unwrap();
    let try_with = |id: &str| {
        let leaf = ca.svid(id);
        let mut opts = ClientOpts::trusting(&ca);
        opts.client = Some(&leaf);
        let mut t = connect(web, "localhost", &opts)?;
        t.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        let mut b = [0u8; 12];
        std::io::Read::read_exact(&mut t, &mut b).map(|_| b.to_vec())
    };
    assert_eq!(
        try_with("spiffe://example.org/ns/ops/sa/admin").unwrap(),
        b"HTTP/1.1 200"
    );
    assert!(try_with("spiffe://example.org/ns/evil/sa/x").is_err());
    let out = p.local_addr("out").unwrap();
    let r = Client::connect(out).get("/good", "x", "");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = Client::connect(out).get("/bad", "x", "");
    assert_eq!(r.status, 503);
}
