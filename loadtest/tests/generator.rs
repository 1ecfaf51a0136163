//! The load generator against the shared test upstreams: request counts,
//! open-loop rate, delays, coordinated-omission correction, errors, JSON.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use outrigger::backends::{self, Backend, BackendKind, HttpBackend};
use outrigger::worker::Driver;

fn http_upstream(delay: Duration) -> Backend {
    let mut cfg = HttpBackend::named("t");
    cfg.delay = delay;
    cfg.body_size = Some(64);
    backends::start(
        BackendKind::Http(cfg),
        "127.0.0.1:0".parse().unwrap(),
        1,
        Driver::Epoll,
    )
    .unwrap()
}

fn load(args: &[&str]) -> serde_json::Value {
    let json = std::env::temp_dir().join(format!(
        "outrigger-load-test-{}-{}.json",
        std::process::id(),
        fastrand_u64()
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_outrigger-load"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    v
}

fn fastrand_u64() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn closed_loop_request_count_matches_upstream() {
    let up = http_upstream(Duration::ZERO);
    let url = format!("http://{}/", up.addr);
    let r = load(&["http", &url, "-c", "8", "-t", "2", "-n", "5000"]);
    assert_eq!(r["operations"], 5000);
    assert_eq!(up.requests(), 5000);
    assert_eq!(r["statuses"]["2xx"], 5000);
    assert!(
        up.connections() <= 8,
        "keep-alive: {} connections",
        up.connections()
    );
}

#[test]
fn open_loop_sends_at_the_rate() {
    let up = http_upstream(Duration::ZERO);
    let url = format!("http://{}/", up.addr);
    let r = load(&[
        "http", &url, "-c", "4", "-R", "1000", "-d", "3s", "--warmup", "0s",
    ]);
    let sent = up.requests() as f64;
    assert!((2970.0..=3030.0).contains(&sent), "upstream counted {sent}");
    let ops = r["operations"].as_f64().unwrap();
    assert!((2970.0..=3030.0).contains(&ops), "generator counted {ops}");
    assert_eq!(r["target_rate"], 1000.0);
}

/// Connections split unevenly over threads (3 and 2): each thread paces
/// its own share, with a timer per connection or one shared periodic timer,
/// and together they send at the rate.
#[test]
fn open_loop_rate_holds_over_uneven_threads() {
    for pacer in ["own", "shared"] {
        let up = http_upstream(Duration::ZERO);
        let url = format!("http://{}/", up.addr);
        let r = load(&[
            "http", &url, "-c", "5", "-t", "2", "-R", "1000", "-d", "2s", "--warmup", "0s",
            "--pacer", pacer,
        ]);
        let sent = up.requests() as f64;
        assert!(
            (1980.0..=2020.0).contains(&sent),
            "{pacer}: upstream counted {sent}"
        );
        let ops = r["operations"].as_f64().unwrap();
        assert!(
            (1980.0..=2020.0).contains(&ops),
            "{pacer}: generator counted {ops}"
        );
    }
}

#[test]
fn delay_shows_in_latency() {
    let up = http_upstream(Duration::from_millis(10));
    let url = format!("http://{}/", up.addr);
    let r = load(&["http", &url, "-c", "2", "-n", "50"]);
    assert!(
        r["latency_us"]["p50"].as_u64().unwrap() >= 10_000,
        "{}",
        r["latency_us"]
    );
}

/// An HTTP upstream on one connection that stalls 500 ms once, after
/// `stall_after` requests.
fn stalling_upstream(stall_after: usize) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut served = 0;
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            s.set_nodelay(true).unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    served += 1;
                    if served == stall_after {
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .is_err()
                    {
                        break;
                    }
                }
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        }
    });
    addr
}

#[test]
fn coordinated_omission_is_corrected() {
    // A sender that fell behind catches up with either kind of pacer.
    for pacer in ["own", "shared"] {
        let addr = stalling_upstream(1500);
        let url = format!("http://{addr}/");
        let started = Instant::now();
        let r = load(&[
            "http", &url, "-c", "1", "-R", "1000", "-d", "3s", "--warmup", "0s", "--pacer", pacer,
        ]);
        assert!(started.elapsed() < Duration::from_secs(10));
        let corrected = r["latency_us"]["p99"].as_u64().unwrap();
        let uncorrected = r["latency_uncorrected_us"]["p99"].as_u64().unwrap();
        assert!(
            corrected >= 100_000,
            "{pacer}: corrected p99 {corrected} us"
        );
        assert!(
            uncorrected < 50_000,
            "{pacer}: uncorrected p99 {uncorrected} us"
        );
        assert!(r["behind_schedule"].as_u64().unwrap() > 0, "{pacer}: {r}");
    }
}

/// An upstream that answers every other connection with half a response
/// and closes; the others get a whole response and `connection: close`.
fn half_response_upstream() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut n = 0;
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            n += 1;
            if n % 2 == 0 {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhal");
            } else {
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            }
        }
    });
    addr
}

