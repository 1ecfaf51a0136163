//! Traffic features in xDS resources: gRPC health checks, the downstream
//! protocol, per-route faults and request mirroring, translated into the
//! config file's shape or NACKed.

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::HeaderValueOption;
use envoy_types::pb::envoy::config::route::v3::{route, RouteConfiguration};
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use prost::Message;

use super::*;
use super::{prefix_route, vh};

#[test]
fn grpc_health_checks_and_downstream_protocol_translate() {
    use envoy_types::pb::envoy::config::core::v3::{health_check, HealthCheck};
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
        UpstreamProtocolOptions, UseDownstreamHttpConfig,
    };
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    let grpc = |metadata: bool| HealthCheck {
        interval: Some(Duration {
            seconds: 2,
            nanos: 0,
        }),
        health_checker: Some(health_check::HealthChecker::GrpcHealthCheck(
            health_check::GrpcHealthCheck {
                service_name: "orders".into(),
                authority: "orders.internal".into(),
                initial_metadata: if metadata {
                    vec![HeaderValueOption::default()]
                } else {
                    Vec::new()
                },
            },
        )),
        ..Default::default()
    };
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(
            UseDownstreamHttpConfig::default(),
        )),
        ..Default::default()
    };
    let c = Cluster {
        name: "orders".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        health_checks: vec![grpc(false)],
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            Any {
                type_url:
                    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
                        .into(),
                value: options.encode_to_vec(),
            },
        )]
        .into(),
        ..Default::default()
    };
    let t = toml::to_string(&translate_cluster(&c).unwrap().table).unwrap();
    for want in [
        "protocol = \"downstream\"",
        "protocol = \"grpc\"",
        "service = \"orders\"",
        "host = \"orders.internal\"",
    ] {
        assert!(t.contains(want), "{want} missing in\n{t}");
    }
    let mut bad = c;
    bad.health_checks = vec![grpc(true)];
    assert!(translate_cluster(&bad)
        .unwrap_err()
        .to_string()
        .contains("initial_metadata"));
}

#[test]
fn http_fault_per_route_translates_or_nacks() {
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{fault_delay, FaultDelay};
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
        fault_abort, FaultAbort, HttpFault,
    };
    use envoy_types::pb::envoy::r#type::v3::{
        fractional_percent::DenominatorType, FractionalPercent,
    };
    let any = |f: &HttpFault| Any {
        type_url: "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault".into(),
        value: f.encode_to_vec(),
    };
    let good = HttpFault {
        abort: Some(FaultAbort {
            error_type: Some(fault_abort::ErrorType::HttpStatus(503)),
            percentage: Some(FractionalPercent {
                numerator: 10,
                denominator: DenominatorType::Hundred as i32,
            }),
            ..Default::default()
        }),
        delay: Some(FaultDelay {
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(Duration {
                seconds: 0,
                nanos: 200_000_000,
            })),
            percentage: Some(FractionalPercent {
                numerator: 5000,
                denominator: DenominatorType::TenThousand as i32,
            }),
        }),
        max_active_faults: Some(UInt32Value { value: 7 }),
        ..Default::default()
    };
    let mut r = prefix_route("faulty", "/", "api");
    r.typed_per_filter_config
        .insert("envoy.filters.http.fault".into(), any(&good));
    let rc = RouteConfiguration {
        name: "rc".into(),
        virtual_hosts: vec![vh("all", &["*"], vec![r.clone()])],
        ..Default::default()
    };
    let x = translate_route_config(&rc).unwrap();
    let text = toml::to_string(&toml::Table::from_iter([(
        "r".to_string(),
        toml::Value::Array(x.routes),
    )]))
    .unwrap();
    for want in [
        "status = 503",
        "percent = 10.0",
        "duration = \"200ms\"",
        "percent = 50.0",
        "max_active = 7",
    ] {
        assert!(text.contains(want), "{want} missing in\n{text}");
    }
    // Header-controlled aborts are NACKed, not dropped.
    let mut header = good.clone();
    header.abort = Some(FaultAbort {
        error_type: Some(fault_abort::ErrorType::HeaderAbort(
            fault_abort::HeaderAbort {},
        )),
        ..Default::default()
    });
    let mut r2 = r.clone();
    r2.typed_per_filter_config
        .insert("envoy.filters.http.fault".into(), any(&header));
    let bad = RouteConfiguration {
        name: "rc".into(),
        virtual_hosts: vec![vh("all", &["*"], vec![r2])],
        ..Default::default()
    };
    assert!(translate_route_config(&bad).is_err());
    // A virtual host's fault applies to its routes.
    let plain = prefix_route("plain", "/", "api");
    let mut host = vh("all", &["*"], vec![plain]);
    host.typed_per_filter_config
        .insert("envoy.filters.http.fault".into(), any(&good));
    let rc = RouteConfiguration {
        name: "rc".into(),
        virtual_hosts: vec![host],
        ..Default::default()
    };
    let routes = translate_route_config(&rc).unwrap().routes;
    let text = toml::to_string(&toml::Table::from_iter([(
        "r".to_string(),
        toml::Value::Array(routes),
    )]))
    .unwrap();
    assert!(text.contains("max_active = 7"), "{text}");
}

