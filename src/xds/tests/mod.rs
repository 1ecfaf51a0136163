//! Translation of xDS resources into the config file's shape, and the
//! overlay they make.

// Control planes still send `exact_match`.
#![allow(deprecated)]

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers, cluster, CircuitBreakers, Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    address, header_value_option::HeaderAppendAction, socket_address, Address, HeaderValue,
    HeaderValueOption, SocketAddress,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher, route, route_action, route_match, weighted_cluster, HeaderMatcher, RetryPolicy,
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use prost::Message;

use super::*;

mod tls;
mod traffic;

pub(super) fn sock(ip: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

pub(super) fn prefix_route(name: &str, prefix: &str, cluster: &str) -> Route {
    Route {
        name: name.into(),
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

pub(super) fn vh(name: &str, domains: &[&str], routes: Vec<Route>) -> VirtualHost {
    VirtualHost {
        name: name.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        routes,
        ..Default::default()
    }
}

fn hosts_and_names(x: &XRoutes) -> Vec<(String, String)> {
    x.routes
        .iter()
        .map(|r| {
            (
                r["match"]
                    .get("host")
                    .and_then(|h| h.as_str())
                    .unwrap_or("*")
                    .to_string(),
                r["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn virtual_hosts_flatten_most_specific_domain_first() {
    let rc = RouteConfiguration {
        name: "rc".into(),
        virtual_hosts: vec![
            vh("any", &["*"], vec![prefix_route("fallback", "/", "c0")]),
            vh(
                "wild",
                &["*.example.com"],
                vec![prefix_route("w", "/", "c1")],
            ),
            vh(
                "api",
                &["api.example.com", "api.example.com:8080"],
                vec![prefix_route("a", "/v1", "c2")],
            ),
            vh(
                "deep",
                &["*.eu.example.com"],
                vec![prefix_route("d", "/", "c3")],
            ),
        ],
        ..Default::default()
    };
    let x = translate_route_config(&rc).unwrap();
    assert_eq!(
        hosts_and_names(&x),
        [
            ("api.example.com", "a"),
            ("*.eu.example.com", "d"),
            ("*.example.com", "w"),
            ("*", "fallback"),
        ]
        .map(|(h, n)| (h.to_string(), n.to_string()))
    );
    assert_eq!(
        x.clusters.iter().cloned().collect::<Vec<_>>(),
        ["c0", "c1", "c2", "c3"]
    );
    // Two domains of one host: one entry each, names kept apart.
    let rc = RouteConfiguration {
        virtual_hosts: vec![vh(
            "two",
            &["a.test", "b.test"],
            vec![prefix_route("r", "/", "c")],
        )],
        ..Default::default()
    };
    let names: Vec<String> = hosts_and_names(&translate_route_config(&rc).unwrap())
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(names, ["r@a.test", "r@b.test"]);
    // Prefix wildcards have no Outrigger equivalent.
    let rc = RouteConfiguration {
        virtual_hosts: vec![vh("p", &["api.*"], vec![prefix_route("r", "/", "c")])],
        ..Default::default()
    };
    assert!(translate_route_config(&rc)
        .unwrap_err()
        .to_string()
        .contains("api.*"));
}

#[test]
fn route_actions_translate_with_their_policies() {
    let mut r = prefix_route("main", "/api", "unused");
    let Some(route::Action::Route(ra)) = &mut r.action else {
        unreachable!()
    };
    ra.cluster_specifier = Some(route_action::ClusterSpecifier::WeightedClusters(
        WeightedCluster {
            clusters: vec![
                weighted_cluster::ClusterWeight {
                    name: "v1".into(),
                    weight: Some(UInt32Value { value: 90 }),
                    ..Default::default()
                },
                weighted_cluster::ClusterWeight {
                    name: "v2".into(),
                    weight: Some(UInt32Value { value: 10 }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        },
    ));
    ra.timeout = Some(Duration {
        seconds: 2,
        nanos: 500_000_000,
    });
    ra.prefix_rewrite = "/v2".into();
    ra.retry_policy = Some(RetryPolicy {
        retry_on: "5xx,connect-failure,retriable-status-codes".into(),
        num_retries: Some(UInt32Value { value: 3 }),
        retriable_status_codes: vec![409],
        per_try_timeout: Some(Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    });
    r.r#match.as_mut().unwrap().headers = vec![HeaderMatcher {
        name: "X-Canary".into(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::ExactMatch("1".into())),
        ..Default::default()
    }];
    r.request_headers_to_add = vec![
        HeaderValueOption {
            header: Some(HeaderValue {
                key: "x-env".into(),
                value: "prod".into(),
                ..Default::default()
            }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        },
        HeaderValueOption {
            header: Some(HeaderValue {
                key: "x-hop".into(),
                value: "mesh".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    r.response_headers_to_remove = vec!["Server".into()];
    let rc = RouteConfiguration {
        virtual_hosts: vec![vh("all", &["*"], vec![r])],
        ..Default::default()
    };
    let x = translate_route_config(&rc).unwrap();
    let t = toml::to_string(&x.routes[0]).unwrap();
    for want in [
        "timeout = \"2500ms\"",
        "path_prefix = \"/api\"",
        "x-canary = \"1\"",
        "cluster = \"v1\"",
        "weight = 90",
        "attempts = 3",
        "on = [\"5xx\", \"connect-failure\", \"retriable-status\"]",
        "statuses = [409]",
        "per_try_timeout = \"1000ms\"",
        "x-env = \"prod\"",
        "x-hop = \"mesh\"",
        "remove = [\"server\"]",
    ] {
        assert!(t.contains(want), "{want} missing in\n{t}");
    }
    // The whole table compiles as a file would.
    let text = format!(
        "[clusters.v1]\nendpoints = [\"127.0.0.1:1\"]\n[clusters.v2]\nendpoints = [\"127.0.0.1:2\"]\n{}",
        toml::to_string(&toml::Table::from_iter([(
            "routes".to_string(),
            toml::Value::Table(toml::Table::from_iter([(
                "rc".to_string(),
                toml::Value::Array(x.routes.clone()),
            )])),
        )]))
        .unwrap()
    );
    crate::config::compile(std::path::Path::new("t.toml"), &text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    // A retry condition Outrigger lacks is named.
    let mut r = prefix_route("x", "/", "c");
    let Some(route::Action::Route(ra)) = &mut r.action else {
        unreachable!()
    };
    ra.retry_policy = Some(RetryPolicy {
        retry_on: "envoy-ratelimited".into(),
        ..Default::default()
    });
    let rc = RouteConfiguration {
        virtual_hosts: vec![vh("all", &["*"], vec![r])],
        ..Default::default()
    };
    assert!(translate_route_config(&rc)
        .unwrap_err()
        .to_string()
        .contains("envoy-ratelimited"));
}

#[test]
fn clusters_translate_or_name_what_is_missing() {
    let c = Cluster {
        name: "api".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        lb_policy: cluster::LbPolicy::LeastRequest as i32,
        connect_timeout: Some(Duration {
            seconds: 0,
            nanos: 250_000_000,
        }),
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![circuit_breakers::Thresholds {
                max_requests: Some(UInt32Value { value: 77 }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let x = translate_cluster(&c).unwrap();
    assert_eq!(x.eds.as_deref(), Some("api"));
    let t = toml::to_string(&x.table).unwrap();
    for want in [
        "discovery = \"xds\"",
        "balance = \"least_request\"",
        "connect_timeout = \"250ms\"",
        "max_requests = 77",
    ] {
        assert!(t.contains(want), "{want} missing in\n{t}");
    }
    let mut bad = c.clone();
    bad.lb_policy = cluster::LbPolicy::ClusterProvided as i32;
    let refused = translate_cluster(&bad).unwrap_err();
    assert!(refused.to_string().contains("CLUSTER_PROVIDED"));
    assert_eq!(refused.reason, convert::Reason::Unsupported);
    let mut bad = c;
    bad.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
        cluster::DiscoveryType::Static as i32,
    ));
    bad.load_assignment = Some(
        envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
            cluster_name: "api".into(),
            endpoints: vec![
                envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints {
                    priority: 9,
                    ..Default::default()
                },
            ],
            ..Default::default()
        },
    );
    assert!(translate_cluster(&bad)
        .unwrap_err()
        .to_string()
        .contains("priority 9"));
    let unnamed = Cluster::default();
    assert_eq!(
        translate_cluster(&unnamed).unwrap_err().reason,
        convert::Reason::Missing
    );
}

pub(super) fn tcp_listener(name: &str, cluster: &str) -> Listener {
    let p = TcpProxy {
        stat_prefix: name.into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    };
    Listener {
        name: name.into(),
        address: sock("127.0.0.1", 0),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(filter::ConfigType::TypedConfig(Any {
                    type_url:
                        "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
                            .into(),
                    value: p.encode_to_vec(),
                })),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn listeners_wait_for_what_they_need_and_clusters_stay_while_used() {
    let mut state = State::default();
    let file = FileNames::default();
    let any = |kind: Kind, m: Vec<u8>| Any {
        type_url: kind.type_url().into(),
        value: m,
    };
    let l = tcp_listener("db", "pg");
    assert!(state
        .take(
            Kind::Listener,
            &[any(Kind::Listener, l.encode_to_vec())],
            &file
        )
        .is_empty());
    // Its cluster is not here yet: the listener waits.
    assert!(
        !state.overlay(&file).contains("[listeners.db]"),
        "{}",
        state.overlay(&file)
    );
    let pg = Cluster {
        name: "pg".into(),
        load_assignment: Some(envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
            cluster_name: "pg".into(),
            endpoints: vec![envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints {
                lb_endpoints: vec![envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint {
                    host_identifier: Some(envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(
                        envoy_types::pb::envoy::config::endpoint::v3::Endpoint { address: sock("127.0.0.1", 5432), ..Default::default() },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(state
        .take(
            Kind::Cluster,
            &[any(Kind::Cluster, pg.encode_to_vec())],
            &file
        )
        .is_empty());
    let overlay = state.overlay(&file);
    assert!(
        overlay.contains("[listeners.db]") && overlay.contains("protocol = \"tcp\""),
        "{overlay}"
    );
    let snap = crate::config::compile_with(std::path::Path::new("t.toml"), "", &overlay)
        .unwrap_or_else(|e| panic!("{e}\n{overlay}"));
    assert_eq!(snap.clusters["pg"].endpoints.len(), 1);
    // CDS without pg while the listener still relays to it: pg stays.
    let errors = state.take(Kind::Cluster, &[], &file);
    assert!(
        errors[0].contains("pg") && errors[0].contains("listener db"),
        "{errors:?}"
    );
    assert!(state.clusters.contains_key("pg"));
    // A clash with the file's names is refused.
    let file = FileNames::of("[clusters.pg]\nendpoints = [\"127.0.0.1:1\"]\n");
    let errors = state.take(
        Kind::Cluster,
        &[any(Kind::Cluster, pg.encode_to_vec())],
        &file,
    );
    assert!(errors[0].contains("config file"), "{errors:?}");
    // ... and a reload strips it from the overlay: the file's pg wins.
    let stripped =
        strip_clashes("[clusters.pg]\nendpoints = [\"127.0.0.1:1\"]\n", &overlay).unwrap();
    assert!(
        !stripped.contains("[clusters.pg]") && stripped.contains("[listeners.db]"),
        "{stripped}"
    );
    // Error keys point at the resource they belong to.
    assert_eq!(
        state
            .culprit(Kind::Listener, "listeners.db.address")
            .as_deref(),
        Some("db")
    );
    assert_eq!(
        state.culprit(Kind::Cluster, "clusters.pg"),
        Some("pg".into())
    );
    assert_eq!(state.culprit(Kind::Cluster, "clusters.pgx.balance"), None);
}
