//! # Outrigger
//!
//! A sidecar proxy for latency-critical Linux hosts: thread-per-core,
//! share-nothing workers on monoio (io_uring, with an epoll fallback).
//!
//! ## Layout: how a connection flows
//!
//! ```text
//! config.toml ─▶ config::load ─▶ Snapshot (immutable, validated)
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
//! ## Module map
//!
//! - [`config`]: TOML types, `compile()` to [`config::Snapshot`], errors with positions.
//! - [`control`]: supervisor (start workers, reload, drain), the control
//!   thread, signals and the config file watch.
//! - [`admin`]: the admin HTTP API.
//! - [`access_log`]: per-worker access log buffers and the writer thread.
//! - [`worker`]: worker threads, driver choice, per-worker context.
//! - [`listener`]: SO_REUSEPORT sockets, accept loops, connection limits.
//! - [`tcp`]: the L4 relay.
//! - [`http`]: the HTTP/1.1 reverse proxy: strict codec, routing, upstream pools.
//! - [`route`]: HTTP route tables and the first-match lookup.
//! - [`upstream`]: clusters, endpoints, balancers.
//! - [`buffers`]: the per-worker I/O buffer pool.
//! - [`deadline`]: coarse per-worker deadlines (a slab swept every 100 ms)
//!   for long waits that rarely fire.
//! - [`sockio`]: timed reads that lose no bytes when cancelled, timed
//!   writes, readiness waits on split sockets (shared by http and tcp).
//! - [`metrics`]: per-worker single-writer counters and histograms, exported
//!   as Prometheus text and JSON.
//! - [`backends`]: echo and sink test upstreams shared by the demo, tests and load tester.
//! - [`tls`]: rustls on monoio, certificate selection by SNI, SPIFFE
//!   identities and authorization, SAN matchers, the pool transport digest.
//! - [`resilience`]: retries and budgets, circuit breakers, rate limiters,
//!   outlier and health state.
//! - [`discovery`]: DNS and endpoint-file discovery on their own thread.
//! - [`xds`]: the xDS (ADS) client: CDS, EDS, LDS, RDS translated into config.
//! - [`trace`]: trace context propagation (W3C, B3), spans, the OTLP exporter.
//! - [`grpc`]: gRPC status, timeout and service/method names.
//! - [`fxhash`]: the small fast hasher of per-worker maps.
//! - [`rt`]: thread helpers for every layer (the control-plane threads'
//!   lower priority), importing nothing else of the crate.

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
pub mod sockio;
pub mod tcp;
pub mod tls;
pub mod trace;
pub mod upstream;
pub mod worker;
pub mod xds;

pub use config::{load, Snapshot};
pub use control::{start, Server, StartError};
