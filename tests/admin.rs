//! The admin API and the access log, through the library's entry point:
//! every endpoint answers what docs/operations.md says, `/metrics` passes a
//! strict Prometheus text parser, and access log lines carry every field.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::admin::{self, TempDir};
use common::http::Client;
use common::*;
use outrigger::backends::{self, BackendKind, HttpBackend};
use outrigger::control::{Options, Proxy};
use outrigger::worker::Driver;

both_drivers!(
    endpoints_metrics_and_access_log,
    text_access_log_and_drain,
    metrics_listener_is_read_only
);

fn setup(driver: Driver, dir: &TempDir, format: &str) -> (Proxy, backends::Backend) {
    let echo_up = echo(driver);
    let up = backends::start(
        BackendKind::Http(HttpBackend::named("app")),
        "127.0.0.1:0".parse().unwrap(),
        1,
        driver,
    )
    .unwrap();
    let log = dir.path("access.log");
    let cfg = format!(
        r#"
[runtime]
workers = 2
io = "{io}"
drain_timeout = "3s"

[admin]
address = "127.0.0.1:0"

[metrics]
address = "127.0.0.1:0"

[access_log]
path = "{log}"
format = "{format}"
flush_interval = "100ms"

[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "r"

[listeners.tcp]
address = "127.0.0.1:0"
protocol = "tcp"
cluster = "echo"

[clusters.echo]
endpoints = ["{echo_addr}"]

[[routes.r]]
name = "app \"quoted\""
match.path_prefix = "/app"
cluster = "app"

[[routes.r]]
match.path = "/dead"
cluster = "dead"

[clusters.app]
endpoints = ["{up}"]

[clusters.dead]
endpoints = ["{dead}"]
"#,
        io = io_name(driver),
        log = log.display(),
        up = up.addr,
        dead = closed_port(),
        echo_addr = echo_up.addr,
    );
    let path = dir.path("config.toml");
    std::fs::write(&path, cfg).unwrap();
    let snapshot = outrigger::config::load(&path).unwrap();
    let options = Options {
        config_path: Some(path),
        watch: false,
    };
    let proxy = Proxy::launch(snapshot, options, None).unwrap();
    // A TCP connection through the echo cluster: one access log line when it ends.
    let mut t = connect(proxy.local_addr("tcp").unwrap());
    assert_eq!(round_trip(&mut t, b"hello"), b"hello");
    drop(t);
    std::mem::forget(echo_up);
    (proxy, up)
}

fn endpoints_metrics_and_access_log(driver: Driver) {
    let dir = TempDir::new("admin");
    let (proxy, up) = setup(driver, &dir, "json");
    let web = proxy.local_addr("web").unwrap();
    let adm = proxy.admin_addr();
    let mut c = Client::connect(web);
    for i in 0..10 {
        let r = c.get(
            &format!("/app/{i}?q=1"),
            "svc.local",
            "x-request-id: req-7\r\n",
        );
        assert_eq!(r.status, 200);
    }
    assert_eq!(c.get("/nowhere", "svc.local", "").status, 404);
    assert_eq!(c.get("/nowhere", "svc.local", "").status, 404);
    assert_eq!(c.get("/dead", "svc.local", "").status, 503);

    assert_eq!(admin::request(adm, "GET", "/healthz"), (200, "ok\n".into()));
    assert_eq!(admin::request(adm, "GET", "/ready").0, 200);
    assert_eq!(admin::request(adm, "POST", "/stats").0, 405);
    assert_eq!(admin::request(adm, "GET", "/reload").0, 405);
    assert_eq!(admin::request(adm, "GET", "/nope").0, 404);

    // /metrics: strict parse, promtool's lint, then the values a user would look for.
    let text = admin::request(adm, "GET", "/metrics").1;
    promtool_check(&text);
    let m = admin::parse_prometheus(&text);
    let route = [("table", "r"), ("route", "app \"quoted\"")];
    let v = |name: &str, labels: &[(&str, &str)]| {
        m.value(name, labels)
            .unwrap_or_else(|| panic!("{name} {labels:?}"))
    };
    assert_eq!(
        v(
            "outrigger_route_requests_total",
            &[route[0], route[1], ("class", "2xx")]
        ),
        10.0
    );
    assert_eq!(
        v("outrigger_route_request_duration_seconds_count", &route),
        10.0
    );
    assert_eq!(
        v(
            "outrigger_listener_requests_total",
            &[("listener", "web"), ("class", "2xx")]
        ),
        10.0
    );
    assert_eq!(
        v(
            "outrigger_listener_requests_total",
            &[("listener", "web"), ("class", "4xx")]
        ),
        2.0
    );
    assert_eq!(
        v(
            "outrigger_listener_requests_total",
            &[("listener", "web"), ("class", "5xx")]
        ),
        1.0
    );
    assert_eq!(
        v("outrigger_listener_no_route_total", &[("listener", "web")]),
        2.0
    );
    // HTTP-only families leave tcp listeners out.
    assert_eq!(
        m.value("outrigger_listener_no_route_total", &[("listener", "tcp")]),
        None
    );
    assert_eq!(
        v(
            "outrigger_listener_connections_total",
            &[("listener", "web")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "outrigger_listener_connections_active",
            &[("listener", "web")]
        ),
        1.0
    );
    assert!(
        v(
            "outrigger_listener_bytes_received_total",
            &[("listener", "web")]
        ) > 500.0
    );
    assert!(
        v(
            "outrigger_listener_bytes_sent_total",
            &[("listener", "web")]
        ) > 500.0
    );
    assert_eq!(
        v(
            "outrigger_cluster_upstream_requests_total",
            &[("cluster", "app")]
        ),
        10.0
    );
    assert_eq!(
        v(
            "outrigger_cluster_upstream_responses_total",
            &[("cluster", "app"), ("class", "2xx")]
        ),
        10.0
    );
    assert_eq!(
        v(
            "outrigger_cluster_upstream_connect_failures_total",
            &[("cluster", "dead")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "outrigger_cluster_upstream_connections_opened_total",
            &[("cluster", "app")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "outrigger_cluster_upstream_request_duration_seconds_count",
            &[("cluster", "app")]
        ),
        10.0
    );
    assert_eq!(v("outrigger_config_generation", &[]), 1.0);
    let driver_name = io_name(driver);
    assert_eq!(
        v(
            "outrigger_worker_info",
            &[("worker", "1"), ("driver", driver_name)]
        ),
        1.0
    );
    // Each worker's housekeeping tick (every 100 ms) records its lag.
    assert!(eventually(|| {
        let m = admin::parse_prometheus(&admin::request(adm, "GET", "/metrics").1);
        (0..2).all(|w| {
            let worker = w.to_string();
            m.value(
                "outrigger_worker_event_loop_lag_seconds_count",
                &[("worker", worker.as_str())],
            )
            .is_some_and(|n| n >= 1.0)
        })
    }));
    for (name, kind) in &m.types {
        assert!(name.starts_with("outrigger_"), "{name}");
        assert!(!kind.is_empty());
    }
    // Label values come from config names and classes only.
    for (_, labels, _) in &m.samples {
        for (k, v) in labels {
            assert!(!v.contains("/app") && !v.contains("127.0.0.1"), "{k}={v}");
        }
    }

    // /stats
    let s = admin::get_json(adm, "/stats");
    assert_eq!(s["generation"], 1);
    let l = &s["listeners"]["web"];
    assert_eq!(l["total"]["requests"]["2xx"], 10, "{l}");
    assert_eq!(l["workers"].as_array().unwrap().len(), 2);
    // Every HTTP request of the listener, routed or not: 10 + 2 + 1.
    assert_eq!(l["total"]["latency_us"]["count"], 13, "{l}");
    let r = s["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "app \"quoted\"")
        .unwrap();
    assert_eq!(r["table"], "r");
    let lat = &r["total"]["latency_us"];
    assert_eq!(lat["count"], 10);
    for k in ["p50", "p90", "p99", "p999", "max"] {
        assert!(lat[k].as_u64().unwrap() > 0, "{k}: {lat}");
    }
    assert!(
        lat["p50"].as_u64() <= lat["p99"].as_u64() && lat["p99"].as_u64() <= lat["max"].as_u64()
    );
    assert_eq!(s["clusters"]["app"]["total"]["requests"], 10);
    assert_eq!(s["clusters"]["dead"]["total"]["connect_failures"], 1);
    let w = &s["workers"][0];
    assert_eq!(w["driver"], driver_name);
    assert!(w["event_loop_lag_us"]["count"].as_u64().is_some());

    // /config
    let cfg = admin::get_json(adm, "/config");
    assert_eq!(cfg["generation"], 1);
    assert!(cfg["source"].as_str().unwrap().ends_with("config.toml"));
    assert_eq!(cfg["content_hash"].as_str().unwrap().len(), 16);
    assert!(cfg["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert!(cfg["last_reload_error"].is_null());
    assert_eq!(cfg["config"]["listeners"]["web"]["protocol"], "http");

    // /clusters
    let cl = admin::get_json(adm, "/clusters");
    // Named as the config names it.
    assert_eq!(cl["clusters"]["app"]["balance"], "round_robin");
    let ep = &cl["clusters"]["app"]["endpoints"][0];
    assert_eq!(ep["address"], up.addr.to_string());
    assert_eq!(ep["requests"], 10);
    assert_eq!(ep["in_flight"], 0);
    assert_eq!(ep["workers"].as_array().unwrap().len(), 2);
    let dead = &cl["clusters"]["dead"]["endpoints"][0];
    assert_eq!(dead["errors"], 1);
    let last = dead["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["errors"] == 1)
        .unwrap();
    assert!(
        last["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{last}"
    );

    // A failed reload shows in /reload's answer and in /config.
    let path = dir.path("config.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        good.replace("cluster = \"app\"", "cluster = \"missing\""),
    )
    .unwrap();
    let (status, body) = admin::request(adm, "POST", "/reload");
    assert_eq!(status, 400, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("config.toml:"),
        "{err}"
    );
    let cfg = admin::get_json(adm, "/config");
    assert_eq!(cfg["generation"], 1);
    assert!(cfg["last_reload_error"]["message"]
        .as_str()
        .unwrap()
        .contains("missing"));
    std::fs::write(&path, good).unwrap();
    let (status, body) = admin::request(adm, "POST", "/reload");
    assert_eq!(status, 200, "{body}");
    let ok: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ok["generation"], 2);
    let ms = ok["duration_ms"].as_f64().unwrap();
    assert!(ms > 0.0);
    // Microsecond precision: no long float tails.
    assert!(
        ok["duration_ms"]
            .to_string()
            .split('.')
            .nth(1)
            .map_or(0, str::len)
            <= 3,
        "{ok}"
    );

    // The access log: 13 HTTP lines and 1 TCP line, every field present.
    let lines = admin::read_log(&dir, 14);
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ok = parsed.iter().find(|v| v["status"] == 200).unwrap();
    assert_eq!(ok["request_id"], "req-7");
    assert_eq!(ok["client"], c.stream.local_addr().unwrap().to_string());
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["authority"], "svc.local");
    assert!(ok["path"].as_str().unwrap().starts_with("/app/"));
    assert_eq!(ok["protocol"], "HTTP/1.1");
    assert!(ok["bytes_in"].as_u64().unwrap() > 30);
    assert!(ok["bytes_out"].as_u64().unwrap() > 30);
    assert!(ok["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(ok["upstream"], up.addr.to_string());
    assert!(ok["upstream_duration_ms"].as_f64().unwrap() > 0.0);
    // The timing breakdown: time to the response head, within the whole.
    let first_byte = ok["upstream_first_byte_ms"].as_f64().unwrap();
    assert!(first_byte > 0.0 && first_byte <= ok["upstream_duration_ms"].as_f64().unwrap());
    assert!(parsed
        .iter()
        .any(|v| v["upstream_connect_ms"].as_f64().is_some_and(|c| c > 0.0)));
    assert_eq!(ok["listener"], "web");
    assert_eq!(ok["route"], "app \"quoted\"");
    assert_eq!(ok["cluster"], "app");
    assert_eq!(ok["flags"], "-");
    assert!(ok["start_time"].as_str().unwrap().ends_with('Z'));
    let nr: Vec<_> = parsed.iter().filter(|v| v["status"] == 404).collect();
    assert_eq!(nr.len(), 2);
    assert_eq!(
        (&nr[0]["flags"], &nr[0]["route"], &nr[0]["cluster"]),
        (
            &"NR".into(),
            &serde_json::Value::Null,
            &serde_json::Value::Null
        )
    );
    let uf = parsed.iter().find(|v| v["status"] == 503).unwrap();
    assert_eq!(
        (&uf["flags"], &uf["cluster"]),
        (&"UF".into(), &"dead".into())
    );
    let tcp = parsed.iter().find(|v| v["protocol"] == "TCP").unwrap();
    assert_eq!(
        (&tcp["listener"], &tcp["cluster"], &tcp["flags"]),
        (&"tcp".into(), &"echo".into(), &"-".into())
    );
    assert_eq!(
        (&tcp["bytes_in"], &tcp["bytes_out"], &tcp["status"]),
        (&5.into(), &5.into(), &0.into())
    );
    assert!(tcp["method"].is_null() && tcp["upstream"].is_string());
    // A generated request id for requests without one.
    assert_eq!(uf["request_id"].as_str().unwrap().len(), 32);
}

/// `[metrics]`: a scraper on the pod's address gets `/metrics` and
/// `/stats/prometheus` (the same text as the admin API's), `/healthz` and
/// `/ready`, whatever Host it sends; nothing that changes or shows the
/// config is there.
fn metrics_listener_is_read_only(driver: Driver) {
    let dir = TempDir::new("metrics-port");
    let (proxy, _up) = setup(driver, &dir, "json");
    let m = proxy.metrics_addr().expect("the metrics listener is up");
    assert_ne!(m, proxy.admin_addr());
    for path in ["/metrics", "/stats/prometheus"] {
        let (status, body) = admin::request(m, "GET", path);
        assert_eq!(status, 200, "{path}");
        assert!(
            body.contains("outrigger_listener_connections_total"),
            "{path}: {body}"
        );
        promtool_check(&body);
    }
    let (status, body) = admin::request(proxy.admin_addr(), "GET", "/stats/prometheus");
    assert_eq!(status, 200);
    assert!(body.contains("outrigger_listener_connections_total"));
    assert_eq!(admin::request(m, "GET", "/healthz").0, 200);
    assert_eq!(admin::request(m, "GET", "/ready").0, 200);
    for path in ["/config", "/clusters", "/certs", "/stats", "/"] {
        assert_eq!(admin::request(m, "GET", path).0, 404, "{path}");
    }
    for path in ["/reload", "/drain", "/metrics"] {
        assert_eq!(admin::request(m, "POST", path).0, 405, "{path}");
    }
    // A scraper names the pod by its service's DNS name: no Host check.
    let mut s = std::net::TcpStream::connect(m).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: orders-7c9.shop.svc:15090\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // Still serving: the POST /drain above was refused.
    let r = Client::connect(proxy.local_addr("web").unwrap()).get("/app/x", "x", "");
    assert_eq!(r.status, 200);
}

fn text_access_log_and_drain(driver: Driver) {
    let dir = TempDir::new("admin-text");
    let (proxy, _up) = setup(driver, &dir, "text");
    let web = proxy.local_addr("web").unwrap();
    let adm = proxy.admin_addr();
    let mut c = Client::connect(web);
    assert_eq!(c.get("/app/x", "svc", "x-request-id: a b\r\n").status, 200);
    let lines = admin::read_log(&dir, 2);
    let line = lines.iter().find(|l| l.contains("HTTP/1.1")).unwrap();
    let f: Vec<&str> = line.split(' ').collect();
    // time id client "METHOD authority path proto" status in out ms upstream ms listener route cluster flags
    assert_eq!(f.len(), 17, "{line}");
    assert_eq!(f[1], "a%20b");
    assert_eq!(
        (f[3], f[4], f[5], f[6]),
        ("\"GET", "svc", "/app/x", "HTTP/1.1\"")
    );
    assert_eq!(f[7], "200");
    assert_eq!(f[11], _up.addr.to_string());
    assert_eq!(
        (f[13], f[14], f[15], f[16]),
        ("web", "app%20%22quoted%22", "app", "-")
    );

    // POST /drain: ready turns 503, a request in flight gets Connection:
    // close on its response, new connections are refused, the proxy exits
    // 0. The request is in flight (its head half sent) when the drain
    // starts, so it is served whatever the timing: an idle keep-alive
    // connection could be closed by the drain instead.
    std::io::Write::write_all(&mut c.stream, b"GET /app/y HTTP/1.1\r\nHost: svc\r\n").unwrap();
    // Let the worker read those bytes first: a drain that finds them still
    // in the socket buffer sees an idle keep-alive connection and closes it
    // (the race every server has with a client reusing an idle connection),
    // which under a loaded CI machine happened once.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (status, _) = admin::request(adm, "POST", "/drain");
    assert_eq!(status, 202);
    assert!(eventually(|| admin::request(adm, "GET", "/ready").0 == 503));
    std::io::Write::write_all(&mut c.stream, b"\r\n").unwrap();
    let r = c
        .read_response(false)
        .expect("the request in flight is answered during the drain");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(eventually(|| std::net::TcpStream::connect(web).is_err()));
    let waited = std::time::Instant::now();
    assert_eq!(proxy.wait(), 0);
    assert!(waited.elapsed() < Duration::from_secs(3));
    // The line of the request served during the drain was flushed before
    // the exit.
    let log = std::fs::read_to_string(dir.path("access.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("/app/y") && l.contains(" 200 ")),
        "{log}"
    );
}

/// `promtool check metrics` when installed (required in CI, where
/// OUTRIGGER_REQUIRE_INTEROP=1 and .ci/run installs it).
fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if std::env::var_os("OUTRIGGER_REQUIRE_INTEROP").is_some() => {
            panic!("promtool is required here: {e}")
        }
        Err(_) => {
            eprintln!("promtool not installed; skipping its check (apt-get install prometheus)");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
