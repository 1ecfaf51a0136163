//! LDS resources to `[listeners.NAME]` tables: one filter chain ending in
//! an HTTP connection manager (routes from RDS or inline) or a TCP proxy.

use envoy_types::pb::envoy::config::listener::v3::{filter, FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use prost::Message;
use toml::Table;

use super::cluster::{common_tls, host_port};
use super::convert::duration;
use super::convert::Rejected;
use super::route::{route_config, XRoutes};

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const TLS_CONTEXT: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

/// A listener, translated.
#[derive(Debug, Clone, PartialEq)]
pub struct XListener {
    pub table: Table,
    /// HTTP: the RDS route configuration it names.
    pub rds: Option<String>,
    /// HTTP: its inline route configuration.
    pub inline: Option<XRoutes>,
    /// TCP: the cluster it relays to.
    pub cluster: Option<String>,
}

/// The route table name of a listener's inline route configuration.
pub fn inline_table(listener: &str) -> String {
    format!("lds:{listener}")
}

pub fn listener(l: &Listener) -> Result<XListener, Rejected> {
    if l.name.is_empty() {
        return Err(Rejected::missing("a listener without a name"));
    }
    let (host, port) = host_port(l.address.as_ref())?;
    let mut t = Table::new();
    let address = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    t.insert("address".into(), address.into());
    if l.use_original_dst.as_ref().is_some_and(|b| b.value) {
        t.insert("original_destination".into(), true.into());
    }
    if l.traffic_direction == 1 {
        t.insert("inbound".into(), true.into());
    }
    let chain: &FilterChain = match (l.filter_chains.as_slice(), &l.default_filter_chain) {
        ([c], None) | ([], Some(c)) => c,
        ([], None) => return Err(Rejected::missing("a listener without a filter chain")),
        _ => return Err(Rejected::unsupported(
            "more than one filter chain (or filter chains and a default chain) is not supported",
        )),
    };
    if chain.filter_chain_match.is_some() || l.filter_chain_matcher.is_some() {
        return Err(Rejected::unsupported(
            "filter chain matching is not supported",
        ));
    }
    if let Some(ts) = &chain.transport_socket {
        use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
        match &ts.config_type {
            Some(ConfigType::TypedConfig(any)) if any.type_url == TLS_CONTEXT => {
                let ctx = DownstreamTlsContext::decode(any.value.as_slice())
                    .map_err(|e| Rejected::undecodable("DownstreamTlsContext", &e))?;
                let tls = common_tls(ctx.common_tls_context.as_ref(), "client_ca")?;
                if !tls.contains_key("cert") {
                    return Err(Rejected::missing("a TLS listener without a certificate"));
                }
                t.insert("tls".into(), tls.into());
            }
            Some(ConfigType::TypedConfig(any)) if any.type_url.ends_with("RawBuffer") => {}
            Some(ConfigType::TypedConfig(any)) => {
                return Err(Rejected::unsupported(format!(
                    "transport socket {} is not supported",
                    any.type_url
                )))
            }
            None => {}
        }
    }
    let Some((last, before)) = chain.filters.split_last() else {
        return Err(Rejected::missing("a filter chain without filters"));
    };
    if let Some(f) = before.first() {
        return Err(Rejected::unsupported(format!(
            "network filter \"{}\" is not supported",
            f.name
        )));
    }
    let any = match &last.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => any,
        _ => {
            return Err(Rejected::missing(format!(
                "filter \"{}\": a typed_config is required",
                last.name
            )))
        }
    };
    let mut out = XListener {
        table: Table::new(),
        rds: None,
        inline: None,
        cluster: None,
    };
    match any.type_url.as_str() {
        HCM => {
            let hcm = HttpConnectionManager::decode(any.value.as_slice())
                .map_err(|e| Rejected::undecodable("HttpConnectionManager", &e))?;
            for f in &hcm.http_filters {
                if f.disabled || f.is_optional {
                    continue;
                }
                let router = f.name == "envoy.filters.http.router"
                    || matches!(&f.config_type, Some(envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType::TypedConfig(a)) if a.type_url == ROUTER);
                if !router {
                    return Err(Rejected::unsupported(format!(
                        "http filter \"{}\" is not supported",
                        f.name
                    )));
                }
            }
            t.insert("protocol".into(), "http".into());
            match &hcm.route_specifier {
                Some(RouteSpecifier::Rds(rds)) => {
                    if rds.route_config_name.is_empty() {
                        return Err(Rejected::missing("rds without route_config_name"));
                    }
                    t.insert("routes".into(), rds.route_config_name.clone().into());
                    out.rds = Some(rds.route_config_name.clone());
                }
                Some(RouteSpecifier::RouteConfig(rc)) => {
                    let routes = route_config(rc).map_err(|e| e.within("route_config"))?;
                    t.insert("routes".into(), inline_table(&l.name).into());
                    out.inline = Some(routes);
                }
                _ => {
                    return Err(Rejected::unsupported(
                        "scoped routes are not supported (rds or route_config)",
                    ))
                }
            }
        }
        TCP_PROXY => {
            let p = TcpProxy::decode(any.value.as_slice())
                .map_err(|e| Rejected::undecodable("TcpProxy", &e))?;
            let cluster = match &p.cluster_specifier {
                Some(tcp_proxy::ClusterSpecifier::Cluster(c)) if !c.is_empty() => c.clone(),
                _ => {
                    return Err(Rejected::unsupported(
                        "tcp_proxy: only a single cluster is supported",
                    ))
                }
            };
            t.insert("protocol".into(), "tcp".into());
            t.insert("cluster".into(), cluster.clone().into());
            if let Some(d) = duration(p.idle_timeout.as_ref()) {
                t.insert("idle_timeout".into(), d.into());
            }
            out.cluster = Some(cluster);
        }
        other => {
            return Err(Rejected::unsupported(format!(
                "network filter {other} is not supported"
            )))
        }
    }
    out.table = t;
    Ok(out)
}
