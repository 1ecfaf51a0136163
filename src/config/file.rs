//! The config file as written: serde types that mirror the TOML one to one.
//! `compile` turns them into a [`Snapshot`](super::Snapshot); nothing on the
//! data path ever sees these types.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_spanned::Spanned;

pub use super::observe::{AccessLogFormat, FileAccessLog, FileRouteTracing, FileTracing};
use super::value::{
    buffer_size, count, duration, pipe_size, positive, positive_duration, ConfigDuration, Workers,
};

/// The whole file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub runtime: FileRuntime,
    #[serde(default)]
    pub admin: super::admin::FileAdmin,
    /// `[metrics]`: the read-only scrape listener.
    pub metrics: Option<Spanned<super::admin::FileMetrics>>,
    #[serde(default)]
    pub listeners: BTreeMap<Spanned<String>, Spanned<FileListener>>,
    #[serde(default)]
    pub routes: BTreeMap<Spanned<String>, Spanned<Vec<Spanned<FileRoute>>>>,
    #[serde(default)]
    pub clusters: BTreeMap<Spanned<String>, Spanned<FileCluster>>,
    pub access_log: Option<Spanned<FileAccessLog>>,
    /// This instance's mesh identity (SPIFFE).
    pub identity: Option<Spanned<FileIdentity>>,
    /// Distributed tracing.
    pub tracing: Option<Spanned<FileTracing>>,
    /// `[xds]`: the management server to take clusters, endpoints,
    /// listeners and routes from.
    pub xds: Option<Spanned<super::xds::FileXds>>,
    /// `[node]`: this instance's locality.
    pub node: Option<Spanned<FileNode>>,
}

/// `[identity]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIdentity {
    /// This instance's X.509-SVID (PEM chain) and key.
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    /// PEM roots of the trust domain.
    pub trust_bundle: Spanned<String>,
    /// e.g. `"example.org"`.
    pub trust_domain: Spanned<String>,
}

/// `[runtime]`: static settings, fixed for the life of the process.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileRuntime {
    /// `"auto"` (one worker per available core) or an integer >= 1.
    #[serde(default)]
    pub workers: Workers,
    /// `"auto"`, `"io_uring"` or `"epoll"`.
    #[serde(default)]
    pub io: IoMode,
    /// Pin worker n to the n-th available core: true, false or "auto"
    /// (default: only on CPUs exclusive to this process).
    #[serde(default)]
    pub pin_workers: super::value::PinWorkers,
    /// How long open connections may finish after SIGTERM/SIGINT. Default 5s.
    pub drain_timeout: Option<ConfigDuration>,
    /// After SIGTERM, inbound listeners keep accepting this long (so the
    /// pod leaves the endpoints first). Default 0s.
    #[serde(default, deserialize_with = "duration")]
    pub drain_inbound_delay: Option<ConfigDuration>,
    /// `drain = { exit_when_idle = true }` (the default): exit as soon as
    /// no connection is left; false waits out `drain_timeout`.
    pub drain: Option<FileDrain>,
    /// Bytes in one relay buffer (4096 to 16777216). Default 65536.
    #[serde(default, deserialize_with = "buffer_size")]
    pub buffer_size: Option<u64>,
    /// Spare buffers each worker keeps for reuse. Default 1024.
    #[serde(default, deserialize_with = "positive")]
    pub buffer_pool_size: Option<u64>,
    /// Shed new work while the heap in use is over this. Default off.
    #[serde(default, deserialize_with = "positive")]
    pub max_heap_bytes: Option<u64>,
    /// Shed new work while the cgroup's memory usage is over this
    /// percentage of its limit (0: off). Default 85.
    #[serde(default, deserialize_with = "count")]
    pub overload_memory_percent: Option<u64>,
}

pub use crate::snapshot::{IoMode, SpliceMode};

/// `runtime.drain`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileDrain {
    pub exit_when_idle: Option<bool>,
}

