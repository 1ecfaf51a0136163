//! CDS and EDS resources to Outrigger's model: a `[clusters.NAME]` table
//! exactly as a config file would write it, and endpoint sets.

// Control planes still send the deprecated fields (v2-era `append`,
// `exact_match`, `dns_refresh_rate`, ...): they are read as Envoy reads them.
#![allow(deprecated)]

use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::LocalityConfigSpecifier;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, DnsLookupFamily, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::health_check;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, CommonTlsContext, UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    explicit_http_config, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use prost::Message;
use toml::{Table, Value};

use super::convert::Rejected;
use super::convert::{duration, file_name, u32_value};
pub(super) use super::endpoints::host_port;
use super::endpoints::{dns_names, endpoint_array, endpoints};

/// A CDS cluster, translated.
#[derive(Debug, Clone, PartialEq)]
pub struct XCluster {
    pub table: Table,
    /// The EDS resource its endpoints come from (EDS clusters).
    pub eds: Option<String>,
}

const TLS_CONTEXT: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Translate one cluster; `Err` names the feature Outrigger lacks.
pub fn cluster(c: &Cluster) -> Result<XCluster, Rejected> {
    if c.name.is_empty() {
        return Err(Rejected::missing("a cluster without a name"));
    }
    let mut t = Table::new();
    let mut eds = None;
    let kind = match &c.cluster_discovery_type {
        None => DiscoveryType::Static,
        Some(ClusterDiscoveryType::Type(k)) => DiscoveryType::try_from(*k)
            .map_err(|_| Rejected::invalid(format!("unknown discovery type {k}")))?,
        Some(ClusterDiscoveryType::ClusterType(ct)) => {
            return Err(Rejected::unsupported(format!(
                "custom cluster_type \"{}\" is not supported",
                ct.name
            )))
        }
    };
    match kind {
        DiscoveryType::Static => {
            let found = endpoints(c.load_assignment.as_ref(), true)?;
            t.insert("endpoints".into(), endpoint_array(&found));
        }
        DiscoveryType::StrictDns | DiscoveryType::LogicalDns => {
            t.insert("discovery".into(), "dns".into());
            let names = dns_names(c.load_assignment.as_ref())?;
            if names.is_empty() {
                return Err(Rejected::missing("a DNS cluster without endpoints"));
            }
            t.insert("endpoints".into(), Value::Array(names));
            if let Some(d) = duration(c.dns_refresh_rate.as_ref()) {
                t.insert("dns_refresh".into(), d.into());
            }
            let family = match DnsLookupFamily::try_from(c.dns_lookup_family) {
                Ok(DnsLookupFamily::V4Only) => "v4",
                Ok(DnsLookupFamily::V6Only) => "v6",
                _ => "auto",
            };
            t.insert("dns_family".into(), family.into());
        }
        DiscoveryType::Eds => {
            let service = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| c.name.clone());
            t.insert("discovery".into(), "xds".into());
            t.insert("eds_service_name".into(), service.clone().into());
            eds = Some(service);
        }
        DiscoveryType::OriginalDst => {
            t.insert("discovery".into(), "original_destination".into());
        }
    }
    let balance = match LbPolicy::try_from(c.lb_policy) {
        Ok(LbPolicy::RoundRobin) => "round_robin",
        Ok(LbPolicy::LeastRequest) => "least_request",
        Ok(LbPolicy::RingHash) => "ring_hash",
        Ok(LbPolicy::Random) => "random",
        Ok(LbPolicy::Maglev) => "maglev",
        Ok(other) => {
            return Err(Rejected::unsupported(format!(
                "lb_policy {} is not supported",
                other.as_str_name()
            )))
        }
        Err(_) => {
            return Err(Rejected::invalid(format!(
                "unknown lb_policy {}",
                c.lb_policy
            )))
        }
    };
    if c.load_balancing_policy.is_some() {
        return Err(Rejected::unsupported(
            "load_balancing_policy is not supported (use lb_policy)",
        ));
    }
    if kind != DiscoveryType::OriginalDst {
        t.insert("balance".into(), balance.into());
    }
    // Zone-aware routing is `prefer_local`; locality weights are not used
    // (traffic within a level follows endpoint weights), as in Envoy when
    // a cluster does not ask for them.
    let zone_aware = c.common_lb_config.as_ref().is_some_and(|l| {
        matches!(
            l.locality_config_specifier,
            Some(LocalityConfigSpecifier::ZoneAwareLbConfig(_))
        )
    });
    if zone_aware && kind != DiscoveryType::OriginalDst {
        t.insert("locality".into(), "prefer_local".into());
    }
    if let Some(d) = duration(c.connect_timeout.as_ref()) {
        t.insert("connect_timeout".into(), d.into());
    }
    if let Some(cb) = &c.circuit_breakers {
        // Outrigger has one set of limits: the DEFAULT priority's.
        if let Some(th) = cb.thresholds.iter().find(|th| th.priority == 0) {
            let mut b = Table::new();
            for (key, v) in [
                ("max_connections", &th.max_connections),
                ("max_pending_requests", &th.max_pending_requests),
                ("max_requests", &th.max_requests),
                ("max_retries", &th.max_retries),
            ] {
                if let Some(n) = u32_value(v.as_ref()).filter(|n| *n > 0) {
                    b.insert(key.into(), i64::from(n).into());
                }
            }
            if !b.is_empty() {
                t.insert("circuit_breaker".into(), b.into());
            }
        }
    }
    if let Some(o) = &c.outlier_detection {
        let mut b = Table::new();
        let five = u32_value(o.consecutive_5xx.as_ref()).unwrap_or(5);
        if five > 0 {
            b.insert("consecutive_5xx".into(), i64::from(five).into());
        }
        if let Some(n) = u32_value(o.consecutive_gateway_failure.as_ref()).filter(|n| *n > 0) {
            b.insert("consecutive_gateway_errors".into(), i64::from(n).into());
        }
        if let Some(d) = duration(o.base_ejection_time.as_ref()) {
            b.insert("base_ejection_time".into(), d.into());
        }
        if let Some(n) = u32_value(o.max_ejection_percent.as_ref()) {
            b.insert("max_ejection_percent".into(), i64::from(n.min(100)).into());
        }
        t.insert("outlier_detection".into(), b.into());
    }
    match c.health_checks.as_slice() {
        [] => {}
        [h] => {
            t.insert("health_check".into(), health(h)?.into());
        }
        _ => {
            return Err(Rejected::unsupported(
                "more than one health check is not supported",
            ))
        }
    }
    if let Some(ts) = &c.transport_socket {
        if let Some(tls) = upstream_tls(ts)? {
            t.insert("tls".into(), tls.into());
        }
    }
    if c.http2_protocol_options.is_some() {
        t.insert("protocol".into(), "http2".into());
    }
    if let Some(any) = c.typed_extension_protocol_options.get(HTTP_OPTIONS) {
        let o = HttpProtocolOptions::decode(any.value.as_slice())
            .map_err(|e| Rejected::undecodable(HTTP_OPTIONS, &e))?;
        let protocol = match &o.upstream_protocol_options {
            None => None,
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match &e.protocol_config {
                Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(_)) => {
                    Some("http2")
                }
                Some(explicit_http_config::ProtocolConfig::Http3ProtocolOptions(_)) => {
                    return Err(Rejected::unsupported("HTTP/3 upstreams are not supported"))
                }
                _ => Some("http1"),
            },
            Some(UpstreamProtocolOptions::AutoConfig(_)) => Some("auto"),
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)) => Some("downstream"),
        };
        if let Some(p) = protocol {
            t.insert("protocol".into(), p.into());
        }
    }
    if let Some(other) = c
        .typed_extension_protocol_options
        .keys()
        .find(|k| *k != HTTP_OPTIONS)
    {
        return Err(Rejected::unsupported(format!(
            "typed_extension_protocol_options \"{other}\" is not supported"
        )));
    }
    Ok(XCluster { table: t, eds })
}

