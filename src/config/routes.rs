//! Compiling `[[routes.NAME]]` tables into [`RouteTable`]s: every matcher is
//! built here (regexes compiled, hosts lower-cased) and every reference checked.

use std::collections::BTreeMap;

use std::sync::Arc;

use bytes::Bytes;
use regex::Regex;
use serde_spanned::Spanned;

use super::ctx::Ctx;
use super::file::{FileConfig, FileHeaderRewrite, FileRoute};
use crate::http::codec::is_tchar;
use crate::metrics::RouteStats;
use crate::route::{
    HeaderRewrite, HostMatch, PathMatch, Route, RouteAction, RouteTable, WeightedClusters,
};

pub(super) fn compile_tables(cx: &mut Ctx<'_>, f: &FileConfig) -> BTreeMap<String, RouteTable> {
    let mut out = BTreeMap::new();
    for (name, routes) in &f.routes {
        let table_key = format!("routes.{}", name.get_ref());
        let mut compiled = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, r) in routes.get_ref().iter().enumerate() {
            let key = format!("{table_key}[{i}]");
            let route_name = match &r.get_ref().name {
                Some(n) if n.get_ref().is_empty() || n.get_ref().contains(char::is_control) => {
                    cx.error(
                        n.span(),
                        format!("{key}.name"),
                        "a route name must be non-empty printable text",
                    );
                    continue;
                }
                Some(n) => n.get_ref().clone(),
                None => format!("{}#{i}", name.get_ref()),
            };
            if !names.insert(route_name.clone()) {
                let span = r.get_ref().name.as_ref().map_or(r.span(), |n| n.span());
                cx.error(
                    span,
                    format!("{key}.name"),
                    format!("another route of this table is named \"{route_name}\""),
                );
                continue;
            }
            if let Some(route) = compile_route(cx, f, &key, route_name, r) {
                compiled.push(route);
            }
        }
        out.insert(
            name.get_ref().clone(),
            RouteTable::new(name.get_ref().clone(), compiled),
        );
    }
    out
}

fn compile_route(
    cx: &mut Ctx<'_>,
    f: &FileConfig,
    key: &str,
    name: String,
    r: &Spanned<FileRoute>,
) -> Option<Route> {
    let span = r.span();
    let r = r.get_ref();
    let host = r.matches.host.as_ref().and_then(|h| host_match(cx, key, h));
    let path = path_match(cx, key, r, span.clone());
    let methods = methods(cx, key, r);
    let headers = r
        .matches
        .headers
        .iter()
        .flatten()
        .filter_map(|(n, v)| {
            header_name(cx, &format!("{key}.match.headers"), n).map(|n| (n, v.clone()))
        })
        .collect();
    let action = action(cx, f, key, r, span);
    let request_headers = rewrite(cx, &format!("{key}.request_headers"), &r.request_headers);
    let response_headers = rewrite(cx, &format!("{key}.response_headers"), &r.response_headers);
    let rewrite_path_prefix = match r.rewrite.as_ref().and_then(|rw| rw.path_prefix.as_ref()) {
        Some(p) if !p.get_ref().starts_with('/') => {
            cx.error(
                p.span(),
                format!("{key}.rewrite.path_prefix"),
                "must start with '/'",
            );
            None
        }
        Some(p) => Some(p.get_ref().clone()),
        None => None,
    };
    let retry = r
        .retry
        .as_ref()
        .map(|rt| super::resilience::retry(cx, key, rt));
    let rate_limit = r
        .rate_limit
        .as_ref()
        .and_then(|rl| super::resilience::route_rate_limit(rl.get_ref()));
    let authz = super::tls::authz(cx, key, &r.allow_identities, &r.deny_identities);
    let fault = match &r.fault {
        Some(f) => super::fault::fault(cx, key, f).map(Some),
        None => Some(None),
    };
    let mirrors = match &r.mirror {
        Some(m) => {
            let exists = |name: &str| f.clusters.keys().any(|k| k.get_ref() == name);
            let found = super::mirror::mirrors(cx, key, m, &exists);
            // Mirrors speak HTTP/1.1 (over TLS when the cluster has tls).
            let h2 = found.iter().flatten().find(|mi| {
                f.clusters.iter().any(|(k, c)| {
                    k.get_ref() == &mi.cluster
                        && c.get_ref()
                            .protocol
                            .as_ref()
                            .is_some_and(|p| p.get_ref() == "http2")
                })
            });
            if let Some(mi) = h2 {
                cx.error(
                    m.span(),
                    format!("{key}.mirror"),
                    format!(
                        "cluster \"{}\" speaks HTTP/2 only; mirrors are sent over HTTP/1.1",
                        mi.cluster
                    ),
                );
                None
            } else {
                found
            }
        }
        None => Some(Vec::new()),
    };
    let peer_identity = match &r.matches.peer_identity {
        Some(p) => match crate::tls::spiffe::IdPattern::parse(p.get_ref()) {
            Ok(v) => Some(Some(v)),
            Err(msg) => {
                cx.error(p.span(), format!("{key}.match.peer_identity"), msg);
                None
            }
        },
        None => Some(None),
    };
    let destination_port = match &r.matches.destination_port {
        Some(p) if !(1..=65535).contains(p.get_ref()) => {
            cx.error(
                p.span(),
                format!("{key}.match.destination_port"),
                format!("must be a port from 1 to 65535, not {}", p.get_ref()),
            );
            None
        }
        Some(p) => Some(Some(*p.get_ref() as u16)),
        None => Some(None),
    };
    let grpc = match (&r.matches.grpc_service, &r.matches.grpc_method) {
        (None, None) => None,
        (service, method) => {
            let mut ok = true;
            for (what, v) in [("grpc_service", service), ("grpc_method", method)] {
                if let Some(v) = v {
                    let s = v.get_ref();
                    if s.is_empty() || s.contains('/') {
                        cx.error(
                            v.span(),
                            format!("{key}.match.{what}"),
                            "must be a non-empty name without '/'",
                        );
                        ok = false;
                    }
                }
            }
            ok.then(|| crate::route::GrpcMatch {
                service: service.as_ref().map(|s| s.get_ref().clone()),
                method: method.as_ref().map(|m| m.get_ref().clone()),
            })
        }
    };
    if (r.matches.grpc_service.is_some() || r.matches.grpc_method.is_some()) && grpc.is_none() {
        return None;
    }
    let grpc_web = match (r.grpc_web, &r.grpc_web_cors_origins) {
        (Some(true), origins) => Some(
            origins
                .iter()
                .flatten()
                .map(|o| o.get_ref().clone())
                .collect::<Vec<_>>(),
        ),
        (_, Some(origins)) if !origins.is_empty() => {
            cx.error(
                origins[0].span(),
                format!("{key}.grpc_web_cors_origins"),
                "only used with grpc_web = true",
            );
            return None;
        }
        _ => None,
    };
    Some(Route {
        grpc,
        grpc_web,
        trace_sampling: r.tracing.as_ref().and_then(|t| t.sampling),
        destination_port: destination_port?,
        peer_identity: peer_identity?,
        authz: authz?,
        retry: match retry {
            Some(p) => Some(p?),
            None => None,
        },
        rate_limit,
        fault: fault?,
        mirrors: mirrors?,
        mirror_body_limit: r
            .mirror_body_limit
            .unwrap_or(crate::route::mirror::DEFAULT_BODY_LIMIT),
        stats: Arc::new(RouteStats::new(cx.workers)),
        name,
        host,
        path: path?,
        methods: methods?,
        headers,
        action: action?,
        timeout: r.timeout.map(|d| d.0),
        request_headers: request_headers?,
        response_headers: response_headers?,
        rewrite_path_prefix,
    })
}