/// `[listeners.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    /// `ip:port` to bind on every worker (SO_REUSEPORT).
    pub address: Spanned<String>,
    /// `"tcp"` or `"http"`.
    pub protocol: Spanned<Protocol>,
    /// tcp: the cluster to forward to.
    pub cluster: Option<Spanned<String>>,
    /// http: the route table to use.
    pub routes: Option<Spanned<String>>,
    /// Open connections at most, across all workers. Default 10000.
    #[serde(default, deserialize_with = "positive")]
    pub max_connections: Option<u64>,
    /// Close a connection after this long without traffic. Default 1h (tcp), 60s (http).
    #[serde(default, deserialize_with = "positive_duration")]
    pub idle_timeout: Option<ConfigDuration>,
    /// tcp: `"auto"` (default), `"always"` or `"never"`; see [`SpliceMode`].
    pub splice: Option<SpliceMode>,
    /// tcp: the pipe of a spliced direction, bytes (4 KiB to 1 MiB).
    /// Default 262144.
    #[serde(default, deserialize_with = "pipe_size")]
    pub splice_pipe_size: Option<u64>,
    /// Length of the kernel accept queue of each worker's socket. Default 1024.
    #[serde(default, deserialize_with = "positive")]
    pub backlog: Option<u64>,
    /// http: largest request head in bytes (then 431). Default 65536.
    #[serde(default, deserialize_with = "positive")]
    pub max_request_header_bytes: Option<u64>,
    /// http: most request headers (then 431). Default 100.
    #[serde(default, deserialize_with = "positive")]
    pub max_headers: Option<u64>,
    /// http: time to receive a whole request head (then 408). Default 10s.
    #[serde(default, deserialize_with = "positive_duration")]
    pub header_timeout: Option<ConfigDuration>,
    /// http: largest request body in bytes (then 413). Default unlimited.
    #[serde(default, deserialize_with = "positive")]
    pub max_request_body_bytes: Option<u64>,
    /// http: longest wait for the next bytes from an upstream (then 504
    /// before the response head, a close after it). Default 60s.
    #[serde(default, deserialize_with = "positive_duration")]
    pub upstream_read_timeout: Option<ConfigDuration>,
    /// http: longest wait for the next bytes of a request body the client
    /// declared (then 408 and a close, or a close when the response had
    /// started). Default 60s.
    #[serde(default, deserialize_with = "positive_duration")]
    pub request_body_timeout: Option<ConfigDuration>,
    /// http: longest time a write to the client or to an upstream may make
    /// no progress (the peer stopped reading) before the connection is
    /// closed. Default 60s.
    #[serde(default, deserialize_with = "positive_duration")]
    pub send_timeout: Option<ConfigDuration>,
    /// http: `false` turns HTTP/2 off; a table sets its limits.
    pub http2: Option<Spanned<super::http2::FileHttp2>>,
    /// http: HTTP/2 connections get GOAWAY after this long. Default unset.
    #[serde(default, deserialize_with = "positive_duration")]
    pub max_connection_age: Option<ConfigDuration>,
    /// `rate_limit.connections_per_second` (and `burst`) for the whole proxy.
    pub rate_limit: Option<Spanned<FileListenerRateLimit>>,
    /// TLS termination.
    pub tls: Option<Spanned<FileListenerTls>>,
    /// Read each connection's original destination (SO_ORIGINAL_DST), for
    /// connections redirected here by interception rules.
    pub original_destination: Option<bool>,
    /// Inbound traffic (mesh to the local app): kept accepting for
    /// `runtime.drain_inbound_delay` after SIGTERM.
    pub inbound: Option<bool>,
    /// auto: how long to wait for the client's first bytes. Default 200ms.
    #[serde(default, deserialize_with = "positive_duration")]
    pub detect_timeout: Option<ConfigDuration>,
    /// Verified peer identities allowed (and denied, which wins).
    pub allow_identities: Option<Vec<Spanned<String>>>,
    pub deny_identities: Option<Vec<Spanned<String>>>,
    /// tcp: pick the cluster by the ClientHello's SNI, without terminating.
    pub sni_routes: Option<Vec<Spanned<FileSniRoute>>>,
    /// tcp with sni_routes: how long a client may take to send its
    /// ClientHello. Default 5s.
    #[serde(default, deserialize_with = "positive_duration")]
    pub sni_read_timeout: Option<ConfigDuration>,
    /// http: merge runs of `/` in request paths before routing. Default on
    /// for listeners that verify clients (mesh, `client_ca`), else off.
    pub merge_slashes: Option<bool>,
    /// http: `"reject"` (400) or `"keep"` (undecoded) for `%2F`, `%5C` and
    /// `%00` in request paths. Default `"reject"` on listeners that verify
    /// clients, else `"keep"`.
    pub path_escaped_slashes: Option<Spanned<String>>,
    /// http over TLS: a request whose Host (or `:authority`) names another
    /// host than the client's SNI gets 421. Default off.
    pub sni_host_match: Option<bool>,
}

/// One entry of `sni_routes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSniRoute {
    pub server_names: Vec<Spanned<String>>,
    pub cluster: Spanned<String>,
}

/// `tls.*` of a listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListenerTls {
    /// PEM certificate chain (leaf first) and its key: the default
    /// certificate.
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    /// More certificates, chosen by the client's SNI.
    pub certificates: Option<Vec<Spanned<FileSniCertificate>>>,
    /// PEM roots: require and verify client certificates.
    pub client_ca: Option<Spanned<String>>,
    /// `"1.2"` (default) or `"1.3"`.
    pub min_version: Option<Spanned<String>>,
    /// ALPN protocols offered, in order of preference.
    pub alpn: Option<Vec<Spanned<String>>>,
    /// Limit for the whole handshake. Default 10s.
    #[serde(default, deserialize_with = "positive_duration")]
    pub handshake_timeout: Option<ConfigDuration>,
    /// `"terminate"` (default) or `"mesh"`: present `[identity]`'s SVID and
    /// require the client's.
    pub mode: Option<Spanned<String>>,
    /// auto listeners: `"refuse"` (default) closes connections that do not
    /// start a TLS handshake; `"permit"` serves them in plaintext, without
    /// a peer identity (migration only).
    pub plaintext: Option<Spanned<String>>,
    /// The client certificate must carry a SAN one of these matches.
    pub match_sans: Option<Vec<Spanned<FileSanMatch>>>,
}

