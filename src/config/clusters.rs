//! Compiling `[clusters.NAME]`: endpoints (static, or from discovery),
//! balancing, resilience and TLS settings.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use serde_spanned::Spanned;

use super::ctx::{Ctx, DEFAULT_CONNECT_TIMEOUT};
use super::file::FileNode;
use super::file::{FileCluster, FileConfig, FileEndpoint};
use crate::metrics::ClusterStats;
use crate::upstream::balance::{HashOn, Plan};
use crate::upstream::{Cluster, Endpoint, Found, Locality, LocalityMode, UpstreamProtocol};

pub(super) fn compile_clusters(cx: &mut Ctx<'_>, f: &FileConfig) -> BTreeMap<String, Cluster> {
    let mut out = BTreeMap::new();
    for (name, c) in &f.clusters {
        let key = format!("clusters.{}", name.get_ref());
        if let Some(cluster) = compile_cluster(cx, &key, name.get_ref(), c) {
            out.insert(name.get_ref().clone(), cluster);
        }
    }
    out
}

fn compile_cluster(
    cx: &mut Ctx<'_>,
    key: &str,
    name: &str,
    c: &Spanned<FileCluster>,
) -> Option<Cluster> {
    let c_ref = c.get_ref();
    let (dynamic, original_destination) = discovery(cx, key, name, c)?;
    let no_endpoints = Vec::new();
    let listed = c_ref
        .endpoints
        .as_ref()
        .map_or(&no_endpoints, |e| e.get_ref());
    // Every part is compiled (each error reported) before any failure
    // ends the cluster.
    let endpoints = match &dynamic {
        Some((_, found)) => Some(
            found
                .iter()
                .map(|f| Endpoint::found(f, cx.workers))
                .collect(),
        ),
        None => static_endpoints(cx, key, listed),
    };
    let hash_on = hash_on(cx, key, c_ref);
    let resilience = super::resilience::cluster(cx, key, c_ref);
    let protocol = upstream_protocol(cx, key, c_ref, original_destination);
    let mut ok = endpoints.is_some() && hash_on.is_some() && protocol.is_some();
    let protocol = protocol.unwrap_or(UpstreamProtocol::Http1);
    let alpn_default: &[&str] = match protocol {
        UpstreamProtocol::Http1 => &[],
        UpstreamProtocol::Http2 => &["h2"],
        UpstreamProtocol::Auto | UpstreamProtocol::Downstream => &["h2", "http/1.1"],
    };
    let tls = match &c_ref.tls {
        Some(t) => match super::tls::cluster_tls(cx, key, t, alpn_default) {
            Some(t) => Some(t),
            None => {
                ok = false;
                None
            }
        },
        None => None,
    };
    if !ok {
        return None;
    }
    let (Some(mut endpoints), Some(hash_on)) = (endpoints, hash_on) else {
        return None;
    };
    let mut resilience = resilience?;
    grpc_health_check(cx, key, c_ref, &mut resilience, protocol, tls.is_some())?;
    let max_ring_size = c_ref
        .max_ring_size
        .unwrap_or(crate::upstream::balance::DEFAULT_RING_MAX)
        .clamp(1024, 1 << 23);
    let locality = locality_mode(cx, key, c_ref, original_destination)?;
    let levels = crate::upstream::locality::arrange(
        &mut endpoints,
        locality,
        &cx.node,
        c_ref.balance,
        max_ring_size,
    );
    let ids: Vec<(String, u32)> = endpoints
        .iter()
        .map(|e| (e.address.to_string(), e.weight))
        .collect();
    Some(Cluster {
        name: name.to_string(),
        plan: Plan::new(c_ref.balance, &ids, max_ring_size),
        locality,
        node: cx.node.clone(),
        levels,
        hash_on,
        endpoints,
        balance: c_ref.balance,
        connect_timeout: c_ref
            .connect_timeout
            .map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0),
        max_idle_connections: c_ref.max_idle_connections.unwrap_or(64).min(1 << 20) as usize,
        max_ring_size,
        pool_idle_timeout: c_ref.idle_timeout.map_or(Duration::from_secs(30), |d| d.0),
        stats: Arc::new(ClusterStats::new(cx.workers)),
        retry_budget: resilience.retry_budget,
        breaker: resilience.breaker,
        outlier: resilience.outlier,
        health_check: resilience.health_check,
        tls,
        protocol,
        original_destination,
        source: dynamic.map_or(crate::discovery::Source::Static, |(s, _)| s),
        status: Arc::default(),
    })
}

