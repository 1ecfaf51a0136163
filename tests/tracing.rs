//! Distributed tracing end to end on both I/O drivers: a real OTLP/HTTP
//! receiver (decoding with prost, from message definitions written here
//! from the OTLP .proto files, independent of the proxy's encoder), two
//! Outrigger proxies in series, an upstream that reads the context it got:
//! parent/child links, B3 in and W3C out, sampling, malformed headers, and
//! a collector that is down.

// Test peers run on plain threads, outside the data path: a Mutex is fine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::http::Client;
use common::script::{read_request, scripted};
use common::*;
use outrigger::worker::Driver;
use outrigger::Server;

both_drivers!(
    slow_collector_never_slows_requests,
    collector_answering_503_is_retried_then_dropped,
    sampling_ratio_holds_end_to_end,
    spans_link_across_two_proxies,
    b3_in_w3c_out_and_malformed_headers,
    collector_down_never_hurts_requests,
    export_queue_is_bounded,
    grpc_status_in_spans,
);

// The OTLP trace messages used (opentelemetry-proto, trace/v1 and
// collector/trace/v1), for decoding.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceSpans>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeSpans>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct Resource {
    #[prost(message, repeated, tag = "1")]
    attributes: Vec<KeyValue>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct ScopeSpans {
    #[prost(message, repeated, tag = "2")]
    spans: Vec<Span>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct Span {
    #[prost(bytes, tag = "1")]
    trace_id: Vec<u8>,
    #[prost(bytes, tag = "2")]
    span_id: Vec<u8>,
    #[prost(bytes, tag = "4")]
    parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    name: String,
    #[prost(int32, tag = "6")]
    kind: i32,
    #[prost(fixed64, tag = "7")]
    start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    attributes: Vec<KeyValue>,
    #[prost(message, repeated, tag = "11")]
    events: Vec<Event>,
    #[prost(message, optional, tag = "15")]
    status: Option<Status>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(fixed64, tag = "1")]
    time_unix_nano: u64,
    #[prost(string, tag = "2")]
    name: String,
}
#[derive(Clone, PartialEq, prost::Message)]
struct Status {
    #[prost(string, tag = "2")]
    message: String,
    #[prost(int32, tag = "3")]
    code: i32,
}
#[derive(Clone, PartialEq, prost::Message)]
struct KeyValue {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(message, optional, tag = "2")]
    value: Option<AnyValue>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct AnyValue {
    #[prost(string, tag = "1")]
    string_value: String,
    #[prost(int64, tag = "3")]
    int_value: i64,
}

impl Span {
    fn attr(&self, key: &str) -> Option<String> {
        self.attributes.iter().find(|a| a.key == key).and_then(|a| {
            a.value.as_ref().map(|v| {
                if v.string_value.is_empty() {
                    v.int_value.to_string()
                } else {
                    v.string_value.clone()
                }
            })
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An OTLP/HTTP receiver: every span it got, with its resource's
/// service.name.
/// Spans received, with their service name.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

fn receiver() -> (SocketAddr, Received) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let store = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = Vec::new();
            let Some(req) = read_request(&mut s, &mut buf) else {
                continue;
            };
            assert!(req.line.starts_with("POST /v1/traces"), "{}", req.line);
            assert!(req
                .head
                .to_ascii_lowercase()
                .contains("content-type: application/x-protobuf"));
            let msg: ExportTraceServiceRequest =
                prost::Message::decode(req.body.as_slice()).unwrap();
            for rs in msg.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                    .and_then(|a| a.value.as_ref())
                    .map(|v| v.string_value.clone())
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for sp in ss.spans {
                        store.lock().unwrap().push((service.clone(), sp));
                    }
                }
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        }
    });
    (addr, got)
}

