//! A management server for tests and benchmarks: the ADS service of
//! envoy-types on tonic, state of the world. A type is answered when the
//! proxy first asks for it, when the names it asks for change, and on
//! every change of the resources; every request the proxy sends (ACKs,
//! NACKs and their error detail) is kept for the caller to inspect. Used
//! by `outrigger-load xds-plane` and, through `#[path]`, by tests/xds.rs.

// A test peer outside the data path: a Mutex and unwraps are fine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]
// Two crates include this file and each uses a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, DirectResponseAction, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

// ---- the management server ----

/// What the management server serves: resources per type, and a version.
#[derive(Default, Clone)]
pub struct Resources {
    version: u64,
    by_type: HashMap<&'static str, Vec<Any>>,
}

/// One request the proxy sent.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: std::time::SystemTime,
    pub type_url: String,
    pub version: String,
    pub nonce: String,
    pub error: Option<String>,
}

#[derive(Clone)]
pub struct Plane {
    current: Arc<watch::Sender<Resources>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// ADS streams opened.
    pub streams: Arc<AtomicU64>,
}

impl Plane {
    pub fn new() -> Plane {
        Plane {
            current: Arc::new(watch::channel(Resources::default()).0),
            seen: Arc::default(),
            streams: Arc::default(),
        }
    }

    /// Replace one type's resources and bump the version.
    pub fn set(&self, type_url: &'static str, resources: Vec<Any>) {
        self.current.send_modify(|r| {
            r.version += 1;
            r.by_type.insert(type_url, resources);
        });
    }

    pub fn version(&self) -> String {
        self.current.borrow().version.to_string()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Whether the proxy ACKed `type_url` at the current version.
    pub fn acked(&self, type_url: &str) -> bool {
        let v = self.version();
        self.seen().iter().any(|s| {
            s.type_url == type_url && s.version == v && s.error.is_none() && !s.nonce.is_empty()
        })
    }
}

pub fn response(r: &Resources, type_url: &str, nonce: u64) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: r.version.to_string(),
        resources: r
            .by_type
            .iter()
            .find(|(t, _)| **t == type_url)
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
        type_url: type_url.to_string(),
        nonce: nonce.to_string(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Plane {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, tonic::Status>>;
    type DeltaAggregatedResourcesStream =
        ReceiverStream<Result<DeltaDiscoveryResponse, tonic::Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
        self.streams.fetch_add(1, Ordering::SeqCst);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let mut changes = self.current.subscribe();
        let seen = self.seen.clone();
        tokio::spawn(async move {
            // State of the world: a type is answered when first asked for,
            // when its names change, and on every change of the resources.
            let mut subscribed: HashMap<String, Vec<String>> = HashMap::new();
            let mut nonce = 0u64;
            loop {
                tokio::select! {
                    r = inbound.message() => {
                        let Ok(Some(r)) = r else { return };
                        seen.lock().unwrap().push(Seen {
                            at: std::time::SystemTime::now(),
                            type_url: r.type_url.clone(),
                            version: r.version_info.clone(),
                            nonce: r.response_nonce.clone(),
                            error: r.error_detail.as_ref().map(|e| e.message.clone()),
                        });
                        if r.response_nonce.is_empty()
                            || subscribed.get(&r.type_url) != Some(&r.resource_names)
                        {
                            subscribed.insert(r.type_url.clone(), r.resource_names.clone());
                            nonce += 1;
                            let resp = response(&changes.borrow(), &r.type_url, nonce);
                            if tx.send(Ok(resp)).await.is_err() {
                                return;
                            }
                        }
                    }
                    c = changes.changed() => {
                        if c.is_err() {
                            return;
                        }
                        let now = changes.borrow_and_update().clone();
                        // CDS and LDS first, as a management server orders them.
                        let mut types: Vec<&String> = subscribed.keys().collect();
                        types.sort_by_key(|t| [CDS, EDS, LDS, RDS].iter().position(|x| x == t));
                        for t in types {
                            nonce += 1;
                            if tx.send(Ok(response(&now, t, nonce))).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("state of the world only"))
    }
}

/// A running management server; dropping it kills it (streams cut).
pub struct Running {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn serve(plane: &Plane, listener: std::net::TcpListener) -> Running {
    serve_tls(plane, listener, None)
}

pub fn serve_tls(
    plane: &Plane,
    listener: std::net::TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Running {
    let plane = plane.clone();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    listener.set_nonblocking(true).unwrap();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stopped = Arc::new(Mutex::new(stopped));
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            let mut builder = tonic::transport::Server::builder();
            if let Some(tls) = tls {
                builder = builder.tls_config(tls).unwrap();
            }
            let server = builder
                .add_service(AggregatedDiscoveryServiceServer::new(plane))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l));
            let wait = tokio::task::spawn_blocking(move || {
                let _ = stopped.lock().unwrap().recv();
            });
            tokio::select! {
                _ = server => {}
                _ = wait => {}
            }
        });
        // Dropping the runtime drops every connection and stream.
        drop(rt);
    });
    Running {
        stop: Some(stop),
        thread: Some(thread),
    }
}

// ---- resources ----

pub fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: m.encode_to_vec(),
    }
}

pub fn sock(a: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                a.port(),
            ))),
            ..Default::default()
        })),
    }
}

pub fn eds_cluster(name: &str) -> Any {
    any(
        CDS,
        &Cluster {
            name: name.into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        },
    )
}

pub fn assignment(name: &str, endpoints: &[(SocketAddr, u32)]) -> Any {
    any(
        EDS,
        &ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: endpoints
                    .iter()
                    .map(|(a, w)| LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                            address: Some(sock(*a)),
                            ..Default::default()
                        })),
                        load_balancing_weight: Some(UInt32Value { value: *w }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        },
    )
}

pub fn http_listener(name: &str, rds: &str) -> Any {
    http_listener_at(name, "127.0.0.1:0".parse().unwrap(), rds)
}

pub fn http_listener_at(name: &str, addr: SocketAddr, rds: &str) -> Any {
    let hcm = HttpConnectionManager {
        stat_prefix: name.into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            route_config_name: rds.into(),
            ..Default::default()
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    any(
        LDS,
        &Listener {
            name: name.into(),
            address: Some(sock(addr)),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(any(
                        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        &hcm,
                    ))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
}

pub fn to_cluster(prefix: &str, cluster: &str) -> Route {
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.into())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.into())),
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn direct(path: &str, status: u32, body: &str) -> Route {
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Path(path.into())),
            ..Default::default()
        }),
        action: Some(route::Action::DirectResponse(DirectResponseAction {
            status,
            body: Some(envoy_types::pb::envoy::config::core::v3::DataSource {
                specifier: Some(
                    envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(
                        body.into(),
                    ),
                ),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn routes(name: &str, routes: Vec<Route>) -> Any {
    any(
        RDS,
        &RouteConfiguration {
            name: name.into(),
            virtual_hosts: vec![VirtualHost {
                name: "all".into(),
                domains: vec!["*".into()],
                routes,
                ..Default::default()
            }],
            ..Default::default()
        },
    )
}
