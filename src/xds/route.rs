//! RDS resources (and HCM inline route configs) to a route table: the
//! virtual hosts flattened into one ordered list of routes, each with its
//! virtual host's domain as `match.host`.
//!
//! Envoy picks a virtual host by its most specific domain, then the first
//! matching route in it. The flattened table keeps that order: virtual
//! hosts by domain (exact names, then `*.suffix` longest first, then `*`),
//! each one's routes in their order. One difference, written in
//! docs/discovery.md: a request whose virtual host has no matching route
//! falls through to the less specific hosts' routes instead of a 404.

// Control planes still send the deprecated fields (v2-era `append`,
// `exact_match`, `dns_refresh_rate`, ...): they are read as Envoy reads them.
#![allow(deprecated)]

use std::collections::{BTreeSet, HashSet};

use envoy_types::pb::envoy::config::core::v3::data_source;
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, route::Action, route_action::ClusterSpecifier,
    route_action::HostRewriteSpecifier, route_match::PathSpecifier, RetryPolicy, Route,
    RouteConfiguration, VirtualHost,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use toml::{Table, Value};

use super::convert::Rejected;
use super::convert::{duration, header_edits, u32_value};

/// A route configuration, translated.
#[derive(Debug, Clone, PartialEq)]
pub struct XRoutes {
    pub routes: Vec<Value>,
    /// The clusters its routes send to.
    pub clusters: BTreeSet<String>,
}

pub fn route_config(rc: &RouteConfiguration) -> Result<XRoutes, Rejected> {
    let mut hosts: Vec<(u8, String, &VirtualHost)> = Vec::new();
    // Per virtual host, how many distinct domains (without ports) it has.
    let mut distinct: Vec<usize> = Vec::new();
    for vh in &rc.virtual_hosts {
        let mut seen = HashSet::new();
        for d in &vh.domains {
            // A port in the domain is dropped: routes match the host
            // without its port.
            let d = match d.rsplit_once(':') {
                Some((h, p)) if !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
                _ => d.as_str(),
            }
            .to_ascii_lowercase();
            if !seen.insert(d.clone()) {
                continue;
            }
            let rank = if d == "*" {
                2
            } else if let Some(suffix) = d.strip_prefix("*.") {
                if suffix.contains('*') {
                    return Err(Rejected::unsupported(format!(
                        "virtual host {}: domain \"{d}\" is not supported",
                        vh.name
                    )));
                }
                1
            } else if d.contains('*') {
                return Err(Rejected::unsupported(format!(
                    "virtual host {}: domain \"{d}\" is not supported (exact, \"*.suffix\" or \"*\")",
                    vh.name
                )));
            } else {
                0
            };
            hosts.push((rank, d, vh));
        }
        distinct.push(seen.len());
    }
    // Exact, then suffixes longest first, then "*"; stable otherwise.
    hosts.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.len().cmp(&a.1.len())));
    let mut out = XRoutes {
        routes: Vec::new(),
        clusters: BTreeSet::new(),
    };
    let mut names = HashSet::new();
    for (_, domain, vh) in hosts {
        for (i, r) in vh.routes.iter().enumerate() {
            let mut t = route(r, vh, &mut out.clusters).map_err(|e| {
                e.within(format_args!(
                    "virtual host {}, route {}",
                    vh.name,
                    route_label(r, i)
                ))
            })?;
            let mut m = match t.remove("match") {
                Some(Value::Table(m)) => m,
                _ => Table::new(),
            };
            if domain != "*" {
                m.insert("host".into(), domain.clone().into());
            }
            t.insert("match".into(), m.into());
            let base = if r.name.is_empty() {
                format!("{}#{i}", vh.name)
            } else {
                r.name.clone()
            };
            let several = rc
                .virtual_hosts
                .iter()
                .position(|v| std::ptr::eq(v, vh))
                .is_some_and(|i| distinct[i] > 1);
            let mut name = if several {
                format!("{base}@{domain}")
            } else {
                base
            };
            while !names.insert(name.clone()) {
                name.push('\'');
            }
            t.insert("name".into(), name.into());
            let mut req = Table::new();
            let mut resp = Table::new();
            header_edits(
                &rc.request_headers_to_add,
                &rc.request_headers_to_remove,
                &mut req,
            )?;
            header_edits(
                &rc.response_headers_to_add,
                &rc.response_headers_to_remove,
                &mut resp,
            )?;
            header_edits(
                &vh.request_headers_to_add,
                &vh.request_headers_to_remove,
                &mut req,
            )?;
            header_edits(
                &vh.response_headers_to_add,
                &vh.response_headers_to_remove,
                &mut resp,
            )?;
            header_edits(
                &r.request_headers_to_add,
                &r.request_headers_to_remove,
                &mut req,
            )?;
            header_edits(
                &r.response_headers_to_add,
                &r.response_headers_to_remove,
                &mut resp,
            )?;
            if let Some(Value::Table(extra)) = t.remove("request_headers") {
                for (k, v) in extra {
                    merge(&mut req, &k, v);
                }
            }
            if !req.is_empty() {
                t.insert("request_headers".into(), req.into());
            }
            if !resp.is_empty() {
                t.insert("response_headers".into(), resp.into());
            }
            out.routes.push(t.into());
        }
    }
    Ok(out)
}