#[test]
fn mid_response_closes_are_counted_and_reconnected() {
    let addr = half_response_upstream();
    let url = format!("http://{addr}/");
    let r = load(&["http", &url, "-c", "1", "-n", "20", "--timeout", "2s"]);
    assert_eq!(r["operations"], 10, "{r}");
    assert_eq!(r["errors"]["eof"], 10, "{r}");
}

#[test]
fn json_has_the_documented_fields() {
    let up = http_upstream(Duration::ZERO);
    let url = format!("http://{}/", up.addr);
    let r = load(&["http", &url, "-n", "100"]);
    for key in [
        "target",
        "mode",
        "connections",
        "threads",
        "measured_seconds",
        "operations",
        "operations_per_second",
        "bytes",
        "latency_us",
        "errors",
        "statuses",
        "generator_cpu_utilisation",
        "generator_saturated",
    ] {
        assert!(r.get(key).is_some(), "missing {key}: {r}");
    }
    for p in ["p50", "p75", "p90", "p99", "p99_9", "p99_99", "max"] {
        assert!(r["latency_us"].get(p).is_some(), "missing latency {p}");
    }
    // Closed loop has no schedule, so no send lateness.
    assert!(r["send_lateness_us"].is_null(), "{r}");
}

#[test]
fn open_loop_reports_its_own_send_lateness() {
    let up = http_upstream(Duration::ZERO);
    let url = format!("http://{}/", up.addr);
    let r = load(&[
        "http", &url, "-c", "2", "-R", "400", "-d", "1s", "--warmup", "0s",
    ]);
    let l = &r["send_lateness_us"];
    for p in ["p50", "p99", "p99_9", "max"] {
        assert!(l[p].is_u64(), "missing lateness {p}: {r}");
    }
    // Every send is counted once in the lateness histogram (a figure, not
    // a timing: how late they were is reported, never asserted): at least
    // the completed operations, at most those plus one in flight per
    // connection when the run ended.
    let (sends, ops) = (
        l["count"].as_u64().unwrap(),
        r["operations"].as_u64().unwrap(),
    );
    assert!(
        ops > 0 && sends >= ops && sends <= ops + 2,
        "{sends} sends, {ops} operations: {r}"
    );
}

