//! The access log: one line per HTTP request and per TCP connection.
//!
//! Workers never block on it. Each worker formats lines into its own buffer
//! and hands the whole buffer to the `outrigger-log` writer thread when it
//! reaches `buffer_bytes` or is `flush_interval` old, through a bounded
//! channel. If the writer falls behind (a slow disk, a blocked stdout) and
//! the channel is full, the buffer is dropped and its lines are counted in
//! `outrigger_access_log_dropped_lines_total`. On a crash, what sits in the
//! worker buffers and the channel is lost: at most `buffer_bytes` per worker
//! plus 256 buffers, or `flush_interval` worth of lines. A clean exit
//! (drain, SIGTERM) flushes everything.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::metrics::WorkerCells;
use crate::snapshot::AccessLogFormat;
use crate::snapshot::{AccessLogTarget, Snapshot};

/// Buffers in flight between the workers and the writer.
const CHANNEL_BUFFERS: usize = 256;

/// What the writer thread receives.
#[derive(Debug)]
pub enum LogMsg {
    /// Complete lines from one worker.
    Lines(Vec<u8>),
    /// Where to write from now on (`None`: access log off). Sent at start
    /// and after every reload, which also reopens the file (log rotation).
    Target(Option<AccessLogTarget>),
    /// Write what came before, then exit (sent once the workers are gone).
    Shutdown,
}

/// One access log entry. HTTP requests fill every field; a TCP connection
/// leaves the HTTP ones empty.
#[derive(Debug)]
pub struct Record<'a> {
    pub start: SystemTime,
    pub request_id: Option<&'a [u8]>,
    pub client: SocketAddr,
    pub method: Option<&'a str>,
    pub authority: Option<&'a str>,
    pub path: Option<&'a str>,
    /// "HTTP/1.1", "HTTP/1.0" or "TCP".
    pub protocol: &'static str,
    /// 0 when no response was sent.
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub upstream: Option<SocketAddr>,
    pub upstream_duration: Option<Duration>,
    pub listener: &'a str,
    pub route: Option<&'a str>,
    pub cluster: Option<&'a str>,
    /// What went wrong, as a short code (docs/operations.md), or "-".
    pub flags: &'a str,
    /// The client's verified identity (SPIFFE ID), when its listener
    /// verifies client certificates (JSON format only).
    pub peer_identity: Option<&'a str>,
    /// The request's trace and server span, when tracing is on (JSON only).
    pub trace: Option<([u8; 16], [u8; 8])>,
    /// Timing breakdown (JSON only): a new upstream connection's connect
    /// and TLS handshake times, and request sent to response head.
    pub upstream_connect: Option<Duration>,
    pub upstream_tls: Option<Duration>,
    pub upstream_first_byte: Option<Duration>,
    /// gRPC calls: the status and message they ended with.
    pub grpc_status: Option<u8>,
    pub grpc_message: Option<&'a [u8]>,
    /// Served in plaintext on a TLS listener (`tls.plaintext = "permit"`):
    /// `"plaintext":true` in JSON, `plaintext` after the flags in text.
    pub plaintext: bool,
}

impl<'a> Record<'a> {
    /// A connection the listener refused at `max_connections` (flag `LR`)
    /// or by its rate limit (`RL`):
    /// nothing read or written; `protocol` "TCP" with the cluster on a tcp
    /// listener, empty on an http one.
    pub fn refused(
        client: SocketAddr,
        listener: &'a str,
        tcp_cluster: Option<&'a str>,
        flags: &'a str,
    ) -> Self {
        Record {
            start: SystemTime::now(),
            request_id: None,
            client,
            method: None,
            authority: None,
            path: None,
            protocol: if tcp_cluster.is_some() { "TCP" } else { "" },
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            duration: Duration::ZERO,
            upstream: None,
            upstream_duration: None,
            listener,
            route: None,
            cluster: tcp_cluster,
            flags,
            peer_identity: None,
            trace: None,
            upstream_connect: None,
            upstream_tls: None,
            upstream_first_byte: None,
            grpc_status: None,
            grpc_message: None,
            plaintext: false,
        }
    }