fn merge(into: &mut Table, key: &str, v: Value) {
    match (into.get_mut(key), v) {
        (Some(Value::Table(a)), Value::Table(b)) => a.extend(b),
        (_, v) => {
            into.insert(key.into(), v);
        }
    }
}

fn route_label(r: &Route, i: usize) -> String {
    if r.name.is_empty() {
        format!("#{i}")
    } else {
        format!("\"{}\"", r.name)
    }
}

fn route(r: &Route, vh: &VirtualHost, clusters: &mut BTreeSet<String>) -> Result<Table, Rejected> {
    let mut t = Table::new();
    // Fault injection: the route's own HTTPFault, else its virtual host's.
    if let Some(any) = r
        .typed_per_filter_config
        .get(super::fault::FILTER)
        .or_else(|| vh.typed_per_filter_config.get(super::fault::FILTER))
    {
        t.insert("fault".into(), super::fault::fault(any)?.into());
    }
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| Rejected::missing("a route without match"))?;
    let mut mt = Table::new();
    match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => {
            let p = if p.is_empty() { "/" } else { p.as_str() };
            mt.insert("path_prefix".into(), p.into());
        }
        Some(PathSpecifier::Path(p)) => {
            mt.insert("path".into(), p.clone().into());
        }
        Some(PathSpecifier::SafeRegex(re)) => {
            // Envoy's regex matches the whole path.
            mt.insert("path_regex".into(), format!("^(?:{})$", re.regex).into());
        }
        Some(_) => {
            return Err(Rejected::unsupported(
                "this path match is not supported (prefix, path or safe_regex)",
            ))
        }
        None => return Err(Rejected::missing("a route match without a path specifier")),
    }
    if m.case_sensitive.as_ref().is_some_and(|b| !b.value) {
        return Err(Rejected::unsupported(
            "case-insensitive path matching is not supported",
        ));
    }
    if !m.query_parameters.is_empty() {
        return Err(Rejected::unsupported(
            "query parameter matching is not supported",
        ));
    }
    if m.runtime_fraction.is_some() {
        return Err(Rejected::unsupported("runtime_fraction is not supported"));
    }
    if m.grpc.is_some() || m.tls_context.is_some() || !m.dynamic_metadata.is_empty() {
        return Err(Rejected::unsupported(
            "grpc, tls_context and dynamic_metadata matches are not supported",
        ));
    }
    let mut headers = Table::new();
    for h in &m.headers {
        let value = match &h.header_match_specifier {
            Some(HeaderMatchSpecifier::ExactMatch(v)) => v.clone(),
            Some(HeaderMatchSpecifier::StringMatch(s)) if !s.ignore_case => {
                match &s.match_pattern {
                    Some(MatchPattern::Exact(v)) => v.clone(),
                    _ => {
                        return Err(Rejected::unsupported(format!(
                            "header {}: only exact header matches are supported",
                            h.name
                        )))
                    }
                }
            }
            _ => {
                return Err(Rejected::unsupported(format!(
                    "header {}: only exact header matches are supported",
                    h.name
                )))
            }
        };
        if h.invert_match || h.treat_missing_header_as_empty {
            return Err(Rejected::unsupported(format!(
                "header {}: inverted matches are not supported",
                h.name
            )));
        }
        headers.insert(h.name.to_ascii_lowercase(), value.into());
    }
    if !headers.is_empty() {
        mt.insert("headers".into(), headers.into());
    }
    t.insert("match".into(), mt.into());
    match &r.action {
        Some(Action::Route(ra)) => {
            match &ra.cluster_specifier {
                Some(ClusterSpecifier::Cluster(c)) => {
                    clusters.insert(c.clone());
                    t.insert("cluster".into(), c.clone().into());
                }
                Some(ClusterSpecifier::WeightedClusters(w)) => {
                    let mut split = Vec::new();
                    for c in &w.clusters {
                        let weight = u32_value(c.weight.as_ref()).unwrap_or(0);
                        if weight == 0 {
                            continue;
                        }
                        if !c.request_headers_to_add.is_empty()
                            || !c.response_headers_to_add.is_empty()
                        {
                            return Err(Rejected::unsupported(
                                "header edits per weighted cluster are not supported",
                            ));
                        }
                        clusters.insert(c.name.clone());
                        let mut s = Table::new();
                        s.insert("cluster".into(), c.name.clone().into());
                        s.insert("weight".into(), i64::from(weight).into());
                        split.push(Value::Table(s));
                    }
                    if split.is_empty() {
                        return Err(Rejected::missing(
                            "weighted_clusters without a positive weight",
                        ));
                    }
                    t.insert("split".into(), Value::Array(split));
                }
                _ => {
                    return Err(Rejected::unsupported(
                        "only cluster and weighted_clusters are supported",
                    ))
                }
            }
            if let Some(d) = duration(ra.timeout.as_ref()) {
                t.insert("timeout".into(), d.into());
            }
            if !ra.prefix_rewrite.is_empty() {
                let mut rw = Table::new();
                rw.insert("path_prefix".into(), ra.prefix_rewrite.clone().into());
                t.insert("rewrite".into(), rw.into());
            }
            if ra.regex_rewrite.is_some() || ra.path_rewrite_policy.is_some() {
                return Err(Rejected::unsupported(
                    "regex_rewrite and path_rewrite_policy are not supported",
                ));
            }
            match &ra.host_rewrite_specifier {
                None => {}
                Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => {
                    let mut set = Table::new();
                    set.insert("host".into(), h.clone().into());
                    let mut rh = Table::new();
                    rh.insert("set".into(), set.into());
                    t.insert("request_headers".into(), rh.into());
                }
                Some(_) => {
                    return Err(Rejected::unsupported(
                        "only host_rewrite_literal is supported",
                    ))
                }
            }
            let policy = ra.retry_policy.as_ref().or(vh.retry_policy.as_ref());
            if let Some(p) = policy {
                t.insert("retry".into(), retry(p)?.into());
            }
            if !ra.request_mirror_policies.is_empty() {
                let mut mirrors = Vec::new();
                for m in &ra.request_mirror_policies {
                    if m.cluster.is_empty() {
                        return Err(Rejected::unsupported("request mirroring: only a named cluster is supported (not cluster_header)"));
                    }
                    if m.trace_sampled.is_some()
                        || m.disable_shadow_host_suffix_append
                        || !m.request_headers_mutations.is_empty()
                        || !m.host_rewrite_literal.is_empty()
                    {
                        return Err(Rejected::unsupported("request mirroring: trace_sampled, disable_shadow_host_suffix_append, request_headers_mutations and host_rewrite_literal are not supported"));
                    }
                    clusters.insert(m.cluster.clone());
                    let mut mt = Table::new();
                    mt.insert("cluster".into(), m.cluster.clone().into());
                    // runtime_fraction's default; absent: every request.
                    let percent = match m
                        .runtime_fraction
                        .as_ref()
                        .and_then(|f| f.default_value.as_ref())
                    {
                        None => 100.0,
                        Some(p) => super::fault::fractional(p)
                            .map_err(|e| e.within("request mirroring"))?,
                    };
                    mt.insert("percent".into(), Value::Float(percent));
                    mirrors.push(Value::Table(mt));
                }
                t.insert("mirror".into(), Value::Array(mirrors));
            }
        }
        Some(Action::DirectResponse(dr)) => {
            let body = match dr.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                None => String::new(),
                Some(data_source::Specifier::InlineString(s)) => s.clone(),
                Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8(b.clone())
                    .map_err(|_| Rejected::invalid("direct_response body is not UTF-8"))?,
                Some(_) => {
                    return Err(Rejected::unsupported(
                        "direct_response body: only inline bodies are supported",
                    ))
                }
            };
            let mut d = Table::new();
            d.insert("status".into(), i64::from(dr.status).into());
            d.insert("body".into(), body.into());
            t.insert("direct_response".into(), d.into());
        }
        Some(Action::Redirect(_)) => {
            return Err(Rejected::unsupported("redirects are not supported"))
        }
        Some(_) => return Err(Rejected::unsupported("this route action is not supported")),
        None => return Err(Rejected::missing("a route without an action")),
    }
    Ok(t)
}

