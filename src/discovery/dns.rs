//! A small stub resolver for `discovery = "dns"`: A, AAAA and SRV queries
//! over UDP to the configured servers (or `/etc/resolv.conf`'s), again
//! over TCP when the UDP answer is truncated (RFC 7766), answers with their
//! TTLs. Runs on the discovery thread only, never on a worker.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

/// Why a lookup gave no addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("no such name (NXDOMAIN)")]
    NxDomain,
    #[error("server failure (rcode {0})")]
    ServFail(u8),
    #[error("no answer from {0}")]
    Timeout(String),
    #[error("malformed answer")]
    Malformed,
    #[error("no DNS server configured")]
    NoServer,
}

/// Record types queried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    A = 1,
    Aaaa = 28,
    Srv = 33,
}

/// One SRV record (RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
    pub ttl: u32,
}

/// What `/etc/resolv.conf` says: nameservers (port 53), search domains
/// and `options ndots:N` (default 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub servers: Vec<SocketAddr>,
    pub search: Vec<String>,
    pub ndots: usize,
}

impl ResolvConf {
    /// Parse resolv.conf(5) text: `nameserver`, `search` and `domain`
    /// (the last of the two wins), `options ndots:N` (capped at 15).
    pub fn parse(text: &str) -> ResolvConf {
        let mut c = ResolvConf {
            servers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                        c.servers.push(SocketAddr::new(ip, 53));
                    }
                }
                Some("search" | "domain") => {
                    c.search = words
                        .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
                        .filter(|d| !d.is_empty())
                        .collect();
                }
                Some("options") => {
                    for o in words {
                        if let Some(n) = o
                            .strip_prefix("ndots:")
                            .and_then(|n| n.parse::<usize>().ok())
                        {
                            c.ndots = n.min(15);
                        }
                    }
                }
                _ => {}
            }
        }
        c
    }

    /// The machine's (`/etc/resolv.conf`).
    pub fn system() -> ResolvConf {
        ResolvConf::parse(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
    }

    /// The names to try for `host`, in order, as the system resolver does:
    /// with at least `ndots` dots the name as written first, then with each
    /// search domain appended; with fewer, the search domains first. A
    /// name ending in `.` is only tried as written.
    pub fn candidates(&self, host: &str) -> Vec<String> {
        if let Some(absolute) = host.strip_suffix('.') {
            return vec![absolute.to_string()];
        }
        let searched = self.search.iter().map(|d| format!("{host}.{d}"));
        if host.matches('.').count() >= self.ndots {
            std::iter::once(host.to_string()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(host.to_string())).collect()
        }
    }
}

fn query(id: u16, name: &str, kind: RecordType) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len().min(63) as u8);
        q.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    q.push(0);
    q.extend_from_slice(&(kind as u16).to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

/// Skip a (possibly compressed) name at `at`; the offset after it.
fn skip_name(m: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *m.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return Some(at + 2),
            l => at += 1 + usize::from(l),
        }
    }
}

/// Read a (possibly compressed) name at `at`, as dotted text.
fn read_name(m: &[u8], mut at: usize) -> Option<String> {
    let mut out = String::new();
    // Bounded: a message cannot hold more labels than bytes, and pointer
    // loops are cut.
    for _ in 0..128 {
        let len = *m.get(at)?;
        match len {
            0 => return Some(out),
            l if l & 0xc0 == 0xc0 => {
                at = usize::from(u16_at(m, at)? & 0x3fff);
            }
            l => {
                let label = m.get(at + 1..at + 1 + usize::from(l))?;
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(std::str::from_utf8(label).ok()?);
                at += 1 + usize::from(l);
            }
        }
    }
    None
}

/// Parse an answer to `id` (a query for `name`'s SRV records) for them;
/// records owned by another name are ignored.
pub fn parse_srv(m: &[u8], id: u16, name: &str) -> Result<Vec<Srv>, DnsError> {
    let mut out = Vec::new();
    for_each_answer(m, id, name, RecordType::Srv, |t, ttl, owner, at, data| {
        if t == RecordType::Srv as u16 && data.len() > 6 && same_name(&owner, name) {
            let target = read_name(m, at + 6).ok_or(DnsError::Malformed)?;
            out.push(Srv {
                priority: u16::from_be_bytes([data[0], data[1]]),
                weight: u16::from_be_bytes([data[2], data[3]]),
                port: u16::from_be_bytes([data[4], data[5]]),
                target,
                ttl,
            });
        }
        Ok(())
    })?;
    Ok(out)
}