    /// A TCP connection's entry: the HTTP fields empty.
    #[allow(clippy::too_many_arguments)]
    pub fn tcp(
        start: SystemTime,
        client: SocketAddr,
        listener: &'a str,
        cluster: &'a str,
        upstream: Option<SocketAddr>,
        (bytes_in, bytes_out): (u64, u64),
        duration: Duration,
        flags: &'a str,
    ) -> Self {
        Record {
            start,
            request_id: None,
            client,
            method: None,
            authority: None,
            path: None,
            protocol: "TCP",
            status: 0,
            bytes_in,
            bytes_out,
            duration,
            upstream,
            upstream_duration: None,
            listener,
            route: None,
            cluster: Some(cluster),
            flags,
            peer_identity: None,
            trace: None,
            upstream_connect: None,
            upstream_tls: None,
            upstream_first_byte: None,
            grpc_status: None,
            grpc_message: None,
            plaintext: false,
        }
    }
}

/// One worker's access log buffer.
#[derive(Debug)]
pub struct WorkerLog {
    tx: flume::Sender<LogMsg>,
    buf: RefCell<Vec<u8>>,
    lines: Cell<u64>,
    since: Cell<Instant>,
    stats: Arc<WorkerCells>,
}

impl WorkerLog {
    pub fn new(tx: flume::Sender<LogMsg>, stats: Arc<WorkerCells>) -> Self {
        WorkerLog {
            tx,
            buf: RefCell::new(Vec::new()),
            lines: Cell::new(0),
            since: Cell::new(Instant::now()),
            stats,
        }
    }

    /// Append a line when the snapshot has an access log.
    pub fn log(&self, snapshot: &Snapshot, r: &Record<'_>) {
        let Some(settings) = &snapshot.access_log else {
            return;
        };
        let full = {
            let mut buf = self.buf.borrow_mut();
            if buf.is_empty() {
                self.since.set(Instant::now());
                buf.reserve(settings.buffer_bytes.min(64 * 1024));
            }
            match settings.format {
                AccessLogFormat::Json => write_json(&mut buf, r),
                AccessLogFormat::Text => write_text(&mut buf, r),
            }
            buf.len() >= settings.buffer_bytes
        };
        self.lines.set(self.lines.get() + 1);
        self.stats.access_log_lines.inc();
        if full {
            self.flush(false);
        }
    }

    /// Flush when the oldest buffered line is `flush_interval` old.
    pub fn flush_if_due(&self, snapshot: &Snapshot) {
        let interval = snapshot
            .access_log
            .as_ref()
            .map_or(Duration::ZERO, |a| a.flush_interval);
        if !self.buf.borrow().is_empty() && self.since.get().elapsed() >= interval {
            self.flush(false);
        }
    }

    /// Hand the buffer to the writer. Never blocks unless `wait` (used once,
    /// when the worker exits, for up to a second).
    pub fn flush(&self, wait: bool) {
        let buf = std::mem::take(&mut *self.buf.borrow_mut());
        let lines = self.lines.replace(0);
        if buf.is_empty() {
            return;
        }
        let sent = if wait {
            self.tx
                .send_timeout(LogMsg::Lines(buf), Duration::from_secs(1))
                .is_ok()
        } else {
            self.tx.try_send(LogMsg::Lines(buf)).is_ok()
        };
        if !sent {
            self.stats.access_log_dropped.add(lines);
        }
    }
}

/// Check that the target can be opened (before a config that names it is
/// accepted).
pub fn check_target(target: &AccessLogTarget) -> std::io::Result<()> {
    open(target).map(|_| ())
}

fn open(target: &AccessLogTarget) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(match target {
        AccessLogTarget::Stdout => Box::new(std::io::stdout()),
        AccessLogTarget::File(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
    })
}