fn host_match(cx: &mut Ctx<'_>, key: &str, h: &Spanned<String>) -> Option<HostMatch> {
    let s = h.get_ref().to_ascii_lowercase();
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    if let Some(suffix) = s.strip_prefix("*.") {
        if valid(suffix) {
            return Some(HostMatch::Suffix(format!(".{suffix}")));
        }
    } else if valid(&s) {
        return Some(HostMatch::Exact(s));
    }
    cx.error(
        h.span(),
        format!("{key}.match.host"),
        format!(
            "invalid host \"{}\": expected a name like \"api.example.com\" or \"*.example.com\"",
            h.get_ref()
        ),
    );
    None
}

fn path_match(
    cx: &mut Ctx<'_>,
    key: &str,
    r: &FileRoute,
    span: std::ops::Range<usize>,
) -> Option<Option<PathMatch>> {
    let m = &r.matches;
    let given = [
        m.path.is_some(),
        m.path_prefix.is_some(),
        m.path_regex.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        cx.error(
            span,
            format!("{key}.match"),
            "use only one of match.path, match.path_prefix and match.path_regex",
        );
        return None;
    }
    for (p, k) in [(&m.path, "path"), (&m.path_prefix, "path_prefix")] {
        if let Some(p) = p {
            if !p.get_ref().starts_with('/') {
                cx.error(
                    p.span(),
                    format!("{key}.match.{k}"),
                    "a path must start with '/'",
                );
                return None;
            }
        }
    }
    if let Some(p) = &m.path {
        return Some(Some(PathMatch::Exact(p.get_ref().clone())));
    }
    if let Some(p) = &m.path_prefix {
        return Some(Some(PathMatch::Prefix(p.get_ref().clone())));
    }
    if let Some(p) = &m.path_regex {
        return match Regex::new(p.get_ref()) {
            Ok(re) => Some(Some(PathMatch::Regex(re))),
            Err(e) => {
                // The regex crate's message draws a caret diagram; keep its last line.
                let full = e.to_string();
                let msg = full
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim_start_matches("error: ")
                    .to_string();
                cx.error(
                    p.span(),
                    format!("{key}.match.path_regex"),
                    format!("invalid regex: {msg}"),
                );
                None
            }
        };
    }
    Some(None)
}

