//! `compile()`: TOML text → validated [`Snapshot`]. Collects every error it
//! can find instead of stopping at the first, and never panics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_spanned::Spanned;

use super::ctx::{parse_listen_address, Ctx};
use super::error::{ConfigErrors, SourceMap};
use super::file::{FileConfig, FileListener, Protocol};
use super::{HttpSettings, Listener, ListenerProtocol, RuntimeSettings, Snapshot};
use crate::metrics::ListenerStats;

/// Default `[admin] address`.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9901";
/// Default `max_connections` per listener.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;
/// Default `idle_timeout` of a tcp listener (Envoy's tcp_proxy uses 1h too).
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default `idle_timeout` of an http listener (keep-alive).
pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `runtime.buffer_size`.
pub const DEFAULT_BUFFER_SIZE: u64 = 64 * 1024;
/// Default `runtime.buffer_pool_size`.
pub const DEFAULT_BUFFER_POOL_SIZE: u64 = 1024;
/// Default `backlog` of a listener socket.
pub const DEFAULT_BACKLOG: u64 = 1024;
pub use super::ctx::DEFAULT_CONNECT_TIMEOUT;
/// Default `runtime.drain_timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
pub use super::observe::{DEFAULT_ACCESS_LOG_BUFFER, DEFAULT_ACCESS_LOG_FLUSH};

/// Compile config text read from `file` (used in messages only).
pub fn compile(file: &Path, text: &str) -> Result<Snapshot, ConfigErrors> {
    let map = SourceMap::new(text);
    let (parsed, mut parse_errors) = match super::parse::parse(file, &map, text) {
        Ok(f) => (f, Vec::new()),
        // The rest of the file, without the entries in error: its semantic
        // errors are reported in the same run.
        Err(super::parse::ParseFailure {
            errors,
            rest: Some(f),
        }) => (*f, errors),
        Err(failure) => return Err(ConfigErrors(failure.errors)),
    };
    let runtime = compile_runtime(&parsed);
    let mut cx = Ctx::new(file, map, runtime.worker_count());
    cx.identity_written = parsed.identity.is_some();
    cx.node = super::clusters::node(&parsed);
    cx.identity = parsed
        .identity
        .as_ref()
        .and_then(|i| super::tls::identity(&mut cx, i));
    let xds = parsed
        .xds
        .as_ref()
        .and_then(|x| super::xds::compile(&mut cx, x));
    cx.xds_server = xds.as_ref().map(|x| x.address.clone());
    let admin = super::admin::compile_admin(&mut cx, &parsed.admin);
    let metrics = super::admin::compile_metrics(&mut cx, parsed.metrics.as_ref());
    let clusters = super::clusters::compile_clusters(&mut cx, &parsed);
    let route_tables = super::routes::compile_tables(&mut cx, &parsed);
    let listeners = compile_listeners(&mut cx, &parsed);
    let access_log = parsed
        .access_log
        .as_ref()
        .and_then(|a| super::observe::compile_access_log(&mut cx, a));
    let tracing = parsed
        .tracing
        .as_ref()
        .and_then(|t| super::observe::compile_tracing(&mut cx, t));
    if cx.failed() || !parse_errors.is_empty() {
        parse_errors.extend(cx.take_errors());
        parse_errors.sort_by_key(|e| e.position);
        return Err(ConfigErrors(parse_errors));
    }
    let material_hash = super::material_hash(&cx.material);
    Ok(Snapshot {
        tracing: tracing.map(Arc::new),
        xds,
        node: cx.node.clone(),
        identity: cx.identity.clone(),
        material: cx.material.clone(),
        material_hash,
        source: file.to_path_buf(),
        generation: 1,
        loaded_at: std::time::SystemTime::now(),
        text: text.to_string(),
        access_log,
        content_hash: fnv1a(text.as_bytes()),
        runtime,
        admin,
        metrics,
        listeners,
        clusters: clusters
            .into_iter()
            .map(|(k, v)| (k, Arc::new(v)))
            .collect(),
        route_tables: route_tables
            .into_iter()
            .map(|(k, v)| (k, Arc::new(v)))
            .collect(),
    })
}