fn health(h: &envoy_types::pb::envoy::config::core::v3::HealthCheck) -> Result<Table, Rejected> {
    let mut t = Table::new();
    match &h.health_checker {
        Some(health_check::HealthChecker::HttpHealthCheck(http)) => {
            t.insert("protocol".into(), "http".into());
            if !http.path.is_empty() {
                t.insert("path".into(), http.path.clone().into());
            }
            if !http.host.is_empty() {
                t.insert("host".into(), http.host.clone().into());
            }
            let mut statuses = Vec::new();
            for r in &http.expected_statuses {
                if r.end <= r.start || r.end - r.start > 200 || r.start < 100 || r.end > 600 {
                    return Err(Rejected::unsupported(format!(
                        "health check expected_statuses range [{}, {}) is not supported",
                        r.start, r.end
                    )));
                }
                statuses.extend((r.start..r.end).map(Value::Integer));
            }
            if !statuses.is_empty() {
                t.insert("expected_statuses".into(), Value::Array(statuses));
            }
            if http.send.is_some() || !http.receive.is_empty() {
                return Err(Rejected::unsupported(
                    "health check payloads are not supported",
                ));
            }
        }
        Some(health_check::HealthChecker::TcpHealthCheck(tcp)) => {
            if tcp.send.is_some() || !tcp.receive.is_empty() {
                return Err(Rejected::unsupported(
                    "TCP health check payloads are not supported",
                ));
            }
            t.insert("protocol".into(), "tcp".into());
        }
        Some(health_check::HealthChecker::GrpcHealthCheck(g)) => {
            if !g.initial_metadata.is_empty() {
                return Err(Rejected::unsupported(
                    "gRPC health check initial_metadata is not supported",
                ));
            }
            t.insert("protocol".into(), "grpc".into());
            if !g.service_name.is_empty() {
                t.insert("service".into(), g.service_name.clone().into());
            }
            if !g.authority.is_empty() {
                t.insert("host".into(), g.authority.clone().into());
            }
        }
        Some(health_check::HealthChecker::CustomHealthCheck(c)) => {
            return Err(Rejected::unsupported(format!(
                "custom health check \"{}\" is not supported",
                c.name
            )))
        }
        None => return Err(Rejected::missing("a health check without a checker")),
    }
    for (key, v) in [("interval", &h.interval), ("timeout", &h.timeout)] {
        if let Some(d) = duration(v.as_ref()) {
            t.insert(key.into(), d.into());
        }
    }
    for (key, v) in [
        ("healthy_threshold", &h.healthy_threshold),
        ("unhealthy_threshold", &h.unhealthy_threshold),
    ] {
        if let Some(n) = u32_value(v.as_ref()).filter(|n| *n > 0) {
            t.insert(key.into(), i64::from(n).into());
        }
    }
    Ok(t)
}