/// Start the `outrigger-log` thread. It exits on [`LogMsg::Shutdown`] or
/// once every sender is gone, after writing what it was sent before.
pub fn spawn_writer() -> std::io::Result<(flume::Sender<LogMsg>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = flume::bounded::<LogMsg>(CHANNEL_BUFFERS);
    let handle = std::thread::Builder::new()
        .name("outrigger-log".into())
        .spawn(move || {
            let mut out: Option<Box<dyn Write + Send>> = None;
            let mut failing = false;
            for msg in rx.iter() {
                match msg {
                    LogMsg::Shutdown => return,
                    LogMsg::Target(t) => {
                        if let Some(o) = out.as_mut() {
                            let _ = o.flush();
                        }
                        out = t.as_ref().and_then(|t| match open(t) {
                            Ok(o) => Some(o),
                            Err(e) => {
                                tracing::error!(target = ?t, error = %e, "cannot open the access log");
                                None
                            }
                        });
                    }
                    LogMsg::Lines(lines) => {
                        let Some(o) = out.as_mut() else { continue };
                        // Write and flush per buffer: a buffer is many lines.
                        match o.write_all(&lines).and_then(|_| o.flush()) {
                            Ok(()) => failing = false,
                            Err(e) if !failing => {
                                failing = true;
                                tracing::error!(error = %e, "cannot write the access log");
                            }
                            Err(_) => {}
                        }
                    }
                }
            }
        })?;
    Ok((tx, handle))
}

