//! The tracing spans of the HTTP path (OpenTelemetry HTTP semantic
//! conventions, and Outrigger's own attributes): one server span per
//! request, one client span per upstream try.

use std::time::Instant;

use super::codec::RequestHead;
use super::downstream::Downstream;
use super::exchange::UpstreamRecord;
use super::record::RequestRecord;
use crate::upstream::Cluster;

/// The server span of one request (OpenTelemetry HTTP semantic
/// conventions, and Outrigger's own attributes).
pub(super) fn server_span(
    trace: &crate::trace::RequestTrace,
    rec: &RequestRecord<'_>,
    conn: &Downstream,
    head: &RequestHead,
    up: &UpstreamRecord,
) -> crate::trace::otlp::SpanData {
    use crate::trace::otlp::Value;
    let s = |v: &str| Value::Str(v.to_string());
    let mut a = vec![
        ("http.request.method", s(head.method_str())),
        ("url.path", s(head.path())),
        (
            "url.scheme",
            s(if conn.stream.is_tls() {
                "https"
            } else {
                "http"
            }),
        ),
        (
            "network.peer.address",
            Value::Str(conn.peer.ip().to_string()),
        ),
        ("outrigger.listener", s(&rec.listener.name)),
        ("outrigger.flags", s(rec.flags)),
    ];
    if rec.status != 0 {
        a.push((
            "http.response.status_code",
            Value::Int(i64::from(rec.status)),
        ));
    }
    // A gRPC call's status (OpenTelemetry's rpc conventions), from the
    // proxy's own answer or the upstream's.
    if let Some(g) = rec.grpc_status.or(up.grpc_status.get()) {
        a.push(("rpc.system", s("grpc")));
        a.push(("rpc.grpc.status_code", Value::Int(i64::from(g))));
    }
    if let Some(h) = head.host() {
        a.push(("server.address", s(h)));
    }
    if let Some(ua) = head
        .header("user-agent")
        .and_then(|v| std::str::from_utf8(v).ok())
    {
        a.push(("user_agent.original", s(ua)));
    }
    if let Some(r) = rec.route {
        a.push(("outrigger.route", s(&r.name)));
    }
    if let Some(c) = rec.cluster {
        a.push(("outrigger.cluster", s(c)));
    }
    if let Some(u) = up.address.get() {
        a.push(("outrigger.upstream", Value::Str(u.to_string())));
    }
    if let Some(id) = &conn.peer_identity {
        a.push(("outrigger.peer_identity", s(id)));
    }
    let error =
        (rec.status >= 500 || rec.flags != "-").then(|| format!("{} {}", rec.status, rec.flags));
    let name = match rec.route {
        Some(r) => format!("{} {}", head.method_str(), r.name),
        None => head.method_str().to_string(),
    };
    trace.span(
        trace.span_id,
        trace.parent,
        name,
        2,
        rec.mark.at,
        std::time::Instant::now(),
        a,
        Vec::new(),
        error,
    )
}

/// The client span of one upstream try.
pub(super) fn client_span(
    trace: &crate::trace::RequestTrace,
    (span_id, attempt, started): ([u8; 8], u32, Instant),
    cluster: &Cluster,
    out: &UpstreamRecord,
    // Why the try failed, when it did.
    failed: Option<String>,
) -> crate::trace::otlp::SpanData {
    use crate::trace::otlp::Value;
    let status = out.status.get();
    let mut attributes = vec![
        ("outrigger.cluster", Value::Str(cluster.name.clone())),
        ("outrigger.attempt", Value::Int(i64::from(attempt))),
    ];
    if let Some(a) = out.address.get() {
        attributes.push(("server.address", Value::Str(a.ip().to_string())));
        attributes.push(("server.port", Value::Int(i64::from(a.port()))));
    }
    if status != 0 {
        attributes.push(("http.response.status_code", Value::Int(i64::from(status))));
    }
    if let Some(g) = out.grpc_status.get() {
        attributes.push(("rpc.grpc.status_code", Value::Int(i64::from(g))));
    }
    let mut events = Vec::new();
    // A new connection made for this try: connect and TLS handshake.
    if let (Some(t0), Some(c)) = (
        out.timing.started.get().filter(|t| *t >= started),
        out.timing.connected.get(),
    ) {
        events.push((t0, "connect.start"));
        events.push((t0 + c, "connect.end"));
        if let Some(tls) = out.timing.tls.get() {
            events.push((t0 + c + tls, "tls.handshake.end"));
        }
    }
    if let Some(t) = out.sent.get().filter(|t| *t >= started) {
        events.push((t, "request.sent"));
    }
    if let Some(t) = out.head_at.get() {
        events.push((t, "response.first_byte"));
    }
    let error = failed.or_else(|| (status >= 500).then(|| format!("status {status}")));
    trace.span(
        span_id,
        Some(trace.span_id),
        format!("{} {}", cluster.name, attempt),
        3,
        started,
        Instant::now(),
        attributes,
        events,
        error,
    )
}