#[test]
fn request_mirror_policies_translate_or_nack() {
    use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
    use envoy_types::pb::envoy::config::route::v3::route_action::RequestMirrorPolicy;
    use envoy_types::pb::envoy::r#type::v3::{
        fractional_percent::DenominatorType, FractionalPercent,
    };
    let with = |policy: RequestMirrorPolicy| {
        let mut r = prefix_route("mirrored", "/", "api");
        if let Some(route::Action::Route(ra)) = r.action.as_mut() {
            ra.request_mirror_policies = vec![policy];
        }
        RouteConfiguration {
            name: "rc".into(),
            virtual_hosts: vec![vh("all", &["*"], vec![r])],
            ..Default::default()
        }
    };
    let good = RequestMirrorPolicy {
        cluster: "shadow".into(),
        runtime_fraction: Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: 25,
                denominator: DenominatorType::Hundred as i32,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let x = translate_route_config(&with(good.clone())).unwrap();
    assert!(x.clusters.contains("shadow"), "{:?}", x.clusters);
    let text = toml::to_string(&toml::Table::from_iter([(
        "r".to_string(),
        toml::Value::Array(x.routes),
    )]))
    .unwrap();
    assert!(
        text.contains("cluster = \"shadow\"") && text.contains("percent = 25.0"),
        "{text}"
    );
    let mut by_header = good.clone();
    by_header.cluster = String::new();
    by_header.cluster_header = "x-mirror-to".into();
    assert!(translate_route_config(&with(by_header)).is_err());
    let mut no_suffix = good;
    no_suffix.disable_shadow_host_suffix_append = true;
    assert!(translate_route_config(&with(no_suffix)).is_err());
}

/// EDS localities and priorities reach the endpoints; CDS zone-aware
/// routing is `locality = "prefer_local"`; the static form carries both.
#[test]
fn localities_and_priorities_translate() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        common_lb_config::LocalityConfigSpecifier, CommonLbConfig,
    };
    use envoy_types::pb::envoy::config::core::v3::Locality as XLocality;
    use envoy_types::pb::envoy::config::endpoint::v3::{
        lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
    };
    let group = |zone: &str, priority: u32, ip: &str| LocalityLbEndpoints {
        locality: Some(XLocality {
            region: "r1".into(),
            zone: zone.into(),
            sub_zone: String::new(),
        }),
        priority,
        lb_endpoints: vec![LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: super::tests::sock(ip, 80),
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    };
    let cla = ClusterLoadAssignment {
        cluster_name: "api".into(),
        endpoints: vec![group("a", 0, "10.0.0.1"), group("b", 1, "10.0.0.2")],
        ..Default::default()
    };
    let found = assignment(&cla).unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<(String, String, u32)> = found
        .iter()
        .map(|f| (f.address.to_string(), f.locality.to_string(), f.priority))
        .collect();
    assert_eq!(
        got,
        vec![
            ("10.0.0.1:80".to_string(), "r1/a".to_string(), 0),
            ("10.0.0.2:80".to_string(), "r1/b".to_string(), 1)
        ]
    );
    let c = Cluster {
        name: "api".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(cla),
        common_lb_config: Some(CommonLbConfig {
            locality_config_specifier: Some(LocalityConfigSpecifier::ZoneAwareLbConfig(
                Default::default(),
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    let t = translate_cluster(&c)
        .unwrap_or_else(|e| panic!("{e}"))
        .table;
    assert_eq!(t["locality"].as_str(), Some("prefer_local"));
    let second = &t["endpoints"].as_array().unwrap_or_else(|| panic!("{t}"))[1];
    assert_eq!(second["zone"].as_str(), Some("b"));
    assert_eq!(second["region"].as_str(), Some("r1"));
    assert_eq!(second["priority"].as_integer(), Some(1));
}
