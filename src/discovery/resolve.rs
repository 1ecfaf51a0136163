//! Resolving a dns cluster's names: `/etc/hosts` first, then the
//! system's resolver configuration (search domains) or the servers the
//! config names; SRV names by their best priority.

use std::net::SocketAddr;
use std::time::Duration;

use super::error::DiscoveryError;
use super::{dns, hosts};
use crate::upstream::source::{DnsFamily, DnsName, DnsSpec};
use crate::upstream::Found;

/// Look `host` up under each name the search domains give (the name as
/// written only, without them): the first with records of `kind` wins; a
/// name that exists without such records counts as an empty answer.
fn lookup_searching(
    host: &str,
    kind: dns::RecordType,
    servers: &[SocketAddr],
    conf: Option<&dns::ResolvConf>,
) -> Result<Vec<(std::net::IpAddr, u32)>, dns::DnsError> {
    let names = conf.map_or_else(|| vec![host.to_string()], |c| c.candidates(host));
    let mut empty = false;
    let mut last = dns::DnsError::NxDomain;
    for name in &names {
        match dns::lookup(name, kind, servers, Duration::from_secs(1)) {
            Ok(found) if !found.is_empty() => return Ok(found),
            Ok(_) => empty = true,
            Err(e) => last = e,
        }
    }
    if empty {
        Ok(Vec::new())
    } else {
        Err(last)
    }
}

/// The addresses `/etc/hosts` lists for `name` in the cluster's family.
fn listed(hosts: &hosts::Hosts, name: &str, family: DnsFamily) -> Vec<std::net::IpAddr> {
    hosts
        .get(name)
        .unwrap_or(&[])
        .iter()
        .copied()
        .filter(|ip| match family {
            DnsFamily::V4 => ip.is_ipv4(),
            DnsFamily::V6 => ip.is_ipv6(),
            DnsFamily::Auto => true,
        })
        .collect()
}

/// Resolve a dns cluster's names: the set and the shortest TTL.
pub fn resolve(spec: &DnsSpec) -> Result<(Vec<Found>, Duration), DiscoveryError> {
    // The system's servers come with its search domains; servers named
    // in the config are asked for the names as written.
    let system = spec.servers.is_empty().then(dns::ResolvConf::system);
    let servers = system
        .as_ref()
        .map_or_else(|| spec.servers.clone(), |s| s.servers.clone());
    let mut out: Vec<Found> = Vec::new();
    let mut ttl = u32::MAX;
    let hosts = hosts::Hosts::system();
    for name in &spec.names {
        let (host, port, weight, written) = (&name.host, &name.port, name.weight, &name.written);
        if *port == 0 {
            let t = resolve_srv(spec, name, &servers, &hosts, &mut out)?;
            ttl = ttl.min(t);
            continue;
        }
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            name.push(&mut out, SocketAddr::new(ip, *port), written, weight);
            continue;
        }
        // /etc/hosts first (no TTL: the cluster's refresh rate applies); a
        // name listed only in the other family goes on to DNS.
        let listed = listed(&hosts, host, spec.family);
        if !listed.is_empty() {
            for ip in listed {
                name.push(&mut out, SocketAddr::new(ip, *port), written, weight);
            }
            continue;
        }
        let kinds: &[dns::RecordType] = match spec.family {
            DnsFamily::V4 => &[dns::RecordType::A],
            DnsFamily::V6 => &[dns::RecordType::Aaaa],
            DnsFamily::Auto => &[dns::RecordType::A, dns::RecordType::Aaaa],
        };
        let mut any = false;
        let mut last_err = None;
        for kind in kinds {
            match lookup_searching(host, *kind, &servers, system.as_ref()) {
                Ok(records) => {
                    any = true;
                    for (ip, t) in records {
                        ttl = ttl.min(t);
                        name.push(&mut out, SocketAddr::new(ip, *port), written, weight);
                    }
                }
                Err(error) => {
                    last_err = Some(DiscoveryError::Lookup {
                        name: host.clone(),
                        error,
                    })
                }
            }
        }
        if !any {
            return Err(last_err.unwrap_or_else(|| DiscoveryError::NoAddress {
                name: host.clone(),
                what: "no answer",
            }));
        }
    }
    Ok((out, Duration::from_secs(u64::from(ttl.max(1)))))
}