fn methods(cx: &mut Ctx<'_>, key: &str, r: &FileRoute) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut ok = true;
    for m in r.matches.method.iter().flatten() {
        let s = m.get_ref();
        if s.is_empty() || !s.bytes().all(is_tchar) {
            cx.error(
                m.span(),
                format!("{key}.match.method"),
                format!("invalid method \"{s}\""),
            );
            ok = false;
        } else {
            out.push(s.to_ascii_uppercase());
        }
    }
    ok.then_some(out)
}

fn header_name(cx: &mut Ctx<'_>, key: &str, n: &Spanned<String>) -> Option<String> {
    let s = n.get_ref();
    if s.is_empty() || !s.bytes().all(is_tchar) {
        cx.error(
            n.span(),
            key.to_string(),
            format!("invalid header name \"{s}\""),
        );
        return None;
    }
    Some(s.to_ascii_lowercase())
}

fn action(
    cx: &mut Ctx<'_>,
    f: &FileConfig,
    key: &str,
    r: &FileRoute,
    span: std::ops::Range<usize>,
) -> Option<RouteAction> {
    let count = [
        r.cluster.is_some(),
        r.split.is_some(),
        r.direct_response.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if count != 1 {
        cx.error(
            span,
            key.to_string(),
            "a route needs exactly one of `cluster`, `split` and `direct_response`",
        );
        return None;
    }
    let cluster_exists = |name: &str| f.clusters.keys().any(|k| k.get_ref() == name);
    if let Some(c) = &r.cluster {
        if !cluster_exists(c.get_ref()) {
            cx.error(
                c.span(),
                format!("{key}.cluster"),
                format!("no cluster named \"{}\"", c.get_ref()),
            );
            return None;
        }
        return Some(RouteAction::Cluster(c.get_ref().clone()));
    }
    if let Some(split) = &r.split {
        let mut targets = Vec::new();
        let mut ok = true;
        for s in split.get_ref() {
            let s = s.get_ref();
            if !cluster_exists(s.cluster.get_ref()) {
                cx.error(
                    s.cluster.span(),
                    format!("{key}.split"),
                    format!("no cluster named \"{}\"", s.cluster.get_ref()),
                );
                ok = false;
            }
            let w = *s.weight.get_ref();
            // 0 drains a branch (Envoy allows it); the total must not be 0.
            if !(0..=1_000_000).contains(&w) {
                cx.error(
                    s.weight.span(),
                    format!("{key}.split"),
                    format!("weight must be between 0 and 1000000, not {w}"),
                );
                ok = false;
            }
            targets.push((s.cluster.get_ref().clone(), w.clamp(0, 1_000_000) as u32));
        }
        if targets.is_empty() {
            cx.error(
                split.span(),
                format!("{key}.split"),
                "a split needs at least one cluster",
            );
            ok = false;
        }
        let total = targets.iter().map(|t| t.1).sum();
        if ok && total == 0 {
            cx.error(
                split.span(),
                format!("{key}.split"),
                "every weight is 0: at least one branch needs a positive weight",
            );
            ok = false;
        }
        return ok.then_some(RouteAction::Split(WeightedClusters { targets, total }));
    }
    let d = r.direct_response.as_ref()?;
    let status = *d.get_ref().status.get_ref();
    if !(200..=599).contains(&status) {
        cx.error(
            d.get_ref().status.span(),
            format!("{key}.direct_response.status"),
            format!("status must be between 200 and 599, not {status}"),
        );
        return None;
    }
    if matches!(status, 204 | 304) && !d.get_ref().body.is_empty() {
        cx.error(
            d.get_ref().status.span(),
            format!("{key}.direct_response.body"),
            format!(
                "a {status} response has no body (RFC 9110); remove `body` or use another status"
            ),
        );
        return None;
    }
    Some(RouteAction::Direct {
        status: status as u16,
        body: Bytes::from(d.get_ref().body.clone()),
    })
}

fn rewrite(cx: &mut Ctx<'_>, key: &str, rw: &Option<FileHeaderRewrite>) -> Option<HeaderRewrite> {
    let Some(rw) = rw else {
        return Some(HeaderRewrite::default());
    };
    let mut ok = true;
    let mut pairs = |m: &BTreeMap<Spanned<String>, String>, sub: &str, cx: &mut Ctx<'_>| {
        let mut v = Vec::new();
        for (n, val) in m {
            match header_name(cx, &format!("{key}.{sub}"), n) {
                Some(n) if val.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f)) => {
                    v.push((n, val.clone()))
                }
                Some(_) => {
                    cx.error(
                        n.span(),
                        format!("{key}.{sub}"),
                        "header values cannot contain control characters",
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        v
    };
    let set = pairs(&rw.set, "set", cx);
    let add = pairs(&rw.add, "add", cx);
    let mut remove = Vec::new();
    for n in &rw.remove {
        match header_name(cx, &format!("{key}.remove"), n) {
            Some(n) => remove.push(n),
            None => ok = false,
        }
    }
    ok.then_some(HeaderRewrite { set, add, remove })
}