/// `transport_socket` of a cluster: the TLS context, or `None` for plain TCP.
fn upstream_tls(
    ts: &envoy_types::pb::envoy::config::core::v3::TransportSocket,
) -> Result<Option<Table>, Rejected> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    let any = match &ts.config_type {
        Some(ConfigType::TypedConfig(any)) => any,
        None if ts.name == "envoy.transport_sockets.raw_buffer" => return Ok(None),
        None => {
            return Err(Rejected::missing(format!(
                "transport socket \"{}\" without a config",
                ts.name
            )))
        }
    };
    if any.type_url.ends_with("RawBuffer") {
        return Ok(None);
    }
    if any.type_url != TLS_CONTEXT {
        return Err(Rejected::unsupported(format!(
            "transport socket {} is not supported",
            any.type_url
        )));
    }
    let ctx = UpstreamTlsContext::decode(any.value.as_slice())
        .map_err(|e| Rejected::undecodable("UpstreamTlsContext", &e))?;
    let mut t = common_tls(ctx.common_tls_context.as_ref(), "ca")?;
    if !ctx.sni.is_empty() {
        t.insert("server_name".into(), ctx.sni.into());
    }
    Ok(Some(t))
}

/// The parts of a `CommonTlsContext` Outrigger honours: certificate and
/// key files, the CA file (under `ca_key`), ALPN.
pub(super) fn common_tls(ctx: Option<&CommonTlsContext>, ca_key: &str) -> Result<Table, Rejected> {
    let mut t = Table::new();
    let Some(ctx) = ctx else { return Ok(t) };
    if !ctx.tls_certificate_sds_secret_configs.is_empty() {
        return Err(Rejected::unsupported(
            "SDS certificates are not supported (use files)",
        ));
    }
    match ctx.tls_certificates.as_slice() {
        [] => {}
        [c] => {
            t.insert(
                "cert".into(),
                file_name(c.certificate_chain.as_ref(), "certificate_chain")?.into(),
            );
            t.insert(
                "key".into(),
                file_name(c.private_key.as_ref(), "private_key")?.into(),
            );
        }
        _ => {
            return Err(Rejected::unsupported(
                "more than one TLS certificate is not supported",
            ))
        }
    }
    match &ctx.validation_context_type {
        None => {}
        Some(common_tls_context::ValidationContextType::ValidationContext(v)) => {
            if let Some(ca) = &v.trusted_ca {
                t.insert(ca_key.into(), file_name(Some(ca), "trusted_ca")?.into());
            }
            validation_rules(v, &mut t)?;
        }
        Some(_) => {
            return Err(Rejected::unsupported(
                "SDS or combined validation contexts are not supported",
            ))
        }
    }
    if !ctx.alpn_protocols.is_empty() {
        t.insert(
            "alpn".into(),
            Value::Array(
                ctx.alpn_protocols
                    .iter()
                    .map(|a| a.clone().into())
                    .collect(),
            ),
        );
    }
    Ok(t)
}

