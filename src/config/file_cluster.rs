//! `[clusters.NAME]` and `[node]` as written (serde types; `clusters.rs`
//! compiles them).

use serde::Deserialize;
use serde_spanned::Spanned;

use super::value::{count, percent, positive, positive_duration, ratio, ConfigDuration};

/// One entry of `endpoints`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileEndpoint {
    Address(String),
    Weighted(FileWeightedEndpoint),
}

/// `{ address = "h:p", weight = 3, zone = "a", region = "r1", priority = 0 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWeightedEndpoint {
    pub address: String,
    pub weight: Option<i64>,
    /// Where the endpoint runs, for `locality = "prefer_local"`.
    pub zone: Option<String>,
    pub region: Option<String>,
    /// Failover group: 0 (default) first; higher ones as lower ones lose
    /// health.
    pub priority: Option<i64>,
}

impl FileEndpoint {
    pub fn address(&self) -> &str {
        match self {
            FileEndpoint::Address(a) => a,
            FileEndpoint::Weighted(w) => &w.address,
        }
    }
}

/// `[clusters.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCluster {
    /// `host:port` list (or `{ address, weight }` tables); host names are
    /// resolved when the config is compiled.
    pub endpoints: Option<Spanned<Vec<Spanned<FileEndpoint>>>>,
    /// `"static"` (default), `"dns"`, `"file"` or `"original_destination"`.
    pub discovery: Option<Spanned<String>>,
    /// dns: re-resolve this often (sooner when a TTL ends). Default 5s.
    #[serde(default, deserialize_with = "positive_duration")]
    pub dns_refresh: Option<ConfigDuration>,
    /// dns: `"auto"` (A and AAAA), `"v4"` or `"v6"`.
    pub dns_family: Option<Spanned<String>>,
    /// dns: servers instead of /etc/resolv.conf's (`"ip"` or `"ip:port"`).
    pub dns_servers: Option<Vec<Spanned<String>>>,
    /// xds: the EDS resource to take endpoints from (default the cluster's
    /// name).
    pub eds_service_name: Option<Spanned<String>>,
    /// file: the endpoints file (JSON array, or TOML `[[endpoints]]`).
    pub endpoints_file: Option<Spanned<String>>,
    /// ring_hash and maglev: what to hash (`"source_ip"` by default).
    pub hash_on: Option<Spanned<String>>,
    /// `"round_robin"` (default), `"random"` or `"least_request"`.
    #[serde(default)]
    pub balance: Balance,
    /// Give up connecting to one endpoint after this long. Default 1s.
    #[serde(default, deserialize_with = "positive_duration")]
    pub connect_timeout: Option<ConfigDuration>,
    /// http: idle keep-alive connections kept per endpoint per worker. Default 64.
    #[serde(default, deserialize_with = "positive")]
    pub max_idle_connections: Option<u64>,
    /// ring_hash: most points on the ring (weights are scaled into it).
    /// Default 65536.
    #[serde(default, deserialize_with = "positive")]
    pub max_ring_size: Option<u64>,
    /// http: close pooled connections idle longer than this. Default 30s.
    #[serde(default, deserialize_with = "positive_duration")]
    pub idle_timeout: Option<ConfigDuration>,
    pub retry_budget: Option<FileRetryBudget>,
    pub circuit_breaker: Option<FileCircuitBreaker>,
    pub outlier_detection: Option<FileOutlierDetection>,
    pub health_check: Option<Spanned<FileHealthCheck>>,
    /// TLS toward the endpoints.
    pub tls: Option<Spanned<FileClusterTls>>,
    /// http: `"http1"` (default), `"http2"` (prior knowledge, or ALPN `h2`
    /// with tls), `"auto"` (ALPN with tls, HTTP/1.1 without) or
    /// `"downstream"` (what the client spoke; original_destination's default).
    pub protocol: Option<Spanned<String>>,
    /// `"off"` (default) or `"prefer_local"`: endpoints in this proxy's
    /// zone, then region, then anywhere, failing over by health.
    pub locality: Option<Spanned<String>>,
}

/// `tls.*` of a cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClusterTls {
    /// SNI and the name verified; default each endpoint's host.
    pub server_name: Option<Spanned<String>>,
    /// PEM roots to verify the upstream with; default the system's.
    pub ca: Option<Spanned<String>>,
    /// A client certificate and key to present.
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub alpn: Option<Vec<Spanned<String>>>,
    /// `"1.2"` (default) or `"1.3"`.
    pub min_version: Option<Spanned<String>>,
    /// `"mesh"`: present `[identity]`'s SVID and verify the server's SPIFFE
    /// ID against `identities`.
    pub mode: Option<Spanned<String>>,
    pub identities: Option<Vec<Spanned<String>>>,
    /// The server certificate must carry a SAN one of these matches.
    pub match_sans: Option<Vec<Spanned<FileSanMatch>>>,
}

pub use crate::upstream::balance::Balance;

/// `[node]`: this instance's locality.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileNode {
    pub region: Option<Spanned<String>>,
    pub zone: Option<Spanned<String>>,
}

/// One entry of `tls.match_sans`: a SAN type and one way to compare.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSanMatch {
    /// `"uri"`, `"dns"` or `"any"` (either).
    #[serde(rename = "type")]
    pub kind: String,
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub contains: Option<String>,
    /// Anchored: the whole SAN must match.
    pub regex: Option<String>,
    #[serde(default)]
    pub ignore_case: bool,
}

/// `retry_budget.*` of a cluster.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileRetryBudget {
    #[serde(default, deserialize_with = "ratio")]
    pub ratio: Option<f64>,
    #[serde(default, deserialize_with = "count")]
    pub min_retries_per_second: Option<u64>,
}

/// `circuit_breaker.*` of a cluster.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileCircuitBreaker {
    #[serde(default, deserialize_with = "positive")]
    pub max_connections: Option<u64>,
    #[serde(default, deserialize_with = "positive")]
    pub max_pending_requests: Option<u64>,
    #[serde(default, deserialize_with = "positive")]
    pub max_requests: Option<u64>,
    #[serde(default, deserialize_with = "positive")]
    pub max_retries: Option<u64>,
}

/// `outlier_detection.*` of a cluster.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileOutlierDetection {
    #[serde(default, deserialize_with = "positive")]
    pub consecutive_5xx: Option<u64>,
    #[serde(default, deserialize_with = "positive")]
    pub consecutive_gateway_errors: Option<u64>,
    #[serde(default, deserialize_with = "positive")]
    pub consecutive_connect_failures: Option<u64>,
    #[serde(default, deserialize_with = "positive_duration")]
    pub base_ejection_time: Option<ConfigDuration>,
    #[serde(default, deserialize_with = "percent")]
    pub max_ejection_percent: Option<u64>,
}

/// `health_check.*` of a cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealthCheck {
    pub protocol: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub service: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub expected_statuses: Option<Vec<Spanned<i64>>>,
    #[serde(default, deserialize_with = "positive_duration")]
    pub interval: Option<ConfigDuration>,
    #[serde(default, deserialize_with = "positive_duration")]
    pub timeout: Option<ConfigDuration>,
    #[serde(default, deserialize_with = "positive")]
    pub healthy_threshold: Option<u64>,
    #[serde(default, deserialize_with = "positive")]
    pub unhealthy_threshold: Option<u64>,
    #[serde(default, deserialize_with = "percent")]
    pub panic_threshold: Option<u64>,
}
