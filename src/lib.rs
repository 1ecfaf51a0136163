//! # Outrigger
//!
//! A sidecar proxy for latency-critical Linux hosts: thread-per-core,
//! share-nothing workers on monoio (io_uring, with an epoll fallback).
//!
//! ## Layout: how a connection flows
//!
//! ```text
//! config.toml ─▶ config::load ─▶ snapshot::Snapshot (immutable, validated)
//!                                   │ published through ArcSwap
//! control::start ─ binds SO_REUSEPORT sockets, spawns one worker per core
//!   worker (outrigger-worker-N, pinned, own monoio runtime)
//!     listener::AcceptLoop ─ accept, enforce this worker's max_connections share
//!       tcp::proxy ─ balancer picks endpoint (upstream::Balancers), connect
//!                    with connect_timeout, try each endpoint at most once
//!         tcp::relay ─ both directions: rented buffer, or splice(2) for bulk;
//!                      half-close propagated; idle_timeout
//!       http::serve ─ read head (http::codec, strict) → snapshot → route lookup
//!         direct_response, or http::proxy: cluster → endpoint → pooled or new
//!         upstream connection → re-serialised head + streamed body → response
//!         head and body back → pool the clean connection → next request
//!         → metrics (per-worker cells on the snapshot) + access_log line
//! control::Proxy ─ the outrigger-control thread: SIGHUP / file change /
//!   POST /reload → load → compile → Server::apply (bind new listeners,
//!   publish generation + 1); SIGTERM / POST /drain → drain up to drain_timeout
//! admin ─ /ready /healthz /metrics /stats /config /clusters on its own thread
//! ```
//!
//! ## Layers
//!
//! Bottom to top. A module imports only from rows below its own
//! (tests/layers.rs reads this table and fails on any other import, and on
//! any circle of files, inside a unit too). A unit is a module, or a
//! submodule named on its own row (`metrics::cell`).
//!
//! ```text
//! base       fxhash grpc rt units deadline metrics::cell worker::memory worker::overload
//! io         sockio
//! resilience resilience
//! tls        tls
//! trace      trace
//! tables     metrics
//! buffers    buffers sidecar
//! errors     http::error
//! fields     http::fields
//! wire       http::codec http::normalize route upstream
//! chunks     http::chunked
//! upconn     http::upconn
//! pools      http::pool
//! snapshot   snapshot
//! services   discovery access_log trace::otlp worker::driver
//! config     config
//! context    worker::ctx
//! l4         xds tcp
//! l7         http
//! probe      upstream::probe
//! ingress    listener upstream::prober
//! worker     worker
//! export     metrics::export
//! json       metrics::json
//! state      control::shared
//! admin      admin
//! control    control
//! tools      backends
//! ```
//!
//! ## Module map (in layer order)
//!
//! - [`fxhash`]: the small fast hasher of per-worker maps, and FNV-1a.
//! - [`grpc`]: gRPC status, timeout, service/method names, content types.
//! - [`rt`]: the CPUs this process may use (`rt::cpus`), the control-plane
//!   threads' lower priority.
//! - [`units`]: durations as the config writes them.
//! - [`deadline`]: coarse per-worker deadlines (a slab swept every 100 ms)
//!   for long waits that rarely fire.
//! - `metrics::cell`: single-writer counters and per-worker padded cells.
//! - [`sockio`]: timed reads that lose no bytes when cancelled, timed
//!   writes, readiness waits on split sockets.
//! - [`resilience`]: retries and budgets, circuit breakers, rate limiters,
//!   outlier and health state, a worker's share of a limit.
//! - [`tls`]: rustls on monoio, certificate selection by SNI, SPIFFE
//!   identities and authorization, SAN matchers, the pool transport digest.
//! - [`trace`]: trace context propagation (W3C, B3), spans; `trace::otlp`
//!   the exporter thread.
//! - [`metrics`]: the per-listener, route, cluster and endpoint cell tables;
//!   `metrics::export` and `metrics::json` render them (Prometheus, JSON).
//! - [`buffers`]: the per-worker I/O buffer pool. [`sidecar`]: interception
//!   rules and the app lifecycle (`iptables`, `wait-ready`, `run -- APP`).
//! - `http::chunked`, `http::upconn`, `http::pool`: the chunked coding, an
//!   upstream connection, the worker's pools of them (HTTP/1.1 and HTTP/2).
//! - [`route`]: HTTP route tables, the first-match lookup, faults, mirrors.
//! - [`upstream`]: clusters, endpoints, balancers, locality levels, where
//!   endpoints come from; `upstream::prober` the active health checks.
//! - [`snapshot`]: the runtime [`Snapshot`] and its settings types.
//! - [`discovery`]: DNS and endpoint-file discovery on their own thread.
//! - [`access_log`]: per-worker access log buffers and the writer thread.
//! - [`config`]: TOML types, `compile()` to a [`Snapshot`], errors with
//!   positions; the only code that reads TOML.
//! - `worker::ctx`: the per-worker context the stages share (`WorkerCtx`),
//!   listener handles, the connection guard, the lot of parked connections.
//! - [`xds`]: the xDS (ADS) client: CDS, EDS, LDS, RDS translated into config.
//! - [`tcp`]: the L4 relay.
//! - [`http`]: HTTP/1.1 and HTTP/2 (`http::h2`): strict codec, the request
//!   path both share (`http::request`), forwarding, idle connections parked
//!   (`http::park`).
//! - [`listener`]: SO_REUSEPORT sockets, accept loops, connection limits.
//! - [`worker`]: worker threads, driver choice, building the context, the
//!   housekeeping tick.
//! - [`control`]: supervisor (start workers, reload, drain), the control
//!   thread, signals and the config file watch.
//! - [`admin`]: the admin HTTP API.
//! - [`backends`]: echo and sink test upstreams shared by the demo, tests
//!   and the load tester.

pub mod access_log;
pub mod admin;
pub mod backends;
pub mod buffers;
pub mod config;
pub mod control;
pub mod deadline;
pub mod discovery;
pub mod fxhash;
pub mod grpc;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod resilience;
pub mod route;
pub mod rt;
pub mod sidecar;
pub mod snapshot;
pub mod sockio;
pub mod tcp;
pub mod tls;
pub mod trace;
pub mod units;
pub mod upstream;
pub mod worker;
pub mod xds;

pub use config::load;
pub use control::{start, Server, StartError};
pub use snapshot::Snapshot;
