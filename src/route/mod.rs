//! Route tables: compiled `[[routes.NAME]]` entries and the first-match lookup.
//!
//! A table is built once per config generation with every matcher ready
//! (regexes compiled, hosts lower-cased), so lookup only compares bytes and
//! allocates nothing.

use bytes::Bytes;
use regex::Regex;
use std::time::Duration;

#[cfg(test)]
mod tests;

/// An ordered list of routes; the first whose every condition holds wins.
#[derive(Debug)]
pub struct RouteTable {
    pub name: String,
    pub routes: Vec<Route>,
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    /// `table#index`, used in logs and metrics.
    pub name: String,
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
}

impl RouteTable {
    /// The first route that matches `req`, or `None` (404).
    pub fn lookup<R: RouteRequest + ?Sized>(&self, req: &R) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(req))
    }
}

impl Route {
    /// Whether every condition of this route holds for `req`.
    pub fn matches<R: RouteRequest + ?Sized>(&self, req: &R) -> bool {
        if let Some(host) = &self.host {
            match req.host() {
                Some(h) if host.matches(h) => {}
                _ => return false,
            }
        }
        if let Some(path) = &self.path {
            if !path.matches(req.path()) {
                return false;
            }
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == req.method()) {
            return false;
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