fn retry(p: &RetryPolicy) -> Result<Table, Rejected> {
    let mut t = Table::new();
    let mut on: Vec<Value> = Vec::new();
    for cond in p
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        let ours = match cond {
            "5xx" | "gateway-error" | "connect-failure" | "reset" | "cancelled"
            | "deadline-exceeded" | "internal" | "resource-exhausted" | "unavailable" => cond,
            "retriable-status-codes" => "retriable-status",
            other => {
                return Err(Rejected::unsupported(format!(
                    "retry_on \"{other}\" is not supported"
                )))
            }
        };
        let v = Value::String(ours.into());
        if !on.contains(&v) {
            on.push(v);
        }
    }
    if !on.is_empty() {
        t.insert("on".into(), Value::Array(on));
    }
    t.insert(
        "attempts".into(),
        i64::from(u32_value(p.num_retries.as_ref()).unwrap_or(1)).into(),
    );
    if !p.retriable_status_codes.is_empty() {
        t.insert(
            "statuses".into(),
            Value::Array(
                p.retriable_status_codes
                    .iter()
                    .map(|s| Value::Integer(i64::from(*s)))
                    .collect(),
            ),
        );
    }
    if let Some(d) = duration(p.per_try_timeout.as_ref()) {
        t.insert("per_try_timeout".into(), d.into());
    }
    if let Some(d) = p
        .retry_back_off
        .as_ref()
        .and_then(|b| duration(b.base_interval.as_ref()))
    {
        t.insert("backoff".into(), d.into());
    }
    Ok(t)
}