/// An upstream that answers with the trace headers it received.
fn upstream() -> SocketAddr {
    scripted(|mut s, _| {
        let mut buf = Vec::new();
        while let Some(req) = read_request(&mut s, &mut buf) {
            let seen: Vec<&str> = req
                .head
                .lines()
                .filter(|l| {
                    let l = l.to_ascii_lowercase();
                    l.starts_with("traceparent")
                        || l.starts_with("b3")
                        || l.starts_with("x-b3-")
                        || l.starts_with("tracestate")
                })
                .collect();
            let body = seen.join("\n");
            let r = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(r.as_bytes()).is_err() {
                return;
            }
        }
    })
    .0
}

fn proxy(
    driver: Driver,
    service: &str,
    collector: SocketAddr,
    propagation: &str,
    sampling: f64,
    to: SocketAddr,
) -> (Server, SocketAddr) {
    let config = format!(
        r#"
[runtime]
workers = 1
io = "{io}"
[tracing]
propagation = {propagation}
sampling = {sampling}
otlp_endpoint = "http://{collector}/v1/traces"
service_name = "{service}"
batch_size = 1
flush_interval = "50ms"
force_from_listeners = ["web"]
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "main"
[[routes.main]]
name = "all"
match.path_prefix = "/"
cluster = "next"
[clusters.next]
endpoints = ["{to}"]
"#,
        io = io_name(driver)
    );
    let s = start(&config);
    let addr = s.local_addr("web").unwrap();
    (s, addr)
}

