//! Route tables: compiled `[[routes.NAME]]` entries and the first-match lookup.
//!
//! A table is built once per config generation with every matcher ready
//! (regexes compiled, hosts lower-cased) and an index from exact host to the
//! routes that can match it, so lookup hashes the host, compares bytes over
//! a few candidates, and allocates nothing.

use bytes::Bytes;
use regex::{Regex, RegexSet};
use std::collections::HashMap;
use std::time::Duration;

pub mod fault;
pub mod mirror;
#[cfg(test)]
mod tests;

/// An ordered list of routes; the first whose every condition holds wins.
#[derive(Debug)]
pub struct RouteTable {
    pub name: String,
    pub routes: Vec<Route>,
    /// For each exact host named by some route: the indices (in order) of
    /// the routes that can match a request for it: its exact-host routes
    /// and every route without an exact host.
    by_host: HashMap<Box<str>, Vec<u32>>,
    /// Routes without an exact host (no host condition, or `*.suffix`).
    any_host: Vec<u32>,
    /// Every `path_regex` of the table in one set, run once per lookup that
    /// reaches a regex route, instead of one regex per route tried; with its
    /// pattern index per route (`NO_REGEX` for routes without one).
    regexes: Option<RegexSet>,
    regex_slot: Vec<u32>,
}

/// `regex_slot` of a route without a path regex (or of any route when the
/// table has no set).
const NO_REGEX: u32 = u32::MAX;

/// Tables with at least this many regex routes match them as one set.
const REGEX_SET_MIN: usize = 4;

/// Longest host name looked up in the index (DNS names are at most 253).
const MAX_INDEXED_HOST: usize = 255;

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// `name` from the config, else `table#index`; used in logs and metrics.
    pub name: String,
    /// Per-worker counters, carried across reloads by name.
    pub stats: std::sync::Arc<crate::metrics::RouteStats>,
    pub host: Option<HostMatch>,
    pub path: Option<PathMatch>,
    /// Upper-case method names; empty means any method.
    pub methods: Vec<String>,
    /// Lower-case header names with the exact value they must carry.
    pub headers: Vec<(String, String)>,
    pub action: RouteAction,
    pub timeout: Option<Duration>,
    pub request_headers: HeaderRewrite,
    pub response_headers: HeaderRewrite,
    pub rewrite_path_prefix: Option<String>,
    /// `retry.*`; `None`: no retries.
    pub retry: Option<crate::resilience::RetryPolicy>,
    /// `rate_limit.*`, shared by every worker.
    pub rate_limit: Option<std::sync::Arc<crate::resilience::RateLimiter>>,
    /// `fault.*`: injected aborts and delays.
    pub fault: Option<fault::Fault>,
    /// `mirror`: clusters a share of the requests is copied to.
    pub mirrors: Vec<mirror::Mirror>,
    /// `mirror_body_limit`: larger bodies are not mirrored.
    pub mirror_body_limit: u64,
    /// `allow_identities` / `deny_identities`.
    pub authz: Option<std::sync::Arc<crate::tls::spiffe::Authz>>,
    /// `match.peer_identity`: the verified client identity must match.
    pub peer_identity: Option<crate::tls::spiffe::IdPattern>,
    /// `match.destination_port`: the original destination's port.
    pub destination_port: Option<u16>,
    /// `tracing.sampling` for the traces this route starts.
    pub trace_sampling: Option<f64>,
    /// `match.grpc_service` / `match.grpc_method`: gRPC calls only.
    pub grpc: Option<GrpcMatch>,
    /// `grpc_web = true`: the CORS origins allowed (may be empty).
    pub grpc_web: Option<Vec<String>>,
}

/// The gRPC condition of a route; `None` parts match any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcMatch {
    pub service: Option<String>,
    pub method: Option<String>,
}

impl GrpcMatch {
    fn matches<R: RouteRequest + ?Sized>(&self, req: &R) -> bool {
        let grpc = req.header("content-type").is_some_and(|v| {
            crate::grpc::is_grpc(v.as_bytes()) || crate::grpc::web_kind(v.as_bytes()).is_some()
        });
        let Some((service, method)) = crate::grpc::service_and_method(req.path()) else {
            return false;
        };
        grpc && self.service.as_deref().map_or(true, |s| s == service)
            && self.method.as_deref().map_or(true, |m| m == method)
    }
}

/// Host condition, compared without the port and ignoring ASCII case.
#[derive(Debug)]
pub enum HostMatch {
    /// `api.example.com` (stored lower-case).
    Exact(String),
    /// `*.example.com`, stored as `.example.com`; matches at least one more label.
    Suffix(String),
}

/// Path condition.
#[derive(Debug)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

/// What a matched route does.
#[derive(Debug)]
pub enum RouteAction {
    /// Forward to one cluster.
    Cluster(String),
    /// Forward to one of several clusters by weight.
    Split(WeightedClusters),
    /// Answer from the proxy itself.
    Direct { status: u16, body: Bytes },
}

/// Clusters with integer weights; `pick` maps a number in `0..total` to one.
#[derive(Debug)]
pub struct WeightedClusters {
    pub targets: Vec<(String, u32)>,
    pub total: u32,
}

impl RouteAction {
    /// The cluster this request goes to: the route's, or a weighted random
    /// pick of a split. `None` for a direct response.
    pub fn pick_cluster(&self) -> Option<&str> {
        match self {
            RouteAction::Cluster(name) => Some(name),
            RouteAction::Split(split) => Some(split.pick(fastrand::u32(..split.total.max(1)))),
            RouteAction::Direct { .. } => None,
        }
    }
}

