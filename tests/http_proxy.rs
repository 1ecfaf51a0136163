//! End-to-end tests of the HTTP/1.1 proxy's routing: real sockets on
//! 127.0.0.1, the shared HTTP test upstream, under both io_uring and epoll:
//! routes by host, path, method and header, direct responses, splits,
//! header rewrites, keep-alive and pipelining. Limits, smuggling, upstream
//! failures, upgrades and connection lifecycles are in
//! tests/http_proxy_edges.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};

use common::http::Client;
use common::httpenv::*;
use common::*;
use outrigger::worker::Driver;

both_drivers!(
    routes_by_host_path_method_header,
    direct_response_and_404,
    split_converges_to_weights,
    header_rewrites_and_forwarding_headers,
    keep_alive_reuses_upstream_connections,
    chunked_request_and_pipelining,
);

fn routes_by_host_path_method_header(driver: Driver) {
    let (a, b, c, d, e) = (
        http_backend(driver, "a"),
        http_backend(driver, "b"),
        http_backend(driver, "c"),
        http_backend(driver, "d"),
        http_backend(driver, "e"),
    );
    let routes = format!(
        r#"
[[routes.main]]
match.headers = {{ "x-canary" = "1" }}
cluster = "e"
[[routes.main]]
match.host = "api.example.com"
match.path_prefix = "/v1/"
cluster = "a"
[[routes.main]]
match.host = "*.example.com"
cluster = "b"
[[routes.main]]
match.path_regex = "^/items/[0-9]+$"
cluster = "c"
[[routes.main]]
match.method = ["POST"]
match.path = "/submit"
cluster = "d"
{}{}{}{}{}"#,
        cluster("a", &a),
        cluster("b", &b),
        cluster("c", &c),
        cluster("d", &d),
        cluster("e", &e)
    );
    let (_s, addr) = proxy(driver, "", &routes);
    let mut cl = Client::connect(addr);
    let who = |r: common::http::Response| r.header("x-backend").map(str::to_string);
    assert_eq!(
        who(cl.get("/v1/users", "API.example.com:8080", "")).as_deref(),
        Some("a")
    );
    assert_eq!(
        who(cl.get("/v2/users", "api.example.com", "")).as_deref(),
        Some("b")
    );
    assert_eq!(who(cl.get("/items/42", "other", "")).as_deref(), Some("c"));
    assert_eq!(cl.get("/items/42x", "other", "").status, 404);
    cl.send(b"POST /submit HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
    let r = cl.read_response(false).unwrap();
    assert_eq!(r.header("x-backend"), Some("d"));
    assert_eq!(r.header("x-body-bytes"), Some("3"));
    assert_eq!(
        cl.get("/submit", "x", "").status,
        404,
        "GET does not match a POST route"
    );
    assert_eq!(
        who(cl.get("/v1/users", "api.example.com", "x-canary: 1\r\n")).as_deref(),
        Some("e")
    );
}

fn direct_response_and_404(driver: Driver) {
    let routes = r#"
[[routes.main]]
match.path = "/healthz"
direct_response = { status = 200, body = "ok" }
[[routes.main]]
match.path = "/gone"
direct_response = { status = 410, body = "" }
[[routes.main]]
match.path = "/empty"
direct_response = { status = 204 }
[[routes.main]]
match.path = "/teapot"
direct_response = { status = 418, body = "short and stout" }
"#;
    let (_s, addr) = proxy(driver, "", routes);
    let mut cl = Client::connect(addr);
    let r = cl.get("/healthz", "x", "");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    assert_eq!(cl.get("/gone", "x", "").status, 410);
    // 204: no body and no content-length, and the connection stays in step.
    let mut raw = connect(addr);
    raw.write_all(
        b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n\r\nok") {
        let mut b = [0u8; 1024];
        let n = raw.read(&mut b).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{text}"
    );
    // The registered reason phrase, not an empty one.
    raw.write_all(b"GET /teapot HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut b = [0u8; 27];
    raw.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"HTTP/1.1 418 I'm a teapot\r\n");
    let r = cl.get("/nothing", "x", "");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-outrigger-error"), Some("no_route"));
    // The connection stays usable after a 404.
    assert_eq!(cl.get("/healthz", "x", "").status, 200);
}

fn split_converges_to_weights(driver: Driver) {
    let (stable, canary) = (
        http_backend(driver, "stable"),
        http_backend(driver, "canary"),
    );
    let routes = format!(
        "[[routes.main]]\nmatch.path_prefix = \"/\"\nsplit = [{{ cluster = \"stable\", weight = 90 }}, {{ cluster = \"canary\", weight = 10 }}]\n{}{}",
        cluster("stable", &stable),
        cluster("canary", &canary)
    );
    let (_s, addr) = proxy(driver, "", &routes);
    let mut cl = Client::connect(addr);
    let n = 10_000;
    let mut to_canary = 0;
    for _ in 0..n {
        if cl.get("/", "x", "").header("x-backend") == Some("canary") {
            to_canary += 1;
        }
    }
    let share = to_canary as f64 * 100.0 / n as f64;
    assert!((8.0..=12.0).contains(&share), "canary got {share}%");
    assert_eq!(stable.requests() + canary.requests(), n);
}

fn header_rewrites_and_forwarding_headers(driver: Driver) {
    let up = http_backend(driver, "up");
    let routes = format!(
        r#"
[[routes.main]]
match.path_prefix = "/api/"
cluster = "up"
request_headers = {{ set = {{ "x-env" = "prod" }}, add = {{ "x-added" = "1" }}, remove = ["x-debug"] }}
response_headers = {{ set = {{ "x-served-by" = "outrigger" }}, remove = ["x-echo-x-keep"] }}
rewrite.path_prefix = "/"
{}"#,
        cluster("up", &up)
    );
    let (_s, addr) = proxy(driver, "", &routes);
    let mut cl = Client::connect(addr);
    let r = cl.get(
        "/api/users?q=1",
        "h",
        "x-debug: yes\r\nx-env: dev\r\nx-keep: k\r\nX-Forwarded-For: 10.0.0.1\r\nConnection: keep-alive, x-hop\r\nx-hop: secret\r\nKeep-Alive: timeout=5\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-echo-target"),
        Some("/users?q=1"),
        "prefix rewritten"
    );
    assert_eq!(r.header("x-echo-x-env"), Some("prod"));
    assert_eq!(r.header("x-echo-x-added"), Some("1"));
    assert_eq!(r.header("x-echo-x-debug"), None);
    assert_eq!(
        r.header("x-echo-x-forwarded-for"),
        Some("10.0.0.1, 127.0.0.1")
    );
    assert_eq!(r.header("x-echo-x-forwarded-proto"), Some("http"));
    assert_eq!(r.header("x-echo-via"), Some("1.1 outrigger"));
    assert_eq!(r.header("x-echo-x-request-id").map(str::len), Some(32));
    assert_eq!(
        r.header("x-echo-x-hop"),
        None,
        "headers named in Connection are hop-by-hop"
    );
    assert_eq!(r.header("x-echo-keep-alive"), None);
    assert_eq!(r.header("x-echo-connection"), None);
    assert_eq!(r.header("x-served-by"), Some("outrigger"));
    assert_eq!(r.header("x-echo-x-keep"), None, "response header removed");
    let r = cl.get("/api/x", "h", "x-request-id: abc-123\r\n");
    assert_eq!(
        r.header("x-echo-x-request-id"),
        Some("abc-123"),
        "kept when present"
    );
}

