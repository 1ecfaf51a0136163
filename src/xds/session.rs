//! The ADS stream: connect with back-off, subscribe, and answer every
//! response with an ACK or a NACK.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc;
use tokio::sync::mpsc;

use super::{Apply, FileNames, Kind, State, XdsSettings, XdsStatus};
use crate::discovery::{self, Source};
use crate::snapshot::Snapshot;

/// Back-off between connection attempts: doubling from this, with jitter.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The thread's loop: idle without `[xds]`, otherwise hold a stream open.
pub(super) fn run(
    snapshot: &Weak<ArcSwap<Snapshot>>,
    report: super::Reporter,
    status: &Arc<XdsStatus>,
) {
    let mut client = Client {
        snapshot: snapshot.clone(),
        report,
        status: status.clone(),
        state: State::default(),
        versions: Default::default(),
        nonces: Default::default(),
        subscribed: Default::default(),
        applied: String::new(),
    };
    let mut runtime = None;
    let mut backoff = BACKOFF_MIN;
    loop {
        let Some(settings) = super::settings(snapshot) else {
            return;
        };
        let Some(settings) = settings else {
            // [xds] gone (or never there): withdraw what it added.
            if !client.applied.is_empty() {
                client.state = State::default();
                client.publish_empty();
            }
            std::thread::sleep(Duration::from_millis(500));
            continue;
        };
        let rt = match &runtime {
            Some(rt) => rt,
            None => match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => runtime.insert(rt),
                Err(e) => {
                    tracing::error!(error = %e, "xds: cannot start its runtime");
                    return;
                }
            },
        };
        let outcome = rt.block_on(client.session(&settings));
        status.connected.store(false, Relaxed);
        match outcome {
            Ok(Ended::SettingsChanged) => {
                backoff = BACKOFF_MIN;
                continue;
            }
            Ok(Ended::Gone) => return,
            Err((e, was_up)) => {
                status.failures.fetch_add(1, Relaxed);
                tracing::warn!(server = %settings.address, error = %e, "xds: stream failed; serving the last config, reconnecting");
                status.last_error.store(Some(Arc::new(e.to_string())));
                if was_up {
                    backoff = BACKOFF_MIN;
                }
            }
        }
        let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 2));
        std::thread::sleep(backoff + jitter);
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

enum Ended {
    SettingsChanged,
    Gone,
}

struct Client {
    snapshot: Weak<ArcSwap<Snapshot>>,
    report: super::Reporter,
    status: Arc<XdsStatus>,
    state: State,
    /// Per kind: the last version accepted, the last nonce seen, the names
    /// asked for (empty: all, for CDS and LDS).
    versions: [String; 4],
    nonces: [String; 4],
    subscribed: [BTreeSet<String>; 4],
    /// The overlay running now.
    applied: String,
}