/// Client -> A -> B -> upstream: the upstream's context names B's client
/// span, B's server span is a child of A's client span, A's server span a
/// child of the client's context; one trace id throughout.
fn spans_link_across_two_proxies(driver: Driver) {
    let (collector, spans) = receiver();
    let up = upstream();
    let (_b, b) = proxy(driver, "b", collector, r#"["w3c"]"#, 0.0, up);
    let (_a, a) = proxy(driver, "a", collector, r#"["w3c"]"#, 0.0, b);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = Client::connect(a).get(
        "/orders",
        "svc",
        &format!("traceparent: {tp}\r\nuser-agent: test\r\n"),
    );
    assert_eq!(r.status, 200);
    let upstream_saw = String::from_utf8_lossy(&r.body).to_string();
    assert!(eventually(|| spans.lock().unwrap().len() >= 4));
    let all = spans.lock().unwrap().clone();
    let find = |service: &str, kind: i32| {
        all.iter()
            .find(|(s, sp)| s == service && sp.kind == kind)
            .unwrap()
            .1
            .clone()
    };
    let (a_server, a_client) = (find("a", 2), find("a", 3));
    let (b_server, b_client) = (find("b", 2), find("b", 3));
    for s in [&a_server, &a_client, &b_server, &b_client] {
        assert_eq!(hex(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
    }
    assert_eq!(hex(&a_server.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(a_client.parent_span_id, a_server.span_id);
    assert_eq!(b_server.parent_span_id, a_client.span_id);
    assert_eq!(b_client.parent_span_id, b_server.span_id);
    assert!(
        upstream_saw.contains(&format!(
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            hex(&b_client.span_id)
        )),
        "{upstream_saw}"
    );
    assert_eq!(a_server.attr("http.request.method").as_deref(), Some("GET"));
    assert_eq!(a_server.attr("url.path").as_deref(), Some("/orders"));
    assert_eq!(
        a_server.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        a_server.attr("user_agent.original").as_deref(),
        Some("test")
    );
    assert_eq!(a_server.attr("outrigger.route").as_deref(), Some("all"));
    assert_eq!(a_client.attr("outrigger.cluster").as_deref(), Some("next"));
    assert!(a_client
        .events
        .iter()
        .any(|e| e.name == "response.first_byte"));
}

/// A gRPC call the proxy answers itself (its cluster refuses connections:
/// UNAVAILABLE, 14) carries `rpc.system` and `rpc.grpc.status_code` on its
/// server span.
fn grpc_status_in_spans(driver: Driver) {
    let (collector, spans) = receiver();
    let (_p, addr) = proxy(driver, "g", collector, r#"["w3c"]"#, 0.0, closed_port());
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut c = Client::connect(addr);
    c.send(
        format!(
            "POST /pkg.Svc/Call HTTP/1.1\r\nhost: svc\r\ncontent-type: application/grpc\r\n\
             te: trailers\r\ntraceparent: {tp}\r\ncontent-length: 5\r\n\r\n\0\0\0\0\0"
        )
        .as_bytes(),
    );
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // (The failed try's client span may be exported before the server's.)
    assert!(eventually(|| spans
        .lock()
        .unwrap()
        .iter()
        .any(|(_, sp)| sp.kind == 2)));
    let all = spans.lock().unwrap().clone();
    let server = &all.iter().find(|(_, sp)| sp.kind == 2).unwrap().1;
    assert_eq!(server.attr("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(server.attr("rpc.grpc.status_code").as_deref(), Some("14"));
}

/// B3 in, W3C and B3 out; unsampled requests propagate an unsampled
/// context and export nothing; malformed headers are ignored (a new trace
/// starts), never forwarded.
fn b3_in_w3c_out_and_malformed_headers(driver: Driver) {
    let (collector, spans) = receiver();
    let up = upstream();
    let (_p, addr) = proxy(driver, "p", collector, r#"["w3c", "b3"]"#, 0.0, up);
    let mut c = Client::connect(addr);
    let r = c.get(
        "/",
        "svc",
        "b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1\r\n",
    );
    let saw = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        saw.contains("traceparent: 00-80f198ee56343ba864fe8b2a57d3eff7-"),
        "{saw}"
    );
    assert!(
        saw.contains("b3: 80f198ee56343ba864fe8b2a57d3eff7-"),
        "{saw}"
    );
    assert!(saw.contains("x-b3-sampled: 1"), "{saw}");
    assert!(eventually(|| spans.lock().unwrap().len() >= 2));
    // Malformed: ignored, replaced by a fresh (unsampled, sampling 0) context.
    let before = spans.lock().unwrap().len();
    for bad in [
        "traceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "traceparent: ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "b3: nonsense",
    ] {
        let r = c.get("/", "svc", &format!("{bad}\r\n"));
        assert_eq!(r.status, 200);
        let saw = String::from_utf8_lossy(&r.body).to_string();
        assert!(
            !saw.contains("4bf92f3577b34da6a3ce929d0e0e4736") && !saw.contains("nonsense"),
            "{bad}: {saw}"
        );
        assert!(
            saw.contains("traceparent: 00-") && saw.contains("-00\n"),
            "{bad}: {saw}"
        );
    }
    // x-outrigger-trace: force samples a request the ratio would not.
    let r = c.get("/", "svc", "x-outrigger-trace: force\r\n");
    assert!(String::from_utf8_lossy(&r.body).contains("x-b3-sampled: 1"));
    assert!(eventually(|| spans.lock().unwrap().len() >= before + 2));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        spans.lock().unwrap().len(),
        before + 2,
        "unsampled requests exported spans"
    );
}

/// A collector that is not there: requests are served as usual; spans are
/// counted as failed, memory stays bounded by the queue.
fn collector_down_never_hurts_requests(driver: Driver) {
    let dead = closed_port();
    let up = upstream();
    let (p, addr) = proxy(driver, "p", dead, r#"["w3c"]"#, 1.0, up);
    let mut c = Client::connect(addr);
    let t = std::time::Instant::now();
    for _ in 0..50 {
        assert_eq!(c.get("/", "svc", "").status, 200);
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let failed = || {
        let text = p.shared().export(outrigger::metrics::prometheus);
        admin::parse_prometheus(&text)
            .value("outrigger_trace_spans_export_failed_total", &[])
            .unwrap_or(0.0)
    };
    assert!(eventually(|| failed() >= 2.0), "{}", failed());
    // The raw socket API is untouched by tracing.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"));
}

/// A collector that answers 503: each batch is tried three times, then
/// dropped and counted; requests are not affected.
fn collector_answering_503_is_retried_then_dropped(driver: Driver) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let collector = l.local_addr().unwrap();
    let posts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = posts.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = Vec::new();
            if read_request(&mut s, &mut buf).is_some() {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ =
                    s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
            }
        }
    });
    let up = upstream();
    let (p, addr) = proxy(driver, "p", collector, r#"["w3c"]"#, 1.0, up);
    assert_eq!(Client::connect(addr).get("/", "svc", "").status, 200);
    let failed = || {
        let text = p.shared().export(outrigger::metrics::prometheus);
        admin::parse_prometheus(&text)
            .value("outrigger_trace_spans_export_failed_total", &[])
            .unwrap_or(0.0)
    };
    assert!(eventually(|| failed() >= 1.0));
    // batch_size 1: each span's batch was tried 3 times, no more: three
    // posts per failed span once the exporter has settled.
    let tried = || posts.load(std::sync::atomic::Ordering::SeqCst) as f64;
    assert!(
        eventually(|| tried() == 3.0 * failed()),
        "{} posts for {} failed spans",
        tried(),
        failed()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(tried(), 3.0 * failed(), "retried again after giving up");
}

/// Over 2,000 requests at sampling 0.1, the exported server spans are
/// within statistical bounds (sd 13.4; 5 sd either way).
fn sampling_ratio_holds_end_to_end(driver: Driver) {
    let (collector, spans) = receiver();
    let up = upstream();
    let (_p, addr) = proxy(driver, "p", collector, r#"["w3c"]"#, 0.1, up);
    let mut c = Client::connect(addr);
    for _ in 0..2000 {
        assert_eq!(c.get("/", "svc", "").status, 200);
    }
    std::thread::sleep(Duration::from_millis(500));
    let servers = spans
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, s)| s.kind == 2)
        .count();
    assert!(
        (133..=267).contains(&servers),
        "{servers} of 2,000 sampled at 0.1"
    );
}

/// A collector that takes 3 s to answer: requests are as fast as ever
/// (the exporter thread waits, the workers never do).
fn slow_collector_never_slows_requests(driver: Driver) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let collector = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if read_request(&mut s, &mut buf).is_some() {
                    std::thread::sleep(Duration::from_secs(3));
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    let up = upstream();
    let (_p, addr) = proxy(driver, "p", collector, r#"["w3c"]"#, 1.0, up);
    let mut c = Client::connect(addr);
    let t = std::time::Instant::now();
    for _ in 0..100 {
        assert_eq!(c.get("/", "svc", "").status, 200);
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

/// A collector that accepts and never answers: the export queue stays at
/// `max_queue_spans` and the spans beyond it are dropped and counted (the
/// proxy's memory does not grow with the spans it cannot send); requests
/// are served as usual.
fn export_queue_is_bounded(driver: Driver) {
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let collector = hole.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hole.incoming() {
            held.push(s);
        }
    });
    let up = upstream();
    let config = format!(
        r#"
[runtime]
workers = 1
io = "{io}"
[tracing]
sampling = 1.0
otlp_endpoint = "http://{collector}/v1/traces"
batch_size = 1
max_queue_spans = 4
flush_interval = "50ms"
[listeners.web]
address = "127.0.0.1:0"
protocol = "http"
routes = "main"
[[routes.main]]
match.path_prefix = "/"
cluster = "next"
[clusters.next]
endpoints = ["{up}"]
"#,
        io = io_name(driver)
    );
    let p = start(&config);
    let addr = p.local_addr("web").unwrap();
    let mut c = Client::connect(addr);
    for _ in 0..200 {
        assert_eq!(c.get("/", "svc", "").status, 200);
    }
    let dropped = || {
        let text = p.shared().export(outrigger::metrics::prometheus);
        text.lines()
            .filter(|l| l.starts_with("outrigger_trace_spans_dropped_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    // 400 sampled spans (server and client span per request), at most the
    // queue plus the batches in flight kept: the rest dropped.
    assert!(eventually(|| dropped() >= 300.0), "{} dropped", dropped());
}