impl WeightedClusters {
    /// The cluster owning point `n` (taken modulo the total weight).
    pub fn pick(&self, n: u32) -> &str {
        let mut n = n % self.total.max(1);
        for (name, w) in &self.targets {
            if n < *w {
                return name;
            }
            n -= w;
        }
        // Unreachable when weights sum to `total`; fall back to the last target.
        self.targets.last().map_or("", |(n, _)| n.as_str())
    }
}

/// Header edits applied by a route.
#[derive(Debug, Default)]
pub struct HeaderRewrite {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

/// What the router needs to know about a request.
pub trait RouteRequest {
    /// The Host header (or authority), port included if present.
    fn host(&self) -> Option<&str>;
    /// The path without query string.
    fn path(&self) -> &str;
    fn method(&self) -> &str;
    /// The first value of a header, by case-insensitive name.
    fn header(&self, name: &str) -> Option<&str>;
    /// The client's verified identity (SPIFFE ID), if its listener verified
    /// one.
    fn peer_identity(&self) -> Option<&str> {
        None
    }
    /// The port of the connection's original destination (transparent
    /// listeners), if known.
    fn destination_port(&self) -> Option<u16> {
        None
    }
}

impl RouteTable {
    /// Build a table and its host index.
    pub fn new(name: String, routes: Vec<Route>) -> Self {
        let mut by_host: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut any_host = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            match &r.host {
                Some(HostMatch::Exact(h)) => {
                    by_host.entry(h.as_str().into()).or_default().push(i as u32)
                }
                _ => any_host.push(i as u32),
            }
        }
        for list in by_host.values_mut() {
            list.extend_from_slice(&any_host);
            list.sort_unstable();
        }
        let (regexes, regex_slot) = regex_set(&routes);
        RouteTable {
            name,
            routes,
            by_host,
            any_host,
            regexes,
            regex_slot,
        }
    }

    /// The first route that matches `req`, or `None` (404). Only routes
    /// that can match the request's host are tried; nothing is allocated.
    pub fn lookup<R: RouteRequest + ?Sized>(&self, req: &R) -> Option<&Route> {
        let candidates = match req.host().map(strip_port) {
            Some(host) if host.len() <= MAX_INDEXED_HOST => {
                let mut lower = [0u8; MAX_INDEXED_HOST];
                let lower = &mut lower[..host.len()];
                lower.copy_from_slice(host.as_bytes());
                lower.make_ascii_lowercase();
                match std::str::from_utf8(lower)
                    .ok()
                    .and_then(|h| self.by_host.get(h))
                {
                    Some(list) => list.as_slice(),
                    None => self.any_host.as_slice(),
                }
            }
            // An over-long host matches no exact route.
            Some(_) => self.any_host.as_slice(),
            None => self.any_host.as_slice(),
        };
        // The regex set runs at most once, when the first regex route is
        // reached; first-match order is kept.
        let mut set_matches: Option<regex::SetMatches> = None;
        candidates.iter().find_map(|&i| {
            let route = &self.routes[i as usize];
            let slot = self.regex_slot.get(i as usize).copied().unwrap_or(NO_REGEX);
            let matched = match (&self.regexes, slot) {
                (Some(set), slot) if slot != NO_REGEX => route.matches_where(req, || {
                    set_matches
                        .get_or_insert_with(|| set.matches(req.path()))
                        .matched(slot as usize)
                }),
                _ => route.matches(req),
            };
            matched.then_some(route)
        })
    }
}

/// The table's path regexes as one set, when there are enough of them to
/// be worth it (and the set compiles within the regex crate's size limits;
/// otherwise each route keeps matching its own regex).
fn regex_set(routes: &[Route]) -> (Option<RegexSet>, Vec<u32>) {
    let mut patterns = Vec::new();
    let mut slots = vec![NO_REGEX; routes.len()];
    for (i, r) in routes.iter().enumerate() {
        if let Some(PathMatch::Regex(re)) = &r.path {
            slots[i] = patterns.len() as u32;
            patterns.push(re.as_str());
        }
    }
    if patterns.len() < REGEX_SET_MIN {
        return (None, vec![NO_REGEX; routes.len()]);
    }
    match RegexSet::new(&patterns) {
        Ok(set) => (Some(set), slots),
        Err(_) => (None, vec![NO_REGEX; routes.len()]),
    }
}

impl Route {
    /// Whether every condition of this route holds for `req`.
    pub fn matches<R: RouteRequest + ?Sized>(&self, req: &R) -> bool {
        self.matches_where(req, || {
            self.path
                .as_ref()
                .map_or(true, |path| path.matches(req.path()))
        })
    }

    /// The same, with the path condition decided by `path_matches` (a
    /// table's regex set); the cheaper host check runs first.
    fn matches_where<R: RouteRequest + ?Sized>(
        &self,
        req: &R,
        path_matches: impl FnOnce() -> bool,
    ) -> bool {
        if let Some(host) = &self.host {
            match req.host() {
                Some(h) if host.matches(h) => {}
                _ => return false,
            }
        }
        if self.path.is_some() && !path_matches() {
            return false;
        }
        if let Some(port) = self.destination_port {
            if req.destination_port() != Some(port) {
                return false;
            }
        }
        if let Some(p) = &self.peer_identity {
            match req.peer_identity() {
                Some(id) if p.matches(id) => {}
                _ => return false,
            }
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == req.method()) {
            return false;
        }
        if let Some(g) = &self.grpc {
            if !g.matches(req) {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(name, value)| req.header(name) == Some(value.as_str()))
    }
}

impl HostMatch {
    fn matches(&self, host: &str) -> bool {
        let host = strip_port(host);
        match self {
            HostMatch::Exact(want) => host.eq_ignore_ascii_case(want),
            HostMatch::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Regex(re) => re.is_match(path),
        }
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}