/// The checks of a `CertificateValidationContext` beyond its roots:
/// subject-alternative-name matchers become `match_sans`; every field
/// Outrigger does not enforce is refused (a NACK), never dropped, so a
/// control plane cannot believe a check is in force when it is not.
fn validation_rules(
    v: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::CertificateValidationContext,
    t: &mut Table,
) -> Result<(), Rejected> {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
    let unsupported = [
        (
            !v.verify_certificate_hash.is_empty(),
            "verify_certificate_hash",
        ),
        (
            !v.verify_certificate_spki.is_empty(),
            "verify_certificate_spki",
        ),
        (v.crl.is_some(), "crl"),
        (v.allow_expired_certificate, "allow_expired_certificate"),
        (v.trust_chain_verification != 0, "trust_chain_verification"),
        (
            v.custom_validator_config.is_some(),
            "custom_validator_config",
        ),
        (v.only_verify_leaf_cert_crl, "only_verify_leaf_cert_crl"),
        (v.max_verify_depth.is_some(), "max_verify_depth"),
        (
            v.require_signed_certificate_timestamp.is_some(),
            "require_signed_certificate_timestamp",
        ),
        (
            v.ca_certificate_provider_instance.is_some(),
            "ca_certificate_provider_instance",
        ),
        (v.watched_directory.is_some(), "watched_directory"),
    ];
    if let Some((_, name)) = unsupported.iter().find(|(set, _)| *set) {
        return Err(Rejected::unsupported(format!(
            "validation_context.{name} is not supported"
        )));
    }
    let mut sans = Vec::new();
    for m in &v.match_typed_subject_alt_names {
        let kind = match SanType::try_from(m.san_type) {
            Ok(SanType::Uri) => "uri",
            Ok(SanType::Dns) => "dns",
            _ => {
                return Err(Rejected::unsupported(format!(
                    "match_typed_subject_alt_names of type {} is not supported (URI and DNS only)",
                    m.san_type
                )))
            }
        };
        sans.push(san_matcher(kind, m.matcher.as_ref())?);
    }
    for m in &v.match_subject_alt_names {
        sans.push(san_matcher("any", Some(m))?);
    }
    if !sans.is_empty() {
        t.insert("match_sans".into(), Value::Array(sans));
    }
    Ok(())
}

/// One `match_sans` entry from an xDS string matcher.
fn san_matcher(
    kind: &str,
    m: Option<&envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher>,
) -> Result<Value, Rejected> {
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    let m = m.ok_or_else(|| Rejected::missing("a subject alt name matcher without a matcher"))?;
    let (how, value) = match &m.match_pattern {
        Some(MatchPattern::Exact(v)) => ("exact", v.clone()),
        Some(MatchPattern::Prefix(v)) => ("prefix", v.clone()),
        Some(MatchPattern::Suffix(v)) => ("suffix", v.clone()),
        Some(MatchPattern::Contains(v)) => ("contains", v.clone()),
        Some(MatchPattern::SafeRegex(r)) => ("regex", r.regex.clone()),
        Some(MatchPattern::Custom(_)) | None => {
            return Err(Rejected::unsupported(
                "a custom or empty string matcher for subject alt names is not supported",
            ))
        }
    };
    let mut e = Table::new();
    e.insert("type".into(), kind.into());
    e.insert(how.into(), value.into());
    if m.ignore_case {
        e.insert("ignore_case".into(), true.into());
    }
    Ok(Value::Table(e))
}
