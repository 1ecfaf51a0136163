//! `outrigger iptables`: the nat rules that send a pod's TCP through the
//! sidecar, as iptables-restore input (IPv4 and IPv6) or one nftables
//! table. Printed by default, applied with `--apply`, removed with
//! `--cleanup`. Applying twice leaves one set of rules: the chains are
//! flushed and refilled, and the jumps into them are added only when
//! missing.
//!
//! Outbound (nat OUTPUT): the proxy's own traffic (its UID) and traffic to
//! loopback addresses are left alone, then excluded ports and CIDRs; every
//! other TCP connection is redirected to the outbound listener. Inbound
//! (nat PREROUTING): excluded ports are left alone; the included ports (or
//! all TCP) are redirected to the inbound listener.

use std::fmt::Write as _;
use std::process::{Command, Stdio};

/// What to intercept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub proxy_uid: u32,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<String>,
    /// Empty: every inbound port.
    pub include_inbound_ports: Vec<u16>,
}

const OUT_CHAIN: &str = "OUTRIGGER_OUTPUT";
const IN_CHAIN: &str = "OUTRIGGER_INBOUND";
const NFT_TABLE: &str = "outrigger";

/// IP version of a rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    fn iptables(self) -> &'static str {
        match self {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            IpFamily::V4 => "127.0.0.0/8",
            IpFamily::V6 => "::1/128",
        }
    }

    fn owns(self, cidr: &str) -> bool {
        cidr.contains(':') == (self == IpFamily::V6)
    }
}

