//! HTTP/2 on http listeners, end to end on both I/O drivers, from clients
//! nobody here wrote: curl and h2load (nghttp2), and the hyperium `h2`
//! client for streams, bodies and trailers. The limits and abuse defences
//! are in tests/http2_limits.rs, HTTP/2 upstreams in tests/http2_upstream.rs.

// Test peers run on plain threads, outside the data path: a Mutex is fine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::process::Command;

use bytes::Bytes;
use common::admin::TempDir;
use common::h2env::*;
use common::tls::Ca;
use common::*;
use outrigger::worker::Driver;

both_drivers!(
    curl_speaks_h2c_h2_and_http1_on_one_port,
    h2_streams_bodies_and_trailers,
    h2load_runs_many_streams,
);

fn curl_speaks_h2c_h2_and_http1_on_one_port(driver: Driver) {
    if !require("curl") {
        return;
    }
    let up = app(driver);
    let dir = TempDir::new("h2-curl");
    let ca = Ca::new("test CA");
    ca.leaf(&["localhost"]).write(&dir.0, "server");
    std::fs::write(dir.path("ca.pem"), ca.pem()).unwrap();
    let plain = config(driver, up.addr, scripted_upstream(), "");
    let server = start(&plain);
    let base = format!("http://{}", server.local_addr("web").unwrap());

    // Prior knowledge: GET, POST with a body, a direct response, a 404.
    let out = curl(&[
        "-i",
        "--http2-prior-knowledge",
        &format!("{base}/app/x?y=1"),
    ]);
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert!(out.contains("x-backend: app"), "{out}");
    assert!(out.contains("x-proxy: outrigger"), "{out}");
    assert!(out.contains("x-echo-target: /x?y=1"), "{out}");
    assert!(out.contains("x-echo-x-forwarded-proto: http"), "{out}");
    assert!(out.contains("x-echo-via: 1.1 outrigger"), "{out}");
    let out = curl(&[
        "-i",
        "--http2-prior-knowledge",
        "--data-binary",
        "twelve bytes",
        &format!("{base}/app/post"),
    ]);
    assert!(out.contains("x-body-bytes: 12"), "{out}");
    assert!(out.contains("x-echo-content-length: 12"), "{out}");
    let out = curl(&["-i", "--http2-prior-knowledge", &format!("{base}/healthz")]);
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert!(out.ends_with("\r\n\r\nok"), "{out}");
    let out = curl(&["-i", "--http2-prior-knowledge", &format!("{base}/nowhere")]);
    assert!(out.starts_with("HTTP/2 404"), "{out}");
    assert!(out.contains("x-outrigger-error: no_route"), "{out}");
    // HTTP/1.1 on the same port.
    let out = curl(&["-i", "--http1.1", &format!("{base}/app/x")]);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // A 2 MiB download streams through the window.
    let size = curl(&[
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        &format!("{base}/app/bytes/2097152"),
    ]);
    assert_eq!(size, "2097152");
    let h2 = metric(
        &server,
        "outrigger_listener_requests_by_protocol_total",
        &[("listener", "web"), ("protocol", "HTTP/2")],
    );
    assert_eq!(h2, 5.0);
    assert_eq!(
        metric(
            &server,
            "outrigger_listener_requests_by_protocol_total",
            &[("listener", "web"), ("protocol", "HTTP/1.1")],
        ),
        1.0
    );
    assert_eq!(
        metric(
            &server,
            "outrigger_listener_http2_connections_total",
            &[("listener", "web")]
        ),
        5.0
    );
    drop(server);

    // TLS: h2 by ALPN, HTTP/1.1 for clients that only offer it.
    let tls = config(
        driver,
        up.addr,
        scripted_upstream(),
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            dir.path("server.pem").display(),
            dir.path("server.key").display()
        ),
    );
    let server = start(&tls);
    let port = server.local_addr("web").unwrap().port();
    let resolve = format!("localhost:{port}:127.0.0.1");
    let url = format!("https://localhost:{port}/app/tls");
    let ca_path = dir.path("ca.pem").display().to_string();
    let out = curl(&[
        "-i",
        "--http2",
        "--cacert",
        &ca_path,
        "--resolve",
        &resolve,
        &url,
    ]);
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert!(out.contains("x-echo-x-forwarded-proto: https"), "{out}");
    let size = curl(&[
        "--http2",
        "--cacert",
        &ca_path,
        "--resolve",
        &resolve,
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        &format!("https://localhost:{port}/app/bytes/3000000"),
    ]);
    assert_eq!(size, "3000000");
    let out = curl(&[
        "-i",
        "--http1.1",
        "--cacert",
        &ca_path,
        "--resolve",
        &resolve,
        &url,
    ]);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