/// One entry of `tls.certificates`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSniCertificate {
    pub server_names: Vec<Spanned<String>>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// `rate_limit.*` of a listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListenerRateLimit {
    #[serde(deserialize_with = "positive")]
    pub connections_per_second: Option<u64>,
    #[serde(default, deserialize_with = "positive")]
    pub burst: Option<u64>,
}

/// `rate_limit.*` of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRateLimit {
    #[serde(deserialize_with = "positive")]
    pub requests_per_second: Option<u64>,
    #[serde(default, deserialize_with = "positive")]
    pub burst: Option<u64>,
}

/// `retry.*` of a route.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileRetry {
    #[serde(default, deserialize_with = "count")]
    pub attempts: Option<u64>,
    pub on: Option<Vec<Spanned<String>>>,
    pub statuses: Option<Vec<Spanned<i64>>>,
    #[serde(default, deserialize_with = "positive_duration")]
    pub per_try_timeout: Option<ConfigDuration>,
    #[serde(default, deserialize_with = "duration")]
    pub backoff: Option<ConfigDuration>,
    #[serde(default, deserialize_with = "count")]
    pub max_body_bytes: Option<u64>,
}

/// A listener's protocol.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Layer 4: bytes relayed as they are.
    Tcp,
    /// HTTP/1.1 reverse proxy.
    Http,
    /// Detect from the first bytes: HTTP to `routes`, anything else (or
    /// silence for `detect_timeout`) to `cluster`.
    Auto,
}

/// One entry of `[[routes.TABLE]]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    /// The route's name in metrics and access logs; default `TABLE#INDEX`.
    pub name: Option<Spanned<String>>,
    #[serde(default, rename = "match")]
    pub matches: FileMatch,
    pub cluster: Option<Spanned<String>>,
    pub split: Option<Spanned<Vec<Spanned<FileSplit>>>>,
    pub direct_response: Option<Spanned<FileDirectResponse>>,
    #[serde(default, deserialize_with = "positive_duration")]
    pub timeout: Option<ConfigDuration>,
    pub request_headers: Option<FileHeaderRewrite>,
    pub response_headers: Option<FileHeaderRewrite>,
    pub rewrite: Option<FileRewrite>,
    pub retry: Option<Spanned<FileRetry>>,
    pub rate_limit: Option<Spanned<FileRateLimit>>,
    /// `fault = { abort, delay, header, max_active }`.
    pub fault: Option<Spanned<super::fault::FileFault>>,
    /// `mirror = { cluster, percent, max_active }` or a list; bodies
    /// larger than `mirror_body_limit` bytes are not mirrored.
    pub mirror: Option<Spanned<super::mirror::FileMirrors>>,
    #[serde(default, deserialize_with = "positive")]
    pub mirror_body_limit: Option<u64>,
    /// Verified peer identities allowed (and denied, which wins).
    pub allow_identities: Option<Vec<Spanned<String>>>,
    pub deny_identities: Option<Vec<Spanned<String>>>,
    /// `tracing.sampling` for this route's new traces.
    pub tracing: Option<FileRouteTracing>,
    /// Translate gRPC-Web calls to gRPC (and their answers back).
    pub grpc_web: Option<bool>,
    /// gRPC-Web: origins whose CORS preflights are answered (`"*"`: any).
    pub grpc_web_cors_origins: Option<Vec<Spanned<String>>>,
}

/// `match.*` of a route; every condition given must hold.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileMatch {
    /// Exact host, or `*.suffix`; case-insensitive, port ignored.
    pub host: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub path_regex: Option<Spanned<String>>,
    pub method: Option<Vec<Spanned<String>>>,
    pub headers: Option<BTreeMap<Spanned<String>, String>>,
    /// The client's verified SPIFFE ID, exact or a `/*` prefix.
    pub peer_identity: Option<Spanned<String>>,
    /// The original destination's port (transparent listeners).
    pub destination_port: Option<Spanned<i64>>,
    /// gRPC requests (`content-type: application/grpc*`) to this service
    /// (`package.Service`) and method.
    pub grpc_service: Option<Spanned<String>>,
    pub grpc_method: Option<Spanned<String>>,
}

/// One weighted target of a `split`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSplit {
    pub cluster: Spanned<String>,
    pub weight: Spanned<i64>,
}

/// A response the proxy answers itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDirectResponse {
    pub status: Spanned<i64>,
    #[serde(default)]
    pub body: String,
}

/// `request_headers` / `response_headers`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileHeaderRewrite {
    #[serde(default)]
    pub set: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    pub add: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    pub remove: Vec<Spanned<String>>,
}

/// `rewrite.*`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRewrite {
    pub path_prefix: Option<Spanned<String>>,
}

pub use super::file_cluster::{
    Balance, FileCircuitBreaker, FileCluster, FileClusterTls, FileEndpoint, FileHealthCheck,
    FileNode, FileOutlierDetection, FileRetryBudget, FileSanMatch, FileWeightedEndpoint,
};