/// `discovery`: where the endpoints come from (dns, file and xds clusters:
/// what discovery last found, empty at first start; nothing is resolved
/// now) and whether the cluster is original_destination; with the checks
/// that `endpoints` is there exactly when it has to be.
#[allow(clippy::type_complexity)]
fn discovery(
    cx: &mut Ctx<'_>,
    key: &str,
    name: &str,
    c: &Spanned<FileCluster>,
) -> Option<(Option<(crate::discovery::Source, Vec<Found>)>, bool)> {
    let c_ref = c.get_ref();
    let discovery = c_ref
        .discovery
        .as_ref()
        .map(|d| (d.get_ref().as_str(), d.span()));
    // dns and file clusters: endpoints from what discovery last found
    // (empty at first start); nothing is resolved now.
    let dynamic = match discovery {
        Some(("dns" | "file" | "xds", _)) => Some(super::discovery::source(cx, key, name, c)?),
        _ => None,
    };
    let original_destination = match discovery {
        None | Some(("static", _)) | Some(("dns" | "file" | "xds", _)) => false,
        Some(("original_destination", _)) => true,
        Some((other, span)) => {
            cx.error(
                span,
                format!("{key}.discovery"),
                format!("must be \"static\", \"dns\", \"file\", \"xds\" or \"original_destination\", not \"{other}\""),
            );
            return None;
        }
    };
    match (&c_ref.endpoints, original_destination) {
        _ if dynamic.is_some() => {}
        (Some(e), true) if !e.get_ref().is_empty() => {
            cx.error(
                e.span(),
                format!("{key}.endpoints"),
                "an original_destination cluster has no endpoints: each connection goes where it was sent",
            );
            return None;
        }
        (Some(e), false) if e.get_ref().is_empty() => {
            cx.error(
                e.span(),
                format!("{key}.endpoints"),
                "a cluster needs at least one endpoint",
            );
            return None;
        }
        (None, false) => {
            cx.error(
                c.span(),
                format!("{key}.endpoints"),
                "a cluster needs `endpoints` (or discovery = \"original_destination\")",
            );
            return None;
        }
        _ => {}
    }
    Some((dynamic, original_destination))
}

/// Static endpoints: each entry resolved (host names once, now), deduped
/// by address; `None` once every bad entry is reported.
fn static_endpoints(
    cx: &mut Ctx<'_>,
    key: &str,
    listed: &[Spanned<FileEndpoint>],
) -> Option<Vec<Endpoint>> {
    let mut endpoints = Vec::new();
    // Dedup in O(n): a cluster can hold 10^5 endpoints (xDS, files).
    let mut seen = std::collections::HashSet::new();
    let mut ok = true;
    for ep in listed {
        let Some((weight, locality, priority)) = super::discovery::entry(cx, key, ep) else {
            ok = false;
            continue;
        };
        let written = ep.get_ref().address();
        match resolve_endpoint(written) {
            Ok(addrs) => {
                for address in addrs {
                    if seen.insert(address) {
                        let found = Found {
                            address,
                            written: written.to_string(),
                            weight,
                            locality: locality.clone(),
                            priority,
                        };
                        endpoints.push(Endpoint::found(&found, cx.workers));
                    }
                }
            }
            Err(msg) => {
                cx.error(ep.span(), format!("{key}.endpoints"), msg);
                ok = false;
            }
        }
    }
    ok.then_some(endpoints)
}

/// `hash_on`: only with a hashing balancer.
fn hash_on(cx: &mut Ctx<'_>, key: &str, c: &FileCluster) -> Option<HashOn> {
    match &c.hash_on {
        Some(h) if !c.balance.hashes() => {
            cx.error(
                h.span(),
                format!("{key}.hash_on"),
                "only used with balance = \"ring_hash\" or \"maglev\"",
            );
            None
        }
        Some(h) => HashOn::parse(h.get_ref())
            .map_err(|msg| cx.error(h.span(), format!("{key}.hash_on"), msg))
            .ok(),
        None => Some(HashOn::default()),
    }
}

