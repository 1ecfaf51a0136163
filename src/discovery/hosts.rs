//! `/etc/hosts` for `discovery = "dns"`: a name listed there resolves to
//! its listed addresses without asking a DNS server, as glibc's
//! (`hosts: files dns`) and Envoy's resolvers do, so `localhost` and names
//! a pod's `hostAliases` add work the same for dns clusters as for static
//! endpoints. Read again at each resolution (the file is small, and
//! Kubernetes rewrites it).

use std::collections::HashMap;
use std::net::IpAddr;

/// The system's hosts file.
pub const SYSTEM: &str = "/etc/hosts";

/// Names to addresses, in file order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Hosts(HashMap<String, Vec<IpAddr>>);

impl Hosts {
    /// Parse hosts(5) text: `ADDRESS NAME [ALIAS...]` per line, `#`
    /// comments; lines whose address does not parse are skipped (as glibc
    /// does). Names compare case-insensitively; a zone index
    /// (`fe80::1%eth0`) is not supported and the line is skipped.
    pub fn parse(text: &str) -> Hosts {
        let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut fields = line.split_whitespace();
            let Some(Ok(ip)) = fields.next().map(str::parse::<IpAddr>) else {
                continue;
            };
            for name in fields {
                let addrs = map.entry(normalize(name)).or_default();
                if !addrs.contains(&ip) {
                    addrs.push(ip);
                }
            }
        }
        Hosts(map)
    }

    /// The machine's, or none when it cannot be read.
    pub fn system() -> Hosts {
        Hosts::parse(&std::fs::read_to_string(SYSTEM).unwrap_or_default())
    }

    /// The addresses listed for `name` (trailing dot ignored), if any.
    pub fn get(&self, name: &str) -> Option<&[IpAddr]> {
        self.0.get(&normalize(name)).map(Vec::as_slice)
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lines() {
        let h = Hosts::parse(
            "127.0.0.1\tlocalhost\n\
             ::1 localhost ip6-localhost # loopback\n\
             # 10.0.0.1 commented\n\
             10.1.2.3 Orders.Shop.svc orders\n\
             10.1.2.4 orders\n\
             not-an-ip broken\n\
             fe80::1%eth0 zoned\n\
             127.0.0.1 localhost\n",
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.get("localhost"), Some(&[ip("127.0.0.1"), ip("::1")][..]));
        assert_eq!(h.get("LOCALHOST."), h.get("localhost"));
        assert_eq!(h.get("orders.shop.svc"), Some(&[ip("10.1.2.3")][..]));
        assert_eq!(h.get("orders"), Some(&[ip("10.1.2.3"), ip("10.1.2.4")][..]));
        assert_eq!(h.get("commented"), None);
        assert_eq!(h.get("broken"), None);
        assert_eq!(h.get("zoned"), None);
        assert_eq!(Hosts::parse(""), Hosts::default());
    }
}
