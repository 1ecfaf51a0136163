//! SNI routing without terminating: read the client's ClientHello, take
//! the server name from it, pick the cluster, and relay the connection's
//! bytes untouched (the ClientHello included) to that cluster.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::net::TcpStream;

use crate::deadline::Deadlines;

/// Largest ClientHello read (its handshake message may span records).
const MAX_HELLO: usize = 64 * 1024;

/// A tcp listener's `sni_routes`, compiled.
#[derive(Debug, PartialEq, Eq)]
pub struct SniRouting {
    /// (exact names, `.suffix` wildcards, cluster), in config order.
    routes: Vec<(Vec<String>, Vec<String>, String)>,
    /// How long a client may take to send its ClientHello.
    pub timeout: Duration,
}

impl SniRouting {
    pub fn new(timeout: Duration) -> Self {
        SniRouting {
            routes: Vec::new(),
            timeout,
        }
    }

    /// Route `names` (`a.example.com`, `*.b.example.com`) to `cluster`.
    pub fn add(&mut self, names: &[String], cluster: String) {
        let (mut exact, mut wild) = (Vec::new(), Vec::new());
        for n in names {
            let n = n.to_ascii_lowercase();
            match n.strip_prefix('*') {
                Some(suffix) => wild.push(suffix.to_string()),
                None => exact.push(n),
            }
        }
        self.routes.push((exact, wild, cluster));
    }

    /// The cluster for a server name: the first route that names it
    /// exactly, else the first whose `*.suffix` covers it (one label).
    pub fn pick(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        if let Some((_, _, c)) = self.routes.iter().find(|(e, _, _)| e.contains(&name)) {
            return Some(c);
        }
        let (_, rest) = name.split_once('.')?;
        let suffix = format!(".{rest}");
        self.routes
            .iter()
            .find(|(_, w, _)| w.contains(&suffix))
            .map(|(_, _, c)| c.as_str())
    }
}

/// What the first bytes of a connection say.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// More bytes are needed.
    Incomplete,
    /// A ClientHello, with its server name if it has one.
    Tls(Option<String>),
    /// Not a TLS ClientHello.
    NotTls,
}

/// Parse a ClientHello from the start of a connection's bytes (one or
/// more handshake records).
pub fn parse_hello(buf: &[u8]) -> Hello {
    // Reassemble the handshake message from the records.
    let mut msg = Vec::new();
    let mut at = 0;
    loop {
        if buf.len() < at + 5 {
            return Hello::Incomplete;
        }
        let (kind, major) = (buf[at], buf[at + 1]);
        if kind != 22 || major != 3 {
            return Hello::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([buf[at + 3], buf[at + 4]]));
        if len == 0 || len > 16 * 1024 + 256 {
            return Hello::NotTls;
        }
        if buf.len() < at + 5 + len {
            return Hello::Incomplete;
        }
        msg.extend_from_slice(&buf[at + 5..at + 5 + len]);
        at += 5 + len;
        if msg.len() >= 4 {
            if msg[0] != 1 {
                return Hello::NotTls;
            }
            let body =
                (usize::from(msg[1]) << 16) | (usize::from(msg[2]) << 8) | usize::from(msg[3]);
            if msg.len() >= 4 + body {
                return match server_name(&msg[4..4 + body]) {
                    Some(name) => Hello::Tls(name),
                    None => Hello::NotTls,
                };
            }
        }
    }
}

/// The SNI host name of a ClientHello body; `Some(None)` when it has none,
/// `None` when the body is malformed.
fn server_name(b: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(b);
    r.skip(2 + 32)?; // version, random
    let sid = usize::from(r.u8()?);
    r.skip(sid)?;
    let suites = usize::from(r.u16()?);
    r.skip(suites)?;
    let comp = usize::from(r.u8()?);
    r.skip(comp)?;
    if r.0.is_empty() {
        return Some(None);
    }
    let ext_len = usize::from(r.u16()?);
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = usize::from(exts.u16()?);
        let data = exts.take(len)?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(data);
        let list_len = usize::from(list.u16()?);
        let mut names = Reader(list.take(list_len)?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let n = usize::from(names.u16()?);
            let name = names.take(n)?;
            if name_type == 0 {
                let s = std::str::from_utf8(name).ok()?;
                if s.is_empty()
                    || !s
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
                {
                    return None;
                }
                return Some(Some(s.to_ascii_lowercase()));
            }
        }
        return Some(None);
    }
    Some(None)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(drop)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

/// Read the connection's ClientHello within `timeout`. Returns the bytes
/// read (to be sent on untouched) and what they say; `Err` when the client
/// closed, stalled or sent too much without completing one.
pub async fn read_hello(
    stream: &mut TcpStream,
    timeout: Duration,
    deadlines: &Deadlines,
) -> Result<(BytesMut, Hello), &'static str> {
    let at = Instant::now() + timeout;
    let mut buf = BytesMut::new();
    loop {
        let read = crate::sockio::read_more(stream, std::mem::take(&mut buf), 4096);
        let (res, b) = deadlines.within(at, read).await.map_err(|_| "timeout")?;
        buf = b;
        match res {
            Ok(0) | Err(_) => return Err("closed"),
            Ok(_) => {}
        }
        match parse_hello(&buf) {
            Hello::Incomplete if buf.len() < MAX_HELLO => continue,
            Hello::Incomplete => return Err("ClientHello too large"),
            other => return Ok((buf, other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello, made by rustls, for `name`.
    fn hello(name: &str) -> Vec<u8> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut c = rustls::ClientConnection::new(std::sync::Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        c.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_the_server_name() {
        let h = hello("api.example.com");
        assert_eq!(parse_hello(&h), Hello::Tls(Some("api.example.com".into())));
        // Every prefix is incomplete, never an error.
        for n in 0..h.len() {
            assert_eq!(parse_hello(&h[..n]), Hello::Incomplete, "{n}");
        }
        // An IP address is not sent as SNI.
        assert_eq!(parse_hello(&hello("127.0.0.1")), Hello::Tls(None));
    }

    #[test]
    fn split_records_and_garbage() {
        // The same handshake message split over two records.
        let h = hello("a.b.example.com");
        let msg = &h[5..];
        let (m1, m2) = msg.split_at(40);
        let mut two = Vec::new();
        for part in [m1, m2] {
            two.extend_from_slice(&[22, 3, 1]);
            two.extend_from_slice(&(part.len() as u16).to_be_bytes());
            two.extend_from_slice(part);
        }
        assert_eq!(
            parse_hello(&two),
            Hello::Tls(Some("a.b.example.com".into()))
        );
        assert_eq!(parse_hello(b"GET / HTTP/1.1\r\n\r\n"), Hello::NotTls);
        assert_eq!(parse_hello(&[22, 3, 1, 0, 5, 2, 0, 0, 1, 0]), Hello::NotTls);
    }

    #[test]
    fn routes_by_name() {
        let mut r = SniRouting::new(Duration::from_secs(1));
        r.add(&["a.example.com".into()], "a".into());
        r.add(
            &["*.b.example.com".into(), "b.example.com".into()],
            "b".into(),
        );
        assert_eq!(r.pick("A.example.com"), Some("a"));
        assert_eq!(r.pick("x.b.example.com"), Some("b"));
        assert_eq!(r.pick("b.example.com"), Some("b"));
        assert_eq!(r.pick("x.y.b.example.com"), None);
        assert_eq!(r.pick("c.example.com"), None);
    }
}
