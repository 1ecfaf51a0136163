//! A small stub resolver for `discovery = "dns"`: A and AAAA queries over
//! UDP to the configured servers (or `/etc/resolv.conf`'s), answers with
//! their TTLs. Runs on the discovery thread only, never on a worker.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
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
}

/// The nameservers of `/etc/resolv.conf` (port 53).
pub fn system_servers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
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

fn u16_at(m: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*m.get(at)?, *m.get(at + 1)?]))
}

/// Parse an answer to `id`: the addresses of the queried type, with TTLs.
pub fn parse(m: &[u8], id: u16, kind: RecordType) -> Result<Vec<(IpAddr, u32)>, DnsError> {
    if m.len() < 12 || u16_at(m, 0) != Some(id) {
        return Err(DnsError::Malformed);
    }
    match m[3] & 0x0f {
        0 => {}
        3 => return Err(DnsError::NxDomain),
        rc => return Err(DnsError::ServFail(rc)),
    }
    let qd = u16_at(m, 4).ok_or(DnsError::Malformed)?;
    let an = u16_at(m, 6).ok_or(DnsError::Malformed)?;
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(m, at).ok_or(DnsError::Malformed)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        at = skip_name(m, at).ok_or(DnsError::Malformed)?;
        let t = u16_at(m, at).ok_or(DnsError::Malformed)?;
        let ttl = m
            .get(at + 4..at + 8)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(DnsError::Malformed)?;
        let len = usize::from(u16_at(m, at + 8).ok_or(DnsError::Malformed)?);
        let data = m.get(at + 10..at + 10 + len).ok_or(DnsError::Malformed)?;
        at += 10 + len;
        match (t, kind, len) {
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
    }
    Ok(out)
}

/// Look `name` up: each server in turn, `timeout` each.
pub fn lookup(
    name: &str,
    kind: RecordType,
    servers: &[SocketAddr],
    timeout: Duration,
) -> Result<Vec<(IpAddr, u32)>, DnsError> {
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
        let _ = sock.set_read_timeout(Some(timeout));
        let id = fastrand::u16(..);
        if sock.send_to(&query(id, name, kind), server).is_err() {
            last = DnsError::Timeout(server.to_string());
            continue;
        }
        let mut buf = [0u8; 1500];
        loop {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == *server => match parse(&buf[..n], id, kind) {
                    // Another query's answer: keep waiting.
                    Err(DnsError::Malformed) if u16_at(&buf[..n], 0) != Some(id) => continue,
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let got = parse(&a, 7, RecordType::A).unwrap();
        assert_eq!(
            got,
            vec![
                ("10.0.0.1".parse().unwrap(), 30),
                ("10.0.0.2".parse().unwrap(), 30)
            ]
        );
        let mut nx = q.clone();
        nx[3] = 0x83;
        assert_eq!(parse(&nx, 7, RecordType::A), Err(DnsError::NxDomain));
        assert_eq!(parse(&a, 8, RecordType::A), Err(DnsError::Malformed));
    }
}