fn write_json(out: &mut Vec<u8>, r: &Record<'_>) {
    out.extend_from_slice(b"{\"start_time\":\"");
    write_time(out, r.start);
    out.extend_from_slice(b"\",\"request_id\":");
    json_opt(out, r.request_id);
    let _ = write!(out, ",\"client\":\"{}\",\"method\":", r.client);
    json_opt(out, r.method.map(str::as_bytes));
    out.extend_from_slice(b",\"authority\":");
    json_opt(out, r.authority.map(str::as_bytes));
    out.extend_from_slice(b",\"path\":");
    json_opt(out, r.path.map(str::as_bytes));
    let _ = write!(
        out,
        ",\"protocol\":\"{}\",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{:.3},\"upstream\":",
        r.protocol,
        r.status,
        r.bytes_in,
        r.bytes_out,
        r.duration.as_secs_f64() * 1e3
    );
    match r.upstream {
        Some(a) => {
            let _ = write!(out, "\"{a}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"upstream_duration_ms\":");
    match r.upstream_duration {
        Some(d) => {
            let _ = write!(out, "{:.3}", d.as_secs_f64() * 1e3);
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"listener\":");
    json_str(out, r.listener.as_bytes());
    out.extend_from_slice(b",\"route\":");
    json_opt(out, r.route.map(str::as_bytes));
    out.extend_from_slice(b",\"cluster\":");
    json_opt(out, r.cluster.map(str::as_bytes));
    out.extend_from_slice(b",\"flags\":");
    json_str(out, r.flags.as_bytes());
    out.extend_from_slice(b",\"peer_identity\":");
    json_opt(out, r.peer_identity.map(str::as_bytes));
    if r.plaintext {
        out.extend_from_slice(b",\"plaintext\":true");
    }
    for (name, v) in [
        ("upstream_connect_ms", r.upstream_connect),
        ("upstream_tls_ms", r.upstream_tls),
        ("upstream_first_byte_ms", r.upstream_first_byte),
    ] {
        if let Some(d) = v {
            let _ = write!(out, ",\"{name}\":{:.3}", d.as_secs_f64() * 1000.0);
        }
    }
    if let Some(g) = r.grpc_status {
        let _ = write!(out, ",\"grpc_status\":{g},\"grpc_message\":");
        json_opt(out, r.grpc_message);
    }
    if let Some((t, s)) = &r.trace {
        out.extend_from_slice(b",\"trace_id\":");
        json_str(out, crate::trace::context::to_hex(t).as_bytes());
        out.extend_from_slice(b",\"span_id\":");
        json_str(out, crate::trace::context::to_hex(s).as_bytes());
    }
    out.extend_from_slice(b"}\n");
}

fn json_opt(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) => json_str(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string; bytes that are not UTF-8 become U+FFFD.
fn json_str(out: &mut Vec<u8>, v: &[u8]) {
    out.push(b'"');
    for c in String::from_utf8_lossy(v).chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// Text format: space-separated, `-` for empty, the request line quoted.
/// Bytes outside printable ASCII, spaces and `"` in values are %-escaped.
fn write_text(out: &mut Vec<u8>, r: &Record<'_>) {
    write_time(out, r.start);
    out.push(b' ');
    text_opt(out, r.request_id);
    let _ = write!(out, " {} \"", r.client);
    text_opt(out, r.method.map(str::as_bytes));
    out.push(b' ');
    text_opt(out, r.authority.map(str::as_bytes));
    out.push(b' ');
    text_opt(out, r.path.map(str::as_bytes));
    let _ = write!(
        out,
        " {}\" {} {} {} {:.3} ",
        r.protocol,
        r.status,
        r.bytes_in,
        r.bytes_out,
        r.duration.as_secs_f64() * 1e3
    );
    match r.upstream {
        Some(a) => {
            let _ = write!(out, "{a}");
        }
        None => out.push(b'-'),
    }
    match r.upstream_duration {
        Some(d) => {
            let _ = write!(out, " {:.3} ", d.as_secs_f64() * 1e3);
        }
        None => out.extend_from_slice(b" - "),
    }
    text_opt(out, Some(r.listener.as_bytes()));
    out.push(b' ');
    text_opt(out, r.route.map(str::as_bytes));
    out.push(b' ');
    text_opt(out, r.cluster.map(str::as_bytes));
    out.push(b' ');
    text_opt(out, Some(r.flags.as_bytes()));
    if r.plaintext {
        out.extend_from_slice(b" plaintext");
    }
    // gRPC calls only: one more field, `grpc=<status>`.
    if let Some(g) = r.grpc_status {
        let _ = write!(out, " grpc={g}");
    }
    out.push(b'\n');
}

fn text_opt(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => out.push(b'-'),
        Some([]) => out.push(b'-'),
        Some(v) => {
            for &b in v {
                if b.is_ascii_graphic() && b != b'"' && b != b'%' {
                    out.push(b);
                } else {
                    let _ = write!(out, "%{b:02X}");
                }
            }
        }
    }
}

/// RFC 3339 UTC with milliseconds: `2026-11-27T23:10:00.123Z`.
pub fn write_time(out: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    );
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (the well-known era-based conversion).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record<'static> {
        Record {
            start: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_820_400_123),
            request_id: Some(b"id \"1\""),
            client: "127.0.0.1:5000".parse().unwrap(),
            method: Some("GET"),
            authority: Some("example.com"),
            path: Some("/a?b=c"),
            protocol: "HTTP/1.1",
            status: 200,
            bytes_in: 10,
            bytes_out: 20,
            duration: Duration::from_micros(1500),
            upstream: Some("127.0.0.1:9000".parse().unwrap()),
            upstream_duration: Some(Duration::from_micros(1200)),
            listener: "public",
            route: Some("api"),
            cluster: Some("c"),
            flags: "-",
            peer_identity: None,
            trace: None,
            upstream_connect: None,
            upstream_tls: None,
            upstream_first_byte: None,
            grpc_status: None,
            grpc_message: None,
            plaintext: false,
        }
    }

    #[test]
    fn time_is_rfc3339() {
        let mut out = Vec::new();
        write_time(&mut out, record().start);
        assert_eq!(out, b"2026-11-27T23:00:00.123Z");
        out.clear();
        write_time(
            &mut out,
            SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400),
        );
        assert_eq!(out, b"2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn json_line_parses_with_every_field() {
        let mut out = Vec::new();
        write_json(&mut out, &record());
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["request_id"], "id \"1\"");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["upstream"], "127.0.0.1:9000");
        assert_eq!(v["route"], "api");
        assert_eq!(v["flags"], "-");
        for k in [
            "start_time",
            "client",
            "method",
            "authority",
            "path",
            "protocol",
            "bytes_in",
            "bytes_out",
            "upstream_duration_ms",
            "listener",
            "cluster",
        ] {
            assert!(!v[k].is_null(), "{k}");
        }
    }

    #[test]
    fn text_line_escapes_values() {
        let mut out = Vec::new();
        write_text(&mut out, &record());
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            "2026-11-27T23:00:00.123Z id%20%221%22 127.0.0.1:5000 \"GET example.com /a?b=c HTTP/1.1\" 200 10 20 1.500 127.0.0.1:9000 1.200 public api c -\n"
        );
    }
}
