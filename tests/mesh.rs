//! Mesh mTLS with SPIFFE identities, end to end on both I/O drivers: two
//! Outrigger proxies in series (outbound mesh cluster -> inbound mesh
//! listener -> plaintext app), x-forwarded-client-cert, and authorization
//! by identity on listeners and routes.

// Test peers run on plain threads, outside the data path: a Mutex is fine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::io::Write;
use std::net::SocketAddr;

use common::admin::launch;
use common::admin::TempDir;
use common::http::Client;
use common::script::{read_request, scripted, Seen};
use common::tls::{connect, Ca, ClientOpts};
use common::*;
use outrigger::control::{Options, Proxy};
use outrigger::worker::Driver;

both_drivers!(
    two_sidecars_talk_mtls,
    authorization_by_identity,
    svid_rules_are_enforced,
);

const TD: &str = "example.org";
const CLIENT_ID: &str = "spiffe://example.org/ns/shop/sa/frontend";
const SERVER_ID: &str = "spiffe://example.org/ns/shop/sa/orders";

/// The app behind the inbound sidecar: answers with the
/// x-forwarded-client-cert it received (or `-`).
fn app() -> (SocketAddr, std::sync::Arc<Seen>) {
    scripted(|mut s, seen| {
        let mut buf = Vec::new();
        while let Some(req) = read_request(&mut s, &mut buf) {
            let xfcc = req
                .head
                .lines()
                .find_map(|l| l.strip_prefix("x-forwarded-client-cert: "))
                .unwrap_or("-")
                .to_string();
            seen.lines.lock().unwrap().push(req.line.clone());
            let r = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{xfcc}",
                xfcc.len()
            );
            if s.write_all(r.as_bytes()).is_err() {
                return;
            }
        }
    })
}

/// A trust domain: its CA, and SVID files written for `ids` into dirs.
fn identity(dir: &TempDir, ca: &Ca, id: &str) -> String {
    let svid = ca.svid(id);
    svid.write(&dir.0, "svid");
    std::fs::write(dir.path("bundle.pem"), ca.pem()).unwrap();
    format!(
        "[identity]\ncert = \"svid.pem\"\nkey = \"svid.key\"\ntrust_bundle = \"bundle.pem\"\ntrust_domain = \"{TD}\"\n"
    )
}

/// The inbound sidecar: a mesh listener in front of `app`.
fn inbound(
    driver: Driver,
    dir: &TempDir,
    ca: &Ca,
    app: SocketAddr,
    listener_extra: &str,
    routes: &str,
) -> (Proxy, SocketAddr) {
    let id = identity(dir, ca, SERVER_ID);
    let config = format!(
        r#"
{id}
[runtime]
workers = 1
io = "{io}"
[admin]
address = "127.0.0.1:0"
[listeners.inbound]
address = "127.0.0.1:0"
protocol = "http"
routes = "in"
tls = {{ mode = "mesh" }}
{listener_extra}
{routes}
[[routes.in]]
match.path_prefix = "/"
cluster = "app"
[clusters.app]
endpoints = ["{app}"]
"#,
        io = io_name(driver)
    );
    let p = launch(dir, &config);
    let addr = p.local_addr("inbound").unwrap();
    (p, addr)
}

/// The outbound sidecar: a plain listener whose cluster is the inbound
/// sidecar, over mesh mTLS expecting `identities`.
fn outbound(
    driver: Driver,
    dir: &TempDir,
    ca: &Ca,
    to: SocketAddr,
    identities: &str,
) -> (Proxy, SocketAddr) {
    let id = identity(dir, ca, CLIENT_ID);
    let config = format!(
        r#"
{id}
[runtime]
workers = 1
io = "{io}"
[admin]
address = "127.0.0.1:0"
[listeners.outbound]
address = "127.0.0.1:0"
protocol = "http"
routes = "out"
[[routes.out]]
match.path_prefix = "/"
cluster = "orders"
[clusters.orders]
endpoints = ["{to}"]
tls = {{ mode = "mesh", identities = {identities} }}
"#,
        io = io_name(driver)
    );
    let p = launch(dir, &config);
    let addr = p.local_addr("outbound").unwrap();
    (p, addr)
}