fn keep_alive_reuses_upstream_connections(driver: Driver) {
    let up = http_backend(driver, "up");
    let routes = format!(
        "[[routes.main]]\nmatch.path_prefix = \"/\"\ncluster = \"up\"\n{}",
        cluster("up", &up)
    );
    let (_s, addr) = proxy(driver, "", &routes);
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(addr)).collect();
    for _ in 0..50 {
        for c in clients.iter_mut() {
            assert_eq!(c.get("/", "x", "").status, 200);
        }
    }
    assert_eq!(up.requests(), 200);
    assert!(
        up.connections() <= 4,
        "upstream saw {} connections for 200 requests",
        up.connections()
    );
    // HTTP/1.0 without keep-alive: the proxy closes after the response.
    let mut c = Client::connect(addr);
    c.send(b"GET / HTTP/1.0\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert!(
        c.read_response(false).is_none(),
        "closed after an HTTP/1.0 response"
    );
}

fn chunked_request_and_pipelining(driver: Driver) {
    let up = http_backend(driver, "up");
    let routes = format!(
        "[[routes.main]]\nmatch.path_prefix = \"/\"\ncluster = \"up\"\n{}",
        cluster("up", &up)
    );
    let (_s, addr) = proxy(driver, "", &routes);
    let mut c = Client::connect(addr);
    c.send(b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n");
    let r1 = c.read_response(false).unwrap();
    assert_eq!(r1.header("x-body-bytes"), Some("11"));
    assert_eq!(r1.header("x-echo-transfer-encoding"), Some("chunked"));
    assert_eq!(
        c.read_response(false).unwrap().header("x-echo-target"),
        Some("/b")
    );
    assert_eq!(
        c.read_response(false).unwrap().header("x-echo-target"),
        Some("/c")
    );
}