fn compile_runtime(f: &FileConfig) -> RuntimeSettings {
    RuntimeSettings {
        buffer_size: f.runtime.buffer_size.unwrap_or(DEFAULT_BUFFER_SIZE) as usize,
        buffer_pool_size: f
            .runtime
            .buffer_pool_size
            .unwrap_or(DEFAULT_BUFFER_POOL_SIZE)
            .min(1 << 20) as usize,
        max_heap_bytes: f.runtime.max_heap_bytes,
        overload_memory_percent: f.runtime.overload_memory_percent.unwrap_or(85).min(100),
        workers: f.runtime.workers,
        io: f.runtime.io,
        pin_workers: f.runtime.pin_workers,
        drain_timeout: f
            .runtime
            .drain_timeout
            .map_or(DEFAULT_DRAIN_TIMEOUT, |d| d.0),
        drain_inbound_delay: f
            .runtime
            .drain_inbound_delay
            .map_or(Duration::ZERO, |d| d.0),
        exit_when_idle: f
            .runtime
            .drain
            .as_ref()
            .and_then(|d| d.exit_when_idle)
            .unwrap_or(true),
    }
}

fn compile_listeners(cx: &mut Ctx<'_>, f: &FileConfig) -> Vec<Listener> {
    let mut out = Vec::new();
    let mut seen: HashMap<SocketAddr, String> = HashMap::new();
    for (name, l) in &f.listeners {
        let key = format!("listeners.{}", name.get_ref());
        let Some(listener) = compile_listener(cx, f, &key, name.get_ref(), l.get_ref()) else {
            continue;
        };
        if listener.address.port() != 0 {
            if let Some(other) = seen.get(&listener.address) {
                cx.error(
                    l.get_ref().address.span(),
                    format!("{key}.address"),
                    format!(
                        "address {} is already used by listener \"{other}\"",
                        listener.address
                    ),
                );
                continue;
            }
            seen.insert(listener.address, name.get_ref().clone());
        }
        out.push(listener);
    }
    out
}

fn compile_listener(
    cx: &mut Ctx<'_>,
    f: &FileConfig,
    key: &str,
    name: &str,
    l: &FileListener,
) -> Option<Listener> {
    let address = match parse_listen_address(l.address.get_ref()) {
        Ok(a) => Some(a),
        Err(msg) => {
            cx.error(l.address.span(), format!("{key}.address"), msg);
            None
        }
    };
    let protocol = match *l.protocol.get_ref() {
        Protocol::Tcp => tcp_target(cx, f, key, l),
        Protocol::Http => http_target(cx, f, key, l),
        Protocol::Auto => auto_target(cx, f, key, l),
    };
    let default_idle = match l.protocol.get_ref() {
        Protocol::Tcp => DEFAULT_TCP_IDLE_TIMEOUT,
        Protocol::Http | Protocol::Auto => DEFAULT_HTTP_IDLE_TIMEOUT,
    };
    let http2 = match l.protocol.get_ref() {
        Protocol::Http | Protocol::Auto => {
            super::http2::compile(cx, key, l.http2.as_ref(), l.max_connection_age)
        }
        Protocol::Tcp => None,
    };
    let tls = l.tls.as_ref().and_then(|t| {
        let alpn_default: &[&str] = match (l.protocol.get_ref(), &http2) {
            (Protocol::Http | Protocol::Auto, Some(_)) => &["h2", "http/1.1"],
            (Protocol::Http | Protocol::Auto, None) => &["http/1.1"],
            (Protocol::Tcp, _) => &[],
        };
        super::tls::listener_tls(cx, key, t, alpn_default)
    });
    if l.tls.is_some() && tls.is_none() {
        return None;
    }
    if let (Some(t), Some(p)) = (
        &tls,
        l.tls.as_ref().and_then(|t| t.get_ref().plaintext.as_ref()),
    ) {
        if t.plaintext_permitted && *l.protocol.get_ref() != Protocol::Auto {
            cx.error(
                p.span(),
                format!("{key}.tls.plaintext"),
                "plaintext = \"permit\" needs protocol = \"auto\" (which tells TLS from plaintext); this listener only speaks TLS",
            );
            return None;
        }
    }
    let paths = path_policy(cx, key, l, tls.as_ref().is_some_and(|t| t.verifies_clients))?;
    let rate_limit = l
        .rate_limit
        .as_ref()
        .and_then(|r| {
            r.get_ref()
                .connections_per_second
                .map(|n| (n, r.get_ref().burst))
        })
        .map(|(n, burst)| {
            Arc::new(crate::resilience::RateLimiter::new(
                n,
                burst.unwrap_or((n / 10).max(1)),
            ))
        });
    Some(Listener {
        inbound: l.inbound.unwrap_or(false),
        original_destination: l.original_destination.unwrap_or(false),
        rate_limit,
        tls,
        authz: super::tls::authz(cx, key, &l.allow_identities, &l.deny_identities)?,
        stats: Arc::new(ListenerStats::new(cx.workers)),
        name: name.to_string(),
        address: address?,
        protocol: protocol?,
        max_connections: l.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
        idle_timeout: l.idle_timeout.map_or(default_idle, |d| d.0),
        splice: l.splice.unwrap_or_default(),
        splice_pipe_size: l
            .splice_pipe_size
            .map_or(crate::snapshot::DEFAULT_SPLICE_PIPE_SIZE, |n| n as usize),
        backlog: l.backlog.unwrap_or(DEFAULT_BACKLOG).min(65_535) as u32,
        http: HttpSettings {
            max_request_header_bytes: l
                .max_request_header_bytes
                .unwrap_or(64 * 1024)
                .min(16 * 1024 * 1024) as usize,
            max_headers: l.max_headers.unwrap_or(100).min(10_000) as usize,
            header_timeout: l.header_timeout.map_or(Duration::from_secs(10), |d| d.0),
            max_request_body_bytes: l.max_request_body_bytes,
            upstream_read_timeout: l
                .upstream_read_timeout
                .map_or(Duration::from_secs(60), |d| d.0),
            request_body_timeout: l
                .request_body_timeout
                .map_or(Duration::from_secs(60), |d| d.0),
            send_timeout: l.send_timeout.map_or(Duration::from_secs(60), |d| d.0),
            http2,
            paths,
            sni_host_match: l.sni_host_match.unwrap_or(false),
        },
    })
}