#[test]
fn hdr_log_plot_and_timeline() {
    let up = http_upstream(Duration::ZERO);
    let url = format!("http://{}/", up.addr);
    let dir = std::env::temp_dir();
    let (log, svg) = (
        dir.join(format!("outrigger-load-{}.hlog", std::process::id())),
        dir.join(format!("outrigger-load-{}.svg", std::process::id())),
    );
    let r = load(&[
        "http",
        &url,
        "-c",
        "2",
        "-R",
        "500",
        "-d",
        "2s",
        "--warmup",
        "0s",
        "--hdr-log",
        log.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let timeline: Vec<u64> = r["timeline_ops_per_second"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(timeline.len() >= 2, "{timeline:?}");
    assert!(
        timeline[..2].iter().all(|&n| (450..=550).contains(&n)),
        "{timeline:?}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("#[StartTime:"), "{text}");
    // One interval line per second: start,length,max,compressed histogram.
    let intervals = text
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert!(intervals >= 2, "{text}");
    assert!(text.lines().any(|l| l.contains(",HISTF")), "{text}");
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("<polyline") && plot.contains("99.9%"));
    // Readable: a title naming the target, the workload, a legend with the
    // corrected and uncorrected curves (open loop), p50/p99 marks, latency
    // ticks with units on a log axis, per-second labels on the throughput.
    assert!(plot.contains(&format!("http {url}")), "title");
    assert!(plot.contains("2 connections") && plot.contains("open loop at 500/s"));
    assert!(plot.contains("latency from the intended send (corrected)"));
    assert!(plot.contains("service time from the actual send (uncorrected)"));
    assert!(plot.contains("stroke-dasharray"));
    assert!(plot.contains(">p50 ") && plot.contains(">p99 "));
    assert!(plot.contains(" µs<") || plot.contains(" ms<"));
    assert!(plot.contains("latency (log scale)") && plot.contains(">percentile<"));
    assert!(plot.contains(">0-1s<") && plot.contains(">1-2s<"));
    assert!(!plot.contains("0.000"), "no tick labels like 0.000 ms");
    let _ = std::fs::remove_file(log);
    let _ = std::fs::remove_file(svg);
}

#[test]
fn in_flight_at_the_end_is_not_counted() {
    let up = http_upstream(Duration::ZERO);
    let url = format!("http://{}/", up.addr);
    let r = load(&["http", &url, "-c", "8", "-d", "2s", "--warmup", "0s"]);
    let timeline: Vec<u64> = r["timeline_ops_per_second"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    // Two whole seconds, no partial bucket of the requests still in flight.
    assert_eq!(timeline.len(), 2, "{timeline:?}");
    assert_eq!(
        r["operations"].as_u64().unwrap(),
        timeline.iter().sum::<u64>()
    );
    assert!(r["completed_after_window"].as_u64().unwrap() <= 8, "{r}");
}

fn load_status(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_outrigger-load"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn exit_status_says_whether_anything_was_measured() {
    // Nothing listens: every request fails, and the exit status says so.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (code, stderr) = load_status(&[
        "http",
        &format!("http://{dead}/"),
        "-d",
        "300ms",
        "--warmup",
        "0s",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no operation succeeded"), "{stderr}");
    // Some failures: exit 0 unless --fail-on-errors.
    let url = format!("http://{}/", half_response_upstream());
    let (code, stderr) = load_status(&["http", &url, "-n", "10"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = load_status(&["http", &url, "-n", "10", "--fail-on-errors"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("failed (--fail-on-errors)"), "{stderr}");
}

/// `--trace-ratio`: that share of requests carries a new, well-formed,
/// sampled W3C traceparent; the others none.
#[test]
#[allow(clippy::disallowed_types)] // a test peer on plain threads
fn trace_ratio_starts_traces() {
    use std::sync::{Arc, Mutex};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Arc<Mutex<(usize, Vec<String>)>> = Arc::default();
    let store = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let store = store.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_string();
                        buf.drain(..i + 4);
                        let mut g = store.lock().unwrap();
                        g.0 += 1;
                        if let Some(tp) = head.lines().find_map(|l| l.strip_prefix("traceparent: "))
                        {
                            g.1.push(tp.to_string());
                        }
                        drop(g);
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .is_err()
                        {
                            return;
                        }
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    let url = format!("http://{addr}/");
    let r = load(&["http", &url, "-n", "400", "-c", "4", "--trace-ratio", "0.5"]);
    assert_eq!(r["errors"].as_object().map_or(0, |e| e.len()), 0);
    let g = seen.lock().unwrap();
    assert_eq!(g.0, 400);
    assert!(
        (140..=260).contains(&g.1.len()),
        "{} traced of 400",
        g.1.len()
    );
    let mut ids = std::collections::HashSet::new();
    for tp in &g.1 {
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!((parts.len(), parts[0], parts[3]), (4, "00", "01"), "{tp}");
        assert_eq!((parts[1].len(), parts[2].len()), (32, 16), "{tp}");
        assert!(ids.insert(parts[1].to_string()), "trace ids repeat");
    }
}

/// `--h2 --streams`: every request is one stream, multiplexed on few
/// connections, through the proxy to an HTTP/1.1 upstream.
#[test]
fn h2_streams_through_the_proxy() {
    let up = http_upstream(Duration::ZERO);
    let cfg = format!(
        "[runtime]\nworkers = 1\n[listeners.web]\naddress = \"127.0.0.1:0\"\nprotocol = \"http\"\nroutes = \"r\"\n[[routes.r]]\nmatch.path_prefix = \"/\"\ncluster = \"up\"\n[clusters.up]\nendpoints = [\"{}\"]\n",
        up.addr
    );
    let snapshot = outrigger::config::compile(std::path::Path::new("<test>"), &cfg).unwrap();
    let proxy = outrigger::start(snapshot).unwrap();
    let url = format!("http://{}/", proxy.local_addr("web").unwrap());
    let r = load(&["http", &url, "--h2", "-m", "8", "-c", "2", "-n", "2000"]);
    assert_eq!(r["operations"], 2000);
    assert_eq!(r["statuses"]["2xx"], 2000);
    assert_eq!(up.requests(), 2000);
    assert!(r["mode"].as_str().unwrap().starts_with("http2"), "{r}");
}

/// `serve http --h2 --grpc` answers like a unary gRPC method, and the
/// generator's open loop holds its rate over HTTP/2.
#[test]
fn h2_upstream_and_open_loop() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(
        Command::new(env!("CARGO_BIN_EXE_outrigger-load"))
            .args(["serve", "http", "--h2", "--grpc", "--addr", &addr])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(&addr).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("http://{addr}/pkg.Svc/Call");
    // Every stream of every connection has its place in the thread's
    // schedule, with either kind of pacer.
    for pacer in ["own", "shared"] {
        let r = load(&[
            "http",
            &url,
            "--h2",
            "--streams",
            "4",
            "-c",
            "2",
            "-R",
            "1000",
            "-d",
            "2s",
            "--warmup",
            "0s",
            "-X",
            "POST",
            "--body",
            "hello",
            "-H",
            "content-type: application/grpc",
            "--pacer",
            pacer,
        ]);
        let ops = r["operations"].as_u64().unwrap();
        assert!(
            (1900..=2010).contains(&ops),
            "{pacer}: {ops} operations at 1000/s for 2s"
        );
        assert_eq!(r["errors"].as_object().map_or(0, |e| e.len()), 0, "{r}");
    }
}
