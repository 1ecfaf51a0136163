//! One health probe of one endpoint, in the protocol its cluster speaks:
//! a TCP connect (and TLS handshake), `GET path` over HTTP/1.1 or HTTP/2,
//! or `grpc.health.v1.Health/Check` over HTTP/2. A failed probe says why,
//! for the log line that takes the endpoint out of rotation.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use monoio::net::TcpStream;

use super::UpstreamProtocol;
use crate::http::h2::upstream::Transport;
use crate::http::upconn::UpConn;
use crate::resilience::{HealthCheck, HealthProtocol, GRPC_HEALTH_PATH};
use crate::tls::ClusterTls;

/// Why a probe failed (logged when it takes the endpoint out of rotation).
#[derive(Debug, thiserror::Error)]
pub(super) enum ProbeFailure {
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("the endpoint did not agree to HTTP/2 (ALPN), which gRPC needs")]
    NoHttp2,
    #[error("status {status}, expected one of {expected:?}")]
    Status { status: u16, expected: Vec<u16> },
    /// A read or write on the connection, and what it was for.
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("closed without answering")]
    Closed,
    #[error("not an HTTP/1.x response: {0:?}")]
    NotHttp(String),
    /// An HTTP/2 step, and the codec's error.
    #[error("{0}: {1}")]
    Http2(&'static str, String),
    #[error("answer body over {MAX_BODY} bytes")]
    TooLarge,
    #[error("gRPC health check answered HTTP status {0}")]
    GrpcHttpStatus(u16),
    #[error("gRPC health check failed: grpc-status {0} ({1})")]
    GrpcStatus(String, &'static str),
    #[error("gRPC health check ended without a grpc-status")]
    NoGrpcStatus,
    #[error("gRPC health status {0} for service {1:?}")]
    NotServing(&'static str, String),
    #[error("gRPC health check answer is not a HealthCheckResponse")]
    NotHealthResponse,
}

/// What the probe needs of its endpoint and cluster.
pub(super) struct Target<'a> {
    pub addr: SocketAddr,
    /// `Host` / `:authority`.
    pub host: &'a str,
    pub tls: Option<(Arc<ClusterTls>, rustls::pki_types::ServerName<'static>)>,
    pub protocol: UpstreamProtocol,
}

/// Probe once, within the check's `timeout`. A cluster with `tls` is
/// probed over TLS (the handshake is part of the check, as Envoy does).
pub(super) async fn probe(check: &HealthCheck, target: Target<'_>) -> Result<(), ProbeFailure> {
    match monoio::time::timeout(check.timeout, attempt(check, target)).await {
        Ok(r) => r,
        Err(_) => Err(ProbeFailure::Timeout(check.timeout)),
    }
}

async fn attempt(check: &HealthCheck, target: Target<'_>) -> Result<(), ProbeFailure> {
    let stream = TcpStream::connect_addr(target.addr)
        .await
        .map_err(ProbeFailure::Connect)?;
    let _ = stream.set_nodelay(true);
    let conn = match target.tls {
        Some((t, name)) => UpConn::Tls(Box::new(
            crate::tls::connect(stream, &t, name)
                .await
                .map_err(ProbeFailure::Tls)?,
        )),
        None => UpConn::Plain(stream),
    };
    if check.protocol == HealthProtocol::Tcp {
        return Ok(());
    }
    // HTTP/2 where the cluster speaks it: prior knowledge for `http2`,
    // ALPN's choice over TLS.
    let h2 = match (&conn, target.protocol) {
        (_, UpstreamProtocol::Http2) => true,
        (UpConn::Tls(t), UpstreamProtocol::Auto | UpstreamProtocol::Downstream) => {
            t.conn.alpn_protocol() == Some(b"h2")
        }
        _ => false,
    };
    let scheme = if matches!(conn, UpConn::Tls(_)) {
        "https"
    } else {
        "http"
    };
    match check.protocol {
        HealthProtocol::Grpc if !h2 => Err(ProbeFailure::NoHttp2),
        HealthProtocol::Grpc => {
            let uri = format!("{scheme}://{}{GRPC_HEALTH_PATH}", target.host);
            grpc(check, conn, &uri).await
        }
        _ if h2 => {
            let uri = format!("{scheme}://{}{}", target.host, check.path);
            let req = http::Request::get(uri).header("user-agent", "outrigger-health-check");
            let got = h2_exchange(check.timeout, conn, req, None).await?;
            expect_status(check, got.status)
        }
        _ => http1(check, conn, target.host).await,
    }
}

fn expect_status(check: &HealthCheck, status: u16) -> Result<(), ProbeFailure> {
    if check.expected_statuses.contains(&status) {
        Ok(())
    } else {
        Err(ProbeFailure::Status {
            status,
            expected: check.expected_statuses.clone(),
        })
    }
}

/// `GET path` over HTTP/1.1; the status line is all that is read.
async fn http1(check: &HealthCheck, mut conn: UpConn, host: &str) -> Result<(), ProbeFailure> {
    let request = format!(
        "GET {} HTTP/1.1\r\nhost: {host}\r\nuser-agent: outrigger-health-check\r\nconnection: close\r\n\r\n",
        check.path
    );
    // This runtime's own deadlines (never swept: the whole probe is
    // bounded by the timeout around it).
    let deadlines = crate::deadline::Deadlines::default();
    conn.write_all(request.into(), &deadlines, check.timeout)
        .await
        .map_err(|e| ProbeFailure::Io("sending the request", e))?;
    let mut head = BytesMut::new();
    while head.len() < 12 {
        let (res, buf) = conn.read_more(std::mem::take(&mut head), 1024).await;
        head = buf;
        match res {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(ProbeFailure::Io("reading the response", e)),
        }
    }
    match status_of(&head) {
        Some(s) => expect_status(check, s),
        None if head.is_empty() => Err(ProbeFailure::Closed),
        None => Err(ProbeFailure::NotHttp(
            String::from_utf8_lossy(&head[..head.len().min(32)]).into_owned(),
        )),
    }
}

/// `grpc.health.v1.Health/Check`: healthy when the call ends with
/// grpc-status 0 and the answer's status is SERVING (1).
async fn grpc(check: &HealthCheck, conn: UpConn, uri: &str) -> Result<(), ProbeFailure> {
    let req = http::Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "outrigger-health-check");
    let got = h2_exchange(
        check.timeout,
        conn,
        req,
        Some(health_request(&check.service)),
    )
    .await?;
    if got.status != 200 {
        return Err(ProbeFailure::GrpcHttpStatus(got.status));
    }
    match got.grpc_status.as_deref() {
        Some("0") => {}
        Some(code) => {
            let name = code.parse::<u8>().map_or("?", |c| crate::grpc::name(c));
            return Err(ProbeFailure::GrpcStatus(code.to_string(), name));
        }
        None => return Err(ProbeFailure::NoGrpcStatus),
    }
    match serving_status(&got.body) {
        Some(1) => Ok(()),
        Some(s) => Err(ProbeFailure::NotServing(
            match s {
                0 => "UNKNOWN",
                2 => "NOT_SERVING",
                3 => "SERVICE_UNKNOWN",
                _ => "unrecognised",
            },
            check.service.clone(),
        )),
        None => Err(ProbeFailure::NotHealthResponse),
    }
}

/// A gRPC message holding `HealthCheckRequest { service }` (field 1, a
/// string), with its 5-byte frame prefix.
fn health_request(service: &str) -> Bytes {
    let mut msg = Vec::with_capacity(service.len() + 8);
    if !service.is_empty() {
        msg.push(0x0a);
        let mut n = service.len();
        while n >= 0x80 {
            msg.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        msg.push(n as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut framed = Vec::with_capacity(msg.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    framed.into()
}

/// `HealthCheckResponse.status` (field 1, an enum) from one uncompressed
/// gRPC message; absent means 0 (UNKNOWN), as in proto3.
fn serving_status(body: &[u8]) -> Option<u64> {
    let mut b = body;
    if b.len() < 5 || b[0] != 0 {
        return None;
    }
    let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
    b.advance(5);
    let mut msg = b.get(..len)?;
    let mut status = 0;
    while !msg.is_empty() {
        let key = varint(&mut msg)?;
        match key & 7 {
            0 => {
                let v = varint(&mut msg)?;
                if key >> 3 == 1 {
                    status = v;
                }
            }
            2 => {
                let n = usize::try_from(varint(&mut msg)?).ok()?;
                msg = msg.get(n..)?;
            }
            5 => msg = msg.get(4..)?,
            1 => msg = msg.get(8..)?,
            _ => return None,
        }
    }
    Some(status)
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let byte = *b.first()?;
        *b = &b[1..];
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// What an HTTP/2 probe got back.
struct H2Answer {
    status: u16,
    grpc_status: Option<String>,
    body: Vec<u8>,
}

/// Largest probe answer body read (a health answer is a few bytes).
const MAX_BODY: usize = 64 * 1024;

/// One request on a new HTTP/2 connection, closed afterwards.
async fn h2_exchange(
    limit: std::time::Duration,
    conn: UpConn,
    req: http::request::Builder,
    body: Option<Bytes>,
) -> Result<H2Answer, ProbeFailure> {
    let io = Transport::from(conn)
        .into_io()
        .map_err(|e| ProbeFailure::Io("connection", e))?;
    let (send, driver) = h2::client::handshake(io)
        .await
        .map_err(|e| ProbeFailure::Http2("HTTP/2 handshake", e.to_string()))?;
    // The connection's task ends with the exchange, or at the probe's
    // timeout when the peer holds it open: never outlives the probe long.
    let task = monoio::spawn(async move {
        let _ = monoio::time::timeout(limit, driver).await;
    });
    let result = async {
        let mut send = send
            .ready()
            .await
            .map_err(|e| ProbeFailure::Http2("HTTP/2", e.to_string()))?;
        let req = req
            .version(http::Version::HTTP_2)
            .body(())
            .map_err(|e| ProbeFailure::Http2("request", e.to_string()))?;
        let (response, mut stream) = send
            .send_request(req, body.is_none())
            .map_err(|e| ProbeFailure::Http2("HTTP/2 request", e.to_string()))?;
        if let Some(b) = body {
            stream
                .send_data(b, true)
                .map_err(|e| ProbeFailure::Http2("HTTP/2 request body", e.to_string()))?;
        }
        let response = response
            .await
            .map_err(|e| ProbeFailure::Http2("HTTP/2 response", e.to_string()))?;
        let status = response.status().as_u16();
        let mut grpc_status = header(response.headers(), "grpc-status");
        let mut recv = response.into_body();
        let mut body = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk =
                chunk.map_err(|e| ProbeFailure::Http2("HTTP/2 response body", e.to_string()))?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            if body.len() + chunk.len() > MAX_BODY {
                return Err(ProbeFailure::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        if let Ok(Some(t)) = recv.trailers().await {
            grpc_status = grpc_status.or_else(|| header(&t, "grpc-status"));
        }
        Ok(H2Answer {
            status,
            grpc_status,
            body,
        })
    }
    .await;
    drop(task);
    result
}

fn header(h: &http::HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The status code of an HTTP/1.x status line.
fn status_of(head: &[u8]) -> Option<u16> {
    let rest = head
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| head.strip_prefix(b"HTTP/1.0 "))?;
    let digits = rest.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_of(b"HTTP/1.0 503 x"), Some(503));
        assert_eq!(status_of(b"HTTP/2 200"), None);
        assert_eq!(status_of(b"HTTP/1.1 2x0"), None);
    }

    #[test]
    fn health_messages() {
        assert_eq!(&health_request("")[..], b"\0\0\0\0\0");
        assert_eq!(&health_request("svc")[..], b"\0\0\0\0\x05\x0a\x03svc");
        let long = "s".repeat(200);
        let framed = health_request(&long);
        assert_eq!(&framed[5..8], &[0x0a, 0xc8, 0x01]);
        assert_eq!(framed.len(), 5 + 3 + 200);
        assert_eq!(serving_status(b"\0\0\0\0\x02\x08\x01"), Some(1));
        assert_eq!(serving_status(b"\0\0\0\0\x02\x08\x02"), Some(2));
        // proto3: an empty message is status 0 (UNKNOWN).
        assert_eq!(serving_status(b"\0\0\0\0\0"), Some(0));
        // Unknown fields are skipped.
        assert_eq!(serving_status(b"\0\0\0\0\x06\x12\x02hi\x08\x01"), Some(1));
        // Compressed, truncated or malformed: not an answer.
        assert_eq!(serving_status(b"\x01\0\0\0\x02\x08\x01"), None);
        assert_eq!(serving_status(b"\0\0\0\0\x05\x08"), None);
        assert_eq!(serving_status(b"\0\0\0"), None);
        assert_eq!(serving_status(b"\0\0\0\0\x01\x0f"), None);
    }
}