/// `merge_slashes` and `path_escaped_slashes`: strict by default where
/// clients are verified (identity-based authorization depends on the path
/// meaning one thing).
fn path_policy(
    cx: &mut Ctx<'_>,
    key: &str,
    l: &FileListener,
    verifies_clients: bool,
) -> Option<crate::snapshot::PathPolicy> {
    use crate::snapshot::{EscapedSlashes, PathPolicy};
    let escaped_slashes = match l
        .path_escaped_slashes
        .as_ref()
        .map(|v| (v.get_ref().as_str(), v.span()))
    {
        None if verifies_clients => EscapedSlashes::Reject,
        None => EscapedSlashes::Keep,
        Some(("reject", _)) => EscapedSlashes::Reject,
        Some(("keep", _)) => EscapedSlashes::Keep,
        Some((other, span)) => {
            cx.error(
                span,
                format!("{key}.path_escaped_slashes"),
                format!("must be \"reject\" or \"keep\", not \"{other}\""),
            );
            return None;
        }
    };
    Some(PathPolicy {
        merge_slashes: l.merge_slashes.unwrap_or(verifies_clients),
        escaped_slashes,
    })
}

fn tcp_target(
    cx: &mut Ctx<'_>,
    f: &FileConfig,
    key: &str,
    l: &FileListener,
) -> Option<ListenerProtocol> {
    if let Some(r) = &l.routes {
        cx.error(
            r.span(),
            format!("{key}.routes"),
            "a tcp listener cannot have routes; use `cluster`, or set protocol = \"http\"",
        );
        return None;
    }
    let known = |c: &Spanned<String>, cx: &mut Ctx<'_>, k: &str| {
        let ok = f.clusters.keys().any(|n| n.get_ref() == c.get_ref());
        if !ok {
            cx.error(
                c.span(),
                k.to_string(),
                format!(
                    "no cluster named \"{}\" (define [clusters.{}])",
                    c.get_ref(),
                    c.get_ref()
                ),
            );
        }
        ok
    };
    let mut ok = true;
    let sni = match &l.sni_routes {
        None => None,
        Some(routes) => {
            if let Some(t) = &l.tls {
                cx.error(
                    t.span(),
                    format!("{key}.tls"),
                    "sni_routes pass TLS through untouched; a listener cannot also terminate it",
                );
                ok = false;
            }
            let timeout = l.sni_read_timeout.map_or(Duration::from_secs(5), |d| d.0);
            let mut sni = crate::tls::sni::SniRouting::new(timeout);
            for r in routes {
                let r_ref = r.get_ref();
                ok &= known(&r_ref.cluster, cx, &format!("{key}.sni_routes.cluster"));
                if r_ref.server_names.is_empty() {
                    cx.error(
                        r.span(),
                        format!("{key}.sni_routes"),
                        "server_names must name at least one host",
                    );
                    ok = false;
                }
                let names: Vec<String> = r_ref
                    .server_names
                    .iter()
                    .map(|n| n.get_ref().clone())
                    .collect();
                sni.add(&names, r_ref.cluster.get_ref().clone());
            }
            Some(Arc::new(sni))
        }
    };
    let cluster = match &l.cluster {
        Some(c) => {
            ok &= known(c, cx, &format!("{key}.cluster"));
            Some(c.get_ref().clone())
        }
        None if sni.is_some() => None,
        None => {
            cx.error(
                l.protocol.span(),
                format!("{key}.cluster"),
                "a tcp listener needs `cluster`: the cluster to forward connections to",
            );
            return None;
        }
    };
    // TLS on both sides of a tcp listener, or SNI routing into a cluster
    // that originates TLS, would need a TLS-to-TLS relay.
    let has_tls = |name: &str| {
        f.clusters
            .iter()
            .any(|(n, c)| n.get_ref() == name && c.get_ref().tls.is_some())
    };
    if let (Some(t), Some(c)) = (&l.tls, &cluster) {
        if has_tls(c) {
            cx.error(
                t.span(),
                format!("{key}.tls"),
                format!("a tcp listener with tls cannot forward to cluster \"{c}\", which has tls too (TLS to TLS is not relayed)"),
            );
            ok = false;
        }
    }
    if let Some(routes) = &l.sni_routes {
        for r in routes {
            if has_tls(r.get_ref().cluster.get_ref()) {
                cx.error(
                    r.get_ref().cluster.span(),
                    format!("{key}.sni_routes.cluster"),
                    "sni_routes pass the client's TLS through; their clusters cannot have tls",
                );
                ok = false;
            }
        }
    }
    ok.then_some(ListenerProtocol::Tcp { cluster, sni })
}