/// DNS names compare case-insensitively, with or without the final dot.
fn same_name(a: &str, b: &str) -> bool {
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

/// Walk the answers of a reply to `id`, a query for `name` and `kind`:
/// (type, TTL, owner name, offset of the data, data) of each. The reply
/// must be a response (QR) with the one question asked; anything else is
/// `Malformed` (a spoofed or stray datagram).
fn for_each_answer(
    m: &[u8],
    id: u16,
    name: &str,
    kind: RecordType,
    mut f: impl FnMut(u16, u32, String, usize, &[u8]) -> Result<(), DnsError>,
) -> Result<(), DnsError> {
    if m.len() < 12 || u16_at(m, 0) != Some(id) || m[2] & 0x80 == 0 {
        return Err(DnsError::Malformed);
    }
    let qd = u16_at(m, 4).ok_or(DnsError::Malformed)?;
    let an = u16_at(m, 6).ok_or(DnsError::Malformed)?;
    if qd != 1 {
        return Err(DnsError::Malformed);
    }
    let question = read_name(m, 12).ok_or(DnsError::Malformed)?;
    let mut at = skip_name(m, 12).ok_or(DnsError::Malformed)?;
    let (qtype, qclass) = (u16_at(m, at), u16_at(m, at + 2));
    if !same_name(&question, name) || qtype != Some(kind as u16) || qclass != Some(1) {
        return Err(DnsError::Malformed);
    }
    at += 4;
    match m[3] & 0x0f {
        0 => {}
        3 => return Err(DnsError::NxDomain),
        rc => return Err(DnsError::ServFail(rc)),
    }
    for _ in 0..an {
        let owner = read_name(m, at).ok_or(DnsError::Malformed)?;
        at = skip_name(m, at).ok_or(DnsError::Malformed)?;
        let t = u16_at(m, at).ok_or(DnsError::Malformed)?;
        let ttl = m
            .get(at + 4..at + 8)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(DnsError::Malformed)?;
        let len = usize::from(u16_at(m, at + 8).ok_or(DnsError::Malformed)?);
        let data = m.get(at + 10..at + 10 + len).ok_or(DnsError::Malformed)?;
        f(t, ttl, owner, at + 10, data)?;
        at += 10 + len;
    }
    Ok(())
}

fn u16_at(m: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*m.get(at)?, *m.get(at + 1)?]))
}