impl Client {
    async fn session(&mut self, settings: &Arc<XdsSettings>) -> Result<Ended, (StreamError, bool)> {
        let channel = connect(settings).await.map_err(|e| (e, false))?;
        let mut ads = AggregatedDiscoveryServiceClient::new(channel);
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(64);
        // The control plane learns where this proxy runs (`[node]`), as
        // Envoy reports `node.locality`.
        let locality = self
            .snapshot
            .upgrade()
            .map(|s| s.load().node.clone())
            .filter(|l| !l.is_empty())
            .map(|l| envoy_types::pb::envoy::config::core::v3::Locality {
                region: l.region,
                zone: l.zone,
                sub_zone: String::new(),
            });
        let node = Node {
            id: settings.node_id.clone(),
            cluster: settings.node_cluster.clone(),
            user_agent_name: "outrigger".into(),
            locality,
            ..Default::default()
        };
        // Subscribe again to everything held: a restarted server answers
        // with what it has, the proxy keeps serving meanwhile.
        self.subscribed[Kind::Endpoint.index()] = self.eds_wanted();
        self.subscribed[Kind::Route.index()] = self.state.rds_names();
        self.nonces = Default::default();
        for kind in Kind::ALL {
            if matches!(kind, Kind::Endpoint | Kind::Route)
                && self.subscribed[kind.index()].is_empty()
            {
                continue;
            }
            let _ = tx.send(self.request(kind, &node, None)).await;
        }
        let mut inbound = ads
            .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| (StreamError::Status(s), false))?
            .into_inner();
        self.status.connected.store(true, Relaxed);
        self.status.connects.fetch_add(1, Relaxed);
        self.status.last_error.store(None);
        tracing::info!(server = %settings.address, node = %settings.node_id, "xds: stream open");
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                m = inbound.message() => match m {
                    Ok(Some(resp)) => self.handle(resp, &tx, &node).await,
                    Ok(None) => return Err((StreamError::Closed, true)),
                    Err(s) => return Err((StreamError::Status(s), true)),
                },
                _ = tick.tick() => {
                    match super::settings(&self.snapshot) {
                        None => return Ok(Ended::Gone),
                        Some(s) if s.as_ref() != Some(settings) => return Ok(Ended::SettingsChanged),
                        Some(_) => {}
                    }
                    // A reload may add a file cluster with discovery = "xds".
                    self.resubscribe(Kind::Endpoint, self.eds_wanted(), &tx, &node).await;
                }
            }
        }
    }

    fn request(&self, kind: Kind, node: &Node, error: Option<String>) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: self.versions[kind.index()].clone(),
            node: Some(node.clone()),
            resource_names: self.subscribed[kind.index()].iter().cloned().collect(),
            type_url: kind.type_url().into(),
            response_nonce: self.nonces[kind.index()].clone(),
            error_detail: error.map(|message| rpc::Status {
                code: 3, // INVALID_ARGUMENT
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        }
    }

    async fn resubscribe(
        &mut self,
        kind: Kind,
        names: BTreeSet<String>,
        tx: &mpsc::Sender<DiscoveryRequest>,
        node: &Node,
    ) {
        if self.subscribed[kind.index()] != names {
            self.subscribed[kind.index()] = names;
            let _ = tx.send(self.request(kind, node, None)).await;
        }
    }

    /// EDS names: those of xDS clusters and of the file's xds clusters.
    fn eds_wanted(&self) -> BTreeSet<String> {
        let mut names = self.state.eds_names();
        if let Some(s) = self.snapshot.upgrade() {
            for c in s.load().clusters.values() {
                if let Source::Xds { service, .. } = &c.source {
                    names.insert(service.clone());
                }
            }
        }
        names
    }

    async fn handle(
        &mut self,
        resp: DiscoveryResponse,
        tx: &mpsc::Sender<DiscoveryRequest>,
        node: &Node,
    ) {
        let Some(kind) = Kind::of(&resp.type_url) else {
            tracing::warn!(type_url = %resp.type_url, "xds: a response of a type not asked for; ignored");
            return;
        };
        let i = kind.index();
        self.nonces[i] = resp.nonce.clone();
        let file = self
            .snapshot
            .upgrade()
            .map(|s| FileNames::of(&s.load().text))
            .unwrap_or_default();
        let prev = self.state.clone();
        let mut errors = self.state.take(kind, &resp.resources, &file);
        if kind == Kind::Endpoint {
            self.publish_endpoints(&prev);
        } else {
            self.publish(kind, &prev, &file, &mut errors).await;
        }
        let st = &self.status.types[i];
        st.resources.store(self.state.count(kind) as u64, Relaxed);
        st.last_update.store(unix_now(), Relaxed);
        let error = if errors.is_empty() {
            self.versions[i] = resp.version_info.clone();
            st.version.store(Some(Arc::new(resp.version_info.clone())));
            st.acks.fetch_add(1, Relaxed);
            st.last_error.store(None);
            tracing::debug!(kind = kind.name(), version = %resp.version_info, "xds: ACK");
            None
        } else {
            let detail = errors.join("; ");
            st.nacks.fetch_add(1, Relaxed);
            st.last_error.store(Some(Arc::new(detail.clone())));
            tracing::warn!(kind = kind.name(), version = %resp.version_info, error = %detail, "xds: NACK; the last good version of those resources stays");
            Some(detail)
        };
        let _ = tx.send(self.request(kind, node, error)).await;
        // The decoded response is gone: give its pages back (at most once
        // a second, process-wide), or a churning EDS stream holds its peak.
        crate::worker::memory::trim_if_due(std::time::Instant::now());
        // New clusters and listeners may need endpoints and routes.
        match kind {
            Kind::Cluster => {
                let names = self.eds_wanted();
                // Assignments nothing asks for any more are dropped.
                self.state.endpoints.retain(|n, _| names.contains(n));
                self.resubscribe(Kind::Endpoint, names, tx, node).await;
            }
            Kind::Listener => {
                let names = self.state.rds_names();
                self.state.routes.retain(|n, _| names.contains(n));
                self.resubscribe(Kind::Route, names, tx, node).await;
            }
            _ => {}
        }
    }

    /// Publish the overlay after a CDS, LDS or RDS change. A resource the
    /// compiler rejects goes back to its last good version and is reported;
    /// an error that names no resource of this kind rejects the response.
    async fn publish(
        &mut self,
        kind: Kind,
        prev: &State,
        file: &FileNames,
        errors: &mut Vec<String>,
    ) {
        for _ in 0..8 {
            let overlay = self.state.overlay(file);
            if overlay == self.applied {
                return;
            }
            match self.apply(overlay.clone()).await {
                Ok(generation) => {
                    tracing::info!(kind = kind.name(), generation, "xds: update applied");
                    self.applied = overlay;
                    return;
                }
                Err(problems) => {
                    let mut blamed = false;
                    for (key, message) in &problems {
                        if let Some(name) = self.state.culprit(kind, key) {
                            self.state.revert(kind, &name, prev);
                            errors.push(format!("{} {name}: {message}", kind.name()));
                            blamed = true;
                        }
                    }
                    if !blamed {
                        self.state = prev.clone();
                        errors.extend(problems.into_iter().map(|(_, m)| m));
                        return;
                    }
                }
            }
        }
        self.state = prev.clone();
        errors.push("the update could not be applied".into());
    }

    fn publish_empty(&mut self) {
        let rt = tokio::runtime::Builder::new_current_thread().build();
        if let Ok(rt) = rt {
            if rt.block_on(self.apply(String::new())).is_ok() {
                self.applied.clear();
            }
        }
    }

    /// Hand the overlay to the control thread and wait for its answer.
    async fn apply(&self, overlay: String) -> Result<u64, Vec<(String, String)>> {
        let (reply, answer) = flume::bounded(1);
        if !(self.report)(super::Report::Apply(Apply { overlay, reply })) {
            return Err(vec![(
                String::new(),
                "the control thread has exited".into(),
            )]);
        }
        answer.recv_async().await.unwrap_or_else(|_| {
            Err(vec![(
                String::new(),
                "no answer from the control thread".into(),
            )])
        })
    }

    /// EDS changes go the way of DNS and file discovery: per cluster, to
    /// the control thread, remembered for the next compile.
    fn publish_endpoints(&self, prev: &State) {
        let Some(swap) = self.snapshot.upgrade() else {
            return;
        };
        let snap = swap.load_full();
        let Some(server) = snap.xds.as_ref().map(|x| x.address.clone()) else {
            return;
        };
        let mut updates = Vec::new();
        for (service, found) in &self.state.endpoints {
            if prev.endpoints.get(service) == Some(found) {
                continue;
            }
            let mut users: BTreeSet<String> = self
                .state
                .clusters
                .iter()
                .filter(|(_, c)| c.eds.as_deref() == Some(service.as_str()))
                .map(|(n, _)| n.clone())
                .collect();
            users.extend(
                snap.clusters
                    .iter()
                    .filter(|(_, c)| matches!(&c.source, Source::Xds { service: s, .. } if s == service))
                    .map(|(n, _)| n.clone()),
            );
            for cluster in users {
                let source = Source::Xds {
                    service: service.clone(),
                    server: server.clone(),
                };
                let key = discovery::key(&cluster, &source);
                updates.push(discovery::Update {
                    cluster,
                    key,
                    endpoints: found.clone(),
                });
            }
        }
        if !updates.is_empty() {
            // Remembered now too, so that a compile before the control
            // thread applies these (a CDS change) starts with them.
            let remembered: Vec<(&str, &[discovery::Found])> = updates
                .iter()
                .map(|u| (u.key.as_str(), u.endpoints.as_slice()))
                .collect();
            discovery::remember_many(&remembered);
            let _ = (self.report)(super::Report::Endpoints(updates));
        }
    }
}