fn http_target(
    cx: &mut Ctx<'_>,
    f: &FileConfig,
    key: &str,
    l: &FileListener,
) -> Option<ListenerProtocol> {
    if let Some(c) = &l.cluster {
        cx.error(
            c.span(),
            format!("{key}.cluster"),
            "an http listener routes with `routes`, not `cluster`; add a route table whose routes name the cluster",
        );
        return None;
    }
    let Some(routes) = &l.routes else {
        cx.error(
            l.protocol.span(),
            format!("{key}.routes"),
            "an http listener needs `routes`: the name of a [[routes.NAME]] table",
        );
        return None;
    };
    if !f.routes.keys().any(|k| k.get_ref() == routes.get_ref()) {
        cx.error(
            routes.span(),
            format!("{key}.routes"),
            format!(
                "no route table named \"{}\" (define [[routes.{}]])",
                routes.get_ref(),
                routes.get_ref()
            ),
        );
        return None;
    }
    Some(ListenerProtocol::Http {
        routes: routes.get_ref().clone(),
    })
}

/// `protocol = "auto"`: `routes` for what looks like HTTP, `cluster`
/// (optional) for the rest.
fn auto_target(
    cx: &mut Ctx<'_>,
    f: &FileConfig,
    key: &str,
    l: &FileListener,
) -> Option<ListenerProtocol> {
    let routes = match &l.routes {
        Some(r) if f.routes.keys().any(|k| k.get_ref() == r.get_ref()) => r.get_ref().clone(),
        Some(r) => {
            cx.error(
                r.span(),
                format!("{key}.routes"),
                format!("no route table named \"{}\"", r.get_ref()),
            );
            return None;
        }
        None => {
            cx.error(
                l.protocol.span(),
                format!("{key}.routes"),
                "an auto listener needs `routes` (for HTTP) and may have `cluster` (for the rest)",
            );
            return None;
        }
    };
    let cluster = match &l.cluster {
        Some(c) if f.clusters.keys().any(|k| k.get_ref() == c.get_ref()) => {
            Some(c.get_ref().clone())
        }
        Some(c) => {
            cx.error(
                c.span(),
                format!("{key}.cluster"),
                format!("no cluster named \"{}\"", c.get_ref()),
            );
            return None;
        }
        None => None,
    };
    Some(ListenerProtocol::Auto {
        routes,
        cluster,
        detect_timeout: l.detect_timeout.map_or(Duration::from_millis(200), |d| d.0),
    })
}

pub use crate::fxhash::fnv1a;