fn h2_streams_bodies_and_trailers(driver: Driver) {
    let up = app(driver);
    let server = start(&config(driver, up.addr, scripted_upstream(), ""));
    let addr = server.local_addr("web").unwrap();
    rt().block_on(async move {
        let client = h2_connect(addr).await;
        // 50 concurrent streams on one connection.
        let mut pending = Vec::new();
        for i in 0..50 {
            let mut c = client.clone().ready().await.unwrap();
            let (resp, _) = c.send_request(get(&format!("/app/n{i}")), true).unwrap();
            pending.push((i, resp));
        }
        for (i, resp) in pending {
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), 200);
            let target = resp.headers().get("x-echo-target").unwrap().clone();
            assert_eq!(target.to_str().unwrap(), format!("/n{i}"));
            assert_eq!(body_of(resp.into_body()).await.unwrap(), b"app");
        }
        // A body without content-length goes upstream chunked, 4 MiB of it,
        // sent within the proxy's window.
        let mut c = client.clone().ready().await.unwrap();
        let req = ::http::Request::builder()
            .method("POST")
            .uri("http://localhost/app/upload")
            .body(())
            .unwrap();
        let (resp, mut send) = c.send_request(req, false).unwrap();
        let piece = Bytes::from(vec![b'u'; 64 * 1024]);
        for _ in 0..64 {
            send.reserve_capacity(piece.len());
            let mut left = piece.clone();
            while !left.is_empty() {
                let n = std::future::poll_fn(|cx| send.poll_capacity(cx))
                    .await
                    .unwrap()
                    .unwrap();
                let part = left.split_to(n.min(left.len()));
                send.send_data(part, false).unwrap();
            }
        }
        send.send_data(Bytes::new(), true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h.get("x-body-bytes").unwrap(), "4194304");
        assert_eq!(h.get("x-echo-transfer-encoding").unwrap(), "chunked");
        // A declared length goes upstream as content-length.
        let mut c = client.clone().ready().await.unwrap();
        let req = ::http::Request::builder()
            .method("PUT")
            .uri("http://localhost/app/put")
            .header("content-length", "5")
            .body(())
            .unwrap();
        let (resp, mut send) = c.send_request(req, false).unwrap();
        send.send_data(Bytes::from_static(b"12345"), true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.headers().get("x-echo-content-length").unwrap(), "5");
        // 8 MiB down, as fast as the client releases window.
        let mut c = client.clone().ready().await.unwrap();
        let (resp, _) = c.send_request(get("/app/bytes/8388608"), true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.headers().get("content-length").unwrap(), "8388608");
        assert_eq!(body_of(resp.into_body()).await.unwrap().len(), 8_388_608);
        // Trailers of a chunked upstream response reach the client.
        let mut c = client.clone().ready().await.unwrap();
        let (resp, _) = c.send_request(get("/s/trailers"), true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(
            resp.headers().get("content-type").unwrap(),
            "application/grpc"
        );
        let mut body = resp.into_body();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            data.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(data, b"hello");
        let trailers = body.trailers().await.unwrap().unwrap();
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        assert_eq!(trailers.get("x-trailer").unwrap(), "yes");
        // An upstream that dies mid-body: the stream is reset, never ended
        // as if complete; the connection goes on.
        let mut c = client.clone().ready().await.unwrap();
        let (resp, _) = c.send_request(get("/s/cut"), true).unwrap();
        // The reset may reach the client before it reads the head.
        let err = match resp.await {
            Ok(resp) => body_of(resp.into_body()).await.unwrap_err(),
            Err(e) => e,
        };
        assert_eq!(err.reason(), Some(h2::Reason::INTERNAL_ERROR), "{err}");
        let mut c = client.clone().ready().await.unwrap();
        let (resp, _) = c.send_request(get("/nowhere"), true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers().get("x-outrigger-error").unwrap(), "no_route");
    });
    assert_eq!(
        metric(
            &server,
            "outrigger_listener_http2_streams_total",
            &[("listener", "web")]
        ),
        56.0
    );
}

fn h2load_runs_many_streams(driver: Driver) {
    if !require("h2load") {
        return;
    }
    let up = app(driver);
    let server = start(&config(driver, up.addr, scripted_upstream(), ""));
    let addr = server.local_addr("web").unwrap();
    let out = Command::new("h2load")
        .args(["-n", "2000", "-c", "4", "-m", "16"])
        .arg(format!("http://{addr}/app/load"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
}