impl Rules {
    /// Check the CIDRs (`a.b.c.d/n` or `x::/n`).
    pub fn validate(&self) -> Result<(), String> {
        for c in &self.exclude_outbound_cidrs {
            let (ip, len) = c
                .split_once('/')
                .unwrap_or((c, if c.contains(':') { "128" } else { "32" }));
            let ip: std::net::IpAddr = ip.parse().map_err(|_| format!("\"{c}\" is not a CIDR"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            match len.parse::<u8>() {
                Ok(n) if n <= max => {}
                _ => return Err(format!("\"{c}\": prefix length must be 0..={max}")),
            }
        }
        if self.outbound_port == 0 || self.inbound_port == 0 {
            return Err("ports must be 1..=65535".into());
        }
        Ok(())
    }

    /// iptables-restore input for one family (`--noflush`: only our
    /// chains are declared, hence flushed and refilled).
    pub fn restore(&self, family: IpFamily) -> String {
        let mut s = String::from("*nat\n");
        let _ = writeln!(s, ":{OUT_CHAIN} - [0:0]\n:{IN_CHAIN} - [0:0]");
        let _ = writeln!(
            s,
            "-A {OUT_CHAIN} -m owner --uid-owner {} -j RETURN",
            self.proxy_uid
        );
        let _ = writeln!(s, "-A {OUT_CHAIN} -d {} -j RETURN", family.loopback());
        for p in &self.exclude_outbound_ports {
            let _ = writeln!(s, "-A {OUT_CHAIN} -p tcp --dport {p} -j RETURN");
        }
        for c in self
            .exclude_outbound_cidrs
            .iter()
            .filter(|c| family.owns(c))
        {
            let _ = writeln!(s, "-A {OUT_CHAIN} -d {c} -j RETURN");
        }
        let _ = writeln!(
            s,
            "-A {OUT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        );
        for p in &self.exclude_inbound_ports {
            let _ = writeln!(s, "-A {IN_CHAIN} -p tcp --dport {p} -j RETURN");
        }
        if self.include_inbound_ports.is_empty() {
            let _ = writeln!(
                s,
                "-A {IN_CHAIN} -p tcp -j REDIRECT --to-ports {}",
                self.inbound_port
            );
        } else {
            for p in &self.include_inbound_ports {
                let _ = writeln!(
                    s,
                    "-A {IN_CHAIN} -p tcp --dport {p} -j REDIRECT --to-ports {}",
                    self.inbound_port
                );
            }
        }
        s.push_str("COMMIT\n");
        s
    }

    /// The jumps into our chains (added only when missing).
    fn jumps() -> [(&'static str, &'static str); 2] {
        [("OUTPUT", OUT_CHAIN), ("PREROUTING", IN_CHAIN)]
    }

    /// The nftables form: one `inet` table with both chains.
    pub fn nft(&self) -> String {
        let mut s = String::new();
        // Create-then-delete makes the load idempotent.
        let _ = writeln!(
            s,
            "add table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}"
        );
        let _ = writeln!(s, "table inet {NFT_TABLE} {{");
        let _ = writeln!(
            s,
            "  chain output {{\n    type nat hook output priority -100; policy accept;"
        );
        let _ = writeln!(s, "    meta skuid {} return", self.proxy_uid);
        let _ = writeln!(
            s,
            "    ip daddr 127.0.0.0/8 return\n    ip6 daddr ::1 return"
        );
        if !self.exclude_outbound_ports.is_empty() {
            let _ = writeln!(
                s,
                "    tcp dport {{ {} }} return",
                join(&self.exclude_outbound_ports)
            );
        }
        for c in &self.exclude_outbound_cidrs {
            let fam = if c.contains(':') { "ip6" } else { "ip" };
            let _ = writeln!(s, "    {fam} daddr {c} return");
        }
        let _ = writeln!(
            s,
            "    meta l4proto tcp redirect to :{}\n  }}",
            self.outbound_port
        );
        let _ = writeln!(
            s,
            "  chain prerouting {{\n    type nat hook prerouting priority -100; policy accept;"
        );
        if !self.exclude_inbound_ports.is_empty() {
            let _ = writeln!(
                s,
                "    tcp dport {{ {} }} return",
                join(&self.exclude_inbound_ports)
            );
        }
        if self.include_inbound_ports.is_empty() {
            let _ = writeln!(s, "    meta l4proto tcp redirect to :{}", self.inbound_port);
        } else {
            let _ = writeln!(
                s,
                "    tcp dport {{ {} }} redirect to :{}",
                join(&self.include_inbound_ports),
                self.inbound_port
            );
        }
        s.push_str("  }\n}\n");
        s
    }

    /// Everything `print` shows: what `--apply` runs.
    pub fn script(&self, nft: bool) -> String {
        if nft {
            return format!("# nft -f - <<EOF\n{}EOF\n", self.nft());
        }
        let mut s = String::new();
        for f in [IpFamily::V4, IpFamily::V6] {
            let tool = f.iptables();
            let _ = write!(
                s,
                "# {tool}-restore --noflush <<EOF\n{}EOF\n",
                self.restore(f)
            );
            for (chain, ours) in Self::jumps() {
                let _ = writeln!(
                    s,
                    "{tool} -t nat -C {chain} -p tcp -j {ours} 2>/dev/null || {tool} -t nat -A {chain} -p tcp -j {ours}"
                );
            }
        }
        s
    }

    /// Install the rules.
    pub fn apply(&self, nft: bool) -> Result<(), String> {
        if nft {
            return run("nft", &["-f", "-"], Some(&self.nft()));
        }
        for f in [IpFamily::V4, IpFamily::V6] {
            let tool = f.iptables();
            run(
                &format!("{tool}-restore"),
                &["--noflush"],
                Some(&self.restore(f)),
            )?;
            for (chain, ours) in Self::jumps() {
                let exists = run(
                    tool,
                    &["-t", "nat", "-C", chain, "-p", "tcp", "-j", ours],
                    None,
                )
                .is_ok();
                if !exists {
                    run(
                        tool,
                        &["-t", "nat", "-A", chain, "-p", "tcp", "-j", ours],
                        None,
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// Remove everything `apply` installed (either form); missing pieces are
/// not an error.
pub fn cleanup(nft: bool) -> Result<(), String> {
    if nft {
        let _ = run("nft", &["delete", "table", "inet", NFT_TABLE], None);
        return Ok(());
    }
    for f in [IpFamily::V4, IpFamily::V6] {
        let tool = f.iptables();
        for (chain, ours) in Rules::jumps() {
            while run(
                tool,
                &["-t", "nat", "-D", chain, "-p", "tcp", "-j", ours],
                None,
            )
            .is_ok()
            {}
        }
        for ours in [OUT_CHAIN, IN_CHAIN] {
            let _ = run(tool, &["-t", "nat", "-F", ours], None);
            let _ = run(tool, &["-t", "nat", "-X", ours], None);
        }
    }
    Ok(())
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {tool}: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("{tool}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{tool}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{tool} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            proxy_uid: 1337,
            outbound_port: 15001,
            inbound_port: 15006,
            exclude_outbound_ports: vec![9901],
            exclude_inbound_ports: vec![15006, 9901],
            exclude_outbound_cidrs: vec!["10.96.0.0/12".into(), "fd00::/8".into()],
            include_inbound_ports: vec![],
        }
    }

    #[test]
    fn v4_rules() {
        let r = rules().restore(IpFamily::V4);
        assert!(r.contains("-A OUTRIGGER_OUTPUT -m owner --uid-owner 1337 -j RETURN"));
        assert!(r.contains("-A OUTRIGGER_OUTPUT -d 127.0.0.0/8 -j RETURN"));
        assert!(r.contains("-A OUTRIGGER_OUTPUT -d 10.96.0.0/12 -j RETURN"));
        assert!(!r.contains("fd00::/8"));
        assert!(r.contains("-A OUTRIGGER_OUTPUT -p tcp -j REDIRECT --to-ports 15001"));
        assert!(r.contains("-A OUTRIGGER_INBOUND -p tcp --dport 15006 -j RETURN"));
        assert!(r.contains("-A OUTRIGGER_INBOUND -p tcp -j REDIRECT --to-ports 15006"));
        let v6 = rules().restore(IpFamily::V6);
        assert!(v6.contains("-d ::1/128 -j RETURN") && v6.contains("-d fd00::/8 -j RETURN"));
    }

    #[test]
    fn include_ports_and_nft() {
        let mut r = rules();
        r.include_inbound_ports = vec![8080, 8443];
        assert!(r
            .restore(IpFamily::V4)
            .contains("--dport 8443 -j REDIRECT --to-ports 15006"));
        let n = r.nft();
        assert!(n.contains("meta skuid 1337 return"));
        assert!(n.contains("tcp dport { 8080, 8443 } redirect to :15006"));
        assert!(n.starts_with("add table inet outrigger\ndelete table inet outrigger\n"));
        assert!(rules().validate().is_ok());
        r.exclude_outbound_cidrs = vec!["10.0.0.0/33".into()];
        assert!(r.validate().is_err());
    }
}