/// `protocol`: what to speak to the endpoints (`downstream` by default for
/// original_destination clusters).
fn upstream_protocol(
    cx: &mut Ctx<'_>,
    key: &str,
    c: &FileCluster,
    original_destination: bool,
) -> Option<UpstreamProtocol> {
    match c.protocol.as_ref().map(|p| (p, p.get_ref().as_str())) {
        None if original_destination => Some(UpstreamProtocol::Downstream),
        None | Some((_, "http1")) => Some(UpstreamProtocol::Http1),
        Some((_, "http2")) => Some(UpstreamProtocol::Http2),
        Some((_, "auto")) => Some(UpstreamProtocol::Auto),
        Some((_, "downstream")) => Some(UpstreamProtocol::Downstream),
        Some((p, other)) => {
            cx.error(
                p.span(),
                format!("{key}.protocol"),
                format!(
                    "must be \"http1\", \"http2\", \"auto\" or \"downstream\", not \"{other}\""
                ),
            );
            None
        }
    }
}

/// An http check of the gRPC health method's path is a gRPC health check
/// (`health_check = { path = "/grpc.health.v1.Health/Check" }`); gRPC
/// health checking is HTTP/2, so a cluster that never speaks it to its
/// endpoints (which would fail every probe) is an error.
fn grpc_health_check(
    cx: &mut Ctx<'_>,
    key: &str,
    c: &FileCluster,
    resilience: &mut super::resilience::ClusterResilience,
    protocol: UpstreamProtocol,
    tls: bool,
) -> Option<()> {
    use crate::resilience::{HealthProtocol, GRPC_HEALTH_PATH};
    let Some(h) = &mut resilience.health_check else {
        return Some(());
    };
    if h.protocol == HealthProtocol::Http && h.path == GRPC_HEALTH_PATH {
        h.protocol = HealthProtocol::Grpc;
    }
    let speaks_h2 = match protocol {
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::Auto | UpstreamProtocol::Downstream => tls,
        UpstreamProtocol::Http1 => false,
    };
    if h.protocol != HealthProtocol::Grpc || speaks_h2 {
        return Some(());
    }
    let span = c
        .health_check
        .as_ref()
        .and_then(|h| {
            let h = h.get_ref();
            h.protocol.as_ref().or(h.path.as_ref()).map(|p| p.span())
        })
        .unwrap_or(0..0);
    cx.error(
        span,
        format!("{key}.health_check.protocol"),
        "a grpc health check needs HTTP/2 to the endpoints: set the cluster's protocol = \"http2\" (or \"auto\" with tls)",
    );
    None
}

/// `[node]`, with the environment's `OUTRIGGER_REGION` / `OUTRIGGER_ZONE`
/// over it.
pub(super) fn node(f: &FileConfig) -> Locality {
    let node = f.node.as_ref().map(|n| n.get_ref());
    let part = |get: fn(&FileNode) -> &Option<Spanned<String>>| {
        node.and_then(|n| get(n).as_ref())
            .map(|v| v.get_ref().as_str())
    };
    Locality::of_node(part(|n| &n.region), part(|n| &n.zone))
}

/// `locality`: `"off"` (default) or `"prefer_local"` (a proxy without a
/// `[node]` locality is warned by `Snapshot::warnings`).
fn locality_mode(
    cx: &mut Ctx<'_>,
    key: &str,
    c: &FileCluster,
    original_destination: bool,
) -> Option<LocalityMode> {
    let Some(v) = &c.locality else {
        return Some(LocalityMode::Off);
    };
    let mode = match LocalityMode::parse(v.get_ref()) {
        Ok(m) => m,
        Err(msg) => {
            cx.error(v.span(), format!("{key}.locality"), msg);
            return None;
        }
    };
    if original_destination && mode != LocalityMode::Off {
        cx.error(
            v.span(),
            format!("{key}.locality"),
            "an original_destination cluster has no endpoints to prefer among",
        );
        return None;
    }
    Some(mode)
}

/// `host:port` → addresses. Literal IPs skip the resolver.
fn resolve_endpoint(s: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("invalid endpoint \"{s}\": expected host:port"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!(
            "invalid endpoint \"{s}\": expected host:port with a port from 0 to 65535"
        ));
    }
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve endpoint \"{s}\": {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("endpoint \"{s}\" resolved to no address"));
    }
    Ok(addrs)
}
