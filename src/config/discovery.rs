//! Compiling `discovery = "dns"` and `discovery = "file"` clusters: their
//! source, and the endpoints discovery last found for it.

use std::net::SocketAddr;
use std::time::Duration;

use serde_spanned::Spanned;

use super::ctx::Ctx;
use super::file::{FileCluster, FileEndpoint};
use crate::discovery::{DnsFamily, DnsName, DnsSpec, Found, Source};
use crate::upstream::locality::MAX_PRIORITY;
use crate::upstream::Locality;

pub(super) fn source(
    cx: &mut Ctx<'_>,
    key: &str,
    name: &str,
    c: &Spanned<FileCluster>,
) -> Option<(Source, Vec<Found>)> {
    let f = c.get_ref();
    let kind = f.discovery.as_ref().map(|d| d.get_ref().as_str());
    if kind != Some("xds") {
        if let Some(e) = &f.eds_service_name {
            cx.error(
                e.span(),
                format!("{key}.eds_service_name"),
                "only for discovery = \"xds\"",
            );
            return None;
        }
    }
    let source = if kind == Some("xds") {
        if let Some(e) = &f.endpoints {
            cx.error(
                e.span(),
                format!("{key}.endpoints"),
                "an xds cluster takes its endpoints from EDS",
            );
            return None;
        }
        let Some(server) = cx.xds_server.clone() else {
            cx.error(
                c.span(),
                format!("{key}.discovery"),
                "discovery = \"xds\" needs an [xds] management server",
            );
            return None;
        };
        Source::Xds {
            service: f
                .eds_service_name
                .as_ref()
                .map_or_else(|| name.to_string(), |s| s.get_ref().clone()),
            server,
        }
    } else if kind == Some("file") {
        if let Some(e) = &f.endpoints {
            cx.error(
                e.span(),
                format!("{key}.endpoints"),
                "a file cluster takes its endpoints from endpoints_file",
            );
            return None;
        }
        let Some(path) = &f.endpoints_file else {
            cx.error(
                c.span(),
                format!("{key}.endpoints_file"),
                "discovery = \"file\" needs endpoints_file",
            );
            return None;
        };
        Source::File(cx.path(path.get_ref()))
    } else {
        let Some(list) = f.endpoints.as_ref().filter(|e| !e.get_ref().is_empty()) else {
            cx.error(
                c.span(),
                format!("{key}.endpoints"),
                "discovery = \"dns\" needs endpoints (host:port names)",
            );
            return None;
        };
        let mut names = Vec::new();
        for ep in list.get_ref() {
            let written = ep.get_ref().address().to_string();
            let (weight, locality, priority) = entry(cx, key, ep)?;
            let parsed = written
                .rsplit_once(':')
                .and_then(|(h, p)| {
                    Some((
                        h.trim_start_matches('[').trim_end_matches(']').to_string(),
                        p.parse::<u16>().ok()?,
                    ))
                })
                .filter(|(h, _)| !h.is_empty())
                // An SRV name (`_service._proto.name`): ports from its records.
                .or_else(|| {
                    (written.starts_with('_') && !written.contains(':'))
                        .then(|| (written.trim_end_matches('.').to_string(), 0))
                });
            let Some((host, port)) = parsed else {
                cx.error(
                    ep.span(),
                    format!("{key}.endpoints"),
                    format!(
                        "invalid endpoint \"{written}\": expected host:port, or an SRV name (_service._proto.name)"
                    ),
                );
                return None;
            };
            names.push(DnsName {
                host,
                port,
                written,
                weight,
                locality,
                priority,
            });
        }
        let family = match f
            .dns_family
            .as_ref()
            .map(|v| (v.get_ref().as_str(), v.span()))
        {
            None | Some(("auto", _)) => DnsFamily::Auto,
            Some(("v4", _)) => DnsFamily::V4,
            Some(("v6", _)) => DnsFamily::V6,
            Some((other, span)) => {
                cx.error(
                    span,
                    format!("{key}.dns_family"),
                    format!("must be \"auto\", \"v4\" or \"v6\", not \"{other}\""),
                );
                return None;
            }
        };
        let mut servers = Vec::new();
        for s in f.dns_servers.iter().flatten() {
            let v = s.get_ref();
            let parsed = v.parse::<SocketAddr>().ok().or_else(|| {
                v.parse::<std::net::IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match parsed {
                Some(a) => servers.push(a),
                None => {
                    cx.error(
                        s.span(),
                        format!("{key}.dns_servers"),
                        format!("\"{v}\" is not an IP address or ip:port"),
                    );
                    return None;
                }
            }
        }
        Source::Dns(DnsSpec {
            names,
            refresh: f.dns_refresh.map_or(Duration::from_secs(5), |d| d.0),
            family,
            servers,
        })
    };
    let mut found = crate::discovery::last_known(&crate::discovery::key(name, &source));
    // A file is local: read it now, so a first start serves at once (a
    // broken or missing file starts empty; discovery reports it).
    if let (true, Source::File(path)) = (found.is_empty(), &source) {
        found = crate::discovery::read_file(path).unwrap_or_default();
    }
    Some((source, found))
}

/// One `endpoints` entry's weight, locality and priority (an error for
/// each bad value is recorded).
pub(super) fn entry(
    cx: &mut Ctx<'_>,
    key: &str,
    ep: &Spanned<FileEndpoint>,
) -> Option<(u32, Locality, u32)> {
    let FileEndpoint::Weighted(w) = ep.get_ref() else {
        return Some((1, Locality::default(), 0));
    };
    let weight = match w.weight {
        None => 1,
        Some(v @ 1..=1000) => v as u32,
        Some(v) => {
            cx.error(
                ep.span(),
                format!("{key}.endpoints"),
                format!("weight must be from 1 to 1000, not {v}"),
            );
            return None;
        }
    };
    let priority = match w.priority {
        None => 0,
        Some(p) if (0..=i64::from(MAX_PRIORITY)).contains(&p) => p as u32,
        Some(p) => {
            cx.error(
                ep.span(),
                format!("{key}.endpoints"),
                format!("priority must be from 0 to {MAX_PRIORITY}, not {p}"),
            );
            return None;
        }
    };
    let locality = Locality::new(
        w.region.clone().unwrap_or_default(),
        w.zone.clone().unwrap_or_default(),
    );
    Some((weight, locality, priority))
}