/// Parse an answer to `id` (a query for `name` and `kind`): the addresses
/// of the queried type, with TTLs. Only records owned by `name`, or by a
/// name a CNAME earlier in the answer leads to from it, count.
pub fn parse(
    m: &[u8],
    id: u16,
    name: &str,
    kind: RecordType,
) -> Result<Vec<(IpAddr, u32)>, DnsError> {
    let mut out = Vec::new();
    let mut names = vec![name.trim_end_matches('.').to_string()];
    for_each_answer(m, id, name, kind, |t, ttl, owner, at, data| {
        if !names.iter().any(|n| same_name(n, &owner)) {
            return Ok(());
        }
        match (t, kind, data.len()) {
            // CNAME: the chain goes on at its target (bounded by the
            // answer's own size).
            (5, _, _) if names.len() < 16 => {
                names.push(read_name(m, at).ok_or(DnsError::Malformed)?);
            }
            (1, RecordType::A, 4) => out.push((
                IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
                ttl,
            )),
            (28, RecordType::Aaaa, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                out.push((IpAddr::V6(Ipv6Addr::from(b)), ttl));
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(out)
}

/// Look `name` up: each server in turn, `timeout` each.
pub fn lookup(
    name: &str,
    kind: RecordType,
    servers: &[SocketAddr],
    timeout: Duration,
) -> Result<Vec<(IpAddr, u32)>, DnsError> {
    ask(name, kind, servers, timeout, |m, id| {
        parse(m, id, name, kind)
    })
}

/// Look up the SRV records of `name`.
pub fn lookup_srv(
    name: &str,
    servers: &[SocketAddr],
    timeout: Duration,
) -> Result<Vec<Srv>, DnsError> {
    ask(name, RecordType::Srv, servers, timeout, |m, id| {
        parse_srv(m, id, name)
    })
}

/// Send the query to each server in turn and parse the first answer.
fn ask<T>(
    name: &str,
    kind: RecordType,
    servers: &[SocketAddr],
    timeout: Duration,
    parse: impl Fn(&[u8], u16) -> Result<Vec<T>, DnsError>,
) -> Result<Vec<T>, DnsError> {
    if servers.is_empty() {
        return Err(DnsError::NoServer);
    }
    let mut last = DnsError::NoServer;
    for server in servers {
        let bind: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .unwrap_or(*server);
        let Ok(sock) = UdpSocket::bind(bind) else {
            continue;
        };
        // One deadline for the whole query: stray datagrams cannot stretch
        // it (each read waits only for what is left).
        let deadline = std::time::Instant::now() + timeout;
        let id = fastrand::u16(..);
        if sock.send_to(&query(id, name, kind), server).is_err() {
            last = DnsError::Timeout(server.to_string());
            continue;
        }
        let mut buf = [0u8; 1500];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
                last = DnsError::Timeout(server.to_string());
                break;
            }
            match sock.recv_from(&mut buf) {
                // Truncated (TC): the whole answer over TCP.
                Ok((n, from))
                    if from == *server
                        && n >= 12
                        && u16_at(&buf[..n], 0) == Some(id)
                        && buf[2] & 0x02 != 0 =>
                {
                    match ask_tcp(*server, name, kind, timeout, &parse) {
                        Err(e @ DnsError::NxDomain) => return Err(e),
                        Err(e) => {
                            last = e;
                            break;
                        }
                        Ok(v) => return Ok(v),
                    }
                }
                Ok((n, from)) if from == *server => match parse(&buf[..n], id) {
                    // Another query's answer, or not an answer to this
                    // question: keep waiting (until the deadline).
                    Err(DnsError::Malformed) => continue,
                    Err(e @ DnsError::NxDomain) => return Err(e),
                    Err(e) => {
                        last = e;
                        break;
                    }
                    Ok(v) => return Ok(v),
                },
                Ok(_) => continue,
                Err(_) => {
                    last = DnsError::Timeout(server.to_string());
                    break;
                }
            }
        }
    }
    Err(last)
}

/// One query over TCP (two-byte length prefixes), `timeout` for the
/// connect and for the whole exchange.
fn ask_tcp<T>(
    server: SocketAddr,
    name: &str,
    kind: RecordType,
    timeout: Duration,
    parse: impl Fn(&[u8], u16) -> Result<Vec<T>, DnsError>,
) -> Result<Vec<T>, DnsError> {
    let gone = |_| DnsError::Timeout(format!("{server} (tcp)"));
    let mut s = TcpStream::connect_timeout(&server, timeout).map_err(gone)?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let id = fastrand::u16(..);
    let q = query(id, name, kind);
    let mut framed = Vec::with_capacity(q.len() + 2);
    framed.extend_from_slice(&(q.len() as u16).to_be_bytes());
    framed.extend_from_slice(&q);
    s.write_all(&framed).map_err(gone)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).map_err(gone)?;
    let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut m).map_err(gone)?;
    parse(&m, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_search_domains_and_ndots() {
        let k8s = ResolvConf::parse(
            "# kubelet\nnameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:2\n",
        );
        assert_eq!(k8s.servers, vec!["10.96.0.10:53".parse().unwrap()]);
        assert_eq!(k8s.ndots, 5);
        assert_eq!(
            k8s.candidates("api"),
            [
                "api.default.svc.cluster.local",
                "api.svc.cluster.local",
                "api.cluster.local",
                "api"
            ]
        );
        // Enough dots: as written first.
        assert_eq!(k8s.candidates("a.b.c.d.e.f")[0], "a.b.c.d.e.f");
        // Absolute: only as written.
        assert_eq!(k8s.candidates("api.example.com."), ["api.example.com"]);
        let plain = ResolvConf::parse("nameserver 1.1.1.1\ndomain corp.example\n");
        assert_eq!(plain.ndots, 1);
        assert_eq!(plain.candidates("db"), ["db.corp.example", "db"]);
        assert_eq!(
            plain.candidates("db.internal"),
            ["db.internal", "db.internal.corp.example"]
        );
    }

    #[test]
    fn srv_answers_with_compressed_targets() {
        let q = query(9, "_http._tcp.svc.example", RecordType::Srv);
        let mut a = q.clone();
        a[2] = 0x81;
        a[3] = 0x80;
        a[7] = 2;
        // Target written out: api.svc.example (at offset `first`).
        a.extend_from_slice(&[0xc0, 12, 0, 33, 0, 1, 0, 0, 0, 30]);
        let rdata = [0u8, 1, 0, 5, 0x1f, 0x90, 3, b'a', b'p', b'i', 0xc0, 23];
        a.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        let first = a.len() + 6;
        a.extend_from_slice(&rdata);
        // Second target: "b" then a pointer to the first one's "api...".
        a.extend_from_slice(&[0xc0, 12, 0, 33, 0, 1, 0, 0, 0, 60]);
        let mut rdata2 = vec![0u8, 2, 0, 0, 0, 80, 1, b'b'];
        rdata2.extend_from_slice(&[0xc0, first as u8]);
        a.extend_from_slice(&(rdata2.len() as u16).to_be_bytes());
        a.extend_from_slice(&rdata2);
        let got = parse_srv(&a, 9, "_http._tcp.svc.example").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].priority, got[0].weight, got[0].port), (1, 5, 8080));
        assert_eq!(got[0].target, "api.svc.example");
        assert_eq!(got[0].ttl, 30);
        assert_eq!(got[1].target, "b.api.svc.example");
        // A pointer loop is malformed, not a hang.
        let mut looped = q.clone();
        looped[7] = 1;
        looped[3] = 0x80;
        looped.extend_from_slice(&[0xc0, 12, 0, 33, 0, 1, 0, 0, 0, 1, 0, 8, 0, 0, 0, 0, 0, 80]);
        let at = looped.len();
        looped.extend_from_slice(&[0xc0, at as u8]);
        assert_eq!(
            parse_srv(&looped, 9, "_http._tcp.svc.example"),
            Err(DnsError::Malformed)
        );
    }

    /// A stream of junk from the server's address (wrong ids, answers to
    /// other questions) cannot keep a lookup waiting past its one
    /// deadline: it ends while the junk still flows.
    #[test]
    fn junk_datagrams_do_not_stretch_the_deadline() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let junk = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let Ok((_, client)) = server.recv_from(&mut buf) else {
                return;
            };
            let started = std::time::Instant::now();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(10)
            {
                let mut reply = query(fastrand::u16(..), "other.example", RecordType::A);
                reply[2] = 0x81;
                let _ = server.send_to(&reply, client);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let started = std::time::Instant::now();
        let got = lookup(
            "api.example",
            RecordType::A,
            &[addr],
            Duration::from_millis(300),
        );
        let waited = started.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = junk.join();
        assert!(matches!(got, Err(DnsError::Timeout(_))), "{got:?}");
        // The junk would have flowed for 10 s.
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }

    #[test]
    fn answers() {
        // A query, then an answer with a compressed name and two A records.
        let q = query(7, "api.example.com", RecordType::A);
        let mut a = q.clone();
        a[2] = 0x81;
        a[3] = 0x80;
        a[7] = 2; // ancount
        for ip in [[10, 0, 0, 1], [10, 0, 0, 2]] {
            a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
            a.extend_from_slice(&ip);
        }
        let got = parse(&a, 7, "api.example.com", RecordType::A).unwrap();
        assert_eq!(
            got,
            vec![
                ("10.0.0.1".parse().unwrap(), 30),
                ("10.0.0.2".parse().unwrap(), 30)
            ]
        );
        let mut nx = q.clone();
        nx[2] = 0x81;
        nx[3] = 0x83;
        assert_eq!(
            parse(&nx, 7, "api.example.com", RecordType::A),
            Err(DnsError::NxDomain)
        );
        assert_eq!(
            parse(&a, 8, "api.example.com", RecordType::A),
            Err(DnsError::Malformed)
        );
        // An answer to another question, or not a response at all.
        assert_eq!(
            parse(&a, 7, "evil.example.com", RecordType::A),
            Err(DnsError::Malformed)
        );
        assert_eq!(
            parse(&a, 7, "api.example.com", RecordType::Aaaa),
            Err(DnsError::Malformed)
        );
        let mut not_response = a.clone();
        not_response[2] = 0x01;
        assert_eq!(
            parse(&not_response, 7, "api.example.com", RecordType::A),
            Err(DnsError::Malformed)
        );
        // Records owned by another name are ignored; a CNAME chain from
        // the question's name is followed.
        let mut other = q.clone();
        other[2] = 0x81;
        other[3] = 0x80;
        other[7] = 3;
        // evil.example.com A 6.6.6.6 (owner written out).
        other.extend_from_slice(b"\x04evil\x07example\x03com\x00");
        other.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 6, 6, 6, 6]);
        // api.example.com CNAME web.example.com
        other.extend_from_slice(&[
            0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 30, 0, 6, 3, b'w', b'e', b'b', 0xc0, 16,
        ]);
        // web.example.com A 10.0.0.9
        other.extend_from_slice(b"\x03web\x07example\x03com\x00");
        other.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 0, 0, 9]);
        let got = parse(&other, 7, "api.example.com", RecordType::A).unwrap();
        assert_eq!(got, vec![("10.0.0.9".parse().unwrap(), 30)]);
    }
}
