//! Span export: OTLP over HTTP with protobuf bodies, batched on a thread
//! of its own behind a bounded queue. Workers never wait: a full queue
//! drops the span and counts it; a collector that is down, slow or answers
//! 429/503 is retried with back-off a few times, then the batch is dropped
//! and counted. Memory is bounded by the queue (`tracing.max_queue_spans`)
//! and one batch.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::snapshot::Snapshot;

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
}

/// One finished span, owned, on its way to the exporter.
#[derive(Debug, Clone)]
pub struct SpanData {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub tracestate: Option<String>,
    pub name: String,
    /// 2: server, 3: client (OTLP SpanKind).
    pub kind: u64,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: Vec<(&'static str, Value)>,
    pub events: Vec<(u64, &'static str)>,
    /// Status error, with a message.
    pub error: Option<String>,
}

/// Exporter counters (read by /metrics).
#[derive(Debug, Default)]
pub struct ExportStats {
    pub exported: AtomicU64,
    /// Spans in batches the collector refused or could not be reached for.
    pub failed: AtomicU64,
    pub batches: AtomicU64,
}

// --- protobuf encoding (the OTLP trace schema, the fields used) ---

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, u64::from(field << 3 | wire));
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, 0);
    varint(out, v);
}

fn message(out: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    bytes(out, field, &inner);
}

fn key_value(out: &mut Vec<u8>, field: u32, k: &str, v: &Value) {
    message(out, field, |kv| {
        bytes(kv, 1, k.as_bytes());
        message(kv, 2, |any| match v {
            Value::Str(s) => bytes(any, 1, s.as_bytes()),
            Value::Int(i) => uint(any, 3, *i as u64),
        });
    });
}

fn span(out: &mut Vec<u8>, s: &SpanData) {
    message(out, 2, |m| {
        bytes(m, 1, &s.trace_id);
        bytes(m, 2, &s.span_id);
        if let Some(ts) = &s.tracestate {
            bytes(m, 3, ts.as_bytes());
        }
        if let Some(p) = &s.parent_span_id {
            bytes(m, 4, p);
        }
        bytes(m, 5, s.name.as_bytes());
        uint(m, 6, s.kind);
        fixed64(m, 7, s.start_unix_nano);
        fixed64(m, 8, s.end_unix_nano);
        for (k, v) in &s.attributes {
            key_value(m, 9, k, v);
        }
        for (t, name) in &s.events {
            message(m, 11, |e| {
                fixed64(e, 1, *t);
                bytes(e, 2, name.as_bytes());
            });
        }
        if let Some(msg) = &s.error {
            message(m, 15, |st| {
                bytes(st, 2, msg.as_bytes());
                uint(st, 3, 2);
            });
        }
    });
}

/// An `ExportTraceServiceRequest` with one resource and one scope.
pub fn encode(resource: &[(String, String)], spans: &[SpanData]) -> Vec<u8> {
    let mut out = Vec::new();
    message(&mut out, 1, |rs| {
        message(rs, 1, |r| {
            for (k, v) in resource {
                key_value(r, 1, k, &Value::Str(v.clone()));
            }
        });
        message(rs, 2, |ss| {
            message(ss, 1, |scope| {
                bytes(scope, 1, b"outrigger");
                bytes(scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            for s in spans {
                span(ss, s);
            }
        });
    });
    out
}

// --- the exporter thread ---

/// Start the exporter: spans from `rx`, settings from the current snapshot
/// (read per batch, so a reload changes the endpoint). Ends when the
/// snapshot is gone and the queue is empty.
pub fn spawn(
    snapshot: Weak<ArcSwap<Snapshot>>,
    rx: flume::Receiver<SpanData>,
    stats: Arc<ExportStats>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("outrigger-otlp".into())
        .spawn(move || {
            crate::rt::deprioritize_current_thread();
            run(&snapshot, &rx, &stats);
        })
        .map(drop)
}

fn run(snapshot: &Weak<ArcSwap<Snapshot>>, rx: &flume::Receiver<SpanData>, stats: &ExportStats) {
    let mut batch = Vec::new();
    let mut since = Instant::now();
    loop {
        let Some(swap) = snapshot.upgrade() else {
            return;
        };
        let snap = swap.load_full();
        drop(swap);
        let Some(t) = snap.tracing.as_ref() else {
            // Tracing off: drain what is queued, check again later.
            while rx.try_recv().is_ok() {}
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(s) => batch.push(s),
            Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) if batch.is_empty() => return,
            Err(flume::RecvTimeoutError::Disconnected) => {}
        }
        if batch.len() >= t.batch_size || (!batch.is_empty() && since.elapsed() >= t.flush_interval)
        {
            let body = encode(&t.resource, &batch);
            let n = batch.len() as u64;
            stats.batches.fetch_add(1, Relaxed);
            match post(t, &body) {
                Ok(()) => stats.exported.fetch_add(n, Relaxed),
                Err(e) => {
                    tracing::debug!(error = %e, spans = n, "span export failed; batch dropped");
                    stats.failed.fetch_add(n, Relaxed)
                }
            };
            batch.clear();
            since = Instant::now();
        } else if batch.is_empty() {
            since = Instant::now();
        }
    }
}

/// POST one batch; retried with back-off (100 ms, then 200 ms) on 429,
/// 502, 503, 504 and connection errors, at most 3 tries. (`Retry-After`
/// is not read: the back-off is short and fixed, so a slow collector costs
/// the exporter at most a few seconds per batch, never a worker.)
fn post(t: &super::TracingSettings, body: &[u8]) -> Result<(), ExportError> {
    let mut wait = Duration::from_millis(100);
    let mut last = ExportError::NoAddress;
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(wait);
            wait *= 2;
        }
        match post_once(t, body) {
            Ok(200..=299) => return Ok(()),
            Ok(status @ (429 | 502 | 503 | 504)) => last = ExportError::Status(status),
            Ok(status) => return Err(ExportError::Refused(status)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Why a batch of spans was not exported (the batch is dropped and
/// counted; the exporter goes on with the next).
#[derive(Debug, thiserror::Error)]
enum ExportError {
    /// The collector's host name does not resolve.
    #[error("{0}: {1}")]
    Resolve(String, std::io::Error),
    /// It resolves to no address.
    #[error("no address")]
    NoAddress,
    /// Connecting, writing or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The collector answered a status worth retrying (429, 502-504).
    #[error("collector answered {0}")]
    Status(u16),
    /// The collector refused the batch (not retried).
    #[error("collector answered {0} (not retried)")]
    Refused(u16),
    /// What came back is not an HTTP response.
    #[error("not an HTTP response")]
    NotHttp,
}

fn post_once(t: &super::TracingSettings, body: &[u8]) -> Result<u16, ExportError> {
    let addr = (t.host.as_str(), t.port)
        .to_socket_addrs()
        .map_err(|e| ExportError::Resolve(t.host.clone(), e))?
        .next()
        .ok_or(ExportError::NoAddress)?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let mut req = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n",
        t.path,
        t.host,
        t.port,
        body.len()
    );
    for (k, v) in &t.headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or(ExportError::NotHttp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_nesting() {
        let mut v = Vec::new();
        varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        let mut m = Vec::new();
        message(&mut m, 1, |inner| bytes(inner, 1, b"hi"));
        assert_eq!(m, [0x0a, 4, 0x0a, 2, b'h', b'i']);
    }
}