async fn connect(s: &XdsSettings) -> Result<tonic::transport::Channel, StreamError> {
    let scheme = if s.tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", s.address))
        .map_err(|e| StreamError::Address(s.address.clone(), e))?
        .connect_timeout(s.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(t) = &s.tls {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        match &t.ca {
            Some(ca) => {
                let pem = std::fs::read(ca)
                    .map_err(|e| StreamError::Material("xds.tls.ca", ca.clone(), e))?;
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            None => {
                let mut pem = Vec::new();
                for der in rustls_native_certs::load_native_certs().certs {
                    pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
                    let b64 = base64::Engine::encode(
                        &base64::engine::general_purpose::STANDARD,
                        der.as_ref(),
                    );
                    for line in b64.as_bytes().chunks(64) {
                        pem.extend_from_slice(line);
                        pem.push(b'\n');
                    }
                    pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
                }
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
        }
        if let (Some(cert), Some(key)) = (&t.cert, &t.key) {
            let c = std::fs::read(cert)
                .map_err(|e| StreamError::Material("xds.tls.cert", cert.clone(), e))?;
            let k = std::fs::read(key)
                .map_err(|e| StreamError::Material("xds.tls.key", key.clone(), e))?;
            tls = tls.identity(tonic::transport::Identity::from_pem(c, k));
        }
        if let Some(name) = &t.server_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint = endpoint.tls_config(tls).map_err(StreamError::Tls)?;
    }
    endpoint
        .connect()
        .await
        .map_err(|e| StreamError::Connect(s.address.clone(), chain(&e)))
}

/// Why an ADS stream could not open, or ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    /// `[xds] address` does not make a URI.
    #[error("{0}: {1}")]
    Address(String, tonic::transport::Error),
    /// A certificate, key or CA file of `[xds.tls]` cannot be read.
    #[error("{0} {}: {2}", .1.display())]
    Material(&'static str, std::path::PathBuf, std::io::Error),
    /// The TLS settings were refused.
    #[error("xds.tls: {0}")]
    Tls(tonic::transport::Error),
    /// The connection failed (with its causes).
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    /// The server answered or ended the stream with a gRPC status.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// The server ended the stream cleanly.
    #[error("the server closed the stream")]
    Closed,
}

/// An error with its causes ("transport error: tcp connect error:
/// Connection refused (os error 111)").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
