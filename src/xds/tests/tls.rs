//! TLS in xDS resources: what a transport socket's TLS context becomes in
//! the config file's shape, and what is refused rather than dropped.

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use prost::Message;

use super::*;
use super::{sock, tcp_listener};

#[test]
fn every_translated_feature_compiles_as_file_config() {
    use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection;
    use envoy_types::pb::envoy::config::core::v3::{
        data_source, health_check, transport_socket, DataSource, HealthCheck, TransportSocket,
    };
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SubjectAltNameMatcher;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        common_tls_context, CertificateValidationContext, CommonTlsContext, DownstreamTlsContext,
        TlsCertificate, UpstreamTlsContext,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        string_matcher::MatchPattern, RegexMatcher, StringMatcher,
    };
    let san = |t: i32, p: MatchPattern| SubjectAltNameMatcher {
        san_type: t,
        matcher: Some(StringMatcher {
            match_pattern: Some(p),
            ..Default::default()
        }),
        ..Default::default()
    };
    let file = |f: &str| {
        Some(DataSource {
            specifier: Some(data_source::Specifier::Filename(f.into())),
            ..Default::default()
        })
    };
    let common = CommonTlsContext {
        tls_certificates: vec![TlsCertificate {
            certificate_chain: file("/etc/certs/cert.pem"),
            private_key: file("/etc/certs/key.pem"),
            ..Default::default()
        }],
        validation_context_type: Some(
            common_tls_context::ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: file("/etc/certs/ca.pem"),
                    match_typed_subject_alt_names: vec![
                        san(
                            3,
                            MatchPattern::Exact("spiffe://example.org/ns/ops/sa/admin".into()),
                        ),
                        san(2, MatchPattern::Suffix(".internal".into())),
                        san(
                            3,
                            MatchPattern::SafeRegex(RegexMatcher {
                                regex: "spiffe://example\\.org/ns/[a-z]+/sa/admin".into(),
                                ..Default::default()
                            }),
                        ),
                    ],
                    ..Default::default()
                },
            ),
        ),
        alpn_protocols: vec!["h2".into()],
        ..Default::default()
    };
    let upstream = UpstreamTlsContext {
        common_tls_context: Some(common.clone()),
        sni: "api.internal".into(),
        ..Default::default()
    };
    let c = Cluster {
        name: "secure".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::StrictDns as i32)),
        load_assignment: Some(envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
            cluster_name: "secure".into(),
            endpoints: vec![envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints {
                lb_endpoints: vec![envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint {
                    host_identifier: Some(envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(
                        envoy_types::pb::envoy::config::endpoint::v3::Endpoint { address: sock("api.internal", 443), ..Default::default() },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        outlier_detection: Some(OutlierDetection {
            consecutive_gateway_failure: Some(UInt32Value { value: 3 }),
            base_ejection_time: Some(Duration { seconds: 10, nanos: 0 }),
            ..Default::default()
        }),
        health_checks: vec![HealthCheck {
            interval: Some(Duration { seconds: 2, nanos: 0 }),
            timeout: Some(Duration { seconds: 1, nanos: 0 }),
            healthy_threshold: Some(UInt32Value { value: 2 }),
            unhealthy_threshold: Some(UInt32Value { value: 3 }),
            health_checker: Some(health_check::HealthChecker::HttpHealthCheck(health_check::HttpHealthCheck {
                path: "/healthz".into(),
                expected_statuses: vec![envoy_types::pb::envoy::r#type::v3::Int64Range { start: 200, end: 205 }],
                ..Default::default()
            })),
            ..Default::default()
        }],
        transport_socket: Some(TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext".into(),
                value: upstream.encode_to_vec(),
            })),
        }),
        ..Default::default()
    };
    let x = translate_cluster(&c).unwrap();
    let mut l = tcp_listener("edge", "plain");
    l.filter_chains[0].transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(Any {
            type_url:
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
                    .into(),
            value: DownstreamTlsContext {
                common_tls_context: Some(common),
                ..Default::default()
            }
            .encode_to_vec(),
        })),
    });
    let xl = translate_listener(&l).unwrap();
    let top = toml::Table::from_iter([
        (
            "clusters".to_string(),
            toml::Value::Table(toml::Table::from_iter([(
                "secure".to_string(),
                toml::Value::Table(x.table),
            )])),
        ),
        (
            "listeners".to_string(),
            toml::Value::Table(toml::Table::from_iter([(
                "edge".to_string(),
                toml::Value::Table(xl.table),
            )])),
        ),
    ]);
    let text = toml::to_string(&top).unwrap() + "[clusters.plain]\nendpoints = [\"127.0.0.1:1\"]\n";
    // Only the certificate files are missing: every key is one the
    // compiler knows, with a valid value.
    let err = crate::config::compile(std::path::Path::new("t.toml"), &text).unwrap_err();
    for e in &err.0 {
        assert!(
            e.message.contains("/etc/certs/") || e.message.contains("No such file"),
            "{e}\n{text}"
        );
    }
    for want in [
        "server_name = \"api.internal\"",
        "discovery = \"dns\"",
        "expected_statuses = [200, 201, 202, 203, 204]",
        "consecutive_gateway_errors = 3",
        "client_ca = \"/etc/certs/ca.pem\"",
        "exact = \"spiffe://example.org/ns/ops/sa/admin\"",
        "suffix = \".internal\"",
        "regex = ",
    ] {
        assert!(text.contains(want), "{want} missing in\n{text}");
    }
}

/// Certificate checks Outrigger does not enforce are refused (NACK), never
/// dropped: a control plane must not believe they are in force.
#[test]
fn unenforced_certificate_checks_are_refused() {
    use envoy_types::pb::envoy::config::core::v3::{transport_socket, TransportSocket};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        common_tls_context, CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher,
        UpstreamTlsContext,
    };
    let with = |v: CertificateValidationContext| {
        let ctx = UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                validation_context_type: Some(
                    common_tls_context::ValidationContextType::ValidationContext(v),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = Cluster {
            name: "c".into(),
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(transport_socket::ConfigType::TypedConfig(Any {
                    type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext".into(),
                    value: ctx.encode_to_vec(),
                })),
            }),
            ..Default::default()
        };
        translate_cluster(&c)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let cases: Vec<(CertificateValidationContext, &str)> = vec![
        (
            CertificateValidationContext {
                verify_certificate_hash: vec!["ab".into()],
                ..Default::default()
            },
            "verify_certificate_hash",
        ),
        (
            CertificateValidationContext {
                verify_certificate_spki: vec!["ab".into()],
                ..Default::default()
            },
            "verify_certificate_spki",
        ),
        (
            CertificateValidationContext {
                crl: Some(Default::default()),
                ..Default::default()
            },
            "crl",
        ),
        (
            CertificateValidationContext {
                allow_expired_certificate: true,
                ..Default::default()
            },
            "allow_expired_certificate",
        ),
        (
            CertificateValidationContext {
                trust_chain_verification: 1,
                ..Default::default()
            },
            "trust_chain_verification",
        ),
        (
            CertificateValidationContext {
                match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                    san_type: 1,
                    ..Default::default()
                }],
                ..Default::default()
            },
            "URI and DNS only",
        ),
    ];
    for (v, want) in cases {
        let err = with(v);
        assert!(err.contains(want), "{want}: {err:?}");
    }
}