/// App -> outbound sidecar -> mTLS -> inbound sidecar -> app: the app sees
/// x-forwarded-client-cert naming the calling workload, never the one a
/// client made up; an outbound cluster expecting another identity fails.
fn two_sidecars_talk_mtls(driver: Driver) {
    let ca = Ca::new("example.org trust domain");
    let (app, _) = app();
    let (din, dout, dbad) = (
        TempDir::new("mesh-in"),
        TempDir::new("mesh-out"),
        TempDir::new("mesh-bad"),
    );
    let routes = format!(
        r#"[[routes.in]]
match.path = "/who"
match.peer_identity = "{CLIENT_ID}"
direct_response = {{ status = 200, body = "frontend" }}
[[routes.in]]
match.path = "/who"
match.peer_identity = "spiffe://example.org/ns/ops/*"
direct_response = {{ status = 200, body = "ops" }}
"#
    );
    let (_pin, inb) = inbound(driver, &din, &ca, app, "", &routes);
    let (_pout, out) = outbound(driver, &dout, &ca, inb, &format!("[\"{SERVER_ID}\"]"));
    let mut c = Client::connect(out);
    // Routing on the caller's identity.
    assert_eq!(c.get("/who", "orders", "").body, b"frontend");
    let r = c.get(
        "/orders",
        "orders",
        "x-forwarded-client-cert: By=forged;URI=spiffe://example.org/ns/admin\r\n",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let xfcc = String::from_utf8_lossy(&r.body).to_string();
    assert!(xfcc.starts_with(&format!("By={SERVER_ID};Hash=")), "{xfcc}");
    assert!(xfcc.ends_with(&format!(";URI={CLIENT_ID}")), "{xfcc}");
    assert!(!xfcc.contains("forged"));
    // The same connection again (pooled mTLS connection).
    assert_eq!(c.get("/orders", "orders", "").status, 200);
    // Expecting another identity: the handshake is refused, 503.
    let (_pbad, bad) = outbound(
        driver,
        &dbad,
        &ca,
        inb,
        "[\"spiffe://example.org/ns/shop/sa/payments\"]",
    );
    assert_eq!(
        Client::connect(bad).get("/orders", "orders", "").status,
        503
    );
}

/// allow/deny on the listener and on a route: 403 forbidden, counted.
fn authorization_by_identity(driver: Driver) {
    let ca = Ca::new("example.org trust domain");
    let (app, seen) = app();
    let (din, dout) = (
        TempDir::new("mesh-authz-in"),
        TempDir::new("mesh-authz-out"),
    );
    let routes = r#"[[routes.in]]
match.path_prefix = "/admin"
cluster = "app"
allow_identities = ["spiffe://example.org/ns/ops/*"]
"#;
    let listener = r#"allow_identities = ["spiffe://example.org/ns/shop/*"]
deny_identities = ["spiffe://example.org/ns/shop/sa/intruder"]"#;
    let (pin, inb) = inbound(driver, &din, &ca, app, listener, routes);
    let (_pout, out) = outbound(driver, &dout, &ca, inb, &format!("[\"{SERVER_ID}\"]"));
    let mut c = Client::connect(out);
    assert_eq!(c.get("/orders", "orders", "").status, 200);
    let r = c.get("/admin/x", "orders", "");
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-outrigger-error"), Some("forbidden"));
    assert!(!seen.lines().iter().any(|l| l.contains("/admin")));
    // A direct client with an SVID the listener denies.
    let intruder = ca.svid("spiffe://example.org/ns/shop/sa/intruder");
    let opts = ClientOpts {
        svid_server: true,
        roots: ca.roots(),
        client: Some(&intruder),
        tls12_only: false,
        alpn: vec![],
    };
    let mut t = connect(inb, "orders", &opts).unwrap();
    let (status, head, _) =
        common::tls::request(&mut t, b"GET /orders HTTP/1.1\r\nHost: orders\r\n\r\n");
    assert_eq!(status, 403, "{head}");
    let (_, text) = admin::request(pin.admin_addr(), "GET", "/metrics");
    let m = admin::parse_prometheus(&text);
    let denied = |scope: &str, name: &str, rule: &str| {
        m.value(
            "outrigger_authz_denied_total",
            &[("scope", scope), ("name", name), ("rule", rule)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(
        denied(
            "listener",
            "inbound",
            "deny spiffe://example.org/ns/shop/sa/intruder"
        ),
        1.0
    );
    assert_eq!(denied("route", "in#0", "not_allowed"), 1.0);
}

/// A mesh listener refuses a client certificate that is not an SVID of its
/// trust domain: no URI SAN, or another trust domain.
fn svid_rules_are_enforced(driver: Driver) {
    let ca = Ca::new("example.org trust domain");
    let (app, _) = app();
    let din = TempDir::new("mesh-rules");
    let (_pin, inb) = inbound(driver, &din, &ca, app, "", "");
    let try_with = |leaf: &common::tls::Leaf| {
        let opts = ClientOpts {
            svid_server: true,
            roots: ca.roots(),
            client: Some(leaf),
            tls12_only: false,
            alpn: vec![],
        };
        let mut t = connect(inb, "orders", &opts)?;
        t.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut b = [0u8; 16];
        std::io::Read::read(&mut t, &mut b)
    };
    assert!(try_with(&ca.leaf(&["client.example.org"])).is_err());
    assert!(try_with(&ca.svid("spiffe://other.org/ns/x/sa/y")).is_err());
    assert!(try_with(&ca.svid(CLIENT_ID)).is_ok());
}

both_drivers!(demo_certs_and_configs_work);

/// `outrigger certs demo` and the two mesh configs, as the docs say to run
/// them (ports moved to free ones, the driver set): the app sees the
/// frontend's identity.
fn demo_certs_and_configs_work(driver: Driver) {
    let dir = TempDir::new("mesh-demo");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args(["certs", "demo"])
        .arg(dir.path("mesh-certs"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (app, _) = app();
    let inbound_port = closed_port().port();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let edit = |name: &str| {
        // The shipped configs have no [runtime] table: the driver is added.
        let text = std::fs::read_to_string(root.join(name)).unwrap();
        format!("[runtime]\nio = \"{}\"\n{text}", io_name(driver))
            .replace("127.0.0.1:15006", &format!("127.0.0.1:{inbound_port}"))
            .replace("127.0.0.1:15001", "127.0.0.1:0")
            .replace("127.0.0.1:18300", &app.to_string())
            .replace("127.0.0.1:9911", "127.0.0.1:0")
            .replace("127.0.0.1:9912", "127.0.0.1:0")
    };
    let load = |name: &str, text: String| {
        let path = dir.path(name);
        std::fs::write(&path, text).unwrap();
        let snapshot = outrigger::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        Proxy::launch(
            snapshot,
            Options {
                config_path: Some(path),
                watch: false,
            },
            None,
        )
        .unwrap()
    };
    let _inbound = load("mesh-inbound.toml", edit("mesh-inbound.toml"));
    let outbound = load("mesh-outbound.toml", edit("mesh-outbound.toml"));
    let r = Client::connect(outbound.local_addr("outbound").unwrap()).get("/", "orders", "");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let xfcc = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        xfcc.starts_with("By=spiffe://example.org/ns/shop/sa/orders;Hash="),
        "{xfcc}"
    );
    assert!(
        xfcc.ends_with(";URI=spiffe://example.org/ns/shop/sa/frontend"),
        "{xfcc}"
    );
    // Private keys are the owner's alone, the CA's key is kept...
    use std::os::unix::fs::PermissionsExt;
    for key in ["ca.key", "frontend.key", "orders.key"] {
        let mode = std::fs::metadata(dir.path("mesh-certs").join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    // ...so `certs issue` re-issues the frontend's SVID in place; after a
    // reload the outbound presents the new certificate (its hash in XFCC
    // changes), still as the same identity.
    let certs = dir.path("mesh-certs");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outrigger"))
        .args([
            "certs",
            "issue",
            "--id",
            "spiffe://example.org/ns/shop/sa/frontend",
        ])
        .arg("--ca")
        .arg(certs.join("bundle.pem"))
        .arg("--ca-key")
        .arg(certs.join("ca.key"))
        .arg("--out")
        .arg(certs.join("frontend"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    outbound.reload().unwrap();
    let r = Client::connect(outbound.local_addr("outbound").unwrap()).get("/", "orders", "");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let rotated = String::from_utf8_lossy(&r.body).to_string();
    assert!(rotated.ends_with(";URI=spiffe://example.org/ns/shop/sa/frontend"));
    let hash = |x: &str| {
        x.split(";Hash=")
            .nth(1)
            .and_then(|h| h.split(';').next())
            .map(str::to_string)
    };
    assert_ne!(hash(&rotated), hash(&xfcc), "the new certificate is in use");
}