/// Resolve an SRV name into `out`: the records of the best (lowest)
/// priority, each target's addresses with the record's port, the record's
/// weight (0 counts as 1, capped at 1000) as the endpoint's. The shortest
/// TTL seen.
fn resolve_srv(
    spec: &DnsSpec,
    srv: &DnsName,
    servers: &[SocketAddr],
    hosts: &hosts::Hosts,
    out: &mut Vec<Found>,
) -> Result<u32, DiscoveryError> {
    let name = srv.host.as_str();
    let records = dns::lookup_srv(name, servers, Duration::from_secs(1)).map_err(|error| {
        DiscoveryError::Lookup {
            name: name.to_string(),
            error,
        }
    })?;
    let Some(best) = records.iter().map(|r| r.priority).min() else {
        return Err(DiscoveryError::NoAddress {
            name: name.to_string(),
            what: "no SRV records",
        });
    };
    let kinds: &[dns::RecordType] = match spec.family {
        DnsFamily::V4 => &[dns::RecordType::A],
        DnsFamily::V6 => &[dns::RecordType::Aaaa],
        DnsFamily::Auto => &[dns::RecordType::A, dns::RecordType::Aaaa],
    };
    let mut ttl = u32::MAX;
    let mut any = false;
    let mut last_err = None;
    for r in records.iter().filter(|r| r.priority == best) {
        ttl = ttl.min(r.ttl);
        let weight = u32::from(r.weight).clamp(1, 1000);
        let written = format!("{}:{}", r.target, r.port);
        let listed = listed(hosts, &r.target, spec.family);
        let literal = r.target.parse::<std::net::IpAddr>().ok();
        for kind in kinds {
            let found = match literal {
                Some(ip) => Ok(vec![(ip, u32::MAX)]),
                None if !listed.is_empty() => Ok(listed.iter().map(|ip| (*ip, u32::MAX)).collect()),
                None => dns::lookup(&r.target, *kind, servers, Duration::from_secs(1)),
            };
            match found {
                Ok(addrs) => {
                    any |= !addrs.is_empty();
                    for (ip, t) in addrs {
                        ttl = ttl.min(t);
                        srv.push(out, SocketAddr::new(ip, r.port), &written, weight);
                    }
                }
                Err(error) => {
                    last_err = Some(DiscoveryError::Lookup {
                        name: format!("{name}: {}", r.target),
                        error,
                    })
                }
            }
            if literal.is_some() || !listed.is_empty() {
                break;
            }
        }
    }
    if !any {
        return Err(last_err.unwrap_or_else(|| DiscoveryError::NoAddress {
            name: name.to_string(),
            what: "SRV targets have no address",
        }));
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arc_swap::ArcSwap;

    use super::*;
    use crate::discovery::read_file;
    use crate::upstream::Locality;

    /// A DNS server on 127.0.0.1 that knows one name (A 10.1.2.3) and
    /// answers NXDOMAIN for every other; it records the names asked.
    fn one_name_server(known: &'static str) -> (SocketAddr, Arc<ArcSwap<Vec<String>>>) {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = sock.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let asked = Arc::new(ArcSwap::from_pointee(Vec::new()));
        let seen = asked.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let q = &buf[..n];
                let mut at = 12;
                let mut labels = Vec::new();
                while q[at] != 0 {
                    let l = usize::from(q[at]);
                    labels.push(String::from_utf8_lossy(&q[at + 1..at + 1 + l]).to_string());
                    at += 1 + l;
                }
                let name = labels.join(".");
                seen.rcu(|v| {
                    let mut v = Vec::clone(v);
                    v.push(name.clone());
                    v
                });
                let mut r = q[..at + 5].to_vec();
                r[2] = 0x81;
                if name == known {
                    r[3] = 0x80;
                    r[7] = 1;
                    r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 1, 2, 3]);
                } else {
                    r[3] = 0x83;
                }
                let _ = sock.send_to(&r, from);
            }
        });
        (addr, asked)
    }

    #[test]
    fn search_domains_are_tried_in_order() {
        let (server, asked) = one_name_server("api.svc.cluster.local");
        let conf = dns::ResolvConf {
            servers: vec![server],
            search: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            ndots: 5,
        };
        let found = lookup_searching("api", dns::RecordType::A, &[server], Some(&conf));
        assert_eq!(
            found,
            Ok(vec![(
                "10.1.2.3".parse().unwrap_or_else(|e| panic!("{e}")),
                30
            )])
        );
        assert_eq!(
            asked.load().as_slice(),
            ["api.default.svc.cluster.local", "api.svc.cluster.local"]
        );
        // Nowhere: the last error (NXDOMAIN) after every candidate.
        let missing = lookup_searching("nothing", dns::RecordType::A, &[server], Some(&conf));
        assert_eq!(missing, Err(dns::DnsError::NxDomain));
        assert_eq!(asked.load().len(), 5);
        // Servers from the config: the name as written only.
        let written = lookup_searching("api", dns::RecordType::A, &[server], None);
        assert_eq!(written, Err(dns::DnsError::NxDomain));
        assert_eq!(asked.load().last().map(String::as_str), Some("api"));
    }

    /// `localhost` (in every machine's /etc/hosts) resolves from the file
    /// without a query; other names still go to DNS.
    #[test]
    fn hosts_file_comes_first() {
        let listed = hosts::Hosts::system();
        let Some(local) = listed.get("localhost").map(<[_]>::to_vec) else {
            panic!("/etc/hosts has no localhost entry on this machine");
        };
        let (server, asked) = one_name_server("api");
        let spec = DnsSpec {
            names: vec![
                DnsName::new("localhost", 8080, "localhost:8080"),
                DnsName::new("api", 80, "api:80"),
            ],
            refresh: Duration::from_secs(5),
            family: DnsFamily::Auto,
            servers: vec![server],
        };
        let (found, _) = resolve(&spec).unwrap_or_else(|e| panic!("{e}"));
        let mut want: Vec<SocketAddr> = local.iter().map(|ip| SocketAddr::new(*ip, 8080)).collect();
        want.push("10.1.2.3:80".parse().unwrap_or_else(|e| panic!("{e}")));
        let got: Vec<SocketAddr> = found.iter().map(|f| f.address).collect();
        assert_eq!(got, want);
        assert!(
            asked.load().iter().all(|n| n != "localhost"),
            "{:?}",
            asked.load()
        );
    }

    /// Endpoint files and dns names carry zone, region and priority to
    /// the endpoints they give.
    #[test]
    fn localities_reach_the_endpoints() {
        let path = std::env::temp_dir().join(format!("outrigger-eps-{}.json", std::process::id()));
        std::fs::write(
            &path,
            r#"[{"address": "10.0.0.1:80", "zone": "a", "region": "r1"},
                {"address": "10.0.0.2:80", "weight": 2, "priority": 1}]"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let found = read_file(&path).unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_file(&path);
        assert_eq!(found[0].locality, Locality::new("r1", "a"));
        assert_eq!((found[1].weight, found[1].priority), (2, 1));
        let mut name = DnsName::new("10.0.0.3", 80, "10.0.0.3:80");
        name.locality = Locality::new("r2", "c");
        name.priority = 2;
        let spec = DnsSpec {
            names: vec![name],
            refresh: Duration::from_secs(5),
            family: DnsFamily::Auto,
            servers: vec![closed_udp()],
        };
        let (found, _) = resolve(&spec).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (found[0].locality.to_string(), found[0].priority),
            ("r2/c".to_string(), 2)
        );
    }

    /// A UDP address nothing answers on (literal names never ask it).
    fn closed_udp() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap_or_else(|e| panic!("{e}"))
    }
}
